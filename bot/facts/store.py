"""The rows behind facts and summaries, on the async store (SQLite or PostgreSQL), portable SQL.

Tables (component ``facts``):

- ``facts``: one short sentence about one person (``person`` is the identity it is about, e.g.
  ``discord:42``), the room its source turns were said in (its audience, see :func:`readable`), a
  normalised form for merging duplicates and an optional topic ``key`` a newer fact on the same topic
  replaces; ``fact_sources`` the turn ids it was drawn from.
- ``summaries``: a dated summary of one voice session (or a scribe's notes), with the session's room as
  its audience; ``summary_people`` who spoke in it (forget drops every summary that names them).
- ``facts_rooms``: how far extraction has read each room (the last turn id), so nothing is read twice
  and a restart picks up where the last run stopped; and a lease, so two processes (an SMS webhook can
  land on any of them) never pay to read the same room at once.
- ``facts_spend``: tokens spent on extraction and summaries per clock hour (the hourly budget, shared by
  every process on the database).
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.store.database import Database, Row

__all__ = ["COMPONENT", "Fact", "FactStore", "Summary", "normalise", "readable"]

COMPONENT = "facts"

_ID = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}
_REF = {"sqlite": "INTEGER", "postgresql": "BIGINT"}


def _schema(dialect: str) -> str:
    return f"""
    CREATE TABLE facts (
        id {_ID[dialect]},
        person TEXT NOT NULL,
        person_name TEXT NOT NULL,
        text TEXT NOT NULL,
        norm TEXT NOT NULL,
        topic TEXT NOT NULL DEFAULT '',
        room TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX facts_person ON facts (person, updated_at);
    CREATE INDEX facts_room ON facts (room);
    CREATE TABLE fact_sources (
        fact_id {_REF[dialect]} NOT NULL REFERENCES facts (id) ON DELETE CASCADE,
        turn_id {_REF[dialect]} NOT NULL,
        PRIMARY KEY (fact_id, turn_id)
    );
    CREATE INDEX fact_sources_turn ON fact_sources (turn_id);
    CREATE TABLE summaries (
        id {_ID[dialect]},
        room TEXT NOT NULL,
        kind TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION NOT NULL,
        text TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX summaries_room ON summaries (room, started_at);
    CREATE TABLE summary_people (
        summary_id {_REF[dialect]} NOT NULL REFERENCES summaries (id) ON DELETE CASCADE,
        identity TEXT NOT NULL,
        PRIMARY KEY (summary_id, identity)
    );
    CREATE INDEX summary_people_identity ON summary_people (identity);
    CREATE TABLE facts_rooms (
        room TEXT PRIMARY KEY,
        last_turn_id {_REF[dialect]} NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        lease_owner TEXT NOT NULL DEFAULT '',
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE TABLE facts_spend (
        hour {_REF[dialect]} PRIMARY KEY,
        tokens {_REF[dialect]} NOT NULL,
        calls INTEGER NOT NULL
    )
    """


MIGRATIONS = [{"sqlite": _schema("sqlite"), "postgresql": _schema("postgresql")}]

def readable(room: str, identities: Iterable[str], place: str, visible: Iterable[str] | None = None) -> bool:
    """Whether something said in ``room`` may be brought up at ``place`` to the person ``identities``:
    the recall index's audience rule (:func:`bot.recall.audience.scope_for`), so a fact obeys exactly
    what its source turns obey."""
    from bot.recall.audience import scope_for

    return room in scope_for(identities, place, visible).rooms


_WORDS = re.compile(r"[^\w]+", re.UNICODE)


def normalise(text: str) -> str:
    """A fact's comparison form: case-folded words without punctuation or accents' variants."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(w for w in _WORDS.split(text) if w)


@dataclass(frozen=True)
class Fact:
    id: int
    person: str
    person_name: str
    text: str
    topic: str
    room: str
    created_at: float
    updated_at: float
    sources: tuple[int, ...] = ()


@dataclass(frozen=True)
class Summary:
    id: int
    room: str
    kind: str  # "voice" (a voice session) or "notes" (a scribe's posted notes)
    started_at: float
    ended_at: float
    text: str
    people: tuple[str, ...] = ()


def _fact(row: Row, sources: Sequence[int] = ()) -> Fact:
    return Fact(id=int(row["id"]), person=str(row["person"]), person_name=str(row["person_name"]),
                text=str(row["text"]), topic=str(row["topic"]), room=str(row["room"]),
                created_at=float(row["created_at"]), updated_at=float(row["updated_at"]), sources=tuple(sources))


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


class FactStore:
    """Facts, summaries, cursors and the hourly spend, on one :class:`~bot.store.Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def migrate(self) -> None:
        await self.db.migrate(COMPONENT, MIGRATIONS)

    # ------------------------------------------------------------------------------ facts

    async def facts_of(self, people: Iterable[str], *, limit: int = 1000) -> list[Fact]:
        """Every fact about ``people`` (identities), newest first, with their source turn ids."""
        ids = sorted(set(people))
        if not ids:
            return []
        rows = await self.db.query(
            f"SELECT * FROM facts WHERE person IN ({_marks(ids)}) ORDER BY updated_at DESC, id DESC LIMIT ?",
            [*ids, int(limit)])
        if not rows:
            return []
        fact_ids = [int(r["id"]) for r in rows]
        sources: dict[int, list[int]] = {}
        for s in await self.db.query(
                f"SELECT fact_id, turn_id FROM fact_sources WHERE fact_id IN ({_marks(fact_ids)}) "
                "ORDER BY turn_id", fact_ids):
            sources.setdefault(int(s["fact_id"]), []).append(int(s["turn_id"]))
        return [_fact(r, sources.get(int(r["id"]), ())) for r in rows]

    async def add_fact(self, *, person: str, person_name: str, text: str, topic: str, room: str,
                       sources: Sequence[int], now: float, replaces: Sequence[int] = (),
                       per_person: int) -> tuple[int, bool, list[int]]:
        """Store one fact, merging it into a duplicate and dropping what it replaces or what overflows.

        Returns (the fact's id, whether it was new, the ids removed). A duplicate is the same person,
        the same audience (room) and the same normalised words; it gains the new sources and is
        dated now. ``replaces`` (facts about the same person the extractor says it contradicts) and
        older facts on the same ``topic`` are deleted. Past ``per_person`` the least recently
        confirmed facts go.
        """
        norm = normalise(text)
        removed: list[int] = []
        async with self.db.transaction() as tx:
            dup = await tx.query_one("SELECT id FROM facts WHERE person = ? AND room = ? AND norm = ?",
                                     (person, room, norm))
            if dup is not None:
                fact_id, new = int(dup["id"]), False
                await tx.execute("UPDATE facts SET updated_at = ?, person_name = ? WHERE id = ?",
                                 (float(now), person_name, fact_id))
            else:
                row = await tx.query_one(
                    "INSERT INTO facts (person, person_name, text, norm, topic, room, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (person, person_name, text, norm, topic, room, float(now), float(now)))
                assert row is not None
                fact_id, new = int(row["id"]), True
            for turn_id in sorted(set(sources)):
                await tx.execute("INSERT INTO fact_sources (fact_id, turn_id) VALUES (?, ?) "
                                 "ON CONFLICT (fact_id, turn_id) DO NOTHING", (fact_id, int(turn_id)))
            stale = {int(r) for r in replaces if int(r) != fact_id}
            if topic:
                stale |= {int(r["id"]) for r in await tx.query(
                    "SELECT id FROM facts WHERE person = ? AND topic = ? AND id <> ?", (person, topic, fact_id))}
            if stale:
                ids = sorted(stale)
                gone = await tx.query(
                    f"DELETE FROM facts WHERE person = ? AND id IN ({_marks(ids)}) RETURNING id", [person, *ids])
                removed += [int(r["id"]) for r in gone]
            count = int(await tx.scalar("SELECT COUNT(*) FROM facts WHERE person = ?", (person,)) or 0)
            if count > per_person:
                over = await tx.query(
                    "SELECT id FROM facts WHERE person = ? AND id <> ? ORDER BY updated_at ASC, id ASC LIMIT ?",
                    (person, fact_id, count - per_person))
                ids = [int(r["id"]) for r in over]
                if ids:
                    await tx.execute(f"DELETE FROM facts WHERE id IN ({_marks(ids)})", ids)
                    removed += ids
        return fact_id, new, removed

    async def remove_fact(self, people: Iterable[str], fact_id: int) -> bool:
        """Delete one fact if it is about one of ``people``."""
        ids = sorted(set(people))
        if not ids:
            return False
        return await self.db.execute(f"DELETE FROM facts WHERE id = ? AND person IN ({_marks(ids)})",
                                     [int(fact_id), *ids]) > 0

    async def count_facts(self) -> int:
        return int(await self.db.scalar("SELECT COUNT(*) FROM facts") or 0)

    # ------------------------------------------------------------------------------ summaries

    async def add_summary(self, *, room: str, kind: str, started_at: float, ended_at: float, text: str,
                          people: Iterable[str], now: float) -> int:
        async with self.db.transaction() as tx:
            row = await tx.query_one(
                "INSERT INTO summaries (room, kind, started_at, ended_at, text, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (room, kind, float(started_at), float(ended_at), text, float(now)))
            assert row is not None
            summary_id = int(row["id"])
            for identity in sorted(set(people)):
                await tx.execute("INSERT INTO summary_people (summary_id, identity) VALUES (?, ?)",
                                 (summary_id, identity))
        return summary_id

    async def summaries_with(self, people: Iterable[str], *, limit: int = 50) -> list[Summary]:
        """The summaries that name one of ``people``, newest first."""
        ids = sorted(set(people))
        if not ids:
            return []
        rows = await self.db.query(
            f"SELECT DISTINCT s.* FROM summaries s JOIN summary_people p ON p.summary_id = s.id "
            f"WHERE p.identity IN ({_marks(ids)}) ORDER BY s.started_at DESC LIMIT ?", [*ids, int(limit)])
        return [await self._summary(r) for r in rows]

    async def summaries_in(self, room: str) -> list[Summary]:
        rows = await self.db.query("SELECT * FROM summaries WHERE room = ? ORDER BY started_at", (room,))
        return [await self._summary(r) for r in rows]

    async def _summary(self, row: Row) -> Summary:
        people = await self.db.query("SELECT identity FROM summary_people WHERE summary_id = ? ORDER BY identity",
                                     (int(row["id"]),))
        return Summary(id=int(row["id"]), room=str(row["room"]), kind=str(row["kind"]),
                       started_at=float(row["started_at"]), ended_at=float(row["ended_at"]),
                       text=str(row["text"]), people=tuple(str(p[0]) for p in people))

    # ------------------------------------------------------------------------------ forgetting

    async def forget(self, people: Iterable[str], private_rooms: Iterable[str]) -> dict[str, int]:
        """Delete every fact about ``people``, every summary naming them or said in their private rooms,
        and the read cursors of their private rooms. Returns counts by kind ("fact", "summary")."""
        ids = sorted(set(people))
        rooms = sorted(set(private_rooms))
        out = {"fact": 0, "summary": 0}
        if not ids:
            return out
        async with self.db.transaction() as tx:
            fact_rows = await tx.query(f"DELETE FROM facts WHERE person IN ({_marks(ids)}) RETURNING id", ids)
            out["fact"] = len(fact_rows)
            if rooms:
                # Facts about others drawn in a private room cannot exist (one speaker), but be exact.
                out["fact"] += len(await tx.query(
                    f"DELETE FROM facts WHERE room IN ({_marks(rooms)}) RETURNING id", rooms))
            named = [int(r[0]) for r in await tx.query(
                f"SELECT DISTINCT summary_id FROM summary_people WHERE identity IN ({_marks(ids)})", ids)]
            if rooms:
                named += [int(r[0]) for r in await tx.query(
                    f"SELECT id FROM summaries WHERE room IN ({_marks(rooms)})", rooms)]
            named = sorted(set(named))
            if named:
                out["summary"] = await tx.execute(f"DELETE FROM summaries WHERE id IN ({_marks(named)})", named)
            if rooms:
                await tx.execute(f"DELETE FROM facts_rooms WHERE room IN ({_marks(rooms)})", rooms)
        return out

    async def forget_facts(self, people: Iterable[str]) -> dict[str, int]:
        """What ``/memory forget all`` removes: the facts about ``people`` and the summaries naming them
        (what the bot learnt), leaving their turns alone."""
        return await self.forget(people, ())

    async def forget_turns(self, turn_ids: Iterable[int]) -> list[int]:
        """Delete every fact drawn from any of ``turn_ids`` (the turns were forgotten), also one with other
        sources still standing: its words may rest on the forgotten turn. Returns the facts' ids."""
        ids = sorted({int(t) for t in turn_ids})
        if not ids:
            return []
        rows = await self.db.query(
            f"DELETE FROM facts WHERE id IN (SELECT fact_id FROM fact_sources WHERE turn_id IN ({_marks(ids)})) "
            "RETURNING id", ids)
        return sorted(int(r[0]) for r in rows)

    async def forget_summaries_at(self, room: str, times: Iterable[float]) -> list[int]:
        """Delete the summaries of ``room`` whose session spans any of ``times`` (a summary is written from
        every turn of its session: one said then is in it). Returns their ids."""
        found: set[int] = set()
        for at in sorted(set(times)):
            rows = await self.db.query("DELETE FROM summaries WHERE room = ? AND started_at <= ? AND ended_at >= ? "
                                       "RETURNING id", (room, float(at), float(at)))
            found |= {int(r[0]) for r in rows}
        return sorted(found)

    # ------------------------------------------------------------------------------ cursors and spend

    async def cursor(self, room: str) -> int | None:
        value = await self.db.scalar("SELECT last_turn_id FROM facts_rooms WHERE room = ?", (room,))
        return None if value is None else int(value)

    async def set_cursor(self, room: str, turn_id: int, now: float) -> None:
        await self.db.execute(
            "INSERT INTO facts_rooms (room, last_turn_id, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (room) DO UPDATE SET last_turn_id = excluded.last_turn_id, updated_at = excluded.updated_at",
            (room, int(turn_id), float(now)))

    async def claim(self, room: str, owner: str, now: float, ttl: float) -> bool:
        """Take ``room``'s lease for ``ttl`` seconds unless another owner holds an unexpired one (one
        statement: atomic across processes on both backends)."""
        row = await self.db.query_one(
            "INSERT INTO facts_rooms (room, last_turn_id, updated_at, lease_owner, lease_until) VALUES (?, 0, ?, ?, ?) "
            "ON CONFLICT (room) DO UPDATE SET lease_owner = excluded.lease_owner, lease_until = excluded.lease_until "
            "WHERE facts_rooms.lease_until < ? OR facts_rooms.lease_owner = excluded.lease_owner RETURNING room",
            (room, float(now), owner, float(now + ttl), float(now)))
        return row is not None

    async def release(self, room: str, owner: str) -> None:
        await self.db.execute("UPDATE facts_rooms SET lease_until = 0 WHERE room = ? AND lease_owner = ?",
                              (room, owner))

    async def marks(self, prefix: str) -> list[str]:
        """Names recorded with :meth:`mark` that start with ``prefix`` (kept in the cursor table)."""
        rows = await self.db.query("SELECT room FROM facts_rooms WHERE room LIKE ? ORDER BY room",
                                   (prefix.replace("%", "").replace("_", "") + "%",))
        return [str(r[0]) for r in rows if str(r[0]).startswith(prefix)]

    async def mark(self, name: str) -> None:
        await self.set_cursor(name, 0, time.time())

    async def unmark(self, name: str) -> None:
        await self.db.execute("DELETE FROM facts_rooms WHERE room = ?", (name,))

    async def reserve(self, hour: int, tokens: int, budget: int) -> bool:
        """Add ``tokens`` to ``hour``'s spend if that keeps it within ``budget``; atomic across processes."""
        row = await self.db.query_one(
            "INSERT INTO facts_spend (hour, tokens, calls) VALUES (?, ?, 1) "
            "ON CONFLICT (hour) DO UPDATE SET tokens = facts_spend.tokens + excluded.tokens, "
            "calls = facts_spend.calls + 1 RETURNING tokens", (int(hour), int(tokens)))
        assert row is not None
        if int(row[0]) <= budget:
            return True
        await self.adjust(hour, -tokens, calls=-1)
        return False

    async def adjust(self, hour: int, tokens: int, *, calls: int = 0) -> None:
        await self.db.execute("UPDATE facts_spend SET tokens = tokens + ?, calls = calls + ? WHERE hour = ?",
                              (int(tokens), int(calls), int(hour)))

    async def spent(self, hour: int) -> tuple[int, int]:
        row = await self.db.query_one("SELECT tokens, calls FROM facts_spend WHERE hour = ?", (int(hour),))
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    async def prune(self, before: float) -> tuple[list[int], list[int]]:
        """Retention: facts not confirmed since ``before`` and summaries of sessions that ended before it;
        returns the ids removed (facts, summaries)."""
        facts = [int(r[0]) for r in await self.db.query(
            "DELETE FROM facts WHERE updated_at < ? RETURNING id", (float(before),))]
        summaries = [int(r[0]) for r in await self.db.query(
            "DELETE FROM summaries WHERE ended_at < ? RETURNING id", (float(before),))]
        await self.db.execute("DELETE FROM facts_spend WHERE hour < ?", (int(time.time() // 3600) - 48,))
        return facts, summaries


from bot.store import registry as _schemas  # noqa: E402  (tools that open a database know this schema)

_schemas.register(COMPONENT, MIGRATIONS)
