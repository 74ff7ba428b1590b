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


def key_path(db: Database) -> Path | None:
    """Where ``db``'s opt-out key lives (None for an in-memory database)."""
    explicit = getattr(db, "key_file", None)  # PostgreSQL: set by the composition root (a file in DATA_DIR)
    if explicit is not None:
        return Path(explicit)
    path = getattr(db, "path", None)
    return None if path is None else path.with_name(path.name + ".key")


def _load_key(db: Database) -> tuple[bytes, bool]:
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
