"""Conversation memory: turns keyed by room and speaker, shared by voice, text and SMS.

A *room* is where a conversation happens (``discord:{guild}:{channel}``, ``discord:dm:{user}``,
``sms:{e164}``, ``phone:{e164}`` for calls, ``console``); a *speaker* is a person identity
(``discord:{id}``, ``phone:{e164}``, ``console:{name}``) or the bot itself for assistant turns.
Identities can be linked so that the same person is the same person whether they speak, type, text
or call; :meth:`Memory.forget_person` then erases them under every linked identity in one call.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from bot.db import Database

if TYPE_CHECKING:
    from bot.privacy import ForgetReport

__all__ = ["Memory", "Modality", "RetentionSchedule", "Turn", "private_rooms", "RETENTION_INTERVAL"]

log = logging.getLogger(__name__)

RETENTION_INTERVAL = 3600.0  # a running bot prunes old transcripts hourly, not only at start

_MIGRATIONS: list[str] = [
    # 1: turns, people and the identities that belong to them
    """
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        room TEXT NOT NULL,
        speaker_id TEXT NOT NULL,
        speaker_name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        text TEXT NOT NULL,
        modality TEXT NOT NULL,
        created_at REAL NOT NULL,
        interrupted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX turns_room ON turns (room, id);
    CREATE INDEX turns_speaker ON turns (speaker_id);
    CREATE INDEX turns_created ON turns (created_at);
    CREATE TABLE people (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL
    );
    CREATE TABLE identities (
        identity TEXT PRIMARY KEY,
        person_id INTEGER NOT NULL REFERENCES people (id) ON DELETE CASCADE
    );
    CREATE INDEX identities_person ON identities (person_id);
    """,
]


class Modality(StrEnum):
    """How a turn reached us (or left us)."""

    TEXT = "text"
    VOICE = "voice"
    SMS = "sms"
    CALL = "call"  # a phone call (Twilio Media Streams)


@dataclass(frozen=True)
class Turn:
    """One thing said in a room, by a person (``role="user"``) or the agent (``"assistant"``)."""

    room: str
    speaker_id: str
    speaker_name: str
    role: str
    text: str
    modality: Modality
    created_at: float
    interrupted: bool = False


def private_rooms(identity: str) -> set[str]:
    """The rooms that belong to one identity alone: its Discord DM, SMS thread or the console."""
    kind, _, rest = identity.partition(":")
    if not rest:
        return set()
    if kind == "discord" and rest.isdigit():
        return {f"discord:dm:{rest}"}
    if kind == "phone":
        return {f"sms:{rest}", f"phone:{rest}"}  # their texts and their calls
    if kind == "console":
        return {"console"}
    return set()


def _row_to_turn(row: sqlite3.Row) -> Turn:
    return Turn(
        room=row["room"],
        speaker_id=row["speaker_id"],
        speaker_name=row["speaker_name"],
        role=row["role"],
        text=row["text"],
        modality=Modality(row["modality"]),
        created_at=float(row["created_at"]),
        interrupted=bool(row["interrupted"]),
    )


class Memory:
    """Turns and identity links, stored in the shared :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("memory", _MIGRATIONS)
        # Told of every stored turn with its row id: bot.recall indexes it (Recall.on_stored).
        self.on_stored: list[Callable[[Turn, int], object]] = []

    def append(self, turn: Turn) -> int:
        """Store one turn; returns its row id."""
        if turn.role not in ("user", "assistant"):
            raise ValueError(f"role must be 'user' or 'assistant', got {turn.role!r}")
        cur = self.db.execute(
            "INSERT INTO turns (room, speaker_id, speaker_name, role, text, modality, created_at, interrupted)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                turn.room,
                turn.speaker_id,
                turn.speaker_name,
                turn.role,
                turn.text,
                Modality(turn.modality).value,
                turn.created_at,
                int(turn.interrupted),
            ),
        )
        row_id = int(cur.lastrowid or 0)
        for listener in self.on_stored:
            listener(turn, row_id)
        return row_id

    def recent(self, room: str, limit: int) -> list[Turn]:
        """The last ``limit`` turns in ``room``, oldest first."""
        if limit <= 0:
            return []
        rows = self.db.query(
            "SELECT * FROM turns WHERE room = ? ORDER BY id DESC LIMIT ?",
            (room, limit),
        )
        return [_row_to_turn(r) for r in reversed(rows)]

    def since(self, room: str, created_after: float, limit: int) -> list[Turn]:
        """Up to the last ``limit`` turns in ``room`` stored after ``created_after`` (epoch seconds), oldest first."""
        rows = self.db.query(
            "SELECT * FROM turns WHERE room = ? AND created_at >= ? ORDER BY id DESC LIMIT ?",
            (room, created_after, limit),
        )
        return [_row_to_turn(r) for r in reversed(rows)]

    def count(self, room: str | None = None) -> int:
        """How many turns are stored (in ``room``, or everywhere)."""
        if room is None:
            rows = self.db.query("SELECT COUNT(*) AS n FROM turns")
        else:
            rows = self.db.query("SELECT COUNT(*) AS n FROM turns WHERE room = ?", (room,))
        return int(rows[0]["n"])

    # ----------------------------------------------------------------------------- identities

    def link_identities(self, a: str, b: str) -> None:
        """Record that ``a`` and ``b`` are the same person (e.g. ``discord:1`` and ``phone:+1555…``).

        Linking is transitive: linking two identities that already belong to different people
        merges those people.
        """
        if a == b:
            return
        with self.db.transaction() as db:
            pa = self._person_of(a)
            pb = self._person_of(b)
            if pa is None and pb is None:
                cur = db.execute("INSERT INTO people (created_at) VALUES (?)", (time.time(),))
                person = int(cur.lastrowid or 0)
                db.execute("INSERT INTO identities (identity, person_id) VALUES (?, ?), (?, ?)", (a, person, b, person))
            elif pa is None:
                db.execute("INSERT INTO identities (identity, person_id) VALUES (?, ?)", (a, pb))
            elif pb is None:
                db.execute("INSERT INTO identities (identity, person_id) VALUES (?, ?)", (b, pa))
            elif pa != pb:
                db.execute("UPDATE identities SET person_id = ? WHERE person_id = ?", (pa, pb))
                db.execute("DELETE FROM people WHERE id = ?", (pb,))

    def unlink_identity(self, identity: str) -> bool:
        """Detach ``identity`` from the person it was linked to; returns whether it was linked.

        A person left with a single identity needs no link any more, so that row goes too.
        """
        with self.db.transaction() as db:
            person = self._person_of(identity)
            if person is None:
                return False
            db.execute("DELETE FROM identities WHERE identity = ?", (identity,))
            left = db.query("SELECT identity FROM identities WHERE person_id = ?", (person,))
            if len(left) <= 1:
                db.execute("DELETE FROM identities WHERE person_id = ?", (person,))
                db.execute("DELETE FROM people WHERE id = ?", (person,))
            return True

    def identities_of(self, identity: str) -> set[str]:
        """``identity`` itself plus every identity linked to it."""
        return self._linked(identity)[1]

    def _linked(self, identity: str) -> tuple[int | None, set[str]]:
        """The person ``identity`` belongs to (None if unlinked) and all of its identities, in one query."""
        rows = self.db.query(
            "SELECT identity, person_id FROM identities WHERE person_id ="
            " (SELECT person_id FROM identities WHERE identity = ?)",
            (identity,),
        )
        person = int(rows[0]["person_id"]) if rows else None
        return person, {identity} | {r["identity"] for r in rows}

    def _person_of(self, identity: str) -> int | None:
        rows = self.db.query("SELECT person_id FROM identities WHERE identity = ?", (identity,))
        return int(rows[0]["person_id"]) if rows else None

    # ---------------------------------------------------------------------------- forgetting

    def forget_person(self, identity: str) -> ForgetReport:
        """Erase a person everywhere in the database; returns what was removed, by kind.

        Deletes every turn they spoke under any linked identity, the agent's reply right after
        each of them in shared rooms, every turn in their private rooms (their Discord DM, SMS
        thread, the console), the identity links, and their rows in the SMS store; then scrubs
        the WAL so none of it stays on disk. See :func:`bot.privacy.forget_person`.
        """
        from bot.privacy import forget_person

        return forget_person(self.db, identity)

    def forget_turn(self, room: str, speaker_id: str, text: str, since: float) -> bool:
        """Delete the latest user turn matching exactly (a reply being redone after a crash stores it again)."""
        cur = self.db.execute(
            "DELETE FROM turns WHERE id = (SELECT id FROM turns WHERE room = ? AND speaker_id = ? AND role = 'user' "
            "AND text = ? AND created_at >= ? ORDER BY id DESC LIMIT 1)",
            (room, speaker_id, text, since),
        )
        return cur.rowcount > 0

    def forget_room(self, room: str) -> int:
        """Delete every turn in ``room``; returns the number deleted."""
        return self.db.execute("DELETE FROM turns WHERE room = ?", (room,)).rowcount

    def prune(self, older_than_days: int) -> int:
        """Delete turns older than ``older_than_days`` days (0 or less keeps everything)."""
        if older_than_days <= 0:
            return 0
        cutoff = time.time() - older_than_days * 86400.0
        deleted = self.db.execute("DELETE FROM turns WHERE created_at < ?", (cutoff,)).rowcount
        if deleted:
            log.info("Pruned %d turns older than %d days", deleted, older_than_days)
        return deleted


