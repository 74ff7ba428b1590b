from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import discord
import numpy as np
import pytest

from audio.native import find_ffmpeg
from audio.playback import (
    FRAME_BYTES,
    SILENCE_FRAME,
    PlayTarget,
    Speaker,
    StreamingFFmpegSource,
    StreamingPCMSource,
    Utterance,
    ffmpeg_command,
    make_source,
    spoken_prefix,
)
from audio.tts.base import AudioFormat, TTSError
from audio.tts.espeak import EspeakEngine, synthesize_pcm
from audio.tts.elevenlabs import ElevenLabsEngine
from tests.fakes.elevenlabs_server import DieAfter, FakeElevenLabs

PCM48 = AudioFormat("s16le", 48000, 1)
ESPEAK = AudioFormat("s16le", 22050, 1)


def tone(seconds: float, rate: int = 48000) -> bytes:
    n = int(seconds * rate)
    return (8000 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype("<i2").tobytes()


def pid_gone(pid: int) -> bool:
    """True when the process has exited and been reaped (no zombie left)."""
    return not os.path.exists(f"/proc/{pid}")


def drain(source: discord.AudioSource) -> list[bytes]:
    frames = []
    while frame := source.read():
        frames.append(frame)
    return frames


async def stream_of(pcm: bytes, size: int = 3840) -> AsyncIterator[bytes]:
    for offset in range(0, len(pcm), size):
        yield pcm[offset : offset + size]


class GatedStream:
    """A TTS stream that yields its first chunk, then waits for ``release`` (test-controlled)."""

    def __init__(self, pcm: bytes, *, fail_after_first: BaseException | None = None) -> None:
        self.pcm = pcm
        self.release = asyncio.Event()
        self.first_sent = asyncio.Event()
        self.finished = False
        self.closed = False
        self.fail_after_first = fail_after_first

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            yield self.pcm[:3840]
            self.first_sent.set()
            await self.release.wait()
            if self.fail_after_first is not None:
                raise self.fail_after_first
            for offset in range(3840, len(self.pcm), 3840):
                yield self.pcm[offset : offset + 3840]
            self.finished = True
        finally:
            self.closed = True


class RecorderTarget:
    """A ``PlayTarget`` that behaves like discord.VoiceClient's player: a thread reads 20 ms frames.

    With ``gated=True`` each frame needs a permit from ``allow(n)``, so tests decide exactly how
    much is played before they interrupt.
    """

    def __init__(self, *, gated: bool = False, after_error: Exception | None = None) -> None:
        self.frames: list[bytes] = []
        self.sources: list[discord.AudioSource] = []
        self.connected = True
        self.gated = gated
        self.after_error = after_error
        self.disconnect_after: int | None = None
        self._gate = threading.Semaphore(0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ended = threading.Event()
        self._cond = threading.Condition()

    def allow(self, frames: int) -> None:
        for _ in range(frames):
            self._gate.release()

    def wait_frames(self, count: int, timeout: float = 20.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.frames) >= count, timeout=timeout)

    def play(self, source: discord.AudioSource, *, after: Callable[[Exception | None], Any] | None = None) -> None:
        if not self.connected:
            raise discord.ClientException("Not connected to voice.")
        if self.is_playing():
            raise discord.ClientException("Already playing audio.")
        self._stop = threading.Event()
        self._ended = threading.Event()
        self.sources.append(source)
        self._thread = threading.Thread(target=self._run, args=(source, after, self._stop, self._ended),
                                        name="recorder-player")
        self._thread.start()

    def _run(self, source: discord.AudioSource, after: Callable[[Exception | None], Any] | None, stop: threading.Event,
             ended: threading.Event) -> None:
        error: Exception | None = None
        try:
            while not stop.is_set():
                if self.gated:
                    self._gate.acquire()
                    if stop.is_set():
                        break
                data = source.read()
                if not data:
                    error = getattr(source, "_current_error", None)
                    break
                assert len(data) == FRAME_BYTES
                with self._cond:
                    self.frames.append(data)
                    self._cond.notify_all()
                if self.disconnect_after is not None and len(self.frames) >= self.disconnect_after:
                    self.connected = False
                    break  # discord.py's player gives up when the connection is gone
        except Exception as exc:
            error = exc
        finally:
            # discord.py's AudioPlayer sets its end flag before it calls ``after`` (and cleans up the
            # source after that), so ``is_playing()`` is already False when the next utterance may
            # start. A thread that is merely still alive (killing FFmpeg is slow under load) made
            # the next play() fail with "Already playing audio" and the utterance come out empty.
            ended.set()
            if after is not None:
                try:
                    after(self.after_error or error)
                except Exception:
                    logging.getLogger(__name__).exception("after failed")
            source.cleanup()

    def stop(self) -> None:
        self._stop.set()
        self._gate.release()

    def is_playing(self) -> bool:
        return self._thread is not None and not self._ended.is_set()

    def is_connected(self) -> bool:
        return self.connected

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=20)


