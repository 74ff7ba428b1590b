"""Benchmark: the wait a person hears, from the end of their voice to the first sound of the answer.

Measured through the loopback Discord with the unchanged bot (the same way ``voicebot simulate``
runs it): a scripted member speaks espeak-ng speech made at run time as Opus packets, transport-
and DAVE-encrypted at 20 ms pacing; the bot receives, decrypts, decodes, decides the turn is over,
transcribes, asks the agent, synthesizes, plays, Opus-encodes, encrypts and sends; a second member
(the host) receives and decrypts the reply. The wait is the speaker's last voice packet → the
first reply packet the host received. Silence is trimmed from the speech, so the last packet is
the end of the voice.

Two configurations in one run:

- ``local``: faster-whisper, espeak-ng and the built-in ELIZA agent (no network).
- ``cloud``: the Deepgram, OpenAI-compatible and ElevenLabs loopback fakes (``tests/fakes``) driven
  by the real SDKs, timed like the services: Deepgram hears speech in the audio it receives and
  endpoints on silence *in that audio* (``speech_final`` / ``UtteranceEnd`` after its windows,
  plus 50 ms of processing), answers ``Finalize`` after 50 ms; the LLM's first token comes 200 ms after the request, then 40
  tokens/s; ElevenLabs' first audio 150 ms after the request, then 4× real time; every new
  connection to any of them costs 100 ms before the first byte (a TLS handshake), so reusing
  connections counts. The fakes run on their own event loop in a thread, like remote services.

Speech: ``UTTERANCES`` (10), of which 4 have a pause of 400–700 ms in the middle of a sentence,
during which the speaker sends nothing (as Discord clients do). A pause answered before the person
finished is a false cut-off. A warm-up utterance runs first in each configuration and is left out.

``breakdown_ms`` splits each turn's wait: ``end_of_speech`` (last voice packet → the bot noticed
the pause), ``stt`` (→ final transcript), ``agent`` (→ first sentence of the reply), ``tts``
(→ first synthesized audio), ``turn_end`` (last voice packet → the bot knew the turn was over; with
speculation this overlaps the three before), ``playback`` (the later of first audio and end of turn
→ first frame handed to discord.py's player) and ``send`` (→ first packet received by the listener:
Opus encode, encryption, UDP). ``floor_ms``
(cloud) is the providers' own share of that turn: the final's latency after the end-of-turn
signal + the LLM's first token + the TTS's first audio.

``local.two_guilds_stt`` times the local recognizer with two guilds' people finishing a sentence at
the same moment (one whisper worker per process, so the second waits); with ``--compare`` the
baseline's is the same with Whisper's full window. ``stt_ms`` and ``loadavg_1m`` list each turn's
transcription time and the machine's load then: on a shared machine the first follows the second.

``--compare`` also runs each configuration with the bot's settings from before this work (fixed
600 ms silence rule, no speculation, Whisper's full 30 s window) where such settings exist, so a
note can quote both. ``word_error_rate`` compares the turns the bot heard with the text spoken, so
a faster recognizer that hears worse shows. The JSON's ``measures`` says what each figure includes
and leaves out.

``--memory-compare`` runs the cloud configuration with long-term recall off, then on over
``--memory-turns`` stored turns (``memory`` in the JSON: each wait and ``added_p50_ms``).

Usage: python -m bench.latency [--json] [--configs local,cloud] [--compare] [--memory-compare]
       [--database-url postgresql://…]
Prints one JSON line on stdout (without ``--json`` a readable summary also goes to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench import call_latency
from bot.store import redact_url
from bot.settings import Secret, Settings

__all__ = [
    "UTTERANCES",
    "WARMUP",
    "Spoken",
    "Part",
    "BenchConfig",
    "Providers",
    "TurnSample",
    "CpuMark",
    "MEASURES",
    "word_errors",
    "prepare_speech",
    "run_config",
    "summarize",
    "run_benchmark",
    "describe",
    "main",
]

log = logging.getLogger(__name__)

# (parts, pause in seconds between parts). The paused ones stop where a person thinks mid-sentence.
UTTERANCES: tuple[tuple[tuple[str, ...], float], ...] = (
    (("What is the weather like in Lisbon today?",), 0.0),
    (("I was thinking about", "the weather in Lisbon."), 0.5),
    (("Can you tell me a joke about computers?",), 0.0),
    (("Could you remind me to call my mother and", "buy some bread tomorrow?"), 0.6),
    (("I need help planning a trip to the mountains.",), 0.0),
    (("The best part of the trip was", "the food in the old town."), 0.45),
    (("How long does it take to boil an egg?",), 0.0),
    (("I would like to know more about", "the history of Rome."), 0.7),
    (("My sister is visiting us next week.",), 0.0),
    (("Why do cats sleep so much?",), 0.0),
)
WARMUP: tuple[tuple[str, ...], float] = (("Hello there, can you hear me?",), 0.0)

# The cloud fakes' timing (seconds), as the issue fixes it.
CONNECT_DELAY = 0.100
STT_FINALIZE_DELAY = 0.050
LLM_FIRST_TOKEN = 0.200
LLM_TOKENS_PER_SECOND = 40.0
TTS_FIRST_AUDIO = 0.150
TTS_SPEED = 4.0
LLM_REPLY = ["Sure", ",", " let", " me", " think", "."] + [
    " Lisbon", " is", " sunny", " and", " warm", " today", ",", " about", " twenty", " degrees", "."
] + [" Would", " you", " like", " to", " hear", " more", " about", " it", "?"]

# What "before this work" means in settings, applied by --compare where the field exists.
BASELINE_SETTINGS: dict[str, Any] = {"turn_detection": "fixed", "speculative_reply": False,
                                     "local_stt_short_window": False}

# What each figure includes and leaves out, printed with the figures (a number without its
# boundaries gets compared with the wrong thing).
MEASURES: dict[str, str] = {
    "wait_ms": ("the speaker's last voice packet leaving the loopback member → the first reply packet the "
                "listener received. Includes: the loopback UDP hops, transport and DAVE decryption, Opus decode, "
                "the end-of-speech gap, end of turn, STT, agent, TTS, playback, Opus encode, encryption, send. "
                "Leaves out: the internet between people and Discord and between Discord and the bot, Discord's "
                "own servers, the speaker's client encoding, model loading (done before the first turn) and the "
                "warm-up utterance"),
    "breakdown_ms": ("per stage, p50/p95 over turns: end_of_speech = last packet → the bot noticed the pause "
                     "(TURN_PAUSE_MS or the fixed 600 ms gap); stt = → final transcript; agent = → first sentence "
                     "of the reply; tts = → its first audio; turn_end = last packet → the turn known to be over "
                     "(overlaps stt/agent/tts when the reply started speculatively); playback = the later of "
                     "first audio and turn end → first frame to the player; send = → first packet at the listener"),
    "stt_ms": "each turn's stt stage in the order spoken (a drift over the run shows here)",
    "loadavg_1m": "the machine's 1-minute load average at each turn (the CPU is shared: stt_ms follows it)",
    "runq_wait_ms": ("per turn (first packet sent → settled): time this process's threads were ready to run but "
                     "waited for a CPU (/proc/self/task/*/schedstat): other processes taking the cores"),
    "cpu_ms": "per turn: CPU time this process used (all threads: bot, loopback Discord, Whisper)",
    "cpu_pressure": "per turn: share of the time some task on the machine waited for a CPU (/proc/pressure/cpu)",
    "floor_ms": "cloud only: the fakes' own delays in that turn (STT final after the end-of-turn signal + LLM "
                "first token + TTS first audio); the part no bot change can remove",
    "false_cutoffs": "paused utterances answered (or split into two turns) before the person had finished",
    "wasted_llm_calls": "speculative replies thrown away because the person went on (ELIZA locally: no network)",
    "word_error_rate": ("word errors (substitutions, insertions, deletions) of all the turns heard for an utterance "
                        "against its text, lower-case words, punctuation ignored, summed over the run; includes "
                        "cut-off utterances (both halves)"),
    "two_guilds_stt": ("the local engine alone (no Discord): two streams finalized at the same moment → each "
                       "end-of-turn final; alone_ms = the first sentence on its own"),
    "early_guesses": ("LOCAL_STT_EARLY_MS on: transcriptions started on a short packet gap, used as the final, "
                      "thrown away because the person went on (each thrown away cost one Whisper run of CPU)"),
    "memory": ("--memory-compare: the cloud configuration run twice in this process, MEMORY_RECALL off then on; "
               "with it on, memory_turns earlier turns are stored first (a tenth in the voice channel, some about "
               "what the utterances ask), so each reply searches a real index under RECALL_BUDGET_MS and its "
               "prompt may carry memories. added_p50_ms = on - off. recall_outcomes counts found / none / "
               "over_budget. Leaves out: a PostgreSQL index (this is the bot's SQLite file), indexes past "
               "memory_turns (see bench.memory --scale)"),
    "machine": "os.cpu_count() and the 1/5/15-minute load average at the end of the run (other processes "
               "share the CPU)",
}

VOICE_RMS = 300.0  # trimming: quieter 20 ms frames at the ends of espeak-ng's output are silence


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run does."""

    configs: tuple[str, ...] = ("local", "cloud", "call")  # call: a phone call on the cloud fakes
    utterances: tuple[tuple[tuple[str, ...], float], ...] = UTTERANCES
    warmup: bool = True
    compare: bool = False  # also run the baseline settings
    gap: float = 0.6  # quiet time between one reply and the next utterance
    settle_timeout: float = 60.0  # failure guard per utterance
    overrides: dict[str, Any] = field(default_factory=dict)  # settings for the measured runs
    two_guilds: bool = True  # local: also time two guilds' finals at the same moment
    call_turns: int = 10  # call: loopback phone calls measured (bench.call_latency)
    memory_turns: int = 0  # turns put in the bot's recall index before speaking (memory on)
    memory_compare: bool = False  # cloud with MEMORY_RECALL off, then on over memory_turns stored turns


