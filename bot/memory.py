"""Conversation memory: turns keyed by room and speaker, shared by voice, text and SMS.

A *room* is where a conversation happens (``discord:{guild}:{channel}``, ``discord:dm:{user}``,
``sms:{e164}``, ``phone:{e164}`` for calls, ``console``); a *speaker* is a person identity
(``discord:{id}``, ``phone:{e164}``, ``console:{name}``) or the bot itself for assistant turns.
Identities can be linked so that the same person is the same person whether they speak, type, text
or call; :meth:`Memory.forget_person` then erases them under every linked identity in one call.

The voice path never waits on the database (issue 22):

- :meth:`Memory.append` puts the turn on a bounded write-behind queue and returns at once; one
  writer task stores queued turns in batches, and while the database is away it retries with
  backoff. What exceeds the bound (``MEMORY_QUEUE_MAX``) is dropped, counted, logged once per
  interval and shown on the console (:meth:`Memory.queue_state`); nothing below it is lost while the
  process lives, and :meth:`aclose` writes what is queued before the bot stops.
- :meth:`Memory.recent` serves a room's context from an in-memory cache of its latest turns, filled
  from the database at first use (:meth:`warm` starts that early). A fill that takes longer than
  ``read_budget`` answers with what this process holds in memory and finishes in the background.

Durable writes that must be on disk before the caller goes on (an SMS already acknowledged to
Twilio) use :meth:`append_now`. Several processes may append to one room (SMS webhooks landing on
any process); a room's cache then holds this process's own turns on top of what it read at fill.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bot.store import Database, DatabaseClosed, DatabaseError
from bot.store.erase import RETENTION_INTERVAL, ForgetReport, Retention
from bot.store.turns import Modality, Turn, TurnStore, private_rooms

__all__ = ["Memory", "Modality", "RetentionSchedule", "Turn", "private_rooms", "RETENTION_INTERVAL"]

log = logging.getLogger(__name__)

QUEUE_MAX = 10_000  # turns held in memory while the database is away (about 2 MB of text)
BATCH = 200  # turns per write
ROOM_TURNS = 64  # turns cached per room (the context is 20 by default)
ROOMS = 4096  # rooms cached (least recently used leave first)
READ_BUDGET = 0.25  # seconds a cold room's first read may wait for the database
REPORT_INTERVAL = 60.0  # seconds between log lines about a database that is away / dropped turns
FORGOT_MAX = 4096  # (room, speaker) pairs remembered as "nothing new said since they asked to forget"


@dataclass(eq=False)
class _Rec:
    """A turn this process appended; ``id`` is set once it is stored."""

    turn: Turn
    id: int | None = None


class _Room:
    def __init__(self) -> None:
        self.recs: collections.deque[_Rec] = collections.deque(maxlen=ROOM_TURNS)
        self.loading: asyncio.Task[None] | None = None
        self.loaded = False


class Memory:
    """Turns and identity links on the shared :class:`~bot.store.Database`. Open with :meth:`open`."""

    def __init__(self, db: Database, *, queue_max: int = QUEUE_MAX, read_budget: float = READ_BUDGET,
                 retry_max: float = 5.0) -> None:
        self.db = db
        self.turns = TurnStore(db)
        self.queue_max = queue_max
        self.read_budget = read_budget
        self.retry_max = retry_max
        self.written = 0
        self.dropped = 0
        self.failures = 0  # failed write attempts
        self.last_error: str | None = None
        self.away_since: float | None = None  # monotonic time the database stopped taking writes
        self._pending: collections.deque[_Rec] = collections.deque()
        self._rooms: collections.OrderedDict[str, _Room] = collections.OrderedDict()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._write_lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._dropped_reported = 0
        self._last_report = 0.0
        self._failures_checked = 0  # failures whose possibly-committed batch was checked
        # Told of every stored turn with its row id, once it is in the database: bot.recall indexes it.
        self.on_stored: list[Callable[[Turn, int], object]] = []
        # (room, speaker) whose last turn was forgotten on request, until they say something new there:
        # asking twice forgets nothing more (see forget_last). This process's own; a restart starts empty.
        self._forgot: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()

    @classmethod
    async def open(cls, db: Database, **options: Any) -> Memory:
        memory = cls(db, **options)
        await memory.turns.migrate()
        memory.start()
        return memory

    def start(self) -> None:
        """Start the writer (inside the running loop; RuntimeError outside one)."""
        if self._writer is None:
            loop = asyncio.get_running_loop()
            self._writer = loop.create_task(self._write_loop(), name="memory-writer")

    # --- appending ------------------------------------------------------------------------

    def append(self, turn: Turn) -> None:
        """Queue one turn to be stored (never waits). Over the bound it is dropped and counted."""
        if turn.role not in ("user", "assistant"):
            raise ValueError(f"role must be 'user' or 'assistant', got {turn.role!r}")
        self._said(turn)
        rec = _Rec(turn)
        self._cache_add(rec)
        if len(self._pending) >= self.queue_max:
            self.dropped += 1
            self._report()
            return
        self._pending.append(rec)
        self._idle.clear()
        self._wake.set()
        if self._writer is None:
            try:
                self.start()
            except RuntimeError:  # no running loop: stored at the next flush from a loop
                pass

    async def append_now(self, turn: Turn) -> int:
        """Store one turn before returning (durable); returns its id."""
        self._said(turn)
        rec = _Rec(turn)
        rec.id = await self.turns.insert(turn)
        self._cache_add(rec)
        self._tell([rec])
        return rec.id

    def _tell(self, recs: Iterable[_Rec]) -> None:
        """Hand stored turns to the listeners (recall's index); a listener's failure stays its own."""
        for rec in recs:
            for listener in self.on_stored:
                try:
                    listener(rec.turn, rec.id)
                except Exception:
                    log.exception("a stored-turn listener failed")

    def _cache_add(self, rec: _Rec) -> None:
        room = self._rooms.get(rec.turn.room)
        if room is not None:
            room.recs.append(rec)
            self._rooms.move_to_end(rec.turn.room)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued turn is stored; False when ``timeout`` passed first."""
        self.start()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except asyncio.TimeoutError:
            return False
        return True

    @property
    def pending(self) -> int:
        return len(self._pending)

    def queue_state(self) -> dict[str, Any]:
        """For the console and the log: queued, written, dropped, and whether the database is away."""
        return {
            "pending": len(self._pending),
            "bound": self.queue_max,
            "written": self.written,
            "dropped": self.dropped,
            "failures": self.failures,
            "database_away_seconds": (None if self.away_since is None
                                      else round(time.monotonic() - self.away_since, 1)),
            "last_error": self.last_error,
        }

    async def _write_loop(self) -> None:
        delay = 0.1
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            async with self._write_lock:
                batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
                try:
                    ids = await self._store(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # unreachable, restarting, full: keep the turns and retry
                    if _closed_for_good(exc):  # the process is stopping: nothing will ever take these turns
                        log.warning("Memory's database is closed; %d queued turns not stored", len(self._pending))
                        self._idle.set()
                        return
                    self.failures += 1
                    self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    if self.away_since is None:
                        self.away_since = time.monotonic()
                        log.warning("Storing turns failed (%s); %d queued in memory, retrying", self.last_error,
                                    len(self._pending))
                    self._report()
                    failed = True
                else:
                    self._written(batch, ids)
                    failed = False
                    if self.away_since is not None:
                        log.warning("The database takes turns again after %.1f s; %d still queued, %d dropped",
                                    time.monotonic() - self.away_since, len(self._pending), self.dropped)
                        self.away_since = None
                        self.last_error = None
                    delay = 0.1
            if failed:
                await asyncio.sleep(delay)  # backoff while the database is away, not synchronisation
                delay = min(delay * 2, self.retry_max)

    async def _store(self, batch: list[_Rec]) -> list[int]:
        """Insert ``batch`` in one transaction. After a failed attempt the batch may have been committed
        with only the answer lost, so what is already there is found first and not stored twice."""
        if self.away_since is None and self.failures == self._failures_checked:
            return await self.turns.insert_many([r.turn for r in batch])
        there = await self.turns.written([r.turn for r in batch])
        self._failures_checked = self.failures
        rest = [i for i in range(len(batch)) if i not in there]
        new_ids = await self.turns.insert_many([batch[i].turn for i in rest])
        ids = dict(there)
        ids.update(zip(rest, new_ids))
        return [ids[i] for i in range(len(batch))]

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._last_report < REPORT_INTERVAL:
            return
        self._last_report = now
        if self.dropped > self._dropped_reported:
            log.warning("Memory's write queue is full (%d turns): %d turns dropped so far, not stored",
                        self.queue_max, self.dropped)
            self._dropped_reported = self.dropped
        elif self.away_since is not None:
            log.warning("The database is still away (%s): %d turns queued in memory", self.last_error,
                        len(self._pending))

    # --- reading --------------------------------------------------------------------------

    def warm(self, room: str) -> None:
        """Start filling ``room``'s cache now (a voice session starting), without waiting."""
        self._room_loading(room)

    def _room_loading(self, room: str) -> _Room:
        entry = self._rooms.get(room)
        if entry is None:
            entry = self._rooms[room] = _Room()
            while len(self._rooms) > ROOMS:
                self._rooms.popitem(last=False)
        self._rooms.move_to_end(room)
        if not entry.loaded and entry.loading is None:
            entry.loading = asyncio.create_task(self._fill(room, entry), name=f"memory-fill:{room}")
        return entry

    async def _fill(self, room: str, entry: _Room) -> None:
        before = [r for r in self._pending if r.turn.room == room]
        try:
            rows = await self.turns.recent_rows(room, ROOM_TURNS)
        except BaseException:
            entry.loading = None
            if self._rooms.get(room) is entry:
                del self._rooms[room]  # the next read tries again
            raise
        stored = {row_id for row_id, _ in rows}
        fresh = [r for r in [*before, *entry.recs] if r.id is None or r.id not in stored]
        seen: set[int] = set()
        merged = [_Rec(turn, row_id) for row_id, turn in rows]
        for rec in fresh:
            if id(rec) not in seen:
                seen.add(id(rec))
                merged.append(rec)
        entry.recs = collections.deque(merged[-ROOM_TURNS:], maxlen=ROOM_TURNS)
        entry.loaded = True
        entry.loading = None

    async def recent(self, room: str, limit: int) -> list[Turn]:
        """The last ``limit`` turns in ``room``, oldest first (from the cache once filled)."""
        if limit <= 0:
            return []
        if limit > ROOM_TURNS:
            return await self._recent_uncached(room, limit)
        entry = self._room_loading(room)
        task = entry.loading
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=self.read_budget)
            if task in done and task.exception() is not None:
                log.warning("Reading %s's recent turns failed (%s); answering from memory",
                            room.split(":", 1)[0], task.exception())
            elif task not in done:
                log.info("Reading recent turns took over %.0f ms; answering from memory",
                         self.read_budget * 1000)
            if not entry.loaded:
                return self._in_memory(room, entry)[-limit:]
        return [r.turn for r in list(entry.recs)[-limit:]]

    def held(self, room: str) -> list[Turn]:
        """The turns of ``room`` this process holds in memory (its cache, and what is queued), oldest
        first; never touches the database. For state that must not wait (the console, tests)."""
        entry = self._rooms.get(room)
        if entry is not None and entry.loaded:
            return [r.turn for r in entry.recs]
        return self._in_memory(room, entry or _Room())

    def _in_memory(self, room: str, entry: _Room) -> list[Turn]:
        recs = [r for r in self._pending if r.turn.room == room]
        known = {id(r) for r in recs}
        recs += [r for r in entry.recs if id(r) not in known]
        recs.sort(key=lambda r: r.turn.created_at)
        return [r.turn for r in recs]

    async def _recent_uncached(self, room: str, limit: int) -> list[Turn]:
        before = [r for r in self._pending if r.turn.room == room]
        rows = await self.turns.recent_rows(room, limit)
        stored = {row_id for row_id, _ in rows}
        turns = [t for _, t in rows] + [r.turn for r in before if r.id is None or r.id not in stored]
        return turns[-limit:]

    async def since(self, room: str, created_after: float, limit: int) -> list[Turn]:
        """Up to the last ``limit`` turns in ``room`` stored after ``created_after`` (epoch seconds), oldest first."""
        before = [r for r in self._pending if r.turn.room == room and r.turn.created_at >= created_after]
        rows = await self.turns.since(room, created_after, limit)
        queued = [r.turn for r in before if r.id is None]
        return (rows + [t for t in queued if t not in rows])[-limit:]

    async def count(self, room: str | None = None) -> int:
        """How many turns are stored or queued (in ``room``, or everywhere)."""
        await self.flush(timeout=self.read_budget)
        queued = sum(1 for r in self._pending if r.id is None and (room is None or r.turn.room == room))
        return await self.turns.count(room) + queued

    # --- identities -------------------------------------------------------------------------

    async def link_identities(self, a: str, b: str) -> None:
        """Record that ``a`` and ``b`` are the same person (e.g. ``discord:1`` and ``phone:+1555…``).

        Linking is transitive: linking two identities that already belong to different people
        merges those people.
        """
        await self.turns.link(a, b)

    async def unlink_identity(self, identity: str) -> bool:
        """Detach ``identity`` from the person it was linked to; returns whether it was linked."""
        return await self.turns.unlink(identity)

    async def identities_of(self, identity: str) -> set[str]:
        """``identity`` itself plus every identity linked to it."""
        return (await self.turns.linked(identity))[1]

    # ---------------------------------------------------------------------------- forgetting

    async def forget_person(self, identity: str) -> ForgetReport:
        """Erase a person everywhere in the database; returns what was removed, by kind.

        Queued turns are stored first (the writer waits meanwhile), so nothing of theirs is written
        after the erase; every room's cache is emptied and filled again from what is left.
        """
        from bot.privacy import forget_person

        async with self._write_lock:
            await self._drain()
            report = await forget_person(self.db, identity)
            self._rooms.clear()
        return report

    async def _drain(self) -> None:
        """Store every queued turn now (the caller holds the write lock)."""
        while self._pending:
            batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
            self._written(batch, await self._store(batch))
        self._idle.set()

    def _written(self, batch: list[_Rec], ids: list[int]) -> None:
        """``batch``, the head of the queue, is stored with ``ids``: off the queue, and told to listeners."""
        for rec, new_id in zip(batch, ids):
            rec.id = new_id
        for _ in batch:
            self._pending.popleft()
        self.written += len(batch)
        self._tell(batch)

    async def forget_turn(self, room: str, speaker_id: str, text: str, since: float) -> bool:
        """Delete the latest user turn matching exactly (a reply being redone after a crash stores it again)."""
        async with self._write_lock:
            await self._drain()
            removed = await self.turns.delete_latest_user_turn(room, speaker_id, text, since)
            self._rooms.pop(room, None)
        return removed

    def _said(self, turn: Turn) -> None:
        if turn.role == "user" and self._forgot:
            self._forgot.pop((turn.room, turn.speaker_id), None)

    async def forget_last(self, room: str, speaker_id: str) -> list[tuple[int | None, Turn]]:
        """"Forget what I just said": delete ``speaker_id``'s latest turn in ``room`` and the agent's reply
        right after it, whether stored or still queued; returns them, oldest first, with their row ids
        (None: it was still queued and is never written). [] when there is nothing new to forget: they
        said nothing here, or nothing since they last asked.

        The queue is written first (the writer waits meanwhile), so the turn is found wherever it is.
        While the database is away a turn still queued is taken off the queue; one already stored raises
        the database's error (nothing was deleted).
        """
        key = (room, speaker_id)
        async with self._write_lock:
            if key in self._forgot:
                return []
            try:
                await self._drain()
            except Exception:
                gone = self._unqueue_last(room, speaker_id)
                if gone is None:
                    raise
            else:
                gone = [(row_id, turn) for row_id, turn in await self.turns.delete_last_said(room, speaker_id)]
            self._rooms.pop(room, None)
            self._forgot[key] = None
            while len(self._forgot) > FORGOT_MAX:
                self._forgot.popitem(last=False)
        return gone

    def _unqueue_last(self, room: str, speaker_id: str) -> list[tuple[int | None, Turn]] | None:
        """Take ``speaker_id``'s latest turn in ``room`` (and the reply after it) off the write queue;
        None when none of theirs is queued there (it is stored, or there is none)."""
        here = [r for r in self._pending if r.turn.room == room]
        mine = [i for i, r in enumerate(here) if r.turn.speaker_id == speaker_id and r.turn.role == "user"]
        if not mine:
            return None
        recs = [here[mine[-1]]]
        if mine[-1] + 1 < len(here) and here[mine[-1] + 1].turn.role == "assistant":
            recs.append(here[mine[-1] + 1])
        for rec in recs:
            self._pending.remove(rec)
        if not self._pending:
            self._idle.set()
        return [(None, r.turn) for r in recs]

    async def forget_room(self, room: str) -> int:
        """Delete every turn in ``room``; returns the number deleted."""
        async with self._write_lock:
            await self._drain()
            removed = await self.turns.delete_room(room)
            self._rooms.pop(room, None)
        return removed

    async def prune(self, older_than_days: int) -> int:
        """Delete turns older than ``older_than_days`` days (0 or less keeps everything)."""
        if older_than_days <= 0:
            return 0
        async with self.db.transaction() as tx:
            deleted = await self.turns.prune(tx, time.time(), older_than_days)
        if deleted:
            log.info("Pruned %d turns older than %d days", deleted, older_than_days)
            self._drop_older(time.time() - older_than_days * 86400.0)
        return deleted

    def _drop_older(self, cutoff: float) -> None:
        for entry in self._rooms.values():
            entry.recs = collections.deque((r for r in entry.recs if r.turn.created_at >= cutoff), maxlen=ROOM_TURNS)

    def invalidate(self, rooms: Iterable[str] | None = None) -> None:
        """Forget cached turns (of ``rooms``, or all): the next read fills from the database."""
        if rooms is None:
            self._rooms.clear()
        else:
            for room in rooms:
                self._rooms.pop(room, None)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Store what is queued (up to ``timeout`` seconds), then stop the writer."""
        if self._writer is not None and self._pending:
            if not await self.flush(timeout):
                log.warning("Stopping with %d turns not stored (the database is away)", len(self._pending))
        task, self._writer = self._writer, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for entry in self._rooms.values():
            if entry.loading is not None:
                entry.loading.cancel()


def _closed_for_good(exc: BaseException) -> bool:
    """The database was closed by this process (not away: a closed connection to a live server is retried)."""
    return isinstance(exc, DatabaseClosed)


class RetentionSchedule(Retention):
    """Retention over memory's database (prunes transcripts older than ``days`` and SMS bookkeeping)."""

    def __init__(self, memory: Memory, days: int, *, interval: float = RETENTION_INTERVAL) -> None:
        super().__init__(memory.db, days, interval=interval)
        self.memory = memory

    async def prune_now(self) -> int:
        removed = await super().prune_now()
        if removed:
            self.memory._drop_older(time.time() - self.days * 86400.0 if self.days > 0 else 0.0)
        return removed
