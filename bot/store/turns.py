"""Turns, people and their linked identities: the rows behind conversation memory.

A *room* is where a conversation happens (``discord:{guild}:{channel}``, ``discord:dm:{user}``,
``sms:{e164}``, ``phone:{e164}`` for calls, ``console``); a *speaker* is a person identity
(``discord:{id}``, ``phone:{e164}``, ``console:{name}``) or the bot itself for assistant turns.
This module holds the SQL; :mod:`bot.memory` puts a write-behind queue and a per-room cache on top.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bot.store.database import Database, Row
from bot.store.erase import Erasure, ForgetReport, Who, marks, register, register_builtin

__all__ = ["Modality", "Turn", "TurnStore", "private_rooms"]

COMPONENT = "memory"

MIGRATIONS: list[Any] = [
    # 1: turns, people and the identities that belong to them (SQLite: the schema every existing file has)
    {"sqlite": """
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
    """, "postgresql": """
    CREATE TABLE turns (
        id BIGSERIAL PRIMARY KEY,
        room TEXT NOT NULL,
        speaker_id TEXT NOT NULL,
        speaker_name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        text TEXT NOT NULL,
        modality TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        interrupted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX turns_room ON turns (room, id);
    CREATE INDEX turns_speaker ON turns (speaker_id);
    CREATE INDEX turns_created ON turns (created_at);
    CREATE TABLE people (
        id BIGSERIAL PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE identities (
        identity TEXT PRIMARY KEY,
        person_id BIGINT NOT NULL REFERENCES people (id) ON DELETE CASCADE
    );
    CREATE INDEX identities_person ON identities (person_id);
    """},
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


def row_to_turn(row: Row) -> Turn:
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


def turn_params(turn: Turn) -> tuple[Any, ...]:
    if turn.role not in ("user", "assistant"):
        raise ValueError(f"role must be 'user' or 'assistant', got {turn.role!r}")
    return (str(turn.room), str(turn.speaker_id), str(turn.speaker_name), turn.role, str(turn.text),
            Modality(turn.modality).value, float(turn.created_at), int(bool(turn.interrupted)))


_INSERT = ("INSERT INTO turns (room, speaker_id, speaker_name, role, text, modality, created_at, interrupted)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


class TurnStore(Erasure):
    """The SQL of turns and identity links, on the shared :class:`Database`."""

    component = COMPONENT
    order = 10  # gathers linked identities before the SMS links add theirs
    cleans = {
        "turns": "what people said and the agent's replies (speaker id, name, text)",
        "people": "one row per linked person (deleted with their identities)",
        "identities": "the person's Discord id, phone number, console name",
    }
    keeps = {"sqlite_sequence": "SQLite's AUTOINCREMENT counters"}

    def __init__(self, db: Database | None) -> None:
        self.db: Database = db  # type: ignore[assignment]  # None: erasure only (see register_builtin)
        self._migrated = False

    async def migrate(self) -> None:
        await self.db.migrate(COMPONENT, MIGRATIONS)
        register(self.db, self)
        self._migrated = True

    async def ready(self) -> None:
        """Migrate on first use when :meth:`migrate` was not awaited (a store built synchronously)."""
        if not self._migrated:
            await self.migrate()

    # --- turns ----------------------------------------------------------------------------

    async def insert(self, turn: Turn) -> int:
        """Store one turn now; returns its id."""
        await self.ready()
        return int(await self.db.scalar(_INSERT + " RETURNING id", turn_params(turn)))

    async def insert_many(self, turns: Sequence[Turn]) -> list[int]:
        """Store turns in one transaction, in order; returns their ids."""
        await self.ready()
        ids: list[int] = []
        async with self.db.transaction() as tx:
            for turn in turns:
                ids.append(int(await tx.scalar(_INSERT + " RETURNING id", turn_params(turn))))
        return ids

    async def written(self, turns: Sequence[Turn]) -> dict[int, int]:
        """Which of ``turns`` are already stored (index in ``turns`` → id): after a write whose answer was
        lost (the connection cut after COMMIT), so a retry does not store them twice."""
        await self.ready()
        if not turns:
            return {}
        low, high = min(t.created_at for t in turns), max(t.created_at for t in turns)
        rooms = sorted({t.room for t in turns})
        rows = await self.db.query(
            "SELECT id, room, speaker_id, role, text, created_at FROM turns WHERE created_at >= ? AND created_at <= ? "
            f"AND room IN ({marks(rooms)})", (float(low), float(high), *rooms))
        found = {(r["room"], r["speaker_id"], r["role"], r["text"], float(r["created_at"])): int(r["id"]) for r in rows}
        out: dict[int, int] = {}
        for index, t in enumerate(turns):
            key = (t.room, t.speaker_id, t.role, t.text, float(t.created_at))
            if key in found:
                out[index] = found.pop(key)
        return out

    async def recent_rows(self, room: str, limit: int) -> list[tuple[int, Turn]]:
        """The last ``limit`` turns in ``room`` with their ids, oldest first."""
        await self.ready()
        if limit <= 0:
            return []
        rows = await self.db.query("SELECT * FROM turns WHERE room = ? ORDER BY id DESC LIMIT ?", (room, int(limit)))
        return [(int(r["id"]), row_to_turn(r)) for r in reversed(rows)]

    async def since(self, room: str, created_after: float, limit: int) -> list[Turn]:
        await self.ready()
        rows = await self.db.query(
            "SELECT * FROM turns WHERE room = ? AND created_at >= ? ORDER BY id DESC LIMIT ?",
            (room, float(created_after), int(limit)))
        return [row_to_turn(r) for r in reversed(rows)]

    async def count(self, room: str | None = None) -> int:
        await self.ready()
        if room is None:
            return int(await self.db.scalar("SELECT COUNT(*) FROM turns"))
        return int(await self.db.scalar("SELECT COUNT(*) FROM turns WHERE room = ?", (room,)))

    async def delete_latest_user_turn(self, room: str, speaker_id: str, text: str, since: float) -> bool:
        await self.ready()
        return await self.db.execute(
            "DELETE FROM turns WHERE id = (SELECT id FROM turns WHERE room = ? AND speaker_id = ? AND role = 'user' "
            "AND text = ? AND created_at >= ? ORDER BY id DESC LIMIT 1)",
            (room, speaker_id, text, float(since))) > 0

    async def delete_last_said(self, room: str, speaker_id: str) -> list[tuple[int, Turn]]:
        """Delete ``speaker_id``'s latest user turn in ``room`` and the agent's reply right after it (the
        rule :meth:`forget` uses for a reply); returns what was deleted, oldest first ([]: nothing)."""
        await self.ready()
        async with self.db.transaction() as tx:
            said = await tx.query_one("SELECT * FROM turns WHERE room = ? AND speaker_id = ? AND role = 'user' "
                                      "ORDER BY id DESC LIMIT 1", (room, speaker_id))
            if said is None:
                return []
            gone = [(int(said["id"]), row_to_turn(said))]
            after = await tx.query_one("SELECT * FROM turns WHERE room = ? AND id > ? ORDER BY id LIMIT 1",
                                       (room, int(said["id"])))
            if after is not None and after["role"] == "assistant":
                gone.append((int(after["id"]), row_to_turn(after)))
            ids = [i for i, _ in gone]
            await tx.execute(f"DELETE FROM turns WHERE id IN ({marks(ids)})", ids)
        return gone

    async def delete_room(self, room: str) -> int:
        await self.ready()
        return await self.db.execute("DELETE FROM turns WHERE room = ?", (room,))

    # --- identities -------------------------------------------------------------------------

    async def linked(self, identity: str) -> tuple[int | None, set[str]]:
        """The person ``identity`` belongs to (None if unlinked) and all of its identities, in one query."""
        await self.ready()
        rows = await self.db.query(
            "SELECT identity, person_id FROM identities WHERE person_id ="
            " (SELECT person_id FROM identities WHERE identity = ?)", (identity,))
        person = int(rows[0]["person_id"]) if rows else None
        return person, {identity} | {str(r["identity"]) for r in rows}

    async def person_of(self, identity: str) -> int | None:
        await self.ready()
        value = await self.db.scalar("SELECT person_id FROM identities WHERE identity = ?", (identity,))
        return None if value is None else int(value)

    async def link(self, a: str, b: str) -> None:
        """Record that ``a`` and ``b`` are the same person; linking is transitive (people merge)."""
        await self.ready()
        if a == b:
            return
        async with self.db.transaction() as tx:
            pa = await self.person_of(a)
            pb = await self.person_of(b)
            if pa is None and pb is None:
                person = int(await tx.scalar("INSERT INTO people (created_at) VALUES (?) RETURNING id", (time.time(),)))
                await tx.execute("INSERT INTO identities (identity, person_id) VALUES (?, ?), (?, ?)",
                                 (a, person, b, person))
            elif pa is None:
                await tx.execute("INSERT INTO identities (identity, person_id) VALUES (?, ?)", (a, pb))
            elif pb is None:
                await tx.execute("INSERT INTO identities (identity, person_id) VALUES (?, ?)", (b, pa))
            elif pa != pb:
                await tx.execute("UPDATE identities SET person_id = ? WHERE person_id = ?", (pa, pb))
                await tx.execute("DELETE FROM people WHERE id = ?", (pb,))

    async def unlink(self, identity: str) -> bool:
        """Detach ``identity``; a person left with one identity needs no link, so that row goes too."""
        await self.ready()
        async with self.db.transaction() as tx:
            person = await self.person_of(identity)
            if person is None:
                return False
            await tx.execute("DELETE FROM identities WHERE identity = ?", (identity,))
            left = await tx.query("SELECT identity FROM identities WHERE person_id = ?", (person,))
            if len(left) <= 1:
                await tx.execute("DELETE FROM identities WHERE person_id = ?", (person,))
                await tx.execute("DELETE FROM people WHERE id = ?", (person,))
            return True

    # --- erasure ------------------------------------------------------------------------------

    async def gather(self, tx: Database, who: Who) -> None:
        rows = await tx.query("SELECT identity, person_id FROM identities WHERE person_id ="
                              " (SELECT person_id FROM identities WHERE identity = ?)", (who.identity,))
        person = int(rows[0]["person_id"]) if rows else None
        ids = {who.identity} | {str(r["identity"]) for r in rows}
        who.person = person
        who.linked |= ids - {who.identity}
        who.identities |= ids

    async def forget(self, tx: Database, who: Who, report: ForgetReport) -> None:
        ids = sorted(who.identities)
        rooms = sorted({room for i in ids for room in private_rooms(i)})
        # Only rooms they spoke in are scanned (turns_speaker), each reply's predecessor by turns_room.
        report.add("reply", await tx.execute(
            "DELETE FROM turns WHERE id IN (SELECT a.id FROM turns a WHERE a.role = 'assistant' AND a.room IN "
            f"(SELECT DISTINCT room FROM turns WHERE speaker_id IN ({marks(ids)})) AND (SELECT b.speaker_id "
            "FROM turns b WHERE b.room = a.room AND b.id < a.id ORDER BY b.id DESC LIMIT 1) "
            f"IN ({marks(ids)}))", [*ids, *ids]))
        report.add("message", await tx.execute(f"DELETE FROM turns WHERE speaker_id IN ({marks(ids)})", ids))
        if rooms:
            report.add("reply", await tx.execute(f"DELETE FROM turns WHERE room IN ({marks(rooms)})", rooms))
        if who.person is not None:
            for other in who.linked:
                report.add("linked phone" if other.startswith("phone:") else "linked account", 1)
            await tx.execute("DELETE FROM identities WHERE person_id = ?", (who.person,))
            await tx.execute("DELETE FROM people WHERE id = ?", (who.person,))
        report.touched |= {"turns", "people", "identities"}

    async def prune(self, tx: Database, now: float, days: int) -> int:
        if days <= 0:
            return 0
        return await tx.execute("DELETE FROM turns WHERE created_at < ?", (now - days * 86400.0,))


register_builtin(TurnStore(None))  # forget and prune reach turns on a database where memory never opened


from bot.store import registry as _schemas  # noqa: E402  (tools that open a database know this schema)

_schemas.register(COMPONENT, MIGRATIONS)
