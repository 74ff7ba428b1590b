"""A scripted ``STTEngine`` for tests of code that consumes transcripts (the voice session).

Each ``finalize()`` on any stream "recognises" the next scripted utterance: an interim with its
first half (when ``interim``), then a final with ``end_of_turn``. Tests can also drive a stream
directly with ``say()`` and ``fail()``. Switches: ``delay`` (seconds before a finalize's transcripts
appear), ``open_error`` (``open_stream`` raises), ``fail_after`` + ``stream_error`` (the stream fails
on that finalize), ``check_error``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Iterable

from audio.stt.base import STTEngine, STTError, STTStream, Transcript, TranscriptQueue, Word


class FakeSTTStream(STTStream):
    """Records what was pushed; emits scripted transcripts on ``finalize``."""

    def __init__(self, engine: FakeSTTEngine, *, speaker: str, sample_rate: int) -> None:
        self.engine = engine
        self.speaker = speaker
        self.sample_rate = sample_rate
        self.pushed = bytearray()
        self.finalize_count = 0
        self.closed = False
        self._turn_start = 0.0
        self._out = TranscriptQueue()
        self._jobs: asyncio.Queue[tuple[str | None, float, float, STTError | None]] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._work(), name=f"fake-stt:{speaker}")

    @property
    def seconds(self) -> float:
        return len(self.pushed) / (2 * self.sample_rate)

    def push(self, pcm: bytes) -> None:
        if not self.closed:
            self.pushed += pcm

    async def finalize(self) -> None:
        if self.closed:
            return
        self.finalize_count += 1
        engine = self.engine
        error = None
        if engine.fail_after is not None and self.finalize_count >= engine.fail_after:
            error = engine.stream_error or STTError("scripted failure", retryable=True)
        text = engine.utterances.popleft() if engine.utterances else None
        start, end = self._turn_start, self.seconds
        self._turn_start = end
        self._jobs.put_nowait((text, start, end, error))

    def say(self, text: str, *, is_final: bool = True, end_of_turn: bool = True) -> Transcript:
        """Emit a transcript now, spanning the audio pushed since the last turn."""
        t = _transcript(text, self._turn_start, self.seconds, is_final=is_final, end_of_turn=end_of_turn)
        if end_of_turn:
            self._turn_start = self.seconds
        self._out.put(t)
        return t

    def fail(self, error: STTError) -> None:
        """End iteration with ``error``."""
        self._out.fail(error)

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._jobs.put_nowait(("\0stop", 0.0, 0.0, None))  # after any pending finalize jobs
        await self._task
        self._out.close()
        self.engine.open_streams.discard(self)

    def __aiter__(self) -> AsyncIterator[Transcript]:
        return self._out.__aiter__()

    async def _work(self) -> None:
        while True:
            text, start, end, error = await self._jobs.get()
            if text == "\0stop":
                return
            if self.engine.delay:
                await asyncio.sleep(self.engine.delay)
            if error is not None:
                self._out.fail(error)
                continue
            if text is None:
                continue
            words = text.split()
            if self.engine.interim and len(words) > 1:
                half = " ".join(words[: len(words) // 2])
                self._out.put(_transcript(half, start, (start + end) / 2, is_final=False, end_of_turn=False))
            self._out.put(_transcript(text, start, end, is_final=True, end_of_turn=True))


def _transcript(text: str, start: float, end: float, *, is_final: bool, end_of_turn: bool) -> Transcript:
    words = text.split()
    step = (end - start) / len(words) if words else 0.0
    return Transcript(
        text=text,
        is_final=is_final,
        end_of_turn=end_of_turn,
        start=start,
        end=end,
        confidence=1.0 if words else None,
        words=tuple(Word(w, start + i * step, start + (i + 1) * step, 1.0) for i, w in enumerate(words)),
        received_at=time.monotonic(),
    )


class FakeSTTEngine(STTEngine):
    """Scripted speech-to-text; see the module docstring for the switches."""

    name = "fake"

    def __init__(
        self,
        utterances: Iterable[str] = (),
        *,
        interim: bool = True,
        delay: float = 0.0,
        open_error: STTError | None = None,
        stream_error: STTError | None = None,
        fail_after: int | None = None,
        check_error: STTError | None = None,
    ) -> None:
        self.utterances: collections.deque[str] = collections.deque(utterances)
        self.interim = interim
        self.delay = delay
        self.open_error = open_error
        self.stream_error = stream_error
        self.fail_after = fail_after
        self.check_error = check_error
        self.streams: list[FakeSTTStream] = []
        self.open_streams: set[FakeSTTStream] = set()
        self.closed = False

    def open_stream(self, *, speaker: str, sample_rate: int = 16000) -> FakeSTTStream:
        if self.open_error is not None:
            raise self.open_error
        stream = FakeSTTStream(self, speaker=speaker, sample_rate=sample_rate)
        self.streams.append(stream)
        self.open_streams.add(stream)
        return stream

    def stream_for(self, speaker: str) -> FakeSTTStream:
        """The most recent stream opened for ``speaker``."""
        return [s for s in self.streams if s.speaker == speaker][-1]

    async def check(self) -> str:
        if self.check_error is not None:
            raise self.check_error
        return "fake engine"

    async def aclose(self) -> None:
        for stream in list(self.open_streams):
            await stream.aclose()
        self.closed = True
