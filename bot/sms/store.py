"""SMS bookkeeping in the shared SQLite database.

Everything that must survive a restart, or be shared by several web workers behind a load
balancer, lives here: which ``MessageSid`` values were already handled (Twilio retries a webhook
that failed or timed out, and a retry must never produce a second answer), per-number rate-limit
windows, opt-outs, one-time link codes and phone ↔ Discord links.

Calls are short synchronous SQLite statements (see :mod:`bot.db`); each decision that reads and
writes (claim, admit, consume a code) runs in one transaction so two concurrent webhooks cannot
both win.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from bot.db import Database

if TYPE_CHECKING:
    from bot.memory import Memory

__all__ = ["Admission", "LinkCode", "PhoneLink", "PhoneLinker", "SmsStore", "LINK_CODE_TTL", "RATE_WINDOW"]

log = logging.getLogger(__name__)

RATE_WINDOW = 600.0  # seconds: settings.sms_rate_limit counts messages per number per 10 minutes
LINK_CODE_TTL = 600.0  # a /link code is good for 10 minutes
DEDUPE_RETENTION = 7 * 86400.0  # Twilio retries within minutes; a week of SIDs is ample

_MIGRATIONS: list[str] = [
    """
    CREATE TABLE sms_messages (
        message_sid TEXT PRIMARY KEY,
        from_number TEXT NOT NULL,
        received_at REAL NOT NULL,
        state TEXT NOT NULL
    );
    CREATE INDEX sms_messages_by_number ON sms_messages (from_number, state, received_at);
    CREATE TABLE sms_opt_outs (
        number TEXT PRIMARY KEY,
        opted_out_at REAL NOT NULL,
        source TEXT NOT NULL
    );
    CREATE TABLE sms_rate_notes (
        number TEXT PRIMARY KEY,
        noted_at REAL NOT NULL
    );
    CREATE TABLE sms_link_codes (
        identity TEXT PRIMARY KEY,
        code_hash TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE sms_links (
        number TEXT PRIMARY KEY,
        identity TEXT NOT NULL,
        display_name TEXT NOT NULL,
        linked_at REAL NOT NULL
    );
    CREATE INDEX sms_links_by_identity ON sms_links (identity);
    """,
]


class Admission(StrEnum):
    """What the rate limiter decided for one inbound message."""

    ACCEPT = "accept"  # within the limit: the agent answers
    NOTE = "note"  # first message over the limit in this window: one friendly note
    SILENT = "silent"  # over the limit and already told: remembered, not answered


@dataclass(frozen=True)
class LinkCode:
    """A one-time code shown in Discord, to be texted in from the phone being linked."""

    code: str
    identity: str
    expires_at: float


@dataclass(frozen=True)
class PhoneLink:
    """A phone number linked to a Discord identity."""

    number: str
    identity: str
    display_name: str
    linked_at: float


def _hash_code(code: str) -> str:
    # A 6-digit code has little entropy, so the hash only keeps codes out of casual view (backups,
    # logs of SQL); brute force is limited by the 10-minute expiry and the per-number rate limit.
    return hashlib.sha256(f"voicebot-link:{code}".encode()).hexdigest()


class SmsStore:
    """Typed access to the ``sms`` tables. ``clock`` returns Unix seconds (tests pass their own)."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        db.migrate("sms", _MIGRATIONS)

    # --- dedupe and rate limit ----------------------------------------------------------------

    def claim(self, message_sid: str, number: str) -> bool:
        """Record ``message_sid`` as seen; False if it was already seen (a retry or a replay)."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO sms_messages (message_sid, from_number, received_at, state) "
            "VALUES (?, ?, ?, 'received')",
            (message_sid, number, self._clock()),
        )
        return cur.rowcount == 1

    def admit(self, message_sid: str, number: str, limit: int, window: float = RATE_WINDOW) -> Admission:
        """Decide whether ``number`` may have this claimed message answered, and record the decision.

        Only messages we decided to answer count towards the limit, so the window passes
        ``window`` seconds after the oldest answered message however much the person keeps texting.
        """
        now = self._clock()
        with self._db.transaction():
            (count,) = self._db.query(
                "SELECT COUNT(*) FROM sms_messages WHERE from_number = ? AND state IN ('accepted', 'answered', 'failed') "
                "AND received_at > ?",
                (number, now - window),
            )[0]
            if count < limit:
                decision = Admission.ACCEPT
                state = "accepted"
            else:
                noted = self._db.query(
                    "SELECT noted_at FROM sms_rate_notes WHERE number = ? AND noted_at > ?", (number, now - window)
                )
                decision = Admission.SILENT if noted else Admission.NOTE
                state = "limited"
                if decision is Admission.NOTE:
                    self._db.execute(
                        "INSERT INTO sms_rate_notes (number, noted_at) VALUES (?, ?) "
                        "ON CONFLICT(number) DO UPDATE SET noted_at = excluded.noted_at",
                        (number, now),
                    )
            self._db.execute("UPDATE sms_messages SET state = ? WHERE message_sid = ?", (state, message_sid))
        return decision

    def set_state(self, message_sid: str, state: str) -> None:
        """Record how handling ended (``answered``, ``failed``, ``ignored``, ``keyword``, ...)."""
        self._db.execute("UPDATE sms_messages SET state = ? WHERE message_sid = ?", (state, message_sid))

    def state_of(self, message_sid: str) -> str | None:
        rows = self._db.query("SELECT state FROM sms_messages WHERE message_sid = ?", (message_sid,))
        return str(rows[0]["state"]) if rows else None

    def prune(self, retention: float = DEDUPE_RETENTION) -> int:
        """Drop SIDs, notes and codes too old to matter; returns rows removed."""
        now = self._clock()
        removed = self._db.execute("DELETE FROM sms_messages WHERE received_at < ?", (now - retention,)).rowcount
        removed += self._db.execute("DELETE FROM sms_rate_notes WHERE noted_at < ?", (now - RATE_WINDOW,)).rowcount
        removed += self._db.execute("DELETE FROM sms_link_codes WHERE expires_at < ?", (now,)).rowcount
        return removed

    # --- opt-outs -----------------------------------------------------------------------------

    def set_opted_out(self, number: str, source: str) -> None:
        """Remember that ``number`` opted out (``source``: ``"keyword"`` or ``"twilio:21610"``)."""
        self._db.execute(
            "INSERT INTO sms_opt_outs (number, opted_out_at, source) VALUES (?, ?, ?) "
            "ON CONFLICT(number) DO UPDATE SET opted_out_at = excluded.opted_out_at, source = excluded.source",
            (number, self._clock(), source),
        )

    def clear_opt_out(self, number: str) -> bool:
        """Forget an opt-out (the person texted START); True if there was one."""
        return self._db.execute("DELETE FROM sms_opt_outs WHERE number = ?", (number,)).rowcount > 0

    def is_opted_out(self, number: str) -> bool:
        return bool(self._db.query("SELECT 1 FROM sms_opt_outs WHERE number = ?", (number,)))

    # --- link codes and links -----------------------------------------------------------------

    def create_link_code(self, identity: str, display_name: str, ttl: float = LINK_CODE_TTL) -> LinkCode:
        """A fresh 6-digit code for ``identity`` (replacing any earlier one), unique among live codes."""
        now = self._clock()
        with self._db.transaction():
            self._db.execute("DELETE FROM sms_link_codes WHERE expires_at < ? OR identity = ?", (now, identity))
            while True:
                code = f"{secrets.randbelow(1_000_000):06d}"
                taken = self._db.query("SELECT 1 FROM sms_link_codes WHERE code_hash = ?", (_hash_code(code),))
                if not taken:
                    break
            self._db.execute(
                "INSERT INTO sms_link_codes (identity, code_hash, display_name, expires_at) VALUES (?, ?, ?, ?)",
                (identity, _hash_code(code), display_name, now + ttl),
            )
        return LinkCode(code=code, identity=identity, expires_at=now + ttl)

    def consume_link_code(self, code: str, number: str) -> PhoneLink | None:
        """Use ``code`` to link ``number``; returns the new link, or None if unknown or expired.

        A code works once. Linking a number replaces whatever that number was linked to before.
        """
        now = self._clock()
        with self._db.transaction():
            rows = self._db.query(
                "SELECT identity, display_name, expires_at FROM sms_link_codes WHERE code_hash = ?", (_hash_code(code),)
            )
            if not rows:
                return None
            self._db.execute("DELETE FROM sms_link_codes WHERE code_hash = ?", (_hash_code(code),))
            if rows[0]["expires_at"] < now:
                return None
            link = PhoneLink(number, str(rows[0]["identity"]), str(rows[0]["display_name"]), now)
            self._db.execute(
                "INSERT INTO sms_links (number, identity, display_name, linked_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(number) DO UPDATE SET identity = excluded.identity, "
                "display_name = excluded.display_name, linked_at = excluded.linked_at",
                (link.number, link.identity, link.display_name, link.linked_at),
            )
        return link

    def link_for_number(self, number: str) -> PhoneLink | None:
        rows = self._db.query("SELECT * FROM sms_links WHERE number = ?", (number,))
        return _link(rows[0]) if rows else None

    def links_for_identity(self, identity: str) -> list[PhoneLink]:
        rows = self._db.query("SELECT * FROM sms_links WHERE identity = ? ORDER BY linked_at", (identity,))
        return [_link(r) for r in rows]

    def remove_links(self, identity: str) -> list[PhoneLink]:
        """Remove every phone linked to ``identity`` (and its pending code); returns what was removed."""
        with self._db.transaction():
            links = self.links_for_identity(identity)
            self._db.execute("DELETE FROM sms_links WHERE identity = ?", (identity,))
            self._db.execute("DELETE FROM sms_link_codes WHERE identity = ?", (identity,))
        return links


def _link(row: sqlite3.Row) -> PhoneLink:
    return PhoneLink(str(row["number"]), str(row["identity"]), str(row["display_name"]), float(row["linked_at"]))


class PhoneLinker:
    """The Discord side of linking a phone: hand out codes, list and remove links.

    The SMS side (a code texted in) is :meth:`SmsService.handle`, which calls
    :meth:`SmsStore.consume_link_code` and ``Memory.link_identities``.
    """

    def __init__(self, store: SmsStore, memory: Memory) -> None:
        self.store = store
        self.memory = memory

    def start(self, identity: str, display_name: str) -> LinkCode:
        """A fresh one-time code for ``identity`` (e.g. ``discord:123``)."""
        code = self.store.create_link_code(identity, display_name)
        log.info("Link code issued for %s", identity)
        return code

    def linked_numbers(self, identity: str) -> list[str]:
        """Phone numbers linked to ``identity`` that memory still links (``/forget`` removes them)."""
        known = self.memory.identities_of(identity)
        return [link.number for link in self.store.links_for_identity(identity) if f"phone:{link.number}" in known]

    def unlink(self, identity: str) -> list[str]:
        """Remove every phone linked to ``identity``; returns the numbers unlinked."""
        removed = self.store.remove_links(identity)
        for link in removed:
            self.memory.unlink_identity(f"phone:{link.number}")
        log.info("Unlinked %d phone(s) from %s", len(removed), identity)
        return [link.number for link in removed]
