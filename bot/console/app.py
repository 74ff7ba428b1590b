"""The console's routes on the bot's aiohttp server: ``/``, ``/console/*``, ``/metrics``.

Access: bound to a loopback address (the default ``WEB_HOST=127.0.0.1``) nothing is asked of a
visitor beyond a ``Host`` header that names this machine literally (127.0.0.1, [::1] or localhost,
with the bound port), so a web page elsewhere cannot reach the console through a DNS name of its
own that resolves to 127.0.0.1 (DNS rebinding). Bound anywhere else, or with ``PUBLIC_URL`` set,
every console route needs ``CONSOLE_TOKEN`` (``Authorization: Bearer …``, or ``/?token=…`` once,
which sets a signed session cookie) and ``/metrics`` needs ``METRICS_TOKEN`` (or ``CONSOLE_TOKEN``);
without a token configured those routes answer 403 and say what to set. With ``PUBLIC_URL`` the
``Host`` must also be its host or this machine's. A wrong token is answered late, later for each
wrong one in a row from the same address. The playground's WebSocket also checks ``Origin``. The
Twilio routes and ``/healthz`` are not touched.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from bot.console.metrics import CONTENT_TYPE
from bot.console.playground import Playground

if TYPE_CHECKING:
    from bot.console.hub import Console
    from bot.settings import Settings

__all__ = ["mount", "console_url", "is_loopback", "CONSOLE_KEY", "MAX_EVENT_STREAMS"]

log = logging.getLogger(__name__)

CONSOLE_KEY: web.AppKey[Console] = web.AppKey("console")
COOKIE = "voicebot_console"
COOKIE_SECONDS = 12 * 3600  # a working day: the browser asks for the token again after that
MAX_EVENT_STREAMS = 8  # open console tabs at once; each costs one snapshot a second
# A tab that does not read its event stream is dropped: a snapshot write may wait this long for
# room, and no more than STALLED_BYTES may queue up unsent (the socket's own buffer is kept small).
EVENT_SEND_TIMEOUT = 10.0
STALLED_BYTES = 64 * 1024
EVENT_SOCKET_BUFFER = 32 * 1024
WRONG_TOKEN_DELAY = 1.0  # the first wrong token from an address waits this long, each next one twice as long
WRONG_TOKEN_MAX_DELAY = 30.0
WRONG_TOKEN_MEMORY = 4096  # addresses whose wrong tokens are remembered (the oldest are forgotten)
WRONG_TOKEN_FORGET = 600.0  # an address quiet this long since its last wrong token starts afresh
STATIC_FILES = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "pcm-worklet.js": "text/javascript",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to bind or a name in a ``Host`` header) is this machine, said
    literally: a loopback IP address or ``localhost``. A DNS name that merely starts with "127."
    is anyone's."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None] | None:
    """A ``Host`` header as (name, port or None); None when it is not a host name with a port."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[:end + 1], value[end + 1:]
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
    if not name:
        return None
    if not rest:
        return name.lower(), None
    if rest[0] != ":" or not rest[1:].isdigit() or len(rest) > 6:
        return None
    return name.lower(), int(rest[1:])


def console_url(settings: Settings, port: int) -> str:
    """The URL a person opens (on this machine, or the server's address with its token)."""
    host = settings.web_host
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def _static(name: str) -> bytes:
    return resources.files("bot.console").joinpath("static", name).read_bytes()


def _unauthorized() -> web.Response:
    return web.Response(status=401, text="A valid token is required (Authorization: Bearer …).\n",
                        headers={"WWW-Authenticate": 'Bearer realm="voicebot"'})


def _raw(text: str) -> bytes:
    """Header text back as the bytes that came (aiohttp keeps bytes that are not UTF-8 as surrogates)."""
    return text.encode("utf-8", "surrogateescape")