def test_recorder_satisfies_the_protocol() -> None:
    assert isinstance(RecorderTarget(), PlayTarget)


# -- sources -----------------------------------------------------------------------------------


def test_ffmpeg_command_is_built_with_ffmpeg_python() -> None:
    args = ffmpeg_command(ESPEAK, "/bin/ffmpeg")
    assert args[0] == "/bin/ffmpeg"
    assert args.index("-loglevel") < args.index("-i")  # global options before the input
    head = args[: args.index("-i")]
    assert ["-f", "s16le"] == head[head.index("-f") : head.index("-f") + 2]
    assert "22050" in head and "pipe:" == args[args.index("-i") + 1]
    tail = args[args.index("-i") + 2 :]
    assert tail[-1] == "pipe:" and "48000" in tail and "2" in tail
    with pytest.raises(ValueError):
        ffmpeg_command(AudioFormat("flac", 44100), "/bin/ffmpeg")


def test_ffmpeg_source_converts_espeak_audio_to_discord_frames() -> None:
    pcm, rate = synthesize_pcm("Hello there, this is a playback test.")
    source = StreamingFFmpegSource(AudioFormat("s16le", rate, 1), underrun_wait=None)
    for offset in range(0, len(pcm), 1000):
        source.feed(pcm[offset : offset + 1000])
    source.end_input()
    frames = drain(source)
    assert frames and all(len(f) == FRAME_BYTES for f in frames)
    seconds = len(pcm) / 2 / rate
    assert abs(source.seconds_played - seconds) < 0.05
    assert source.total_seconds == pytest.approx(source.seconds_played)
    assert source.first_frame_at is not None
    source.cleanup()
    assert not source.process_alive and pid_gone(source.pid)


def test_first_frame_comes_before_the_input_ends() -> None:
    source = StreamingFFmpegSource(PCM48, underrun_wait=None)
    try:
        source.feed(tone(0.3))  # more than one FFmpeg packet (4,096 samples), input still open
        frame = source.read()
        assert len(frame) == FRAME_BYTES and frame != SILENCE_FRAME
        assert not source.output_complete
        source.feed(tone(0.2))
        source.end_input()
        rest = drain(source)
        assert abs((1 + len(rest)) * 0.02 - 0.5) < 0.03
    finally:
        source.cleanup()
    assert pid_gone(source.pid)


def test_cleanup_mid_stream_kills_ffmpeg_and_unblocks_read() -> None:
    source = StreamingFFmpegSource(PCM48, underrun_wait=None)
    source.feed(tone(0.5))
    assert len(source.read()) == FRAME_BYTES
    pid = source.pid
    reader = threading.Thread(target=lambda: [source.read() for _ in range(100)])
    source.cleanup()
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert source.read() == b""
    assert not source.process_alive and pid_gone(pid)
    source.cleanup()  # idempotent


@pytest.mark.parametrize("encoding", ["mp3", "ulaw"])
def test_ffmpeg_source_decodes_compressed_formats(encoding: str) -> None:
    raw = tone(1.0, 24000)
    fmt = {"mp3": ["-f", "mp3", "-b:a", "64k"], "ulaw": ["-f", "mulaw", "-ar", "8000"]}[encoding]
    encoded = subprocess.run(
        [find_ffmpeg(), "-loglevel", "error", "-f", "s16le", "-ar", "24000", "-ac", "1", "-i", "pipe:", *fmt, "pipe:"],
        input=raw, capture_output=True, check=True,
    ).stdout
    source = StreamingFFmpegSource(AudioFormat(encoding, 24000 if encoding == "mp3" else 8000, 1), underrun_wait=None)
    for offset in range(0, len(encoded), 700):
        source.feed(encoded[offset : offset + 700])
    source.end_input()
    frames = drain(source)
    source.cleanup()
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert abs(len(frames) * 0.02 - 1.0) < 0.1


