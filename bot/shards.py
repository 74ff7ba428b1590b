"""Which Discord shards this process runs, and when it may log each one in.

Discord splits a bot's guilds across shards: a guild's events go to shard
``(guild_id >> 22) % shard_count`` and events outside guilds (DMs) to shard 0 only, so a process
that runs shards 1 to 3 never sees a DM. Logging a shard in (IDENTIFY) is rationed twice over:
``max_concurrency`` buckets (``shard_id % max_concurrency``) each allow one IDENTIFY per 5 s
(Discord answers a faster one with op 9, Invalid Session), and ``total`` session starts per day
(the one past the last ends every session and resets the token). Both numbers come from
``GET /gateway/bot``. Source: Discord's developer docs, "Gateway" → "Sharding" and "Identifying".

An :class:`IdentifyGate` is what the bot awaits before each IDENTIFY. :class:`BucketGate` paces
the shards of one process; several processes sharing one application need a gate they all see
(the database), which plugs in at the same place.

Nothing here imports discord.py: settings validate shard ranges with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "IDENTIFY_INTERVAL",
    "BucketGate",
    "IdentifyGate",
    "SessionStartLimit",
    "ShardStatus",
    "describe_shards",
    "parse_shard_ids",
    "shard_of",
    "shard_problems",
]

log = logging.getLogger(__name__)

IDENTIFY_INTERVAL = 5.0  # seconds between two IDENTIFYs of one bucket (Discord's rule)
# Discord measures the gap between IDENTIFYs as they arrive, the gate between the moments it lets
# them go: a later one overtaking an earlier one on the way must not land inside the 5 s.
IDENTIFY_MARGIN = 1.0
MAX_SHARD_COUNT = 100_000  # far beyond any bot (Discord's largest run tens of thousands)


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard that receives ``guild_id``'s events."""
    return (guild_id >> 22) % shard_count


def parse_shard_ids(text: str) -> tuple[int, ...]:
    """``"0-3"``, ``"0,2,5"`` or a mix (``"0-3,8"``) as shard ids in ascending order.

    Raises ``ValueError`` with one sentence saying what is wrong (not a number, a range running
    backwards, an id given twice, nothing at all).
    """
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            first = int(low.strip())
            last = int(high.strip()) if dash else first
        except ValueError:
            raise ValueError(f"{part!r} is not a shard id or a range such as 0-3") from None
        if first < 0 or last < 0:
            raise ValueError(f"{part!r}: shard ids start at 0")
        if last < first:
            raise ValueError(f"{part!r} runs backwards (write {last}-{first})")
        ids.extend(range(first, last + 1))
    if not ids:
        raise ValueError("names no shard (write e.g. 0-3 or 0,2,5)")
    seen: set[int] = set()
    twice: set[int] = set()
    for shard_id in ids:
        (twice if shard_id in seen else seen).add(shard_id)
    if twice:
        raise ValueError(f"lists shard {', '.join(map(str, sorted(twice)))} more than once")
    return tuple(sorted(ids))


def shard_problems(shard_ids: Iterable[int] | None, shard_count: int | None, *,
                   ids_name: str = "SHARD_IDS", count_name: str = "SHARD_COUNT") -> list[str]:
    """What is wrong with running ``shard_ids`` of ``shard_count`` (empty when nothing is)."""
    if shard_ids is None:
        return []
    if shard_count is None:
        return [f"{ids_name} needs {count_name}: the number of shards across all processes, so every "
                "process splits guilds the same way"]
    outside = [i for i in shard_ids if i >= shard_count]
    if outside:
        return [f"{ids_name} lists shard {', '.join(map(str, outside))}, but {count_name} is {shard_count}: "
                f"shards are numbered 0 to {shard_count - 1}"]
    return []


def describe_shards(shard_ids: Iterable[int]) -> str:
    """Shard ids as short ranges for a log line: ``0-3, 8``."""
    parts: list[str] = []
    run: list[int] = []
    for shard_id in sorted(shard_ids):
        if run and shard_id != run[-1] + 1:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(shard_id)
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(parts)


@dataclass(frozen=True)
class SessionStartLimit:
    """``GET /gateway/bot``'s ``session_start_limit`` (``reset_after`` in seconds here)."""

    total: int
    remaining: int
    reset_after: float
    max_concurrency: int

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> SessionStartLimit:
        return cls(total=int(data["total"]), remaining=int(data["remaining"]),
                   reset_after=int(data["reset_after"]) / 1000, max_concurrency=max(1, int(data["max_concurrency"])))


@dataclass(frozen=True)
class ShardStatus:
    """One shard of this process as it stands."""

    shard_id: int
    shard_count: int
    connected: bool
    guilds: int
    latency_ms: float | None


class IdentifyGate(Protocol):
    """Awaited before each IDENTIFY; returns when ``shard_id`` may log in."""

    async def wait(self, shard_id: int) -> None: ...


class BucketGate:
    """One process's IDENTIFYs: one per bucket per 5 s, none while the session starts are used up.

    Buckets take their turns independently; within a bucket IDENTIFYs go in the order they asked.
    """

    def __init__(
        self,
        limit: SessionStartLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.limit = limit
        self._clock = clock
        self._sleep = sleep
        self.remaining = limit.remaining
        self._reset_at = clock() + limit.reset_after
        self._last: dict[int, float] = {}  # bucket -> when its last IDENTIFY went
        self._locks: dict[int, asyncio.Lock] = {}

    def bucket(self, shard_id: int) -> int:
        return shard_id % self.limit.max_concurrency

    async def wait(self, shard_id: int) -> None:
        bucket = self.bucket(shard_id)
        lock = self._locks.setdefault(bucket, asyncio.Lock())
        async with lock:
            if self.remaining <= 0:
                delay = self._reset_at - self._clock()
                if delay > 0:
                    log.warning("Discord's session start limit is used up (%d a day): shard %d waits %.0f s "
                                "for it to reset", self.limit.total, shard_id, delay)
                    await self._sleep(delay)
                self.remaining = self.limit.total
                self._reset_at = self._clock() + 86_400.0
            last = self._last.get(bucket)
            if last is not None:
                delay = last + IDENTIFY_INTERVAL + IDENTIFY_MARGIN - self._clock()
                if delay > 0:
                    log.debug("shard %d waits %.1f s for its IDENTIFY bucket %d", shard_id, delay, bucket)
                    await self._sleep(delay)
            self._last[bucket] = self._clock()
            self.remaining -= 1
