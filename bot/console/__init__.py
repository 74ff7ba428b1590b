"""The console: live state of the bot, a voice playground, and Prometheus metrics, on the web server.

``Console`` (hub.py) reads the bot; ``mount`` (app.py) adds the routes; ``Metrics`` (metrics.py) is
the registry; ``Playground`` (playground.py) is a browser tab as a speaker in a voice session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from bot.console.app import console_url, mount
from bot.console.hub import Console
from bot.console.metrics import Metrics

if TYPE_CHECKING:
    from bot.services import Services
    from bot.voice.manager import VoiceManager

__all__ = ["Console", "Metrics", "console_mount", "console_url", "mount"]


def console_mount(services: Services, *, voice: Callable[[], VoiceManager | None] = lambda: None,
                  metrics: Metrics | None = None,
                  process_label: str | None = None) -> tuple[Console, Callable[[web.Application], None]]:
    """A console over ``services`` and the function that mounts it on the web server's app.

    ``process_label`` is this process's name on every /metrics sample (``process="..."``)."""
    if metrics is None and process_label is not None:
        metrics = Metrics(process_label=process_label)
    console = Console(services, metrics=metrics, voice=voice)
    return console, lambda app: mount(app, console)
