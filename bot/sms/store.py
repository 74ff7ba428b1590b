"""SMS bookkeeping in the shared SQLite database.

Everything that must survive a restart lives here: every inbound message from the moment it is
accepted (its text and sender are written before the webhook answers 200) and where it is in its
life, per-number rate-limit windows, opt-outs, one-time link codes and phone ↔ Discord links.

A message's state moves forward in the database, one transaction per step::

    received ─┬─> accepted ─> replying ─> sending ─┬─> answered
              │   (admitted)  (agent      (reply    ├─> failed
              │                writing)    stored)  └─> suppressed (opted out / forgotten meanwhile)
              └─> ignored | limited | keyword:* | linked | link-failed

``received``, ``accepted``, ``replying`` and ``sending`` are *unfinished*: after a crash they are
finished at the next start, or when Twilio retries the SID (see :class:`bot.sms.inbound.SmsService`).
``sending`` stores the reply's segments and how many were confirmed sent, so a recovery can ask
Twilio which were created before sending the rest (never twice). A finished row keeps only its
number, time and state (for dedupe and the rate limit): the text and reply are cleared.

Calls are short synchronous SQLite statements (see :mod:`bot.db`); each decision that reads and
writes (claim, admit, consume a code) runs in one transaction so two concurrent webhooks cannot
both win.
"""

from __future__ import annotations

import hashlib
import json
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

__all__ = ["Admission", "Claim", "LinkCode", "PendingSms", "PhoneLink", "PhoneLinker", "SmsStore", "LINK_CODE_TTL",
           "RATE_WINDOW", "UNFINISHED"]

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
    # 2: durable messages: the text until it is answered, the reply while it is being sent.
    # (Opt-outs moved to bot.privacy's keyed table; the raw sms_opt_outs is converted and dropped.)
    """
    ALTER TABLE sms_messages ADD COLUMN body TEXT;
    ALTER TABLE sms_messages ADD COLUMN num_media INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sms_messages ADD COLUMN reply TEXT;
    ALTER TABLE sms_messages ADD COLUMN sent_segments INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sms_messages ADD COLUMN updated_at REAL;
    CREATE INDEX sms_messages_by_state ON sms_messages (state, received_at);
    """,
]

UNFINISHED = ("received", "accepted", "replying", "sending")
# States that count towards a number's rate limit: every message we decided to answer.
_ANSWERING = ("accepted", "replying", "sending", "answered", "failed", "suppressed")


class Claim(StrEnum):
    """What :meth:`SmsStore.claim` found for a MessageSid."""

    NEW = "new"  # first time: recorded (text and sender) as ``received``
    UNFINISHED = "unfinished"  # seen before and not finished (a crash, or still in progress)
    DONE = "done"  # seen and finished: a retry or a replay, never answered again


