"""Right-to-left text inside the bot's own left-to-right messages.

A name or a quote in Arabic or Hebrew placed in "**Name:** text" reorders the punctuation around
it when drawn (the colon jumps to the other side, a trailing "?" moves to the front). Wrapping
such a piece in FIRST STRONG ISOLATE … POP DIRECTIONAL ISOLATE (U+2068 … U+2069) keeps it in its
own direction without disturbing the line around it; Discord renders isolates. Text without any
right-to-left letter is returned unchanged.
"""

from __future__ import annotations

import unicodedata

__all__ = ["isolate", "has_rtl"]

_FSI, _PDI = "\u2068", "\u2069"


def has_rtl(text: str) -> bool:
    return any(unicodedata.bidirectional(ch) in ("R", "AL") for ch in text)


def isolate(text: str) -> str:
    """``text`` isolated when it contains right-to-left letters (idempotent)."""
    if not text or not has_rtl(text) or (text.startswith(_FSI) and text.endswith(_PDI)):
        return text
    return f"{_FSI}{text}{_PDI}"