# --------------------------------------------------------------------------------------------- speech


@dataclass(frozen=True)
class Part:
    """One stretch of speech without a pause: its text, Opus frames and voiced 20 ms frames."""

    text: str
    frames: tuple[bytes, ...]
    voiced_frames: int


@dataclass(frozen=True)
class Spoken:
    """One utterance ready to say: its parts and the pause between them."""

    parts: tuple[Part, ...]
    pause: float

    @property
    def paused(self) -> bool:
        return len(self.parts) > 1

    @property
    def text(self) -> str:
        return " ".join(p.text for p in self.parts)


def _trim(pcm: bytes, rate: int) -> bytes:
    """Cut the quiet 20 ms frames off both ends (the last packet should be the end of the voice)."""
    samples = np.frombuffer(pcm, dtype="<i2")
    frame = rate // 50
    n = len(samples) // frame
    if n == 0:
        return pcm
    frames = samples[: n * frame].astype(np.float32).reshape(n, frame)
    loud = np.flatnonzero(np.sqrt(np.mean(frames * frames, axis=1)) > VOICE_RMS)
    if loud.size == 0:
        return pcm
    return samples[loud[0] * frame : (loud[-1] + 1) * frame].tobytes()


def _make_part(text: str) -> Part:
    """espeak-ng speech for ``text`` as Opus frames (blocking: run in an executor)."""
    import soxr

    from audio.tts.espeak import synthesize_pcm
    from bot.loopback.participant import encode_opus_frames
    from tests.fakes.deepgram_server import is_voiced_frame

    pcm, rate = synthesize_pcm(text)
    pcm = _trim(pcm, rate)
    mono = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    stereo48 = soxr.resample(mono, rate, 48000)
    stereo = np.clip(np.repeat(stereo48[:, None], 2, axis=1) * 32768.0, -32768, 32767).astype("<i2").tobytes()
    mono16 = np.clip(soxr.resample(mono, rate, 16000) * 32768.0, -32768, 32767).astype("<i2").tobytes()
    size = 640  # 20 ms at 16 kHz mono
    voiced = sum(is_voiced_frame(mono16[i : i + size]) for i in range(0, len(mono16) - size + 1, size))
    return Part(text, tuple(encode_opus_frames(stereo)), voiced)


