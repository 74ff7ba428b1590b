"""An SMS record's state moves on SQLite and on PostgreSQL, side by side in one run.

For each backend: a fresh database (SQLite file in a temporary folder; PostgreSQL: a database created
beside the one named and dropped afterwards), ``--stored`` finished records written first (the table
a running bot has: a week of SIDs), then ``--samples`` texts taken through their life as the service
does it: ``claim`` (insert with its lease, or find the SID) and each ``advance`` (a compare-and-set
``UPDATE`` by the lease holder), and the sweep that takes a dead process's texts. Prints JSON: p50/p95
in milliseconds per operation and per backend.

    python -m bench.sms_store --database postgresql://postgres@127.0.0.1:5432/postgres

What it leaves out: the event loop's other work (a bot is doing more at the same time), network
distance to a remote PostgreSQL (here loopback), and concurrency between processes (one client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bot.sms.store import SmsStore, open_sms_store
from bot.store import Database, PostgresDatabase, SqliteDatabase
from bot.store.leases import LeaseOwner

__all__ = ["measure", "main"]


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p95_ms": round(ordered[math.ceil(0.95 * len(ordered)) - 1] * 1000, 3),  # nearest rank
            "n": len(ordered)}


async def _timed(bucket: list[float], call: Callable[[], Awaitable[Any]]) -> Any:
    started = time.perf_counter()
    result = await call()
    bucket.append(time.perf_counter() - started)
    return result


async def measure(db: Database, *, stored: int, samples: int) -> dict[str, Any]:
    clock = [1_700_000_000.0]
    store: SmsStore = await open_sms_store(db, owner=LeaseOwner("bench-a/boot/1/1/a"), clock=lambda: clock[0])
    now = clock[0]
    rows = [(f"SMold{i:012d}", f"+1555{i % 100000:07d}", now - 3600 + i * 0.001, "answered", now)
            for i in range(stored)]
    for start in range(0, len(rows), 5000):
        await db.executemany("INSERT INTO sms_messages (message_sid, from_number, received_at, state, updated_at) "
                             "VALUES (?, ?, ?, ?, ?)", rows[start:start + 5000])
    times: dict[str, list[float]] = {k: [] for k in ("claim_new", "claim_retry", "advance", "life", "sweep_take")}
    for i in range(samples):
        sid, number = f"SMnew{i:012d}", f"+1666{i:07d}"
        clock[0] += 0.01
        began = time.perf_counter()
        await _timed(times["claim_new"], lambda: store.claim(sid, number, "hello there"))
        await _timed(times["claim_retry"], lambda: store.claim(sid, number, "hello there"))
        for frm, to in (("received", "accepted"), ("accepted", "replying")):
            assert await _timed(times["advance"], lambda: store.advance(sid, frm, to))
        assert await _timed(times["advance"], lambda: store.advance(sid, "replying", "sending",
                                                                    reply=["an answer"], sent_segments=0))
        assert await _timed(times["advance"], lambda: store.advance(sid, "sending", "answered"))
        times["life"].append(time.perf_counter() - began)
    # The sweep: a dead holder's unfinished texts, taken 10 at a time by another.
    dead = await open_sms_store(db, owner=LeaseOwner("bench-dead/boot/1/1/d"), clock=lambda: clock[0])
    for i in range(samples):
        await dead.claim(f"SMdead{i:012d}", f"+1777{i:07d}", "left behind")
    clock[0] += 3600
    while True:
        taken = await _timed(times["sweep_take"], lambda: store.take_unfinished(limit=10))
        if not taken:
            times["sweep_take"].pop()
            break
    return {name: _ms(values) for name, values in times.items()}


async def _run(database: str | None, stored: int, samples: int) -> dict[str, Any]:
    out: dict[str, Any] = {"stored_records": stored, "samples": samples}
    with tempfile.TemporaryDirectory(prefix="sms-store-") as folder:
        sqlite = SqliteDatabase(Path(folder) / "voicebot.sqlite3")
        try:
            out["sqlite"] = await measure(sqlite, stored=stored, samples=samples)
        finally:
            await sqlite.close()
    if database:
        from bench.sms_crash import _drop_database, _fresh_database

        url = await _fresh_database(database)
        try:
            pg = await PostgresDatabase.connect(url)
            try:
                out["postgresql"] = await measure(pg, stored=stored, samples=samples)
            finally:
                await pg.close()
        finally:
            await _drop_database(database, url)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", metavar="URL",
                        help="a PostgreSQL server's database; a fresh one is made beside it (omit: SQLite only)")
    parser.add_argument("--stored", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_run(args.database, args.stored, args.samples)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
