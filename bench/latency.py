"""Benchmark: end of a person's speech → first reply audio frame handed to Discord.

Streaming: each turn runs through the real pipeline — ``DeepgramSTT`` (deepgram-sdk), an ``Agent``
with ``OpenAIEngine`` (openai SDK), ``ElevenLabsEngine`` (elevenlabs SDK), ``VoiceSession`` and
``SpeakerOut`` over a real ``audio.playback.Speaker`` — against loopback providers with fixed timing
(``bench.providers``: final transcript 300 ms after the last audio, first token 200 ms after the
request then 100 tokens/s, first TTS byte 150 ms after the request then 4× real time). Speech is fed
as 16 kHz mono 20 ms frames at real-time pace; the end of speech is the moment the last frame was
pushed. The Speaker plays into :class:`PlayerEmulation`, which does what discord.py's ``AudioPlayer``
does (a thread reading a frame every 20 ms with drift correction, Opus-encoding it, calling
``after``) and records when the first non-silent frame was handed over. Once it has been, the reply
is stopped (as a barge-in would) so 50 turns fit in a minute and a half.

Per turn, the provider floor is 300 ms + (LLM request → first sentence complete, as the fake LLM
saw it) + 150 ms; our overhead is measured − floor.

Batch baseline on the same fakes: after the end of speech wait 1.5 s of silence, send the whole clip
to Deepgram and wait for its final, collect the whole LLM reply, synthesize the whole reply, then
play it through the same Speaker and player emulation. Batch turns do not interact, so they run a
few at a time (``--batch-concurrency``) to keep the run short.

Usage: python -m bench.latency [--turns 50] [--json]
Prints one JSON line on stdout (without ``--json`` a readable breakdown also goes to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import discord
import discord.opus
import numpy as np

from audio.native import load_libopus
from audio.playback import Speaker, Utterance
from audio.speech import normalize_for_speech
from audio.stt.base import STTStream
from audio.stt.deepgram import DeepgramSTT
from audio.tts.elevenlabs import ElevenLabsEngine
from bench.providers import ProviderThread, TimedProviders, Timings
from bot.agent import Agent, Incoming
from bot.agent.character import default_character
from bot.agent.engines.openai_engine import OpenAIEngine
from bot.db import Database
from bot.memory import Memory, Modality
from bot.voice.session import SpeakerOut, TurnTiming, VoiceSession
from bot.voice.turns import TurnPolicy, VoiceMode

__all__ = ["BenchConfig", "PlayerEmulation", "PlayRecord", "run_benchmark", "summarize", "describe", "main"]

log = logging.getLogger(__name__)

USER = 4242
SPEECH_RATE = 16000
FRAME_SECONDS = 0.02
FRAME_SAMPLES = int(SPEECH_RATE * FRAME_SECONDS)
TARGET_OVERHEAD_P95_MS = 60.0
TARGET_RATIO = 3.0
KEY = "bench-key"  # the fakes do not check keys; the SDKs insist on one


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run does."""

    turns: int = 50
    timings: Timings = field(default_factory=Timings)
    speech_seconds: float = 0.8  # length of each turn's speech
    silence_wait: float = 1.5  # the batch design's end-of-turn silence
    warmup: int = 1  # streaming turns run first and left out (cold connections, first imports)
    batch_concurrency: int = 5
    settle: float = 0.15  # pause after each streaming turn so stopped streams finish closing
    # A streaming reply is stopped (as a barge-in would) once this many of its utterances have
    # started playing; 1 measures and stops at once, 2 lets the first sentence play out.
    stop_after_utterances: int = 1
    turn_timeout: float = 30.0  # failure guard per turn


# ---------------------------------------------------------------------------------------------
# The player thread


@dataclass
class PlayRecord:
    """One ``play()`` call on the emulated voice client (``time.monotonic()`` times)."""

    available_at: float  # play() was called: the source already holds its first frame
    started_at: float | None = None  # the player thread was running
    handed_at: float | None = None  # the first non-silent frame was returned by read()
    frames: int = 0