class RetentionSchedule:
    """Deletes transcripts older than ``days`` now and every ``interval`` seconds while the bot runs.

    Also drops SMS bookkeeping past its use (it holds phone numbers) when the SMS tables exist, and
    scrubs the WAL after a prune that deleted something, so expired words leave the disk too.
    Owns one named task; :meth:`aclose` cancels it.
    """

    def __init__(self, memory: Memory, days: int, *, interval: float = RETENTION_INTERVAL) -> None:
        self.memory = memory
        self.days = days
        self.interval = interval
        self.runs = 0  # completed prunes (tests wait on it)
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"RetentionSchedule(days={self.days}, interval={self.interval}, running={self._task is not None})"

    def prune_now(self) -> int:
        """One prune; returns the transcript turns deleted."""
        removed = self.memory.prune(self.days)
        bookkeeping = 0
        if "sms_messages" in self.memory.db.tables():
            from bot.sms.store import SmsStore

            bookkeeping = SmsStore(self.memory.db).prune()
        if removed or bookkeeping:
            self.memory.db.scrub()
        self.runs += 1
        return removed

    def start(self) -> None:
        """Prune now, then on schedule (call inside the running loop; ``days`` 0 keeps everything)."""
        if self.days <= 0 or self._task is not None:
            return
        self.prune_now()
        self._task = asyncio.create_task(self._run(), name="transcript-retention")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)  # the schedule itself, not synchronisation
            try:
                self.prune_now()
            except Exception:  # a locked or damaged database must not end the schedule
                log.exception("Pruning old transcripts failed; retrying in %.0f s", self.interval)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
