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
memory: the webhook and the WebSocket of one call reach the same process within seconds. Behind a
load balancer, route ``/twilio/*`` of one call to one process until the state lives in the database.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

__all__ = ["CallGrant", "CallTokens", "StreamTokens"]


@dataclass(frozen=True)
class CallGrant:
    """What the webhook learned about the call, handed to its media socket."""

    call_sid: str
    caller: str  # E.164 of the person calling
    called: str  # our number
    expires_at: float


class CallTokens(Protocol):
    """The token state of calls (in memory today; in the database for several processes)."""

    def issue(self, call_sid: str, caller: str, called: str) -> str | None:
        """The call's token: a new one, the same one again while unused, or None once it was used,
        expired or the call ended."""

    def redeem(self, token: str) -> CallGrant | None:
        """The grant for ``token`` if it is live; the token is spent either way."""

    def end_call(self, call_sid: str) -> None:
        """The call ended: its token, used or not, admits nothing and none is issued again."""

    def pending(self) -> int:
        """Tokens issued and not yet used or expired (calls about to connect)."""

    def seen(self, call_sid: str) -> bool:
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

    def __len__(self) -> int:
        return self.pending()

    def pending(self) -> int:
        self._expire()
        return len(self._tokens)

    def seen(self, call_sid: str) -> bool:
        self._expire()
        return call_sid in self._calls

    def issue(self, call_sid: str, caller: str, called: str) -> str | None:
        self._expire()
        call = self._calls.get(call_sid)
        if call is not None:
            return call.token if call.state is _State.PENDING else None
        token = secrets.token_urlsafe(24)
        now = self.clock()
        self._calls[call_sid] = _Call(token, CallGrant(call_sid, caller, called, now + self.ttl), _State.PENDING, now)
        self._tokens[token] = call_sid
        return token

    def redeem(self, token: str) -> CallGrant | None:
        self._expire()
        call_sid = self._tokens.pop(token, None)
        call = self._calls.get(call_sid) if call_sid is not None else None
        if call is None or call.state is not _State.PENDING:
            return None
        call.state = _State.CONNECTED
        return call.grant

    def end_call(self, call_sid: str) -> None:
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
