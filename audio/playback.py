"""Playing streamed TTS audio into a Discord voice connection.

Two pieces:

- Audio sources (``discord.AudioSource``) that are *fed while they play*: ``feed(chunk)`` from the
  event loop as TTS chunks arrive, ``end_input()`` when the stream is done. ``read()`` (called by
  discord.py's player thread every 20 ms) returns exactly one 3,840-byte frame of 48 kHz stereo
  s16le, or ``b""`` at the end. ``StreamingFFmpegSource`` converts any format through an FFmpeg
  subprocess (stdin writer thread, stdout reader thread); ``StreamingPCMSource`` upmixes s16le
  48 kHz in-process. Both count the frames actually handed out, so barge-in knows what was heard.
- ``Speaker``: one per voice connection, an ordered queue of utterances (text + async iterator of
  audio chunks). Playback of an utterance starts on its first chunk; the next utterance's TTS is
  prefetched while the current one plays; ``stop()`` (barge-in) cuts playback at the next frame
  and reports how much of each utterance was played.

Why an in-process source exists (measured with imageio-ffmpeg 9.0.2): FFmpeg's raw PCM demuxer
emits packets of ``2**floor(log2(rate/10))`` samples, i.e. 4,096 samples (85 ms) at 48 kHz, and
waits for a full packet before producing any output, so the first frame needs 8,192 bytes of
input and every underrun waits for a full packet; a WAV header with ``-max_size`` is worse (no
output until ~0.7 s of input had been probed). For audio that is already s16le at 48 kHz the
in-process upmix has no such delay and spawns no process; every other format goes through FFmpeg.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import discord
import numpy as np

from audio.native import find_ffmpeg
from audio.tts.base import AudioFormat

__all__ = [
    "FRAME_BYTES",
    "FRAME_SECONDS",
    "SILENCE_FRAME",
    "PlayTarget",
    "StreamingSource",
    "StreamingFFmpegSource",
    "StreamingPCMSource",
    "make_source",
    "ffmpeg_command",
    "Utterance",
    "PlayedUtterance",
    "UtteranceHandle",
    "Speaker",
    "spoken_prefix",
]

log = logging.getLogger(__name__)

# discord.py's contract: 20 ms of 48 kHz, 2-channel, 16-bit PCM per read().
FRAME_SECONDS = 0.02
FRAME_BYTES = 3840
SILENCE_FRAME = bytes(FRAME_BYTES)
_OUTPUT_BYTES_PER_SECOND = 48000 * 2 * 2
# Speech rate used to guess an utterance's length while its audio is still arriving.
_CHARS_PER_SECOND_ESTIMATE = 14.0
_FFMPEG_INPUT_FORMATS = {"s16le": "s16le", "ulaw": "mulaw", "mp3": "mp3"}


class _End:
    """Sentinel: no more frames."""


_END = _End()


@runtime_checkable
class PlayTarget(Protocol):
    """What ``Speaker`` plays into; ``discord.VoiceClient`` satisfies it.

    ``after(error)`` is called from a foreign thread when playback of ``source`` ended (exhausted
    or stopped); the target cleans up the source afterwards.
    """

    def play(self, source: discord.AudioSource, *, after: Callable[[Exception | None], Any] | None = None) -> None: ...

    def stop(self) -> None: ...

    def is_playing(self) -> bool: ...

    def is_connected(self) -> bool: ...


class StreamingSource(discord.AudioSource):
    """An audio source fed with chunks while the player reads 20 ms frames from it.

    Thread model: ``feed``/``end_input``/``abort`` are called from the event loop; ``read`` from
    the player thread; frames cross through a ``queue.Queue``.

    Args:
        start_timeout: how long ``read()`` waits for the very first frame before giving up (``b""``).
        underrun_wait: once audio started, how long ``read()`` waits for the next frame before
            returning a silence frame instead (keeps the player's 20 ms cadence when TTS is slower
            than real time); None blocks until the frame or the end arrives.
        on_first_frame: called on the player thread with ``time.monotonic()`` when the first
            non-silent frame is returned.
    """

    def __init__(
        self,
        *,
        start_timeout: float = 10.0,
        underrun_wait: float | None = 0.02,
        on_first_frame: Callable[[float], None] | None = None,
    ) -> None:
        self._frames: queue.Queue[bytes | _End] = queue.Queue()
        self._pending = bytearray()  # output bytes not yet a whole frame (producer side only)
        self._start_timeout = start_timeout
        self._underrun_wait = underrun_wait
        self._on_first_frame = on_first_frame
        self._aborted = threading.Event()
        self._input_ended = False
        self._output_complete = threading.Event()
        self._state_lock = threading.Lock()
        self._cleanup_lock = threading.Lock()
        self._cleaned = False
        self.frames_read = 0  # frames of real audio returned by read()
        self.silence_frames = 0  # underrun padding returned by read()
        self.frames_produced = 0  # frames of real audio available so far
        self.first_output_at: float | None = None
        self.first_frame_at: float | None = None
        # discord.py's player reads this attribute when read() returns b"" and passes it to after().
        self._current_error: Exception | None = None

    # -- producer side -------------------------------------------------------------------------

    def _emit(self, data: bytes, *, final: bool = False) -> None:
        """Append converted 48 kHz stereo bytes; queue whole frames (pad the tail when final)."""
        self._pending += data
        whole = len(self._pending) - len(self._pending) % FRAME_BYTES
        for offset in range(0, whole, FRAME_BYTES):
            self._frames.put(bytes(self._pending[offset : offset + FRAME_BYTES]))
            self.frames_produced += 1
        del self._pending[:whole]
        if final:
            if self._pending:
                self._frames.put(bytes(self._pending) + bytes(FRAME_BYTES - len(self._pending)))
                self.frames_produced += 1
                self._pending.clear()
            self._frames.put(_END)
            self._output_complete.set()

    def feed(self, chunk: bytes) -> None:
        """Add a chunk of input audio (the source's input format). Ignored after abort/cleanup."""
        raise NotImplementedError

    def end_input(self) -> None:
        """No more input: the source plays what it has, then ``read()`` returns ``b""``."""
        raise NotImplementedError

    def abort(self) -> None:
        """Stop now: the next ``read()`` returns ``b""`` (a blocked one wakes up)."""
        self._aborted.set()
        self._frames.put(_END)

    # -- player side ---------------------------------------------------------------------------

    def read(self) -> bytes:
        """One 3,840-byte frame (20 ms, 48 kHz stereo s16le), or ``b""`` when finished or aborted."""
        if self._aborted.is_set():
            return b""
        started = self.frames_read > 0
        timeout = self._underrun_wait if started else self._start_timeout
        try:
            item = self._frames.get(timeout=timeout)
        except queue.Empty:
            if not started:
                self._current_error = TimeoutError(f"no audio within {self._start_timeout}s")
                log.warning("audio source produced no frame within %.1fs", self._start_timeout)
                return b""
            self.silence_frames += 1
            return SILENCE_FRAME
        if isinstance(item, _End) or self._aborted.is_set():
            self._frames.put(_END)  # keep the end sticky for any later read()
            return b""
        self.frames_read += 1
        if self.first_output_at is None:
            self.first_output_at = time.monotonic()
        if self.first_frame_at is None and item.count(0) != FRAME_BYTES:
            self.first_frame_at = time.monotonic()
            if self._on_first_frame is not None:
                try:
                    self._on_first_frame(self.first_frame_at)
                except Exception:
                    log.exception("on_first_frame callback failed")
        return item

    def is_opus(self) -> bool:
        return False

    # -- accounting ----------------------------------------------------------------------------

    @property
    def seconds_played(self) -> float:
        """Seconds of real audio handed to the player (excludes underrun silence)."""
        return self.frames_read * FRAME_SECONDS

    @property
    def output_complete(self) -> bool:
        """True once every frame of the input has been produced."""
        return self._output_complete.is_set()

    @property
    def total_seconds(self) -> float | None:
        """The full duration once known (input ended and fully converted), else None."""
        return self.frames_produced * FRAME_SECONDS if self.output_complete else None

    @property
    def seconds_available(self) -> float:
        """Seconds of audio converted so far (a lower bound on the total while input arrives)."""
        return self.frames_produced * FRAME_SECONDS

    def cleanup(self) -> None:
        """Release everything (idempotent; discord.py calls it after ``after``)."""
        self.abort()


class StreamingPCMSource(StreamingSource):
    """In-process source for s16le at 48 kHz, mono (upmixed) or stereo: no subprocess, no delay."""

    @staticmethod
    def accepts(fmt: AudioFormat) -> bool:
        """True if this source can play ``fmt`` (s16le at 48 kHz, mono or stereo)."""
        return fmt.encoding == "s16le" and fmt.sample_rate == 48000 and fmt.channels in (1, 2)

    def __init__(self, fmt: AudioFormat, **kwargs: Any) -> None:
        if not self.accepts(fmt):
            raise ValueError(f"StreamingPCMSource needs s16le 48 kHz mono/stereo, not {fmt}")
        super().__init__(**kwargs)
        self.format = fmt
        self._carry = b""  # an odd byte (or a partial stereo sample) split across chunks

    def feed(self, chunk: bytes) -> None:
        with self._state_lock:
            if self._aborted.is_set() or self._input_ended or not chunk:
                return
            data = self._carry + chunk
            unit = 2 * self.format.channels
            cut = len(data) - len(data) % unit
            self._carry = data[cut:]
            if cut:
                samples = np.frombuffer(data[:cut], dtype="<i2")
                if self.format.channels == 1:
                    samples = np.repeat(samples, 2)
                self._emit(samples.tobytes())

    def end_input(self) -> None:
        with self._state_lock:
            if self._input_ended:
                return
            self._input_ended = True
            self._emit(b"", final=True)


def ffmpeg_command(fmt: AudioFormat, executable: str) -> list[str]:
    """The FFmpeg argument list converting ``fmt`` on stdin to 48 kHz stereo s16le on stdout.

    Built with ffmpeg-python's ``compile()``. Probing is disabled (the input format is given),
    which matters on a pipe where probing would wait for data.
    """
    import ffmpeg

    if fmt.encoding not in _FFMPEG_INPUT_FORMATS:
        raise ValueError(f"unsupported input encoding {fmt.encoding!r}")
    input_options: dict[str, Any] = {
        "format": _FFMPEG_INPUT_FORMATS[fmt.encoding],
        "fflags": "nobuffer",
        "probesize": 32,
        "analyzeduration": 0,
    }
    if fmt.encoding != "mp3":
        input_options.update(ar=fmt.sample_rate, ac=fmt.channels)
    stream = ffmpeg.input("pipe:", **input_options).output("pipe:", format="s16le", ar=48000, ac=2)
    # ffmpeg-python puts global args after the output; FFmpeg would ignore trailing options
    # ("Trailing option(s) found"), so move them to the front of the compiled list.
    args = stream.compile(cmd=executable)
    return [args[0], "-hide_banner", "-nostats", "-loglevel", "error", *args[1:]]


class StreamingFFmpegSource(StreamingSource):
    """Any input format through an FFmpeg subprocess, fed through its stdin while it plays.

    A writer thread moves chunks from a queue to FFmpeg's stdin; a reader thread cuts stdout
    into 20 ms frames. ``cleanup()`` kills FFmpeg and reaps it, so no process outlives the source.
    """

    def __init__(self, fmt: AudioFormat, *, executable: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.format = fmt
        self._chunks: queue.Queue[bytes | _End] = queue.Queue()
        self.args = ffmpeg_command(fmt, executable or find_ffmpeg())
        self._process = subprocess.Popen(
            self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
        )
        self.pid = self._process.pid
        self._writer = threading.Thread(target=self._write_loop, name=f"ffmpeg-stdin:{self.pid}", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name=f"ffmpeg-stdout:{self.pid}", daemon=True)
        self._writer.start()
        self._reader.start()

    def feed(self, chunk: bytes) -> None:
        with self._state_lock:
            if self._aborted.is_set() or self._input_ended or not chunk:
                return
            self._chunks.put(chunk)

    def end_input(self) -> None:
        with self._state_lock:
            if self._input_ended:
                return
            self._input_ended = True
            self._chunks.put(_END)

    def _write_loop(self) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            while True:
                item = self._chunks.get()
                if isinstance(item, _End) or self._aborted.is_set():
                    break
                stdin.write(item)
        except (BrokenPipeError, OSError, ValueError):
            # FFmpeg exited (killed by cleanup, or failed: the reader reports that).
            log.debug("ffmpeg %s stdin closed early", self.pid)
        finally:
            with suppress(OSError, ValueError):
                stdin.close()

    def _read_loop(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        try:
            while True:
                data = stdout.read(FRAME_BYTES * 4)
                if not data:
                    break
                self._emit(data)
        except (OSError, ValueError):
            log.debug("ffmpeg %s stdout closed", self.pid)
        code = self._process.wait()
        if code != 0 and not self._aborted.is_set():
            stderr = b""
            with suppress(OSError, ValueError):
                stderr = self._process.stderr.read(4000) if self._process.stderr else b""
            self._current_error = RuntimeError(
                f"FFmpeg exited with code {code}: {stderr.decode('utf-8', 'replace').strip()[-500:]}"
            )
            log.error("%s", self._current_error)
        self._emit(b"", final=True)

    @property
    def process_alive(self) -> bool:
        """True while the FFmpeg process has not exited."""
        return self._process.poll() is None

    def cleanup(self) -> None:
        """Kill FFmpeg, reap it and stop both threads. Idempotent; safe from any thread and __del__.

        A second caller waits until the first has finished, so "cleanup returned" always means
        the process is gone.
        """
        process = getattr(self, "_process", None)
        if process is None:
            return
        with self._cleanup_lock:
            if self._cleaned:
                return
            self.abort()
            self._chunks.put(_END)
            if process.poll() is None:
                with suppress(OSError):
                    process.kill()
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            current = threading.current_thread()
            for thread in (self._writer, self._reader):
                if thread is not current:
                    thread.join(timeout=5)
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    with suppress(OSError, ValueError):
                        pipe.close()
            self._cleaned = True


def make_source(
    fmt: AudioFormat, *, executable: str | None = None, always_ffmpeg: bool = False, **kwargs: Any
) -> StreamingSource:
    """The best source for ``fmt``: in-process for s16le 48 kHz (unless ``always_ffmpeg``), else FFmpeg."""
    if not always_ffmpeg and StreamingPCMSource.accepts(fmt):
        return StreamingPCMSource(fmt, **kwargs)
    return StreamingFFmpegSource(fmt, executable=executable, **kwargs)


def spoken_prefix(text: str, fraction: float) -> str:
    """The words of ``text`` within the first ``fraction`` of its characters (whole words only). Pure."""
    if fraction >= 1.0:
        return text
    if fraction <= 0.0 or not text:
        return ""
    cut = int(len(text) * fraction)
    if cut < len(text) and not text[cut].isspace():
        space = text.rfind(" ", 0, cut + 1)
        cut = space if space > 0 else 0
    return text[:cut].rstrip()


# -- the utterance queue -----------------------------------------------------------------------


async def _aclose_quietly(audio: AsyncIterator[bytes]) -> None:
    """Close a TTS audio iterator if it can be closed (an async generator); errors are ignored."""
    aclose = getattr(audio, "aclose", None)
    if aclose is not None:
        with suppress(Exception):
            await aclose()


@dataclass
class Utterance:
    """One thing to say: its text (for memory) and its audio stream in ``format``."""

    text: str
    audio: AsyncIterator[bytes]
    format: AudioFormat


@dataclass(frozen=True)
class PlayedUtterance:
    """What happened to one utterance. Times are ``time.monotonic()``; None when it never happened."""

    text: str
    spoken_text: str  # approximated from the played share of the audio when interrupted
    played_seconds: float
    total_seconds: float | None
    interrupted: bool
    error: BaseException | None
    enqueued_at: float
    first_chunk_at: float | None
    first_frame_at: float | None
    finished_at: float


@dataclass(eq=False)
class UtteranceHandle:
    """Returned by ``Speaker.enqueue``.

    ``first_frame`` resolves to the ``time.monotonic()`` at which the first non-silent frame was
    handed to the player, or None if the utterance ended without playing any; ``done`` resolves
    to the ``PlayedUtterance``.
    """

    utterance: Utterance
    first_frame: asyncio.Future[float | None]
    done: asyncio.Future[PlayedUtterance]
    enqueued_at: float = field(default_factory=time.monotonic)
    first_chunk_at: float | None = None
    source: StreamingSource | None = None
    error: BaseException | None = None
    interrupted: bool = False
    stream_finished: bool = False
    chunks: asyncio.Queue[bytes | BaseException | _End] = field(default_factory=asyncio.Queue)
    fetch_task: asyncio.Task[None] | None = None


class Speaker:
    """The utterance queue of one voice connection.

    Args:
        target: where audio plays (a ``discord.VoiceClient`` or any ``PlayTarget``).
        ffmpeg: the FFmpeg executable (``audio.native.find_ffmpeg()`` when None).
        always_ffmpeg: route s16le 48 kHz through FFmpeg too (otherwise it is upmixed in-process).
        prefetch: how many queued utterances behind the playing one have their TTS stream running
            (ElevenLabs plans cap concurrent requests, so keep this small).
        on_error: called on the event loop with (utterance, error) for every TTS, FFmpeg, play or
            ``after`` error; errors are also logged and recorded in ``PlayedUtterance.error``.
        underrun_wait / start_timeout: passed to the sources (see ``StreamingSource``).
    """

    def __init__(
        self,
        target: PlayTarget,
        *,
        ffmpeg: str | None = None,
        always_ffmpeg: bool = False,
        prefetch: int = 1,
        on_error: Callable[[Utterance, BaseException], None] | None = None,
        underrun_wait: float | None = 0.02,
        start_timeout: float = 10.0,
        name: str = "speaker",
    ) -> None:
        self._target = target
        self._ffmpeg = ffmpeg
        self._always_ffmpeg = always_ffmpeg
        self._prefetch = max(0, prefetch)
        self._on_error = on_error
        self._source_options: dict[str, Any] = {"underrun_wait": underrun_wait, "start_timeout": start_timeout}
        self._name = name
        self._pending: list[UtteranceHandle] = []
        self._current: UtteranceHandle | None = None
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._worker = asyncio.create_task(self._run(), name=f"{name}-worker")

    # -- public API ----------------------------------------------------------------------------

    @property
    def is_speaking(self) -> bool:
        """True while an utterance is playing or queued."""
        return not self._idle.is_set()

    def enqueue(self, utterance: Utterance) -> UtteranceHandle:
        """Queue ``utterance``; it plays after those before it, starting on its first audio chunk."""
        if self._closed:
            raise RuntimeError("Speaker is closed")
        handle = UtteranceHandle(utterance, self._loop.create_future(), self._loop.create_future())
        self._pending.append(handle)
        self._idle.clear()
        self._start_fetches()
        self._wakeup.set()
        return handle

    async def stop(self) -> list[PlayedUtterance]:
        """Barge-in: stop the playing utterance at the next frame and drop the queue.

        Returns one ``PlayedUtterance`` per utterance affected, in order (the playing one with what
        was actually played, queued ones with nothing played), all marked interrupted.
        """
        affected = ([self._current] if self._current is not None else []) + self._pending
        self._pending = []
        for handle in affected:
            handle.interrupted = True
            if handle.source is not None:
                handle.source.abort()
        if self._current is not None and self._current.source is not None:
            with suppress(Exception):
                self._target.stop()
        for handle in affected:
            if handle is not self._current:
                await self._discard(handle)
            else:
                handle.chunks.put_nowait(_END)
        return [await asyncio.shield(h.done) for h in affected]

    async def clear(self) -> list[PlayedUtterance]:
        """Drop queued utterances that have not started; the playing one continues."""
        dropped, self._pending = self._pending, []
        for handle in dropped:
            handle.interrupted = True
            await self._discard(handle)
        return [h.done.result() for h in dropped]

    async def wait_idle(self) -> None:
        """Wait until everything queued has finished playing (or was stopped)."""
        await self._idle.wait()

    async def aclose(self) -> None:
        """Stop everything; no FFmpeg process and no task is left behind. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.stop()
        self._worker.cancel()
        with suppress(asyncio.CancelledError):
            await self._worker

    # -- internals -----------------------------------------------------------------------------

    def _start_fetches(self) -> None:
        for handle in self._pending[: self._prefetch + (0 if self._current else 1)]:
            if handle.fetch_task is None:
                handle.fetch_task = asyncio.create_task(self._fetch(handle), name=f"{self._name}-tts-fetch")

    async def _fetch(self, handle: UtteranceHandle) -> None:
        audio = handle.utterance.audio
        try:
            async for chunk in audio:
                if chunk:
                    if handle.first_chunk_at is None:
                        handle.first_chunk_at = time.monotonic()
                    handle.chunks.put_nowait(chunk)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            handle.chunks.put_nowait(exc)
        else:
            handle.stream_finished = True
            handle.chunks.put_nowait(_END)
        finally:
            await _aclose_quietly(audio)

    async def _cancel_fetch(self, handle: UtteranceHandle) -> None:
        task = handle.fetch_task
        if task is not None and not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        elif task is None:
            # Never fetched: close the iterator so the TTS request is not left half-open.
            await _aclose_quietly(handle.utterance.audio)

    async def _discard(self, handle: UtteranceHandle) -> None:
        await self._cancel_fetch(handle)
        self._finish(handle)

    def _report(self, handle: UtteranceHandle, error: BaseException) -> None:
        if handle.error is None:
            handle.error = error
        log.error("playback of %r failed: %s", handle.utterance.text[:60], error, exc_info=error)
        if self._on_error is not None:
            try:
                self._on_error(handle.utterance, error)
            except Exception:
                log.exception("Speaker on_error callback failed")

    def _finish(self, handle: UtteranceHandle) -> None:
        if handle.done.done():
            return
        source = handle.source
        played = source.seconds_played if source else 0.0
        total = source.total_seconds if source else None
        text = handle.utterance.text
        if source is None or played <= 0:
            spoken = ""
        elif total is not None and played >= total - 1e-9:
            spoken = text
        else:
            estimate = total if total is not None else max(
                source.seconds_available, len(text) / _CHARS_PER_SECOND_ESTIMATE
            )
            spoken = spoken_prefix(text, played / estimate if estimate > 0 else 0.0)
        result = PlayedUtterance(
            text=text,
            spoken_text=spoken,
            played_seconds=played,
            total_seconds=total,
            interrupted=handle.interrupted,
            error=handle.error,
            enqueued_at=handle.enqueued_at,
            first_chunk_at=handle.first_chunk_at,
            first_frame_at=source.first_frame_at if source else None,
            finished_at=time.monotonic(),
        )
        handle.done.set_result(result)
        if not handle.first_frame.done():
            handle.first_frame.set_result(result.first_frame_at)

    def _first_frame_callback(self, handle: UtteranceHandle) -> Callable[[float], None]:
        def on_first_frame(at: float) -> None:  # player thread
            def resolve() -> None:
                if not handle.first_frame.done():
                    handle.first_frame.set_result(at)

            with suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                self._loop.call_soon_threadsafe(resolve)

        return on_first_frame

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            handle = self._pending.pop(0)
            self._current = handle
            self._start_fetches()
            try:
                await self._play(handle)
            finally:
                if handle.source is not None:
                    await asyncio.to_thread(handle.source.cleanup)
                await self._cancel_fetch(handle)
                self._finish(handle)
                self._current = None

    async def _play(self, handle: UtteranceHandle) -> None:
        if handle.fetch_task is None:
            self._start_fetches()
        first = await handle.chunks.get()
        if isinstance(first, _End):
            return  # nothing to say (empty text) or stopped before any audio
        if isinstance(first, BaseException):
            self._report(handle, first)
            return
        try:
            source = make_source(
                handle.utterance.format,
                executable=self._ffmpeg,
                always_ffmpeg=self._always_ffmpeg,
                on_first_frame=self._first_frame_callback(handle),
                **self._source_options,
            )
        except Exception as exc:  # no FFmpeg for this format: this utterance fails, the queue goes on
            self._report(handle, exc)
            return
        handle.source = source
        source.feed(first)
        finished: asyncio.Future[Exception | None] = self._loop.create_future()

        def after(error: Exception | None) -> None:  # player thread
            def resolve() -> None:
                if not finished.done():
                    finished.set_result(error)

            try:
                self._loop.call_soon_threadsafe(resolve)
            except RuntimeError:
                log.error("playback ended after the event loop closed (error: %r)", error)

        if handle.interrupted:
            return
        try:
            if not self._target.is_connected():
                raise ConnectionError("not connected to a voice channel")
            self._target.play(source, after=after)
        except Exception as exc:
            self._report(handle, exc)
            return
        feeding = True
        while feeding:
            get = asyncio.ensure_future(handle.chunks.get())
            done, _ = await asyncio.wait({get, finished}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()  # playback ended first (stopped, disconnected or failed)
                break
            item = get.result()
            if isinstance(item, _End):
                feeding = False
            elif isinstance(item, BaseException):
                # TTS failed mid-utterance: play what arrived, then move on to the next utterance.
                self._report(handle, item)
                feeding = False
            else:
                source.feed(item)
        source.end_input()
        error = await finished
        if error is not None:
            self._report(handle, error)
