"""Issue 10 item 7: a malformed event stream from an OpenAI-compatible server is a provider error
(one clear line, a kind message for the person), not an engine crash with a traceback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from bot.agent import Agent, AgentError
from bot.agent.character import parse_character
from bot.agent.engines.base import Incoming
from bot.agent.engines.openai_engine import OpenAIEngine
from bot.store import SqliteDatabase as Database
from bot.memory import Memory, Modality
from tests.fakes.openai_server import FakeOpenAI

GUARD = 10.0  # failure guard only: the fake answers at once


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.close()


@pytest.mark.parametrize(("broken", "detail"), [
    ("not-json", "malformed server-sent event"),
    ("not-utf8", "malformed server-sent event"),
    ("wrong-shape", "not a chat.completion.chunk"),
    ("cut", "broke off the reply"),
])
async def test_broken_stream_is_a_provider_error(server: FakeOpenAI, broken: str, detail: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    server.broken_sse = broken
    engine = OpenAIEngine(api_key=server.api_key, base_url=server.base_url, model="gpt-test",
                          timeout=GUARD, max_retries=0)
    db = Database.in_memory()
    agent = Agent(parse_character({"name": "Wren"}), engine, (await Memory.open(db)))
    caplog.set_level(logging.DEBUG)
    try:
        reply = agent.reply(Incoming(room="console", speaker_id="console:al", speaker_name="Al", text="hi",
                                     modality=Modality.TEXT))
        with pytest.raises(AgentError) as info:
            await reply.collect()
    finally:
        await agent.aclose()
        await db.close()
    error = info.value
    assert detail in str(error)
    assert error.retryable
    assert "couldn't read" in error.user_message or "train of thought" in error.user_message
    assert "crashed" not in caplog.text and "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
