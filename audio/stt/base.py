"""The speech-to-text interface every engine implements, and its data types.

One ``STTStream`` per speaker: the receive/decode path pushes s16le mono PCM into it (``push`` is
synchronous and cheap), calls ``finalize()`` when the speaker stops (Discord sends no packets during
silence, so an engine cannot always notice the pause by itself), and the voice session iterates the
stream for interim and final transcripts.

Transcript conventions shared by all engines:

* ``is_final``: the text of this segment will not change. A turn's text is the concatenation of its
  final segments, in order.
* ``end_of_turn``: the speaker finished a turn. It rides on a final; a final with empty text and
  ``end_of_turn=True`` closes a turn whose words arrived in earlier finals.
* An interim with empty text means "speech started" (a barge-in hint) and carries no words.
* ``turn_event`` on an interim: ``"eager"`` — the engine thinks the turn is probably over (Flux
  ``EagerEndOfTurn``: a reply may be prepared, not played); ``"resumed"`` — it was not (Flux
  ``TurnResumed``: throw that reply away).
* ``start``/``end`` are seconds on the stream's own audio timeline (audio pushed since the stream was
  opened), whatever reconnects happened underneath.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "Word",
    "Transcript",
    "STTError",
    "STTStream",
    "STTEngine",
    "TranscriptQueue",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Word:
    """One recognised word with its timing on the stream's audio timeline (seconds)."""

    text: str
    start: float
    end: float
    confidence: float | None = None


@dataclass(frozen=True)
class Transcript:
    """An interim or final transcript of one speaker's audio."""

    text: str
    is_final: bool
    end_of_turn: bool
    start: float
    end: float
    confidence: float | None = None
    words: tuple[Word, ...] = ()
    received_at: float = 0.0
    turn_event: str = ""  # "eager" | "resumed" | "" (see the module docstring)
    # Share of the transcribed audio a voice-activity detector marked as speech (None: not measured).
    speech_ratio: float | None = None
    # The language the recognizer heard (ISO 639-1 or BCP-47, e.g. "de"), when it says so
    # (Deepgram with language=multi); None otherwise.
    language: str | None = None


class STTError(Exception):
    """A speech-to-text failure.

    ``str(exc)`` is for logs (never contains secrets); ``user_message`` is friendly and safe to show
    in a channel. ``retryable`` says whether opening a new stream later may succeed (a network
    problem) or not (a rejected key, no quota, a missing model).
    """

    def __init__(self, message: str, *, retryable: bool, user_message: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.user_message = user_message or "Speech recognition failed."

    def __repr__(self) -> str:
        return f"STTError({str(self)!r}, retryable={self.retryable})"


class STTStream(ABC):
    """One speaker's recognition stream.

    ``push`` must be called on the event loop thread (audio threads hand off with
    ``loop.call_soon_threadsafe``). Iterate the stream for transcripts; iteration ends after
    ``aclose()`` and raises ``STTError`` if the stream failed for good.
    """

    sample_rate: int
    speaker: str

    @abstractmethod
    def push(self, pcm: bytes) -> None:
        """Queue s16le mono PCM at ``sample_rate``; never blocks."""

    @abstractmethod
    async def finalize(self) -> None:
        """The speaker stopped talking: ask for a final transcript of what was heard now."""

    @abstractmethod
    async def aclose(self) -> None:
        """Flush what is pending, stop, and end iteration. Safe to call twice."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[Transcript]:
        """Interim and final transcripts, in order."""


_S = TypeVar("_S", bound=STTStream)


class STTEngine(ABC):
    """A speech-to-text provider: makes streams, checks its configuration, owns shared resources.

    Engines keep the streams they opened (``_track`` in ``open_stream``, ``_forget`` when a stream
    closes) so that ``aclose`` can close every stream still open (``_close_streams``).
    """

    name: str

    def __init__(self) -> None:
        self._streams: set[STTStream] = set()

    def _track(self, stream: _S) -> _S:
        self._streams.add(stream)
        return stream

    def _forget(self, stream: STTStream) -> None:
        self._streams.discard(stream)

    async def _close_streams(self) -> None:
        """Close every stream still open (concurrently; one stream's failure does not stop the rest)."""
        streams = list(self._streams)
        if streams:
            await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)
        self._streams.clear()

    @abstractmethod
    def open_stream(self, *, speaker: str, sample_rate: int = 16000) -> STTStream:
        """Open a stream for one speaker (a label for logs, e.g. ``discord:1234``)."""

    @abstractmethod
    async def check(self) -> str:
        """Verify the engine can work (key, model); return a short detail or raise ``STTError``."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close every stream still open and release shared resources."""


_END = object()


class TranscriptQueue:
    """The output side of a stream: engines ``put`` transcripts, readers iterate.

    Bounded so that a stream nobody reads cannot grow without limit: when full, the oldest item is
    dropped (logged). ``fail`` ends iteration with an ``STTError``; ``close`` ends it cleanly.
    Only touch it from the event loop thread.
    """

    def __init__(self, maxlen: int = 512) -> None:
        self._items: collections.deque[Transcript] = collections.deque()
        self._maxlen = maxlen
        self._ready = asyncio.Event()
        self._closed = False
        self._error: STTError | None = None
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, transcript: Transcript) -> None:
        if self._closed:
            return
        if len(self._items) >= self._maxlen:
            self._items.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("transcript queue full: dropped %d unread transcripts", self.dropped)
        self._items.append(transcript)
        self._ready.set()

    def fail(self, error: STTError) -> None:
        if self._closed:
            return
        self._error = error
        self.close()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def __aiter__(self) -> AsyncIterator[Transcript]:
        while True:
            if self._items:
                yield self._items.popleft()
                continue
            if self._closed:
                if self._error is not None:
                    raise self._error
                return
            self._ready.clear()
            await self._ready.wait()
