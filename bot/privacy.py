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

import hashlib
import hmac
import logging
import os
import secrets
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bot.db import Database, DatabaseError

__all__ = [
    "CLEANED_BY_FORGET",
    "NAMES_NO_PERSON",
    "ForgetReport",
    "OptOuts",
    "forget_person",
    "key_path",
]

log = logging.getLogger(__name__)

KEY_BYTES = 32

_MIGRATIONS: list[str] = [
    """
    CREATE TABLE opt_outs (
        subject TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX opt_outs_by_channel ON opt_outs (channel);
    """,
]

# Every table, classified. A table that holds anything about a person (an id, a number, a name,
# their words) is cleaned by forget_person(); the others say why they name no one.
CLEANED_BY_FORGET: dict[str, str] = {
    "turns": "what people said and the agent's replies (speaker id, name, text)",
    "people": "one row per linked person (deleted with their identities)",
    "identities": "the person's Discord id, phone number, console name",
    "sms_messages": "SMS bookkeeping: the sender's number, the text while it is being answered",
    "sms_links": "a phone number linked to a Discord id and display name",
    "sms_link_codes": "a pending /link code with the Discord id and display name",
    "sms_rate_notes": "when a number was last told it is over the rate limit",
    "voice_opt_outs": "legacy raw voice opt-outs (moved to opt_outs as keyed subjects at start)",
    "sms_opt_outs": "legacy raw SMS opt-outs (moved to opt_outs as keyed subjects at start, then dropped)",
    "language_places": "the language a phone number chose or wrote in (guild rows name no one)",
}
NAMES_NO_PERSON: dict[str, str] = {
    "schema_versions": "schema version per component",
    "sqlite_sequence": "SQLite's AUTOINCREMENT counters",
    "voice_guild_settings": "per-server choices keyed by guild id",
    "voice_guild_channels": "per-server joining policy: voice channel ids to join by itself or allow",
    "opt_outs": "opt-outs as HMAC subjects; the key is outside the database (kept on purpose)",
    "cluster_processes": "the bot's processes: host, pid, shards, counts (bot/cluster)",
    "cluster_shards": "which process holds which Discord shard",
    "cluster_identify": "when each login bucket last logged in",
    "cluster_session_starts": "Discord's session starts left today",
    "phone_call_tokens": "a call's stream token; the caller's number is blanked when the call ends or its "
                         "token dies, and the row goes after a day",
    "cluster_voice": "the voice channel, mode and language per guild to rejoin after a restart",
}

# The key is per database file, loaded once and shared by every store on that database.
_keys: weakref.WeakKeyDictionary[Database, bytes] = weakref.WeakKeyDictionary()


def key_path(db: Database) -> Path | None:
    """Where ``db``'s opt-out key lives (None for an in-memory database)."""
    return None if db.path is None else db.path.with_name(db.path.name + ".key")


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


class OptOuts:
    """Opt-outs by keyed subject; identities are ``discord:{id}`` or ``phone:{e164}``."""

    COMPONENT = "privacy"

    def __init__(self, db: Database) -> None:
        self._db = db
        db.migrate(self.COMPONENT, _MIGRATIONS)
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
                        "INSERT OR IGNORE INTO opt_outs (subject, channel, source, created_at) VALUES (?, 'voice', "
                        "'optout', ?)", (self.subject(f"discord:{int(row[0])}"), float(row[1])))
                if rows:
                    self._db.execute("DELETE FROM voice_opt_outs")
                    log.info("Moved %d voice opt-outs to keyed storage", len(rows))
                    moved += len(rows)
            if "sms_opt_outs" in tables:
                rows = self._db.query("SELECT number, opted_out_at, source FROM sms_opt_outs")
                for row in rows:
                    self._db.execute(
                        "INSERT OR IGNORE INTO opt_outs (subject, channel, source, created_at) VALUES (?, 'sms', ?, ?)",
                        (self.subject(f"phone:{row[0]}"), str(row[2]), float(row[1])))
                self._db.execute("DROP TABLE sms_opt_outs")
                if rows:
                    log.info("Moved %d SMS opt-outs to keyed storage", len(rows))
                    moved += len(rows)
        if moved:
            self._db.scrub()  # the raw ids and numbers leave the files too


# --- forgetting ---------------------------------------------------------------------------------

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


@dataclass
class ForgetReport:
    """What a forget removed, by kind (never one summed number: a link is not a message)."""

    counts: dict[str, int] = field(default_factory=dict)
    scrubbed: bool = True  # the WAL was checkpointed and truncated

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


