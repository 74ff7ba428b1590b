"""Transcripts older than TRANSCRIPT_RETENTION_DAYS are pruned while the bot runs, not only at start;
on PostgreSQL one process of a cluster prunes each round."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bot.memory import RETENTION_INTERVAL, Memory, Modality, RetentionSchedule, Turn
from bot.services import build_services
from bot.settings import load_settings
from bot.store.sms import MIGRATIONS as SMS_MIGRATIONS
from bot.store import Database, PostgresDatabase, SqliteDatabase
from bot.store.erase import Retention
from tests.backends import store_db  # noqa: F401  (both backends)

TIMEOUT = 30.0


def old_turn(text: str, days_ago: float) -> Turn:
    return Turn(room="discord:1:2", speaker_id="discord:7", speaker_name="Old", role="user", text=text,
                modality=Modality.TEXT, created_at=time.time() - days_ago * 86400)


async def test_a_running_bot_prunes_on_schedule_and_the_task_is_cancelled(store_db: Database) -> None:  # noqa: F811
    memory = await Memory.open(store_db)
    await store_db.migrate("sms", SMS_MIGRATIONS)
    now = time.time()
    await store_db.execute("INSERT INTO sms_rate_notes (number, noted_at) VALUES (?, ?)", ("+15550000001", now - 9999))
    schedule = RetentionSchedule(memory, 30, interval=0.01)
    await schedule.start()
    assert schedule.runs == 1
    assert await store_db.scalar("SELECT COUNT(*) FROM sms_rate_notes") == 0  # SMS bookkeeping past its use
    # Written after start: only a later, scheduled prune can remove it.
    memory.append(old_turn("expired-words-9911", days_ago=31))
    memory.append(old_turn("recent words", days_ago=1))
    async with asyncio.timeout(TIMEOUT):
        while await memory.count() != 1:
            await asyncio.sleep(0.01)  # polling a predicate; the timeout only guards a failure
    assert [t.text for t in await memory.recent("discord:1:2", 5)] == ["recent words"]
    if store_db.dialect == "sqlite":
        assert b"expired-words-9911" not in store_db.path.read_bytes()  # type: ignore[attr-defined]
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "transcript-retention"]
    assert len(tasks) == 1
    await schedule.aclose()
    assert tasks[0].done()
    await memory.aclose()


async def test_one_process_of_a_cluster_prunes_each_round(pg_url: str) -> None:
    one, two = await PostgresDatabase.connect(pg_url), await PostgresDatabase.connect(pg_url)
    try:
        memory = await Memory.open(one)
        await memory.append_now(old_turn("expired", days_ago=40))
        first, second = Retention(one, 30), Retention(two, 30)
        # Process one's round is running (it holds the lock) when process two's round comes.
        conn = await one._pool.acquire()
        try:
            assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", Retention.LOCK_KEY)
            assert await second.prune_now() == 0 and second.skipped == 1 and second.runs == 0
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", Retention.LOCK_KEY)
            await one._pool.release(conn)
        assert await second.prune_now() == 1 and second.runs == 1  # its turn now
        assert await first.prune_now() == 0 and first.runs == 1
        await memory.aclose()
    finally:
        await one.close()
        await two.close()


async def test_services_run_the_schedule_hourly_and_stop_it_on_close(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path), "TRANSCRIPT_RETENTION_DAYS": "7"}, env_file=None)
    services = await build_services(settings)
    assert services.retention is not None and services.retention.interval == RETENTION_INTERVAL == 3600.0
    [task] = [t for t in asyncio.all_tasks() if t.get_name() == "transcript-retention"]
    await services.aclose()
    assert task.done()


async def test_retention_zero_keeps_everything_and_runs_no_task(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path), "TRANSCRIPT_RETENTION_DAYS": "0"}, env_file=None)
    services = await build_services(settings)
    services.memory.append(old_turn("kept", days_ago=4000))
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "transcript-retention"]
    assert await services.memory.count() == 1
    await services.aclose()
    db = SqliteDatabase(tmp_path / "voicebot.sqlite3")
    assert await db.scalar("SELECT text FROM turns") == "kept"  # written before the close
    await db.close()
