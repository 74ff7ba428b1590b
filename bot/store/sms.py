"""The SMS tables on the shared database (SQLite or PostgreSQL), and the leases that share their work.

Everything that must survive a restart lives here: every inbound message from the moment it is
accepted (its text and sender are written before the webhook answers 200) and where it is in its
life, per-number rate-limit notes, one-time link codes and phone ↔ Discord links. (Opt-outs are
keyed by the privacy store; :class:`bot.sms.store.SmsStore` joins the two.)

A message's state moves forward, one compare-and-set ``UPDATE`` per step::

    received ─┬─> accepted ─> replying ─> sending ─┬─> answered
              │   (admitted)  (agent      (reply    ├─> failed
              │                writing)    stored)  └─> suppressed (opted out / forgotten meanwhile)
              └─> ignored | limited | keyword:* | linked | link-failed | language

``received``, ``accepted``, ``replying`` and ``sending`` are *unfinished*. ``sending`` stores the
reply's segments and how many were confirmed sent, so whoever finishes it can ask Twilio which were
created before sending the rest (never twice). A finished row keeps only its number, time and state
(for dedupe and the rate limit): the text and the reply are cleared.

**Leases: many processes, one database.** An unfinished row is worked on by the one holder of its
lease (``lease_owner``, ``lease_until``; see :mod:`bot.store.leases` for the owner's name). The
webhook that records a message takes its lease in the same statement; a Twilio retry of that SID
reaching another process finds the lease live and answers nothing; every state move succeeds only
for the lease's holder, so a process that lost its lease (paused past it) cannot move the row on.
A live holder renews its leases (:meth:`SmsRecords.renew`); a dead one's work is taken by
:meth:`SmsRecords.take_unfinished` (any process's periodic sweep, and each start) once its lease
expires, or at once when its owner provably died on the same machine. On PostgreSQL the sweep
claims rows with ``FOR UPDATE SKIP LOCKED``; SQLite's ``BEGIN IMMEDIATE`` serialises writers.
A row whose holder gave up for a while (Twilio could not say whether a reply left) carries no
owner and a ``lease_until`` in the future: nobody takes it before then.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from bot.store.database import Database, IntegrityError, Row
from bot.store.leases import LeaseOwner, owner_alive

__all__ = ["Admission", "Claim", "LinkCode", "PendingSms", "PhoneLink", "SmsRecords", "DEDUPE_RETENTION",
           "LEASE_SECONDS", "LINK_CODE_TTL", "MIGRATIONS", "RATE_WINDOW", "TABLES", "UNFINISHED"]

COMPONENT = "sms"
RATE_WINDOW = 600.0  # seconds: settings.sms_rate_limit counts messages per number per 10 minutes
LINK_CODE_TTL = 600.0  # a /link code is good for 10 minutes
DEDUPE_RETENTION = 7 * 86400.0  # Twilio retries within minutes; a week of SIDs is ample
LEASE_SECONDS = 30.0  # how long a holder's claim lasts without renewal (renewed every third of it)

# Every table here names a person (a phone number or an identity): all are cleaned by forget.
TABLES = ("sms_messages", "sms_rate_notes", "sms_link_codes", "sms_links")

# Step 1 once also created sms_opt_outs, which bot.privacy converts to keyed opt-outs and drops; a
# database made now never has it. Steps 1-2 are what existing SQLite files carry (versions unchanged).
_STEP1 = """
    CREATE TABLE sms_messages (
        message_sid TEXT PRIMARY KEY,
        from_number TEXT NOT NULL,
        received_at {real} NOT NULL,
        state TEXT NOT NULL
    );
    CREATE INDEX sms_messages_by_number ON sms_messages (from_number, state, received_at);
    CREATE TABLE sms_rate_notes (
        number TEXT PRIMARY KEY,
        noted_at {real} NOT NULL
    );
    CREATE TABLE sms_link_codes (
        identity TEXT PRIMARY KEY,
        code_hash TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        expires_at {real} NOT NULL
    );
    CREATE TABLE sms_links (
        number TEXT PRIMARY KEY,
        identity TEXT NOT NULL,
        display_name TEXT NOT NULL,
        linked_at {real} NOT NULL
    );
    CREATE INDEX sms_links_by_identity ON sms_links (identity);
