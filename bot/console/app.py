"""The console's routes on the bot's aiohttp server: ``/``, ``/console/*``, ``/metrics``.

Access: bound to a loopback address (the default ``WEB_HOST=127.0.0.1``) nothing is asked of a
visitor beyond a loopback ``Host`` header (so a web page elsewhere cannot reach the console through a
DNS name that resolves to 127.0.0.1). Bound anywhere else, every console route needs
``CONSOLE_TOKEN`` (``Authorization: Bearer …``, or ``/?token=…`` once, which sets a cookie) and
``/metrics`` needs ``METRICS_TOKEN`` (or ``CONSOLE_TOKEN``); without a token configured those routes
answer 403 and say what to set. The playground's WebSocket also checks ``Origin``. The Twilio
routes and ``/healthz`` are not touched.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
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
MAX_EVENT_STREAMS = 8  # open console tabs at once; each costs one snapshot a second
STATIC_FILES = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "pcm-worklet.js": "text/javascript",
}
_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost", "[::1]"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def console_url(settings: Settings, port: int) -> str:
    """The URL a person opens (on this machine, or the server's address with its token)."""
    host = settings.web_host
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def _static(name: str) -> bytes:
    return resources.files("bot.console").joinpath("static", name).read_bytes()


class _Access:
    """Who may use which route; every refusal is one log line and a plain-text answer."""

    def __init__(self, settings: Settings) -> None:
        # With PUBLIC_URL the server is reached from outside, often through a proxy on this machine
        # (nginx's default proxy_pass sends Host: 127.0.0.1:PORT): the console then needs its token.
        self.open = is_loopback(settings.web_host) and not settings.public_url
        self.console_token = settings.console_token.get() if settings.console_token else None
        metrics = settings.metrics_token or settings.console_token
        self.metrics_token = metrics.get() if metrics else None

    @staticmethod
    def _presented(request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return request.cookies.get(COOKIE)

    def check(self, request: web.Request, *, metrics: bool = False) -> web.Response | None:
        """None when allowed, else the refusal to send."""
        if self.open:
            host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") \
                else (request.host or "").split("]")[0] + "]"
            if is_loopback(host):
                return None
            log.info("console refused a request for host %r (not a loopback name)", host[:100])
            return web.Response(status=403, text="This console answers only on 127.0.0.1 / localhost.\n")
        token = self.metrics_token if metrics else self.console_token
        if token is None:
            var = "METRICS_TOKEN or CONSOLE_TOKEN" if metrics else "CONSOLE_TOKEN"
            return web.Response(status=403, text=f"The web server is bound to a public address: set {var} "
                                                 "to use this page.\n")
        presented = self._presented(request)
        if presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
            log.info("console refused a request to %s: %s token", request.path,
                     "missing" if presented is None else "wrong")
            return web.Response(status=401, text="A valid token is required (Authorization: Bearer …).\n",
                                headers={"WWW-Authenticate": 'Bearer realm="voicebot"'})
        return None


def _same_origin(request: web.Request) -> bool:
    """A browser's WebSocket must come from a page served here (browsers always send Origin)."""
    origin = request.headers.get("Origin")
    if not origin:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == request.host


def mount(app: web.Application, console: Console) -> None:
    """Add the console's routes to ``app`` and tie the console's life to the app's."""
    settings = console.settings
    access = _Access(settings)
    playground = console.playground = Playground(console)
    app[CONSOLE_KEY] = console
    streams: set[asyncio.Task[object]] = set()
    stopping = False

    def guarded(handler: Handler, *, metrics: bool = False) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            refusal = access.check(request, metrics=metrics)
            if refusal is not None:
                return refusal
            return await handler(request)

        return wrapper

    async def index(request: web.Request) -> web.StreamResponse:
        token = request.query.get("token")
        if token is not None and not access.open:
            # The token came in the URL (printed for the operator): keep it in a cookie, drop it from the URL.
            if access.console_token and hmac.compare_digest(token.encode(), access.console_token.encode()):
                resp = web.HTTPFound("/")
                resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", max_age=30 * 86400)
                raise resp
        refusal = access.check(request)
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
        """Server-sent events: the snapshot now and after every change (at most once a second, plus turns)."""
        if len(streams) >= MAX_EVENT_STREAMS:
            return web.Response(status=429, text="Too many console tabs are open.\n")
        task = asyncio.current_task()
        assert task is not None
        streams.add(task)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        try:
            await resp.prepare(request)
            seen = -1
            while not stopping:
                if console.version != seen:
                    seen = console.version
                    data = json.dumps(console.snapshot(), separators=(",", ":"))
                    await resp.write(f"event: state\ndata: {data}\n\n".encode())
                async with console.changed:
                    await console.changed.wait()
        except ConnectionResetError:
            pass  # the tab went away
        finally:
            streams.discard(task)
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


# Everything the page uses comes from here: no inline script, nothing fetched elsewhere.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; media-src 'self' blob:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'")
