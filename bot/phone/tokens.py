"""Single-use, short-lived tokens that admit one call's media WebSocket.

The signed incoming-call webhook mints one per call and puts it in the ``<Stream url>`` *path*:
Twilio drops query strings from a stream URL (they do not reach the server), and the path is known
at the upgrade, so a connection without a live token is refused with 403 before any WebSocket or
audio exists. The token is spent at the upgrade; the ``start`` message must then name the same
CallSid (``<Parameter>`` values arrive only in ``start``, too late to refuse the upgrade).

Kept in memory: the webhook and the WebSocket of one call reach the same process within seconds.
Behind a load balancer, route ``/twilio/*`` of one call to one process (or move this to shared storage).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CallGrant", "StreamTokens"]


@dataclass(frozen=True)
class CallGrant:
    """What the webhook learned about the call, handed to its media socket."""

    call_sid: str
    caller: str  # E.164 of the person calling
    called: str  # our number
    expires_at: float


class StreamTokens:
    """Tokens → grants; ``redeem`` returns a grant at most once, before it expires."""

    def __init__(self, ttl: float = 30.0, *, clock: Callable[[], float] = time.monotonic,
                 max_pending: int = 1000) -> None:
        self.ttl = ttl
        self.clock = clock
        self.max_pending = max_pending
        self._pending: dict[str, CallGrant] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def issue(self, call_sid: str, caller: str, called: str) -> str:
        self._prune()
        while len(self._pending) >= self.max_pending:  # a webhook flood cannot grow this without bound
            self._pending.pop(next(iter(self._pending)))
        token = secrets.token_urlsafe(24)
        self._pending[token] = CallGrant(call_sid, caller, called, self.clock() + self.ttl)
        return token

    def redeem(self, token: str) -> CallGrant | None:
        """The grant for ``token`` if it is live; the token is spent either way."""
        grant = self._pending.pop(token, None)
        if grant is None or grant.expires_at < self.clock():
            return None
        return grant

    def revoke_call(self, call_sid: str) -> None:
        """The call ended before its stream connected: its token admits nothing."""
        for token in [t for t, g in self._pending.items() if g.call_sid == call_sid]:
            del self._pending[token]

    def _prune(self) -> None:
        now = self.clock()
        for token in [t for t, g in self._pending.items() if g.expires_at < now]:
            del self._pending[token]
