"""What people see and hear at a limit, and what the operator sees: the real bot on the loopback
Discord with the real OpenAI and ElevenLabs SDKs pointed at their loopback fakes."""

from __future__ import annotations

import asyncio

import pytest

from bot.settings import load_settings
from bot.simulate import running_bot
from bot.usage.messages import resting_text
from tests.fakes.elevenlabs_server import FakeElevenLabs
from tests.fakes.openai_server import FakeOpenAI

TIMEOUT = 30.0


async def until(predicate, timeout: float = TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    """Poll a condition (state in another task or process) with a generous deadline."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_text_chat_over_the_model_limit_is_told_once_and_usage_console_and_metrics_show_the_day() -> None:
    async with FakeOpenAI() as openai:
        settings = load_settings({"AGENT_ENGINE": "openai", "OPENAI_API_KEY": openai.api_key,
                                  "OPENAI_BASE_URL": openai.base_url, "OPENAI_MAX_TOKENS": "16",
                                  "OPENAI_MODEL": openai.models[0], "CHAT_RATE_LIMIT": "600",
                                  "STT_ENGINE": "none", "TTS_ENGINE": "none",
                                  "LIMITS_PER_PERSON": "model=2500", "PRICES": "model=0.6/M"}, env_file=None)
        async with running_bot(settings, ["Alice", "Bob"]) as lb:
            meter = lb.services.usage
            alice, bob = lb.members["Alice"], lb.members["Bob"]
            bot_id = lb.discord.bot_user_id
            notice = resting_text("person", meter.until(meter.day()), "en")
            answered = 0
            for i in range(30):
                before = len(lb.text.bot_messages)
                await alice.send_message(lb.text, f"<@{bot_id}> tell me something nice, number {i}.")
                await until(lambda: len(lb.text.bot_messages) > before)
                if notice in lb.text.bot_messages[-1].content:
                    break
                answered += 1
            else:
                pytest.fail("the limit was never reached")
            assert answered >= 1
            asked = len(openai.requests)
            refusals = meter.refusals["model"]
            quiet = len(lb.text.bot_messages)
            for i in range(3):  # told once: later messages get no answer, and reach no model
                await alice.send_message(lb.text, f"<@{bot_id}> are you there? {i}")
                await until(lambda n=i: meter.refusals["model"] == refusals + n + 1)
            assert len(openai.requests) == asked and len(lb.text.bot_messages) == quiet
            # Bob carries on
            await bob.send_message(lb.text, f"<@{bot_id}> hello from Bob.")
            await until(lambda: len(lb.text.bot_messages) > quiet)
            assert "Hello there" in lb.text.bot_messages[-1].content and len(openai.requests) == asked + 1

            # /usage: Manage Server only; today's use, the week, the top people (no content)
            assert "Manage Server" in await lb.command(alice, "usage")
            shown = await lb.command(lb.host, "usage")
            assert "model:" in shown and "Top people by share" in shown and f"<@{alice.id}>" in shown
            assert "tell me something" not in shown and "$" in shown
            assert shown.index(f"<@{alice.id}>") < shown.index(f"<@{bob.id}>")  # Alice used most

            # the API's own usage figures were counted, not the reservation
            # Bob's request is settled when its stream ends, which may be just after his message showed
            await until(lambda: meter.counters[("model", "openai")].requests == len(openai.usage_reported))
            await meter.release()  # what leases still hold goes back: the store has what was used
            reported = sum(p + c for p, c in openai.usage_reported)
            day = meter.day()
            assert await meter.store.used(day, "model", "total") == reported

            # the console's panel and /metrics
            from bot.console.hub import Console

            console = Console(lb.services)
            try:
                data = await console.usage_panel.refresh(force=True)
                today = data["days"][0]
                assert today["day"] == day and today["used"]["model"] == reported
                assert today["spend"] == pytest.approx(reported * 0.6 / 1_000_000, abs=1e-8)
                assert console.snapshot()["usage"]["days"][0]["used"]["model"] == reported
                metrics = console.metrics.render().decode()
                assert f'voicebot_usage_amount_total{{engine="openai",kind="model"}} {float(reported)}' in metrics
                assert 'voicebot_usage_refusals_total{kind="model"} 4.0' in metrics
                assert "discord:" not in metrics and "guild" not in metrics.split("voicebot_usage")[1]
            finally:
                await console.aclose()
    assert lb.discord.problems == []


async def test_a_server_over_its_voice_limit_hears_the_local_voice_and_is_told_once() -> None:
    async with FakeElevenLabs() as eleven:
        settings = load_settings({"AGENT_ENGINE": "eliza", "STT_ENGINE": "none", "TTS_ENGINE": "elevenlabs",
                                  "ELEVENLABS_API_KEY": "test-key", "ELEVENLABS_BASE_URL": eleven.url,
                                  "LIMITS_PER_SERVER": "voice=40"}, env_file=None)
        async with running_bot(settings, ["Alice"]) as lb:
            alice = lb.members["Alice"]
            await alice.join_voice(lb.voice)
            await lb.command(alice, "join")
            session = lb.manager.session(lb.guild.id)
            asked = len(eleven.requests)
            await session.say("Hello there, friend.")  # 20 characters
            await session.say("How are you today?")  # 18: 38 of 40
            assert len(eleven.requests) == asked + 2
            played = await session.say("This one is local.")  # over: the local voice says it
            assert played is not None and played.total_seconds > 0
            await session.say("And so is this one.")
            assert len(eleven.requests) == asked + 2  # nothing more went to ElevenLabs
            notice = resting_text("server", lb.services.usage.until(lb.services.usage.day()), "en")
            await lb.discord.wait_bot_message(lb.voice, contains=notice, timeout=TIMEOUT)
            assert sum(notice in (m.content or "") for m in lb.voice.bot_messages) == 1
            await lb.services.usage.release()
            rows = await lb.services.usage.store.engines([lb.services.usage.day()])
            engines = {(k, e): u for _d, k, e, u, _r in rows}
            assert engines[("voice", "elevenlabs")] == 38 and engines[("voice", "espeak")] >= 37
            await lb.command(alice, "leave")
    assert lb.discord.problems == []


async def test_texts_over_the_model_limit_get_the_notice_by_sms_and_reach_no_model() -> None:
    import html
    import re
    import uuid

    from aiohttp.test_utils import TestClient, TestServer

    from bot.agent.factory import build_agent
    from bot.memory import Memory
    from bot.store import SqliteDatabase
    from bot.usage.wiring import build_meter, guard_agent
    from bot.web import build_sms, create_app
    from tests.fakes.twilio_server import FakeTwilio, sign_webhook

    account, token, ours, them, public = "AC" + "2" * 32, "usage-sms-token", "+15550009999", "+15551234567", \
        "https://bot.example.com"
    async with FakeOpenAI() as openai, FakeTwilio(account, token) as twilio:
        settings = load_settings({"AGENT_ENGINE": "openai", "OPENAI_API_KEY": openai.api_key,
                                  "OPENAI_BASE_URL": openai.base_url, "OPENAI_MODEL": openai.models[0],
                                  "OPENAI_MAX_TOKENS": "16", "TWILIO_ACCOUNT_SID": account,
                                  "TWILIO_AUTH_TOKEN": token, "TWILIO_PHONE_NUMBER": ours,
                                  "TWILIO_API_BASE": twilio.base_url, "PUBLIC_URL": public, "PHONE_CALLS": "false",
                                  "SMS_RATE_LIMIT": "1000", "LIMITS_PER_PERSON": "model=2000"}, env_file=None)
        store = SqliteDatabase(":memory:")
        memory = await Memory.open(store)  # the one database
        agent = await build_agent(settings, memory)
        meter = build_meter(settings, store)
        guard_agent(agent, meter)
        service, webhooks = await build_sms(settings, agent=agent, memory=memory, store=store, reply_budget=10.0)
        try:
            async with TestClient(TestServer(create_app(webhooks=webhooks))) as client:
                async def text(body: str) -> list[str]:
                    form = {"MessageSid": "SM" + uuid.uuid4().hex, "AccountSid": account, "From": them, "To": ours,
                            "Body": body, "NumMedia": "0", "NumSegments": "1"}
                    headers = {"X-Twilio-Signature": sign_webhook(token, public + "/twilio/sms", form)}
                    resp = await client.post("/twilio/sms", data=form, headers=headers)
                    assert resp.status == 200
                    return [html.unescape(m) for m in re.findall(r"<Message>(.*?)</Message>", await resp.text(), re.S)]

                notice = resting_text("person", meter.until(meter.day()), "en")
                for i in range(20):
                    answer = await text(f"tell me something nice {i}")
                    if answer == [notice]:
                        break
                    assert answer == ["Hello there, friend."]
                else:
                    pytest.fail("the limit was never reached")
                asked = len(openai.requests)
                assert await text("still there?") == [notice] and await text("hello?") == [notice]
                assert len(openai.requests) == asked  # no model request after the limit
        finally:
            await service.aclose()
            await meter.aclose()
            await agent.aclose()
            await memory.aclose()
            await store.close()


async def test_forget_removes_a_persons_usage_totals_before_today() -> None:
    from bot.usage import Who

    settings = load_settings({"AGENT_ENGINE": "eliza", "STT_ENGINE": "none", "TTS_ENGINE": "none",
                              "LIMITS_PER_PERSON": "model=10k"}, env_file=None)
    async with running_bot(settings, ["Alice"]) as lb:
        meter = lb.services.usage
        alice = lb.members["Alice"]
        who = Who(person=f"discord:{alice.id}", guild=lb.guild.id)
        real = meter.clock
        meter.clock = lambda: real() - 86400  # yesterday's use
        meter.settle(await meter.reserve("model", who, 700, engine="openai"), 600)
        await meter.release()
        meter.clock = real
        meter.settle(await meter.reserve("model", who, 500, engine="openai"), 400)
        await meter.release()
        yesterday, today = meter.days_back(2)[1], meter.day()
        assert await meter.store.used(yesterday, "model", who.person) == 600
        await lb.command(alice, "forget")
        async with asyncio.timeout(TIMEOUT):  # the totals go after the answer: wait for them to
            while await meter.store.used(yesterday, "model", who.person):
                await asyncio.sleep(0.01)
        assert await meter.store.used(yesterday, "model", f"guild:{lb.guild.id}/{who.person}") == 0
        assert await meter.store.used(today, "model", who.person) == 400  # today's limit still holds
        assert await meter.store.used(yesterday, "model", f"guild:{lb.guild.id}") == 600
