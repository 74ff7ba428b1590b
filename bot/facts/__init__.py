"""Long-term memory learnt in the background: facts about people, voice-session summaries, and the
character's knowledge chunked for recall.

:func:`build_facts` wires it to an agent: with an LLM engine (OpenAI-compatible) a :class:`FactsService`
listens for stored replies and adds what each speaker told the agent before to the prompt, under the
agent's context budget; with the classic ELIZA engine (or ElizaOS, which keeps its own memory) there are
no facts and no summaries, and nothing else changes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bot.facts.service import FactsConfig, FactsService, MemoryTurns
from bot.facts.store import Fact, FactStore, Summary, readable

if TYPE_CHECKING:
    from bot.agent import Agent
    from bot.settings import Settings
    from bot.store import Database

__all__ = ["Fact", "FactStore", "FactsConfig", "FactsService", "MemoryTurns", "RecallDocuments", "Summary",
           "build_facts", "index_knowledge", "readable"]

log = logging.getLogger(__name__)


class RecallDocuments:
    """Facts and summaries as documents of the recall index (bot.recall), with their room as audience."""

    def __init__(self, recall: Any) -> None:
        self.recall = recall

    async def add(self, kind: str, ref: str, text: str, *, room: str, speaker_id: str, speaker_name: str,
                  created_at: float, sources: Any) -> None:
        from bot.recall import Audience

        await self.recall.add_document(kind, text, audience=Audience.of_room(room), speaker_id=speaker_id,
                                       speaker_name=speaker_name, created_at=created_at, sources=tuple(sources),
                                       ref=ref)

    async def remove(self, kind: str, refs: Any) -> None:
        for ref in refs:
            await self.recall.remove(kind=kind, ref=ref)


async def index_knowledge(index: Any, recall: Any, store: Database) -> None:
    """Put the character's knowledge chunks into the recall index (a background task at start)."""
    marks = FactStore(store)
    try:
        await marks.migrate()
        await index.index_into_recall(recall, marks)
    except Exception:
        index.recall = None  # the knowledge index keeps ranking the chunks itself
        log.exception("knowledge: could not index the character's knowledge for recall; ranking it locally")


def facts_config(settings: Settings) -> FactsConfig:
    return FactsConfig(debounce=settings.facts_debounce_seconds, per_person=settings.facts_per_person,
                       tokens_per_hour=settings.facts_tokens_per_hour,
                       retention_days=settings.transcript_retention_days)


async def build_facts(settings: Settings, agent: Agent, store: Database, *, documents: Any = None) -> FactsService | None:
    """The facts service for ``agent`` (None with a non-LLM engine or ``MEMORY_FACTS=off``), started
    and listening. The caller closes it."""
    if agent.engine_name != "openai" or not settings.memory_facts:
        return None
    from bot.agent.engines.openai_engine import OpenAIEngine
    from bot.settings import secret_value

    # A client of its own: background requests never hold the connection a voice reply is waiting for.
    llm = OpenAIEngine(api_key=secret_value(settings.openai_api_key), base_url=settings.openai_base_url,
                       model=settings.facts_model or settings.openai_model, max_tokens=400, temperature=0.0)
    service = FactsService(FactStore(store), llm, MemoryTurns(agent.memory), facts_config(settings),
                           agent_name=agent.character.name, documents=documents)
    try:
        await service.start()
    except BaseException:
        await llm.aclose()
        raise
    agent.reply_listeners.append(lambda incoming: service.reply_sent(incoming.room))
    agent.forget_listeners.append(service.turns_forgotten)
    agent.context_providers.append(service.prompt_note)
    agent.speaker_facts = True
    log.info("Memory: learning facts in the background (at most %d per person, %d tokens an hour)",
             settings.facts_per_person, settings.facts_tokens_per_hour)
    return service