def prepare_speech(utterances: Sequence[tuple[tuple[str, ...], float]]) -> list[Spoken]:
    """Synthesize every utterance now (blocking; espeak-ng is one process-wide engine)."""
    return [Spoken(tuple(_make_part(t) for t in parts), pause) for parts, pause in utterances]


# --------------------------------------------------------------------------------------------- cloud fakes


class Providers:
    """The three cloud fakes, timed like the services, on a private event loop in a thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-providers", daemon=True)
        self.deepgram: Any = None
        self.openai: Any = None
        self.elevenlabs: Any = None
        self.script: Any = None

    def __enter__(self) -> Providers:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=60)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()

    async def _start(self) -> None:
        from tests.fakes.deepgram_server import FakeDeepgram, SpeechScript
        from tests.fakes.elevenlabs_server import FakeElevenLabs
        from tests.fakes.openai_server import FakeOpenAI

        self.script = SpeechScript()
        self.deepgram = FakeDeepgram(script=self.script, connect_delay=CONNECT_DELAY, finalize_delay=STT_FINALIZE_DELAY,
                                     endpoint_delay=STT_FINALIZE_DELAY)
        await self.deepgram.__aenter__()
        self.openai = FakeOpenAI(reply_tokens=list(LLM_REPLY), first_token_delay=LLM_FIRST_TOKEN,
                                 tokens_per_second=LLM_TOKENS_PER_SECOND, connect_delay=CONNECT_DELAY)
        await self.openai.start()
        self.elevenlabs = FakeElevenLabs(first_audio_delay=TTS_FIRST_AUDIO, speed=TTS_SPEED, connect_delay=CONNECT_DELAY)
        await self.elevenlabs.__aenter__()

    async def _stop(self) -> None:
        await self.elevenlabs.__aexit__(None, None, None)
        await self.openai.close()
        await self.deepgram.__aexit__(None, None, None)

    def settings(self, base: Settings) -> Settings:
        from tests.fakes.elevenlabs_server import DEFAULT_VOICES

        return base.replace(
            stt_engine="deepgram", deepgram_api_key=Secret(self.deepgram.api_key), deepgram_url=self.deepgram.ws_url,
            tts_engine="elevenlabs", elevenlabs_api_key=Secret(self.elevenlabs.api_key),
            elevenlabs_base_url=self.elevenlabs.url, elevenlabs_voice_id=DEFAULT_VOICES[0]["voice_id"],
            agent_engine="openai", openai_api_key=Secret(self.openai.api_key), openai_base_url=self.openai.base_url,
            openai_model=self.openai.models[0],
        )

    def say(self, spoken: Spoken) -> None:
        """Tell the fake Deepgram what the person is about to say."""
        self.script.say([(p.text, p.voiced_frames) for p in spoken.parts])

    def marks(self) -> tuple[int, int, int]:
        return len(self.deepgram.finals), len(self.openai.streams), len(self.elevenlabs.streams)

    def floor(self, marks: tuple[int, int, int]) -> tuple[dict[str, float | None], int]:
        """The providers' own latencies for the turn since ``marks``, and how many LLM calls it made."""
        finals = self.deepgram.finals[marks[0]:]
        streams = [s for s in self.openai.streams[marks[1]:]]
        tts = self.elevenlabs.streams[marks[2]:]
        answered = [s for s in streams if not s.disconnected and s.first_token_at is not None]
        stt_ms = (finals[-1][1] - finals[-1][0]) * 1000 if finals else None
        llm = answered[-1] if answered else None
        llm_ms = (llm.first_token_at - llm.requested_at) * 1000 if llm is not None and llm.first_token_at else None
        tts_ms = None
        if llm is not None:
            after = [t for t in tts if t[0] is not None and t[0] >= llm.requested_at and t[1] is not None]
            if after:
                tts_ms = (after[0][1] - after[0][0]) * 1000
        return {"stt_final": stt_ms, "llm_first_token": llm_ms, "tts_first_audio": tts_ms}, len(streams)


