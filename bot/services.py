"""The composition root's product: every long-lived service, built once and closed once.

Cogs receive what they need from here through the bot; none of them constructs a client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.agent import Agent
from bot.agent.factory import build_agent
from bot.db import Database
from bot.memory import Memory
from bot.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Services", "build_services"]

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: Database
    memory: Memory
    agent: Agent
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list, repr=False)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Register an async clean-up to run (in reverse order) when the services close."""
        self._closers.append(closer)

    async def aclose(self) -> None:
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:
                log.exception("error while closing a service")
        self._closers.clear()
        await self.agent.aclose()
        self.db.close()


async def build_services(settings: Settings, *, db: Database | None = None) -> Services:
    """Open the database and build the agent. ``db`` lets tests pass an in-memory database."""
    if db is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.data_dir / "voicebot.sqlite3")
    memory = Memory(db)
    if settings.transcript_retention_days:
        removed = memory.prune(settings.transcript_retention_days)
        if removed:
            log.info("pruned %d turns older than %d days", removed, settings.transcript_retention_days)
    try:
        agent = await build_agent(settings, memory)
    except BaseException:
        db.close()
        raise
    return Services(settings=settings, db=db, memory=memory, agent=agent)
