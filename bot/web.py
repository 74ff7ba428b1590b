"""The bot's web server: ``/healthz`` and, when SMS is configured, Twilio's webhooks.

It runs inside the bot process (started by the composition root next to the Discord client) or
alone (``voicebot serve``, see :func:`serve` and :func:`run_web_forever`) for deployments that put
the web side behind a load balancer apart from the gateway side.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from bot.settings import Settings
from bot.webguard import ConnectionGuard

if TYPE_CHECKING:
    from bot.agent import Agent
    from bot.db import Database
    from bot.memory import Memory
    from bot.phone.service import PhoneService
    from bot.sms.inbound import SmsService, TwilioWebhooks
    from bot.store import Database as Store

__all__ = ["WebServer", "build_sms", "create_app", "run_web_forever", "serve"]

log = logging.getLogger(__name__)

HealthCheck = Callable[[], bool]
BACKLOG = 128  # aiohttp's default listen backlog
KEEPALIVE_TIMEOUT = 75.0  # idle between requests on one connection (nginx's default for clients)


def create_app(
    *,
    health: Mapping[str, HealthCheck] | None = None,
    webhooks: TwilioWebhooks | None = None,
    client_max_size: int = 256 * 1024,
    mounts: Sequence[Callable[[web.Application], None]] = (),
    phone: PhoneService | None = None,
) -> web.Application:
    """The aiohttp application: ``GET /healthz`` plus Twilio's routes when ``webhooks`` is given.

    ``health`` maps a part's name to a cheap, non-blocking check; ``/healthz`` answers
    ``{"ok": bool, "parts": {name: bool}}`` with 200 when every part is up, else 503.
    ``client_max_size`` caps request bodies (Twilio's forms are a few kB).
    """
    app = web.Application(client_max_size=client_max_size)
    checks: dict[str, HealthCheck] = {"web": lambda: True, **(health or {})}
    if webhooks is not None:
        checks.setdefault("sms", lambda: True)

    async def healthz(request: web.Request) -> web.Response:
        parts: dict[str, bool] = {}
        for name, check in checks.items():
            try:
                parts[name] = bool(check())
            except Exception:  # a failing check means "down", never a 500
                log.exception("health check %s raised", name)
                parts[name] = False
        ok = all(parts.values())
        return web.json_response({"ok": ok, "parts": parts}, status=200 if ok else 503)

    app.router.add_get("/healthz", healthz)
    if webhooks is not None:
        webhooks.register(app)
    if phone is not None:
        phone.register(app)  # /twilio/voice, /twilio/voice/status, the media WebSocket
    for mount in mounts:  # e.g. the console (bot/console), which adds its routes and lifecycle
        mount(app)
    return app


class WebServer:
    """Owns an :class:`aiohttp.web.AppRunner` bound to ``host:port`` (port 0: any free port), its
    listening sockets behind a :class:`~bot.webguard.ConnectionGuard` (``guard``: its rules)."""

    def __init__(self, app: web.Application, host: str, port: int, *, guard: ConnectionGuard | None = None) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.guard = guard or ConnectionGuard()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None

    def __repr__(self) -> str:
        return f"WebServer(host={self.host!r}, port={self.port!r}, running={self._runner is not None})"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving; ``port`` becomes the bound port."""
        if self._runner is not None:
            return
        # One line per request is ours to write; an idle keep-alive connection (or one that sends
        # the head of its next request too slowly) is closed after KEEPALIVE_TIMEOUT.
        runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=KEEPALIVE_TIMEOUT)
        await runner.setup()
        assert runner.server is not None
        loop = asyncio.get_running_loop()
        try:
            # Our own listening socket rather than a TCPSite: the guard stands between the socket
            # and aiohttp's protocol, which a site would connect directly.
            self._server = await loop.create_server(self.guard.wrap(runner.server), self.host, self.port,
                                                    backlog=BACKLOG)
        except BaseException:
            await runner.cleanup()
            raise
        self.guard.install(loop)
        self._runner = runner
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("Web server listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests (aiohttp's shutdown grace), release the port."""
        runner, self._runner = self._runner, None
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if runner is not None:
            await runner.cleanup()
            self.guard.close()
            log.info("Web server stopped")


def build_sms(
    settings: Settings,
    *,
    agent: Agent,
    memory: Memory,
    db: Database,
    reply_budget: float = 10.0,
) -> tuple[SmsService, TwilioWebhooks]:
    """Build the SMS pipeline from settings (call inside the running loop; needs ``sms_enabled``)."""
    from bot.sms.inbound import STATUS_PATH, SmsService, TwilioWebhooks
    from bot.sms.outbound import TwilioSender
    from bot.sms.store import SmsStore

    if not settings.sms_enabled or not settings.public_url:
        raise ValueError("SMS needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_PHONE_NUMBER and PUBLIC_URL")
    assert settings.twilio_account_sid and settings.twilio_auth_token and settings.twilio_phone_number
    token = settings.twilio_auth_token.get()
    store = SmsStore(db)
    pruned = store.prune()
    if pruned:
        log.info("Pruned %d old SMS bookkeeping rows", pruned)
    public = settings.public_url.rstrip("/")
    sender = TwilioSender(
        settings.twilio_account_sid,
        token,
        settings.twilio_phone_number,
        api_base=settings.twilio_api_base,
        status_callback=public + STATUS_PATH,
    )
    service = SmsService(agent=agent, memory=memory, store=store, sender=sender,
                         rate_limit=settings.sms_rate_limit, reply_budget=reply_budget,
                         max_segments=settings.sms_reply_max_segments)
    from bot.i18n.places import PlaceLanguages

    service.languages = PlaceLanguages(db, settings.language)  # each number answered in its language
    from bot.i18n.detect import preload

    preload()  # at start-up (about half a second), so no texter's first reply waits for the model
    return service, TwilioWebhooks(service, auth_token=token, public_url=public)


async def serve(
    settings: Settings,
    *,
    agent: Agent,
    memory: Memory,
    db: Database,
    store: Store | None = None,
    stop: asyncio.Event | None = None,
    ready: Callable[[WebServer], None] | None = None,
    health: Mapping[str, HealthCheck] | None = None,
    reply_budget: float = 10.0,
    mounts: Sequence[Callable[[web.Application], None]] = (),
) -> None:
    """Run the web server (with SMS when configured) until ``stop`` is set or the task is cancelled.

    ``ready`` is called with the started server (tests use it to learn the bound port).
    ``reply_budget``: seconds a webhook waits for the agent before answering empty and sending
    the reply through the REST API later (Twilio abandons a webhook after 15 s).
    The SMS pipeline is closed (replies in flight get a grace period) before this returns.
    """
    service: SmsService | None = None
    webhooks: TwilioWebhooks | None = None
    if settings.sms_enabled:
        service, webhooks = build_sms(settings, agent=agent, memory=memory, db=db, reply_budget=reply_budget)
        sms = service
        health = {**(health or {}), "sms": lambda: not sms.draining}  # a load balancer sees the drain
    else:
        log.info("SMS is not configured: no Twilio SMS webhooks")
    phone: PhoneService | None = None
    if settings.phone_enabled:
        from bot.phone.service import build_phone

        phone = build_phone(settings, agent=agent, memory=memory, db=db, store=store)
    from bot.console.app import is_loopback

    if (service is not None or phone is not None) and is_loopback(settings.web_host):
        log.warning("Twilio webhooks are configured but WEB_HOST=%s accepts only connections from this machine: "
                    "set WEB_HOST=0.0.0.0 (and CONSOLE_TOKEN), unless a proxy on this machine forwards them",
                    settings.web_host)
    server = WebServer(create_app(health=health, webhooks=webhooks, phone=phone, mounts=mounts), settings.web_host,
                       settings.web_port)
    stop = stop or asyncio.Event()
    try:
        if service is not None:
            service.resume_unfinished()  # before serving, so Twilio's retries find them in progress
        await server.start()
        if ready is not None:
            ready(server)
        await stop.wait()
    finally:
        # SMS webhooks answer 503 (Twilio retries) while replies in flight get their grace period, and
        # the phone turns new calls away and ends the ones in progress at the same time; the server
        # stays up meanwhile so Twilio gets those answers rather than a refused connection.
        closers = []
        if service is not None:
            closers.append(service.aclose(settings.sms_shutdown_grace))
        if phone is not None:
            closers.append(phone.aclose())
        try:
            await asyncio.gather(*closers)
        finally:
            await server.stop()


def run_web_forever(settings: Settings) -> int:
    """``voicebot serve``: the web side alone, until SIGINT/SIGTERM. Returns an exit code."""

    async def main() -> None:
        from bot.services import build_services

        services = await build_services(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # e.g. Windows: KeyboardInterrupt still works
                pass
        try:
            await serve(settings, agent=services.agent, memory=services.memory, db=services.db, store=services.store,
                        stop=stop)
        finally:
            await services.aclose()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0
