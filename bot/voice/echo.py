"""Echo guard: the bot's own words coming back through a listener's speakers are not a person.

When someone listens on speakers instead of headphones, their microphone picks the bot up and
Discord sends it back to us as that person's voice, 200–800 ms late and at another level. A
recognizer then transcribes the bot's own sentence, and without a guard the bot barges in on itself
or answers itself (people have reported seven self-answers in a row).

The guard remembers what the bot said and when it was playing. A transcript is an echo when the
person's speech overlapped the bot's playback (or began shortly after it ended, the delay of the
echo path) and its words are, fuzzily, a run of the words the bot was saying then. Recognizers make
small mistakes on echoed audio, so the match is on words with a tolerance, not on exact text.
A person who repeats the bot's sentence on purpose a while after it stopped speaking is not dropped:
only speech that began within ``max_delay`` of the bot's playback is compared.

Synchronous and clock-injected, so tests drive it without asyncio.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from difflib import SequenceMatcher

__all__ = ["EchoGuard", "words_of"]

_TAIL_SHARE = 0.85  # of the heard words found among the bot's last ones, for speech begun after it stopped


def words_of(text: str) -> list[str]:
    """Lower-case words without accents or punctuation (digits kept), for comparing transcripts."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return re.findall(r"\w+", folded)


@dataclass(frozen=True)
class _Said:
    words: tuple[str, ...]
    started: float
    ended: float


class EchoGuard:
    """Remembers the bot's recent speech and recognises it when it is heard back."""

    def __init__(
        self,
        *,
        max_delay: float = 2.0,
        keep: float = 30.0,
        min_match: float = 0.7,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_delay = max_delay  # speech starting this long after the bot stopped can still be echo
        self.keep = keep  # seconds of the bot's speech remembered
        self.min_match = min_match  # share of the heard words that must be found in the bot's words
        self.clock = clock
        self._said: deque[_Said] = deque()
        self._playing: list[_Said] = []  # what is playing now (more than one: /say during a reply)
        self.dropped = 0  # transcripts recognised as echo (finals and interims)

    # ------------------------------------------------------------------ the bot's side

    def playing(self, text: str) -> _Said:
        """The bot started playing ``text``; pass the handle to :meth:`said` when it ends."""
        now = self.clock()
        entry = _Said(tuple(words_of(text)), now, now)
        self._playing.append(entry)
        return entry

    def said(self, text: str, *, playing: _Said | None = None, started: float | None = None,
             ended: float | None = None) -> None:
        """The bot finished playing: ``text`` is all of it, or the part heard before it was stopped."""
        now = self.clock()
        if playing is None and self._playing:
            playing = self._playing[-1]  # without a handle: the latest that started
        if playing is not None and playing in self._playing:
            self._playing.remove(playing)
        start = started if started is not None else (playing.started if playing is not None else now)
        words = tuple(words_of(text))
        if words:
            self._said.append(_Said(words, start, ended if ended is not None else now))
        while self._said and self._said[0].ended < now - self.keep:
            self._said.popleft()

    # ------------------------------------------------------------------ the listener's side

    def is_echo(self, text: str, *, speech_started: float | None) -> bool:
        """Whether ``text``, heard from someone whose speech began at ``speech_started``, is the bot.

        Counts it in :attr:`dropped` when it is.
        """
        heard = words_of(text)
        if not heard:
            return False
        now = self.clock()
        start = speech_started if speech_started is not None else now
        spans = [*self._said, *(_Said(p.words, p.started, now) for p in self._playing)]
        candidates: list[str] = []
        after: list[tuple[str, ...]] = []  # what the bot had finished saying when this speech began
        for said in spans:
            if said.started - 0.5 <= start <= said.ended:
                candidates.extend(said.words)
            elif said.ended < start <= said.ended + self.max_delay:
                after.append(said.words)
        if candidates:
            echo = self._matches(heard, candidates)
        else:
            # Speech that began after the bot stopped can only be the echo path's delay, i.e. the
            # last words the bot said: a person answering "Would you like to hear more about it?"
            # with "I would like to know more about Rome" shares most of its words, not its end.
            echo = any(self._tail_matches(heard, list(words)) for words in after)
        if not echo:
            return False
        self.dropped += 1
        return True

    def _tail_matches(self, heard: list[str], said: list[str]) -> bool:
        """``heard`` is (nearly) all found, in order, among the last words of ``said``."""
        if len(heard) == 1:
            return False  # one word after the bot stopped: a person's "again?" as much as an echo
        return _share_found(heard, said[-(len(heard) + 2):]) >= _TAIL_SHARE

    def _matches(self, heard: list[str], said: list[str]) -> bool:
        """``heard``, which began while the bot was saying ``said``, is mostly ``said``'s words."""
        if len(heard) == 1:
            # One word is weak evidence (a recognizer's first interim of an echo, or a person's
            # "again?" right after the bot): echo only when it began while the bot was talking.
            return heard[0] in said
        return _share_found(heard, said) >= self.min_match


def _share_found(heard: list[str], said: list[str]) -> float:
    """The share of ``heard`` found in order in ``said``; near-misses of single words ("Lisbon"
    heard as "Lisbin") count for most of a word."""
    matcher = SequenceMatcher(None, said, heard, autojunk=False)
    found = sum(block.size for block in matcher.get_matching_blocks())
    fuzzy = 0
    said_set = set(said)
    for word in heard:
        if word not in said_set and any(
            SequenceMatcher(None, word, other).ratio() >= 0.75 for other in said_set
        ):
            fuzzy += 1
    return (found + 0.8 * fuzzy) / len(heard)
