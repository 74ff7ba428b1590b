"""Text-chat logic with no Discord in it: message splitting, rate limiting, streamed delivery.

The chat cog translates Discord events into calls on these; everything here is synchronous or
takes plain callables, so tests drive it without a gateway.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["DISCORD_LIMIT", "SHORTENED_NOTE", "split_message", "RateLimiter", "StreamingWriter", "cut_at_sentence"]

DISCORD_LIMIT = 2000  # characters per message (Discord rejects longer content with 50035)
SHORTENED_NOTE = "*…(reply shortened)*"  # the catalog's chat.shortened in English

_FENCE = re.compile(r"^\s*```(\S*)\s*$")
_SENTENCE_END = re.compile(r"[.!?…][\"')\]]*\s")


def _fence_state(text: str, start_lang: str | None = None) -> str | None:
    """The language of the code block still open at the end of ``text`` ('' for none given), or None."""
    lang = start_lang
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if m:
            lang = None if lang is not None else m.group(1)
    return lang


def cut_at_sentence(text: str, limit: int, *, complete: bool = True) -> str:
    """The longest start of ``text`` within ``limit`` characters that ends a sentence. Pure.

    ``complete=False`` says the text stops mid-stream (the agent was cut off), so even a short one
    is cut back to its last sentence end. Falls back to a line break, then a word boundary, then a
    hard cut, so a reply with no sentence end in reach is still cut somewhere readable.
    """
    if complete and len(text) <= limit:
        return text.rstrip()
    span = min(limit, len(text))
    window = text[: span + 1]  # a sentence ending exactly at the limit still counts
    floor = span // 3  # never keep a uselessly short start just to end on a full stop
    best = -1
    for m in _SENTENCE_END.finditer(window):
        if m.end() - 1 <= span:
            best = m.end()
    if best > floor:
        return text[:best].rstrip()
    for sep in ("\n", " "):
        idx = window.rfind(sep, 0, span)
        if idx > floor:
            return text[:idx].rstrip()
    return text[:span]


def _cut_point(text: str, limit: int, open_lang: str | None = None) -> int:
    """Where to cut ``text`` (len > limit): the best boundary at or before ``limit``.

    ``open_lang`` is the code block already open where ``text`` starts (a continued block).
    """
    window = text[:limit]
    floor = limit // 3  # never make a uselessly short chunk just to find a nice boundary
    # Prefer ending a code block: a boundary right after a closing fence.
    for sep in ("\n\n", "\n"):
        idx = window.rfind(sep)
        while idx > floor:
            if _fence_state(text[:idx], open_lang) is None:
                return idx + len(sep)
            idx = window.rfind(sep, 0, idx)
    for sep in ("\n\n", "\n"):
        idx = window.rfind(sep)
        if idx > floor:
            return idx + len(sep)
    best = -1
    for m in _SENTENCE_END.finditer(window):
        best = m.end()
    if best > floor:
        return best
    idx = window.rfind(" ")
    if idx > floor:
        return idx + 1
    return limit


@dataclass(frozen=True)
class _Piece:
    """A run of the original text; ``raw`` pieces concatenate back to the input exactly."""

    raw: str
    lang_before: str | None  # code block open when the piece starts (its language), or None
    lang_after: str | None

    def render(self) -> str:
        body = self.raw.strip("\n") if self.lang_before is not None else self.raw.strip()
        if not body.strip():
            return ""
        prefix = f"```{self.lang_before}\n" if self.lang_before is not None else ""
        suffix = "\n```" if self.lang_after is not None else ""
        return prefix + body.rstrip() + suffix


def _pieces(text: str, limit: int, open_lang: str | None = None) -> list[_Piece]:
    pieces: list[_Piece] = []
    while text:
        room = limit - (len(f"```{open_lang}\n") if open_lang is not None else 0) - 4  # 4: a closing "\n```"
        if len(text.strip()) <= room:
            pieces.append(_Piece(text, open_lang, _fence_state(text, open_lang)))
            break
        lead = len(text) - len(text.lstrip())
        cut = lead + _cut_point(text[lead:], room, open_lang)
        piece = text[:cut]
        after = _fence_state(piece, open_lang)
        pieces.append(_Piece(piece, open_lang, after))
        open_lang, text = after, text[cut:]
    return pieces


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` characters.

    Cuts at paragraph, then line, then sentence, then word boundaries; avoids cutting inside a
    code block, and where a block is longer than a message, closes it at the cut and reopens it
    (with its language) in the next chunk so both render as code.
    """
    if limit < 32:
        raise ValueError("limit too small to split sensibly")
    rendered = (p.render() for p in _pieces(text.strip(), limit))
    return [r for r in rendered if r]