def _marks(values: Iterable[object]) -> str:
    return ",".join("?" * len(list(values)))


def forget_person(db: Database, identity: str) -> ForgetReport:
    """Delete every row naming the person ``identity`` belongs to (all linked identities), then scrub.

    Turns: everything they said; the agent's reply right after each of their turns in a shared
    room (it answers them, often by name or quoting them); everything in their private rooms (DM,
    SMS thread, console). SMS: their numbers' bookkeeping, links and codes. Opt-outs stay (keyed).
    """
    from bot.memory import private_rooms  # memory imports this module for forget_person

    report = ForgetReport()
    tables = db.tables()
    if "voice_opt_outs" in tables or "sms_opt_outs" in tables:
        # Raw legacy opt-outs become keyed subjects first, so the forget below keeps the opt-out.
        OptOuts(db)
        tables = db.tables()
    with db.transaction():
        identities: set[str] = {identity}
        linked: set[str] = set()
        person: int | None = None
        if "identities" in tables:
            rows = db.query("SELECT identity, person_id FROM identities WHERE person_id ="
                            " (SELECT person_id FROM identities WHERE identity = ?)", (identity,))
            if rows:
                person = int(rows[0]["person_id"])
                linked = {str(r["identity"]) for r in rows} - {identity}
                identities |= linked
        if "sms_links" in tables:
            # A phone linked in the SMS store whose memory link is already gone still names them.
            identities |= {f"phone:{r[0]}" for r in db.query(
                f"SELECT number FROM sms_links WHERE identity IN ({_marks(identities)})", sorted(identities))}
        ids = sorted(identities)
        numbers = sorted(i.partition(":")[2] for i in ids if i.startswith("phone:"))
        discord_ids = sorted(int(i.partition(":")[2]) for i in ids
                             if i.startswith("discord:") and i.partition(":")[2].isdigit())
        rooms = sorted({room for i in ids for room in private_rooms(i)})
        if "turns" in tables:
            # Only rooms they spoke in are scanned (turns_speaker), each reply's predecessor by turns_room.
            report.add("reply", db.execute(
                "DELETE FROM turns WHERE id IN (SELECT a.id FROM turns a WHERE a.role = 'assistant' AND a.room IN "
                f"(SELECT DISTINCT room FROM turns WHERE speaker_id IN ({_marks(ids)})) AND (SELECT b.speaker_id "
                "FROM turns b WHERE b.room = a.room AND b.id < a.id ORDER BY b.id DESC LIMIT 1) "
                f"IN ({_marks(ids)}))", [*ids, *ids]).rowcount)
            report.add("message", db.execute(f"DELETE FROM turns WHERE speaker_id IN ({_marks(ids)})", ids).rowcount)
            if rooms:
                report.add("reply", db.execute(f"DELETE FROM turns WHERE room IN ({_marks(rooms)})", rooms).rowcount)
        if person is not None:
            for other in linked:
                report.add("linked phone" if other.startswith("phone:") else "linked account", 1)
            db.execute("DELETE FROM identities WHERE person_id = ?", (person,))
            db.execute("DELETE FROM people WHERE id = ?", (person,))
        if numbers:
            if "sms_messages" in tables:
                report.add("sms record", db.execute(
                    f"DELETE FROM sms_messages WHERE from_number IN ({_marks(numbers)})", numbers).rowcount)
            if "sms_rate_notes" in tables:
                report.add("bookkeeping", db.execute(
                    f"DELETE FROM sms_rate_notes WHERE number IN ({_marks(numbers)})", numbers).rowcount)
        if "sms_links" in tables:
            removed = db.execute(f"DELETE FROM sms_links WHERE identity IN ({_marks(ids)}) OR "
                                 f"number IN ({_marks(numbers)})", [*ids, *numbers]).rowcount
            if removed and not (report["linked phone"] or report["linked account"]):
                report.add("linked phone", removed)
        if "sms_link_codes" in tables:
            report.add("link code", db.execute(
                f"DELETE FROM sms_link_codes WHERE identity IN ({_marks(ids)})", ids).rowcount)
        if "language_places" in tables:
            db.execute(f"DELETE FROM language_places WHERE place IN ({_marks(ids)})", ids)
        if discord_ids and "voice_opt_outs" in tables:
            db.execute(f"DELETE FROM voice_opt_outs WHERE user_id IN ({_marks(discord_ids)})", discord_ids)
    report.scrubbed = db.scrub()
    log.info("Forgot a person: %d identities; removed %s", len(ids), report.describe())
    return report
