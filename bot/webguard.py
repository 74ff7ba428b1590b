"""The web server's front door: what keeps ``/healthz`` and the webhooks answering while some
clients hold connections open without finishing a request (Slowloris).

aiohttp reads a request's head with no deadline and accepts every connection the kernel hands
it, so 1,050 connections that each send a header line every few seconds use up a 1,024-descriptor
process: ``accept()`` then fails with EMFILE, asyncio logs it with a traceback up to 128 times
per second, and nobody else is answered. Three rules, applied to each connection before aiohttp
sees it (a protocol wrapped around aiohttp's ``RequestHandler``):

- a connection must deliver its first request's head within ``header_timeout`` of opening, or it
  is closed (aiohttp's keep-alive timeout then covers the heads of later requests on it);
- at most ``max_per_address`` connections from one client address (and never more than half of
  ``max_connections``), and ``max_connections`` in all (a share of the process's descriptor limit,
  so accepting never runs the process out): over either, the connection is closed as soon as it is
  accepted;
- refusals, and asyncio's ``accept()`` failures should the process run out of descriptors anyway,
  are logged as one line when they start and one line per ``log_interval`` after that.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import resource
from collections.abc import Callable
from typing import Any

__all__ = ["ConnectionGuard", "HEADER_TIMEOUT", "MAX_PER_ADDRESS", "default_max_connections"]

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 15.0  # a request head is a few hundred bytes: a client this slow is not a browser or Twilio
# A proxy on this machine (all of Twilio's webhooks from 127.0.0.1) or a NAT carries many clients on
# one address: room for a burst of a few hundred webhooks, still a fraction of the descriptors.
MAX_PER_ADDRESS = 256
LOG_INTERVAL = 60.0
_ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message (selector_events)
# An empty line ends a request's head; a line end is CRLF or, leniently, LF.
_HEAD_ENDS = (b"\n\r\n", b"\n\n")


def default_max_connections(backlog: int = 128) -> int:
    """Connections the server may hold: the descriptor limit less a reserve for everything else
    the process opens (database, Discord, voice, speech services) and for one burst of accepts
    (asyncio accepts up to ``backlog`` sockets before any of them is looked at)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    reserve = max(backlog + 64, soft // 4)
    return max(16, min(soft - reserve, 10_000))


class _Storm:
    """Events logged as one line when they start and one line per interval while they go on."""

    def __init__(self, what: str, more: str, interval: float) -> None:
        self.what = what  # "refusing connections": the first line
        self.more = more  # "connections refused": the count of those after it
        self.interval = interval
        self.count = 0  # not yet logged
        self.total = 0
        self.details: collections.Counter[str] = collections.Counter()
        self._timer: asyncio.TimerHandle | None = None

    def hit(self, detail: str) -> None:
        self.total += 1
        if self._timer is None:
            log.warning("web server: %s (%s); more of these are summed up every %.0f s",
                        self.what, detail, self.interval)
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._summary)
            return
        self.count += 1
        self.details[detail] += 1

    def _summary(self) -> None:
        self._timer = None
        if self.count:
            self.flush()
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._summary)

    def flush(self) -> None:
        if self.count:
            top = ", ".join(f"{detail}: {n}" for detail, n in self.details.most_common(3))
            log.warning("web server: %d more %s (%s)", self.count, self.more, top)
        self.count = 0
        self.details.clear()

    def close(self) -> None:
        self.flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class ConnectionGuard:
    """The rules above for one listening server. :meth:`wrap` turns aiohttp's protocol factory into
    a guarded one; :meth:`install` takes over asyncio's reports of failed accepts until :meth:`close`."""

    def __init__(
        self,
        *,
        header_timeout: float = HEADER_TIMEOUT,
        max_per_address: int = MAX_PER_ADDRESS,
        max_connections: int | None = None,
        log_interval: float = LOG_INTERVAL,
    ) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections if max_connections is not None else default_max_connections()
        self.max_per_address = max(1, min(max_per_address, self.max_connections // 2))
        self.open: collections.Counter[str] = collections.Counter()  # client address -> connections
        self.refusals = _Storm("refusing connections", "connections refused", log_interval)
        self.timeouts = _Storm(f"closing connections that sent no complete request within {header_timeout:g} s",
                               "slow connections closed", log_interval)
        self.accept_failures = _Storm("accept() failed, the process is out of descriptors",
                                      "failed accept() calls", log_interval)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    @property
    def connections(self) -> int:
        return sum(self.open.values())

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(self, factory())

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``; the reason to refuse it instead, if any."""
        if self.open[address] >= self.max_per_address:
            return f"{address} has {self.max_per_address} open, the most one address may"
        if self.connections >= self.max_connections:
            return f"{self.max_connections} open in all, the most this process can hold"
        self.open[address] += 1
        return None

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]

    # ------------------------------------------------------------------ accept() failures

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self._exception)

    def _exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_FAILED:
            exc = context.get("exception")
            self.accept_failures.hit(getattr(exc, "strerror", None) or type(exc).__name__)
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def close(self) -> None:
        """Log what is still unreported and hand asyncio's error reports back."""
        for storm in (self.refusals, self.timeouts, self.accept_failures):
            storm.close()
        loop, self._loop = self._loop, None
        # Only when nothing installed itself after us: that one passes the reports on to us.
        if loop is not None and loop.get_exception_handler() == self._exception:
            loop.set_exception_handler(self._previous)


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the guard's rules (every callback is passed on)."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._address: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        refusal = self._guard.admit(address)
        if refusal is not None:
            self._guard.refusals.hit(refusal)
            transport.abort()  # the descriptor is free again at once
            return
        self._address = address
        self._deadline = asyncio.get_running_loop().call_later(self._guard.header_timeout, self._too_slow, transport)
        self._inner.connection_made(transport)

    def _too_slow(self, transport: asyncio.BaseTransport) -> None:
        self._deadline = None
        self._guard.timeouts.hit(f"from {self._address}")
        transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            seen = self._tail + data
            if any(end in seen for end in _HEAD_ENDS):
                self._deadline.cancel()
                self._deadline = None
                self._tail = b""
            else:
                self._tail = seen[-2:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is None:
            return  # refused: aiohttp never saw it
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._guard.release(self._address)
        self._address = None
        self._inner.connection_lost(exc)
