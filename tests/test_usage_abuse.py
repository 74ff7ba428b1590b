"""Abuse cases against the real bot: the loopback Discord, Twilio, Deepgram and ElevenLabs fakes, the
real SDKs pointed at them, and a simulated clock injected into the usage meter (never sleeps).

Each test counts what the paid fakes received after the limit was reached: nothing beyond the
limit (a request is reserved before it is made, so not even the one in flight goes over).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import html
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bot.memory import Memory
from bot.phone.caller import LoopbackTwilio
from bot.phone.service import PhoneService, build_phone
from bot.settings import Settings, load_settings
from bot.simulate import running_bot
from bot.store import Database, SqliteDatabase, open_database
from bot.usage import UsageMeter
from bot.usage.messages import resting_text
from bot.web import WebServer, create_app
from tests.fakes.deepgram_server import FakeDeepgram, word_audio

TIMEOUT = 60.0
ACCOUNT = "AC" + "0" * 32
AUTH = "usage-test-auth-token"
PUBLIC = "https://bot.example.test"
CALLER = "+15557654321"
SECOND = 16000 * 2  # bytes of one second of the session's 16 kHz PCM
WORDS = word_audio([1], frames_per_word=50)  # one second the fake Deepgram hears as a word


class Clock:
    """A clock the test moves (epoch seconds, UTC)."""

    def __init__(self, when: str) -> None:
        self.now = self.at(when)

    @staticmethod
    def at(when: str) -> float:
        return dt.datetime.fromisoformat(when).replace(tzinfo=dt.timezone.utc).timestamp()

    def __call__(self) -> float:
        return self.now


def paid_audio(deepgram: FakeDeepgram) -> int:
    return sum(len(c.audio) for c in deepgram.connections)


# ------------------------------------------------------------------------------------- Discord voice


def voice_settings(deepgram: FakeDeepgram, **extra: str) -> Settings:
    return load_settings({"AGENT_ENGINE": "eliza", "STT_ENGINE": "deepgram", "DEEPGRAM_API_KEY": "test-key",
                          "DEEPGRAM_URL": deepgram.ws_url, "TTS_ENGINE": "espeak", "VOICE_MODE": "addressed",
                          **extra}, env_file=None)


async def talk(session: object, user_id: int, seconds: int, clock: Clock) -> None:
    """``seconds`` of words from ``user_id``, a second at a time as the receive path hands them over,
    the simulated clock moving with the audio; then the end of speech, answered."""
    session.on_speech_start(user_id)  # type: ignore[attr-defined]
    for _ in range(seconds):
        session.on_audio(user_id, WORDS)  # type: ignore[attr-defined]
        clock.now += 1.0
        stream = session.participants[user_id].stream  # type: ignore[attr-defined]
        if stream is not None:
            await stream.wait_sent()  # the reservation in flight answered (milliseconds in real life)
    session.on_speech_end(user_id)  # type: ignore[attr-defined]
    await asyncio.wait_for(session.wait_settled(), TIMEOUT)  # type: ignore[attr-defined]


def told(lb: object, text: str) -> int:
    return sum(text in (m.content or "") for m in lb.voice.bot_messages)  # type: ignore[attr-defined]


async def test_one_person_talking_for_8_hours_across_midnight_and_a_clock_that_jumps() -> None:
    async with FakeDeepgram() as deepgram:
        settings = voice_settings(deepgram, LIMITS_PER_PERSON="speech=2m")
        async with running_bot(settings, ["Alice", "Bob"]) as lb:
            clock = Clock("2026-12-07T20:00:00")
            lb.services.usage.clock = clock
            alice, bob = lb.members["Alice"], lb.members["Bob"]
            await alice.join_voice(lb.voice)
            await bob.join_voice(lb.voice)
            await lb.command(alice, "join")
            session = lb.manager.session(lb.guild.id)
            a, b = alice.id, bob.id
            notice_7th = resting_text("person", Clock.at("2026-12-08T00:00:00"), "en")
            notice_8th = resting_text("person", Clock.at("2026-12-09T00:00:00"), "en")

            while clock.now < Clock.at("2026-12-07T20:10:00"):
                await talk(session, a, 10, clock)
            before_midnight = paid_audio(deepgram)
            assert 110 * SECOND <= before_midnight <= 120 * SECOND  # all of the 2 minutes, nothing more
            await lb.discord.wait_bot_message(lb.voice, contains=notice_7th, timeout=TIMEOUT)
            # Bob carries on: his own stream, his own allowance.
            await talk(session, b, 10, clock)
            assert paid_audio(deepgram) == before_midnight + 10 * SECOND
            alice_only = paid_audio(deepgram)
            while clock.now < Clock.at("2026-12-08T00:00:00"):
                await talk(session, a, 10, clock)
            assert paid_audio(deepgram) == alice_only  # nothing of Alice's four hours went to Deepgram
            assert told(lb, notice_7th) == 1  # told once, in the channel
            while clock.now < Clock.at("2026-12-08T04:00:00"):  # past midnight: one new day's allowance
                await talk(session, a, 10, clock)
            after = paid_audio(deepgram)
            assert alice_only + 110 * SECOND <= after <= alice_only + 120 * SECOND
            await lb.discord.wait_bot_message(lb.voice, contains=notice_8th, timeout=TIMEOUT)

            clock.now = Clock.at("2026-12-07T23:00:00")  # the clock jumps back across midnight...
            for _ in range(6):
                await talk(session, a, 10, clock)
            clock.now = Clock.at("2026-12-08T05:00:00")  # ...and forward again
            for _ in range(6):
                await talk(session, a, 10, clock)
            assert paid_audio(deepgram) == after  # no day's allowance was handed out twice
            assert notice_8th == notice_7th and told(lb, notice_8th) == 2  # once each day: the same words
            await lb.services.usage.release()
            store = lb.services.usage.store
            assert await store.used("2026-12-07", "speech", f"discord:{a}") == pytest.approx(
                before_midnight / SECOND, abs=0.01)
            assert await store.used("2026-12-08", "speech", f"discord:{a}") == pytest.approx(
                (after - alice_only) / SECOND, abs=0.01)
            await lb.command(alice, "leave")
    assert lb.discord.problems == []


async def test_100_people_speaking_at_once_share_the_servers_minute() -> None:
    async with FakeDeepgram() as deepgram:
        settings = voice_settings(deepgram, LIMITS_PER_SERVER="speech=1m")
        async with running_bot(settings, ["Alice"]) as lb:
            clock = Clock("2026-12-07T12:00:00")
            lb.services.usage.clock = clock
            alice = lb.members["Alice"]
            await alice.join_voice(lb.voice)
            await lb.command(alice, "join")
            session = lb.manager.session(lb.guild.id)
            people = [10_000 + i for i in range(100)]
            for uid in people:
                session.on_speech_start(uid)
            for _second in range(5):  # five seconds of everyone at once
                for uid in people:
                    session.on_audio(uid, WORDS)
                clock.now += 1
                await asyncio.gather(*(session.participants[uid].stream.wait_sent() for uid in people))
            for uid in people:
                session.on_speech_end(uid)
            await asyncio.wait_for(session.wait_settled(), TIMEOUT)
            assert 0 < paid_audio(deepgram) <= 60 * SECOND
            # the server is told once, in the channel
            notice = resting_text("server", Clock.at("2026-12-08T00:00:00"), "en")
            await lb.discord.wait_bot_message(lb.voice, contains=notice, timeout=TIMEOUT)
            resting = [uid for uid in people if session.participants[uid].stream.over is not None]
            assert len(resting) >= 88  # at most 12 people had 5 s each
            assert told(lb, notice) == 1
            await lb.command(alice, "leave")
    assert lb.discord.problems == []


# ------------------------------------------------------------------------------------------ phone


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


async def test_over_the_speech_limit_the_local_recognizer_listens_with_limits_local_fallback() -> None:
    from bot.providers import local_stt_available

    if not local_stt_available():
        pytest.skip("faster-whisper is not installed")
    async with FakeDeepgram() as deepgram:
        settings = voice_settings(deepgram, LIMITS_PER_PERSON="speech=20s", LIMITS_LOCAL_FALLBACK="true")
        async with running_bot(settings, ["Alice"]) as lb:
            clock = Clock("2026-12-07T12:00:00")
            lb.services.usage.clock = clock
            alice = lb.members["Alice"]
            await alice.join_voice(lb.voice)
            await lb.command(alice, "join")
            assert lb.manager.usage_local_stt is not None and lb.manager.usage_local_stt.name == "local"
            session = lb.manager.session(lb.guild.id)
            for _ in range(4):
                await talk(session, alice.id, 10, clock)
            assert paid_audio(deepgram) <= 20 * SECOND
            assert session.participants[alice.id].stream.over is not None
            local = lb.services.usage.counters[("speech", "local")]
            assert local.amount >= 19  # the rest of her 40 s went to the local recognizer, counted
            await lb.command(alice, "leave")
    assert lb.discord.problems == []


async def test_speech_over_the_real_voice_transport_stops_at_the_limit() -> None:
    """Alice speaks through the loopback Discord's UDP (Opus, DAVE, transport encryption) as a
    Discord client does; the bot's receive path feeds the guarded recognizer."""
    import numpy as np
    import soxr

    from audio.native import load_libopus
    from tests.speech_samples import espeak_pcm

    load_libopus()
    pcm, rate = espeak_pcm("Good morning, can you hear me? I would like to talk about the weather today.")
    mono = soxr.resample(np.frombuffer(pcm, dtype="<i2"), rate, 48000).astype("<i2")
    stereo = np.repeat(mono, 2).tobytes()
    seconds = len(mono) / 48000
    async with FakeDeepgram() as deepgram:
        settings = voice_settings(deepgram, LIMITS_PER_PERSON=f"speech={seconds * 1.5:.1f}s")
        async with running_bot(settings, ["Alice"]) as lb:
            alice = lb.members["Alice"]
            participant = await alice.join_voice(lb.voice)
            await lb.command(alice, "join")
            await lb.wait_dave_group([alice])
            session = lb.manager.session(lb.guild.id)
            for _ in range(3):
                await lb.speak(participant.speak_pcm(stereo))
                await asyncio.wait_for(session.wait_settled(), TIMEOUT)
            assert 0 < paid_audio(deepgram) <= seconds * 1.5 * SECOND
            assert session.participants[alice.id].stream.over is not None
            notice = resting_text("person", lb.services.usage.until(lb.services.usage.day()), "en")
            await lb.discord.wait_bot_message(lb.voice, contains=notice, timeout=TIMEOUT)
            await lb.command(alice, "leave")
    assert lb.discord.problems == []
