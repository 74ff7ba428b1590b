"""Benchmark: the wait on a phone call — end of the caller's speech → first reply media sent to Twilio.

One loopback phone call per setting, through the real phone path: :class:`LoopbackTwilio` rings
the bot's web server (signed webhook, TwiML, Media Streams WebSocket) and says espeak-ng speech made
at run time as μ-law 8 kHz in real-time 20 ms frames, one utterance after another as in a
conversation, waiting for each reply to play; during a mid-sentence pause, after the last word and
while the bot answers, it keeps sending the line's silence, as a phone line does. The bot's
:class:`~bot.phone.call.PhoneCall` decodes it in process, cuts it with the VAD and feeds
``VoiceSession`` → ``DeepgramSTT`` (the caller's μ-law as is) → an ``Agent`` with ``OpenAIEngine`` →
``ElevenLabsEngine`` asked for ``ulaw_8000`` as ``build_phone`` does → ``media`` frames. The
providers are the timed loopback fakes of ``bench.latency`` (:class:`bench.latency.Providers`: the
same ones, with the same timings, as the Discord figures; the fake Deepgram decodes the μ-law it is
sent and endpoints on silence in it, as the service does, and answers ``Finalize`` after 50 ms).
The utterances are ``bench.latency``'s ten, four of them with a 0.45–0.7 s pause in the middle of a
sentence; a warm-up utterance opens each call and is left out.

The end of speech is when the caller sent the last voiced frame; the wait ends when the bot sent
the reply's first ``media`` frame (``wait_ms``) and when the caller's playout began it
(``heard_ms``). This includes deciding that the caller stopped: a phone line sends silence, not a
packet gap, so the VAD sees the pause. ``breakdown_ms`` splits the wait as ``bench.latency`` does
(``end_of_speech``: the VAD noticed the pause; ``stt``, ``agent``, ``tts``, ``playback``, ``send``;
``turn_end`` overlaps them when the reply was started speculatively); ``floor_ms`` is the
providers' own share (final after the end-of-turn signal + LLM first token + TTS first audio).

Two settings in one run (``--no-compare`` drops the first): ``baseline`` is the calls' old rule
(``end_silence_ms`` of VAD silence, the recognizer's final ends the turn, no speculation); the
measured figures use the voice channels' turn detection (``TURN_DETECTION=smart``: a
``TURN_PAUSE_MS`` pause asks Deepgram for the words with ``Finalize``, the words decide how long to
wait) with speculative replies. ``false_cutoffs`` counts paused utterances answered before the
caller finished (the bot heard them as two turns, or its reply began before the last word);
``wasted_llm_calls`` the LLM requests whose reply was never played (speculations thrown away).

Usage: python -m bench.call_latency [--turns 10] [--no-compare] [--json]
Prints one JSON object on stdout (without ``--json`` a readable summary also goes to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr

__all__ = ["measure_call_waits", "run", "main", "CallSample"]

log = logging.getLogger(__name__)

ACCOUNT = "AC" + "b" * 32
AUTH = "bench-auth-token"
PUBLIC = "https://bench.invalid"


@dataclass(frozen=True)
class _Part:
    text: str
    pcm: bytes  # 8 kHz s16le, quiet ends trimmed (the last frame is the end of the voice)
    voiced: int  # 20 ms frames the fake Deepgram counts as speech


@dataclass(frozen=True)
class _Utterance:
    parts: tuple[_Part, ...]
    pause: float

    @property
    def paused(self) -> bool:
        return len(self.parts) > 1


@dataclass
class CallSample:
    """One measured call."""

    paused: bool
    wait_ms: float | None
    heard_ms: float | None
    detected_ms: float | None
    stages: dict[str, float]
    breakdown: dict[str, float | None]
    floor: dict[str, float | None] = field(default_factory=dict)
    cutoff: bool = False
    llm_calls: int = 0
    wasted: int = 0
    heard: str = ""


def _part_8k(text: str) -> _Part:
    """espeak-ng speech for ``text`` at 8 kHz (blocking: run in an executor)."""
    from audio.tts.espeak import synthesize_pcm
    from bench.latency import _trim
    from bot.phone.audio import mulaw_decode, mulaw_encode

    pcm, rate = synthesize_pcm(text)
    pcm = _trim(pcm, rate)
    pcm8k = np.asarray(soxr.resample(np.frombuffer(pcm, dtype="<i2"), rate, 8000), dtype="<i2").tobytes()
    return _Part(text, pcm8k, _voiced_frames(mulaw_decode(mulaw_encode(pcm8k))))


def _speech(utterances: Sequence[tuple[tuple[str, ...], float]]) -> list[_Utterance]:
    return [_Utterance(tuple(_part_8k(t) for t in parts), pause) for parts, pause in utterances]


def _pct(values: Sequence[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return {"p50": None, "p95": None, "mean": None, "min": None, "max": None}
    arr = np.asarray(vals, dtype=float)
    return {"p50": round(float(np.percentile(arr, 50)), 1), "p95": round(float(np.percentile(arr, 95)), 1),
            "mean": round(float(arr.mean()), 1), "min": round(float(arr.min()), 1), "max": round(float(arr.max()), 1)}


def _voiced_frames(pcm8k: bytes) -> int:
    """How many 20 ms frames of the phrase the fake Deepgram will count as speech."""
    from tests.fakes.deepgram_server import is_voiced_frame

    frame = 320  # 20 ms of s16le at 8 kHz
    return sum(is_voiced_frame(pcm8k[i:i + frame]) for i in range(0, len(pcm8k) - frame + 1, frame))


async def _conversation(providers: Any, options: Any, speech: Sequence[_Utterance], *, warm: _Utterance | None,
                        turn_timeout: float, number: str, gap: float = 0.6) -> list[CallSample]:
    """One call with these call options: the caller says each utterance (after a warm-up one) and
    waits until the reply has played; one sample per utterance. A call is a conversation, so the
    connections to the providers stay warm from one turn to the next as they do in production."""
    from audio.stt.deepgram import DeepgramSTT
    from audio.tts.elevenlabs import ElevenLabsEngine
    from bot.agent import Agent
    from bot.agent.character import default_character
    from bot.agent.engines.openai_engine import OpenAIEngine
    from bot.memory import Memory
    from bot.store import SqliteDatabase
    from bot.phone.caller import LoopbackTwilio
    from bot.phone.service import PhoneService, TwilioCalls
    from bot.web import WebServer, create_app

    loop = asyncio.get_running_loop()
    samples: list[CallSample] = []
    db = SqliteDatabase.in_memory()
    memory = await Memory.open(db)
    llm, dg, el = providers.openai, providers.deepgram, providers.elevenlabs
    engine = OpenAIEngine(api_key=llm.api_key, base_url=llm.base_url, model=llm.models[0])
    agent = Agent(default_character(), engine, memory)
    stt = DeepgramSTT(dg.api_key, base_url=dg.http_url, ws_url=dg.ws_url)
    # As build_phone does: μ-law 8 kHz straight from ElevenLabs, exactly what Twilio plays.
    tts = ElevenLabsEngine(api_key=el.api_key, base_url=el.url, output_format="ulaw_8000")
    try:
        async with LoopbackTwilio(bot_url="http://127.0.0.1:1", public_url=PUBLIC, account_sid=ACCOUNT,
                                  auth_token=AUTH) as twilio:
            phone = PhoneService(
                agent=agent, memory=memory, stt=stt, tts=tts, fallback_tts=None, voice=None, auth_token=AUTH,
                public_url=PUBLIC, options=options, calls=TwilioCalls(ACCOUNT, AUTH, api_base=twilio.api_base),
            )
            server = WebServer(create_app(phone=phone), "127.0.0.1", 0)
            await server.start()
            twilio.set_bot_url(server.url)
            try:
                call = await twilio.call(number)
                await call.wait_for(lambda: call.call_sid in phone.calls, turn_timeout)
                bot = phone.calls[call.call_sid]
                await asyncio.wait_for(bot.started.wait(), turn_timeout)
                session, out = bot.session, bot.out
                assert session is not None and out is not None
                todo = ([warm] if warm is not None else []) + list(speech)
                for i, spoken in enumerate(todo):
                    marks = providers.marks()
                    heard_mark, timing_mark, media_mark = len(bot.heard), len(session.timings), len(out.first_media_at)
                    wasted_mark = session.speculations_wasted
                    providers.script.say([(p.text, p.voiced) for p in spoken.parts])  # what the fake will hear
                    for k, part in enumerate(spoken.parts):
                        await call.speak_pcm(part.pcm, trailing_silence=0.0)
                        if k + 1 < len(spoken.parts):
                            await call.silence(spoken.pause)  # the caller thinks; the line sends silence
                    speech_end = call.speech_sent_until
                    assert speech_end is not None

                    def replied() -> bool:
                        return any(t >= speech_end for t in out.first_media_at[media_mark:])

                    # The line's silence goes on while the bot answers and its reply plays.
                    silence = loop.create_task(call.silence(3 * turn_timeout), name="bench-call-silence")
                    try:
                        with contextlib.suppress(TimeoutError):  # no reply at all: counted as missed below
                            await call.wait_for(replied, turn_timeout)
                        try:
                            await asyncio.wait_for(session.wait_settled(), turn_timeout)
                        except asyncio.TimeoutError:
                            raise RuntimeError(f"utterance {i}: the call never settled: {_state(session)}") from None
                        await call.wait_quiet(turn_timeout)
                        await asyncio.sleep(gap)  # a natural gap before the caller's next sentence, not synchronisation
                    finally:
                        silence.cancel()
                        await asyncio.gather(silence, return_exceptions=True)
                    if warm is not None and i == 0:
                        continue
                    after = [t for t in out.first_media_at[media_mark:] if t >= speech_end]
                    if not after:
                        log.warning("utterance %d (%r): no reply after the caller finished", i,
                                    " / ".join(p.text for p in spoken.parts))
                        samples.append(CallSample(paused=spoken.paused, wait_ms=None, heard_ms=None, detected_ms=None,
                                                  stages={}, breakdown={}, cutoff=spoken.paused,
                                                  heard=" | ".join(turn.text for turn in bot.heard[heard_mark:])))
                        continue
                    first = min(after)
                    timings = [tm for tm in session.timings[timing_mark:]
                               if tm.first_frame is not None and tm.first_frame >= speech_end]
                    floor, llm_calls = providers.floor(marks)
                    new_turns = bot.heard[heard_mark:]
                    early = any(t < speech_end for t in out.first_media_at[media_mark:])
                    cut = spoken.paused and (len(new_turns) > 1 or early)
                    # A cut-off's first reply after the end answers its first half: no breakdown for it.
                    timing = timings[0] if timings and not cut else None
                    wasted = session.speculations_wasted - wasted_mark
                    samples.append(CallSample(
                        paused=spoken.paused,
                        wait_ms=round((first - speech_end) * 1000, 1),
                        heard_ms=_heard_ms(call, first, speech_end),
                        detected_ms=round((timing.speech_end - speech_end) * 1000, 1) if timing is not None else None,
                        stages={k: v for k, v in (timing.breakdown_ms() if timing else {}).items() if v is not None},
                        breakdown={k: v for k, v in (timing.stages_ms(speech_end, first) if timing else {}).items()
                                   if k != "wait"},
                        floor=floor,
                        cutoff=cut,
                        llm_calls=llm_calls,
                        wasted=max(wasted, llm_calls - len(session.timings[timing_mark:])),
                        heard=" | ".join(turn.text for turn in new_turns),
                    ))
                await call.hang_up()
                await phone.wait_ended(1, turn_timeout)
            finally:
                await server.stop()
                await phone.aclose()
    finally:
        await stt.aclose()
        await tts.aclose()
        await engine.aclose()
        await memory.aclose()
        await db.close()
    return samples


def _state(session: Any) -> str:
    """What keeps a session from settling (for a failure message)."""
    people = [f"speaking={p.speaking} ends={p.speech_ends}/{p.turn_ends} candidate={p.candidate is not None}"
              for p in session.participants.values()]
    responder = session._responder is not None and not session._responder.done()
    return f"people={people} queued={len(session.policy)} answering={responder} playing={session._speaking}"


def _heard_ms(call: Any, first: float, speech_end: float) -> float | None:
    """When the caller's playout began the reply whose first frame was sent at ``first``."""
    starts = [seg.start for seg in call.segments if seg.start >= first - 0.001]
    return round((min(starts) - speech_end) * 1000, 1) if starts else None


