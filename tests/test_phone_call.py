"""Phone calls end to end: the loopback caller (Twilio's side, real wire protocols) against the bot's
web server with the phone routes, the real VoiceSession, and real or scripted engines.

The first tests use the local engines all the way: espeak-ng speech from the caller, faster-whisper
on the bot, ELIZA answering, espeak-ng replying, resampled and μ-law encoded in process; the reply is
decoded back from μ-law and recognised by the local recognizer. Nothing waits on time: waits are on
state (the call ended, the caller quiet, memory rows) with timeouts only as failure guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import pytest
import soxr

from audio.stt.base import STTError
from audio.tts.base import AudioFormat, TTSEngine, TTSError, VoiceInfo, VoiceSpec
from bot.db import Database
from bot.memory import Memory, Modality
from bot.phone.audio import MULAW_RATE
from bot.phone.call import CallOptions
from bot.phone.caller import CallRefused, LoopbackCall, LoopbackTwilio
from bot.phone.service import PhoneService, TwilioCalls, build_phone
from bot.providers import local_stt_available
from bot.settings import Settings, load_settings
from bot.web import WebServer, create_app
from tests.fakes.fake_agent import FakeAgent
from tests.fakes.fake_stt import FakeSTTEngine

ACCOUNT = "AC" + "0" * 32
AUTH = "phone-test-auth-token"
PUBLIC = "https://bot.example.test"
CALLER = "+15557654321"
TIMEOUT = 60.0

needs_whisper = pytest.mark.skipif(not local_stt_available(), reason="faster-whisper is not installed")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def phone_settings(api_base: str, **extra: str) -> Settings:
    env = {"AGENT_ENGINE": "eliza", "STT_ENGINE": "local", "TTS_ENGINE": "espeak",
           "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": AUTH, "TWILIO_PHONE_NUMBER": "+15550001111",
           "TWILIO_API_BASE": api_base, "PUBLIC_URL": PUBLIC, "PHONE_AI_NOTICE": "false", **extra}
    return load_settings(env, env_file=None)


@dataclass
class Rig:
    twilio: LoopbackTwilio
    phone: PhoneService
    server: WebServer
    memory: Memory

    async def healthy(self) -> bool:
        async with aiohttp.ClientSession() as http, http.get(self.server.url + "/healthz") as resp:
            return resp.status == 200


Make = Callable[[Settings, Memory, Database], Awaitable[PhoneService]]


@contextlib.asynccontextmanager
async def rig(make: Make, **extra: str) -> AsyncIterator[Rig]:
    async with LoopbackTwilio(bot_url="http://127.0.0.1:1", public_url=PUBLIC, account_sid=ACCOUNT,
                              auth_token=AUTH) as twilio:
        settings = phone_settings(twilio.api_base, **extra)
        db = Database.in_memory()
        memory = Memory(db)
        phone = await make(settings, memory, db)
        server = WebServer(create_app(phone=phone), "127.0.0.1", 0)
        await server.start()
        twilio.set_bot_url(server.url)
        try:
            yield Rig(twilio, phone, server, memory)
        finally:
            await server.stop()
            await phone.aclose()
            db.close()
    leftovers = [t.get_name() for t in asyncio.all_tasks() if not t.done()
                 and t.get_name().startswith(("phone-", "caller-", "stt-", "respond-", "reply-", "tts-"))]
    assert leftovers == [], f"tasks left behind: {leftovers}"


def scripted(agent: Any, *, stt: Any = None, tts: TTSEngine | None = None, fallback: TTSEngine | None = None,
             options: CallOptions | None = None, allowed: tuple[str, ...] = ()) -> Make:
    """A phone service with test engines (the local espeak voice unless ``tts`` is given)."""

    async def make(settings: Settings, memory: Memory, db: Database) -> PhoneService:
        from audio.tts.espeak import EspeakEngine

        if hasattr(agent, "memory"):
            agent.memory = memory
        assert settings.twilio_api_base
        return PhoneService(
            agent=agent, memory=memory, stt=stt, tts=tts or EspeakEngine(), fallback_tts=fallback, voice=None,
            auth_token=AUTH, public_url=PUBLIC, options=options or CallOptions(max_seconds=0),
            allowed_callers=allowed, calls=TwilioCalls(ACCOUNT, AUTH, api_base=settings.twilio_api_base),
        )

    return make


async def real_phone(settings: Settings, memory: Memory, db: Database) -> PhoneService:
    from bot.agent.factory import build_agent

    agent = await build_agent(settings, memory)
    phone = build_phone(settings, agent=agent, memory=memory, db=db)
    if phone.stt is not None:
        await phone.stt.check()  # load the model now, not during the first turn
    return phone


def speech_8k(text: str) -> bytes:
    from tests.speech_samples import espeak_pcm

    pcm, rate = espeak_pcm(text)
    samples = soxr.resample(np.frombuffer(pcm, dtype="<i2"), rate, MULAW_RATE)
    return np.asarray(samples, dtype="<i2").tobytes()


def to_whisper(pcm8k: bytes) -> bytes:
    samples = soxr.resample(np.frombuffer(pcm8k, dtype="<i2"), MULAW_RATE, 16000)
    return np.asarray(samples, dtype="<i2").tobytes()


async def ended(r: Rig, call: LoopbackCall, count: int = 1) -> Any:
    """Wait for the bot side of the call to be over; returns its PhoneCall."""
    finished = await r.phone.wait_ended(count, TIMEOUT)
    await call.close()
    return next(c for c in finished if c.grant.call_sid == call.call_sid)


# ------------------------------------------------------------------------------------ the whole call


@needs_whisper
async def test_a_call_is_heard_answered_and_the_reply_recognised_from_mulaw() -> None:
    async with rig(real_phone, PHONE_GREETING="Hello caller.") as r:
        call = await r.twilio.call(CALLER)
        assert "<Connect><Stream url=\"wss://bot.example.test/twilio/media/" in call.twiml
        # The greeting is played and its mark echoed before the caller speaks.
        await call.wait_for(lambda: len(call.marks_echoed) >= 1, TIMEOUT)
        await call.speak_pcm(speech_8k("Please tell me a joke about the weather."), trailing_silence=1.0)
        bot_call = r.phone.calls[call.call_sid]
        session = bot_call.session
        await call.wait_for(lambda: len(call.marks_echoed) >= 2, TIMEOUT)
        await asyncio.wait_for(session.wait_settled(), TIMEOUT)
        await call.wait_quiet(TIMEOUT)
        assert session.timings and session.timings[-1].reply
        reply = session.timings[-1].reply
        heard = words(bot_call.heard[0].text)
        assert len({"tell", "joke", "weather"} & heard) >= 2, bot_call.heard
        # What the caller heard, decoded from μ-law and recognised by the local recognizer.
        utterances = call.utterances()
        assert len(utterances) >= 2  # the greeting, then the reply
        reply_mulaw = b"".join(seg.mulaw for group in utterances[1:] for seg in group)
        from bot.phone.audio import mulaw_decode

        recognised = await r.phone.stt.transcribe(to_whisper(mulaw_decode(reply_mulaw)))  # type: ignore[union-attr]
        expected = {w for w in words(reply) if len(w) > 3}
        assert len(expected & words(recognised)) >= max(1, len(expected) // 2), (recognised, reply)
        await call.hang_up()
        bot = await ended(r, call)
        assert bot.report.ended_by == "caller"
        turns = r.memory.recent(f"phone:{CALLER}", 10)
        assert [t.role for t in turns] == ["user", "assistant"]
        assert turns[0].speaker_id == f"phone:{CALLER}" and turns[0].modality is Modality.CALL
        assert turns[1].text == reply and not turns[1].interrupted
        assert await r.healthy()
