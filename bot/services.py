"""The composition root's product: every long-lived service, built once and closed once.

Cogs receive what they need from here through the bot; none of them constructs a client.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.agent import Agent
from bot.agent.factory import build_agent
from bot.db import Database
from bot.i18n.places import PlaceLanguages
from bot.memory import Memory, RetentionSchedule
from bot.recall import Recall, RecallConfig
from bot.settings import Settings
from bot.store import Database as Store
from bot.store import SqliteDatabase

if TYPE_CHECKING:
    from bot.facts import FactsService
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
    # Facts and voice-session summaries learnt in the background (None: the engine is not an LLM).
    facts: FactsService | None = None
    # Long-term recall over every stored turn (bot/recall), on the store; None when MEMORY_RECALL=off.
    recall: Recall | None = None
    knowledge_task: asyncio.Task[None] | None = None  # the character's knowledge going into recall

    def __post_init__(self) -> None:
        if self.languages is None:
            self.languages = PlaceLanguages(self.db, self.settings.language)
        if self.store is None:
            self.store = SqliteDatabase(self.db.path or ":memory:")
        if self.recall is None and self.settings.memory_recall:
            s = self.settings
            self.recall = Recall(self.store, RecallConfig(
                budget_ms=s.recall_budget_ms, count=s.memory_recall_count, prompt_tokens=s.memory_prompt_tokens,
                embeddings=s.memory_embeddings, retention_days=s.transcript_retention_days,
            ), linked=self.memory.identities_of)
        if self.recall is not None:
            if self.recall.on_stored not in self.memory.on_stored:
                self.memory.on_stored.append(self.recall.on_stored)
            self.agent.recall = self.recall

    async def aclose(self) -> None:
        if self.retention is not None:
            await self.retention.aclose()
        if self.knowledge_task is not None:
            self.knowledge_task.cancel()
            await asyncio.gather(self.knowledge_task, return_exceptions=True)
        if self.facts is not None:
            await self.facts.aclose()
        await self.agent.aclose()
        if self.recall is not None:
            await self.recall.aclose()
        if self.store is not None:
            await self.store.close()
        self.db.close()


async def build_services(settings: Settings, *, db: Database | None = None) -> Services:
    """Open the database and build the agent. ``db`` lets tests pass an in-memory database."""
    if db is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.data_dir / "voicebot.sqlite3")
    memory = Memory(db)
    retention = RetentionSchedule(memory, settings.transcript_retention_days)
    try:
        retention.start()  # prunes now, then hourly (TRANSCRIPT_RETENTION_DAYS=0 keeps everything)
        agent = await build_agent(settings, memory)
    except BaseException:
        await retention.aclose()
        db.close()
        raise
    services = Services(settings=settings, db=db, memory=memory, agent=agent, retention=retention)
    try:
        from bot.facts import RecallDocuments, build_facts, index_knowledge

        assert services.store is not None
        documents = RecallDocuments(services.recall) if services.recall is not None else None
        services.facts = await build_facts(settings, agent, services.store, documents=documents)
        if agent.knowledge is not None and services.recall is not None:
            # The chunks go into the recall index once per version of the knowledge; until they are
            # there, the knowledge index ranks them itself.
            services.knowledge_task = asyncio.create_task(
                index_knowledge(agent.knowledge, services.recall, services.store), name="knowledge-index")
    except BaseException:
        await services.aclose()
        raise
    return services
