"""Abuse cases against the real bot in Discord voice: the loopback Discord and the Deepgram fake, the
real SDKs pointed at them, and a simulated clock injected into the usage meter (never sleeps).
The phone's cases are tests/test_usage_abuse_phone.py, a file of their own so that --dist loadfile
can run the two halves (each about 45 s, mostly real-time audio) on different workers.

Each test counts what the paid fakes received after the limit was reached: nothing beyond the
limit (a request is reserved before it is made, so not even the one in flight goes over).
"""

from __future__ import annotations

import asyncio

import pytest

from bot.settings import Settings, load_settings
from bot.simulate import running_bot
from bot.usage.messages import resting_text
from tests.fakes.deepgram_server import FakeDeepgram, word_audio
from tests.usage_abuse import Clock, paid_audio

TIMEOUT = 60.0
SECOND = 16000 * 2  # bytes of one second of the session's 16 kHz PCM
WORDS = word_audio([1], frames_per_word=50)  # one second the fake Deepgram hears as a word


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
