"""Making a fake charge for new connections, as a TLS handshake over the internet would.

A real provider is reached through TCP and TLS: every new connection costs a round trip or two
before the first byte of the answer. The loopback fakes answer at once, so without this a client
that opens a fresh connection per request looks as fast as one that keeps its connection warm.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["connection_cost_middleware"]


def connection_cost_middleware(delay: float, counter: list[int] | None = None) -> Callable[..., Awaitable[web.StreamResponse]]:
    """An aiohttp middleware that waits ``delay`` seconds before the first request of each new
    connection (keep-alive requests on a connection already used pay nothing).

    ``counter`` (a one-item list) counts the new connections seen.
    """
    seen: weakref.WeakSet[object] = weakref.WeakSet()

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        transport = request.transport  # one per TCP connection (aiohttp's protocol is not weak-referenceable)
        if transport is not None and transport not in seen:
            seen.add(transport)
            if counter is not None:
                counter[0] += 1
            if delay > 0:
                await asyncio.sleep(delay)  # simulated handshake time, not synchronisation
        return await handler(request)

    return middleware
