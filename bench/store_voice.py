"""Benchmark: memory's two calls on the voice path, on SQLite and PostgreSQL in the same run, and the wait a
person hears with each backend.

``turns`` (default): a database holding ``--turns`` turns (100k) over 1,000 rooms, on a SQLite file and on a
fresh PostgreSQL database (created and dropped here). For each backend, p50/p95 in ms of:

- ``append``: ``Memory.append`` (what the voice path calls: onto the write-behind queue) and
  ``append_durable``: one turn stored before returning (``Memory.append_now``, one INSERT … RETURNING);
- ``recent``: ``Memory.recent(room, 20)`` once the room is cached (the voice path) and ``recent_db``: the
  same read from the database (a cold room: ``SELECT … ORDER BY id DESC LIMIT 20`` on the room index).

``latency`` (``--latency``): bench.latency's cloud configuration three times in one run: the store on
SQLite in memory (the baseline), on PostgreSQL, and on PostgreSQL behind a TCP proxy that answers every
reply 50 ms late (``--delay-ms``). Reports each wait's p50/p95 (ms).

What the figures leave out: the PostgreSQL server is on this machine (loopback, no network), shared with
other work; the proxy adds its own copy per chunk; 2-core machine under other load (``loadavg``).

Usage: python -m bench.store_voice [--json] [--turns N] [--latency] [--delay-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from bot.memory import Memory, Modality, Turn
from bot.store import Database, PostgresDatabase, SqliteDatabase

ADMIN_URL = os.environ.get("PG_BENCH_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ROOMS = 1000
SAMPLES = 500


def _ms(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return {"p50": round(statistics.median(ordered) * 1000, 3), "p95": round(p95 * 1000, 3), "n": len(ordered)}


def _turn(room: int, i: int) -> Turn:
    return Turn(room=f"discord:1:{room}", speaker_id=f"discord:{room % 97}", speaker_name="Ann", role="user",
                text=f"turn {i}: something a person might say in a voice channel, about this long.",
                modality=Modality.VOICE, created_at=time.time())


@contextlib.asynccontextmanager
async def fresh_postgres() -> AsyncIterator[str]:
    import asyncpg

    name = f"vb_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _seed(db: Database, count: int) -> None:
    memory = await Memory.open(db)
    batch: list[Turn] = []
    for i in range(count):
        batch.append(_turn(i % ROOMS, i))
        if len(batch) == 2000:
            await memory.turns.insert_many(batch)
            batch = []
    if batch:
        await memory.turns.insert_many(batch)
    await memory.aclose()
    if db.dialect == "postgresql":
        await db.execute("ANALYZE turns")


async def measure_turns(db: Database, count: int) -> dict[str, Any]:
    started = time.monotonic()
    await _seed(db, count)
    seeded = time.monotonic() - started
    memory = await Memory.open(db)
    try:
        append, durable, cached, cold = [], [], [], []
        for i in range(SAMPLES):
            turn = _turn(i % ROOMS, count + i)
            t0 = time.perf_counter()
            memory.append(turn)
            append.append(time.perf_counter() - t0)
        await memory.flush()
        for i in range(SAMPLES):
            turn = _turn(i % ROOMS, count + SAMPLES + i)
            t0 = time.perf_counter()
            await memory.append_now(turn)
            durable.append(time.perf_counter() - t0)
        for i in range(SAMPLES):
            room = f"discord:1:{(i * 7) % ROOMS}"
            t0 = time.perf_counter()
            await memory.turns.recent_rows(room, 20)
            cold.append(time.perf_counter() - t0)
        await memory.recent("discord:1:3", 20)  # fill one room's cache
        for _ in range(SAMPLES):
            t0 = time.perf_counter()
            await memory.recent("discord:1:3", 20)
            cached.append(time.perf_counter() - t0)
        stored = await memory.turns.count()
    finally:
        await memory.aclose()
    return {"turns_stored": stored, "seed_seconds": round(seeded, 1), "append": _ms(append),
            "append_durable": _ms(durable), "recent": _ms(cached), "recent_db": _ms(cold)}


async def run_turns(count: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteDatabase(Path(tmp) / "voicebot.sqlite3")
        try:
            out["sqlite"] = await measure_turns(db, count)
        finally:
            await db.close()
    async with fresh_postgres() as url:
        pg = await PostgresDatabase.connect(url)
        try:
            out["postgresql"] = await measure_turns(pg, count)
        finally:
            await pg.close()
    return out


@contextlib.contextmanager
def delayed(url: str, delay: float) -> Iterator[str]:
    """``url`` through a TCP proxy answering ``delay`` seconds late, on its own loop in a thread (a remote server)."""
    from urllib.parse import urlsplit

    from tests.fakes.tcp_proxy import TcpProxy

    parts = urlsplit(url)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432, delay=delay) as proxy:
            box["proxy"], box["stop"] = proxy, asyncio.Event()
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="db-proxy", daemon=True)
    thread.start()
    ready.wait(10)
    proxy = box["proxy"]
    try:
        yield parts._replace(netloc=f"{parts.username or 'postgres'}@{proxy.host_port}").geturl()
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(10)


async def run_latency(delay_ms: float, utterances: int) -> dict[str, Any]:
    from bench.latency import UTTERANCES, BenchConfig, run_benchmark

    def config(url: str | None) -> BenchConfig:
        overrides: dict[str, Any] = {"database_url": url} if url else {}
        return BenchConfig(configs=("cloud",), utterances=UTTERANCES[:utterances], overrides=overrides)

    def waits(result: dict[str, Any]) -> dict[str, Any]:
        cloud = result.get("cloud", {})
        return {k: cloud.get(k) for k in ("turns", "wait_ms", "floor_ms", "waits_ms", "false_cutoffs") if k in cloud}

    out: dict[str, Any] = {"sqlite": waits(await run_benchmark(config(None)))}
    async with fresh_postgres() as url:
        out["postgresql"] = waits(await run_benchmark(config(url)))
        with delayed(url, delay_ms / 1000) as slow:
            out[f"postgresql_{delay_ms:g}ms_late"] = waits(await run_benchmark(config(slow)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    parser.add_argument("--turns", type=int, default=100_000, help="turns stored before measuring")
    parser.add_argument("--latency", action="store_true", help="bench.latency's cloud wait per backend instead")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="--latency: how late the slow PostgreSQL answers")
    parser.add_argument("--utterances", type=int, default=10, help="--latency: utterances per run")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.latency:
        result: dict[str, Any] = {"latency": asyncio.run(run_latency(args.delay_ms, args.utterances))}
    else:
        result = {"turns": asyncio.run(run_turns(args.turns))}
    result["machine"] = {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["measures"] = (__doc__ or "").split("\n\n", 1)[1].split("Usage:")[0].strip()
    if not args.json:
        print(json.dumps(result, indent=2), file=sys.stderr)
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
