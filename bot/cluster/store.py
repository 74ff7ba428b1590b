"""The processes of one bot as the database they share sees them.

Every process registers a row and beats it every ``CLUSTER_HEARTBEAT`` seconds (host, pid, its
shards, guilds and voice sessions); a process whose last beat is older than ``CLUSTER_DOWN_AFTER``
beats is down. A process claims its shards in one transaction: a shard held by a live process is
refused, a down holder's shard is taken over. IDENTIFYs are paced here too (a row per bucket with the
time of its last IDENTIFY, and the day's session starts), so that processes on several machines keep
Discord's ``max_concurrency`` rule between them.

Every claim is one transaction that first takes a lock all processes see: ``BEGIN IMMEDIATE`` on SQLite
(one file, one machine), ``pg_advisory_xact_lock`` on PostgreSQL. Times are the database's clock on
PostgreSQL (processes on several machines then agree on "5 s ago" whatever their own clocks say) and
the machine's on SQLite (one machine).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from bot.shards import describe_shards, parse_shard_ids
from bot.store import Database

__all__ = ["CLUSTER_STEPS", "ClusterStore", "ProcessInfo", "ProcessRow", "ShardsHeld"]

log = logging.getLogger(__name__)

# All portable: DOUBLE PRECISION and BIGINT are real types on PostgreSQL and REAL/INTEGER affinity on SQLite.
CLUSTER_STEPS = [
    """
    CREATE TABLE cluster_processes (
        process_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        shard_ids TEXT NOT NULL DEFAULT '',
        shard_count INTEGER NOT NULL DEFAULT 0,
        guilds INTEGER NOT NULL DEFAULT 0,
        voice_sessions INTEGER NOT NULL DEFAULT 0,
        version TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        beat_at DOUBLE PRECISION NOT NULL,
        stopped_at DOUBLE PRECISION
    );
    CREATE TABLE cluster_shards (
        shard_id INTEGER PRIMARY KEY,
        shard_count INTEGER NOT NULL,
        process_id TEXT NOT NULL,
        claimed_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE cluster_identify (
        bucket INTEGER PRIMARY KEY,
        last_at DOUBLE PRECISION NOT NULL,
        shard_id INTEGER NOT NULL,
        process_id TEXT NOT NULL
    );
    CREATE TABLE cluster_session_starts (
        id INTEGER PRIMARY KEY,
        total INTEGER NOT NULL,
        remaining INTEGER NOT NULL,
        reset_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE cluster_voice (
        guild_id BIGINT PRIMARY KEY,
        channel_id BIGINT NOT NULL,
        mode TEXT NOT NULL,
        language TEXT NOT NULL,
        process_id TEXT NOT NULL,
        joined_at DOUBLE PRECISION NOT NULL
    )
    """,
]

_LOCK_KEY = zlib.crc32(b"voicebot-cluster") & 0x7FFFFFFF
_CLAIM_LOCK = -1  # the second key of the shard-claim lock; buckets use 0 and up


def _pid_alive(host: object, pid: object) -> bool:
    """False only when ``host`` is this machine and no process ``pid`` runs here."""
    if host != socket.gethostname() or pid is None:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists (another user's) or cannot tell
    return True


class ShardsHeld(Exception):
    """This process's shards (or its shard count) conflict with a live process: one line to print."""


@dataclass(frozen=True)
class ProcessInfo:
    """Who this process is, as it registers."""

    process_id: str  # unique across machines (host, pid and a random part)
    name: str  # PROCESS_NAME or host:pid, for people and the /metrics label
    host: str
    pid: int
    version: str


@dataclass(frozen=True)
class ProcessRow:
    """A process as the registry holds it, and whether it is up at ``now``."""

    process_id: str
    name: str
    host: str
    pid: int
    shard_ids: tuple[int, ...]
    shard_count: int
    guilds: int
    voice_sessions: int
    version: str
    started_at: float
    beat_at: float
    stopped_at: float | None
    up: bool
    beat_age: float

    @property
    def state(self) -> str:
        if self.stopped_at is not None:
            return "stopped"
        return "up" if self.up else "down"


class ClusterStore:
    """The registry, shard claims and login pacing on the shared database."""

    def __init__(self, db: Database, *, heartbeat: float = 5.0, down_after: int = 3) -> None:
        self.db = db
        self.heartbeat = heartbeat
        self.down_after = down_after

    @property
    def down_seconds(self) -> float:
        """A beat older than this means the process is down."""
        return self.heartbeat * self.down_after

    async def migrate(self) -> None:
        await self.db.migrate("cluster", CLUSTER_STEPS)

    async def now(self) -> float:
        """Epoch seconds by the clock all processes share (the server's on PostgreSQL)."""
        if self.db.dialect == "postgresql":
            return float(await self.db.scalar("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8"))
        return time.time()

    async def _lock(self, tx: Database, second: int) -> None:
        # SQLite: the transaction's BEGIN IMMEDIATE already holds the file's write lock.
        if tx.dialect == "postgresql":
            await tx.execute("SELECT pg_advisory_xact_lock(?, ?)", (_LOCK_KEY, second))

    # ------------------------------------------------------------------ processes

    async def register(self, info: ProcessInfo) -> None:
        now = await self.now()
        await self.db.execute(
            "INSERT INTO cluster_processes (process_id, name, host, pid, version, started_at, beat_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (process_id) DO UPDATE SET beat_at = excluded.beat_at, "
            "stopped_at = NULL",
            (info.process_id, info.name, info.host, int(info.pid), info.version, now, now))

    async def claim(self, process_id: str, shard_ids: Iterable[int], shard_count: int) -> list[str]:
        """Hold ``shard_ids`` of ``shard_count`` for ``process_id``; returns the down processes taken over
        from (by name). Raises :class:`ShardsHeld` when a live process holds one of them, or live
        processes split the guilds with another shard count."""
        wanted = sorted(set(int(s) for s in shard_ids))
        async with self.db.transaction() as tx:
            await self._lock(tx, _CLAIM_LOCK)
            now = await self.now()
            live_since = now - self.down_seconds
            rows = await tx.query(
                "SELECT s.shard_id, s.shard_count, s.process_id, p.name, p.host, p.pid, p.beat_at, p.stopped_at "
                "FROM cluster_shards s LEFT JOIN cluster_processes p ON p.process_id = s.process_id "
                "WHERE s.process_id <> ?", (process_id,))
            held: dict[str, list[int]] = {}
            counts: dict[int, str] = {}
            taken: set[str] = set()
            for row in rows:
                alive = row["beat_at"] is not None and row["stopped_at"] is None and float(row["beat_at"]) > live_since
                if alive and not _pid_alive(row["host"], row["pid"]):
                    alive = False  # killed on this machine (a supervisor restarting it): no need to wait
                who = f"{row['name']} (pid {row['pid']} on {row['host']})" if row["name"] else str(row["process_id"])
                if not alive:
                    if int(row["shard_id"]) in wanted:
                        taken.add(who)
                    continue
                counts.setdefault(int(row["shard_count"]), who)
                if int(row["shard_id"]) in wanted and int(row["shard_count"]) == shard_count:
                    held.setdefault(who, []).append(int(row["shard_id"]))
            if held:
                who, ids = next(iter(held.items()))
                raise ShardsHeld(f"shard(s) {describe_shards(ids)} of {shard_count} are held by the live process "
                                 f"{who}: give this process other SHARD_IDS, or stop that one first")
            other_counts = {c: w for c, w in counts.items() if c != shard_count}
            if other_counts:
                count, who = next(iter(other_counts.items()))
                raise ShardsHeld(f"SHARD_COUNT {shard_count} differs from the {count} of the live process {who}: "
                                 "every process of one bot must split guilds the same way")
            # A down process's shards, or shards of an old count nobody live uses, are free.
            await tx.execute("DELETE FROM cluster_shards WHERE process_id = ? OR shard_count <> ?",
                             (process_id, int(shard_count)))
            if wanted:
                placeholders = ", ".join("?" for _ in wanted)
                await tx.execute(f"DELETE FROM cluster_shards WHERE shard_id IN ({placeholders})", wanted)
            for shard_id in wanted:
                await tx.execute("INSERT INTO cluster_shards (shard_id, shard_count, process_id, claimed_at) "
                                 "VALUES (?, ?, ?, ?)", (shard_id, int(shard_count), process_id, now))
            await tx.execute("UPDATE cluster_processes SET shard_ids = ?, shard_count = ?, beat_at = ? "
                             "WHERE process_id = ?",
                             (",".join(map(str, wanted)), int(shard_count), now, process_id))
        return sorted(taken)

    async def beat(self, process_id: str, *, guilds: int, voice_sessions: int) -> list[int]:
        """Record a heartbeat; returns the shards this process claimed that another now holds."""
        now = await self.now()
        await self.db.execute(
            "UPDATE cluster_processes SET beat_at = ?, guilds = ?, voice_sessions = ?, stopped_at = NULL "
            "WHERE process_id = ?", (now, int(guilds), int(voice_sessions), process_id))
        mine = await self.db.scalar("SELECT shard_ids FROM cluster_processes WHERE process_id = ?", (process_id,))
        claimed = parse_shard_ids(mine) if mine else ()
        if not claimed:
            return []
        held = {int(r[0]) for r in await self.db.query(
            "SELECT shard_id FROM cluster_shards WHERE process_id = ?", (process_id,))}
        return [s for s in claimed if s not in held]

    async def leave(self, process_id: str) -> None:
        """A clean stop: the shards are free at once and the process shows as stopped."""
        now = await self.now()
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM cluster_shards WHERE process_id = ?", (process_id,))
            await tx.execute("UPDATE cluster_processes SET stopped_at = ?, voice_sessions = 0 WHERE process_id = ?",
                             (now, process_id))

    async def processes(self, *, keep_stopped: float = 3600.0) -> list[ProcessRow]:
        """Every process seen in the last hour (stopped ones too), oldest first."""
        now = await self.now()
        rows = await self.db.query(
            "SELECT * FROM cluster_processes WHERE stopped_at IS NULL OR stopped_at > ? ORDER BY started_at",
            (now - keep_stopped,))
        found = []
        for r in rows:
            beat = float(r["beat_at"])
            found.append(ProcessRow(
                process_id=str(r["process_id"]), name=str(r["name"]), host=str(r["host"]), pid=int(r["pid"]),
                shard_ids=parse_shard_ids(r["shard_ids"]) if r["shard_ids"] else (),
                shard_count=int(r["shard_count"]), guilds=int(r["guilds"]), voice_sessions=int(r["voice_sessions"]),
                version=str(r["version"]), started_at=float(r["started_at"]), beat_at=beat,
                stopped_at=None if r["stopped_at"] is None else float(r["stopped_at"]),
                up=r["stopped_at"] is None and beat > now - self.down_seconds and _pid_alive(r["host"], r["pid"]),
                beat_age=max(0.0, now - beat)))
        return found

    async def forget_stopped(self, older_than: float = 86_400.0) -> int:
        """Drop rows of processes stopped or silent for longer than ``older_than`` seconds."""
        cutoff = await self.now() - older_than
        return await self.db.execute(
            "DELETE FROM cluster_processes WHERE beat_at < ? AND process_id NOT IN "
            "(SELECT process_id FROM cluster_shards)", (cutoff,))

    # ------------------------------------------------------------------ logins

    async def session_limit(self, *, total: int, remaining: int, reset_after: float) -> None:
        """What ``GET /gateway/bot`` just said about the day's session starts.

        Discord's count is the truth when it was read; two processes reading it at once each saw the
        other's start not yet spent, so the lower of the stored and the fresh count is kept."""
        async with self.db.transaction() as tx:
            await self._lock(tx, _CLAIM_LOCK)
            now = await self.now()
            row = await tx.query_one("SELECT remaining, reset_at FROM cluster_session_starts WHERE id = 1")
            if row is not None and float(row["reset_at"]) > now:
                remaining = min(int(row["remaining"]), remaining)
            await tx.execute(
                "INSERT INTO cluster_session_starts (id, total, remaining, reset_at) VALUES (1, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET total = excluded.total, remaining = excluded.remaining, "
                "reset_at = excluded.reset_at", (int(total), int(remaining), now + float(reset_after)))

    async def try_identify(self, bucket: int, shard_id: int, process_id: str, interval: float) -> tuple[float, float]:
        """Take ``bucket``'s turn to IDENTIFY now, or say how many seconds to wait: (0, the time the
        turn was recorded at) or (seconds to wait, 0).

        A turn is taken when the bucket's last IDENTIFY (by any process) is ``interval`` seconds old
        and a session start is left today; taking it records the time and spends a start, atomically.
        """
        async with self.db.transaction() as tx:
            await self._lock(tx, int(bucket))
            now = await self.now()
            starts = await tx.query_one("SELECT total, remaining, reset_at FROM cluster_session_starts WHERE id = 1")
            if starts is not None:
                if float(starts["reset_at"]) <= now:
                    await tx.execute("UPDATE cluster_session_starts SET remaining = total, reset_at = ? WHERE id = 1",
                                     (now + 86_400.0,))
                elif int(starts["remaining"]) <= 0:
                    return float(starts["reset_at"]) - now, 0.0
            last = await tx.scalar("SELECT last_at FROM cluster_identify WHERE bucket = ?", (int(bucket),))
            if last is not None and float(last) + interval > now:
                return float(last) + interval - now, 0.0
            await tx.execute(
                "INSERT INTO cluster_identify (bucket, last_at, shard_id, process_id) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (bucket) DO UPDATE SET last_at = excluded.last_at, shard_id = excluded.shard_id, "
                "process_id = excluded.process_id", (int(bucket), now, int(shard_id), process_id))
            if starts is not None:
                await tx.execute("UPDATE cluster_session_starts SET remaining = remaining - 1 WHERE id = 1")
            return 0.0, now

    async def identify_log(self) -> dict[int, float]:
        """When each bucket's last IDENTIFY went (epoch seconds)."""
        return {int(r[0]): float(r[1]) for r in await self.db.query("SELECT bucket, last_at FROM cluster_identify")}


from bot.store import registry as _schemas  # noqa: E402  (tools that open a database know this schema)

_schemas.register("cluster", CLUSTER_STEPS)
