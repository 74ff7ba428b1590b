"""The voice path never waits on the database (issue 22 item 3): PostgreSQL answering late or going away
behind a TCP proxy (tests/fakes/tcp_proxy.py) with a real PostgreSQL behind it.

Appending a turn returns at once; a room's recent turns come from memory once read; turns queue while
the database is away and are all written when it returns; past the bound they are dropped, counted and
logged once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from bot.memory import Memory, Modality, Turn
from bot.store import PostgresDatabase
from tests.fakes.tcp_proxy import TcpProxy

ROOM = "discord:1:2"
DEADLINE = 30.0


def said(text: str) -> Turn:
    return Turn(room=ROOM, speaker_id="discord:7", speaker_name="Ann", role="user", text=text,
                modality=Modality.VOICE, created_at=time.time())


def through(proxy: TcpProxy, url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username or 'postgres'}@{proxy.host_port}").geturl()


async def until(predicate: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not within {DEADLINE} s: {what}")
        await asyncio.sleep(0.02)  # polling state; the deadline only guards a failure


@pytest.fixture
async def target(pg_url: str) -> tuple[str, str, int]:
    parts = urlsplit(pg_url)
    return pg_url, parts.hostname or "127.0.0.1", parts.port or 5432


async def test_turns_queue_while_the_database_is_away_and_are_all_written_when_it_returns(
        target: tuple[str, str, int], caplog: pytest.LogCaptureFixture) -> None:
    pg_url, host, port = target
    direct = await PostgresDatabase.connect(pg_url)
    async with TcpProxy(host, port) as proxy:
        db = await PostgresDatabase.connect(through(proxy, pg_url), timeout=2.0)
        memory = await Memory.open(db, read_budget=0.2, retry_max=0.2)
        try:
            memory.append(said("before"))
            assert [t.text for t in await memory.recent(ROOM, 10)] == ["before"]  # the room is cached now
            await memory.flush()

            proxy.cut()  # PostgreSQL goes away
            started = time.monotonic()
            for i in range(50):
                memory.append(said(f"while away {i}"))
            recent = await memory.recent(ROOM, 5)  # from memory: no database needed
            spent = time.monotonic() - started
            assert [t.text for t in recent] == [f"while away {i}" for i in range(45, 50)]
            assert spent < 1.5  # neither appending nor reading waited for the database (its timeout is 2 s)
            await until(lambda: memory.failures > 0, "a failed write")
            state = memory.queue_state()
            assert state["pending"] >= 50 and state["dropped"] == 0 and state["database_away_seconds"] is not None
            assert any("Storing turns failed" in r.getMessage() for r in caplog.records)

            proxy.restore()  # it returns: every queued turn is written, in order
            await until(lambda: memory.pending == 0, "the queue written")
            texts = [r[0] for r in await direct.query("SELECT text FROM turns ORDER BY id")]
            assert texts == ["before"] + [f"while away {i}" for i in range(50)]
            assert memory.queue_state()["database_away_seconds"] is None
            assert any("takes turns again" in r.getMessage() for r in caplog.records)
        finally:
            await memory.aclose()
            await db.close()
    await direct.close()


async def test_past_the_bound_turns_are_dropped_counted_and_logged_once(
        target: tuple[str, str, int], caplog: pytest.LogCaptureFixture) -> None:
    pg_url, host, port = target
    direct = await PostgresDatabase.connect(pg_url)
    async with TcpProxy(host, port) as proxy:
        db = await PostgresDatabase.connect(through(proxy, pg_url), timeout=2.0)
        memory = await Memory.open(db, queue_max=20, read_budget=0.2, retry_max=0.2)
        try:
            proxy.cut()
            caplog.set_level(logging.WARNING, logger="bot.memory")
            for i in range(30):
                memory.append(said(f"t{i}"))
            assert memory.pending == 20 and memory.dropped == 10
            dropped_lines = [r for r in caplog.records if "dropped so far" in r.getMessage()]
            assert len(dropped_lines) == 1  # once per interval, not once per turn
            proxy.restore()
            await until(lambda: memory.pending == 0, "the queue written")
            # Nothing below the bound was lost: the first 20, in order.
            assert [r[0] for r in await direct.query("SELECT text FROM turns ORDER BY id")] == \
                [f"t{i}" for i in range(20)]
        finally:
            await memory.aclose()
            await db.close()
    await direct.close()


async def test_a_slow_database_delays_storing_never_reading_context(target: tuple[str, str, int]) -> None:
    pg_url, host, port = target
    direct = await PostgresDatabase.connect(pg_url)
    seed = await Memory.open(direct)
    for i in range(3):
        seed.append(said(f"stored {i}"))
    await seed.aclose()
    async with TcpProxy(host, port) as proxy:
        db = await PostgresDatabase.connect(through(proxy, pg_url))
        memory = await Memory.open(db, read_budget=0.1)
        try:
            proxy.delay = 3.0  # every answer three seconds late
            memory.append(said("just now"))
            started = time.monotonic()
            cold = await memory.recent(ROOM, 10)  # a cold room: the budget, then what memory holds
            assert time.monotonic() - started < 2.0
            assert [t.text for t in cold] == ["just now"]
            # The fill finishes in the background; then the stored turns are there too, with no wait.
            await until(lambda: len(memory.held(ROOM)) == 4, "the room filled")
            started = time.monotonic()
            assert [t.text for t in await memory.recent(ROOM, 10)] == ["stored 0", "stored 1", "stored 2", "just now"]
            assert time.monotonic() - started < 2.0
            await memory.flush()
            assert await direct.scalar("SELECT COUNT(*) FROM turns") == 4
        finally:
            await memory.aclose()
            await db.close()
    await direct.close()


async def test_a_full_disk_queues_turns_says_so_once_and_writes_them_when_there_is_room(
        tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """SQLITE_FULL, as a full disk gives it: the file may not grow past its pages (max_page_count)."""
    from bot.store import SqliteDatabase

    db = SqliteDatabase(tmp_path / "voicebot.sqlite3")
    memory = await Memory.open(db, retry_max=0.2)
    try:
        memory.append(said("before"))
        await memory.flush()
        pages = int(await db.scalar("PRAGMA page_count"))
        await db.execute(f"PRAGMA max_page_count = {pages}")  # no room for one more page
        caplog.set_level(logging.WARNING, logger="bot.memory")
        long = "x" * 3000  # each turn needs a new page
        for i in range(20):
            memory.append(said(f"while full {i} {long}"))
        assert [t.text.split()[2] for t in await memory.recent(ROOM, 3)] == ["17", "18", "19"]  # still answering
        await until(lambda: memory.failures > 0, "a failed write")
        failed = [r.getMessage() for r in caplog.records if "Storing turns failed" in r.getMessage()]
        assert len(failed) == 1 and "full" in failed[0].lower()  # one clear line, however many retries
        assert memory.queue_state()["pending"] == 20

        await db.execute("PRAGMA max_page_count = 1073741823")  # room again
        await until(lambda: memory.pending == 0, "the queue written")
        rows = await db.query("SELECT text FROM turns ORDER BY id")
        assert [r[0].split()[0:3] for r in rows][1:] == [["while", "full", str(i)] for i in range(20)]
    finally:
        await memory.aclose()
        await db.close()
