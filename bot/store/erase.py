"""The cross-cutting erase: forgetting a person everywhere, and retention's prune, store by store.

Every store that keeps rows declares them as an :class:`Erasure`: the tables it cleans on a forget
(``cleans``, each with what in it names a person), the tables that name no one (``keeps``, with
why), and its own ``gather``/``forget``/``prune``. A store registers itself on the database it
opens (:func:`register`); :func:`forget_person` and :func:`prune` then ask every store registered on
that database to erase its own rows, inside one transaction, and scrub the tables touched. No store
writes SQL against another store's tables.

Retention's hourly prune runs once per cluster: on PostgreSQL under an advisory lock (the first
process to take it prunes, the others skip that round); SQLite has one process per file.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bot.store.database import Database

__all__ = ["Erasure", "ForgetReport", "Retention", "Who", "classified", "declare_tables", "erasures", "forget_person", "marks",
           "prune", "register", "RETENTION_INTERVAL"]

log = logging.getLogger(__name__)

RETENTION_INTERVAL = 3600.0  # a running bot prunes old transcripts hourly, not only at start

_ALWAYS_KEPT = {
    "schema_versions": "schema version per component",
    "voicebot_copy_incomplete": "marks the target of an unfinished db copy: the source's name (no password), a time",
}
# Tables that stores outside bot/store declare (their own forget runs through their own code).
_DECLARED_CLEANS: dict[str, str] = {}
_DECLARED_KEEPS: dict[str, str] = {}


def declare_tables(*, cleans: dict[str, str] | None = None, keeps: dict[str, str] | None = None) -> None:
    """Classify a component's tables: those forget cleans (and how), those that name no one (and why)."""
    _DECLARED_CLEANS.update(cleans or {})
    _DECLARED_KEEPS.update(keeps or {})

# How each kind is named to the person, singular and plural.
_LABELS: dict[str, tuple[str, str]] = {
    "message": ("message", "messages"),
    "reply": ("reply to you", "replies to you"),
    "linked phone": ("linked phone", "linked phones"),
    "linked account": ("linked account", "linked accounts"),
    "sms record": ("SMS record", "SMS records"),
    "link code": ("pending link code", "pending link codes"),
    "bookkeeping": ("bookkeeping record", "bookkeeping records"),
}


def marks(values: Iterable[object]) -> str:
    return ",".join("?" * len(list(values)))


@dataclass
class ForgetReport:
    """What a forget removed, by kind (never one summed number: a link is not a message)."""

    counts: dict[str, int] = field(default_factory=dict)
    scrubbed: bool = True  # SQLite: the WAL was checkpointed and truncated; PostgreSQL: the tables vacuumed
    touched: set[str] = field(default_factory=set)  # tables the forget deleted from (scrubbed after)

    def add(self, kind: str, n: int) -> None:
        if n > 0:
            self.counts[kind] = self.counts.get(kind, 0) + n

    def __getitem__(self, kind: str) -> int:
        return self.counts.get(kind, 0)

    @property
    def empty(self) -> bool:
        return not self.counts

    def describe(self) -> str:
        """``"3 messages, 1 linked phone"`` (``"nothing"`` when empty)."""
        parts = []
        for kind, (one, many) in _LABELS.items():
            n = self.counts.get(kind, 0)
            if n:
                parts.append(f"{n} {one if n == 1 else many}")
        return ", ".join(parts) or "nothing"


@dataclass
class Who:
    """The person being forgotten: the identity asked about and everything linked to it."""

    identity: str
    identities: set[str] = field(default_factory=set)
    linked: set[str] = field(default_factory=set)  # identities other than ``identity`` linked in memory
    person: int | None = None  # the people row that links them
    scrub_extra: set[str] = field(default_factory=set)  # tables changed while gathering

    def __post_init__(self) -> None:
        self.identities.add(self.identity)

    @property
    def numbers(self) -> list[str]:
        return sorted(i.partition(":")[2] for i in self.identities if i.startswith("phone:"))

    @property
    def discord_ids(self) -> list[int]:
        return sorted(int(i.partition(":")[2]) for i in self.identities
                      if i.startswith("discord:") and i.partition(":")[2].isdigit())


