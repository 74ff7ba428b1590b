"""Benchmark: the wait on a phone call — end of the caller's speech → first reply media sent to Twilio.

Each turn is a whole loopback phone call through the real phone path: :class:`LoopbackTwilio` rings
the bot's web server (signed webhook, TwiML, Media Streams WebSocket), says an espeak-ng phrase as
μ-law 8 kHz in real-time 20 ms frames followed by silence (a phone line keeps sending audio), and
the bot's :class:`~bot.phone.call.PhoneCall` decodes it in process, cuts it with the VAD segmenter
and feeds ``VoiceSession`` → ``DeepgramSTT`` (the caller's μ-law as is) → an ``Agent`` with ``OpenAIEngine``
→ ``ElevenLabsEngine`` → μ-law → ``media`` frames. The providers are the timed loopback fakes of
``bench.latency`` (:class:`bench.latency.Providers`: the same ones, with the same timings, as the
Discord figures; the fake Deepgram decodes the μ-law it is sent, as the service does).
Their fake TTS speaks only ``pcm_48000``, so here the 48 kHz PCM is resampled to μ-law in process
(soxr's streaming resampler holds back about 80 ms of input before its first output, which at the
fake's 4x speed is most of ``first_tts_audio_to_first_frame``); in production ElevenLabs is asked
for ``ulaw_8000`` and that step disappears.

The end of speech is when the caller sent the last frame of the phrase; the wait ends when the bot
sent the reply's first ``media`` frame (``wait_ms``) and when the caller's playout would start
playing it (``heard_ms``). Unlike the Discord benchmark, which calls ``on_speech_end`` itself at
the end of the clip, this includes deciding that the caller stopped (``end_silence_ms`` of silence
through the VAD): a phone line sends silence, not a packet gap. After the first media frame the
caller hangs up, so each turn also exercises a hang-up mid-reply.

Usage: python -m bench.call_latency [--turns 10] [--json]
Prints one JSON object on stdout (without ``--json`` a readable summary also goes to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import soxr

__all__ = ["measure_call_waits", "run", "main"]

ACCOUNT = "AC" + "b" * 32
AUTH = "bench-auth-token"
PUBLIC = "https://bench.invalid"
PHRASE = "What is the plan for the meeting on Thursday?"


def _phrase_8k(text: str) -> bytes:
    from audio.tts.espeak import synthesize_pcm

    pcm, rate = synthesize_pcm(text)
    return np.asarray(soxr.resample(np.frombuffer(pcm, dtype="<i2"), rate, 8000), dtype="<i2").tobytes()


def _pct(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "mean": None, "min": None, "max": None}
    arr = np.asarray(values, dtype=float)
    return {"p50": round(float(np.percentile(arr, 50)), 1), "p95": round(float(np.percentile(arr, 95)), 1),
            "mean": round(float(arr.mean()), 1), "min": round(float(arr.min()), 1), "max": round(float(arr.max()), 1)}


def _voiced_frames(pcm8k: bytes) -> int:
    """How many 20 ms frames of the phrase the fake Deepgram will count as speech."""
    from tests.fakes.deepgram_server import is_voiced_frame

    frame = 320  # 20 ms of s16le at 8 kHz
    return sum(is_voiced_frame(pcm8k[i:i + frame]) for i in range(0, len(pcm8k) - frame + 1, frame))


async def measure_call_waits(turns: int = 10, *, warmup: int = 1,
                             end_silence_ms: int = 600, turn_timeout: float = 30.0) -> dict[str, Any]:
    """Run ``warmup + turns`` loopback calls; return the waits (ms) and their breakdown as a dict."""
    from audio.stt.deepgram import DeepgramSTT
    from audio.tts.elevenlabs import ElevenLabsEngine
    from bench import latency
    from bot.agent import Agent
    from bot.agent.character import default_character
    from bot.agent.engines.openai_engine import OpenAIEngine
    from bot.db import Database
    from bot.memory import Memory
    from bot.phone.call import CallOptions
    from bot.phone.caller import LoopbackTwilio
    from bot.phone.service import PhoneService, TwilioCalls
    from bot.web import WebServer, create_app

    loop = asyncio.get_running_loop()
    phrase = await loop.run_in_executor(None, _phrase_8k, PHRASE)
    voiced = _voiced_frames(phrase)
    waits: list[float] = []
    heard: list[float] = []
    vad_end: list[float] = []
    stages: dict[str, list[float]] = {}
    started = time.monotonic()
    with latency.Providers() as providers:
        db = Database.in_memory()
        memory = Memory(db)
        llm, dg, el = providers.openai, providers.deepgram, providers.elevenlabs
        engine = OpenAIEngine(api_key=llm.api_key, base_url=llm.base_url, model=llm.models[0])
        agent = Agent(default_character(), engine, memory)
        stt = DeepgramSTT(dg.api_key, base_url=dg.http_url, ws_url=dg.ws_url)
        tts = ElevenLabsEngine(api_key=el.api_key, base_url=el.url)
        async with LoopbackTwilio(bot_url="http://127.0.0.1:1", public_url=PUBLIC, account_sid=ACCOUNT,
                                  auth_token=AUTH) as twilio:
            phone = PhoneService(
                agent=agent, memory=memory, stt=stt, tts=tts, fallback_tts=None, voice=None, auth_token=AUTH,
                public_url=PUBLIC, options=CallOptions(max_seconds=0, end_silence_ms=end_silence_ms),
                calls=TwilioCalls(ACCOUNT, AUTH, api_base=twilio.api_base),
            )
            server = WebServer(create_app(phone=phone), "127.0.0.1", 0)
            await server.start()
            twilio.set_bot_url(server.url)
            try:
                for i in range(warmup + turns):
                    call = await twilio.call(f"+1555000{i:04d}")
                    await call.wait_for(lambda: call.call_sid in phone.calls, turn_timeout)
                    bot = phone.calls[call.call_sid]
                    await asyncio.wait_for(bot.started.wait(), turn_timeout)
                    providers.script.say([(PHRASE, voiced)])  # what the fake recognizer will hear
                    await call.speak_pcm(phrase, trailing_silence=0.0)
                    speech_end = call.speech_sent_until
                    # Twilio keeps sending the line's silence until the reply starts.
                    silence = loop.create_task(call.silence(turn_timeout), name="bench-call-silence")
                    try:
                        await call.wait_for(lambda: call.media_received > 0, turn_timeout)
                    finally:
                        silence.cancel()
                        await asyncio.gather(silence, return_exceptions=True)
                    await call.hang_up()
                    await phone.wait_ended(i + 1, turn_timeout)
                    if i < warmup:
                        continue
                    timing = bot.session.timings[0] if bot.session is not None and bot.session.timings else None
                    if timing is None or timing.first_frame is None or speech_end is None:
                        raise RuntimeError(f"turn {i}: no reply was sent")
                    waits.append((timing.first_frame - speech_end) * 1000)
                    heard.append((call.segments[0].start - speech_end) * 1000 if call.segments else float("nan"))
                    vad_end.append((timing.speech_end - speech_end) * 1000)
                    for name, value in timing.breakdown_ms().items():
                        if value is not None:
                            stages.setdefault(name, []).append(value)
            finally:
                await server.stop()
                await phone.aclose()
                await stt.aclose()
                await tts.aclose()
                await engine.aclose()
                db.close()
    return {
        "benchmark": "call_latency",
        "what": "phone call: end of the caller's speech -> first reply media frame sent to Twilio (ms)",
        "turns": len(waits),
        "wait_ms": _pct(waits),
        "heard_ms": _pct([h for h in heard if h == h]),
        "end_of_speech_detected_ms": _pct(vad_end),
        "stages_ms_p50": {k: _pct(v)["p50"] for k, v in stages.items()},
        "end_silence_ms": end_silence_ms,
        "provider_timings": {"connect_ms": latency.CONNECT_DELAY * 1000, "stt_final_ms": latency.STT_FINALIZE_DELAY * 1000,
                             "llm_first_token_ms": latency.LLM_FIRST_TOKEN * 1000,
                             "llm_tokens_per_second": latency.LLM_TOKENS_PER_SECOND,
                             "tts_first_audio_ms": latency.TTS_FIRST_AUDIO * 1000, "tts_speed": latency.TTS_SPEED},
        "path": "mulaw 8k in -> VAD -> Deepgram mulaw 8k (as received) -> OpenAI -> ElevenLabs pcm_48000 -> soxr -> mulaw out",
        "seconds": round(time.monotonic() - started, 1),
    }


def run(turns: int = 10, **kwargs: Any) -> dict[str, Any]:
    """Synchronous entry point (for ``bench.latency`` to put beside the Discord figures)."""
    return asyncio.run(measure_call_waits(turns, **kwargs))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.call_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=10, help="measured calls (default: 10)")
    parser.add_argument("--end-silence-ms", type=int, default=600, help="silence that ends the caller's turn")
    parser.add_argument("--json", action="store_true", help="only the JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args.turns, end_silence_ms=args.end_silence_ms)
    if not args.json:
        w = result["wait_ms"]
        sys.stderr.write(f"call wait over {result['turns']} turns: p50 {w['p50']} ms, p95 {w['p95']} ms "
                         f"(of which deciding the caller stopped: p50 {result['end_of_speech_detected_ms']['p50']} ms)\n")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