@dataclass(frozen=True)
class PendingSms:
    """An unfinished message as stored."""

    message_sid: str
    from_number: str
    body: str | None  # None: stored by a version that did not keep the text
    num_media: int
    state: str
    received_at: float
    updated_at: float
    reply: tuple[str, ...]  # the segments being sent (state ``sending``)
    failure: str | None  # why the reply is an apology (the agent failed), for the log and memory
    sent_segments: int  # how many of them Twilio confirmed


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
        from bot.privacy import OptOuts

        self._db = db
        self._clock = clock
        db.migrate("sms", _MIGRATIONS)
        self._opt_outs = OptOuts(db)  # converts (and drops) the raw sms_opt_outs of version 1

    # --- the message's life -------------------------------------------------------------------

    def claim(self, message_sid: str, number: str, body: str = "", num_media: int = 0) -> Claim:
        """Record a message (text and sender, durably) unless its SID is known; say what was found."""
        now = self._clock()
        with self._db.transaction():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO sms_messages (message_sid, from_number, received_at, state, body, num_media, "
                "updated_at) VALUES (?, ?, ?, 'received', ?, ?, ?)",
                (message_sid, number, now, body, num_media, now),
            )
            if cur.rowcount == 1:
                return Claim.NEW
            state = self.state_of(message_sid)
        return Claim.UNFINISHED if state in UNFINISHED else Claim.DONE

    def advance(self, message_sid: str, from_states: str | tuple[str, ...], to: str, *,
                reply: list[str] | None = None, failure: str | None = None,
                sent_segments: int | None = None) -> bool:
        """Move one message ``from_states`` → ``to`` in one transaction; False if it was not in them.

        False means someone else moved it, or the row is gone (the person was forgotten): either
        way the caller must not act on it any more. Finishing clears the text and the reply.
        """
        froms = (from_states,) if isinstance(from_states, str) else from_states
        sets = ["state = ?", "updated_at = ?"]
        params: list[object] = [to, self._clock()]
        if to not in UNFINISHED:
            sets += ["body = NULL", "reply = NULL"]
        if reply is not None:
            sets.append("reply = ?")
            params.append(json.dumps({"segments": reply, "failure": failure}))
        if sent_segments is not None:
            sets.append("sent_segments = ?")
            params.append(sent_segments)
        marks = ",".join("?" * len(froms))
        cur = self._db.execute(
            f"UPDATE sms_messages SET {', '.join(sets)} WHERE message_sid = ? AND state IN ({marks})",
            (*params, message_sid, *froms),
        )
        return cur.rowcount == 1

    def segment_sent(self, message_sid: str, count: int) -> bool:
        """Record that the first ``count`` segments of a ``sending`` reply were created by Twilio."""
        cur = self._db.execute(
            "UPDATE sms_messages SET sent_segments = ?, updated_at = ? WHERE message_sid = ? AND state = 'sending'",
            (count, self._clock(), message_sid),
        )
        return cur.rowcount == 1

    def pending(self, message_sid: str) -> PendingSms | None:
        rows = self._db.query(f"SELECT * FROM sms_messages WHERE message_sid = ? AND state IN "
                              f"({','.join('?' * len(UNFINISHED))})", (message_sid, *UNFINISHED))
        return _pending(rows[0]) if rows else None

    def unfinished(self) -> list[PendingSms]:
        """Every unfinished message, oldest first (what a start-up finishes)."""
        rows = self._db.query(f"SELECT * FROM sms_messages WHERE state IN ({','.join('?' * len(UNFINISHED))}) "
                              "ORDER BY received_at, rowid", UNFINISHED)
        return [_pending(r) for r in rows]

    def counts_by_state(self) -> dict[str, int]:
        rows = self._db.query("SELECT state, COUNT(*) FROM sms_messages GROUP BY state")
        return {str(r[0]): int(r[1]) for r in rows}

    # --- rate limit ---------------------------------------------------------------------------

    def admit(self, message_sid: str, number: str, limit: int, window: float = RATE_WINDOW) -> Admission:
        """Decide whether ``number`` may have this claimed message answered, and record the decision.

        Only messages we decided to answer count towards the limit, so the window passes
        ``window`` seconds after the oldest answered message however much the person keeps texting.
        """
        now = self._clock()
        with self._db.transaction():
            (count,) = self._db.query(
                f"SELECT COUNT(*) FROM sms_messages WHERE from_number = ? AND state IN ({','.join('?' * len(_ANSWERING))}) "
                "AND received_at > ? AND message_sid != ?",
                (number, *_ANSWERING, now - window, message_sid),
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
            self.advance(message_sid, "received", state)
        return decision

    def set_state(self, message_sid: str, state: str) -> None:
        """Record how handling ended (``ignored``, ``keyword:stop``, ``linked``...) from wherever it was."""
        self.advance(message_sid, UNFINISHED, state)

    def state_of(self, message_sid: str) -> str | None:
        rows = self._db.query("SELECT state FROM sms_messages WHERE message_sid = ?", (message_sid,))
        return str(rows[0]["state"]) if rows else None

    def prune(self, retention: float = DEDUPE_RETENTION) -> int:
        """Drop SIDs, notes and codes too old to matter; returns rows removed."""
        now = self._clock()
        removed = self._db.execute(
            f"DELETE FROM sms_messages WHERE received_at < ? AND state NOT IN ({','.join('?' * len(UNFINISHED))})",
            (now - retention, *UNFINISHED)).rowcount
        removed += self._db.execute("DELETE FROM sms_rate_notes WHERE noted_at < ?", (now - RATE_WINDOW,)).rowcount
        removed += self._db.execute("DELETE FROM sms_link_codes WHERE expires_at < ?", (now,)).rowcount
        return removed

    # --- opt-outs -----------------------------------------------------------------------------

    # Stored as keyed subjects, never the raw number, so they outlive /forget (see bot.privacy).

    def set_opted_out(self, number: str, source: str) -> None:
        """Remember that ``number`` opted out (``source``: ``"keyword"`` or ``"twilio:21610"``)."""
        self._opt_outs.add(f"phone:{number}", "sms", source)

    def clear_opt_out(self, number: str) -> bool:
        """Forget an opt-out (the person texted START); True if there was one."""
        return self._opt_outs.remove(f"phone:{number}")

    def is_opted_out(self, number: str) -> bool:
        return self._opt_outs.has(f"phone:{number}")

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


def _pending(row: sqlite3.Row) -> PendingSms:
    stored = json.loads(row["reply"]) if row["reply"] else {}
    received = float(row["received_at"])
    return PendingSms(str(row["message_sid"]), str(row["from_number"]), row["body"], int(row["num_media"] or 0),
                      str(row["state"]), received, float(row["updated_at"] or received),
                      tuple(stored.get("segments", ())), stored.get("failure"), int(row["sent_segments"] or 0))


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