def session_cookie(token: str, expires: int) -> str:
    """The console's cookie: an expiry and a signature by the token (never the token itself, so a
    copied cookie is worth one session and says nothing of the token)."""
    mac = hmac.new(token.encode(), f"voicebot-console-session {expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


class _WrongTokens:
    """Wrong tokens in a row per client address, for answering each one later than the one before."""

    def __init__(self, delay: float, most: float, clock: Callable[[], float]) -> None:
        self.delay, self.most, self.clock = delay, most, clock
        self._count: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()

    def failed(self, address: str) -> float:
        """Count a wrong token from ``address``; the seconds to wait before answering it."""
        now = self.clock()
        n, last = self._count.pop(address, (0, now))
        n = 1 if now - last > WRONG_TOKEN_FORGET else n + 1
        self._count[address] = (n, now)
        while len(self._count) > WRONG_TOKEN_MEMORY:
            self._count.popitem(last=False)
        return min(self.most, self.delay * 2 ** min(n - 1, 16))

    def succeeded(self, address: str) -> None:
        self._count.pop(address, None)


class _Access:
    """Who may use which route; every refusal is one log line and a plain-text answer."""

    def __init__(self, settings: Settings, *, wrong_token_delay: float = WRONG_TOKEN_DELAY,
                 clock: Callable[[], float] = time.time) -> None:
        # With PUBLIC_URL the server is reached from outside, often through a proxy on this machine
        # (nginx's default proxy_pass sends Host: 127.0.0.1:PORT): the console then needs its token.
        self.open = is_loopback(settings.web_host) and not settings.public_url
        self.console_token = settings.console_token.get() if settings.console_token else None
        metrics = settings.metrics_token or settings.console_token
        self.metrics_token = metrics.get() if metrics else None
        self.public: tuple[str, int] | None = None
        if settings.public_url:
            parts = urlsplit(settings.public_url)
            self.public = ((parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80))
        self.secure_cookie = settings.public_url.startswith("https://") if settings.public_url else False
        self.clock = clock
        self.wrong = _WrongTokens(wrong_token_delay, WRONG_TOKEN_MAX_DELAY, time.monotonic)

    def host_allowed(self, request: web.Request) -> bool:
        """Loopback mode and behind PUBLIC_URL: the ``Host`` names this machine literally, with the
        port the request came in on, or PUBLIC_URL's host. Bound publicly without PUBLIC_URL any
        name is fine: the token guards, and a page elsewhere has none."""
        if not self.open and self.public is None:
            return True
        parsed = split_host(request.headers.get("Host", ""))
        if parsed is None:
            return False
        name, port = parsed
        if self.public is not None and name == self.public[0] and (port or self.public[1]) == self.public[1]:
            return True
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        bound = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
        return is_loopback(name) and (port or 80) == bound

    def token_valid(self, request: web.Request, token: str) -> bool | None:
        """Whether the request carries ``token`` (a bearer header, or the session cookie it signed);
        None when it carries nothing."""
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            return hmac.compare_digest(_raw(auth[7:].strip()), _raw(token))
        cookie = request.cookies.get(COOKIE)
        if cookie is None:
            return None
        expires, _, _mac = cookie.partition(".")
        if not expires.isdigit():
            return False
        if int(expires) < self.clock():
            return None  # a session that ended: not a guess at the token
        return hmac.compare_digest(_raw(cookie), _raw(session_cookie(token, int(expires))))

    async def refuse_wrong(self, request: web.Request, what: str) -> web.Response:
        """A wrong token: answered after a delay that doubles with each one in a row from there."""
        delay = self.wrong.failed(request.remote or "")
        log.info("console refused a request to %s: wrong %s (answered after %.0f s)", request.path, what, delay)
        await asyncio.sleep(delay)
        return _unauthorized()

    async def check(self, request: web.Request, *, metrics: bool = False) -> web.Response | None:
        """None when allowed, else the refusal to send."""
        if not self.host_allowed(request):
            host = request.headers.get("Host", "")
            log.info("console refused a request for host %r (not this machine's name)", host[:100])
            return web.Response(status=403, text="This console answers only at http://127.0.0.1:PORT/ or "
                                                 "http://localhost:PORT/ (or at PUBLIC_URL).\n")
        if self.open:
            return None
        token = self.metrics_token if metrics else self.console_token
        if token is None:
            var = "METRICS_TOKEN or CONSOLE_TOKEN" if metrics else "CONSOLE_TOKEN"
            return web.Response(status=403, text=f"The web server is reachable from outside: set {var} "
                                                 "to use this page.\n")
        valid = self.token_valid(request, token)
        if valid is None:
            log.info("console refused a request to %s: no token", request.path)
            return _unauthorized()
        if not valid:
            return await self.refuse_wrong(request, "token")
        self.wrong.succeeded(request.remote or "")
        return None


def _same_origin(request: web.Request) -> bool:
    """A browser's WebSocket must come from a page served here (browsers always send Origin)."""
    origin = request.headers.get("Origin")
    if not origin:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == request.host


def mount(app: web.Application, console: Console, *, wrong_token_delay: float = WRONG_TOKEN_DELAY,
          event_send_timeout: float = EVENT_SEND_TIMEOUT) -> None:
    """Add the console's routes to ``app`` and tie the console's life to the app's."""
    settings = console.settings
    access = _Access(settings, wrong_token_delay=wrong_token_delay)
    playground = console.playground = Playground(console)
    app[CONSOLE_KEY] = console
    streams: set[asyncio.Task[object]] = set()
    stopping = False

    def guarded(handler: Handler, *, metrics: bool = False) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            refusal = await access.check(request, metrics=metrics)
            if refusal is not None:
                return refusal
            return await handler(request)

        return wrapper

    async def index(request: web.Request) -> web.StreamResponse:
        token = request.query.get("token")
        if token is not None and not access.open and access.console_token and access.host_allowed(request):
            # The token came in the URL (printed for the operator): a session cookie signed by it
            # instead, and the token leaves the address bar.
            if not hmac.compare_digest(_raw(token), _raw(access.console_token)):
                return await access.refuse_wrong(request, "token in the address")
            access.wrong.succeeded(request.remote or "")
            expires = int(access.clock()) + COOKIE_SECONDS
            resp = web.HTTPFound("/")
            resp.set_cookie(COOKIE, session_cookie(access.console_token, expires), httponly=True,
                            samesite="Strict", max_age=COOKIE_SECONDS, secure=access.secure_cookie, path="/")
            raise resp
        refusal = await access.check(request)
        if refusal is not None:
            return refusal
        return web.Response(body=_static("index.html"), content_type="text/html",
                            headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP})

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return web.Response(body=_static(name), content_type=STATIC_FILES[name],
                            headers={"Cache-Control": "no-cache"})

    async def state(request: web.Request) -> web.StreamResponse:
        return web.json_response(console.snapshot())

    async def events(request: web.Request) -> web.StreamResponse:
        """Server-sent events: the snapshot now and after every change (at most once a second, plus turns).

        A client that stops reading loses its slot: its socket buffers are kept small, and once a
        snapshot cannot be written within ``event_send_timeout`` (or too much waits unsent) the
        stream is cut. A browser's EventSource reconnects by itself.
        """
        if len(streams) >= MAX_EVENT_STREAMS:
            return web.Response(status=429, text="Too many console tabs are open.\n")
        transport = request.transport
        if transport is None:
            return web.Response(status=400)
        task = asyncio.current_task()
        assert task is not None
        streams.add(task)
        _small_buffers(transport)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        stalled = False
        try:
            await resp.prepare(request)
            seen = -1
            while not stopping:
                if console.version != seen:
                    seen = console.version
                    data = json.dumps(console.snapshot(), separators=(",", ":"))
                    try:
                        async with asyncio.timeout(event_send_timeout):
                            await resp.write(f"event: state\ndata: {data}\n\n".encode())
                    except asyncio.TimeoutError:
                        stalled = True
                    stalled = stalled or transport.get_write_buffer_size() > STALLED_BYTES
                    if stalled:
                        break
                async with console.changed:
                    await console.changed.wait()
        except ConnectionResetError:
            pass  # the tab went away
        finally:
            streams.discard(task)
        if stalled:
            log.info("console event stream cut: the client at %s stopped reading", request.remote)
            transport.abort()  # what is queued for it goes nowhere; the slot is free now
        return resp

    async def metrics(request: web.Request) -> web.StreamResponse:
        # On the loop, not in a thread: the collectors read live session state that only the loop
        # may touch, and an exposition takes well under a millisecond.
        body = console.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def ws(request: web.Request) -> web.StreamResponse:
        if not _same_origin(request):
            log.info("playground refused a WebSocket from origin %r", request.headers.get("Origin", "")[:100])
            return web.Response(status=403, text="The playground accepts connections from its own page only.\n")
        return await playground.handle(request)

    app.router.add_get("/", index)
    app.router.add_get("/console/static/{name}", guarded(static))
    app.router.add_get("/console/state", guarded(state))
    app.router.add_get("/console/events", guarded(events))
    app.router.add_get("/playground/ws", guarded(ws))
    app.router.add_get("/metrics", guarded(metrics, metrics=True))

    async def on_startup(_: web.Application) -> None:
        console.start()

    async def on_shutdown(_: web.Application) -> None:
        nonlocal stopping
        stopping = True  # event streams end at their next wake-up, which this gives them
        async with console.changed:
            console.changed.notify_all()
        await playground.aclose()

    async def on_cleanup(_: web.Application) -> None:
        await console.aclose()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)


def _small_buffers(transport: asyncio.BaseTransport) -> None:
    """An event stream's socket buffers only a few snapshots, so a client that stops reading shows
    up as a blocked write within seconds, not after megabytes of kernel buffer."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, EVENT_SOCKET_BUFFER)
        except OSError:
            pass  # not a TCP socket (a test transport): the write timeout still applies
    if isinstance(transport, asyncio.WriteTransport):
        transport.set_write_buffer_limits(high=EVENT_SOCKET_BUFFER)


# Everything the page uses comes from here: no inline script, nothing fetched elsewhere.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; media-src 'self' blob:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'")
