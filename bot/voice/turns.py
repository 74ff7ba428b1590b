"""Who gets answered in a voice channel, and when: a synchronous policy with an injectable clock.

Modes (per guild):

- ``auto`` (the default): with one person in the channel (bots do not count) every turn is answered;
  with two or more, only turns that address the bot, as in ``addressed``.
- ``always``: every complete turn is answered.
- ``addressed``: a turn is answered when it names the bot (its name or a wake phrase) or follows up
  within a short window on a conversation the bot just had with that person.
- ``push-to-talk``: a turn is answered only while its speaker has an open listening window (opened by
  a button or command).
- ``scribe``: no turn is answered; the bot only takes notes (every turn still goes to memory).

Complete turns wait in a queue while the bot is busy; when the bot is free the next one is taken,
and a turn that no longer makes sense (too old, or superseded by a newer turn from the same person)
is dropped rather than answered late.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

__all__ = ["VoiceMode", "PendingTurn", "TurnPolicy", "mentions_any"]


class VoiceMode:
    AUTO = "auto"
    ALWAYS = "always"
    ADDRESSED = "addressed"
    PUSH_TO_TALK = "push-to-talk"
    SCRIBE = "scribe"
    ALL = (AUTO, ALWAYS, ADDRESSED, PUSH_TO_TALK, SCRIBE)


@dataclass(frozen=True)
class PendingTurn:
    """A complete utterance from one person, waiting for an answer."""

    user_id: int
    name: str
    text: str
    ended_at: float  # when the person stopped speaking (clock time)
    final_at: float  # when the final transcript arrived
    # People in the room when this person began speaking: whether they were alone with the bot
    # (``auto`` mode) is decided by the room they spoke into, not by who came or went meanwhile.
    humans_present: int | None = None
    language: str | None = None  # the language the recognizer heard, when it said (Deepgram multi)
    # The person's last speech (clock time), which a wait is measured from; None: not known.
    voice_end: float | None = None
    typed: bool = False  # typed in (the playground's text box), not spoken


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9 ]+", " ", text)


def mentions_any(text: str, phrases: Iterable[str]) -> bool:
    """Whether ``text`` contains any phrase as whole words, ignoring case, accents and punctuation."""
    folded = f" {' '.join(_fold(text).split())} "
    for phrase in phrases:
        p = " ".join(_fold(phrase).split())
        if p and f" {p} " in folded:
            return True
    return False


@dataclass
class TurnPolicy:
    """Decides which complete turns to answer, and keeps the queue of those waiting."""

    bot_names: tuple[str, ...]
    mode: str = VoiceMode.AUTO
    wake_phrases: tuple[str, ...] = ()
    stale_after: float = 10.0  # seconds after the end of speech beyond which an answer would be late
    follow_up_window: float = 12.0  # seconds after the bot spoke with someone in which they need not name it
    max_queue: int = 8
    clock: Callable[[], float] = time.monotonic
    _queue: deque[PendingTurn] = field(default_factory=deque)
    _listening_until: dict[int, float] = field(default_factory=dict)
    _conversing_until: dict[int, float] = field(default_factory=dict)
    dropped: list[tuple[PendingTurn, str]] = field(default_factory=list)  # (turn, reason), bounded
    dropped_count: int = 0  # every turn ever dropped (``dropped`` keeps only the last 50)

    # ------------------------------------------------------------------ decisions

    def is_addressed(self, text: str) -> bool:
        return mentions_any(text, (*self.bot_names, *self.wake_phrases))

    def wants(self, user_id: int, text: str, *, humans_present: int) -> bool:
        """Whether a complete turn should be answered, by the mode's rules."""
        if not text.strip():
            return False
        now = self.clock()
        if self.mode == VoiceMode.ALWAYS:
            return True
        if self.mode == VoiceMode.SCRIBE:
            return False
        if self.mode == VoiceMode.PUSH_TO_TALK:
            return self._listening_until.get(user_id, 0.0) > now
        if self.mode == VoiceMode.AUTO and humans_present <= 1:
            return True
        return self.is_addressed(text) or self._conversing_until.get(user_id, 0.0) > now

    def rule_now(self, humans_present: int) -> str:
        """Which rule applies at this moment, in a few words (for ``/status``)."""
        if self.mode == VoiceMode.AUTO:
            if humans_present <= 1:
                return "auto: one person here, answering without being named"
            return f"auto: {humans_present} people here, answering only when named"
        return {
            VoiceMode.ALWAYS: "always: answering every turn",
            VoiceMode.ADDRESSED: "addressed: answering only when named",
            VoiceMode.PUSH_TO_TALK: "push-to-talk: answering people who asked to be heard",
            VoiceMode.SCRIBE: "scribe: taking notes, answering nobody",
        }.get(self.mode, self.mode)

    def open_listening_window(self, user_id: int, seconds: float = 30.0) -> None:
        """Push-to-talk: answer this person's turns for the next ``seconds``."""
        self._listening_until[user_id] = self.clock() + seconds

    def close_listening_window(self, user_id: int) -> None:
        self._listening_until.pop(user_id, None)

    def answered(self, user_id: int) -> None:
        """The bot just answered this person: a follow-up need not name it."""
        self._conversing_until[user_id] = self.clock() + self.follow_up_window

    def forget(self, user_id: int) -> None:
        """The person left (or opted out): drop their waiting turns and windows."""
        self._queue = deque(t for t in self._queue if t.user_id != user_id)
        self._listening_until.pop(user_id, None)
        self._conversing_until.pop(user_id, None)

    # ------------------------------------------------------------------ queue

    def offer(self, turn: PendingTurn, *, humans_present: int) -> bool:
        """Queue a complete turn if it should be answered. Returns whether it was queued."""
        if not self.wants(turn.user_id, turn.text, humans_present=humans_present):
            return False
        # The same person speaking again before being answered: one turn, their words in order.
        for i, waiting in enumerate(self._queue):
            if waiting.user_id == turn.user_id:
                merged = replace(turn, text=f"{waiting.text} {turn.text}".strip())
                del self._queue[i]
                self._queue.append(merged)
                return True
        self._queue.append(turn)
        while len(self._queue) > self.max_queue:
            self._drop(self._queue.popleft(), "queue full")
        return True

    def next_turn(self) -> PendingTurn | None:
        """The next turn worth answering now, dropping the ones that have gone stale."""
        now = self.clock()
        while self._queue:
            turn = self._queue.popleft()
            if now - turn.ended_at > self.stale_after:
                self._drop(turn, f"stale ({now - turn.ended_at:.1f} s old)")
                continue
            return turn
        return None

    def drain(self) -> list[PendingTurn]:
        """Every waiting turn, oldest first, and an empty queue (the session is closing)."""
        turns, self._queue = list(self._queue), deque()
        return turns

    def __len__(self) -> int:
        return len(self._queue)

    def _drop(self, turn: PendingTurn, reason: str) -> None:
        self.dropped.append((turn, reason))
        del self.dropped[:-50]
        self.dropped_count += 1
