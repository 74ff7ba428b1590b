"""Discord's REST rate limits, as the loopback Discord enforces them.

Discord limits a bot per route *bucket* and globally, and tells the client where it stands on every
answer (``X-RateLimit-Limit``, ``-Remaining``, ``-Reset``, ``-Reset-After``, ``-Bucket``). A request
past a limit gets 429 with JSON ``{"message", "retry_after", "global"}``, a ``Retry-After`` header and
``X-RateLimit-Scope`` (plus ``X-RateLimit-Global: true`` for the global limit). discord.py reads the
headers and waits before it would go over, so a well-behaved bot never sees a 429 here; one that
does is recorded as a problem by the REST API.

Facts used (discord.com/developers/docs/topics/rate-limits and what bots observe):

- The global limit is 50 requests per second per bot token; interaction and webhook-token routes
  (``/interactions/...``, ``/webhooks/{id}/{token}...``) are not bound to it.
- Per-route limits count separately for each top-level resource in the path (a channel, a guild,
  a webhook id + token), so two channels never share a budget; the bucket hash excludes it.
- Observed per-route limits for the routes this bot uses: creating messages 5 per 5 s per channel,
  editing them 5 per 5 s, deleting 5 per 1 s, typing 5 per 5 s, interaction follow-ups 5 per 2 s per
  interaction token. Discord documents no figure for the voice-channel status; it gets the 5 per 5 s
  of the other channel writes.
- Windows are fixed: the first request opens one, and it resets ``per`` seconds later.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["GLOBAL_LIMIT", "GLOBAL_PER", "ROUTE_LIMITS", "Decision", "RateLimiter", "RouteLimit"]

GLOBAL_LIMIT = 50
GLOBAL_PER = 1.0


@dataclass(frozen=True)
class RouteLimit:
    """One bucket: ``limit`` requests per ``per`` seconds for each value of the ``major`` path parameters."""

    bucket: str  # routes naming the same bucket share it
    limit: int
    per: float
    major: tuple[str, ...] = ()


_CHANNEL = ("channel_id",)
_WEBHOOK = ("application_id", "token")
_INTERACTION = ("interaction_id", "token")

ROUTE_LIMITS: dict[str, RouteLimit] = {
    "POST /channels/{channel_id}/messages": RouteLimit("message-create", 5, 5.0, _CHANNEL),
    "PATCH /channels/{channel_id}/messages/{message_id}": RouteLimit("message-edit", 5, 5.0, _CHANNEL),
    "DELETE /channels/{channel_id}/messages/{message_id}": RouteLimit("message-delete", 5, 1.0, _CHANNEL),
    "POST /channels/{channel_id}/typing": RouteLimit("typing", 5, 5.0, _CHANNEL),
    "PUT /channels/{channel_id}/voice-status": RouteLimit("voice-status", 5, 5.0, _CHANNEL),
    # One bucket for everything done with an interaction token (discord.py serialises these per token).
    "POST /webhooks/{application_id}/{token}": RouteLimit("webhook", 5, 2.0, _WEBHOOK),
    "GET /webhooks/{application_id}/{token}/messages/{message_id}": RouteLimit("webhook", 5, 2.0, _WEBHOOK),
    "PATCH /webhooks/{application_id}/{token}/messages/{message_id}": RouteLimit("webhook", 5, 2.0, _WEBHOOK),
    "DELETE /webhooks/{application_id}/{token}/messages/{message_id}": RouteLimit("webhook", 5, 2.0, _WEBHOOK),
    "POST /interactions/{interaction_id}/{token}/callback": RouteLimit("interaction-callback", 5, 5.0, _INTERACTION),
}
# Routes not listed (identity, gateway, command sync, fetches): a roomy bucket per route, so every
# answer still carries headers discord.py can use.
_DEFAULT = (50, 1.0)
# Routes that answer to an interaction token rather than the bot token.
_GLOBAL_EXEMPT_PREFIXES = ("/interactions/", "/webhooks/")


def _ceil_ms(seconds: float) -> float:
    return max(0.0, math.ceil(seconds * 1000.0) / 1000.0)


@dataclass
class _Window:
    limit: int
    per: float
    used: int = 0
    reset_at: float = 0.0

    def wait(self, now: float) -> float:
        """Seconds until a request would be allowed (0: now), rolling the window over if it ended."""
        if now >= self.reset_at:
            self.used, self.reset_at = 0, now + self.per
        return 0.0 if self.used < self.limit else self.reset_at - now


@dataclass(frozen=True)
class Decision:
    """What to answer: ``retry_after`` 0 means go ahead; the headers go on the answer either way."""

    retry_after: float
    is_global: bool
    headers: dict[str, str]
    bucket: str

    @property
    def allowed(self) -> bool:
        return self.retry_after <= 0.0

    def body(self) -> dict[str, object]:
        return {"message": "You are being rate limited.", "retry_after": self.retry_after,
                "global": self.is_global}


@dataclass
class RateLimiter:
    """Per-bucket and global windows; :meth:`check` decides one request and counts it if allowed."""

    limits: dict[str, RouteLimit] = field(default_factory=lambda: dict(ROUTE_LIMITS))
    global_limit: int = GLOBAL_LIMIT
    global_per: float = GLOBAL_PER
    clock: Callable[[], float] = time.monotonic
    _windows: dict[tuple[str, tuple[str, ...]], _Window] = field(default_factory=dict)
    _global: _Window | None = None

    def _limit_for(self, route: str) -> RouteLimit:
        found = self.limits.get(route)
        if found is not None:
            return found
        return RouteLimit(route, *_DEFAULT)

    def check(self, route: str, path: str, params: dict[str, str]) -> Decision:
        now = self.clock()
        spec = self._limit_for(route)
        key = (spec.bucket, tuple(params.get(p, "") for p in spec.major))
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) > 10_000:  # a long simulate run: forget windows that have ended
                self._windows = {k: w for k, w in self._windows.items() if w.reset_at > now}
            window = self._windows[key] = _Window(spec.limit, spec.per)
        bucket_hash = hashlib.sha1(spec.bucket.encode()).hexdigest()[:16]
        route_wait = window.wait(now)
        exempt = path.startswith(_GLOBAL_EXEMPT_PREFIXES)
        if self._global is None:
            self._global = _Window(self.global_limit, self.global_per)
        global_wait = 0.0 if exempt else self._global.wait(now)
        if route_wait <= 0.0 and global_wait <= 0.0:
            window.used += 1
            if not exempt:
                self._global.used += 1
        headers = self._headers(window, now, bucket_hash)
        if route_wait > 0.0:
            retry = _ceil_ms(route_wait)
            headers.update({"X-RateLimit-Scope": "user", "Retry-After": str(math.ceil(retry))})
            return Decision(retry, False, headers, spec.bucket)
        if global_wait > 0.0:
            retry = _ceil_ms(global_wait)
            # A global 429 carries no bucket figures: the route's own budget was never reached.
            headers = {"X-RateLimit-Global": "true", "X-RateLimit-Scope": "global",
                       "Retry-After": str(math.ceil(retry)), "Via": "1.1 google"}
            return Decision(retry, True, headers, "global")
        return Decision(0.0, False, headers, spec.bucket)

    @staticmethod
    def _headers(window: _Window, now: float, bucket_hash: str) -> dict[str, str]:
        # Rounded up to the millisecond: a client that waits exactly this long must find the window
        # rolled over, never a few microseconds early.
        reset_after = _ceil_ms(window.reset_at - now)
        return {
            "X-RateLimit-Limit": str(window.limit),
            "X-RateLimit-Remaining": str(max(0, window.limit - window.used)),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": bucket_hash,
            # discord.py treats a 429 without Via as a Cloudflare ban; Discord's edge always sends it.
            "Via": "1.1 google",
        }
