"""One fixture for store tests on both backends: ``store_db`` is a fresh SQLite file, then a fresh
PostgreSQL database (tests/pg.py). Import it into a test module: ``from tests.backends import store_db``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.store import Database, PostgresDatabase, SqliteDatabase


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        db: Database = SqliteDatabase(tmp_path / "data" / "voicebot.sqlite3")
    else:
        db = await PostgresDatabase.connect(request.getfixturevalue("pg_url"))
    try:
        yield db
    finally:
        await db.close()