class PlayerEmulation:
    """A ``PlayTarget`` that plays like ``discord.VoiceClient``: an Opus encoder is made in
    ``play()``, then a thread reads a 20 ms frame, encodes it, and sleeps with discord.py's drift
    correction until the next one; ``after(error)`` and ``source.cleanup()`` run when it ends.

    ``first_frames`` (an asyncio queue on the creating loop) gets each record once its first
    non-silent frame has been handed over.
    """

    DELAY = 0.02

    def __init__(self, *, encode: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        self._encode = encode
        if encode:
            load_libopus()
        self.records: list[PlayRecord] = []
        self.first_frames: asyncio.Queue[PlayRecord] = asyncio.Queue()
        self._end = threading.Event()
        self._thread: threading.Thread | None = None

    def play(self, source: discord.AudioSource, *, after: Callable[[Exception | None], Any] | None = None) -> None:
        available = time.monotonic()
        if self.is_playing():
            raise discord.ClientException("Already playing audio.")
        encoder = discord.opus.Encoder() if self._encode and not source.is_opus() else None
        record = PlayRecord(available_at=available)
        self.records.append(record)
        self._end = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(source, after, record, self._end, encoder), name="bench-audio-player", daemon=True
        )
        self._thread.start()

    def _run(self, source: discord.AudioSource, after: Callable[[Exception | None], Any] | None,
             record: PlayRecord, end: threading.Event, encoder: discord.opus.Encoder | None) -> None:
        error: Exception | None = None
        record.started_at = time.monotonic()
        try:
            loops = 0
            start = time.perf_counter()
            while not end.is_set():
                data = source.read()
                if not data:
                    error = getattr(source, "_current_error", None)
                    break
                if record.handed_at is None and data.count(0) != len(data):
                    record.handed_at = time.monotonic()
                    with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                        self._loop.call_soon_threadsafe(self.first_frames.put_nowait, record)
                if encoder is not None:
                    encoder.encode(data, encoder.SAMPLES_PER_FRAME)
                record.frames += 1
                loops += 1
                # discord.py's AudioPlayer pacing, including its one-frame offset.
                next_time = start + self.DELAY * loops
                time.sleep(max(0.0, self.DELAY + (next_time - time.perf_counter())))
        except Exception as exc:
            error = exc
        finally:
            if after is not None:
                try:
                    after(error)
                except Exception:
                    log.exception("after callback failed")
            source.cleanup()

    def stop(self) -> None:
        self._end.set()

    def is_playing(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._end.is_set()

    def is_connected(self) -> bool:
        return True

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def drain(self) -> None:
        """Forget first-frame notices from earlier turns."""
        while not self.first_frames.empty():
            self.first_frames.get_nowait()


# ---------------------------------------------------------------------------------------------
# Turns


def speech_frames(seconds: float) -> list[bytes]:
    """``seconds`` of a quiet 200 Hz tone as 20 ms frames of 16 kHz mono s16le."""
    n = max(1, round(seconds / FRAME_SECONDS))
    t = np.arange(n * FRAME_SAMPLES) / SPEECH_RATE
    pcm = (2000 * np.sin(2 * np.pi * 200 * t)).astype("<i2").tobytes()
    size = FRAME_SAMPLES * 2
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


@dataclass
class StreamTurn:
    """One measured streaming turn (``time.monotonic()`` times)."""

    speech_end: float
    play: PlayRecord
    llm_requested_at: float
    llm_first_sentence_at: float
    tts_requested_at: float | None
    stt_last_audio_at: float | None
    stt_final_sent_at: float | None
    timing: TurnTiming | None

    def measured_ms(self) -> float:
        assert self.play.handed_at is not None
        return (self.play.handed_at - self.speech_end) * 1000

    def floor_ms(self, timings: Timings) -> float:
        llm = self.llm_first_sentence_at - self.llm_requested_at
        return (timings.stt_delay + llm + timings.tts_first_byte) * 1000

    def stages_ms(self, timings: Timings) -> dict[str, float]:
        """Our share of the turn, hop by hop (provider waits subtracted)."""

        def ms(a: float | None, b: float | None, minus: float = 0.0) -> float | None:
            return None if a is None or b is None else (b - a - minus) * 1000

        t = self.timing
        stages = {
            "push_to_stt_server": ms(self.speech_end, self.stt_last_audio_at),
            "stt_timer_late": ms(self.stt_last_audio_at, self.stt_final_sent_at, timings.stt_delay),
            "stt_final_to_session": ms(self.stt_final_sent_at, t.final_transcript if t else None),
            "final_to_llm_request": ms(t.final_transcript if t else None, self.llm_requested_at),
            "llm_sentence_to_splitter": ms(self.llm_first_sentence_at, t.first_sentence if t else None),
            "sentence_to_tts_request": ms(t.first_sentence if t else None, self.tts_requested_at),
            "tts_first_byte_to_session": ms(self.tts_requested_at, t.first_tts_audio if t else None,
                                            timings.tts_first_byte),
            "tts_audio_to_frame_available": ms(t.first_tts_audio if t else None, self.play.available_at),
            "frame_available_to_handed": ms(self.play.available_at, self.play.handed_at),
        }
        return {k: v for k, v in stages.items() if v is not None}


async def _wait_turns(session: VoiceSession, n: int, timeout: float) -> None:
    async with session.answered:
        await asyncio.wait_for(session.answered.wait_for(lambda: session.turns_done >= n), timeout)


async def run_streaming(providers: TimedProviders, cfg: BenchConfig) -> list[StreamTurn]:
    """Warm-up plus ``cfg.turns`` streaming turns through the real components."""
    memory = Memory(Database.in_memory())
    character = default_character()
    engine = OpenAIEngine(api_key=KEY, base_url=f"{providers.http_url}/v1", model="bench-model")
    agent = Agent(character, engine, memory)
    stt = DeepgramSTT(KEY, base_url=providers.http_url, ws_url=providers.deepgram_url)
    tts = ElevenLabsEngine(api_key=KEY, base_url=providers.http_url)
    player = PlayerEmulation()
    out = SpeakerOut(Speaker(player, name="bench-speaker"))
    session = VoiceSession(
        room="discord:1:2", agent=agent, memory=memory, stt=stt, tts=tts, out=out,
        policy=TurnPolicy(bot_names=(character.name,), mode=VoiceMode.ALWAYS),
        name_of=lambda uid: "Bench",
    )
    frames = speech_frames(cfg.speech_seconds)
    results: list[StreamTurn] = []
    try:
        for i in range(cfg.warmup + cfg.turns):
            calls_before = len(providers.llm_calls)
            tts_before = len(providers.tts_requests)
            finals_before = len(providers.stt_finals)
            player.drain()
            session.on_speech_start(USER)
            start = time.monotonic()
            for k, frame in enumerate(frames):
                delay = start + k * FRAME_SECONDS - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                session.on_audio(USER, frame)
            speech_end = time.monotonic()
            session.on_speech_end(USER)
            record = await asyncio.wait_for(player.first_frames.get(), cfg.turn_timeout)
            for _ in range(cfg.stop_after_utterances - 1):
                await asyncio.wait_for(player.first_frames.get(), cfg.turn_timeout)
            out.stop()  # the first frame is what we measure; stop the reply as a barge-in would
            await _wait_turns(session, i + 1, cfg.turn_timeout)
            await asyncio.wait_for(out.speaker.wait_idle(), cfg.turn_timeout)
            await asyncio.sleep(cfg.settle)
            if i < cfg.warmup:
                continue
            calls = providers.llm_calls[calls_before:]
            if len(calls) != 1 or calls[0].first_sentence_at is None:
                raise RuntimeError(f"turn {i}: expected one LLM request with a first sentence, got {calls}")
            tts_requests = providers.tts_requests[tts_before:]
            finals = providers.stt_finals[finals_before:]
            results.append(StreamTurn(
                speech_end=speech_end,
                play=record,
                llm_requested_at=calls[0].requested_at,
                llm_first_sentence_at=calls[0].first_sentence_at,
                tts_requested_at=tts_requests[0][0] if tts_requests else None,
                stt_last_audio_at=finals[0][0] if finals else None,
                stt_final_sent_at=finals[0][1] if finals else None,
                timing=session.last_timing,
            ))
    finally:
        await session.aclose()
        await out.aclose()
        await stt.aclose()
        await tts.aclose()
        await engine.aclose()
        player.join()
    return results


async def _first_final(transcripts: AsyncIterator[Any], timeout: float) -> str:
    async def wait() -> str:
        async for transcript in transcripts:
            if transcript.end_of_turn and transcript.text:
                return str(transcript.text)
        raise RuntimeError("the STT stream ended without a final")

    return await asyncio.wait_for(wait(), timeout)


async def _replay(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class _BatchWorker:
    """One lane of the batch baseline: its own STT stream, Speaker and player."""

    def __init__(self, index: int, stt: DeepgramSTT, agent: Agent, tts: ElevenLabsEngine) -> None:
        self.room = f"bench:batch:{index}"
        self.stt = stt
        self.agent = agent
        self.tts = tts
        self.player = PlayerEmulation()
        self.speaker = Speaker(self.player, name=f"bench-batch-{index}")
        self.stream: STTStream = stt.open_stream(speaker=f"batch-{index}", sample_rate=SPEECH_RATE)
        self.transcripts = aiter(self.stream)

    async def warm(self, timeout: float) -> None:
        """Open the STT socket before measuring (a batch design would keep its client warm too)."""
        self.stream.push(bytes(FRAME_SAMPLES * 2))
        await _first_final(self.transcripts, timeout)

    async def turn(self, clip: bytes, cfg: BenchConfig) -> float:
        """One batch turn; returns end of speech → first frame handed over, in ms."""
        self.player.drain()
        speech_end = time.monotonic()
        await asyncio.sleep(cfg.silence_wait)  # the batch design's "they stopped talking"
        self.stream.push(clip)
        text = await _first_final(self.transcripts, cfg.turn_timeout)
        reply = self.agent.reply(Incoming(room=self.room, speaker_id=f"discord:{USER}", speaker_name="Bench",
                                          text=text, modality=Modality.VOICE))
        async for _ in reply:
            pass
        reply.finish()
        chunks = [c async for c in self.tts.synthesize(normalize_for_speech(reply.text)) if c]
        handle = self.speaker.enqueue(Utterance(reply.text, _replay(chunks), self.tts.format))
        record = await asyncio.wait_for(self.player.first_frames.get(), cfg.turn_timeout)
        await self.speaker.stop()
        await asyncio.shield(handle.done)
        assert record.handed_at is not None
        return (record.handed_at - speech_end) * 1000

    async def aclose(self) -> None:
        await self.stream.aclose()
        await self.speaker.aclose()
        self.player.join()


async def run_batch(providers: TimedProviders, cfg: BenchConfig) -> list[float]:
    """The same turns, the batch way; returns each turn's latency in ms."""
    memory = Memory(Database.in_memory())
    engine = OpenAIEngine(api_key=KEY, base_url=f"{providers.http_url}/v1", model="bench-model")
    agent = Agent(default_character(), engine, memory)
    stt = DeepgramSTT(KEY, base_url=providers.http_url, ws_url=providers.deepgram_url)
    tts = ElevenLabsEngine(api_key=KEY, base_url=providers.http_url)
    clip = b"".join(speech_frames(cfg.speech_seconds))
    lanes = max(1, min(cfg.batch_concurrency, cfg.turns))
    workers = [_BatchWorker(i, stt, agent, tts) for i in range(lanes)]
    todo: asyncio.Queue[int] = asyncio.Queue()
    for i in range(cfg.turns):
        todo.put_nowait(i)
    results: list[float] = []

    async def lane(worker: _BatchWorker) -> None:
        while not todo.empty():
            todo.get_nowait()
            results.append(await worker.turn(clip, cfg))

    try:
        await asyncio.gather(*(w.warm(cfg.turn_timeout) for w in workers))
        tasks = [asyncio.create_task(lane(w), name=f"bench-batch-lane-{i}") for i, w in enumerate(workers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for worker in workers:
            await worker.aclose()
        await stt.aclose()
        await tts.aclose()
        await engine.aclose()
    return results


# ---------------------------------------------------------------------------------------------
# Figures


def _pct(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    arr = np.asarray(values, dtype=float)
    return {"p50": round(float(np.percentile(arr, 50)), 1), "p95": round(float(np.percentile(arr, 95)), 1)}


def summarize(streaming: Sequence[StreamTurn], batch: Sequence[float], cfg: BenchConfig,
              wall_seconds: float) -> dict[str, Any]:
    """The benchmark's JSON object. Pure."""
    measured = [t.measured_ms() for t in streaming]
    floors = [t.floor_ms(cfg.timings) for t in streaming]
    overhead = [m - f for m, f in zip(measured, floors, strict=True)]
    stage_values: dict[str, list[float]] = {}
    for turn in streaming:
        for name, value in turn.stages_ms(cfg.timings).items():
            stage_values.setdefault(name, []).append(value)
    streaming_ms = _pct(measured)
    batch_ms = _pct(batch)
    ratio = None
    if streaming_ms["p50"] and batch_ms["p50"] is not None:
        ratio = round(batch_ms["p50"] / streaming_ms["p50"], 2)
    overhead_ms = _pct(overhead)
    return {
        "bench": "latency",
        "turns": len(streaming),
        "streaming_ms": streaming_ms,
        "floor_ms": _pct(floors),
        "overhead_ms": overhead_ms,
        "batch_ms": batch_ms,
        "ratio_batch_over_streaming": ratio,
        "targets": {"overhead_p95_ms": TARGET_OVERHEAD_P95_MS, "ratio": TARGET_RATIO},
        "targets_met": {
            "overhead_p95": overhead_ms["p95"] is not None and overhead_ms["p95"] <= TARGET_OVERHEAD_P95_MS,
            "ratio": ratio is not None and ratio >= TARGET_RATIO,
        },
        # Where our share goes; "frame_available_to_handed" is the player's phase (thread start
        # and the 20 ms frame clock) between the first frame existing and Discord getting it.
        "overhead_breakdown_ms": {name: _pct(values) for name, values in stage_values.items()},
        "first_frame_available_ms": _pct([(t.play.available_at - t.speech_end) * 1000 for t in streaming]),
        "config": {
            **asdict(cfg.timings),
            "speech_seconds": cfg.speech_seconds,
            "silence_wait": cfg.silence_wait,
            "warmup_turns": cfg.warmup,
            "batch_turns": len(batch),
            "batch_concurrency": cfg.batch_concurrency,
            "stop_after_utterances": cfg.stop_after_utterances,
        },
        "wall_seconds": round(wall_seconds, 1),
    }


async def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Run both designs against fresh loopback providers and return the summary."""
    started = time.monotonic()
    with ProviderThread(cfg.timings) as providers:
        streaming = await run_streaming(providers, cfg)
        batch = await run_batch(providers, cfg)
    return summarize(streaming, batch, cfg, time.monotonic() - started)


def describe(result: dict[str, Any]) -> str:
    """The summary as a few readable lines (for stderr)."""
    lines = [
        f"streaming p50/p95 {result['streaming_ms']['p50']}/{result['streaming_ms']['p95']} ms "
        f"(floor {result['floor_ms']['p50']}/{result['floor_ms']['p95']}, "
        f"overhead {result['overhead_ms']['p50']}/{result['overhead_ms']['p95']})",
        f"batch p50/p95 {result['batch_ms']['p50']}/{result['batch_ms']['p95']} ms, "
        f"ratio {result['ratio_batch_over_streaming']}",
        "overhead by hop (p50/p95 ms):",
    ]
    for name, pct in result["overhead_breakdown_ms"].items():
        lines.append(f"  {name:32s} {pct['p50']:>7} {pct['p95']:>7}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: run the benchmark, print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--speech-seconds", type=float, default=0.8)
    parser.add_argument("--batch-concurrency", type=int, default=5)
    parser.add_argument("--stop-after-utterances", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cfg = BenchConfig(turns=args.turns, warmup=args.warmup, speech_seconds=args.speech_seconds,
                      batch_concurrency=args.batch_concurrency, stop_after_utterances=args.stop_after_utterances)
    result = asyncio.run(run_benchmark(cfg))
    if not args.json:
        print(describe(result), file=sys.stderr)
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
