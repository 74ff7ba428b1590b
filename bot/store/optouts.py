"""Opt-outs (voice ``/optout``, SMS ``STOP``) as keyed subjects, so they outlive a forget.

A subject is ``HMAC-SHA256(key, identity)``; the key never enters the database (see
:mod:`bot.privacy`, which loads it). Identities are ``discord:{id}`` or ``phone:{e164}``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

from bot.store.database import Database
from bot.store.erase import Erasure, ForgetReport, Who, marks, register

__all__ = ["OptOuts"]

log = logging.getLogger(__name__)

COMPONENT = "privacy"

MIGRATIONS = [
    {"sqlite": """
    CREATE TABLE opt_outs (
        subject TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX opt_outs_by_channel ON opt_outs (channel);
    """, "postgresql": """
    CREATE TABLE opt_outs (
        subject TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX opt_outs_by_channel ON opt_outs (channel);
    """},
]


class OptOuts(Erasure):
    """Opt-outs by keyed subject. Open with :meth:`open` (migrates, moves legacy raw rows)."""

    component = COMPONENT
    order = 90
    cleans = {
        "voice_opt_outs": "legacy raw voice opt-outs (moved to opt_outs as keyed subjects at start)",
    }
    keeps = {"opt_outs": "opt-outs as HMAC subjects; the key is outside the database (kept on purpose)"}

    def __init__(self, db: Database, key: bytes) -> None:
        self._db = db
        self._key = key

    @classmethod
    async def open(cls, db: Database, key: bytes) -> OptOuts:
        store = cls(db, key)
        await db.migrate(COMPONENT, MIGRATIONS)
        await store._migrate_raw()
        register(db, store)
        return store

    def subject(self, identity: str) -> str:
        return hmac.new(self._key, identity.encode(), hashlib.sha256).hexdigest()

    async def remove(self, identity: str) -> bool:
        return await self._db.execute("DELETE FROM opt_outs WHERE subject = ?", (self.subject(identity),)) > 0

    async def has(self, identity: str) -> bool:
        return await self._db.query_one("SELECT 1 FROM opt_outs WHERE subject = ?", (self.subject(identity),)) is not None

    async def subjects(self, channel: str) -> frozenset[str]:
        rows = await self._db.query("SELECT subject FROM opt_outs WHERE channel = ?", (channel,))
        return frozenset(str(r[0]) for r in rows)

    async def count(self) -> int:
        return int(await self._db.scalar("SELECT COUNT(*) FROM opt_outs"))

    async def add(self, identity: str, channel: str, source: str) -> bool:
        """Record an opt-out; True if it is new (the person had not opted out before)."""
        async with self._db.transaction() as tx:
            existed = await self.has(identity)
            await tx.execute(
                "INSERT INTO opt_outs (subject, channel, source, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (subject) DO UPDATE SET source = excluded.source",
                (self.subject(identity), channel, source, time.time()))
        return not existed

    async def _migrate_raw(self, *, scrub: bool = True) -> None:
        """Move opt-outs an earlier version stored raw into keyed subjects (once; cheap afterwards)."""
        tables = await self._db.tables()
        moved = 0
        insert = ("INSERT INTO opt_outs (subject, channel, source, created_at) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (subject) DO NOTHING")
        async with self._db.transaction() as tx:
            if "voice_opt_outs" in tables:
                rows = await tx.query("SELECT user_id, created_at FROM voice_opt_outs")
                for row in rows:
                    await tx.execute(insert, (self.subject(f"discord:{int(row[0])}"), "voice", "optout", float(row[1])))
                if rows:
                    await tx.execute("DELETE FROM voice_opt_outs")
                    log.info("Moved %d voice opt-outs to keyed storage", len(rows))
                    moved += len(rows)
            if "sms_opt_outs" in tables:
                rows = await tx.query("SELECT number, opted_out_at, source FROM sms_opt_outs")
                for row in rows:
                    await tx.execute(insert, (self.subject(f"phone:{row[0]}"), "sms", str(row[2]), float(row[1])))
                await tx.execute("DROP TABLE sms_opt_outs")
                if rows:
                    log.info("Moved %d SMS opt-outs to keyed storage", len(rows))
                    moved += len(rows)
        if moved and scrub:
            await self._db.scrub(["voice_opt_outs", "opt_outs"])  # the raw ids and numbers leave the files too

    async def gather(self, tx: Database, who: Who) -> None:
        # Raw legacy opt-outs (another process of an older version may have written some) become keyed
        # subjects first, so the forget below keeps the opt-out.
        tables = await tx.tables()
        if "voice_opt_outs" in tables or "sms_opt_outs" in tables:
            await self._migrate_raw(scrub=False)  # forget scrubs after its transaction
            report_tables = {"voice_opt_outs", "opt_outs"}
            who.scrub_extra |= report_tables

    async def forget(self, tx: Database, who: Who, report: ForgetReport) -> None:
        ids = who.discord_ids
        if ids and "voice_opt_outs" in await tx.tables():
            await tx.execute(f"DELETE FROM voice_opt_outs WHERE user_id IN ({marks(ids)})", ids)
            report.touched.add("voice_opt_outs")


from bot.store import registry as _schemas  # noqa: E402  (tools that open a database know this schema)

_schemas.register(COMPONENT, MIGRATIONS)
