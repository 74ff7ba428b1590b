"""The text-to-speech interface every engine implements, and the dataclasses that cross it.

An engine turns text plus an optional voice into an async stream of audio chunks in the format it
declares up front (``TTSEngine.format``), so playback can start on the first chunk. Provider SDK
types never leave the engine's module: only these dataclasses and ``TTSError`` do.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

__all__ = ["AudioFormat", "VoiceSpec", "VoiceInfo", "TTSError", "TTSEngine", "stream_from_thread"]


@dataclass(frozen=True)
class AudioFormat:
    """What an engine's chunks contain.

    ``encoding`` is ``"s16le"`` (raw signed 16-bit little-endian PCM), ``"mp3"`` or ``"ulaw"``.
    """

    encoding: str
    sample_rate: int
    channels: int = 1

    @property
    def bytes_per_second(self) -> int | None:
        """Bytes of audio per second for raw formats; None for compressed ones (mp3)."""
        if self.encoding == "s16le":
            return self.sample_rate * self.channels * 2
        if self.encoding == "ulaw":
            return self.sample_rate * self.channels
        return None


@dataclass(frozen=True)
class VoiceSpec:
    """Which voice to speak with; every field optional so engines fall back to their defaults.

    Built from a character's ``settings.voice.elevenlabs`` or from settings. Local engines read
    ``voice_id`` as their own voice name (e.g. ``"en-us"`` for espeak-ng) and ignore the rest.
    """

    voice_id: str | None = None
    model: str | None = None
    stability: float | None = None
    similarity_boost: float | None = None
    style: float | None = None
    use_speaker_boost: bool | None = None
    # The language of the text (ISO 639-1): ElevenLabs' language_code; espeak-ng picks its voice
    # for it when voice_id names none.
    language: str | None = None


@dataclass(frozen=True)
class VoiceInfo:
    """One voice an engine offers (for listing in commands and ``voicebot check``)."""

    id: str
    name: str
    description: str = ""


class TTSError(Exception):
    """Synthesis failed.

    ``str(exc)`` is for logs and never contains a secret; ``user_message`` is friendly and safe
    to show to a person; ``retryable`` says whether trying again later could help (the engine has
    already done its own bounded retries). ``kind`` is a short machine-readable reason
    (e.g. ``"invalid_api_key"``, ``"quota_exceeded"``, ``"voice_not_found"``).
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        user_message: str = "Sorry, I couldn't speak that.",
        kind: str = "error",
        audio_started: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.user_message = user_message
        self.kind = kind
        # True when some audio of this request had already been yielded before the failure: the
        # caller must not replay the request from the start without accounting for that audio.
        self.audio_started = audio_started


class TTSEngine(ABC):
    """Text plus voice in, an async stream of audio chunks in ``format`` out."""

    name: str
    format: AudioFormat

    @abstractmethod
    def synthesize(self, text: str, voice: VoiceSpec | None = None) -> AsyncIterator[bytes]:
        """Stream audio for ``text``; raises ``TTSError`` (possibly after some chunks).

        Implementations are async generators: iterate, do not await. Close the iterator
        (``contextlib.aclosing``) when stopping early so the request is cancelled promptly.
        Empty or whitespace-only text yields nothing.
        """

    @abstractmethod
    async def list_voices(self) -> list[VoiceInfo]:
        """The voices this engine can use."""

    @abstractmethod
    async def check(self) -> str:
        """Verify the engine works (for ``voicebot check``): return a short detail or raise ``TTSError``."""

    async def aclose(self) -> None:
        """Release resources (HTTP clients, models). Idempotent."""
        return None


async def stream_from_thread(produce: Callable[[Callable[[bytes], bool]], None], *, what: str) -> AsyncIterator[bytes]:
    """Run a blocking synthesizer on a worker thread and yield its audio as it is produced.

    ``produce(emit)`` runs in the default executor and calls ``emit(chunk)`` for each piece of audio;
    ``emit`` returns False once the consumer has stopped (the async generator was closed), and the
    producer should then return early. A ``TTSError`` from the producer propagates unchanged; any
    other exception becomes ``TTSError("{what} failed: …")``. Closing the generator waits for the
    producer to return, so a synthesizer's lock is never left held.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
    stop = threading.Event()

    def emit(chunk: bytes) -> bool:
        loop.call_soon_threadsafe(queue.put_nowait, chunk)
        return not stop.is_set()

    def work() -> None:
        try:
            produce(emit)
        except BaseException as exc:  # delivered to the consumer, re-raised there
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        else:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    future = loop.run_in_executor(None, work)
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            if isinstance(item, TTSError):
                raise item
            if isinstance(item, BaseException):
                raise TTSError(f"{what} failed: {item!r}", kind="engine_failed") from item
            yield item
    finally:
        stop.set()
        await asyncio.shield(future)
