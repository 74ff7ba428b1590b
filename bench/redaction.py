"""Benchmark: the cost of the redaction every log line and every write to stdout/stderr passes.

A configuration like a real deployment's (a Discord token, OpenAI, ElevenLabs, Deepgram and Twilio
keys, a password in OPENAI_BASE_URL: 8 secret values with their derived forms), and log lines like the
bot's own (about 120-200 characters, request lines with URLs, ids and numbers). Measured per line:
the trie-shaped regex of all 8-character windows (:class:`bot.logs.Redactor`) on lines without a
secret (the common case) and with one echoed piece, the stream path (``split_safe``), and for
comparison two obvious alternatives on clean lines: a Python loop testing every 8-character slice
against the set of windows, and one regular expression of all windows factored as a trie. Each
figure is the best of 5 rounds (the machine is shared; the best round is the least disturbed).

Usage: python -m bench.redaction [--lines 20000]
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from bot.logs import WINDOW, Redactor
from bot.settings import load_settings, secret_values

SETTINGS = {
    "DISCORD_TOKEN": "MTAwMDAwMDAwMDAwMDAwMDAx.GzXq7P.kV9wR2mT8yL4nB6cJ1hF3sD5gA0eU7iO",
    "OPENAI_API_KEY": "sk-proj-9fQm2LxR7vT4kW8nZ3bY6hJ1cP5dG0aE9fQm2LxR7vT4kW8nZ3bY6hJ1cP5dG0aE",
    "OPENAI_BASE_URL": "https://llmuser:Pq7Zx3Lm9Vr2Kt8W@llm.example.com/v1",
    "ELEVENLABS_API_KEY": "sk_4e8a1c7f2b9d6e3a0f5c8b1d4e7a2f9c6b3d0e8a1c5f",
    "DEEPGRAM_API_KEY": "7d3f9a2c8e1b6f4a0c5e9d2b7a1f8c3e6b4d0a9f",
    "TWILIO_ACCOUNT_SID": "AC" + "4b" * 16,
    "TWILIO_AUTH_TOKEN": "f3a9c1e7b5d2f8a4c6e0b9d3f1a7c5e2",
    "TWILIO_PHONE_NUMBER": "+15550001111",
    "PUBLIC_URL": "https://bot.example.com",
}

CLEAN = [
    "2026-12-01 12:00:00,123 INFO    httpx2: HTTP Request: POST https://llm.example.com/v1/chat/completions "
    "\"HTTP/1.1 200 OK\"",
    "2026-12-01 12:00:00,456 INFO    bot.voice.session: turn done (guild=1577290707968720899 "
    "user=1577290707968720904 heard=1.82s chars=143 interrupted=False)",
    "2026-12-01 12:00:01,789 WARNING bot.sms.inbound: SMS SM77777777777777777777777777777777 from +1******4321: "
    "agent failed (LLM endpoint answered HTTP 500); sent an apology via twiml in 0.04 s",
    "2026-12-01 12:00:02,000 DEBUG   discord.gateway: Keeping shard ID None websocket alive with sequence 4121.",
]
DIRTY = "2026-12-01 12:00:03,000 WARNING bot.cli: reply failed: LLM endpoint answered HTTP 429: " \
        "Incorrect API key provided: sk-proj-9fQm2LxR7vT4****dG0aE. You can find your API key at ..."


def naive(secrets: list[str]) -> Callable[[str], bool]:
    windows = {s[i:i + WINDOW] for s in secrets if len(s) >= WINDOW for i in range(len(s) - WINDOW + 1)}

    def has_secret(text: str) -> bool:
        return any(text[i:i + WINDOW] in windows for i in range(len(text) - WINDOW + 1))

    return has_secret


def trie_regex(secrets: list[str]) -> Callable[[str], object]:
    import re

    trie: dict[str, dict] = {}  # type: ignore[type-arg]
    for s in secrets:
        for i in range(len(s) - WINDOW + 1):
            node = trie
            for ch in s[i:i + WINDOW]:
                node = node.setdefault(ch, {})

    def emit(node: dict) -> str:  # type: ignore[type-arg]
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items())]
        if len(branches) <= 1:
            return "".join(branches)
        return "(?:" + "|".join(branches) + ")"

    return re.compile(emit(trie)).search


def per_line_us(fn: Callable[[str], object], lines: list[str], n: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(n):
            fn(lines[i % len(lines)])
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20000)
    n = parser.parse_args().lines
    secrets = secret_values(load_settings(SETTINGS, env_file=None))
    redactor = Redactor(secrets)
    assert "9fQm2LxR" not in redactor(DIRTY) and redactor(CLEAN[0]) == CLEAN[0]
    result = {
        "bench": "redaction",
        "secret_values": len(redactor.secrets),
        "windows": len({w for s in redactor.secrets if len(s) >= WINDOW for w in (s[i:i + WINDOW] for i in range(len(s) - WINDOW + 1))}),
        "line_chars_mean": round(sum(map(len, CLEAN)) / len(CLEAN)),
        "us_per_clean_line": round(per_line_us(redactor, CLEAN, n), 2),
        "us_per_line_with_a_secret": round(per_line_us(redactor, [DIRTY], n), 2),
        "us_per_clean_line_stream": round(per_line_us(redactor.split_safe, [c + "\n" for c in CLEAN], n), 2),
        "us_per_clean_line_python_slice_loop": round(per_line_us(naive(secrets), CLEAN, n), 2),
        "us_per_clean_line_trie_regex": round(per_line_us(trie_regex(secrets), CLEAN, n), 2),
        "lines": n,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