"""
# 2: durable messages: the text until it is answered, the reply while it is being sent.
_STEP2 = """
    ALTER TABLE sms_messages ADD COLUMN body TEXT;
    ALTER TABLE sms_messages ADD COLUMN num_media INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sms_messages ADD COLUMN reply TEXT;
    ALTER TABLE sms_messages ADD COLUMN sent_segments INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sms_messages ADD COLUMN updated_at {real};
    CREATE INDEX sms_messages_by_state ON sms_messages (state, received_at);
"""
# 3: leases, so several processes share one database's messages (rows from before have none: free).
_STEP3 = """
    ALTER TABLE sms_messages ADD COLUMN lease_owner TEXT;
    ALTER TABLE sms_messages ADD COLUMN lease_until {real};
"""
MIGRATIONS = [{"sqlite": step.format(real="REAL"), "postgresql": step.format(real="DOUBLE PRECISION")}
              for step in (_STEP1, _STEP2, _STEP3)]

UNFINISHED = ("received", "accepted", "replying", "sending")
# States that count towards a number's rate limit: every message we decided to answer.
_ANSWERING = ("accepted", "replying", "sending", "answered", "failed", "suppressed")
_UNF = ",".join("?" * len(UNFINISHED))


class Claim(StrEnum):
    """What :meth:`SmsRecords.claim` found for a MessageSid."""

    NEW = "new"  # first time: recorded (text and sender) as ``received``, its lease ours
    UNFINISHED = "unfinished"  # seen before, not finished, and its lease is now ours (a crash, or ours already)
    ELSEWHERE = "elsewhere"  # seen before, not finished, and a live holder is answering it
    DONE = "done"  # seen and finished (or forgotten): a retry or a replay, never answered again


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


def _marks(values: Iterable[object]) -> str:
    return ",".join("?" for _ in values)


class SmsRecords:
    """The ``sms`` tables. Call :meth:`migrate` once before use.

    ``owner`` names this holder's leases (one per service; a fresh one by default); ``lease`` is
    their length in seconds; ``clock`` returns Unix seconds (tests pass their own).
    """

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time, owner: LeaseOwner | None = None,
                 lease: float = LEASE_SECONDS) -> None:
        self.db = db
        self._clock = clock
        self.owner = owner or LeaseOwner()
        self.lease = lease

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.db!r}, owner={self.owner.name!r})"

    async def migrate(self) -> None:
        await self.db.migrate(COMPONENT, MIGRATIONS)

    @property
    def _me(self) -> str:
        return self.owner.name

    # --- the message's life -------------------------------------------------------------------

    async def claim(self, message_sid: str, number: str, body: str = "", num_media: int = 0) -> Claim:
        """Record a message (text and sender, durably) with its lease ours, unless its SID is known;
        for a known unfinished SID, take its lease if nobody live holds it. Say what was found."""
        # Single statements, each atomic, no transaction around them: the compare-and-set makes the
        # sequence safe, and no write lock is held while the caller's event loop does other work.
        now = self._clock()
        added = await self.db.execute(
            "INSERT INTO sms_messages (message_sid, from_number, received_at, state, body, num_media, updated_at, "
            "lease_owner, lease_until) VALUES (?, ?, ?, 'received', ?, ?, ?, ?, ?) "
            "ON CONFLICT (message_sid) DO NOTHING",
            (message_sid, number, now, body, int(num_media), now, self._me, now + self.lease),
        )
        if added == 1:
            return Claim.NEW
        row = await self.db.query_one("SELECT state, lease_owner, lease_until FROM sms_messages WHERE message_sid = ?",
                                      (message_sid,))
        if row is None or row["state"] not in UNFINISHED:
            return Claim.DONE
        if row["lease_owner"] == self._me:
            return Claim.UNFINISHED
        if not self._takeable(row["lease_owner"], row["lease_until"], now):
            return Claim.ELSEWHERE
        took = await self._take(self.db, message_sid, row["lease_owner"], row["lease_until"], now)
        return Claim.UNFINISHED if took else Claim.ELSEWHERE

    def _takeable(self, owner: str | None, until: float | None, now: float) -> bool:
        if (until or 0.0) <= now:
            return True  # expired, or never leased (a row from before leases)
        return owner is not None and owner_alive(owner) is False

    async def _take(self, tx: Database, sid: str, owner: str | None, until: float | None, now: float) -> bool:
        # Compare-and-set on the lease as read: a second taker in between makes this a no-op.
        return await tx.execute(
            f"UPDATE sms_messages SET lease_owner = ?, lease_until = ? WHERE message_sid = ? AND state IN ({_UNF}) "
            "AND COALESCE(lease_owner, '') = ? AND COALESCE(lease_until, 0) = ?",
            (self._me, now + self.lease, sid, *UNFINISHED, owner or "", float(until or 0.0)),
        ) == 1

    async def take_unfinished(self, limit: int = 100, *, resting: bool = False) -> list[PendingSms]:
        """Take the leases of unfinished messages nobody live holds (oldest first) and return them.

        What a start-up and every sweep finish: rows whose lease expired, rows from before leases,
        and rows whose owner provably died on this machine. Never a row a live process holds.
        ``resting``: also rows a holder left to rest (released with ``not_before``), as a start does.
        """
        now = self._clock()
        held = await self.db.query(
            f"SELECT DISTINCT lease_owner FROM sms_messages WHERE state IN ({_UNF}) AND lease_owner IS NOT NULL "
            "AND lease_owner != ? AND lease_until > ?", (*UNFINISHED, self._me, now))
        dead = sorted(str(r[0]) for r in held if owner_alive(str(r[0])) is False)
        where = f"state IN ({_UNF}) AND (COALESCE(lease_until, 0) <= ?"
        params: list[object] = [*UNFINISHED, now]
        if resting:
            where += " OR lease_owner IS NULL"
        if dead:
            where += f" OR lease_owner IN ({_marks(dead)})"
            params += dead
        where += ")"
        # One statement (atomic on both; no write lock held across awaits). PostgreSQL: rows another
        # sweeper is taking right now are skipped, not waited for; the outer WHERE re-checks each row.
        lock = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgresql" else ""
        taken = await self.db.query(
            f"UPDATE sms_messages SET lease_owner = ?, lease_until = ? WHERE message_sid IN "
            f"(SELECT message_sid FROM sms_messages WHERE {where} ORDER BY received_at, message_sid LIMIT ?{lock}) "
            f"AND {where} RETURNING *", (self._me, now + self.lease, *params, int(limit), *params))
        return sorted((_pending(r) for r in taken), key=lambda p: (p.received_at, p.message_sid))

    async def renew(self, message_sids: Iterable[str] | None = None) -> int:
        """Extend this holder's leases on unfinished messages (only ``message_sids``, when given: the
        ones it is working on, so one it took but dropped expires and is taken again); returns how many."""
        sql = f"UPDATE sms_messages SET lease_until = ? WHERE lease_owner = ? AND state IN ({_UNF})"
        if message_sids is None:
            return await self.db.execute(sql, (self._clock() + self.lease, self._me, *UNFINISHED))
        sids = sorted(set(message_sids))
        renewed = 0
        for start in range(0, len(sids), 500):
            chunk = sids[start:start + 500]
            renewed += await self.db.execute(f"{sql} AND message_sid IN ({_marks(chunk)})",
                                             (self._clock() + self.lease, self._me, *UNFINISHED, *chunk))
        return renewed

    async def release(self, message_sid: str | None = None, *, not_before: float = 0.0) -> int:
        """Give up this holder's lease on one message (or all): free at once, or after ``not_before`` seconds."""
        sql = f"UPDATE sms_messages SET lease_owner = NULL, lease_until = ? WHERE lease_owner = ? AND state IN ({_UNF})"
        params: list[object] = [self._clock() + not_before if not_before else 0.0, self._me, *UNFINISHED]
        if message_sid is not None:
            sql += " AND message_sid = ?"
            params.append(message_sid)
        return await self.db.execute(sql, params)

    async def holds(self, message_sid: str) -> bool:
        """Whether this holder still has the message, unfinished (not forgotten, not taken over)."""
        return await self.db.scalar(
            f"SELECT 1 FROM sms_messages WHERE message_sid = ? AND lease_owner = ? AND state IN ({_UNF})",
            (message_sid, self._me, *UNFINISHED)) is not None

    async def advance(self, message_sid: str, from_states: str | tuple[str, ...], to: str, *,
                      reply: list[str] | None = None, failure: str | None = None,
                      sent_segments: int | None = None) -> bool:
        """Move one message ``from_states`` → ``to``; False if it was not in them or not ours.

        False means someone else moved it or holds it now, or the row is gone (the person was
        forgotten): either way the caller must not act on it any more. Finishing clears the text,
        the reply and the lease.
        """
        froms = (from_states,) if isinstance(from_states, str) else from_states
        sets = ["state = ?", "updated_at = ?"]
        params: list[object] = [to, self._clock()]
        if to not in UNFINISHED:
            sets += ["body = NULL", "reply = NULL", "lease_owner = NULL", "lease_until = NULL"]
        if reply is not None:
            sets.append("reply = ?")
            params.append(json.dumps({"segments": reply, "failure": failure}))
        if sent_segments is not None:
            sets.append("sent_segments = ?")
            params.append(int(sent_segments))
        return await self.db.execute(
            f"UPDATE sms_messages SET {', '.join(sets)} WHERE message_sid = ? AND state IN ({_marks(froms)}) "
            "AND lease_owner = ?", (*params, message_sid, *froms, self._me)) == 1

    async def segment_sent(self, message_sid: str, count: int) -> bool:
        """Record that the first ``count`` segments of a ``sending`` reply were created by Twilio."""
        return await self.db.execute(
            "UPDATE sms_messages SET sent_segments = ?, updated_at = ? WHERE message_sid = ? AND state = 'sending' "
            "AND lease_owner = ?", (int(count), self._clock(), message_sid, self._me)) == 1

    async def set_state(self, message_sid: str, state: str) -> bool:
        """Record how handling ended (``ignored``, ``keyword:stop``, ``linked``...) from wherever it was."""
        return await self.advance(message_sid, UNFINISHED, state)

    async def pending(self, message_sid: str) -> PendingSms | None:
        row = await self.db.query_one(f"SELECT * FROM sms_messages WHERE message_sid = ? AND state IN ({_UNF})",
                                      (message_sid, *UNFINISHED))
        return _pending(row) if row is not None else None

    async def unfinished(self) -> list[PendingSms]:
        """Every unfinished message, whoever holds it, oldest first (what a shutdown reports)."""
        rows = await self.db.query(f"SELECT * FROM sms_messages WHERE state IN ({_UNF}) "
                                   "ORDER BY received_at, message_sid", UNFINISHED)
        return [_pending(r) for r in rows]

    async def held(self) -> list[PendingSms]:
        """The unfinished messages this holder has, oldest first."""
        rows = await self.db.query(f"SELECT * FROM sms_messages WHERE lease_owner = ? AND state IN ({_UNF}) "
                                   "ORDER BY received_at, message_sid", (self._me, *UNFINISHED))
        return [_pending(r) for r in rows]

    async def state_of(self, message_sid: str) -> str | None:
        value = await self.db.scalar("SELECT state FROM sms_messages WHERE message_sid = ?", (message_sid,))
        return None if value is None else str(value)

    async def counts_by_state(self) -> dict[str, int]:
        rows = await self.db.query("SELECT state, COUNT(*) FROM sms_messages GROUP BY state")
        return {str(r[0]): int(r[1]) for r in rows}

    # --- rate limit ---------------------------------------------------------------------------

    async def admit(self, message_sid: str, number: str, limit: int, window: float = RATE_WINDOW) -> Admission:
        """Decide whether ``number`` may have this claimed message answered, and record the decision.

        Only messages we decided to answer count towards the limit, so the window passes
        ``window`` seconds after the oldest answered message however much the person keeps texting.
        Two processes deciding for one number at once take turns (SQLite: one writer; PostgreSQL: a
        transaction-scoped advisory lock on the number), so the limit holds across processes.
        """
        now = self._clock()
        # The decision and the state move are one UPDATE (the count is its subquery); the note is one
        # upsert that only the first over-limit message of a window wins.
        decide = (f"UPDATE sms_messages SET state = CASE WHEN (SELECT COUNT(*) FROM sms_messages WHERE "
                  f"from_number = ? AND state IN ({_marks(_ANSWERING)}) AND received_at > ? AND message_sid != ?) "
                  "< ? THEN 'accepted' ELSE 'limited' END, updated_at = ? "
                  "WHERE message_sid = ? AND state = 'received' AND lease_owner = ? RETURNING state")
        params = (number, *_ANSWERING, now - window, message_sid, int(limit), now, message_sid, self._me)
        note = ("INSERT INTO sms_rate_notes (number, noted_at) VALUES (?, ?) ON CONFLICT (number) DO UPDATE SET "
                "noted_at = excluded.noted_at WHERE sms_rate_notes.noted_at <= ? RETURNING number")
        if self.db.dialect == "postgresql":
            # Under READ COMMITTED two UPDATEs for one number could both count below the limit: they
            # take turns on a transaction-scoped advisory lock on the number.
            async with self.db.transaction() as tx:
                await tx.execute("SELECT pg_advisory_xact_lock(?)", (zlib.crc32(f"voicebot-sms-rate:{number}".encode()),))
                state = await tx.scalar(decide, params)
                noted = await tx.query_one(note, (number, now, now - window)) if state == "limited" else None
        else:  # SQLite: each statement holds the one write lock; no transaction left open across awaits
            state = await self.db.scalar(decide, params)
            noted = await self.db.query_one(note, (number, now, now - window)) if state == "limited" else None
        if state != "limited":
            return Admission.ACCEPT  # accepted (or not ours any more: the caller's next move fails)
        return Admission.NOTE if noted is not None else Admission.SILENT

    # --- retention and forget -----------------------------------------------------------------

    async def prune(self, retention: float = DEDUPE_RETENTION) -> int:
        """Drop SIDs, notes and codes too old to matter; returns rows removed."""
        now = self._clock()  # three independent deletes, each atomic (no lock held across awaits)
        removed = await self.db.execute(f"DELETE FROM sms_messages WHERE received_at < ? AND state NOT IN ({_UNF})",
                                        (now - retention, *UNFINISHED))
        removed += await self.db.execute("DELETE FROM sms_rate_notes WHERE noted_at < ?", (now - RATE_WINDOW,))
        removed += await self.db.execute("DELETE FROM sms_link_codes WHERE expires_at < ?", (now,))
        return removed

    async def numbers_linked_to(self, identities: Iterable[str]) -> set[str]:
        """Phone numbers the links table ties to any of ``identities``."""
        ids = sorted(set(identities))
        if not ids:
            return set()
        rows = await self.db.query(f"SELECT number FROM sms_links WHERE identity IN ({_marks(ids)})", ids)
        return {str(r[0]) for r in rows}

    async def forget(self, identities: Iterable[str]) -> dict[str, int]:
        """Delete every SMS row naming ``identities`` (``phone:{e164}``, ``discord:{id}``...) or a number
        linked to them; returns counts by kind (``sms record``, ``bookkeeping``, ``linked phone``, ``link code``)."""
        ids = set(identities)
        async with self.db.transaction() as tx:
            ids |= {f"phone:{n}" for n in await self.numbers_linked_to(ids)}
            numbers = sorted(i.partition(":")[2] for i in ids if i.startswith("phone:"))
            idl = sorted(ids)
            out = {"sms record": 0, "bookkeeping": 0, "linked phone": 0, "link code": 0}
            if numbers:
                out["sms record"] = await tx.execute(
                    f"DELETE FROM sms_messages WHERE from_number IN ({_marks(numbers)})", numbers)
                out["bookkeeping"] = await tx.execute(
                    f"DELETE FROM sms_rate_notes WHERE number IN ({_marks(numbers)})", numbers)
            if idl:
                out["linked phone"] = await tx.execute(
                    f"DELETE FROM sms_links WHERE identity IN ({_marks(idl)})"
                    + (f" OR number IN ({_marks(numbers)})" if numbers else ""), [*idl, *numbers])
                out["link code"] = await tx.execute(f"DELETE FROM sms_link_codes WHERE identity IN ({_marks(idl)})", idl)
        return out

    # --- link codes and links -----------------------------------------------------------------

    async def create_link_code(self, identity: str, display_name: str, ttl: float = LINK_CODE_TTL) -> LinkCode:
        """A fresh 6-digit code for ``identity`` (replacing any earlier one), unique among live codes."""
        now = self._clock()
        for _attempt in range(5):
            try:
                async with self.db.transaction() as tx:
                    await tx.execute("DELETE FROM sms_link_codes WHERE expires_at < ? OR identity = ?", (now, identity))
                    while True:
                        code = f"{secrets.randbelow(1_000_000):06d}"
                        if await tx.query_one("SELECT 1 FROM sms_link_codes WHERE code_hash = ?",
                                              (_hash_code(code),)) is None:
                            break
                    await tx.execute(
                        "INSERT INTO sms_link_codes (identity, code_hash, display_name, expires_at) VALUES (?, ?, ?, ?)",
                        (identity, _hash_code(code), display_name, now + ttl))
                return LinkCode(code=code, identity=identity, expires_at=now + ttl)
            except IntegrityError:
                continue  # another process issued the same code (or a code for this identity) at this moment
        raise IntegrityError("could not issue a unique link code")

    async def consume_link_code(self, code: str, number: str) -> PhoneLink | None:
        """Use ``code`` to link ``number``; returns the new link, or None if unknown or expired.

        A code works once (the DELETE has one winner). Linking a number replaces whatever that
        number was linked to before.
        """
        now = self._clock()
        async with self.db.transaction() as tx:
            row = await tx.query_one("DELETE FROM sms_link_codes WHERE code_hash = ? "
                                     "RETURNING identity, display_name, expires_at", (_hash_code(code),))
            if row is None or float(row["expires_at"]) < now:
                return None
            link = PhoneLink(number, str(row["identity"]), str(row["display_name"]), now)
            await tx.execute(
                "INSERT INTO sms_links (number, identity, display_name, linked_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (number) DO UPDATE SET identity = excluded.identity, "
                "display_name = excluded.display_name, linked_at = excluded.linked_at",
                (link.number, link.identity, link.display_name, link.linked_at))
        return link

    async def link_for_number(self, number: str) -> PhoneLink | None:
        row = await self.db.query_one("SELECT * FROM sms_links WHERE number = ?", (number,))
        return _link(row) if row is not None else None

    async def links_for_identity(self, identity: str) -> list[PhoneLink]:
        rows = await self.db.query("SELECT * FROM sms_links WHERE identity = ? ORDER BY linked_at", (identity,))
        return [_link(r) for r in rows]

    async def remove_links(self, identity: str) -> list[PhoneLink]:
        """Remove every phone linked to ``identity`` (and its pending code); returns what was removed."""
        async with self.db.transaction() as tx:
            links = await self.links_for_identity(identity)
            await tx.execute("DELETE FROM sms_links WHERE identity = ?", (identity,))
            await tx.execute("DELETE FROM sms_link_codes WHERE identity = ?", (identity,))
        return links


def _pending(row: Row) -> PendingSms:
    stored = json.loads(row["reply"]) if row["reply"] else {}
    received = float(row["received_at"])
    return PendingSms(str(row["message_sid"]), str(row["from_number"]), row["body"], int(row["num_media"] or 0),
                      str(row["state"]), received, float(row["updated_at"] or received),
                      tuple(stored.get("segments", ())), stored.get("failure"), int(row["sent_segments"] or 0))


def _link(row: Row) -> PhoneLink:
    return PhoneLink(str(row["number"]), str(row["identity"]), str(row["display_name"]), float(row["linked_at"]))


from bot.store import registry as _schemas  # noqa: E402  (tools that open a database know this schema)

_schemas.register(COMPONENT, MIGRATIONS)
