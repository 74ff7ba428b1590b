"""Abuse cases against the real bot's phone line: the loopback Twilio and the Deepgram fake, the real
SDKs pointed at them, and a simulated clock injected into the usage meter (never sleeps). The
Discord voice cases are tests/test_usage_abuse.py.

Each test counts what the paid fakes received after the limit was reached: nothing beyond the
limit (a request is reserved before it is made, so not even the one in flight goes over).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bot.memory import Memory
from bot.phone.caller import LoopbackTwilio
from bot.phone.service import PhoneService, build_phone
from bot.settings import Settings, load_settings
from bot.store import Database, SqliteDatabase, open_database
from bot.usage import UsageMeter
from bot.web import WebServer, create_app
from tests.fakes.deepgram_server import FakeDeepgram
from tests.usage_abuse import Clock, paid_audio

TIMEOUT = 60.0
ACCOUNT = "AC" + "0" * 32
AUTH = "usage-test-auth-token"
PUBLIC = "https://bot.example.test"
CALLER = "+15557654321"


@dataclass
class PhoneRig:
    twilio: LoopbackTwilio
    phone: PhoneService
    meter: UsageMeter


def phone_settings(twilio: LoopbackTwilio, deepgram: FakeDeepgram, **extra: str) -> Settings:
    return load_settings({"AGENT_ENGINE": "eliza", "STT_ENGINE": "deepgram", "DEEPGRAM_API_KEY": "test-key",
                          "DEEPGRAM_URL": deepgram.ws_url, "TTS_ENGINE": "espeak", "TWILIO_ACCOUNT_SID": ACCOUNT,
                          "TWILIO_AUTH_TOKEN": AUTH, "TWILIO_PHONE_NUMBER": "+15550001111",
                          "TWILIO_API_BASE": twilio.api_base, "PUBLIC_URL": PUBLIC, "PHONE_AI_NOTICE": "false",
                          "PHONE_MAX_CALL_SECONDS": "60", **extra}, env_file=None)


@contextlib.asynccontextmanager
async def phone_rig(deepgram: FakeDeepgram, store: Database, clock: Clock, **extra: str) -> AsyncIterator[PhoneRig]:
    """The real phone service (build_phone, as the bot builds it) on its own web server, metering on ``store``."""
    async with LoopbackTwilio(bot_url="http://127.0.0.1:1", public_url=PUBLIC, account_sid=ACCOUNT,
                              auth_token=AUTH) as twilio:
        from bot.agent.factory import build_agent
        from bot.usage.wiring import build_meter

        settings = phone_settings(twilio, deepgram, **extra)
        memory = await Memory.open(store)  # the one database
        agent = await build_agent(settings, memory)
        meter = build_meter(settings, store)
        meter.clock = clock
        phone = build_phone(settings, agent=agent, memory=memory, store=store, usage=meter)
        server = WebServer(create_app(phone=phone), "127.0.0.1", 0)
        await server.start()
        twilio.set_bot_url(server.url)
        try:
            yield PhoneRig(twilio, phone, meter)
        finally:
            await server.stop()
            await phone.aclose()
            await meter.aclose()
            await agent.aclose()
            await memory.aclose()


_SPEECH: list[bytes] = []


def speech_8k() -> bytes:
    """About a second and a half of espeak-ng speech at 8 kHz (the phone's VAD hears it as a voice)."""
    if not _SPEECH:
        import numpy as np
        import soxr

        from tests.speech_samples import espeak_pcm

        pcm, rate = espeak_pcm("Hello there, how are you?")
        samples = soxr.resample(np.frombuffer(pcm, dtype="<i2"), rate, 8000)
        _SPEECH.append(np.asarray(samples, dtype="<i2").tobytes())
    return _SPEECH[0]


async def one_call(r: PhoneRig, clock: Clock, *, seconds: int = 1) -> str:
    """Ring; when connected, say ``seconds`` of words (and Twilio's second of silence after) and hang
    up. Returns the TwiML the bot answered."""
    sid, twiml = await r.twilio.ring(CALLER)
    url = r.twilio.stream_url(twiml)
    if url is not None:
        call = await r.twilio.open_stream(url, sid, CALLER)
        await call.speak_pcm(speech_8k() * seconds)
        await call.hang_up()

        def over() -> bool:
            return any(c.grant.call_sid == sid for c in r.phone.finished)

        async with r.phone.changed:
            await asyncio.wait_for(r.phone.changed.wait_for(over), TIMEOUT)
        await call.close()
    clock.now += 72  # fifty calls an hour
    return twiml


async def test_one_caller_calling_50_times_in_an_hour() -> None:
    store = SqliteDatabase(":memory:")
    clock = Clock("2026-12-07T09:00:00")
    try:
        async with FakeDeepgram() as deepgram, phone_rig(deepgram, store, clock,
                                                         LIMITS_PER_PERSON="speech=15s,phone=10m") as r:
            answers = []
            connections_at_refusal = None
            for _ in range(50):
                twiml = await one_call(r, clock)
                answers.append(twiml)
                if "<Connect>" not in twiml and connections_at_refusal is None:
                    connections_at_refusal = len(deepgram.connections)
            connected = [a for a in answers if "<Connect>" in a]
            refused = [a for a in answers if "<Connect>" not in a]
            assert 5 <= len(connected) <= 15 and len(refused) == 50 - len(connected)
            # after the first refusal no call reached Deepgram: no stream opened, no audio
            assert len(deepgram.connections) == connections_at_refusal
            assert paid_audio(deepgram) <= 15 * 8000  # μ-law: 8,000 bytes a second
            expected = html.escape("I'm resting for this number until 00:00 UTC", quote=False)
            assert all(expected in a and "<Hangup />" in a for a in refused)
            await r.meter.release()
            used = await r.meter.store.used("2026-12-07", "phone", f"phone:{CALLER}")
            assert 0 < used < 10 * 60  # the calls' real length, not the minutes reserved
    finally:
        await store.close()


async def test_two_processes_on_one_postgresql_share_one_callers_budget_and_a_restart_at_235959(
        pg_url: str) -> None:
    first, second, third = [await open_database(pg_url) for _ in range(3)]
    clock = Clock("2026-12-07T23:30:00")
    try:
        async with FakeDeepgram() as deepgram, \
                phone_rig(deepgram, first, clock, LIMITS_PER_PERSON="speech=12s") as one, \
                phone_rig(deepgram, second, clock, LIMITS_PER_PERSON="speech=12s") as two:
            answers = []
            for i in range(12):  # calls land on either process, as a load balancer would send them
                answers.append(await one_call(one if i % 2 else two, clock, seconds=2))
            assert "<Connect>" not in answers[-1]
            assert paid_audio(deepgram) <= 12 * 8000  # one budget, never two
            heard = paid_audio(deepgram)
            clock.now = Clock.at("2026-12-07T23:59:59")
            # a restart at 23:59:59: a new process on the same database still refuses ...
            async with phone_rig(deepgram, third, clock, LIMITS_PER_PERSON="speech=12s") as restarted:
                assert "<Connect>" not in await one_call(restarted, clock)
                clock.now = Clock.at("2026-12-07T23:59:59")
                clock.now += 2  # ... and midnight brings one new allowance, once
                assert "<Connect>" in await one_call(restarted, clock, seconds=2)
            assert heard < paid_audio(deepgram) <= heard + 12 * 8000
    finally:
        for db in (first, second, third):
            await db.close()