def test_pcm_source_upmixes_and_pads_the_tail() -> None:
    source = make_source(PCM48)
    assert isinstance(source, StreamingPCMSource)
    samples = np.arange(1000, dtype="<i2")
    data = samples.tobytes()
    source.feed(data[:3])  # an odd split: half a sample carried to the next chunk
    source.feed(data[3:])
    source.end_input()
    frames = drain(source)
    assert len(frames) == 2 and all(len(f) == FRAME_BYTES for f in frames)
    stereo = np.frombuffer(b"".join(frames), dtype="<i2")
    assert (stereo[:2000:2] == samples).all() and (stereo[1:2000:2] == samples).all()
    assert not stereo[2000:].any()  # zero padding
    assert source.total_seconds == pytest.approx(0.04)


def test_underrun_returns_silence_that_is_not_counted_as_played() -> None:
    source = StreamingPCMSource(PCM48, underrun_wait=0.0)
    source.feed(tone(0.02))
    assert source.read() != SILENCE_FRAME
    assert source.read() == SILENCE_FRAME  # nothing new yet, input still open
    assert source.frames_read == 1 and source.silence_frames == 1
    source.end_input()
    assert source.read() == b""


def test_abort_wakes_a_blocked_read() -> None:
    source = StreamingPCMSource(PCM48, underrun_wait=None)
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(source.read()))
    reader.start()
    source.abort()
    reader.join(timeout=10)
    assert result == [b""]


def test_spoken_prefix() -> None:
    text = "one two three four"
    assert spoken_prefix(text, 0.0) == ""
    assert spoken_prefix(text, 1.0) == text
    assert spoken_prefix(text, 0.5) == "one two"
    assert spoken_prefix(text, 0.3) == "one"
    assert spoken_prefix(text, 0.05) == ""


# -- the speaker -------------------------------------------------------------------------------


@pytest.fixture(params=["in-process", "ffmpeg"])
def always_ffmpeg(request: pytest.FixtureRequest) -> bool:
    return request.param == "ffmpeg"


async def test_utterances_play_in_order(always_ffmpeg: bool) -> None:
    target = RecorderTarget()
    speaker = Speaker(target, always_ffmpeg=always_ffmpeg, underrun_wait=None)
    first = speaker.enqueue(Utterance("First sentence.", stream_of(tone(0.2)), PCM48))
    second = speaker.enqueue(Utterance("Second one.", stream_of(tone(0.4, 22050), 2000), ESPEAK))
    one, two = await asyncio.wait_for(asyncio.gather(first.done, second.done), timeout=20)
    assert (one.spoken_text, two.spoken_text) == ("First sentence.", "Second one.")
    assert not one.interrupted and one.error is None
    assert one.played_seconds == pytest.approx(0.2, abs=0.021)
    assert two.played_seconds == pytest.approx(0.4, abs=0.03)
    assert one.first_frame_at is not None and two.first_frame_at is not None
    assert one.first_frame_at < two.first_frame_at
    assert await first.first_frame == one.first_frame_at
    assert len(target.frames) == round((one.played_seconds + two.played_seconds) / 0.02)
    await speaker.wait_idle()
    await speaker.aclose()
    assert all(pid_gone(s.pid) for s in target.sources if isinstance(s, StreamingFFmpegSource))


async def test_a_format_without_ffmpeg_fails_alone_and_the_queue_goes_on() -> None:
    """FFmpeg is an optional extra: a sentence that needs it and finds none fails, the next plays.
    (Before, the error left the speaker's loop and everything queued after it waited for ever.)"""
    target = RecorderTarget()
    speaker = Speaker(target, ffmpeg="/nonexistent/ffmpeg", underrun_wait=None)
    piper_like = speaker.enqueue(Utterance("Needs decoding.", stream_of(tone(0.2, 22050), 2000), ESPEAK))
    pcm = speaker.enqueue(Utterance("Plays in process.", stream_of(tone(0.2)), PCM48))
    one, two = await asyncio.wait_for(asyncio.gather(piper_like.done, pcm.done), timeout=20)  # failure guard
    assert isinstance(one.error, FileNotFoundError) and one.played_seconds == 0
    assert two.error is None and two.played_seconds == pytest.approx(0.2, abs=0.021)
    await speaker.aclose()


async def test_playback_starts_on_the_first_chunk(always_ffmpeg: bool) -> None:
    target = RecorderTarget()
    speaker = Speaker(target, always_ffmpeg=always_ffmpeg, underrun_wait=None)
    # FFmpeg needs a full demuxer packet (8,192 bytes at 48 kHz) before it emits anything.
    gated = _BigFirstChunk(tone(1.0), first=9600)
    handle = speaker.enqueue(Utterance("Hello.", gated(), PCM48))
    at = await asyncio.wait_for(handle.first_frame, timeout=20)
    assert at is not None and not gated.finished  # audio is out while TTS is still streaming
    gated.release.set()
    result = await asyncio.wait_for(handle.done, timeout=20)
    assert result.played_seconds == pytest.approx(result.total_seconds)
    await speaker.aclose()


