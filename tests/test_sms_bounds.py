"""SMS replies are bounded: a model that streams a megabyte gives at most SMS_REPLY_MAX_SEGMENTS
messages, cut at a sentence with a note, and memory keeps what was sent. The real agent (OpenAI
engine) against the loopback OpenAI-compatible server; the real twilio SDK against the loopback
Twilio for the REST path."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient, TestServer

from bot.store import SqliteDatabase as Database
from bot.services import build_services
from bot.settings import load_settings
from bot.sms.inbound import SmsService, TwilioWebhooks
from bot.sms.outbound import TwilioSender
from bot.privacy import open_opt_outs
from bot.sms.store import open_sms_store
from bot.sms.text import SHORTENED_SMS_NOTE, cap_sms
from bot.web import create_app
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.twilio_server import FakeTwilio, sign_webhook

SID = "AC" + "7" * 32
TOKEN = "bounds-test-token"
OURS = "+15550009999"
THEM = "+15557654321"
PUBLIC = "https://bot.example.com"
MEGABYTE_REPLY = [f"**Sentence** number {i:05d} of a reply that goes on and on. " for i in range(17_000)]


async def _text_once(service: SmsService, body: str) -> list[str]:
    app = create_app(webhooks=TwilioWebhooks(service, auth_token=TOKEN, public_url=PUBLIC))
    form = {"MessageSid": "SM" + "d" * 32, "AccountSid": SID, "From": THEM, "To": OURS, "Body": body, "NumMedia": "0"}
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/twilio/sms", data=form, headers={
            "X-Twilio-Signature": sign_webhook(TOKEN, PUBLIC + "/twilio/sms", form)})
        assert resp.status == 200
        xml = await resp.text()
        await service.wait_idle()
    await service.aclose()
    return re.findall(r"<Message>(.*?)</Message>", xml, re.DOTALL)


async def _services(fake: FakeOpenAI, **env: str):  # noqa: ANN202 - Services
    settings = load_settings({"AGENT_ENGINE": "openai", "OPENAI_BASE_URL": fake.base_url,
                              "OPENAI_API_KEY": fake.api_key, "OPENAI_MODEL": "gpt-test", **env}, env_file=None)
    return settings, await build_services(settings, db=Database.in_memory())


async def _assert_stored_as_sent(services: object, sent: list[str]) -> None:
    turn = (await services.memory.recent(f"sms:{THEM}", 10))[-1]  # type: ignore[attr-defined]
    assert turn.role == "assistant" and turn.interrupted
    assert turn.text.split() == " ".join(sent).replace(SHORTENED_SMS_NOTE, "").split()
    assert turn.text.endswith("on and on.")


async def test_a_megabyte_reply_is_four_messages_in_twiml() -> None:
    async with FakeOpenAI(reply_tokens=MEGABYTE_REPLY) as fake:
        settings, services = await _services(fake)
        service = SmsService(agent=services.agent, memory=services.memory, store=await open_sms_store(services.store, opt_outs=await open_opt_outs(services.store)), sender=None,
                             rate_limit=10, max_segments=settings.sms_reply_max_segments)
        segments = await _text_once(service, "tell me everything")
        assert len(segments) == 4 and all(len(s) <= 1600 for s in segments)
        assert segments[-1].endswith("on and on. " + SHORTENED_SMS_NOTE) and "**" not in "".join(segments)
        await _assert_stored_as_sent(services, segments)
        await services.agent.aclose()


async def test_a_megabyte_reply_sent_by_rest_is_capped_too() -> None:
    async with FakeOpenAI(reply_tokens=MEGABYTE_REPLY) as fake, FakeTwilio(SID, TOKEN) as twilio:
        settings, services = await _services(fake, SMS_REPLY_MAX_SEGMENTS="2")
        sender = TwilioSender(SID, TOKEN, OURS, api_base=twilio.base_url, status_callback=PUBLIC + "/twilio/status")
        service = SmsService(agent=services.agent, memory=services.memory, store=await open_sms_store(services.store, opt_outs=await open_opt_outs(services.store)),
                             sender=sender, rate_limit=10, reply_budget=0.0,
                             max_segments=settings.sms_reply_max_segments)
        assert await _text_once(service, "tell me everything") == []  # answered later, by REST
        bodies = [m.body for m in twilio.sent]
        assert len(bodies) == 2 and bodies[-1].endswith(SHORTENED_SMS_NOTE)
        await _assert_stored_as_sent(services, bodies)
        await services.agent.aclose()


def test_cap_sms_keeps_short_replies_whole_and_cuts_long_ones_at_a_sentence() -> None:
    assert cap_sms("Hi there.", 4) == (["Hi there."], "Hi there.", False)
    long = "A short sentence here. " * 400  # about 9,200 characters: six segments
    segments, delivered, shortened = cap_sms(long, 4)
    assert shortened and len(segments) == 4 and all(len(s) <= 1600 for s in segments)
    assert segments[-1].endswith("here. " + SHORTENED_SMS_NOTE)
    assert delivered.split() == " ".join(segments).replace(SHORTENED_SMS_NOTE, "").split()
    # Known to be incomplete (the agent was stopped): cut and noted even when it fits.
    segments, delivered, shortened = cap_sms("One whole sentence. And half of anoth", 4, incomplete=True)
    assert shortened and segments == ["One whole sentence. " + SHORTENED_SMS_NOTE] and delivered == "One whole sentence."
