"""The bot's own words in every shipped language: ``t(key, language, **values)``.

The messages live in ``bot.i18n.messages`` as plain Python (one dict per key, one entry per
language), written for this project. A key missing in a language falls back to English and is
logged once per (key, language); an unknown key is a bug and raises ``KeyError``. Placeholders
use ``str.format`` names, and every translation of a key uses the same ones (a test checks).
"""

from __future__ import annotations

import logging
import threading

from bot.i18n.languages import CATALOG_LANGUAGES, normalize_code
from bot.i18n.messages import MESSAGES

__all__ = ["t", "catalog_language", "MESSAGES"]

log = logging.getLogger(__name__)

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def catalog_language(language: str | None) -> str:
    """The language the bot's own words will be in for ``language`` (English when not shipped)."""
    code = normalize_code(language) if language else None
    return code if code in CATALOG_LANGUAGES else "en"


def t(key: str, language: str | None = "en", /, **values: object) -> str:
    """The message ``key`` in ``language`` (any tag: ``"de-DE"`` works), filled with ``values``."""
    entry = MESSAGES[key]
    code = normalize_code(language) if language else "en"
    text = entry.get(code or "en")
    if text is None:
        text = entry["en"]
        if code is not None and code != "en":
            with _warned_lock:
                first = (key, code) not in _warned
                _warned.add((key, code))
            if first:
                # A shipped language missing a key is a gap to fix; any other language is expected.
                level = logging.WARNING if code in CATALOG_LANGUAGES else logging.DEBUG
                log.log(level, "no %s text for message %r; using English", code, key)
    try:
        return text.format(**values) if values else text
    except (KeyError, IndexError):  # a translation naming a value the caller did not give
        log.error("message %r in %s needs values it was not given", key, code)
        return entry["en"].format(**values)
