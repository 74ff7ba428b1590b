"""Transcripts older than TRANSCRIPT_RETENTION_DAYS are pruned while the bot runs, not only at start."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bot.db import Database
from bot.memory import RETENTION_INTERVAL, Memory, Modality, RetentionSchedule, Turn
from bot.services import build_services
from bot.settings import load_settings

TIMEOUT = 30.0


def old_turn(text: str, days_ago: float) -> Turn:
    return Turn(room="discord:1:2", speaker_id="discord:7", speaker_name="Old", role="user", text=text,
                modality=Modality.TEXT, created_at=time.time() - days_ago * 86400)


async def test_a_running_bot_prunes_on_schedule_and_the_task_is_cancelled(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite3")
    memory = Memory(db)
    schedule = RetentionSchedule(memory, 30, interval=0.01)
    schedule.start()
    assert schedule.runs == 1
    # Written after start: only a later, scheduled prune can remove it.
    memory.append(old_turn("expired-words-9911", days_ago=31))
    memory.append(old_turn("recent words", days_ago=1))
    async with asyncio.timeout(TIMEOUT):
        while memory.count() != 1:
            await asyncio.sleep(0.01)  # polling a predicate; the timeout only guards a failure
    assert [t.text for t in memory.recent("discord:1:2", 5)] == ["recent words"]
    assert b"expired-words-9911" not in (tmp_path / "db.sqlite3").read_bytes()
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "transcript-retention"]
    assert len(tasks) == 1
    await schedule.aclose()
    assert tasks[0].done()
    db.close()


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
    assert services.memory.count() == 1
    await services.aclose()
