"""The SMS pipeline with the real Agent (real Reply semantics, real Memory): the built-in ELIZA
engine answering a text, and an engine that fails mid-stream."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.agent import Agent, AgentError
from bot.agent.character import default_character
from bot.agent.engines.base import Conversation, ReplyEngine
from bot.agent.engines.eliza import ElizaEngine
from bot.store import SqliteDatabase as Database
from bot.memory import Memory
from bot.sms.inbound import SmsService, TwilioWebhooks
from tests.sms_helpers import sms_store
from bot.web import create_app
from tests.fakes.twilio_server import sign_webhook

SID = "AC" + "4" * 32
TOKEN = "agent-test-token"
OURS = "+15550009999"
THEM = "+15553334444"
PUBLIC = "https://bot.example.com"


class HalfwayEngine(ReplyEngine):
    """Streams a little, then fails like a dropped LLM connection."""

    name = "halfway"

    async def stream(self, conversation: Conversation) -> AsyncIterator[str]:  # type: ignore[override]
        yield "I was just about to say "
        raise AgentError("halfway: connection reset by peer",
                         user_message="Sorry, I lost my train of thought. Could you say that again?")

    async def check(self) -> str:
        return "ok"


async def run_one(agent: Agent, memory: Memory, db: Database, body: str) -> list[str]:
    store = await sms_store(db)
    service = SmsService(agent=agent, memory=memory, store=store, sender=None, rate_limit=10)
    app = create_app(webhooks=TwilioWebhooks(service, auth_token=TOKEN, public_url=PUBLIC))
    form = {"MessageSid": "SM" + "c" * 32, "AccountSid": SID, "From": THEM, "To": OURS, "Body": body, "NumMedia": "0"}
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/twilio/sms", data=form, headers={
            "X-Twilio-Signature": sign_webhook(TOKEN, PUBLIC + "/twilio/sms", form)})
        assert resp.status == 200
        xml = await resp.text()
    await service.wait_idle()  # the reply is noted as said once its TwiML has left
    await service.aclose()
    return re.findall(r"<Message>(.*?)</Message>", xml, re.DOTALL)


async def test_eliza_answers_a_text_and_memory_keeps_both_turns() -> None:
    db = Database.in_memory()
    memory = (await Memory.open(db))
    character = default_character()
    agent = Agent(character, ElizaEngine(character.name), memory)
    [answer] = await run_one(agent, memory, db, "I feel tired today")
    assert answer.strip()
    turns = (await memory.recent(f"sms:{THEM}", 10))
    assert [(t.role, t.speaker_id, t.modality) for t in turns] == [
        ("user", f"phone:{THEM}", "sms"), ("assistant", "agent", "sms")]
    await db.close()


async def test_real_agent_failing_mid_reply_stores_nothing_as_said(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    db = Database.in_memory()
    memory = (await Memory.open(db))
    agent = Agent(default_character(), HalfwayEngine(), memory)
    assert await run_one(agent, memory, db, "what were you saying?") == [
        "Sorry, I lost my train of thought. Could you say that again?"]
    assert [t.role for t in (await memory.recent(f"sms:{THEM}", 10))] == ["user"]
    assert len([r for r in caplog.records if r.name.startswith("bot.sms")]) == 1
    await db.close()
