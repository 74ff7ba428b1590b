"""Benchmark: what metering and the daily limits add to a turn, and to the wait a person hears.

Two measures in one run:

- ``per_turn``: one voice turn's usage work, as the guards do it, on the real store: a slice of
  speech reserved before the audio goes to the recognizer, the model's tokens reserved before the
  request, the voice's characters reserved before each of two sentences (the waits a turn's path
  makes), then each settled (written off the path). ``on_path_ms`` is the reservations' time per
  turn, which is what a request waits for; ``off_path_ms`` the writes settling them (awaited here
  only to measure them). Three stores: limits on SQLite (the bot's file), limits on PostgreSQL
  (when one answers at ``--pg``), and no limits (the baseline: counted, never reserved, so no
  round trip on the path). Fifty people in one server take turns round-robin, on a clock that
  moves a minute a turn; a reservation is served from the person's lease (5% of the tightest
  limit, reserved in the store ahead) when it has enough, else it is a round trip that takes a new
  lease: ``round_trips`` counts those.
- ``cloud_wait``: bench/latency's cloud configuration (the real bot on the loopback Discord, the
  Deepgram, OpenAI and ElevenLabs fakes timed like the services) run twice in the same run, without
  limits and with limits on every kind and level; its p50/p95 wait and the difference.

Left out: the PostgreSQL server is on this machine (a network hop adds its round trip to each
reservation); the first reservation of a day also creates the rows; the console's panel reads.

Usage: python -m bench.usage_overhead [--turns 500] [--utterances 6] [--no-cloud] [--pg URL]
Prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot.store import Database, SqliteDatabase, open_database
from bot.usage import UsageMeter, UsageStore, Who, parse_limits

LIMITS = "speech=30m,voice=20k,model=200k,phone=10m"
SERVER_LIMITS = "speech=10h,voice=500k,model=5M,phone=2h"
TOTAL_LIMITS = "speech=100h,voice=5M,model=50M,phone=20h"


def _pct(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 4),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 4),
            "mean": round(statistics.fmean(ordered), 4)}


async def per_turn(db: Database | None, turns: int, *, limited: bool) -> dict[str, Any]:
    clock = [1_765_000_000.0]
    meter = UsageMeter(UsageStore(db) if db is not None else None,
                       per_person=parse_limits(LIMITS if limited else ""),
                       per_server=parse_limits(SERVER_LIMITS if limited else ""),
                       total=parse_limits(TOTAL_LIMITS if limited else ""), clock=lambda: clock[0])
    await meter.start()
    on_path: list[float] = []
    off_path: list[float] = []
    calls = 0
    if meter.store is not None:
        reserve = meter.store.reserve

        async def counted(*args: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            return await reserve(*args, **kw)

        meter.store.reserve = counted  # type: ignore[method-assign]
    for i in range(turns):
        who = Who(person=f"discord:{100_000 + i % 50}", guild=42)
        started = time.perf_counter()
        speech = await meter.reserve("speech", who, 15.0, engine="deepgram", minimum=0.5)
        model = await meter.reserve("model", who, 900, engine="openai")
        first = await meter.reserve("voice", who, 60, engine="elevenlabs")
        second = await meter.reserve("voice", who, 45, engine="elevenlabs")
        reserved = time.perf_counter()
        meter.settle(speech, 3.2)
        meter.settle(model, 812)
        meter.settle(first, 60)
        meter.settle(second, 45)
        await meter.flush()
        on_path.append((reserved - started) * 1000)
        off_path.append((time.perf_counter() - reserved) * 1000)
        clock[0] += 60
    await meter.aclose()
    return {"turns": turns, "round_trips": calls, "on_path_ms": _pct(on_path), "off_path_ms": _pct(off_path)}


async def cloud_wait(utterances: int) -> dict[str, Any]:
    from audio.native import load_libopus
    from bench import latency

    load_libopus()
    cfg = latency.BenchConfig(configs=("cloud",), utterances=latency.UTTERANCES[:utterances], two_guilds=False)
    loop = asyncio.get_running_loop()
    speech = await loop.run_in_executor(None, latency.prepare_speech, cfg.utterances)
    warm = (await loop.run_in_executor(None, latency.prepare_speech, [latency.WARMUP]))[0]
    out: dict[str, Any] = {}
    with latency.Providers() as providers:
        base = latency._settings_for("cloud", providers, {})
        limited = base.replace(limits_per_person=parse_limits(LIMITS), limits_per_server=parse_limits(SERVER_LIMITS),
                               limits_total=parse_limits(TOTAL_LIMITS))
        for name, settings in (("without_limits", base), ("with_limits", limited)):
            samples = await latency.run_config("cloud", settings, speech, cfg, providers, warm=warm)
            waits = [s.wait_ms for s in samples if s.wait_ms is not None]
            out[name] = {"wait_ms": _pct(waits) if waits else None, "turns": len(samples), "answered": len(waits)}
    if out["without_limits"]["wait_ms"] and out["with_limits"]["wait_ms"]:
        out["difference_p50_ms"] = round(out["with_limits"]["wait_ms"]["p50"] - out["without_limits"]["wait_ms"]["p50"], 1)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"limits": {"person": LIMITS, "server": SERVER_LIMITS, "total": TOTAL_LIMITS}}
    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteDatabase(Path(tmp) / "usage.sqlite3")
        try:
            result["per_turn_sqlite_limits"] = await per_turn(db, args.turns, limited=True)
            result["per_turn_sqlite_no_limits"] = await per_turn(db, args.turns, limited=False)
        finally:
            await db.close()
    result["per_turn_no_store"] = await per_turn(None, args.turns, limited=False)
    if args.pg:
        import asyncpg

        name = f"vb_bench_usage_{uuid.uuid4().hex[:10]}"  # a scratch database, dropped afterwards
        try:
            admin = await asyncpg.connect(args.pg, timeout=10)
        except Exception as exc:  # no server: say so in the JSON
            result["per_turn_postgresql_limits"] = {"skipped": f"{type(exc).__name__}: {exc}"}
        else:
            try:
                await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
                pg = await open_database(args.pg.rsplit("/", 1)[0] + "/" + name)
                try:
                    result["per_turn_postgresql_limits"] = await per_turn(pg, args.turns, limited=True)
                finally:
                    await pg.close()
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.close()
    if not args.no_cloud:
        result["cloud_wait"] = await cloud_wait(args.utterances)
    result["measures"] = (__doc__ or "").split("Usage:")[0].strip()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--utterances", type=int, default=6, help="cloud turns per configuration")
    parser.add_argument("--no-cloud", action="store_true", help="skip the wait through the loopback Discord")
    parser.add_argument("--pg", default=None, help="a PostgreSQL maintenance URL (e.g. postgresql://postgres@"
                        "127.0.0.1:5432/postgres): a scratch database is made there and dropped; none: SQLite only")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args)), separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
