"""bench/sms_store measures the SMS record's life on both backends and its sweep takes every left text."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.sms_store import measure
from bot.store import Database
from tests.backends import store_db  # noqa: F401  (both backends)


@pytest.fixture
def db(store_db: Database) -> Database:  # noqa: F811  (tests/backends: a fresh SQLite file, then PostgreSQL)
    return store_db


async def test_the_bench_times_each_move_and_sweeps_everything(db: Database) -> None:
    figures = await measure(db, stored=200, samples=20)
    assert figures["claim_new"]["n"] == 20 and figures["advance"]["n"] == 80 and figures["life"]["n"] == 20
    assert figures["sweep_take"]["n"] == 2  # 20 left texts, 10 per sweep
    assert all(0 < f["p50_ms"] <= f["p95_ms"] for f in figures.values())
    assert await db.scalar("SELECT COUNT(*) FROM sms_messages WHERE state = 'answered'") == 220
