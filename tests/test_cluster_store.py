"""The cluster registry on real SQLite and real PostgreSQL: shard claims refuse a live holder and take a
down one's shards, heartbeats and stops show, and IDENTIFY turns are one per bucket per interval and
never past the day's session starts, however many processes (here: separate database connections)
ask at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.cluster.store import ClusterStore, ProcessInfo, ShardsHeld
from bot.store import Database, open_database


@pytest.fixture(params=["sqlite", "postgresql"])
async def dbs(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[list[Database]]:
    """Three connections to one database, as three processes would have."""
    where = str(tmp_path / "cluster.sqlite3") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened = [await open_database(where) for _ in range(3)]
    await ClusterStore(opened[0]).migrate()
    yield opened
    for db in opened:
        await db.close()


def info(n: int) -> ProcessInfo:
    return ProcessInfo(process_id=f"host{n}:{100 + n}:abcd", name=f"worker{n}", host=f"host{n}", pid=100 + n,
                       version="test")


async def test_a_live_holder_refuses_and_a_down_one_is_taken_over(dbs: list[Database]) -> None:
    a, b = ClusterStore(dbs[0], heartbeat=0.3, down_after=2), ClusterStore(dbs[1], heartbeat=0.3, down_after=2)
    await a.register(info(1))
    await b.register(info(2))
    assert await a.claim("host1:101:abcd", [0, 1], 4) == []
    with pytest.raises(ShardsHeld) as refused:
        await b.claim("host2:102:abcd", [1, 2], 4)
    line = str(refused.value)
    assert "\n" not in line and "shard(s) 1 of 4" in line and "worker1 (pid 101 on host1)" in line
    with pytest.raises(ShardsHeld, match="SHARD_COUNT 8 differs from the 4"):
        await b.claim("host2:102:abcd", [4, 5], 8)
    assert await b.claim("host2:102:abcd", [2, 3], 4) == []  # no overlap: fine
    rows = {r.name: r for r in await a.processes()}
    assert rows["worker1"].shard_ids == (0, 1) and rows["worker2"].shard_ids == (2, 3)
    assert rows["worker1"].state == "up"

    # worker1 stops beating: once its beat is older than 2 beats it is down and its shards are free.
    await b.beat("host2:102:abcd", guilds=3, voice_sessions=1)
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        await b.beat("host2:102:abcd", guilds=3, voice_sessions=1)
        states = {r.name: r.state for r in await b.processes()}
        if states["worker1"] == "down":
            break
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    assert states["worker2"] == "up"
    assert await b.claim("host2:102:abcd", [0, 1, 2, 3], 4) == ["worker1 (pid 101 on host1)"]
    # The old holder's next beat learns it lost them (it must stop).
    assert await a.beat("host1:101:abcd", guilds=0, voice_sessions=0) == [0, 1]
    row = {r.name: r for r in await b.processes()}["worker2"]
    assert (row.guilds, row.voice_sessions, row.shard_ids) == (3, 1, (0, 1, 2, 3))

    # A clean stop frees the shards at once and shows as stopped.
    await b.leave("host2:102:abcd")
    assert {r.name: r.state for r in await a.processes()}["worker2"] == "stopped"
    await a.register(info(1))
    assert await a.claim("host1:101:abcd", [0, 1, 2, 3], 4) == []


async def test_two_processes_claiming_the_same_shards_at_once_one_wins(dbs: list[Database]) -> None:
    stores = [ClusterStore(db) for db in dbs]
    for n, store in enumerate(stores):
        await store.register(info(n))
    results = await asyncio.gather(*(s.claim(f"host{n}:{100 + n}:abcd", [0, 1], 2) for n, s in enumerate(stores)),
                                   return_exceptions=True)
    assert sum(1 for r in results if r == []) == 1
    assert sum(1 for r in results if isinstance(r, ShardsHeld)) == 2


async def test_identify_turns_are_one_per_bucket_per_interval_across_connections(dbs: list[Database]) -> None:
    interval = 0.5
    stores = [ClusterStore(db) for db in dbs]
    granted: list[tuple[int, float]] = []  # (bucket, when)

    async def login(store: ClusterStore, shard_id: int) -> None:
        bucket = shard_id % 2
        while True:
            delay, at = await store.try_identify(bucket, shard_id, "p", interval)
            if delay <= 0:
                break
            await asyncio.sleep(delay)
        granted.append((bucket, at))

    await asyncio.gather(*(login(stores[i % 3], i) for i in range(6)))
    assert len(granted) == 6
    for bucket in (0, 1):
        times = sorted(t for b, t in granted if b == bucket)
        assert len(times) == 3
        gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        assert all(gap >= interval for gap in gaps), gaps
    assert set((await stores[0].identify_log()).keys()) == {0, 1}


async def test_no_identify_once_the_days_session_starts_are_spent(dbs: list[Database]) -> None:
    a, b = ClusterStore(dbs[0]), ClusterStore(dbs[1])
    await a.session_limit(total=1000, remaining=2, reset_after=3600)
    await b.session_limit(total=1000, remaining=5, reset_after=3600)  # read earlier by b: the lower count holds
    assert (await a.try_identify(0, 0, "p", 0.0))[0] == 0
    assert (await b.try_identify(1, 1, "q", 0.0))[0] == 0
    wait, _ = await a.try_identify(2, 2, "p", 0.0)
    assert 3500 < wait <= 3600



async def test_a_schema_step_another_process_applied_after_the_version_check_is_not_a_failure(tmp_path) -> None:
    """Two workers starting at once on one SQLite file: the second read the version before the first
    applied the step, and gets the write lock after (found by bench.cluster: a worker exited at start)."""
    from bot.store import SqliteDatabase

    steps = [f"CREATE TABLE race_{n} (id INTEGER PRIMARY KEY)" for n in range(3)]

    class ReadTooEarly(SqliteDatabase):
        """The version as it was before the other process migrated (read once)."""

        stale = True

        async def schema_version(self, component: str) -> int:
            if self.stale:
                self.stale = False
                return 0
            return await super().schema_version(component)

    first = SqliteDatabase(tmp_path / "one.sqlite3")
    second = ReadTooEarly(tmp_path / "one.sqlite3")
    try:
        await first.migrate("race", steps)
        await second.migrate("race", steps)  # each step is checked again under the write lock
        assert await second.schema_version("race") == 3
    finally:
        await first.close()
        await second.close()


async def test_processes_opening_a_fresh_postgresql_database_at_once_all_succeed(pg_url: str) -> None:
    """Cluster workers starting together on a new DATABASE_URL (one of them exited at start before)."""
    opened = await asyncio.gather(*(open_database(pg_url) for _ in range(4)), return_exceptions=True)
    try:
        assert [type(db).__name__ for db in opened] == ["PostgresDatabase"] * 4, opened
    finally:
        for db in opened:
            if isinstance(db, Database):
                await db.close()
