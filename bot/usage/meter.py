"""The meter: what each paid request may use, checked before it is made, and what it used, after.

Every paid request goes ``grant = await meter.reserve(kind, who, amount, engine=…)`` → the request →
``meter.settle(grant, used)``. ``reserve`` raises :class:`OverLimit` when a limit (per person, per
server, in total) has too little left, so the request is never made; ``settle`` counts what was really
used (more than reserved for a model whose answer ran long, less for speech that stopped early) on the
day the reservation was made, off the request's path. Local engines are only counted
(:meth:`UsageMeter.record`), never limited.

Days are UTC and never go backwards in a process: a clock stepped back across midnight keeps
counting on the later day, so a jump back and forth never hands out one day's allowance twice. At
start the latest day in the store is the floor too (a restart at 23:59:59 that comes back with a
clock a little behind), unless it is more than a day ahead of the clock (a clock that was wrong).
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from bot.usage.limits import KINDS, Limits, Prices
from bot.store import DatabaseError
from bot.usage.store import UsageStore

__all__ = ["Grant", "OverLimit", "UsageMeter", "Who", "current_person", "day_of", "who_of_room"]

log = logging.getLogger(__name__)

# The person a piece of work is done for, where the engine is not told (a voice session's speech
# synthesis runs in a task that sets it); ``None``: the server or the room only.
current_person: contextvars.ContextVar[str | None] = contextvars.ContextVar("usage_person", default=None)

LEVELS = ("person", "server", "total")


def day_of(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d")


def _day_start(day: str) -> float:
    return dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc).timestamp()


@dataclass(frozen=True)
class Who:
    """Whom a request counts against: a person (memory identity: ``discord:<id>``, ``phone:+E164``)
    and the Discord server it happened in, if any."""

    person: str | None = None
    guild: int | None = None


def who_of_room(room: str, speaker_id: str | None) -> Who:
    """The :class:`Who` of an agent request: ``discord:<guild>:<channel>`` rooms name the server."""
    guild: int | None = None
    parts = room.split(":")
    if len(parts) >= 3 and parts[0] == "discord" and parts[1].isdigit():
        guild = int(parts[1])
    person = speaker_id if speaker_id and not speaker_id.startswith("agent") else None
    return Who(person=person, guild=guild)


class OverLimit(Exception):
    """A limit has too little left for the request: it is not made."""

    def __init__(self, kind: str, level: str, scope: str, until: float, *, first: bool) -> None:
        super().__init__(f"daily {kind} limit reached ({level})")
        self.kind = kind
        self.level = level  # "person" | "server" | "total"
        self.scope = scope
        self.until = until  # epoch seconds: the next UTC midnight of the day counted
        self.first = first  # the first refusal today for this scope: tell them (once)


@dataclass
class _Lease:
    """Allowance reserved in the store ahead of use for one person's (kind, scopes) on one day; served
    from memory, so most requests make no round trip. What is left goes back when idle or at close."""

    day: str
    kind: str
    scopes: tuple[str, ...]
    remaining: float
    touched: float
    cap: float = 0.0  # the most it keeps of what requests did not use


@dataclass
class Grant:
    """What one request may use; settle it with what it used."""

    kind: str
    day: str
    engine: str
    scopes: tuple[str, ...]
    granted: float
    reserved: bool  # taken from the store now (limits apply); else counted when settled
    settled: bool = False
    lease: _Lease | None = None  # served from this lease (unused amounts go back to it)


@dataclass
class _Counter:
    amount: float = 0.0
    requests: int = 0


@dataclass
class UsageMeter:
    """Limits, prices and the store; one per process (``Services.usage``)."""

    store: UsageStore | None
    per_person: Limits = field(default_factory=Limits)
    per_server: Limits = field(default_factory=Limits)
    total: Limits = field(default_factory=Limits)
    prices: Prices = field(default_factory=Prices)
    local_stt_fallback: bool = False
    clock: Callable[[], float] = time.time
    exempt: frozenset[str] = frozenset()  # people never limited (the operator's own identities)
    # A lease is this share of the tightest limit that applies (0: every request is its own round trip).
    lease_share: float = 0.05
    lease_idle: float = 30.0  # seconds unused before a lease's rest goes back to the store

    def __post_init__(self) -> None:
        self._floor: str | None = None
        self._ready: asyncio.Lock | None = None
        self._started = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters: dict[tuple[str, str], _Counter] = {}  # (kind, engine) -> use in this process
        self.refusals: dict[str, int] = {k: 0 for k in KINDS}
        self._told: set[tuple[str, str]] = set()  # (day, scope) told in this process (the store knows for all)
        self.listeners: list[Callable[[], None]] = []
        self._leases: dict[tuple[str, str, tuple[str, ...]], _Lease] = {}
        self._sweep_at = 0.0

    @property
    def limited(self) -> bool:
        return bool(self.per_person or self.per_server or self.total)

    # --- days ----------------------------------------------------------------------------------

    def day(self) -> str:
        today = day_of(self.clock())
        floor = self._floor
        if floor is not None and today < floor <= day_of(self.clock() + 86400):
            return floor  # the clock went back across midnight: the later day goes on
        self._floor = today if floor is None or today > floor else floor
        return today

    def until(self, day: str) -> float:
        return _day_start(day) + 86400

    async def start(self) -> None:
        """Create the tables and take the latest day counted as the floor (once; called lazily)."""
        if self._started or self.store is None:
            return
        if self._ready is None:
            self._ready = asyncio.Lock()
        async with self._ready:
            if self._started:
                return
            await self.store.ensure()
            latest = await self.store.latest_day()
            today = day_of(self.clock())
            if latest is not None and today < latest <= day_of(self.clock() + 86400):
                self._floor = latest
            elif latest is not None and latest > today:
                log.warning("usage: the store has counts for %s, ahead of this machine's clock (%s); "
                            "counting on the clock's day", latest, today)
            self._started = True

    # --- scopes --------------------------------------------------------------------------------

    def _scopes(self, kind: str, who: Who) -> list[tuple[str, float | None, str]]:
        """(scope, limit, level) rows a request touches; limits None when unlimited or exempt."""
        # The operator (the console's playground, `voicebot chat`: ``console:`` identities) is counted, never limited.
        exempt = who.person is not None and (who.person in self.exempt or who.person.startswith("console:"))
        rows: list[tuple[str, float | None, str]] = [("total", None if exempt else self.total.get(kind), "total")]
        if who.guild is not None:
            rows.append((f"guild:{who.guild}", None if exempt else self.per_server.get(kind), "server"))
            if who.person is not None:
                rows.append((f"guild:{who.guild}/{who.person}", None, "share"))
        if who.person is not None:
            rows.append((who.person, None if exempt else self.per_person.get(kind), "person"))
        return rows

    # --- the request's path ----------------------------------------------------------------------

    async def reserve(self, kind: str, who: Who, amount: float, *, engine: str,
                      minimum: float | None = None) -> Grant:
        """Take ``amount`` (or what is left, when at least ``minimum``) for one paid request.

        Raises :class:`OverLimit` when a limit that applies has less than ``minimum`` (default: the
        whole ``amount``) left. Without limits no round trip is made: the use is counted at settle.
        """
        amount = max(0.0, float(amount))
        minimum = amount if minimum is None else min(float(minimum), amount)
        rows = self._scopes(kind, who)
        scopes = tuple(r[0] for r in rows)
        if self.store is None or all(r[1] is None for r in rows):
            return Grant(kind, self.day(), engine, scopes, amount, reserved=False)
        await self.start()
        day = self.day()
        self._sweep()
        key = (day, kind, scopes)
        lease = self._leases.get(key)
        if lease is not None and lease.remaining >= minimum:
            take = min(amount, lease.remaining)
            lease.remaining -= take
            lease.touched = time.monotonic()
            return Grant(kind, day, engine, scopes, take, reserved=True, lease=lease)
        tightest = min(r[1] for r in rows if r[1] is not None)
        want = max(amount, self.lease_share * tightest)
        result = await self.store.reserve(day, kind, [(r[0], r[1]) for r in rows], want, minimum)
        if result.refused_by is None:
            take = min(amount, result.granted)
            fresh = _Lease(day, kind, scopes, result.granted - take, time.monotonic(), self.lease_share * tightest)
            old = self._leases.get(key)
            self._leases[key] = fresh
            if old is not None and old.remaining > 0:  # too little to serve this request: back to the store
                self._spawn(self.store.adjust(old.day, old.kind, old.scopes, -old.remaining))
                old.remaining = 0.0
            return Grant(kind, day, engine, scopes, take, reserved=True, lease=fresh)
        level = next(r[2] for r in rows if r[0] == result.refused_by)
        self.refusals[kind] = self.refusals.get(kind, 0) + 1
        first = await self._first_refusal(day, result.refused_by)
        self._changed()
        raise OverLimit(kind, level, result.refused_by, self.until(day), first=first)

    async def check(self, kind: str, who: Who, *, engine: str, minimum: float = 1.0) -> None:
        """Raise :class:`OverLimit` when less than ``minimum`` is left for ``who`` (takes nothing)."""
        grant = await self.reserve(kind, who, minimum, engine=engine)
        self.settle(grant, 0.0, count_request=False)

    def settle(self, grant: Grant, used: float, *, count_request: bool = True) -> None:
        """Count what the request used (off the request's path; :meth:`aclose` waits for it)."""
        if grant.settled:
            return
        grant.settled = True
        used = max(0.0, float(used))
        if count_request or used:
            self._count(grant.kind, grant.engine, used, 1 if count_request else 0)
        if self.store is None:
            return
        if grant.reserved:
            delta = used - grant.granted
            lease = grant.lease
            if delta < 0 and lease is not None and self._leases.get((lease.day, lease.kind, lease.scopes)) is lease:
                keep = min(-delta, max(0.0, lease.cap - lease.remaining))
                lease.remaining += keep  # unused: back to the lease (still reserved in the store)...
                if -delta - keep > 0:  # ...up to its size; the rest back to everyone
                    self._spawn(self.store.adjust(grant.day, grant.kind, grant.scopes, delta + keep))
            elif delta:
                self._spawn(self.store.adjust(grant.day, grant.kind, grant.scopes, delta))
        elif used:
            self._spawn(self.store.add(grant.day, grant.kind, grant.scopes, used))
        if used or count_request:
            self._spawn(self.store.add_engine(grant.day, grant.kind, grant.engine, used, 1 if count_request else 0))

    def record(self, kind: str, who: Who, used: float, *, engine: str, paid: bool = False) -> None:
        """Count a local engine's use (never limited), or paid use that could not be reserved first."""
        day = self.day()
        self._count(kind, engine, used, 1)
        if self.store is None:
            return
        if paid and used:
            self._spawn(self.store.add(day, kind, tuple(r[0] for r in self._scopes(kind, who)), used))
        self._spawn(self.store.add_engine(day, kind, engine, used, 1))

    def _sweep(self, *, everything: bool = False) -> None:
        """Give back what idle leases (and leases of past days) still hold."""
        now = time.monotonic()
        if not everything and now < self._sweep_at:
            return
        self._sweep_at = now + 1.0
        today = self.day()
        for key, lease in list(self._leases.items()):
            if everything or lease.day != today or now - lease.touched > self.lease_idle:
                del self._leases[key]
                if lease.remaining > 0 and self.store is not None:
                    self._spawn(self.store.adjust(lease.day, lease.kind, lease.scopes, -lease.remaining))
                lease.remaining = 0.0

    # --- people told ---------------------------------------------------------------------------

    async def _first_refusal(self, day: str, scope: str) -> bool:
        """Whether this is the first refusal for ``scope`` today, across processes (the store keeps a
        ``notice`` row per scope and day; the first process to write it tells)."""
        if (day, scope) in self._told:
            return False
        self._told.add((day, scope))
        if self.store is None:
            return True
        try:
            row = await self.store.db.query_one(
                "INSERT INTO usage_daily (day, kind, scope, used, last_grant, requests, updated_at) "
                "VALUES (?, 'notice', ?, 1, 0, 0, ?) ON CONFLICT (day, kind, scope) DO NOTHING RETURNING used",
                (day, scope, time.time()))
        except Exception:
            log.exception("usage: could not record a notice")
            return True
        return row is not None

    # --- bookkeeping ---------------------------------------------------------------------------

    def _count(self, kind: str, engine: str, used: float, requests: int) -> None:
        counter = self.counters.setdefault((kind, engine), _Counter())
        counter.amount += used
        counter.requests += requests
        self._changed()

    def _changed(self) -> None:
        for listener in self.listeners:
            try:
                listener()
            except Exception:
                log.exception("usage listener failed")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            try:
                await self.start()
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                coro.close()  # not started when start() failed
                if isinstance(exc, DatabaseError):  # the database is away: one line, not a traceback
                    log.warning("usage: could not count use: %s", exc)
                else:
                    log.exception("usage: could not count use")

        try:
            task = asyncio.get_running_loop().create_task(run(), name="usage-count")
        except RuntimeError:  # no loop (a synchronous caller): nothing can be written
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Cancelled before it ran (the loop closing on a process that was not shut down): nothing to write.
        task.add_done_callback(lambda t: coro.close() if t.cancelled() else None)

    async def flush(self) -> None:
        """Wait until every count in flight is written."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def forget(self, person: str) -> int:
        """Remove ``person``'s usage rows before today (today's stay: they hold today's limit)."""
        if self.store is None:
            return 0
        await self.start()
        await self.release()
        return await self.store.forget(person, keep_day=self.day())

    async def release(self) -> None:
        """Give back what every lease still holds, and wait until it is written (close, tests)."""
        self._sweep(everything=True)
        await self.flush()

    async def aclose(self) -> None:
        await self.release()

    # --- reading, for /usage and the console ------------------------------------------------------

    def days_back(self, n: int) -> list[str]:
        """The last ``n`` days, today first."""
        start = _day_start(self.day())
        return [day_of(start - i * 86400 + 1) for i in range(n)]


Teller = Callable[[OverLimit, Who], Awaitable[None]]