class Erasure:
    """A store's part in forget and retention. ``component`` names it (one per component per database)."""

    component: str = ""
    cleans: dict[str, str] = {}
    keeps: dict[str, str] = {}
    order: int = 50  # gather/forget order; lower first

    async def gather(self, tx: Database, who: Who) -> None:
        """Add identities this store links to ``who`` (before anything is deleted)."""

    async def forget(self, tx: Database, who: Who, report: ForgetReport) -> None:
        """Delete every row of this store that names ``who``; add the tables touched to the report."""

    async def forgotten(self, who: Who) -> None:
        """After the forget committed: drop what this store caches about ``who``."""

    async def prune(self, tx: Database, now: float, days: int) -> int:
        """Delete rows past their use (``days``: TRANSCRIPT_RETENTION_DAYS); returns rows deleted."""
        return 0


_registry: weakref.WeakKeyDictionary[Database, dict[str, Erasure]] = weakref.WeakKeyDictionary()
_builtin: list[Erasure] = []


def register(db: Database, erasure: Erasure) -> None:
    """``erasure`` takes part in every forget and prune on ``db`` (the latest one per component)."""
    _registry.setdefault(db, {})[erasure.component] = erasure


def register_builtin(erasure: Erasure) -> None:
    """An erasure used on every database where no store registered its component (present tables only)."""
    _builtin.append(erasure)


async def erasures(db: Database) -> list[Erasure]:
    from bot.store import languages, turns  # noqa: F401  (their built-in erasures)

    mine = dict(_registry.get(db, {}))
    tables = await db.tables()
    for erasure in _builtin:
        if erasure.component not in mine and set(erasure.cleans) & tables:
            mine[erasure.component] = erasure
    return sorted(mine.values(), key=lambda e: (e.order, e.component))


def classified() -> tuple[dict[str, str], dict[str, str]]:
    """Every table any known store declares: (cleaned by forget, names no one)."""
    from bot.store import guilds, languages, optouts, turns  # noqa: F401  (each declares its tables)

    cleans: dict[str, str] = dict(_DECLARED_CLEANS)
    keeps: dict[str, str] = {**_ALWAYS_KEPT, **_DECLARED_KEEPS}
    for kind in [*Erasure.__subclasses__(), *(type(e) for e in _builtin)]:
        cleans.update(kind.cleans)
        keeps.update(kind.keeps)
    return cleans, keeps


async def forget_person(db: Database, identity: str) -> ForgetReport:
    """Delete every row naming the person ``identity`` belongs to (all linked identities), then scrub.

    Turns: everything they said; the agent's reply right after each of their turns in a shared
    room; everything in their private rooms (DM, SMS thread, console). SMS: their numbers'
    bookkeeping, links and codes. Languages: their rows. Opt-outs stay (keyed subjects).
    """
    report = ForgetReport()
    who = Who(identity)
    stores = await erasures(db)
    async with db.transaction() as tx:
        for store in stores:
            await store.gather(tx, who)
        for store in stores:
            await store.forget(tx, who, report)
    for store in stores:
        try:
            await store.forgotten(who)
        except Exception:
            log.exception("dropping %s's cached rows after a forget failed", store.component)
    report.touched |= who.scrub_extra
    report.scrubbed = await db.scrub(sorted(report.touched))
    log.info("Forgot a person: %d identities; removed %s", len(who.identities), report.describe())
    return report


async def prune(db: Database, days: int, *, now: float | None = None) -> int:
    """One retention pass over every store on ``db``; returns rows deleted (scrubbed when any)."""
    now = time.time() if now is None else now
    removed = 0
    touched: set[str] = set()
    for store in await erasures(db):
        async with db.transaction() as tx:
            n = await store.prune(tx, now, days)
        if n:
            removed += n
            touched |= set(store.cleans)
            log.info("Pruned %d %s rows past their use", n, store.component)
    if removed:
        await db.scrub(sorted(touched & await db.tables()))
    return removed