# --------------------------------------------------------------------------------------------- one configuration


@dataclass
class TurnSample:
    """One measured utterance."""

    utterance: int
    paused: bool
    wait_ms: float | None
    breakdown_ms: dict[str, float | None]
    cutoff: bool
    llm_calls: int = 0
    wasted_llm_calls: int = 0
    floor_ms: dict[str, float | None] | None = None
    heard: str = ""
    said: str = ""  # the text spoken
    load: float | None = None  # the 1-minute load average when the turn was over
    cpu: dict[str, float] = field(default_factory=dict)  # CpuMark.since over the turn


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z0-9']+", text.lower().replace("-", " "))


def word_errors(reference: str, heard: str) -> tuple[int, int]:
    """(edit distance in words, words in ``reference``): substitutions + insertions + deletions. Pure."""
    ref, hyp = _words(reference), _words(heard)
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        diagonal, row[0] = row[0], i
        for j in range(1, len(hyp) + 1):
            cost = min(row[j] + 1, row[j - 1] + 1, diagonal + (ref[i - 1] != hyp[j - 1]))
            diagonal, row[j] = row[j], cost
    return row[len(hyp)], len(ref)


@dataclass(frozen=True)
class CpuMark:
    """Where the CPU went, read before and after a turn (Linux /proc; zeros elsewhere).

    ``wait``: time this process's threads were ready to run but waited for a CPU (schedstat), the
    direct measure of other processes taking the cores; ``pressure``: the kernel's count of time
    any task on the machine waited for a CPU (PSI "some")."""

    at: float
    cpu: float
    wait: float
    pressure: float

    @staticmethod
    def now() -> CpuMark:
        times = os.times()
        wait = 0.0
        try:
            for task in os.listdir("/proc/self/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    with open(f"/proc/self/task/{task}/schedstat") as f:
                        wait += int(f.read().split()[1]) / 1e9
        except OSError:
            pass
        pressure = 0.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open("/proc/pressure/cpu") as f:
                pressure = int(f.readline().rsplit("total=", 1)[1]) / 1e6
        return CpuMark(time.monotonic(), times.user + times.system, wait, pressure)

    def since(self, before: CpuMark) -> dict[str, float]:
        wall = max(1e-9, self.at - before.at)
        return {"cpu_ms": round((self.cpu - before.cpu) * 1000, 1),
                "runq_wait_ms": round(max(0.0, self.wait - before.wait) * 1000, 1),
                "cpu_pressure": round(min(1.0, max(0.0, (self.pressure - before.pressure) / wall)), 2)}


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000, 1)


def _breakdown(timing: Any, ended: float, heard_at: float | None) -> dict[str, float | None]:
    """Where one turn's wait went (``TurnTiming.stages_ms``, the figures ``voicebot simulate`` prints)."""
    if timing is None:
        return {}
    stages = dict(timing.stages_ms(ended, heard_at))
    stages.pop("wait", None)
    return stages