def _summary(samples: Sequence[CallSample]) -> dict[str, Any]:
    stages: dict[str, list[float]] = {}
    breakdown: dict[str, list[float | None]] = {}
    floors: list[float | None] = []
    for s in samples:
        for name, value in s.stages.items():
            stages.setdefault(name, []).append(value)
        for name, value in s.breakdown.items():
            breakdown.setdefault(name, []).append(value)
        parts = list(s.floor.values())
        floors.append(None if not parts or any(p is None for p in parts) else sum(p for p in parts if p is not None))
    return {
        "turns": len(samples),
        "wait_ms": _pct([s.wait_ms for s in samples]),
        "heard_ms": _pct([s.heard_ms for s in samples]),
        "end_of_speech_detected_ms": _pct([s.detected_ms for s in samples]),
        "stages_ms_p50": {k: _pct(v)["p50"] for k, v in stages.items()},
        "breakdown_ms": {k: {"p50": _pct(v)["p50"], "p95": _pct(v)["p95"]} for k, v in breakdown.items()},
        "floor_ms": {"p50": _pct(floors)["p50"], "p95": _pct(floors)["p95"]},
        "false_cutoffs": {"count": sum(s.cutoff for s in samples), "of": sum(s.paused for s in samples)},
        "wasted_llm_calls": {"count": sum(s.wasted for s in samples), "of": sum(s.llm_calls for s in samples)},
        "missed": sum(1 for s in samples if s.wait_ms is None),  # no reply after the caller finished
        "waits_ms": [s.wait_ms for s in samples],
        "heard": [s.heard for s in samples],  # the turns the bot heard per call ("a | b": cut in two)
    }


