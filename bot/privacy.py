"""Forgetting a person everywhere, and the opt-outs that must outlive the forgetting.

``/forget`` deletes every row that names the person in every table of the shared database (see
:data:`CLEANED_BY_FORGET`; every other table is listed in :data:`NAMES_NO_PERSON` with the reason,
and a test fails when a table is in neither), then checkpoints and truncates the WAL so the bytes
are gone from disk too, not only from queries.

An opt-out (voice ``/optout``, SMS ``STOP``) has to survive a forget, or forgetting would quietly
opt the person back in. So opt-outs never store the raw Discord id or phone number: they store
``HMAC-SHA256(key, identity)`` (a *subject*), where the key is a random 32-byte file next to the
database (``voicebot.sqlite3.key``). That is what honouring an opt-out needs — recognising the id
or number when it shows up again — and no more:

- the database alone (a backup, a copy handed to someone for debugging) cannot be turned back
  into numbers or ids, not even by trying every phone number, because the key is not in it;
- with the key too, someone can test a number they already know, or try every number (phone
  numbers are few enough): this is pseudonymisation, not anonymity. Keep the key with the same
  care as the database; losing it loses the opt-outs (the bot logs a warning when that happened).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
import weakref
from pathlib import Path

from bot.db import Database as LegacyDatabase
from bot.store import Database, DatabaseError
from bot.store.erase import ForgetReport, classified
from bot.store.erase import forget_person as _forget_person
from bot.store.optouts import MIGRATIONS as _OPT_OUT_MIGRATIONS
from bot.store.optouts import OptOuts as KeyedOptOuts

__all__ = [
    "CLEANED_BY_FORGET",
    "NAMES_NO_PERSON",
    "ForgetReport",
    "KeyedOptOuts",
    "OptOuts",
    "forget_person",
    "key_path",
    "open_opt_outs",
]

log = logging.getLogger(__name__)

KEY_BYTES = 32

# Every table, classified by the stores that own them (bot/store/*: each declares what it cleans on
# a forget and what names no one). A test fails when a table of the database is in neither.
CLEANED_BY_FORGET, NAMES_NO_PERSON = classified()

# The key is per database, loaded once and shared by every store on that database.
_keys: weakref.WeakKeyDictionary[object, bytes] = weakref.WeakKeyDictionary()
_stores: weakref.WeakKeyDictionary[Database, KeyedOptOuts] = weakref.WeakKeyDictionary()
_opening: weakref.WeakKeyDictionary[Database, asyncio.Lock] = weakref.WeakKeyDictionary()


def key_path(db: Database | LegacyDatabase) -> Path | None:
    """Where ``db``'s opt-out key lives (None for an in-memory database)."""
    explicit = getattr(db, "key_file", None)  # PostgreSQL: set by the composition root (a file in DATA_DIR)
    if explicit is not None:
        return Path(explicit)
    path = getattr(db, "path", None)
    return None if path is None else path.with_name(path.name + ".key")


def _load_key(db: Database | LegacyDatabase) -> tuple[bytes, bool]:
    """``db``'s key and whether it was created just now."""
    path = key_path(db)
    if path is None:
        return secrets.token_bytes(KEY_BYTES), True
    try:
        # O_EXCL: two processes starting at once cannot each write a different key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise DatabaseError(f"cannot read the opt-out key {path}: {exc.strerror}") from None
        if len(key) != KEY_BYTES:
            raise DatabaseError(f"{path} is not a voicebot opt-out key ({len(key)} bytes, expected {KEY_BYTES}); "
                                "restore it from a backup, or delete it to start a new one (recorded opt-outs "
                                "are then lost)")
        return key, False
    except OSError as exc:
        raise DatabaseError(f"cannot create the opt-out key {path}: {exc.strerror}") from None
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key, True