@dataclass
class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key, with one "slow down" note per window."""

    limit: int
    window: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _events: dict[object, deque[float]] = field(default_factory=dict)
    _warned_until: dict[object, float] = field(default_factory=dict)

    def check(self, key: object) -> tuple[bool, float]:
        """Record an attempt. Returns (allowed, seconds until the next one would be allowed)."""
        now = self.clock()
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) < self.limit:
            events.append(now)
            if len(self._events) > 10_000:  # keep the table bounded
                self._evict(now)
            return True, 0.0
        return False, max(0.0, events[0] + self.window - now)

    def should_warn(self, key: object) -> bool:
        """True once per window for a key that is over its limit."""
        now = self.clock()
        if self._warned_until.get(key, 0.0) > now:
            return False
        events = self._events.get(key)
        self._warned_until[key] = (events[0] + self.window) if events else now + self.window
        return True

    def _evict(self, now: float) -> None:
        for key in [k for k, ev in self._events.items() if not ev or ev[-1] <= now - self.window]:
            self._events.pop(key, None)
            self._warned_until.pop(key, None)


class StreamingWriter:
    """Delivers streamed reply text as Discord messages while it is being generated.

    The first message goes out once the first sentence is complete; after that the last message is
    edited at most every ``edit_interval`` seconds (Discord rate-limits edits), and when the text
    outgrows one message the full chunks are frozen and the rest continues in a new message.
    ``send(text)`` returns a handle; ``edit(handle, text)`` changes it.

    A reply never takes more than ``max_messages`` messages: past that it is cut at a sentence end,
    the last message says it was shortened, ``capped`` becomes true (the caller stops the agent) and
    ``delivered`` holds the text people were shown (what memory should keep).
    """

    def __init__(
        self,
        send: Callable[[str], Awaitable[object]],
        edit: Callable[[object, str], Awaitable[None]],
        *,
        limit: int = DISCORD_LIMIT,
        edit_interval: float = 1.0,
        max_messages: int = 4,
        clock: Callable[[], float] = time.monotonic,
        shortened_note: str = SHORTENED_NOTE,
    ) -> None:
        self._send, self._edit = send, edit
        self._note = shortened_note  # in the reader's language (the chat cog passes the catalog's)
        self._limit, self._interval, self._clock = limit, edit_interval, clock
        self._frozen_chars = 0  # characters of the text already in frozen messages
        self._open_lang: str | None = None  # code block open at the frozen boundary
        self._current: object | None = None
        self._current_text = ""
        self._last_flush = float("-inf")
        self._max_messages = max_messages
        self._frozen_count = 0
        self.messages: list[object] = []
        self.text = ""
        self.capped = False
        self._delivered: str | None = None

    @property
    def delivered(self) -> str:
        """The reply as people saw it (without the shortened note)."""
        return self.text if self._delivered is None else self._delivered

    def _over_cap(self) -> bool:
        # Cheap test on every delta: past this many characters the reply cannot fit what is left.
        return len(self.text) - self._frozen_chars > (self._max_messages - self._frozen_count) * self._limit

    async def feed(self, delta: str) -> None:
        if self.capped:
            return
        self.text += delta
        pending = self.text[self._frozen_chars:]
        if self._current is None and not _SENTENCE_END.search(pending + " ") and len(pending) < 200:
            return  # nothing worth showing yet
        if self._over_cap() or self._clock() - self._last_flush >= self._interval:
            await self._flush(final=False)

    async def finish(self, suffix: str = "") -> None:
        if self.capped:
            return
        self.text += suffix
        await self._flush(final=True)

    async def stream(self, deltas: AsyncIterator[str]) -> str:
        async for delta in deltas:
            await self.feed(delta)
            if self.capped:
                break  # the caller closes the source: nothing more will be shown
        await self.finish()
        return self.text

    async def _flush(self, *, final: bool) -> None:
        rest = self.text[self._frozen_chars:]
        room = self._max_messages - self._frozen_count  # messages left, the one being edited included
        # Only the start can be shown: splitting all of a huge reply would cost time for nothing.
        pieces = _pieces(rest[: (room + 1) * self._limit], self._limit, self._open_lang)
        if len(pieces) > room:
            await self._shorten(pieces[:room])
            return
        # Every piece but the last is complete: show it and freeze it.
        for piece in pieces[:-1]:
            await self._show(piece.render())
            self._frozen_chars += len(piece.raw)
            self._frozen_count += 1
            self._open_lang = piece.lang_after
            self._current, self._current_text = None, ""
        if pieces:
            await self._show(pieces[-1].render())
        self._last_flush = self._clock()

    async def _shorten(self, pieces: list[_Piece]) -> None:
        """Show ``pieces`` (as many as the cap allows), the last one cut at a sentence, with the note."""
        self.capped = True
        for piece in pieces[:-1]:
            await self._show(piece.render())
            self._frozen_chars += len(piece.raw)
            self._frozen_count += 1
            self._open_lang = piece.lang_after
            self._current, self._current_text = None, ""
        last = pieces[-1]
        # Room for the note and for closing/reopening a code block around it.
        reopen = len(f"```{last.lang_before}\n") if last.lang_before is not None else 0
        budget = self._limit - len(self._note) - 2 - reopen - 4  # 4: a closing "\n```"
        raw = cut_at_sentence(last.raw, budget, complete=False)  # more text followed it
        shown = _Piece(raw, last.lang_before, _fence_state(raw, last.lang_before)).render()
        self._delivered = (self.text[: self._frozen_chars] + raw).strip()
        await self._show(f"{shown}\n{self._note}" if shown.endswith("```") else f"{shown} {self._note}".strip())

    async def _show(self, text: str) -> None:
        if not text:
            return
        if self._current is None:
            self._current = await self._send(text)
            self.messages.append(self._current)
        elif text != self._current_text:
            await self._edit(self._current, text)
        self._current_text = text
