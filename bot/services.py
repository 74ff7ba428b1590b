"""The composition root's product: every long-lived service, built once and closed once.

Cogs receive what they need from here through the bot; none of them constructs a client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.agent import Agent
from bot.agent.factory import build_agent
from bot.db import Database
from bot.i18n.places import PlaceLanguages
from bot.memory import Memory, RetentionSchedule
from bot.settings import Settings
from bot.store import Database as Store
from bot.store import SqliteDatabase

if TYPE_CHECKING:
    from bot.voice.manager import VoiceManager

__all__ = ["Services", "build_services"]

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: Database
    memory: Memory
    agent: Agent
    # A voice manager built by the caller (simulate, tests), which also closes it; when None the
    # voice cog builds one from these services and owns it.
    voice: VoiceManager | None = None
    retention: RetentionSchedule | None = None  # prunes old transcripts hourly while running
    languages: PlaceLanguages | None = None  # the language per guild / phone number (built from db when None)
    # The async store (bot/store) on the same database; stores move onto it from `db` one by one.
    store: Store | None = None

    def __post_init__(self) -> None:
        if self.languages is None:
            self.languages = PlaceLanguages(self.db, self.settings.language)
        if self.store is None:
            self.store = SqliteDatabase(self.db.path or ":memory:")

    async def aclose(self) -> None:
        if self.retention is not None:
            await self.retention.aclose()
        await self.agent.aclose()
        if self.store is not None:
            await self.store.close()
        self.db.close()


async def build_services(settings: Settings, *, db: Database | None = None) -> Services:
    """Open the database and build the agent. ``db`` lets tests pass an in-memory database.

    With ``DATABASE_URL`` the async store is that PostgreSQL database (shared by every process of the bot)."""
    if db is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.data_dir / "voicebot.sqlite3")
    store: Store | None = None
    if settings.database_url:
        from bot.store import open_database

        try:
            store = await open_database(settings.database_url)
        except BaseException:
            db.close()
            raise
    memory = Memory(db)
    retention = RetentionSchedule(memory, settings.transcript_retention_days)
    try:
        retention.start()  # prunes now, then hourly (TRANSCRIPT_RETENTION_DAYS=0 keeps everything)
        agent = await build_agent(settings, memory)
    except BaseException:
        await retention.aclose()
        if store is not None:
            await store.close()
        db.close()
        raise
    return Services(settings=settings, db=db, memory=memory, agent=agent, retention=retention, store=store)