async def measure_call_waits(turns: int = 10, *, warmup: int = 1, end_silence_ms: int = 600,
                             turn_timeout: float = 30.0, compare: bool = True,
                             utterances: Sequence[tuple[tuple[str, ...], float]] | None = None) -> dict[str, Any]:
    """Run ``turns`` loopback calls (cycling through the utterances, after ``warmup`` warm-up calls)
    with the voice channels' turn detection and speculation, and with ``compare`` the same calls with
    the old rule first; return the figures as a dict."""
    from bench import latency
    from bot.phone.call import CallOptions
    from bot.settings import Settings
    from bot.voice.endpointing import TurnDetection

    loop = asyncio.get_running_loop()
    chosen = list(utterances if utterances is not None else latency.UTTERANCES)
    cycle = [chosen[i % len(chosen)] for i in range(turns)]
    speech = await loop.run_in_executor(None, _speech, cycle)
    warm = (await loop.run_in_executor(None, _speech, [latency.WARMUP]))[0] if warmup else None
    defaults = Settings()
    rule = TurnDetection(mode=defaults.turn_detection, pause_ms=defaults.turn_pause_ms,
                         finished_ms=defaults.turn_end_ms, unfinished_ms=defaults.turn_hold_ms)
    smart = CallOptions(max_seconds=0, turn_detection=rule, speculate=defaults.speculative_reply)
    old = CallOptions(max_seconds=0, end_silence_ms=end_silence_ms)
    started = time.monotonic()
    out: dict[str, Any] = {
        "benchmark": "call_latency",
        "what": "phone call: end of the caller's speech -> first reply media frame sent to Twilio (ms)",
    }
    with latency.Providers() as providers:
        baseline = None
        if compare:
            baseline = await _conversation(providers, old, speech, warm=warm, turn_timeout=turn_timeout,
                                           number="+15550000001")
        measured = await _conversation(providers, smart, speech, warm=warm, turn_timeout=turn_timeout,
                                       number="+15550000002")
    out.update(_summary(measured))
    out["settings"] = {"turn_detection": rule.mode, "turn_pause_ms": rule.pause_ms, "turn_end_ms": rule.finished_ms,
                       "turn_hold_ms": rule.unfinished_ms, "speculative_reply": smart.speculate}
    if baseline is not None:
        out["baseline"] = _summary(baseline)
        out["baseline"]["settings"] = {"turn_detection": "fixed", "end_silence_ms": end_silence_ms,
                                       "speculative_reply": False}
    out["end_silence_ms"] = end_silence_ms  # the baseline's rule
    out["utterances"] = {"calls": turns, "paused": sum(u.paused for u in speech),
                         "pauses_s": [u.pause for u in speech if u.paused]}
    out["provider_timings"] = {"connect_ms": latency.CONNECT_DELAY * 1000, "stt_final_ms": latency.STT_FINALIZE_DELAY * 1000,
                               "llm_first_token_ms": latency.LLM_FIRST_TOKEN * 1000,
                               "llm_tokens_per_second": latency.LLM_TOKENS_PER_SECOND,
                               "tts_first_audio_ms": latency.TTS_FIRST_AUDIO * 1000, "tts_speed": latency.TTS_SPEED}
    out["path"] = "mulaw 8k in -> VAD -> Deepgram mulaw 8k (as received) -> OpenAI -> ElevenLabs ulaw_8000 -> out"
    out["machine"] = {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def run(turns: int = 10, **kwargs: Any) -> dict[str, Any]:
    """Synchronous entry point (for ``bench.latency`` to put beside the Discord figures)."""
    return asyncio.run(measure_call_waits(turns, **kwargs))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.call_latency", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--turns", type=int, default=10, help="measured calls per setting (default: 10)")
    parser.add_argument("--end-silence-ms", type=int, default=600, help="the baseline's silence that ends a turn")
    parser.add_argument("--no-compare", action="store_true", help="leave out the baseline (the old rule)")
    parser.add_argument("--json", action="store_true", help="only the JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args.turns, end_silence_ms=args.end_silence_ms, compare=not args.no_compare)
    if not args.json:
        for name, r in (("calls", result), ("baseline", result.get("baseline"))):
            if r is None:
                continue
            w = r["wait_ms"]
            sys.stderr.write(f"{name}: wait p50 {w['p50']} ms, p95 {w['p95']} ms over {r['turns']} calls; deciding the "
                             f"caller stopped p50 {r['end_of_speech_detected_ms']['p50']} ms; false cut-offs "
                             f"{r['false_cutoffs']['count']}/{r['false_cutoffs']['of']}, wasted LLM calls "
                             f"{r['wasted_llm_calls']['count']}/{r['wasted_llm_calls']['of']}\n")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
