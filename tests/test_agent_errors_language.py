"""A language model's failure is told to the person in the language of the reply (bot.i18n)."""

from __future__ import annotations

import dataclasses
import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from bot.agent import Agent, AgentError, Incoming
from bot.agent.character import parse_character
from bot.agent.engines.base import Conversation, ReplyEngine
from bot.agent.engines.elizaos import ElizaOSEngine
from bot.agent.engines.openai_engine import OpenAIEngine
from bot.store import SqliteDatabase as Database
from bot.i18n.catalog import t
from bot.memory import Memory, Modality
from tests.fakes.openai_server import FakeOpenAI
from tests.test_openai_engine import server  # noqa: F401  (the fixture)

GUARD = 30.0


def conversation(language: str | None) -> Conversation:
    incoming = Incoming(room="discord:1:2", speaker_id="discord:7", speaker_name="Alice", text="hallo",
                        modality=Modality.TEXT, language=language)
    return Conversation(character=parse_character({"name": "Wren"}), incoming=incoming, text="hallo",
                        messages=({"role": "user", "content": "Alice: hallo"},))


@pytest.mark.parametrize(("status", "key", "language"), [(429, "agent.overloaded", "ja"), (401, "agent.credentials", "de"),
                                                         (500, "agent.trouble", "fr"), (429, "agent.overloaded", None)])
async def test_openai_failures_are_said_in_the_replys_language(server: FakeOpenAI, status: int, key: str,
                                                               language: str | None) -> None:
    server.fail_with = status
    engine = OpenAIEngine(api_key=server.api_key, base_url=server.base_url, model="gpt-test", timeout=GUARD,
                          max_retries=0)
    try:
        with pytest.raises(AgentError) as info:
            _ = [d async for d in engine.stream(conversation(language))]
    finally:
        await engine.aclose()
    assert info.value.user_message == t(key, language or "en")
    assert f"({status})" in str(info.value) or f"HTTP {status}" in str(info.value)  # the log line stays English


async def test_elizaos_failures_carry_a_catalog_key_and_the_reply_says_them_in_its_language() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = ElizaOSEngine(url=f"http://127.0.0.1:{port}", agent_id=str(uuid.uuid4()), timeout=GUARD)
    agent = Agent(parse_character({"name": "Ember"}), engine, (await Memory.open(Database.in_memory())))
    incoming = Incoming(room="discord:dm:7", speaker_id="discord:7", speaker_name="Alice", text="olá",
                        modality=Modality.TEXT, language="pt")
    try:
        with pytest.raises(AgentError) as info:
            await agent.reply(incoming).collect()
    finally:
        await engine.aclose()
    assert info.value.key == "agent.brain_unreachable"
    assert info.value.user_message == t("agent.brain_unreachable", "pt")


class _Crashing(ReplyEngine):
    name = "crashing"

    async def stream(self, conversation: Conversation) -> AsyncIterator[str]:  # type: ignore[override]
        raise RuntimeError("a bug")
        yield ""  # pragma: no cover

    async def check(self) -> str:
        return "ok"


async def test_an_engine_crash_is_apologised_for_in_the_persons_language() -> None:
    agent = Agent(parse_character({"name": "Wren"}), _Crashing(), (await Memory.open(Database.in_memory())))
    incoming = Incoming(room="discord:dm:7", speaker_id="discord:7", speaker_name="Alice", text="hola",
                        modality=Modality.TEXT, language="es")
    with pytest.raises(AgentError) as info:
        await agent.reply(incoming).collect()
    assert info.value.user_message == t("agent.failed", "es")
    english = dataclasses.replace(incoming, language=None)
    with pytest.raises(AgentError) as info:
        await agent.reply(english).collect()
    assert info.value.user_message.startswith("Sorry, I couldn't come up with a reply")
