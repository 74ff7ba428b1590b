"""Builds the agent from settings: the character, and the reply engine that fits the configuration."""

from __future__ import annotations

import logging

from bot.agent import Agent
from bot.agent.character import Character, default_character, load_character
from bot.agent.engines.base import ReplyEngine
from bot.memory import Memory
from bot.settings import Settings, secret_value

__all__ = ["build_agent", "build_engine", "choose_engine", "load_configured_character"]

log = logging.getLogger(__name__)


def choose_engine(settings: Settings) -> str:
    """``AGENT_ENGINE`` if explicit; else openai when an OpenAI key or base URL is set, elizaos when
    an ElizaOS URL is set, and the built-in ELIZA otherwise (pure)."""
    if settings.agent_engine != "auto":
        return settings.agent_engine
    if settings.openai_api_key or settings.openai_base_url:
        return "openai"
    if settings.elizaos_url:
        return "elizaos"
    return "eliza"


def load_configured_character(settings: Settings) -> Character:
    """``CHARACTER_FILE`` if set, else the shipped default. Raises ``CharacterError``."""
    if settings.character_file is not None:
        return load_character(settings.character_file)
    return default_character()


def build_engine(settings: Settings, character: Character) -> ReplyEngine:
    """The reply engine :func:`choose_engine` picks, configured from ``settings``."""
    kind = choose_engine(settings)
    if kind == "openai":
        from bot.agent.engines.openai_engine import OpenAIEngine  # the SDK loads only when used

        return OpenAIEngine(
            api_key=secret_value(settings.openai_api_key),
            base_url=settings.openai_base_url,
            model=settings.openai_model,
            max_tokens=settings.openai_max_tokens,
            temperature=settings.openai_temperature,
        )
    if kind == "elizaos":
        from bot.agent.engines.elizaos import ElizaOSEngine

        if not settings.elizaos_url or not settings.elizaos_agent_id:
            raise ValueError("the ElizaOS engine needs ELIZAOS_URL and ELIZAOS_AGENT_ID")
        return ElizaOSEngine(
            url=settings.elizaos_url,
            agent_id=settings.elizaos_agent_id,
            api_key=secret_value(settings.elizaos_api_key),
            api=settings.elizaos_api,
        )
    from bot.agent.engines.eliza import ElizaEngine

    return ElizaEngine(character.name)


async def build_agent(settings: Settings, memory: Memory) -> Agent:
    """The configured agent. Raises ``CharacterError`` for a broken character file."""
    character = load_configured_character(settings)
    engine = build_engine(settings, character)
    log.info("Agent %s answers with the %s engine (character from %s)", character.name, engine.name, character.source)
    agent = Agent(character, engine, memory, context_turns=settings.memory_context_turns,
                  context_budget=settings.recall_budget_ms / 1000)  # memories share recall's budget
    if engine.name == "openai" and (character.knowledge or character.knowledge_sources):
        # Only an LLM engine reads the prompt: the knowledge recalled for each message goes there.
        import asyncio

        from bot.facts.knowledge import KnowledgeIndex, load_knowledge

        chunks = await asyncio.to_thread(load_knowledge, character, settings.knowledge_dir)
        agent.knowledge = KnowledgeIndex(chunks)
        agent.context_providers.append(agent.knowledge.prompt_note)
    return agent