async def run_config(kind: str, settings: Settings, speech: Sequence[Spoken], cfg: BenchConfig,
                     providers: Providers | None = None, *, warm: Spoken | None = None,
                     extras: dict[str, Any] | None = None) -> list[TurnSample]:
    """Run every utterance through the real bot on the loopback Discord; one sample per utterance.

    ``extras`` receives the local recognizer's early-guess counts (what transcribing during the gap cost).
    """
    from bot.simulate import receive_all, running_bot

    samples: list[TurnSample] = []
    async with running_bot(settings, ["Alice"]) as lb:
        answer = await lb.command(lb.host, "mode", {"mode": "always"})
        if "Mode set" not in answer:
            raise RuntimeError(f"/mode always failed: {answer}")
        host = await lb.host.join_voice(lb.voice)
        alice = await lb.members["Alice"].join_voice(lb.voice)
        answer = await lb.command(lb.host, "join")
        gv = lb.manager.connection(lb.guild.id)
        if gv is None:
            raise RuntimeError(f"/join failed: {answer}")
        await lb.wait_dave_group([lb.host, lb.members["Alice"]])
        stt = lb.manager.stt
        if stt is not None and stt.name == "local":
            await stt.check()  # load the model now: its load time is not a turn's wait
        session = gv.session
        recall = getattr(lb.services, "recall", None)
        if recall is not None and cfg.memory_turns > 0:
            await _fill_memory(recall, f"discord:{lb.guild.id}:{lb.voice.id}", cfg.memory_turns)
        turns: list[Any] = []
        session.on_turn = turns.append
        bot_id = lb.discord.bot_user_id
        todo = ([warm] if warm is not None else []) + list(speech)
        for index, spoken in enumerate(todo):
            measured = warm is None or index > 0
            heard_mark, turn_mark, timing_mark = len(host.heard), len(turns), len(session.timings)
            wasted_mark = int(getattr(session, "speculations_wasted", 0))
            provider_marks = providers.marks() if providers is not None else None
            if providers is not None:
                providers.say(spoken)
            cpu_before = CpuMark.now()
            result = None
            received_before, sent = gv.vc.stats.audio_packets, 0
            for k, part in enumerate(spoken.parts):
                result = await alice.speak_opus(list(part.frames))
                sent += result.sent
                if k + 1 < len(spoken.parts):
                    await asyncio.sleep(spoken.pause)  # the person's pause (nothing is sent), not synchronisation
            assert result is not None
            ended = result.ended_at
            # The end of the speaker's sending is not the bot's: settled is only meaningful once it read it all.
            await receive_all(gv.vc, received_before, sent, cfg.settle_timeout)
            await asyncio.wait_for(session.wait_settled(), cfg.settle_timeout)
            await host.wait_quiet(cfg.settle_timeout)
            cpu_used = CpuMark.now().since(cpu_before)
            if not measured:
                await asyncio.sleep(cfg.gap)
                continue
            replies = [u for u in host.heard[heard_mark:] if u.user_id == bot_id]
            after = [u.first_packet_at for u in replies if u.first_packet_at >= ended]
            heard_at = min(after) if after else None
            new_turns = turns[turn_mark:]
            early = any(u.first_packet_at < ended for u in replies)
            cutoff = spoken.paused and (len(new_turns) > 1 or early)
            timings = list(session.timings)[timing_mark:] if timing_mark <= len(session.timings) else []
            timing = timings[-1] if timings else None
            sample = TurnSample(
                utterance=index - (1 if warm is not None else 0), paused=spoken.paused,
                wait_ms=_ms(ended, heard_at), breakdown_ms=_breakdown(timing, ended, heard_at), cutoff=cutoff,
                heard=" | ".join(t.text for t in new_turns), said=spoken.text, load=round(os.getloadavg()[0], 2),
                cpu=cpu_used,
            )
            sample.wasted_llm_calls = int(getattr(session, "speculations_wasted", 0)) - wasted_mark
            sample.llm_calls = len(timings) + sample.wasted_llm_calls  # the agent's calls (ELIZA locally)
            if provider_marks is not None and providers is not None:
                sample.floor_ms, sample.llm_calls = providers.floor(provider_marks)
                sample.wasted_llm_calls = max(0, sample.llm_calls - len(timings))
            samples.append(sample)
            await asyncio.sleep(cfg.gap)  # a natural gap before the next thing said, not synchronisation
        await lb.command(lb.host, "leave")
        if extras is not None and recall is not None:
            extras["recall_outcomes"] = dict(recall.outcomes)
        if extras is not None and stt is not None and getattr(stt, "early_ms", None):
            extras["early_guesses"] = {"early_ms": stt.early_ms, "started": stt.guesses, "used": stt.guesses_used,
                                       "wasted": stt.guesses_wasted}
    return samples


