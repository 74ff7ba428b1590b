"""The inbound SMS webhook end to end: signed requests in, TwiML or REST sends (real twilio SDK
against the loopback fake Twilio API) out, with the fake agent and the real Memory."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.store import SqliteDatabase as Database
from bot.memory import Memory
from bot.sms.inbound import SmsService, TwilioWebhooks
from bot.sms.outbound import TwilioSender
from bot.sms.store import SmsStore
from tests.sms_helpers import sms_store
from bot.web import create_app
from tests.fakes.fake_agent import FakeAgent
from tests.fakes.twilio_server import FakeTwilio, sign_webhook

SID = "AC" + "1" * 32
TOKEN = "webhook-test-token"
OURS = "+15550009999"
THEM = "+15551234567"
PUBLIC = "https://bot.example.com"
SMS_URL = PUBLIC + "/twilio/sms"
_sid_counter = 0


def new_sid() -> str:
    global _sid_counter
    _sid_counter += 1
    return f"SM{_sid_counter:032d}"


def sms_form(body: str, *, sid: str | None = None, frm: str = THEM, **extra: str) -> dict[str, str]:
    form = {
        "MessageSid": sid or new_sid(),
        "SmsSid": "x",
        "AccountSid": SID,
        "From": frm,
        "To": OURS,
        "Body": body,
        "NumMedia": "0",
        "NumSegments": "1",
        "FromCountry": "US",
    }
    form["SmsSid"] = form["MessageSid"]
    form.update(extra)
    return form


async def instant(_delay: float) -> None:
    return None


@dataclass
class Env:
    client: TestClient
    fake: FakeTwilio
    memory: Memory
    store: SmsStore
    agent: FakeAgent
    service: SmsService

    async def post(self, form: dict[str, str], *, path: str = "/twilio/sms", signature: str | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, str]:
        sig = signature if signature is not None else sign_webhook(TOKEN, PUBLIC + path, form)
        hdrs = {"X-Twilio-Signature": sig} if sig else {}
        hdrs.update(headers or {})
        resp = await self.client.post(path, data=form, headers=hdrs)
        return resp.status, await resp.text()


def messages(xml: str) -> list[str]:
    return re.findall(r"<Message>(.*?)</Message>", xml, re.DOTALL)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    db = Database.in_memory()
    memory = (await Memory.open(db))
    store = await sms_store(db)
    async with FakeTwilio(SID, TOKEN) as fake:
        sender = TwilioSender(SID, TOKEN, OURS, api_base=fake.base_url, status_callback=PUBLIC + "/twilio/status",
                              sleep=instant, rand=lambda: 0.0)
        agent = FakeAgent(memory, replies=["Hello there, friend."])
        service = SmsService(agent=agent, memory=memory, store=store, sender=sender, rate_limit=10, reply_budget=10.0)  # type: ignore[arg-type]
        app = create_app(webhooks=TwilioWebhooks(service, auth_token=TOKEN, public_url=PUBLIC))
        async with TestClient(TestServer(app)) as client:
            yield Env(client, fake, memory, store, agent, service)
            await service.aclose()
    await db.close()


def sms_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(("bot.sms", "bot.web", "bot.twilio_signature"))]


# --- the happy paths ---------------------------------------------------------------------------


async def test_quick_reply_comes_back_as_twiml(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    status, xml = await env.post(sms_form("hi there"))
    assert status == 200
    assert messages(xml) == ["Hello there, friend."]
    await env.service.wait_idle()  # the reply is noted as said once its TwiML has left
    assert env.fake.sent == []
    [incoming] = env.agent.calls
    assert (incoming.room, incoming.speaker_id, incoming.modality) == (f"sms:{THEM}", f"phone:{THEM}", "sms")
    turns = (await env.memory.recent(f"sms:{THEM}", 10))
    assert [(t.role, t.text) for t in turns] == [("user", "hi there"), ("assistant", "Hello there, friend.")]
    assert len(sms_logs(caplog)) == 1 and THEM not in caplog.text  # numbers are masked in logs


async def test_slow_reply_answers_empty_then_sends_through_rest(env: Env) -> None:
    env.agent.gate = asyncio.Event()
    env.service.reply_budget = 0.01  # the gate guarantees the budget runs out
    status, xml = await env.post(sms_form("tell me a long story"))
    assert status == 200 and messages(xml) == [] and "<Response" in xml
    assert (await env.memory.recent(f"sms:{THEM}", 10))[-1].role == "user"  # not said yet
    env.agent.gate.set()
    [sent] = await env.fake.wait_for_sent(1)
    assert (sent.to, sent.from_, sent.body) == (THEM, OURS, "Hello there, friend.")
    assert sent.status_callback == PUBLIC + "/twilio/status"
    await env.service.wait_idle()
    assert (await env.memory.recent(f"sms:{THEM}", 10))[-1].text == "Hello there, friend."


async def test_long_markdown_reply_is_normalised_and_segmented(env: Env) -> None:
    env.agent = env.service.agent = FakeAgent(env.memory, replies=["**Sure.** " + "This is a sentence. " * 200])  # type: ignore[assignment]
    status, xml = await env.post(sms_form("go on"))
    segments = messages(xml)
    assert status == 200 and len(segments) == 3
    assert all(len(s) <= 1600 for s in segments) and "**" not in xml
    assert segments[0].startswith("Sure. This is a sentence.")


# --- bad input ---------------------------------------------------------------------------------


async def test_unsigned_request_is_403(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    status, _ = await env.post(sms_form("hi"), signature="")
    assert status == 403 and env.agent.calls == []
    assert len(sms_logs(caplog)) == 1 and "no X-Twilio-Signature" in caplog.text


@pytest.mark.parametrize("path", ["/twilio/sms", "/twilio/status"])
async def test_a_multipart_body_is_415_with_one_line_not_a_traceback(env: Env, caplog: pytest.LogCaptureFixture,
                                                                    path: str) -> None:
    import aiohttp

    caplog.set_level(logging.INFO)
    form = aiohttp.FormData()
    for name, value in sms_form("hi").items():
        form.add_field(name, value)
    form.add_field("MediaUrl0", b"\x89PNG" + b"\x00" * 64, filename="cat.png", content_type="image/png")
    resp = await env.client.post(path, data=form, headers={"X-Twilio-Signature": "anything"})
    assert resp.status == 415 and env.agent.calls == [] and await env.store.state_of(sms_form("hi")["MessageSid"]) is None
    [line] = sms_logs(caplog)
    assert line.levelno == logging.WARNING and "415" in line.getMessage() and "multipart/form-data" in line.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("how", ["wrong token", "tampered body", "host url", "forwarded host"])
async def test_forged_signature_is_403(env: Env, caplog: pytest.LogCaptureFixture, how: str) -> None:
    caplog.set_level(logging.INFO)
    form = sms_form("hi")
    headers: dict[str, str] = {}
    if how == "wrong token":
        sig = sign_webhook("not-the-token", SMS_URL, form)
    elif how == "tampered body":
        sig = sign_webhook(TOKEN, SMS_URL, form)
        form["Body"] = "something else"
    elif how == "host url":  # signed for the URL the Host header names: we never trust Host
        sig = sign_webhook(TOKEN, str(env.client.make_url("/twilio/sms")), form)
    else:
        sig = sign_webhook(TOKEN, "https://evil.example/twilio/sms", form)
        headers = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https", "Host": "evil.example"}
    status, _ = await env.post(form, signature=sig, headers=headers)
    assert status == 403 and env.agent.calls == []
    assert len(sms_logs(caplog)) == 1 and "signature does not match" in caplog.text


async def test_signature_with_query_string_and_default_port(env: Env) -> None:
    form = sms_form("hi")
    sig = sign_webhook(TOKEN, "https://bot.example.com:443/twilio/sms?source=twilio", form)
    status, xml = await env.post(form, path="/twilio/sms?source=twilio", signature=sig)
    assert status == 200 and messages(xml) == ["Hello there, friend."]


@pytest.mark.parametrize("field", ["MessageSid", "From", "To", "Body", "AccountSid"])
async def test_missing_field_is_400(env: Env, caplog: pytest.LogCaptureFixture, field: str) -> None:
    caplog.set_level(logging.INFO)
    form = sms_form("hi")
    del form[field]
    status, text = await env.post(form)
    assert status == 400 and field in text and env.agent.calls == []
    assert len(sms_logs(caplog)) == 1


async def test_ten_thousand_character_body_is_truncated_for_the_agent(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    body = ("word " * 2000)[:10_000]
    status, xml = await env.post(sms_form(body))
    assert status == 200 and messages(xml) == ["Hello there, friend."]
    await env.service.wait_idle()  # its log line is written once the TwiML has left
    [incoming] = env.agent.calls
    assert len(incoming.text) <= env.service.max_inbound_chars + 2 and incoming.text.endswith("…")
    assert len(sms_logs(caplog)) == 1 and "truncated" in caplog.text


async def test_raw_non_utf8_bytes_are_400(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    form = sms_form("caf\u00e9")
    raw = urlencode(form).replace("caf%C3%A9", "caf\xe9").encode("latin-1")  # Latin-1 bytes, unescaped
    sig = sign_webhook(TOKEN, SMS_URL, form)
    resp = await env.client.post("/twilio/sms", data=raw, headers={
        "X-Twilio-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 400 and env.agent.calls == []
    assert len(sms_logs(caplog)) == 1 and "not UTF-8" in caplog.text


async def test_percent_encoded_invalid_utf8_decodes_with_replacement(env: Env) -> None:
    form = sms_form("caf\ufffd")  # what aiohttp decodes %E9 to; Twilio would have signed that text
    raw = urlencode(form).replace("caf%EF%BF%BD", "caf%E9").encode()
    resp = await env.client.post("/twilio/sms", data=raw, headers={
        "X-Twilio-Signature": sign_webhook(TOKEN, SMS_URL, form),
        "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 200
    assert env.agent.calls[0].text == "caf\ufffd"


async def test_replayed_message_sid_is_answered_once(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    form = sms_form("hi")
    assert messages((await env.post(form))[1]) == ["Hello there, friend."]
    await env.service.wait_idle()  # the first answer's own log line is written once its TwiML has left
    caplog.set_level(logging.INFO)
    caplog.clear()  # count only what the replay logs (the first answer's line may already be captured)
    status, xml = await env.post(form)
    assert status == 200 and messages(xml) == []
    assert len(env.agent.calls) == 1 and env.fake.sent == []
    assert len(sms_logs(caplog)) == 1 and "duplicate" in caplog.text


async def test_retry_while_the_first_is_still_being_answered(env: Env) -> None:
    env.agent.gate = asyncio.Event()
    form = sms_form("are you there?")
    first = asyncio.create_task(env.post(form), name="first-delivery")
    await asyncio.wait_for(env.agent.started.wait(), 10)
    status, xml = await env.post(form)  # Twilio's retry, while the agent is still thinking
    assert status == 200 and messages(xml) == []
    env.agent.gate.set()
    status, xml = await first
    assert status == 200 and messages(xml) == ["Hello there, friend."]
    await env.service.wait_idle()
    assert len(env.agent.calls) == 1 and env.fake.sent == []


async def test_burst_of_100_from_one_number(env: Env) -> None:
    forms = [sms_form(f"message {i}") for i in range(100)]
    results = await asyncio.gather(*(env.post(f) for f in forms))
    assert all(status == 200 for status, _ in results)
    await env.service.wait_idle()
    answered = [m for _, xml in results for m in messages(xml)] + [s.body for s in env.fake.sent]
    notes = [m for m in answered if m == SmsService.RATE_NOTE]
    assert len(notes) == 1
    assert len(answered) == 11 and len(env.agent.calls) == 10
    turns = (await env.memory.recent(f"sms:{THEM}", 500))
    assert sorted(t.text for t in turns if t.role == "user") == sorted(f"message {i}" for i in range(100))
    assert len([t for t in turns if t.role == "assistant"]) == 10
    # Twilio retrying every one of them changes nothing.
    again = await asyncio.gather(*(env.post(f) for f in forms))
    assert all(status == 200 and messages(xml) == [] for status, xml in again)
    await env.service.wait_idle()
    assert len(env.agent.calls) == 10 and len((await env.memory.recent(f"sms:{THEM}", 500))) == 110


async def test_agent_failing_mid_reply(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    env.agent.fail_after = 2
    status, xml = await env.post(sms_form("hi"))
    assert status == 200
    assert messages(xml) == ["Sorry, something went wrong on my side. Please try again in a bit."]
    await env.service.wait_idle()
    turns = (await env.memory.recent(f"sms:{THEM}", 10))
    assert [t.role for t in turns] == ["user"]  # nothing stored as said
    records = sms_logs(caplog)
    assert len(records) == 1 and records[0].levelno == logging.WARNING


async def test_agent_failing_after_the_budget_apologises_by_rest(env: Env) -> None:
    env.agent.gate = asyncio.Event()
    env.agent.fail_after = 1
    env.service.reply_budget = 0.01
    status, xml = await env.post(sms_form("hi"))
    assert status == 200 and messages(xml) == []
    env.agent.gate.set()
    [sent] = await env.fake.wait_for_sent(1)
    assert sent.body.startswith("Sorry")
    await env.service.wait_idle()
    assert [t.role for t in (await env.memory.recent(f"sms:{THEM}", 10))] == ["user"]


# --- keywords and opt-outs ---------------------------------------------------------------------


async def test_stop_start_help(env: Env) -> None:
    status, xml = await env.post(sms_form("STOP"))
    assert status == 200 and messages(xml) == [] and await env.store.is_opted_out(THEM)
    status, xml = await env.post(sms_form("hello?"))
    assert status == 200 and messages(xml) == [] and env.agent.calls == []
    status, xml = await env.post(sms_form("Start"))
    assert messages(xml) == [SmsService.START_TEXT] and not await env.store.is_opted_out(THEM)
    status, xml = await env.post(sms_form("help"))
    assert "Testy" in messages(xml)[0] and "STOP" in messages(xml)[0]
    status, xml = await env.post(sms_form("hello again"))
    assert messages(xml) == ["Hello there, friend."]


async def test_keywords_twilio_already_answered_get_no_second_reply(env: Env) -> None:
    _, xml = await env.post(sms_form("START", OptOutType="START"))
    assert messages(xml) == []
    _, xml = await env.post(sms_form("HELP", OptOutType="HELP"))
    assert messages(xml) == []


async def test_stop_during_a_slow_reply_prevents_the_rest_send(env: Env) -> None:
    env.agent.gate = asyncio.Event()
    env.service.reply_budget = 0.01
    await env.post(sms_form("think hard"))
    await env.post(sms_form("stop"))
    env.agent.gate.set()
    await env.service.wait_idle()
    assert env.fake.attempts == 0 and env.fake.sent == []
    assert [t.role for t in (await env.memory.recent(f"sms:{THEM}", 10))] == ["user"]


async def test_twilio_21610_on_send_is_remembered(env: Env) -> None:
    env.agent.gate = asyncio.Event()
    env.service.reply_budget = 0.01
    env.fake.fail_next(400, 21610, "Attempt to send to unsubscribed recipient")
    await env.post(sms_form("hi"))
    env.agent.gate.set()
    await env.service.wait_idle()
    assert env.fake.attempts == 1 and await env.store.is_opted_out(THEM)
    _, xml = await env.post(sms_form("hi again"))
    assert messages(xml) == [] and len(env.agent.calls) == 1


# --- status callbacks --------------------------------------------------------------------------


async def test_status_callback(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    form = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered", "To": THEM, "AccountSid": SID}
    status, _ = await env.post(form, path="/twilio/status")
    assert status == 204 and len(sms_logs(caplog)) == 1
    caplog.clear()
    failed = {**form, "MessageStatus": "undelivered", "ErrorCode": "21610"}
    status, _ = await env.post(failed, path="/twilio/status")
    assert status == 204 and await env.store.is_opted_out(THEM)
    assert [r.levelno for r in sms_logs(caplog)] == [logging.WARNING]


async def test_status_callback_bad_input(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    form = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered"}
    status, _ = await env.post(form, path="/twilio/status", signature="")
    assert status == 403
    status, _ = await env.post({"MessageSid": "SM1"}, path="/twilio/status")
    assert status == 400
    assert len(sms_logs(caplog)) == 2
