"""The language registry lives in ``audio.languages`` (the speech engines need it too); re-exported here."""

from __future__ import annotations

from audio.languages import (
    AUTO,
    CATALOG_LANGUAGES,
    DEEPGRAM_MULTI,
    LANGUAGES,
    Language,
    language_name,
    normalize_code,
    parse_setting,
)

__all__ = ["AUTO", "CATALOG_LANGUAGES", "DEEPGRAM_MULTI", "LANGUAGES", "Language", "language_name", "normalize_code",
           "parse_setting"]