class OptOuts:
    """Opt-outs by keyed subject on the synchronous SQLite ``bot.db`` (legacy: what ``bot/sms`` uses until it
    moves onto the async store; everything else uses :func:`open_opt_outs`). Same table, same key."""

    COMPONENT = "privacy"

    def __init__(self, db: LegacyDatabase) -> None:
        self._db = db
        db.migrate(self.COMPONENT, [step["sqlite"] for step in _OPT_OUT_MIGRATIONS])
        key = _keys.get(db)
        if key is None:
            key, created = _load_key(db)
            _keys[db] = key
            if created and db.query("SELECT 1 FROM opt_outs LIMIT 1"):
                log.warning("The opt-out key %s was missing and a new one was made: the %d opt-outs recorded "
                            "with the old key can no longer be recognised", key_path(db),
                            db.query("SELECT COUNT(*) FROM opt_outs")[0][0])
        self._key = key
        self._migrate_raw()

    def subject(self, identity: str) -> str:
        return hmac.new(self._key, identity.encode(), hashlib.sha256).hexdigest()

    def remove(self, identity: str) -> bool:
        return self._db.execute("DELETE FROM opt_outs WHERE subject = ?", (self.subject(identity),)).rowcount > 0

    def has(self, identity: str) -> bool:
        return bool(self._db.query("SELECT 1 FROM opt_outs WHERE subject = ?", (self.subject(identity),)))

    def subjects(self, channel: str) -> frozenset[str]:
        return frozenset(str(r[0]) for r in self._db.query("SELECT subject FROM opt_outs WHERE channel = ?",
                                                            (channel,)))

    def add(self, identity: str, channel: str, source: str) -> bool:
        """Record an opt-out; True if it is new (the person had not opted out before)."""
        with self._db.transaction():
            existed = self.has(identity)
            self._db.execute(
                "INSERT INTO opt_outs (subject, channel, source, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(subject) DO UPDATE SET source = excluded.source",
                (self.subject(identity), channel, source, time.time()),
            )
        return not existed

    def _migrate_raw(self) -> None:
        """Move opt-outs an earlier version stored raw into keyed subjects (once; cheap afterwards)."""
        tables = self._db.tables()
        moved = 0
        with self._db.transaction():
            if "voice_opt_outs" in tables:
                rows = self._db.query("SELECT user_id, created_at FROM voice_opt_outs")
                for row in rows:
                    self._db.execute(
                        "INSERT INTO opt_outs (subject, channel, source, created_at) VALUES (?, 'voice', "
                        "'optout', ?) ON CONFLICT (subject) DO NOTHING", (self.subject(f"discord:{int(row[0])}"), float(row[1])))
                if rows:
                    self._db.execute("DELETE FROM voice_opt_outs")
                    log.info("Moved %d voice opt-outs to keyed storage", len(rows))
                    moved += len(rows)
            if "sms_opt_outs" in tables:
                rows = self._db.query("SELECT number, opted_out_at, source FROM sms_opt_outs")
                for row in rows:
                    self._db.execute(
                        "INSERT INTO opt_outs (subject, channel, source, created_at) VALUES (?, 'sms', ?, ?) "
                        "ON CONFLICT (subject) DO NOTHING",
                        (self.subject(f"phone:{row[0]}"), str(row[2]), float(row[1])))
                self._db.execute("DROP TABLE sms_opt_outs")
                if rows:
                    log.info("Moved %d SMS opt-outs to keyed storage", len(rows))
                    moved += len(rows)
        if moved:
            self._db.scrub()  # the raw ids and numbers leave the files too



async def open_opt_outs(db: Database) -> KeyedOptOuts:
    """The opt-out store of ``db`` with its key (one per database; migrates and moves legacy rows once)."""
    found = _stores.get(db)
    if found is not None:
        return found
    lock = _opening.setdefault(db, asyncio.Lock())
    async with lock:
        found = _stores.get(db)
        if found is not None:
            return found
        key = _keys.get(db)
        created = False
        if key is None:
            key, created = _load_key(db)
            _keys[db] = key
        store = await KeyedOptOuts.open(db, key)
        if created and await db.query_one("SELECT 1 FROM opt_outs"):
            log.warning("The opt-out key %s was missing and a new one was made: the %d opt-outs recorded "
                        "with the old key can no longer be recognised", key_path(db), await store.count())
        _stores[db] = store
        return store


async def forget_person(db: Database, identity: str) -> ForgetReport:
    """Delete every row naming the person ``identity`` belongs to, in every store on ``db``, then scrub.

    See :func:`bot.store.erase.forget_person`. Opt-outs stay (keyed subjects).
    """
    await open_opt_outs(db)  # legacy raw opt-outs become keyed first, so the forget keeps them
    return await _forget_person(db, identity)
