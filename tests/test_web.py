"""The web server: /healthz, start/stop on a real port, and serve() carrying an SMS from a real
HTTP request to the agent's reply on the loopback Twilio API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.db import Database
from bot.memory import Memory
from bot.settings import Secret, Settings
from bot.web import WebServer, create_app, serve
from tests.fakes.fake_agent import FakeAgent
from tests.fakes.twilio_server import FakeTwilio, sign_webhook

SID = "AC" + "3" * 32
TOKEN = "web-test-token"
OURS = "+15550009999"
THEM = "+15551112222"
PUBLIC = "https://sms.example.net/voicebot"  # a proxy that strips the /voicebot prefix


async def test_healthz_reports_parts() -> None:
    app = create_app(health={"discord": lambda: True})
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/healthz")
        assert resp.status == 200
        assert await resp.json() == {"ok": True, "parts": {"web": True, "discord": True}}


async def test_healthz_is_503_when_a_part_is_down(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    app = create_app(health={"discord": lambda: False, "agent": broken})
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/healthz")
        assert resp.status == 503
        assert await resp.json() == {"ok": False, "parts": {"web": True, "discord": False, "agent": False}}
    assert len([r for r in caplog.records if r.name == "bot.web"]) == 1


async def test_web_server_starts_on_a_free_port_and_stops() -> None:
    server = WebServer(create_app(), "127.0.0.1", 0)
    await server.start()
    assert server.port > 0
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/healthz") as resp:
            assert resp.status == 200
        await server.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(server.url + "/healthz"):
                pass
    await server.stop()  # idempotent


def sms_settings(api_base: str | None) -> Settings:
    return Settings(twilio_account_sid=SID, twilio_auth_token=Secret(TOKEN), twilio_phone_number=OURS,
                    twilio_api_base=api_base, public_url=PUBLIC, web_host="127.0.0.1", web_port=0, sms_rate_limit=5)


@pytest.fixture
async def fake_twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(SID, TOKEN) as fake:
        yield fake


async def test_serve_full_path_slow_reply_goes_out_by_rest(fake_twilio: FakeTwilio,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    db = Database.in_memory()
    memory = Memory(db)
    agent = FakeAgent(memory, replies=["# Story\nOnce upon a **time**, the end."], gate=asyncio.Event())
    stop = asyncio.Event()
    started: asyncio.Future[WebServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(sms_settings(fake_twilio.base_url), agent=agent, memory=memory, db=db, stop=stop,  # type: ignore[arg-type]
              ready=started.set_result, reply_budget=0.01),
        name="test-serve",
    )
    try:
        server = await asyncio.wait_for(started, 10)
        form = {"MessageSid": "SM" + "b" * 32, "AccountSid": SID, "From": THEM, "To": OURS,
                "Body": "tell me a story", "NumMedia": "0"}
        headers = {"X-Twilio-Signature": sign_webhook(TOKEN, PUBLIC + "/twilio/sms", form),
                   "Host": "10.0.0.5:8080", "X-Forwarded-Proto": "http"}  # what a proxy might pass on
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url + "/twilio/sms", data=form, headers=headers) as resp:
                assert resp.status == 200
                assert resp.content_type == "application/xml"
                assert "<Message>" not in await resp.text()
            agent.gate.set()  # type: ignore[union-attr]
            [sent] = await fake_twilio.wait_for_sent(1)
            assert (sent.to, sent.from_, sent.body) == (THEM, OURS, "Story\nOnce upon a time, the end.")
            assert sent.status_callback == PUBLIC + "/twilio/status"

            status_form = {"MessageSid": sent.sid, "MessageStatus": "delivered", "To": THEM, "AccountSid": SID}
            sig = sign_webhook(TOKEN, PUBLIC + "/twilio/status", status_form)
            async with session.post(server.url + "/twilio/status", data=status_form,
                                    headers={"X-Twilio-Signature": sig}) as resp:
                assert resp.status == 204
            async with session.get(server.url + "/healthz") as resp:
                assert (await resp.json())["parts"] == {"web": True, "sms": True}
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    turns = memory.recent(f"sms:{THEM}", 10)
    assert [t.role for t in turns] == ["user", "assistant"]
    assert any("delivered" in r.getMessage() for r in caplog.records if r.name == "bot.sms.inbound")
    db.close()


async def test_serve_without_sms_serves_health_only() -> None:
    db = Database.in_memory()
    memory = Memory(db)
    stop = asyncio.Event()
    started: asyncio.Future[WebServer] = asyncio.get_running_loop().create_future()
    settings = Settings(web_host="127.0.0.1", web_port=0)
    task = asyncio.create_task(serve(settings, agent=FakeAgent(memory), memory=memory, db=db, stop=stop,  # type: ignore[arg-type]
                                     ready=started.set_result), name="test-serve-health")
    try:
        server = await asyncio.wait_for(started, 10)
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["parts"] == {"web": True}
            async with session.post(server.url + "/twilio/sms", data={"Body": "x"}) as resp:
                assert resp.status == 404
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    db.close()


async def test_serve_stops_when_cancelled(fake_twilio: FakeTwilio) -> None:
    db = Database.in_memory()
    memory = Memory(db)
    started: asyncio.Future[WebServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(sms_settings(fake_twilio.base_url), agent=FakeAgent(memory), memory=memory,  # type: ignore[arg-type]
                                     db=db, ready=started.set_result), name="test-serve-cancel")
    server = await asyncio.wait_for(started, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(server.url + "/healthz"):
                pass
    db.close()
