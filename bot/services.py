"""The composition root's product: every long-lived service, built once and closed once.

Cogs receive what they need from here through the bot; none of them constructs a client or a store.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.agent import Agent
from bot.agent.factory import build_agent
from bot.i18n.places import PlaceLanguages
from bot.memory import Memory, RetentionSchedule
from bot.recall import Recall, RecallConfig
from bot.settings import Settings
from bot.store import Database, DatabaseError, PostgresDatabase, SqliteDatabase
from bot.voice.guilds import GuildSettingsStore, OptOutList

if TYPE_CHECKING:
    from bot.facts import FactsService
    from bot.usage import UsageMeter
    from bot.voice.manager import VoiceManager

__all__ = ["Services", "build_services", "open_store"]

log = logging.getLogger(__name__)

SQLITE_NAME = "voicebot.sqlite3"


@dataclass
class Services:
    settings: Settings
    store: Database  # the one database every store uses (SQLite file or PostgreSQL)
    memory: Memory
    agent: Agent
    languages: PlaceLanguages
    guilds: GuildSettingsStore
    optouts: OptOutList
    # A voice manager built by the caller (simulate, tests), which also closes it; when None the
    # voice cog builds one from these services and owns it.
    voice: VoiceManager | None = None
    retention: RetentionSchedule | None = None  # prunes old transcripts hourly while running
    # Facts and voice-session summaries learnt in the background (None: the engine is not an LLM).
    facts: FactsService | None = None
    # Long-term recall over every stored turn (bot/recall), on the store; None when MEMORY_RECALL=off.
    recall: Recall | None = None
    knowledge_task: asyncio.Task[None] | None = None  # the character's knowledge going into recall
    # Metering and daily limits of paid use (bot/usage), on the store; the agent's engine is wrapped.
    usage: UsageMeter | None = None

    def __post_init__(self) -> None:
        if self.usage is None:
            from bot.usage.wiring import build_meter, guard_agent

            self.usage = build_meter(self.settings, self.store)
            guard_agent(self.agent, self.usage)
        if self.recall is None and self.settings.memory_recall:
            from bot.recall.embed import build_embedder

            s = self.settings
            self.recall = Recall(self.store, RecallConfig(
                budget_ms=s.recall_budget_ms, count=s.memory_recall_count, prompt_tokens=s.memory_prompt_tokens,
                embeddings=s.memory_embeddings, retention_days=s.transcript_retention_days,
            ), linked=self.memory.identities_of, embedder=build_embedder(s, self.usage))
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
        if self.usage is not None:
            await self.usage.aclose()  # counts in flight are written before the store closes
        await self.memory.aclose()  # writes what is queued
        if self.recall is not None:
            await self.recall.aclose()
        await self.languages.aclose()
        await self.store.close()


async def open_store(settings: Settings) -> Database:
    """The database DATABASE_URL names, else the SQLite file in DATA_DIR (raises DatabaseError, one line)."""
    from bot.store.copy import incomplete_copy

    db: Database
    if settings.database_url:
        # The opt-out key stays out of the database: PRIVACY_KEY_FILE or PRIVACY_KEY (settings insist).
        db = await PostgresDatabase.connect(settings.database_url)
    else:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = SqliteDatabase(settings.data_dir / SQLITE_NAME)
    try:
        unfinished = await incomplete_copy(db)
    except BaseException:
        await db.close()
        raise
    if unfinished is not None:  # half a history would look whole to every store: refuse, in one line
        await db.close()
        raise DatabaseError(f"{db.describe()} holds an interrupted `voicebot db copy` (from {unfinished}); "
                            "run the copy again (with --force) or point the bot at the database it came from")
    return db


async def build_services(settings: Settings, *, db: Database | None = None) -> Services:
    """Open the database and every store on it, and build the agent. ``db``: a database to use instead."""
    from bot.privacy import KeySource, use_key_source

    use_key_source(KeySource.from_settings(settings))  # PRIVACY_KEY / PRIVACY_KEY_FILE, else beside the file
    store = db if db is not None else await open_store(settings)
    memory: Memory | None = None
    retention: RetentionSchedule | None = None
    try:
        memory = await Memory.open(store, queue_max=settings.memory_queue_max)
        languages = await PlaceLanguages.open(store, settings.language)
        guilds = await GuildSettingsStore.open(store, settings)
        optouts = await OptOutList.open(store)
        retention = RetentionSchedule(memory, settings.transcript_retention_days)
        await retention.start()  # prunes now, then hourly (TRANSCRIPT_RETENTION_DAYS=0 keeps transcripts)
        agent = await build_agent(settings, memory)
    except BaseException:
        if retention is not None:
            await retention.aclose()
        if memory is not None:
            await memory.aclose()
        await store.close()
        raise
    services = Services(settings=settings, store=store, memory=memory, agent=agent, languages=languages,
                        guilds=guilds, optouts=optouts, retention=retention)
    try:
        from bot.facts import RecallDocuments, build_facts, index_knowledge

        if services.recall is not None:
            await services.recall.start()  # its tables, and the embedding model when MEMORY_EMBEDDINGS is on
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
