"""A fresh PostgreSQL database per test on the machine's server (127.0.0.1:5432, trust auth).

``PG_TEST_URL`` names another server's maintenance database. Each test gets a database of its own
(created from template0, dropped afterwards), so tests and parallel workers never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

ADMIN_URL = os.environ.get("PG_TEST_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _run_admin(sql: str) -> None:
    """Run ``sql`` on a loop of its own in a thread (callers may be inside a running loop)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _admin(sql)).result()


def create_database() -> str:
    """A new empty database; its URL."""
    name = f"vb_test_{uuid.uuid4().hex[:12]}"
    try:
        _run_admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
    except OSError as exc:  # pragma: no cover - a machine without the server
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL}: {exc}")
    return _with_database(ADMIN_URL, name)


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    _run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> object:
    """A fresh database. Its opt-out key (bot.privacy) is a test key unless the test sets its own: the bot
    refuses PostgreSQL without PRIVACY_KEY/PRIVACY_KEY_FILE, and stores opened directly read the key from there."""
    import bot.privacy as privacy

    saved = privacy._key_source
    if saved.key is None and saved.file is None:
        privacy.use_key_source(privacy.KeySource(key=bytes(range(32))))
    url = create_database()
    try:
        yield url
    finally:
        privacy.use_key_source(saved)
        drop_database(url)
