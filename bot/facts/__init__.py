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

__all__ = ["Fact", "FactStore", "FactsConfig", "FactsService", "MemoryTurns", "Summary", "build_facts", "readable"]

log = logging.getLogger(__name__)


def facts_config(settings: Settings) -> FactsConfig:
    return FactsConfig(debounce=settings.facts_debounce_seconds, per_person=settings.facts_per_person,
                       tokens_per_hour=settings.facts_tokens_per_hour)


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
    agent.context_providers.append(service.prompt_note)
    log.info("Memory: learning facts in the background (at most %d per person, %d tokens an hour)",
             settings.facts_per_person, settings.facts_tokens_per_hour)
    return service