class Retention:
    """Prunes now and every ``interval`` seconds while the bot runs, once per cluster.

    On PostgreSQL each round takes an advisory lock without waiting: another process holding it is
    pruning this round already. Owns one named task; :meth:`aclose` cancels it.
    """

    LOCK_KEY = zlib.crc32(b"voicebot-retention")

    def __init__(self, db: Database, days: int, *, interval: float = RETENTION_INTERVAL) -> None:
        self.db = db
        self.days = days
        self.interval = interval
        self.runs = 0  # completed rounds (tests wait on it)
        self.skipped = 0  # rounds another process ran
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Retention(days={self.days}, interval={self.interval}, running={self._task is not None})"

    async def prune_now(self) -> int:
        """One round; returns rows deleted (0 when another process of the cluster holds the round)."""
        async with _cluster_once(self.db, self.LOCK_KEY) as mine:
            if not mine:
                self.skipped += 1
                return 0
            removed = await prune(self.db, self.days)
        self.runs += 1
        return removed

    async def start(self) -> None:
        """Prune now, then on schedule (call inside the running loop; ``days`` 0 keeps everything)."""
        if self.days <= 0 or self._task is not None:
            return
        try:
            await self.prune_now()
        except Exception as exc:  # an unreachable database must not stop the bot starting
            log.warning("Pruning at start failed (%s); retrying in %.0f s", exc, self.interval)
        self._task = asyncio.create_task(self._run(), name="transcript-retention")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)  # the schedule itself, not synchronisation
            try:
                await self.prune_now()
            except Exception:  # a locked, damaged or unreachable database must not end the schedule
                log.exception("Pruning failed; retrying in %.0f s", self.interval)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class _cluster_once:
    """``async with _cluster_once(db, key) as mine``: PostgreSQL's try-advisory-lock; SQLite: always mine."""

    def __init__(self, db: Database, key: int) -> None:
        self.db, self.key = db, key
        self._conn: Any = None

    async def __aenter__(self) -> bool:
        pool = getattr(self.db, "_pool", None)
        if self.db.dialect != "postgresql" or pool is None:
            return True
        self._conn = await pool.acquire()
        got = bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key))
        if not got:
            await pool.release(self._conn)
            self._conn = None
        return got

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.execute("SELECT pg_advisory_unlock($1)", self.key)
            finally:
                await self.db._pool.release(conn)  # type: ignore[attr-defined]


class _SmsTables(Erasure):
    """SMS bookkeeping until the SMS store declares its own erasure (component ``sms``)."""

    component = "sms"
    order = 20
    cleans = {
        "sms_messages": "SMS bookkeeping: the sender's number, the text while it is being answered",
        "sms_links": "a phone number linked to a Discord id and display name",
        "sms_link_codes": "a pending /link code with the Discord id and display name",
        "sms_rate_notes": "when a number was last told it is over the rate limit",
        "sms_opt_outs": "legacy raw SMS opt-outs (moved to opt_outs as keyed subjects at start, then dropped)",
    }

    async def gather(self, tx: Database, who: Who) -> None:
        if "sms_links" in await tx.tables():
            # A phone linked in the SMS store whose memory link is already gone still names them.
            ids = sorted(who.identities)
            rows = await tx.query(f"SELECT number FROM sms_links WHERE identity IN ({marks(ids)})", ids)
            who.identities |= {f"phone:{r[0]}" for r in rows}

    async def forget(self, tx: Database, who: Who, report: ForgetReport) -> None:
        tables = await tx.tables()
        ids, numbers = sorted(who.identities), who.numbers
        if numbers:
            if "sms_messages" in tables:
                report.add("sms record", await tx.execute(
                    f"DELETE FROM sms_messages WHERE from_number IN ({marks(numbers)})", numbers))
            if "sms_rate_notes" in tables:
                report.add("bookkeeping", await tx.execute(
                    f"DELETE FROM sms_rate_notes WHERE number IN ({marks(numbers)})", numbers))
        if "sms_links" in tables:
            removed = await tx.execute(f"DELETE FROM sms_links WHERE identity IN ({marks(ids)}) OR "
                                       f"number IN ({marks(numbers)})", [*ids, *numbers])
            if removed and not (report["linked phone"] or report["linked account"]):
                report.add("linked phone", removed)
        if "sms_link_codes" in tables:
            report.add("link code", await tx.execute(
                f"DELETE FROM sms_link_codes WHERE identity IN ({marks(ids)})", ids))
        report.touched |= set(self.cleans) & tables

    async def prune(self, tx: Database, now: float, days: int) -> int:
        tables = await tx.tables()
        removed = 0
        unfinished = ("received", "accepted", "replying", "sending")
        if "sms_messages" in tables:
            removed += await tx.execute(
                f"DELETE FROM sms_messages WHERE received_at < ? AND state NOT IN ({marks(unfinished)})",
                (now - 7 * 86400.0, *unfinished))
        if "sms_rate_notes" in tables:
            removed += await tx.execute("DELETE FROM sms_rate_notes WHERE noted_at < ?", (now - 600.0,))
        if "sms_link_codes" in tables:
            removed += await tx.execute("DELETE FROM sms_link_codes WHERE expires_at < ?", (now,))
        return removed


register_builtin(_SmsTables())