class _BigFirstChunk(GatedStream):
    def __init__(self, pcm: bytes, first: int) -> None:
        super().__init__(pcm)
        self.first = first

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            yield self.pcm[: self.first]
            self.first_sent.set()
            await self.release.wait()
            yield self.pcm[self.first :]
            self.finished = True
        finally:
            self.closed = True


async def test_barge_in_stops_within_a_frame_and_reports_what_was_played(always_ffmpeg: bool) -> None:
    target = RecorderTarget(gated=True)
    speaker = Speaker(target, always_ffmpeg=always_ffmpeg, underrun_wait=None)
    text = "This is a fairly long sentence that will be cut off in the middle by a person."
    first = speaker.enqueue(Utterance(text, stream_of(tone(2.0)), PCM48))
    queued = GatedStream(tone(1.0))
    second = speaker.enqueue(Utterance("Never said.", queued(), PCM48))
    target.allow(25)
    assert await asyncio.to_thread(target.wait_frames, 25)
    results = await asyncio.wait_for(speaker.stop(), timeout=20)
    assert [r.text for r in results] == [text, "Never said."]
    cut, dropped = results
    assert cut.interrupted and dropped.interrupted
    assert cut.played_seconds == pytest.approx(0.5)
    assert len(target.frames) == 25  # nothing read after the stop
    assert cut.spoken_text and text.startswith(cut.spoken_text) and len(cut.spoken_text) < len(text)
    assert dropped.spoken_text == "" and dropped.played_seconds == 0
    assert queued.closed  # its TTS stream was closed, not left hanging
    assert (await first.done) is cut and (await second.done) is dropped
    assert not speaker.is_speaking
    # The queue still works after a barge-in.
    target.allow(1000)
    after = speaker.enqueue(Utterance("Again.", stream_of(tone(0.1)), PCM48))
    assert (await asyncio.wait_for(after.done, timeout=20)).spoken_text == "Again."
    await speaker.aclose()
    assert all(pid_gone(s.pid) for s in target.sources if isinstance(s, StreamingFFmpegSource))


async def test_tts_failure_mid_utterance_moves_on(always_ffmpeg: bool) -> None:
    errors: list[BaseException] = []
    target = RecorderTarget()
    speaker = Speaker(target, always_ffmpeg=always_ffmpeg, underrun_wait=None,
                      on_error=lambda utterance, error: errors.append(error))
    broken = GatedStream(tone(1.0), fail_after_first=TTSError("down", retryable=True, audio_started=True))
    first = speaker.enqueue(Utterance("Broken.", broken(), PCM48))
    second = speaker.enqueue(Utterance("Fine.", stream_of(tone(0.1)), PCM48))
    broken.release.set()
    one, two = await asyncio.wait_for(asyncio.gather(first.done, second.done), timeout=20)
    assert isinstance(one.error, TTSError) and errors == [one.error]
    assert one.played_seconds == pytest.approx(0.04)  # the one chunk that arrived was played
    assert two.error is None and two.spoken_text == "Fine."
    await speaker.aclose()


async def test_tts_failure_before_audio_skips_the_utterance() -> None:
    errors: list[BaseException] = []
    speaker = Speaker(RecorderTarget(), on_error=lambda u, e: errors.append(e), underrun_wait=None)

    async def failing() -> AsyncIterator[bytes]:
        raise TTSError("no key", kind="invalid_api_key")
        yield b""  # pragma: no cover

    first = speaker.enqueue(Utterance("Nope.", failing(), PCM48))
    second = speaker.enqueue(Utterance("Yes.", stream_of(tone(0.1)), PCM48))
    one, two = await asyncio.wait_for(asyncio.gather(first.done, second.done), timeout=20)
    assert one.played_seconds == 0 and one.spoken_text == "" and isinstance(one.error, TTSError)
    assert await first.first_frame is None
    assert two.spoken_text == "Yes."
    assert len(errors) == 1
    await speaker.aclose()


async def test_after_errors_are_surfaced(caplog: pytest.LogCaptureFixture) -> None:
    errors: list[BaseException] = []
    boom = RuntimeError("player exploded")
    speaker = Speaker(RecorderTarget(after_error=boom), on_error=lambda u, e: errors.append(e), underrun_wait=None)
    handle = speaker.enqueue(Utterance("Hi.", stream_of(tone(0.1)), PCM48))
    result = await asyncio.wait_for(handle.done, timeout=20)
    assert result.error is boom and errors == [boom]
    assert "player exploded" in caplog.text
    await speaker.aclose()


