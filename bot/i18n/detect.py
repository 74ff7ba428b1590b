"""Which language a piece of text is in, offline.

``py3langid`` carries its model in the wheel (about 1 MB, 97 languages, loaded once in ~0.5 s);
nothing is downloaded. Kana and Hangul are decided by script first: they belong to one language
each, and a two-word Japanese greeting is too short for a statistical guess. The answer comes
with a confidence in [0, 1]; callers treat anything under ``MIN_CONFIDENCE`` as "not sure" and
keep the place's language.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["Detection", "detect", "MIN_CONFIDENCE", "UNSUPPORTED_CONFIDENCE", "preload"]

log = logging.getLogger(__name__)

# Under this, a detection is a guess: the place's language wins. Chosen on short chat lines:
# "Hallo, wie geht es dir?" scores 0.99, "Merci beaucoup" 0.48, "ok" or "hi" under 0.05, and no
# common English line scored over 0.35 for another language.
MIN_CONFIDENCE = 0.4
# Saying "I can't speak that language" needs more: "Hello there" scores 0.34 for Sesotho.
UNSUPPORTED_CONFIDENCE = 0.9
_MIN_LETTERS = 4  # fewer letters than this say nothing about a language ("ok", "lol", "👍")

_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")
_LETTER = re.compile(r"[^\W\d_]")

_identifier: Any = None
_lock = threading.Lock()
_aliases = {"nb": "no", "nn": "no"}


@dataclass(frozen=True)
class Detection:
    language: str  # ISO 639-1 as the detector names it (may be one we do not support)
    confidence: float

    @property
    def sure(self) -> bool:
        return self.confidence >= MIN_CONFIDENCE


def _model() -> Any:
    global _identifier
    with _lock:
        if _identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
            log.debug("language detector loaded")
        return _identifier


def preload() -> None:
    """Load the model now (call from a worker thread at startup, so no reply waits for it)."""
    _model()


def detect(text: str) -> Detection | None:
    """The language of ``text`` with a confidence, or None when there is nothing to judge."""
    letters = _LETTER.findall(text)
    if len(letters) < _MIN_LETTERS and not _KANA.search(text) and not _HANGUL.search(text):
        return None
    kana = len(_KANA.findall(text))
    if kana and kana * 4 >= len(letters):
        return Detection("ja", 0.99)
    hangul = len(_HANGUL.findall(text))
    if hangul and hangul * 2 >= len(letters):
        return Detection("ko", 0.99)
    code, confidence = _model().classify(text)
    return Detection(_aliases.get(code, code), float(confidence))
