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
from dataclasses import dataclass, field
from pathlib import Path

from bot.settings import Settings, decode_privacy_key
from bot.store import Database, DatabaseError
from bot.store.erase import ForgetReport, classified, declare_tables
from bot.store.erase import forget_person as _forget_person
from bot.store.optouts import MIGRATIONS as _OPT_OUT_MIGRATIONS
from bot.store.optouts import OptOuts as KeyedOptOuts

__all__ = [
    "CLEANED_BY_FORGET",
    "NAMES_NO_PERSON",
    "ForgetReport",
    "KeyedOptOuts",
    "KeySource",
    "forget_person",
    "key_path",
    "open_opt_outs",
    "use_key_source",
]

log = logging.getLogger(__name__)

KEY_BYTES = 32

# Every table, classified by the stores that own them (bot/store/*: each declares what it cleans on
# a forget and what names no one). A test fails when a table of the database is in neither.
declare_tables(  # bot/facts: cleaned by its own forget (cogs/privacy.forget_everything)
    cleans={
        "facts": "facts learnt about a person (their identity, name and what they said) - bot.facts",
        "fact_sources": "the turn ids a fact was drawn from (deleted with the fact)",
        "summaries": "voice-session summaries naming the people in them (dropped when one of them forgets)",
        "summary_people": "who spoke in a summarised session (deleted with the summary)",
        "facts_rooms": "how far fact extraction read each room (a DM's room names the person)",
    },
    keeps={"facts_spend": "tokens spent on background learning per clock hour"},
)
declare_tables(  # bot/usage: cleaned by its own forget (cogs/privacy.forget_everything)
    cleans={"usage_daily": "daily paid-use amounts per person (no content; the store of bot/usage): /forget removes "
                           "those before today (today's hold today's limit); server and total rows name no one"},
    keeps={"usage_engines": "daily use per kind and engine (bot/usage), no person or server"},
)
declare_tables(keeps={  # bot/cluster and the phone's call tokens
    "cluster_processes": "the bot's processes: host, pid, shards, counts (bot/cluster)",
    "cluster_shards": "which process holds which Discord shard",
    "cluster_identify": "when each login bucket last logged in",
    "cluster_session_starts": "Discord's session starts left today",
    "phone_call_tokens": "a call's stream token; the caller's number is blanked when the call ends or its "
                         "token dies, and the row goes after a day",
    "cluster_voice": "the voice channel, mode and language per guild to rejoin after a restart",
})
import bot.recall.index  # noqa: E402,F401  (declares the recall index's tables through its erasure)

CLEANED_BY_FORGET, NAMES_NO_PERSON = classified()

# The key is per database, loaded once and shared by every store on that database.
_keys: weakref.WeakKeyDictionary[object, bytes] = weakref.WeakKeyDictionary()
_stores: weakref.WeakKeyDictionary[Database, KeyedOptOuts] = weakref.WeakKeyDictionary()
_opening: weakref.WeakKeyDictionary[Database, asyncio.Lock] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class KeySource:
    """Where the opt-out key comes from: PRIVACY_KEY (the key), PRIVACY_KEY_FILE, or beside the SQLite file."""

    file: Path | None = None
    key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeySource:
        key = settings.privacy_key
        return cls(file=settings.privacy_key_file, key=decode_privacy_key(key.get()) if key is not None else None)


# Set once by the composition root (use_key_source); stores that build OptOuts read it from here.
_key_source = KeySource()


def use_key_source(source: KeySource) -> None:
    """Where every OptOuts built after this call takes its key from (the composition root calls it)."""
    global _key_source
    _key_source = source


def key_path(db: Database, source: KeySource | None = None) -> Path | None:
    """The file ``db``'s opt-out key lives in: PRIVACY_KEY_FILE, else beside the SQLite file.

    None when there is no file: PRIVACY_KEY gives the key itself, or the database is in memory or
    on PostgreSQL (no file to sit beside).
    """
    source = _key_source if source is None else source
    if source.key is not None:
        return None
    if source.file is not None:
        return source.file
    path = getattr(db, "path", None)
    return None if path is None else path.with_name(path.name + ".key")


PG_NEEDS_KEY = ("the opt-out key cannot sit beside a PostgreSQL database: set PRIVACY_KEY_FILE to a key file every "
                "process reads (e.g. the old data/voicebot.sqlite3.key) or PRIVACY_KEY to the key itself")


def _load_key(db: Database, source: KeySource | None = None) -> tuple[bytes, bool]:
    """``db``'s key and whether it was created just now.

    PRIVACY_KEY wins; else the file (PRIVACY_KEY_FILE, or beside the SQLite file) is read, or made
    when missing. On PostgreSQL with neither set there is nothing safe to do: a key made here would
    not be the key another machine's process makes, and opt-outs recorded by one would be unreadable
    by the other, so the bot refuses.
    """
    source = _key_source if source is None else source
    if source.key is not None:
        return source.key, False
    path = key_path(db, source)
    if path is None:
        if getattr(db, "dialect", "sqlite") == "postgresql":
            raise DatabaseError(PG_NEEDS_KEY)
        return secrets.token_bytes(KEY_BYTES), True
    named = f"PRIVACY_KEY_FILE {str(path)!r}" if source.file is not None else str(path)
    try:
        # O_EXCL: two processes starting at once cannot each write a different key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise DatabaseError(f"cannot read the opt-out key {named}: {exc.strerror}") from None
        if len(key) != KEY_BYTES:
            raise DatabaseError(f"{named} is not a voicebot opt-out key ({len(key)} bytes, expected {KEY_BYTES}); "
                                "restore it from a backup, or delete it to start a new one (recorded opt-outs "
                                "are then lost)")
        return key, False
    except OSError as exc:
        raise DatabaseError(f"cannot create the opt-out key {named}: {exc.strerror}") from None
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