async def _fill_memory(recall: Any, room: str, n: int) -> None:
    """``n`` earlier turns for the bot to recall from: most in other guilds' channels, a tenth in this
    voice channel over the past 60 days, some of them about what the utterances ask (Lisbon, weather)."""
    from bench.memory import Filler
    from bot.recall import Audience

    filler = Filler(seed=11)
    now = time.time()
    topical = ["the weather in Lisbon was lovely when we went in June", "Lisbon has the best custard tarts",
               "I think it will rain tomorrow, the forecast said so", "my sister lives in Lisbon now"]
    docs = []
    for k in range(n):
        here = k % 10 == 0
        text = topical[k // 10 % len(topical)] if here and k % 40 == 0 else filler.text()
        docs.append({"kind": "turn", "text": text,
                     "audience": Audience.of_room(room if here else f"discord:{9 + k % 31}:{700 + k % 211}"),
                     "speaker_id": f"discord:{5000 + k % 17}", "speaker_name": f"Member{k % 17}",
                     "created_at": now - 60 * 86400 + k * (60 * 86400 / max(1, n)), "turn_id": 50_000_000 + k})
        if len(docs) >= 5000:
            await recall.add_documents(docs)
            docs = []
    if docs:
        await recall.add_documents(docs)


async def memory_compare(cfg: BenchConfig, speech: Sequence[Spoken], warm: Spoken | None,
                         providers: Providers) -> dict[str, Any]:
    """The cloud wait with long-term recall off, then on (over ``memory_turns`` stored turns), one run."""
    out: dict[str, Any] = {"memory_turns": cfg.memory_turns or 10_000}
    for label, on in (("off", False), ("on", True)):
        settings = _settings_for("cloud", providers, {**cfg.overrides, "memory_recall": on})
        extra: dict[str, Any] = {}
        run_cfg = dataclasses.replace(cfg, memory_turns=(cfg.memory_turns or 10_000) if on else 0)
        samples = await run_config("cloud", settings, speech, run_cfg, providers, warm=warm, extras=extra)
        waits = [s.wait_ms for s in samples if s.wait_ms is not None]
        stages = summarize_config(samples, cloud=True)["breakdown_ms"]
        out[label] = {"wait_ms": _pct(waits), "turns": len(waits), "agent_ms": stages.get("agent"),
                      **({"recall_outcomes": extra.get("recall_outcomes", {})} if on else {})}
    on_p50, off_p50 = out["on"]["wait_ms"]["p50"], out["off"]["wait_ms"]["p50"]
    out["added_p50_ms"] = None if on_p50 is None or off_p50 is None else round(on_p50 - off_p50, 1)
    return out


async def two_at_once(speech: Sequence[Spoken], *, short_window: bool = True) -> dict[str, Any]:
    """Local recognizer, two guilds' people ending a sentence at the same moment.

    One process has one ``LocalWhisperSTT`` (one worker thread) for every guild, so this opens two
    streams on one engine, feeds each a sentence and finalizes both together: ``together_ms`` is each
    final's latency (the second waits for the first), ``alone_ms`` the same sentence on its own.
    """
    import soxr

    from audio.stt.local import LocalWhisperSTT

    def pcm16(spoken: Spoken) -> bytes:
        from audio.tts.espeak import synthesize_pcm

        pcm, rate = synthesize_pcm(spoken.text)
        mono = np.frombuffer(_trim(pcm, rate), dtype="<i2").astype(np.float32) / 32768.0
        return np.clip(soxr.resample(mono, rate, 16000) * 32768.0, -32768, 32767).astype("<i2").tobytes()

    loop = asyncio.get_running_loop()
    clips = await loop.run_in_executor(None, lambda: [pcm16(s) for s in speech[:2]])
    engine = LocalWhisperSTT(short_window=short_window)
    await engine.check()

    async def finals(n: int) -> list[float]:
        streams = [engine.open_stream(speaker=f"guild-{i}") for i in range(n)]
        for stream, clip in zip(streams, clips):
            for i in range(0, len(clip), 640):
                stream.push(clip[i:i + 640])
        started = time.monotonic()
        for stream in streams:
            await stream.finalize()

        async def first(stream: Any) -> float:
            async for t in stream:
                if t.end_of_turn:
                    return (time.monotonic() - started) * 1000
            return float("nan")

        out = await asyncio.gather(*(first(s) for s in streams))
        for stream in streams:
            await stream.aclose()
        return [round(x, 1) for x in out]

    try:
        before = CpuMark.now()
        alone = (await finals(1))[0]
        together = await finals(2)
        cpu = CpuMark.now().since(before)
    finally:
        await engine.aclose()
    return {"alone_ms": alone, "together_ms": together, "workers": engine.workers, "short_window": short_window,
            "cpu": cpu,
            "note": "with one whisper worker per process the second guild waits for the first"}


# --------------------------------------------------------------------------------------------- figures


def _pct(values: Sequence[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"p50": None, "p95": None}
    arr = np.asarray(vals, dtype=float)
    return {"p50": round(float(np.percentile(arr, 50)), 1), "p95": round(float(np.percentile(arr, 95)), 1)}


def summarize_config(samples: Sequence[TurnSample], *, cloud: bool) -> dict[str, Any]:
    """One configuration's figures. Pure."""
    stages: dict[str, list[float | None]] = {}
    for s in samples:
        for name, value in s.breakdown_ms.items():
            stages.setdefault(name, []).append(value)
    out: dict[str, Any] = {
        "turns": len(samples),
        "wait_ms": _pct([s.wait_ms for s in samples]),
        "breakdown_ms": {name: _pct(values) for name, values in stages.items()},
    }
    if cloud:
        floors = []
        for s in samples:
            parts = list((s.floor_ms or {}).values())
            floors.append(None if not parts or any(p is None for p in parts) else sum(p for p in parts if p is not None))
        out["floor_ms"] = _pct(floors)
        out["floor_parts_ms"] = {name: _pct([(s.floor_ms or {}).get(name) for s in samples])
                                 for name in ("stt_final", "llm_first_token", "tts_first_audio")}
    out["false_cutoffs"] = {"count": sum(s.cutoff for s in samples), "of": sum(s.paused for s in samples)}
    out["wasted_llm_calls"] = {"count": sum(s.wasted_llm_calls for s in samples),
                               "of": sum(s.llm_calls for s in samples)}
    out["waits_ms"] = [s.wait_ms for s in samples]
    out["stt_ms"] = [s.breakdown_ms.get("stt") for s in samples]
    out["loadavg_1m"] = [s.load for s in samples]
    for key in ("runq_wait_ms", "cpu_ms", "cpu_pressure"):
        out[key] = [s.cpu.get(key) for s in samples]
    errors = [word_errors(s.said, s.heard.replace(" | ", " ")) for s in samples if s.said]
    words = sum(n for _, n in errors)
    out["word_error_rate"] = {"rate": round(sum(e for e, _ in errors) / words, 4) if words else None,
                              "errors": sum(e for e, _ in errors), "words": words}
    out["heard"] = [s.heard for s in samples]  # the turns the bot heard per utterance ("a | b": cut in two)
    out["missed"] = sum(1 for s in samples if s.wait_ms is None)
    return out


def summarize(results: dict[str, list[TurnSample]], baseline: dict[str, list[TurnSample]], cfg: BenchConfig,
              wall_seconds: float, two_guilds: dict[str, Any] | None = None,
              two_guilds_baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """The benchmark's JSON object. Pure."""
    out: dict[str, Any] = {"bench": "latency"}
    for kind, samples in results.items():
        out[kind] = summarize_config(samples, cloud=kind == "cloud")
    if two_guilds is not None and "local" in out:
        out["local"]["two_guilds_stt"] = two_guilds
    everything = [s for samples in results.values() for s in samples]
    out["false_cutoffs"] = {"count": sum(s.cutoff for s in everything), "of": sum(s.paused for s in everything)}
    out["wasted_llm_calls"] = {"count": sum(out[k]["wasted_llm_calls"]["count"] for k in results),
                               "of": sum(out[k]["wasted_llm_calls"]["of"] for k in results)}
    if baseline:
        out["baseline"] = {kind: summarize_config(samples, cloud=kind == "cloud") for kind, samples in baseline.items()}
        out["baseline"]["settings"] = {k: v for k, v in BASELINE_SETTINGS.items() if k in _settings_fields()}
        if two_guilds_baseline is not None and "local" in out["baseline"]:
            out["baseline"]["local"]["two_guilds_stt"] = two_guilds_baseline
    out["config"] = {
        "utterances": len(cfg.utterances),
        "paused": sum(1 for parts, _ in cfg.utterances if len(parts) > 1),
        "pauses_s": [pause for parts, pause in cfg.utterances if len(parts) > 1],
        "cloud_timing_s": {"connect": CONNECT_DELAY, "stt_finalize": STT_FINALIZE_DELAY,
                           "llm_first_token": LLM_FIRST_TOKEN, "llm_tokens_per_second": LLM_TOKENS_PER_SECOND,
                           "tts_first_audio": TTS_FIRST_AUDIO, "tts_speed": TTS_SPEED},
        "overrides": {k: (redact_url(v) if k == "database_url" else v) for k, v in cfg.overrides.items()},
    }
    out["machine"] = {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    out["wall_seconds"] = round(wall_seconds, 1)
    out["measures"] = dict(MEASURES)
    return out


def _settings_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(Settings)}


def _settings_for(kind: str, providers: Providers | None, overrides: dict[str, Any]) -> Settings:
    base = Settings(voice_mode="always", log_level="WARNING")
    if kind == "cloud":
        assert providers is not None
        base = providers.settings(base)
    else:
        base = base.replace(stt_engine="local", tts_engine="espeak", agent_engine="eliza")
    known = _settings_fields()
    return base.replace(**{k: v for k, v in overrides.items() if k in known})


async def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Run every configuration (and the baseline with ``compare``) and return the summary."""
    from audio.native import load_libopus

    load_libopus()
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    speech = await loop.run_in_executor(None, prepare_speech, cfg.utterances)
    warm = (await loop.run_in_executor(None, prepare_speech, [WARMUP]))[0] if cfg.warmup else None
    results: dict[str, list[TurnSample]] = {}
    baseline: dict[str, list[TurnSample]] = {}
    extras: dict[str, dict[str, Any]] = {}
    loopback_log = logging.getLogger("bot.loopback")
    level = loopback_log.level
    loopback_log.setLevel(logging.ERROR)  # Discord-side complaints are not this benchmark's subject
    try:
        with contextlib.ExitStack() as stack:
            providers = stack.enter_context(Providers()) if "cloud" in cfg.configs else None
            for kind in (k for k in cfg.configs if k != "call"):
                if cfg.compare:
                    base = _settings_for(kind, providers, BASELINE_SETTINGS)
                    baseline[kind] = await run_config(kind, base, speech, cfg, providers if kind == "cloud" else None,
                                                      warm=warm)
                settings = _settings_for(kind, providers, cfg.overrides)
                extras[kind] = {}
                results[kind] = await run_config(kind, settings, speech, cfg, providers if kind == "cloud" else None,
                                                 warm=warm, extras=extras[kind])
            memory = None
            if cfg.memory_compare:
                if providers is None:
                    providers = stack.enter_context(Providers())
                memory = await memory_compare(cfg, speech, warm, providers)
        two = two_base = None
        if "local" in cfg.configs and cfg.two_guilds:
            two = await two_at_once(speech)
            if cfg.compare:
                two_base = await two_at_once(speech, short_window=bool(BASELINE_SETTINGS["local_stt_short_window"]))
        # Beside the Discord figures: the same wait on a phone call (Twilio Media Streams, μ-law).
        call = await call_latency.measure_call_waits(cfg.call_turns) if "call" in cfg.configs else None
    finally:
        loopback_log.setLevel(level)
    summary = summarize(results, baseline, cfg, time.monotonic() - started, two, two_base)
    for kind, extra in extras.items():
        summary[kind].update(extra)
    if call is not None:
        summary["call"] = call
    if memory is not None:
        summary["memory"] = memory
    return summary


def _lines(name: str, r: dict[str, Any]) -> Iterator[str]:
    floor = f", floor {r['floor_ms']['p50']}/{r['floor_ms']['p95']}" if "floor_ms" in r else ""
    wer = r.get("word_error_rate", {}).get("rate")
    yield (f"{name}: wait p50/p95 {r['wait_ms']['p50']}/{r['wait_ms']['p95']} ms{floor}; "
           f"false cut-offs {r['false_cutoffs']['count']}/{r['false_cutoffs']['of']}, "
           f"wasted LLM calls {r['wasted_llm_calls']['count']}/{r['wasted_llm_calls']['of']}, WER {wer}")
    for stage, pct in r["breakdown_ms"].items():
        yield f"    {stage:12s} {pct['p50']!s:>8} {pct['p95']!s:>8}"


def describe(result: dict[str, Any]) -> str:
    """The summary as a few readable lines (for stderr)."""
    lines: list[str] = []
    for kind in ("local", "cloud"):
        if kind in result:
            lines += _lines(kind, result[kind])
    for kind, r in result.get("baseline", {}).items():
        if kind != "settings":
            lines += _lines(f"baseline {kind}", r)
    if "two_guilds_stt" in result.get("local", {}):
        lines.append(f"local STT, two guilds at once: {result['local']['two_guilds_stt']}")
    if "call" in result:
        call = result["call"]
        lines.append(f"phone call (cloud fakes): wait p50 {call['wait_ms']['p50']} ms, p95 {call['wait_ms']['p95']} ms "
                     f"over {call['turns']} calls (deciding the caller stopped: p50 "
                     f"{call['end_of_speech_detected_ms']['p50']} ms)")
    lines.append(f"machine: {result['machine']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: run the benchmark, print the JSON line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    parser.add_argument("--configs", default="local,cloud,call",
                        help="comma-separated: local, cloud, call (empty with --memory-compare: only that)")
    parser.add_argument("--compare", action="store_true", help="also run the settings from before (baseline)")
    parser.add_argument("--utterances", type=int, default=len(UTTERANCES), help="use the first N utterances")
    parser.add_argument("--database-url", default=None, metavar="URL",
                        help="keep the bot's store in this PostgreSQL database (default: SQLite in memory)")
    parser.add_argument("--memory-compare", action="store_true",
                        help="also run the cloud configuration with long-term recall off, then on")
    parser.add_argument("--memory-turns", type=int, default=10_000, help="turns stored for recall when it is on")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a bot setting for the measured runs (e.g. turn_detection=fixed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    configs = tuple(c.strip() for c in args.configs.split(",") if c.strip())
    bad = [c for c in configs if c not in ("local", "cloud", "call")]
    if bad or not (configs or args.memory_compare):
        parser.error(f"--configs: unknown {bad or 'nothing'}; use local, cloud and/or call")
    overrides: dict[str, Any] = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name.strip()] = _parse_value(value.strip())
    if args.database_url:
        overrides["database_url"] = args.database_url
    cfg = BenchConfig(configs=configs, utterances=UTTERANCES[: max(1, args.utterances)], compare=args.compare,
                      overrides=overrides, memory_compare=args.memory_compare, memory_turns=args.memory_turns)
    result = asyncio.run(run_benchmark(cfg))
    if not args.json:
        print(describe(result), file=sys.stderr)
    print(json.dumps(result, separators=(",", ":")))
    return 0


def _parse_value(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


if __name__ == "__main__":
    raise SystemExit(main())
