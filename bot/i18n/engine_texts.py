"""The speech engines' failure texts, said in a place's language when they are posted in its chat.

The recognizers and voices (``audio.stt``, ``audio.tts``) know nothing of places: their
``user_message`` is English, and the voice session posts it in the channel. Those texts are the
English side of the catalog's ``engine.*`` keys (a test checks that each one is still written, word
for word, in ``audio/``), so the voice manager can say a known one in the server's language. A
text that is not one of them (or already translated) passes unchanged; a known text followed by
more (a synthesis failure names the sentence: "The local voice is not working. (Hello)") keeps
the rest as it is.
"""

from __future__ import annotations

import re
from functools import lru_cache

from bot.i18n.catalog import MESSAGES, t

__all__ = ["ENGINE_PREFIX", "translate_engine_text"]

ENGINE_PREFIX = "engine."


@lru_cache(maxsize=1)
def _patterns() -> tuple[tuple[re.Pattern[str], str], ...]:
    """(English text as a pattern, key), longest first so a longer text wins over its prefix."""
    out = []
    for key, entry in MESSAGES.items():
        if not key.startswith(ENGINE_PREFIX):
            continue
        english = entry["en"]
        pattern = re.escape(english)
        for name in re.findall(r"\{(\w+)\}", english):
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>[^()]{{1,40}}?)", 1)
        out.append((re.compile(pattern), key))
    out.sort(key=lambda item: -len(item[0].pattern))
    return tuple(out)


def translate_engine_text(text: str, language: str) -> str:
    """``text`` in ``language`` when it starts with an engine's known English text, else unchanged."""
    if language == "en" or not text:
        return text
    for pattern, key in _patterns():
        found = pattern.match(text)
        if found is not None:
            return t(key, language, **found.groupdict()) + text[found.end():]
    return text
