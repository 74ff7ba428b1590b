"""One stream token per call: it admits that call's media WebSocket once, and dies with the call.

The signed incoming-call webhook gets a token for its CallSid and puts it in the ``<Stream url>``
*path*: Twilio drops query strings from a stream URL (they do not reach the server), and the path is
known at the upgrade, so a connection without a live token is refused with 403 before any WebSocket
or audio exists. The token is spent at the upgrade; the ``start`` message must then name the same
CallSid (``<Parameter>`` values arrive only in ``start``, too late to refuse the upgrade).

One call, one token: a signed webhook can be replayed (Twilio's signature holds no time), so the
CallSid is what counts. The same webhook again before the stream connected (Twilio retrying an
answer it did not get) gets the same token; once the token was used, expired, or the call ended (a
status callback saying so, or the stream's own end), the CallSid gets none, ever — within
:attr:`StreamTokens.retention` and while this process lives.

:class:`CallTokens` is the interface the phone service uses. :class:`StreamTokens` keeps the state in
memory, for one process. :class:`DatabaseTokens` keeps it in the database every process of the bot
shares (``DATABASE_URL``): behind a load balancer the TwiML answer may come from one process and the
media WebSocket land on another, and a token is still spent once (a compare-and-set ``UPDATE``) and
dies after its 30 s wherever it is presented. The caller's number stays in the row only while the call
can still connect or is connected; the row itself goes after :attr:`DatabaseTokens.retention`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bot.store import Database

__all__ = ["CallGrant", "CallTokens", "DatabaseTokens", "StreamTokens"]


@dataclass(frozen=True)
class CallGrant:
    """What the webhook learned about the call, handed to its media socket."""

    call_sid: str
    caller: str  # E.164 of the person calling
    called: str  # our number
    expires_at: float


class CallTokens(Protocol):
    """The token state of calls (in memory for one process; in the database for several)."""

    async def issue(self, call_sid: str, caller: str, called: str) -> str | None:
        """The call's token: a new one, the same one again while unused, or None once it was used,
        expired or the call ended."""

    async def redeem(self, token: str) -> CallGrant | None:
        """The grant for ``token`` if it is live; the token is spent either way."""

    async def end_call(self, call_sid: str) -> None:
        """The call ended: its token, used or not, admits nothing and none is issued again."""

    async def pending(self) -> int:
        """Tokens this process issued and not yet used or expired (calls about to connect)."""

    async def seen(self, call_sid: str) -> bool:
        """Whether this call was given a token (its webhook came before)."""


class _State(Enum):
    PENDING = "pending"  # issued, not used yet
    CONNECTED = "connected"  # used by the call's stream
    ENDED = "ended"  # the call is over (or its token expired unused)


@dataclass
class _Call:
    token: str
    grant: CallGrant
    state: _State
    seen_at: float  # when the call was first seen (clock), for retention


class StreamTokens:
    """:class:`CallTokens` in memory, for one process.

    ``ttl`` is how long a token waits for its stream; ``retention`` how long a CallSid is
    remembered after it was first seen (a replay older than that, or after a restart, would get a
    token again); ``max_calls`` bounds the memory (the oldest calls are forgotten first).
    """

    def __init__(self, ttl: float = 30.0, *, clock: Callable[[], float] = time.monotonic,
                 retention: float = 86400.0, max_calls: int = 100_000) -> None:
        self.ttl = ttl
        self.clock = clock
        self.retention = retention
        self.max_calls = max_calls
        self._calls: OrderedDict[str, _Call] = OrderedDict()  # by CallSid, oldest first
        self._tokens: dict[str, str] = {}  # token -> CallSid, while pending

    async def pending(self) -> int:
        self._expire()
        return len(self._tokens)

    async def seen(self, call_sid: str) -> bool:
        self._expire()
        return call_sid in self._calls

    async def issue(self, call_sid: str, caller: str, called: str) -> str | None:
        self._expire()
        call = self._calls.get(call_sid)
        if call is not None:
            return call.token if call.state is _State.PENDING else None
        token = secrets.token_urlsafe(24)
        now = self.clock()
        self._calls[call_sid] = _Call(token, CallGrant(call_sid, caller, called, now + self.ttl), _State.PENDING, now)
        self._tokens[token] = call_sid
        return token

    async def redeem(self, token: str) -> CallGrant | None:
        self._expire()
        call_sid = self._tokens.pop(token, None)
        call = self._calls.get(call_sid) if call_sid is not None else None
        if call is None or call.state is not _State.PENDING:
            return None
        call.state = _State.CONNECTED
        return call.grant

    async def end_call(self, call_sid: str) -> None:
        call = self._calls.get(call_sid)
        if call is None:
            return
        call.state = _State.ENDED
        self._tokens.pop(call.token, None)

    def _expire(self) -> None:
        now = self.clock()
        for token, call_sid in list(self._tokens.items()):
            call = self._calls[call_sid]
            if call.grant.expires_at < now:
                call.state = _State.ENDED  # never connected in time: its call gets no second token
                del self._tokens[token]
        while self._calls:
            call_sid, oldest = next(iter(self._calls.items()))
            if len(self._calls) <= self.max_calls and now - oldest.seen_at <= self.retention:
                break
            self._calls.popitem(last=False)
            self._tokens.pop(oldest.token, None)


PHONE_TOKEN_STEPS = [
    """
    CREATE TABLE phone_call_tokens (
        call_sid TEXT PRIMARY KEY,
        token TEXT NOT NULL UNIQUE,
        caller TEXT NOT NULL,
        called TEXT NOT NULL,
        state TEXT NOT NULL,
        issued_by TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX phone_call_tokens_by_state ON phone_call_tokens (state, expires_at)
    """,
]


class DatabaseTokens:
    """:class:`CallTokens` in the database all processes share.

    ``issued_by`` names this process (its pending tokens count towards its own ``PHONE_MAX_CALLS``).
    Times are the database's clock on PostgreSQL (processes on several machines agree on a token's
    30 s), the machine's on SQLite; ``clock`` replaces both (tests).
    """

    def __init__(self, db: Database, *, issued_by: str = "", ttl: float = 30.0, retention: float = 86400.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.db = db
        self.issued_by = issued_by
        self.ttl = ttl
        self.retention = retention
        self.clock = clock
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def _now(self) -> float:
        if self.clock is not None:
            return self.clock()
        if self.db.dialect == "postgresql":
            return float(await self.db.scalar("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8"))
        return time.time()

    async def _prepare(self) -> float:
        async with self._ready_lock:
            if not self._ready:
                await self.db.migrate("phone_tokens", PHONE_TOKEN_STEPS)
                self._ready = True
        return await self._now()

    async def _expire(self, now: float) -> None:
        # Never connected in time: the call gets no second token, and its number is not kept.
        await self.db.execute("UPDATE phone_call_tokens SET state = ?, caller = '', called = '' "
                              "WHERE state = ? AND expires_at < ?", (_State.ENDED.value, _State.PENDING.value, now))
        await self.db.execute("DELETE FROM phone_call_tokens WHERE seen_at < ?", (now - self.retention,))

    async def issue(self, call_sid: str, caller: str, called: str) -> str | None:
        now = await self._prepare()
        await self._expire(now)
        # Twilio retrying the webhook may land on another process at the same moment: the first
        # insert wins and both answer with its token.
        await self.db.execute(
            "INSERT INTO phone_call_tokens (call_sid, token, caller, called, state, issued_by, expires_at, seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (call_sid) DO NOTHING",
            (call_sid, secrets.token_urlsafe(24), caller, called, _State.PENDING.value, self.issued_by,
             now + self.ttl, now))
        row = await self.db.query_one("SELECT token, state FROM phone_call_tokens WHERE call_sid = ?", (call_sid,))
        if row is None or row["state"] != _State.PENDING.value:
            return None
        return str(row["token"])

    async def redeem(self, token: str) -> CallGrant | None:
        now = await self._prepare()
        # Spent either way: a live token becomes connected, a dead one ends its call.
        row = await self.db.query_one(
            "UPDATE phone_call_tokens SET state = ? WHERE token = ? AND state = ? AND expires_at >= ? "
            "RETURNING call_sid, caller, called, expires_at",
            (_State.CONNECTED.value, token, _State.PENDING.value, now))
        if row is None:
            await self.db.execute("UPDATE phone_call_tokens SET state = ?, caller = '', called = '' "
                                  "WHERE token = ? AND state = ?", (_State.ENDED.value, token, _State.PENDING.value))
            return None
        return CallGrant(str(row["call_sid"]), str(row["caller"]), str(row["called"]), float(row["expires_at"]))

    async def end_call(self, call_sid: str) -> None:
        await self._prepare()
        await self.db.execute("UPDATE phone_call_tokens SET state = ?, caller = '', called = '' WHERE call_sid = ?",
                              (_State.ENDED.value, call_sid))

    async def pending(self) -> int:
        now = await self._prepare()
        return int(await self.db.scalar(
            "SELECT COUNT(*) FROM phone_call_tokens WHERE state = ? AND expires_at >= ? AND issued_by = ?",
            (_State.PENDING.value, now, self.issued_by)) or 0)

    async def seen(self, call_sid: str) -> bool:
        now = await self._prepare()
        return await self.db.scalar("SELECT 1 FROM phone_call_tokens WHERE call_sid = ? AND seen_at >= ?",
                                    (call_sid, now - self.retention)) is not None


from bot.store import registry as _schemas  # noqa: E402  (tools that open a database know this schema)

_schemas.register("phone_tokens", PHONE_TOKEN_STEPS)
