"""This process as one member of the cluster: it registers, claims its shards, beats, and paces its
logins through the database every process of the bot shares.

``ClusterMember.join`` runs in the bot's ``setup_hook`` once ``GET /gateway/bot`` said the shard
count: it registers the process, claims its shards (a live holder makes it refuse with one line,
:class:`~bot.cluster.store.ShardsHeld`) and starts the heartbeat. Its :class:`DatabaseGate` replaces
the one-process :class:`~bot.shards.BucketGate`.

The database may go away for a while (PostgreSQL restarted under a running cluster): a missed beat is
logged once and retried, an IDENTIFY waits for the database rather than logging in unpaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

from bot.cluster.store import ClusterStore, ProcessInfo
from bot.shards import IDENTIFY_INTERVAL, IDENTIFY_MARGIN, SessionStartLimit, describe_shards
from bot.store import Database

__all__ = ["ClusterMember", "DatabaseGate", "process_info"]

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # between two tries while the database is unreachable
MAX_WAIT_SLICE = 30.0  # a long wait (the day's starts used up) is re-checked this often


def _version() -> str:
    try:
        return metadata.version("voicebot")
    except metadata.PackageNotFoundError:
        return "unknown"


def process_info(name: str | None = None) -> ProcessInfo:
    """This process: a name for people (``PROCESS_NAME`` or host:pid) and an id unique across machines."""
    host = socket.gethostname()
    pid = os.getpid()
    return ProcessInfo(process_id=f"{host}:{pid}:{secrets.token_hex(4)}", name=name or f"{host}:{pid}",
                       host=host, pid=pid, version=_version())


class DatabaseGate:
    """An :class:`~bot.shards.IdentifyGate` all processes share: one IDENTIFY per bucket per 5 s
    (plus the same margin as :class:`~bot.shards.BucketGate`) and none past the day's session starts,
    counted in the database."""

    def __init__(self, store: ClusterStore, limit: SessionStartLimit, process_id: str, *,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.store = store
        self.limit = limit
        self.process_id = process_id
        self._sleep = sleep
        self._recorded = False
        self._record_lock = asyncio.Lock()
        self._locks: dict[int, asyncio.Lock] = {}

    def bucket(self, shard_id: int) -> int:
        return shard_id % self.limit.max_concurrency

    async def _record_limit(self) -> None:
        async with self._record_lock:
            if not self._recorded:
                await self.store.session_limit(total=self.limit.total, remaining=self.limit.remaining,
                                               reset_after=self.limit.reset_after)
                self._recorded = True

    async def wait(self, shard_id: int) -> None:
        bucket = self.bucket(shard_id)
        lock = self._locks.setdefault(bucket, asyncio.Lock())
        async with lock:  # this process's shards of one bucket go in the order they asked
            failing = False
            while True:
                try:
                    await self._record_limit()
                    delay, _at = await self.store.try_identify(bucket, shard_id, self.process_id,
                                                          IDENTIFY_INTERVAL + IDENTIFY_MARGIN)
                except Exception as exc:  # the database is away: wait for it, never log in unpaced
                    if not failing:
                        log.warning("shard %d waits for the database to pace its login: %s", shard_id, exc)
                        failing = True
                    await self._sleep(RETRY_SECONDS)
                    continue
                if delay <= 0:
                    return
                log.debug("shard %d waits %.1f s for IDENTIFY bucket %d", shard_id, delay, bucket)
                await self._sleep(min(delay, MAX_WAIT_SLICE))


class ClusterMember:
    """Registration, shard claim and heartbeat of this process.

    ``stats`` returns (guilds, voice sessions) for each beat; ``on_lost`` is called (once) when
    another process took this one's shards (it was thought down): the bot should stop.
    """

    def __init__(self, db: Database, info: ProcessInfo, *, heartbeat: float = 5.0, down_after: int = 3) -> None:
        self.store = ClusterStore(db, heartbeat=heartbeat, down_after=down_after)
        self.info = info
        self._task: asyncio.Task[None] | None = None
        self._joined = False
        self.stats: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self.on_lost: Callable[[list[int]], Awaitable[None]] | None = None
        self.on_beat: Callable[[], Awaitable[None]] | None = None  # after each beat (voice channels' state)
        self.beats = 0  # heartbeats written (tests wait on it)

    def gate(self, limit: SessionStartLimit) -> DatabaseGate:
        return DatabaseGate(self.store, limit, self.info.process_id)

    async def start(self) -> None:
        """Create the schema and register (before the shard count is known)."""
        await self.store.migrate()
        await self.store.register(self.info)

    async def join(self, shard_ids: tuple[int, ...], shard_count: int) -> None:
        """Claim the shards and start beating; :class:`ShardsHeld` when a live process holds them."""
        await self.start()
        taken = await self.store.claim(self.info.process_id, shard_ids, shard_count)
        if taken:
            log.warning("took over shard(s) from %s: their last heartbeat is older than %.0f s",
                        ", ".join(taken), self.store.down_seconds)
        self._joined = True
        log.info("cluster: %s holds shards %s of %d (heartbeat every %g s)", self.info.name,
                 describe_shards(shard_ids), shard_count, self.store.heartbeat)
        self._task = asyncio.create_task(self._beat_forever(), name="cluster-heartbeat")

    async def _beat_forever(self) -> None:
        failing = False
        while True:
            try:
                guilds, voice = self.stats()
                lost = await self.store.beat(self.info.process_id, guilds=guilds, voice_sessions=voice)
                if self.on_beat is not None:
                    await self.on_beat()
                self.beats += 1
                if failing:
                    log.info("cluster heartbeat written again")
                    failing = False
                if lost:
                    log.error("another process took shard(s) %s: this one was thought down (no heartbeat for %.0f s); "
                              "stopping so no guild is answered twice", describe_shards(lost), self.store.down_seconds)
                    if self.on_lost is not None:
                        await self.on_lost(lost)
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning("cluster heartbeat not written (retrying): %s", exc)
                    failing = True
            await asyncio.sleep(self.store.heartbeat)

    async def leave(self) -> None:
        """Stop beating and free the shards at once (a clean stop)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._joined:
            self._joined = False
            try:
                await self.store.leave(self.info.process_id)
            except Exception as exc:
                log.warning("could not record this process's stop (its shards free up when it counts as down): %s",
                            exc)
