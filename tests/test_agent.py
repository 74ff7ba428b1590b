"""Agent and Reply: what is stored when, bad input, streaming end to end, and engine selection."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.agent import MAX_INPUT_CHARS, Agent, AgentError, Incoming
from bot.agent.character import CharacterError, default_character, parse_character
from bot.agent.engines.base import Conversation, ReplyEngine
from bot.agent.engines.eliza import ElizaEngine
from bot.agent.engines.openai_engine import OpenAIEngine
from bot.agent.factory import build_agent, choose_engine
from bot.store import SqliteDatabase as Database
from bot.memory import Memory, Modality
from bot.settings import Secret, Settings, load_settings
from tests.fakes.openai_server import FakeOpenAI

GUARD = 10.0
ROOM = "discord:100000000000000001:200000000000000002"


@pytest.fixture
async def memory() -> AsyncIterator[Memory]:
    db = Database.in_memory()
    memory = await Memory.open(db)
    yield memory
    await memory.aclose()
    await db.close()


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.close()


def said(text: str, *, modality: Modality = Modality.TEXT, name: str = "Alice", speaker: str = "discord:7",
         room: str = ROOM) -> Incoming:
    return Incoming(room=room, speaker_id=speaker, speaker_name=name, text=text, modality=modality)


def openai_agent(fake: FakeOpenAI, memory: Memory, *, key: str | None = None, context_turns: int = 20) -> Agent:
    engine = OpenAIEngine(api_key=key or fake.api_key, base_url=fake.base_url, model="gpt-test", timeout=GUARD,
                          max_retries=0)
    return Agent(parse_character({"name": "Wren"}), engine, memory, context_turns=context_turns)


class CrashingEngine(ReplyEngine):
    """Implements the engine interface and fails after one delta, like a buggy engine would."""

    name = "crashing"

    async def stream(self, conversation: Conversation) -> AsyncIterator[str]:
        yield "Half a "
        raise RuntimeError("engine bug")

    async def check(self) -> str:
        return "ok"


async def test_turns_are_stored_when_reply_starts_and_finishes(memory: Memory) -> None:
    agent = Agent(default_character(), ElizaEngine("Wren"), memory)
    reply = agent.reply(said("I feel a bit odd", modality=Modality.VOICE))
    [user_turn] = (await memory.recent(ROOM, 10))  # stored as soon as the reply starts
    assert user_turn.role == "user" and user_turn.text == "I feel a bit odd" and user_turn.modality is Modality.VOICE
    deltas = [d async for d in reply]
    assert "".join(deltas) == reply.text and reply.done and len(deltas) > 1
    reply.finish()
    reply.finish()  # idempotent
    turns = (await memory.recent(ROOM, 10))
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].text == reply.text and turns[1].speaker_name == "Wren" and turns[1].modality is Modality.VOICE
    assert agent.engine_name == "eliza" and agent.character.name == "Wren"
    assert "built-in" in await agent.check()
    await agent.aclose()


async def test_barge_in_stores_only_what_was_spoken(memory: Memory) -> None:
    agent = Agent(default_character(), ElizaEngine("Wren"), memory)
    reply = agent.reply(said("I want a holiday"))
    await reply.collect()
    reply.finish("What would it mean", interrupted=True)
    last = (await memory.recent(ROOM, 1))[0]
    assert last.text == "What would it mean" and last.interrupted


async def test_llm_reply_streams_token_by_token_through_the_agent(llm: FakeOpenAI, memory: Memory) -> None:
    llm.paced = True
    agent = openai_agent(llm, memory)
    reply = agent.reply(said("hello"))
    stream = aiter(reply)
    try:
        llm.allow(1)
        assert await asyncio.wait_for(anext(stream), GUARD) == "Hello"
        assert reply.text == "Hello" and not llm.finished
        llm.allow(10)
        async for _ in stream:
            pass
    finally:
        await reply.aclose()
        await agent.aclose()
    assert reply.text == "Hello there, friend." and llm.finished
    reply.finish()
    assert [t.text for t in (await memory.recent(ROOM, 5))] == ["hello", "Hello there, friend."]


async def test_prompt_uses_bounded_memory_window_with_names(llm: FakeOpenAI, memory: Memory) -> None:
    agent = openai_agent(llm, memory, context_turns=3)
    try:
        for text in ("one", "two"):
            reply = agent.reply(said(text))
            await reply.collect()
            reply.finish()
        reply = agent.reply(said("three", name="Bob", speaker="discord:8"))
        await reply.collect()
    finally:
        await agent.aclose()
    body = llm.completion_requests[-1].body
    assert body is not None
    contents = [m["content"] for m in body["messages"]]
    # system + the 3 most recent turns + the new message
    assert len(contents) == 5
    assert contents[1:] == ["Hello there, friend.", "Alice: two", "Hello there, friend.", "Bob: three"]
    assert "Several people take part" in contents[0]


async def test_401_llm_fails_cleanly_and_nothing_is_stored_as_said(
    llm: FakeOpenAI, memory: Memory, caplog: pytest.LogCaptureFixture
) -> None:
    agent = openai_agent(llm, memory, key="sk-wrong-TOPSECRET")
    reply = agent.reply(said("are you there?"))
    with caplog.at_level(logging.WARNING):
        with pytest.raises(AgentError) as info:
            await reply.collect()
    await agent.aclose()
    assert "401" in str(info.value) and "TOPSECRET" not in caplog.text
    assert "credentials" in info.value.user_message
    reply.finish()  # a caller that finishes anyway stores nothing
    assert [t.role for t in (await memory.recent(ROOM, 10))] == ["user"]
    # The agent itself adds no warning: the caller logs the single line, and the error's text
    # carries the context (endpoint, status, which setting to check).
    assert not [r for r in caplog.records if r.name.startswith("bot.agent") and r.levelno >= logging.WARNING]
    assert llm.base_url in str(info.value)


async def test_unreachable_llm(memory: Memory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = OpenAIEngine(api_key=None, base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout=GUARD,
                          max_retries=0)
    agent = Agent(default_character(), engine, memory)
    reply = agent.reply(said("hello?"))
    try:
        with pytest.raises(AgentError) as info:
            await reply.collect()
    finally:
        await agent.aclose()
    assert info.value.retryable and "reach" in info.value.user_message
    reply.finish()
    assert len((await memory.recent(ROOM, 10))) == 1


async def test_ten_thousand_characters_are_stored_whole_and_sent_shortened(llm: FakeOpenAI, memory: Memory) -> None:
    agent = openai_agent(llm, memory)
    essay = " ".join(["lorem"] * 1700)  # 10,199 characters
    assert len(essay) > 10_000
    try:
        reply = agent.reply(said(essay))
        assert await reply.collect() == "Hello there, friend."
    finally:
        await agent.aclose()
    assert (await memory.recent(ROOM, 1))[0].text == essay
    body = llm.completion_requests[-1].body
    assert body is not None
    sent = body["messages"][-1]["content"]
    assert len(sent) < MAX_INPUT_CHARS + 100 and "message cut" in sent and "10,199" in sent


async def test_empty_message_gets_a_gentle_reply_without_the_engine(llm: FakeOpenAI, memory: Memory) -> None:
    agent = openai_agent(llm, memory)
    try:
        for text in ("", "   \n\t"):
            reply = agent.reply(said(text))
            answer = await reply.collect()
            assert "Alice" in answer and "listening" in answer
            reply.finish()
    finally:
        await agent.aclose()
    assert llm.requests == []
    assert (await memory.recent(ROOM, 10)) == []


async def test_engine_crash_becomes_agent_error(memory: Memory, caplog: pytest.LogCaptureFixture) -> None:
    agent = Agent(default_character(), CrashingEngine(), memory)
    reply = agent.reply(said("hi"))
    with pytest.raises(AgentError) as info:
        await reply.collect()
    assert "crashing engine crashed" in str(info.value) and info.value.user_message
    reply.finish()
    assert [t.role for t in (await memory.recent(ROOM, 10))] == ["user"]


async def test_reply_iterates_once(memory: Memory) -> None:
    agent = Agent(default_character(), ElizaEngine("Wren"), memory)
    reply = agent.reply(said("hello"))
    await reply.collect()
    with pytest.raises(RuntimeError):
        aiter(reply)


# ---------------------------------------------------------------------------------------------
# Engine choice and the factory


def settings(**values: str) -> Settings:
    return load_settings(values, env_file=None)


def test_engine_choice() -> None:
    assert choose_engine(settings()) == "eliza"
    assert choose_engine(settings(OPENAI_API_KEY="sk-x")) == "openai"
    assert choose_engine(settings(OPENAI_BASE_URL="http://127.0.0.1:11434/v1")) == "openai"
    assert choose_engine(settings(ELIZAOS_URL="http://127.0.0.1:3000", ELIZAOS_AGENT_ID="a")) == "elizaos"
    assert choose_engine(settings(AGENT_ENGINE="eliza", OPENAI_API_KEY="sk-x")) == "eliza"
    both = settings(OPENAI_API_KEY="sk-x", ELIZAOS_URL="http://127.0.0.1:3000", ELIZAOS_AGENT_ID="a")
    assert choose_engine(both) == "openai"
    assert choose_engine(both.replace(agent_engine="elizaos")) == "elizaos"


async def test_build_agent_with_no_configuration_answers_with_eliza(memory: Memory) -> None:
    agent = await build_agent(settings(), memory)
    try:
        assert agent.engine_name == "eliza" and agent.character.name == default_character().name
        reply = agent.reply(said("what is your name?", room="console", speaker="console:me", name="me"))
        assert agent.character.name in await reply.collect()
    finally:
        await agent.aclose()


async def test_build_agent_openai_against_fake(llm: FakeOpenAI, memory: Memory) -> None:
    config = Settings(openai_api_key=Secret(llm.api_key), openai_base_url=llm.base_url, openai_model="gpt-test",
                      memory_context_turns=7)
    agent = await build_agent(config, memory)
    try:
        assert agent.engine_name == "openai" and agent.context_turns == 7
        assert await agent.reply(said("hi")).collect() == "Hello there, friend."
        assert "gpt-test" in await agent.check()
    finally:
        await agent.aclose()


async def test_build_agent_elizaos_engine(memory: Memory) -> None:
    agent = await build_agent(settings(ELIZAOS_URL="http://127.0.0.1:9", ELIZAOS_AGENT_ID="ember"), memory)
    try:
        assert agent.engine_name == "elizaos"
    finally:
        await agent.aclose()


async def test_build_agent_loads_the_character_file(tmp_path: Path, memory: Memory) -> None:
    good = tmp_path / "nova.json"
    good.write_text(json.dumps({"name": "Nova", "bio": "A star."}), encoding="utf-8")
    agent = await build_agent(settings(CHARACTER_FILE=str(good)), memory)
    assert agent.character.name == "Nova" and agent.character.bio == ("A star.",)
    await agent.aclose()
    bad = tmp_path / "broken.json"
    bad.write_text('{"name": "Nova", "bio": 42}', encoding="utf-8")
    with pytest.raises(CharacterError, match=r"broken\.json: bio: expected a string or a list of strings"):
        await build_agent(settings(CHARACTER_FILE=str(bad)), memory)
