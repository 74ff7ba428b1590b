"""When a person has finished their turn: a short packet gap plus what their words say. Pure.

Discord sends nothing while someone is quiet, so the receive path notices a pause only as a gap in
packets. The old rule waited for 600 ms of it before asking the recognizer for a final, then
answered whatever it had. Most of a person's wait was that rule.

Now the gap that marks a *pause* is short (``pause_ms``): the recognizer is asked for a final at
once, so the words are ready early. Whether the pause ends the *turn* depends on those words:

- a sentence that ends like a finished thought ("…in Lisbon?", "…tomorrow.") ends the turn after
  ``finished_ms`` of silence in all;
- one that stops on a word that needs more ("…about", "…and", "…the"), trails off ("…") or has no
  final punctuation waits ``unfinished_ms`` for the person to go on.

A person who speaks again before their turn ends continues the same turn. ``fixed`` keeps the old
behaviour (one silence length, the recognizer's final ends the turn) for comparison.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["TurnDetection", "TURN_DETECTION_MODES", "looks_finished", "CONTINUATION_WORDS"]

TURN_DETECTION_MODES = ("smart", "fixed")

# Words a spoken English statement does not end on: articles, conjunctions, prepositions (not the
# ones that end phrasal verbs: "turn it off"), auxiliaries, possessives. A final that stops on one
# of them is a person thinking, not a person done, even when the recognizer put a full stop there.
CONTINUATION_WORDS = frozenset("""
a an the and or but so because if when while than then that which who whose whom where
about across against along among at before behind beneath beside between by during for from
inside into near of onto since through to toward towards under until upon with within without
is are was were be been being am do does did have has had will would shall should can could may
might must my your his her its our their this these those some any every each no not very
i you he she we they it's i'm i've i'd i'll you're we're they're there's let's um uh er erm
""".split()) | frozenset("""
und oder aber weil dass eine einen einem einer von zum zur über für ohne bei
et ou mais parce un une des du avec pour sans sur chez
y pero porque el los las una del con para sin sobre
e ou mas os um uma dos com sem
""".split())
# The other languages' conjunctions, articles and prepositions (bot/i18n's six): only words that do
# not also end a finished sentence: "das" ("Ich mag das."), separable particles ("Ich komme mit.",
# "Das Licht ist aus."), "le" ("Fais-le."), "da" ("Er ist da.") are left out.

_TRAILING = re.compile(r"[\s\"')\]」』）»”’]+$")
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
# Full stops, question and exclamation marks of the scripts the splitter knows (audio/speech.py):
# CJK full-width, Devanagari danda, Arabic question mark.
_QUESTION = frozenset("?!？！؟")
_STOP = frozenset(".。．।")


def looks_finished(text: str) -> bool:
    """Whether ``text`` reads like a complete turn (final punctuation, not ending on a word that needs more)."""
    t = _TRAILING.sub("", text.strip())
    if not t:
        return False
    if t.endswith(("...", "…", ",", ";", ":", "-", "—", "、", "，", "،", "‥")):
        return False
    if t[-1] in _QUESTION:
        return True  # a finished question or exclamation
    if t[-1] not in _STOP:
        return False
    words = _WORD.findall(t.lower())
    return bool(words) and words[-1] not in CONTINUATION_WORDS


@dataclass(frozen=True)
class TurnDetection:
    """The end-of-turn rule (milliseconds are silence since the person's last packet)."""

    mode: str = "smart"
    pause_ms: int = 100  # packet gap that marks a pause: ask the recognizer for a final now
    finished_ms: int = 250  # a finished-looking sentence ends the turn after this much silence
    unfinished_ms: int = 1200  # an unfinished-looking one waits this long for the person to go on
    fixed_ms: int = 600  # the ``fixed`` mode's single silence length

    def __post_init__(self) -> None:
        if self.mode not in TURN_DETECTION_MODES:
            raise ValueError(f"turn detection mode must be one of {TURN_DETECTION_MODES}, not {self.mode!r}")

    @property
    def smart(self) -> bool:
        return self.mode == "smart"

    @property
    def gap_ms(self) -> int:
        """The packet gap after which the receive path reports the end of speech."""
        return self.pause_ms if self.smart else self.fixed_ms

    def hold_seconds(self, text: str) -> float:
        """How long after the last packet a turn with these words ends, if the person stays quiet."""
        if not self.smart:
            return 0.0
        return (self.finished_ms if looks_finished(text) else self.unfinished_ms) / 1000
