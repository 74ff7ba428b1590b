"""Benchmark: local Whisper with its full 30 s window against the speech-length window.

The same sentences (espeak-ng, each made in a fresh process so the audio is the same on every run)
go through ``LocalWhisperSTT.transcribe`` with ``short_window=False`` and ``True``, alternately,
on one engine each. Reported per window: word error rate against the text said (lower-case words,
punctuation ignored), and the time per transcription (p50/p95; it follows the machine's load, which
is printed too); and the sentences whose words differ between the two windows.

Sentences: the latency benchmark's (whole, and the halves of the paused ones), the tests' speech
samples and ``EXTRA`` (everyday requests), 53 in all.

Usage: python -m bench.stt_window [--json] [--sentences N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.latency import UTTERANCES, WARMUP, _trim, word_errors

__all__ = ["EXTRA", "sentences", "run", "main"]

log = logging.getLogger(__name__)

TEST_SAMPLES = ("Please tell me a joke about the weather.", "Good morning, can you hear me?",
                "Tell me a joke about computers", "Hello, can you hear me today?")
EXTRA = (
    "Can you set a timer for ten minutes?", "What time does the train leave tomorrow morning?",
    "I think we should order pizza tonight.", "Tell me something interesting about the ocean.",
    "How do I make a cup of green tea?", "My brother plays the guitar in a band.",
    "Do you know any good books about history?", "It has been raining all day here.",
    "Please play some quiet music while I work.", "What is the capital of Australia?",
    "I forgot my keys at the office again.", "Could you explain how airplanes stay in the air?",
    "We are going to the beach on Saturday.", "How many people live in New York City?",
    "I really enjoyed the movie we watched yesterday.", "Remind me to water the plants this evening.",
    "What should I cook for dinner tonight?", "The meeting starts at three in the afternoon.",
    "Can you recommend a good place to eat nearby?", "I am learning to speak Spanish this year.",
    "Why is the sky blue during the day?", "Let's play a game of chess later.",
    "My phone battery is almost empty.", "How far is the moon from the earth?",
    "I need to buy a present for my friend.", "Is it going to snow this weekend?",
    "The children are playing in the garden.", "Thank you for helping me with my homework.",
    "Where did you put the blue folder?", "I would like a glass of cold water please.",
)


def sentences() -> list[str]:
    """Every sentence, once, in a fixed order."""
    out: list[str] = []
    for parts, _pause in (*UTTERANCES, WARMUP):
        out.append(" ".join(parts))
        if len(parts) > 1:
            out.extend(parts)
    out += [*TEST_SAMPLES, *EXTRA]
    return list(dict.fromkeys(out))


def _pcm16(text: str) -> bytes:
    """``text`` spoken by espeak-ng (fresh process), trimmed, at 16 kHz s16le mono."""
    import soxr

    from tests.speech_samples import espeak_pcm

    pcm, rate = espeak_pcm(text)
    mono = np.frombuffer(_trim(pcm, rate), dtype="<i2").astype(np.float32) / 32768.0
    return (np.clip(soxr.resample(mono, rate, 16000), -1, 1) * 32767).astype("<i2").tobytes()


def _pct(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"p50": round(float(np.percentile(arr, 50)), 1), "p95": round(float(np.percentile(arr, 95)), 1)}


async def run(texts: Sequence[str]) -> dict[str, Any]:
    """Transcribe every sentence with both windows; the JSON object."""
    from audio.stt.local import LocalWhisperSTT

    loop = asyncio.get_running_loop()
    clips = await loop.run_in_executor(None, lambda: [_pcm16(t) for t in texts])
    engines = {"full": LocalWhisperSTT(short_window=False), "short": LocalWhisperSTT(short_window=True)}
    heard: dict[str, list[str]] = {name: [] for name in engines}
    times: dict[str, list[float]] = {name: [] for name in engines}
    try:
        for engine in engines.values():
            await engine.check()
            await engine.transcribe(clips[0])  # warm-up: first calls allocate
        for clip in clips:
            for name, engine in engines.items():  # alternately, so both see the same load
                started = time.perf_counter()
                heard[name].append(await engine.transcribe(clip))
                times[name].append((time.perf_counter() - started) * 1000)
    finally:
        for engine in engines.values():
            await engine.aclose()
    out: dict[str, Any] = {"bench": "stt_window", "sentences": len(texts)}
    for name in engines:
        scored = [word_errors(t, h) for t, h in zip(texts, heard[name])]
        words = sum(n for _, n in scored)
        errors = sum(e for e, _ in scored)
        out[name] = {"word_error_rate": round(errors / words, 4) if words else None, "errors": errors,
                     "words": words, "ms": _pct(times[name])}
    out["same_words"] = sum(1 for a, b in zip(heard["full"], heard["short"]) if a == b)
    out["differences"] = [{"said": t, "full": a, "short": b}
                          for t, a, b in zip(texts, heard["full"], heard["short"]) if a != b]
    out["machine"] = {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: print the JSON line (and a summary on stderr without ``--json``)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    parser.add_argument("--sentences", type=int, default=0, help="use the first N sentences (0: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    texts = sentences()
    if args.sentences > 0:
        texts = texts[: args.sentences]
    result = asyncio.run(run(texts))
    if not args.json:
        for name in ("full", "short"):
            r = result[name]
            print(f"{name:5s} window: WER {r['word_error_rate']} ({r['errors']}/{r['words']}), "
                  f"{r['ms']['p50']}/{r['ms']['p95']} ms p50/p95", file=sys.stderr)
        print(f"same words in {result['same_words']} of {result['sentences']}; load {result['machine']['loadavg']}",
              file=sys.stderr)
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
