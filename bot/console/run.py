"""``voicebot`` with no Discord token: the web server with the console, so a person talks to the agent
from a browser within a minute of installing. Runs until Ctrl-C (SIGINT) or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TextIO

from bot.settings import Settings

__all__ = ["run_console", "report_web_failure", "CONSOLE_HINT"]

log = logging.getLogger(__name__)

CONSOLE_HINT = """\
Or talk to it out loud now, in your browser (the voice playground, with the local engines):
  {url}
Press Ctrl-C to stop.
"""


async def _serve_console(settings: Settings, out: TextIO, stop: asyncio.Event) -> None:
    from bot.console import console_mount, console_url
    from bot.services import build_services
    from bot.web import WebServer, serve

    services = await build_services(settings)
    _, mount = console_mount(services)

    def ready(server: WebServer) -> None:
        url = console_url(settings, server.port)
        if settings.console_token is not None and not url.startswith(("http://127.", "http://localhost")):
            url += "?token=(your CONSOLE_TOKEN)"
        out.write(CONSOLE_HINT.format(url=url))
        out.flush()

    try:
        await serve(settings, agent=services.agent, memory=services.memory, store=services.store,
                    languages=services.languages, usage=services.usage, stop=stop, ready=ready, mounts=[mount])
    finally:
        await services.aclose()


def report_web_failure(task: asyncio.Task[None]) -> None:
    """Done-callback for the web server beside the bot: one clear line when it could not run
    (the bot goes on without its console and webhooks)."""
    if task.cancelled():
        return
    exc = task.exception()
    if isinstance(exc, OSError):
        log.error("The web server (console, metrics, webhooks) could not start: %s. Set WEB_HOST/WEB_PORT.",
                  exc.strerror or exc)
    elif exc is not None:
        log.error("The web server stopped", exc_info=exc)


def run_console(settings: Settings, out: TextIO) -> int:
    """Serve the console until interrupted; 1 when the server cannot start (the port is taken)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                pass
        await _serve_console(settings, out, stop)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0  # a bind or DATA_DIR error goes to run_command's describe_failure (WEB_PORT / WEB_HOST / DATA_DIR)