async def test_empty_reply_plays_nothing_and_does_not_block_the_queue() -> None:
    target = RecorderTarget()
    speaker = Speaker(target, underrun_wait=None)
    engine = EspeakEngine()
    empty = speaker.enqueue(Utterance("   ", engine.synthesize("   "), engine.format))
    after = speaker.enqueue(Utterance("Hello.", stream_of(tone(0.1)), PCM48))
    one, two = await asyncio.wait_for(asyncio.gather(empty.done, after.done), timeout=20)
    assert one.played_seconds == 0 and one.error is None and one.spoken_text == ""
    assert two.spoken_text == "Hello."
    await speaker.aclose()


async def test_5000_character_reply_through_espeak_and_ffmpeg() -> None:
    target = RecorderTarget()
    speaker = Speaker(target, underrun_wait=None)
    engine = EspeakEngine()
    text = ("Here is a long reply that keeps going and going. " * 120)[:5000]
    handle = speaker.enqueue(Utterance(text, engine.synthesize(text), engine.format))
    result = await asyncio.wait_for(handle.done, timeout=120)
    assert result.error is None and result.spoken_text == text
    assert result.played_seconds > 60
    await speaker.aclose()
    assert all(pid_gone(s.pid) for s in target.sources if isinstance(s, StreamingFFmpegSource))


async def test_disconnect_mid_utterance_leaves_no_ffmpeg_and_no_stuck_queue() -> None:
    errors: list[BaseException] = []
    target = RecorderTarget()
    target.disconnect_after = 10
    speaker = Speaker(target, always_ffmpeg=True, underrun_wait=None, on_error=lambda u, e: errors.append(e))
    first = speaker.enqueue(Utterance("Cut by a disconnect.", stream_of(tone(2.0)), PCM48))
    second = speaker.enqueue(Utterance("After.", stream_of(tone(0.2)), PCM48))
    one, two = await asyncio.wait_for(asyncio.gather(first.done, second.done), timeout=20)
    assert one.played_seconds == pytest.approx(0.2)
    assert two.played_seconds == 0 and isinstance(two.error, ConnectionError)
    assert errors == [two.error]
    [source] = target.sources
    assert isinstance(source, StreamingFFmpegSource) and pid_gone(source.pid)
    await speaker.aclose()


async def test_aclose_leaves_no_process_and_no_task() -> None:
    target = RecorderTarget(gated=True)
    speaker = Speaker(target, always_ffmpeg=True, underrun_wait=None)
    stalled = _BigFirstChunk(tone(1.0), first=9600)  # the TTS stream never finishes
    handle = speaker.enqueue(Utterance("Stalled.", stalled(), PCM48))
    target.allow(1)
    assert await asyncio.to_thread(target.wait_frames, 1)
    await asyncio.wait_for(speaker.aclose(), timeout=20)
    result = handle.done.result()
    assert result.interrupted and stalled.closed
    [source] = target.sources
    assert isinstance(source, StreamingFFmpegSource) and pid_gone(source.pid)
    target.join()
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftover == []
    with pytest.raises(RuntimeError):
        speaker.enqueue(Utterance("late", stream_of(b""), PCM48))


async def test_elevenlabs_down_mid_sentence_falls_back_to_the_local_voice() -> None:
    """The caller's on_error can re-speak the rest with espeak; the queue never gets stuck."""
    async with FakeElevenLabs(api_key="k") as fake:
        eleven = ElevenLabsEngine(api_key="k", base_url=fake.url, backoff_base=0.0)
        local = EspeakEngine()
        target = RecorderTarget()
        fallbacks: list[asyncio.Future[Any]] = []

        def on_error(utterance: Utterance, error: BaseException) -> None:
            if isinstance(error, TTSError):
                fallbacks.append(speaker.enqueue(Utterance(utterance.text, local.synthesize(utterance.text), local.format)).done)

        speaker = Speaker(target, underrun_wait=None, on_error=on_error)
        fake.script(DieAfter(3840 * 3))
        text = "The service will fail in the middle of this sentence."
        handle = speaker.enqueue(Utterance(text, eleven.synthesize(text), eleven.format))
        result = await asyncio.wait_for(handle.done, timeout=20)
        assert isinstance(result.error, TTSError) and result.error.audio_started
        assert 0 < result.played_seconds < 1
        [fallback] = fallbacks
        spoken = await asyncio.wait_for(fallback, timeout=20)
        assert spoken.error is None and spoken.played_seconds > 1
        await speaker.aclose()
        await eleven.aclose()
