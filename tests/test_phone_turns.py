"""Phone calls end a caller's turn the way voice channels do (issue 12 on calls): a short stretch
of VAD silence asks Deepgram for the words (``Finalize``), the words decide how long to wait, and a
speculative reply starts early but is never played or stored if the caller goes on.

Real parts: the loopback Twilio caller streams espeak-ng speech as μ-law in real time and keeps
sending the line's silence; the bot's phone path decodes it, its VAD finds the pauses; the real
Deepgram SDK talks to the loopback Deepgram in speech mode (loud frames are speech, the words come
from a script, ``Finalize`` answered with what it has). State-based: the rule's waits are 0 (a
finished sentence ends the turn as soon as its words are in) or a minute (an unfinished one never
ends on its own within a test), so nothing depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr

from audio.stt.deepgram import DeepgramSTT
from audio.tts.espeak import EspeakEngine
from bot.agent import Agent
from bot.agent.character import default_character
from bot.agent.engines.base import Conversation, ReplyEngine
from bot.i18n.places import PlaceLanguages
from bot.store import SqliteDatabase as Database
from bot.memory import Memory
from bot.phone.audio import MULAW_RATE, mulaw_decode, mulaw_encode
from bot.phone.call import CallOptions, PhoneCall
from bot.phone.caller import LoopbackTwilio
from bot.phone.service import PhoneService, TwilioCalls, build_phone
from bot.settings import Settings, load_settings
from bot.voice.endpointing import TurnDetection
from bot.web import WebServer, create_app
from tests.fakes.deepgram_server import FakeDeepgram, SpeechScript, is_voiced_frame
from tests.fakes.fake_agent import FakeAgent
from tests.fakes.fake_stt import FakeSTTEngine
from tests.test_phone_call import ACCOUNT, AUTH, CALLER, PUBLIC, TIMEOUT, phone_settings, rig
from tests.test_turn_detection import EchoEngine

# Finished-looking words end the turn at once; unfinished-looking ones would wait a minute.
RULE = TurnDetection(pause_ms=100, finished_ms=0, unfinished_ms=60_000)


def speech_8k(text: str) -> bytes:
    """espeak-ng speech at 8 kHz with its quiet ends cut (the last frame is the end of the voice)."""
    from bench.latency import _trim
    from tests.speech_samples import espeak_pcm

    pcm, rate = espeak_pcm(text)
    pcm = _trim(pcm, rate)
    return np.asarray(soxr.resample(np.frombuffer(pcm, dtype="<i2"), rate, MULAW_RATE), dtype="<i2").tobytes()


def voiced(pcm8k: bytes) -> int:
    """Frames the fake Deepgram counts as speech (after the μ-law round trip it hears)."""
    pcm = mulaw_decode(mulaw_encode(pcm8k))
    return sum(is_voiced_frame(pcm[i:i + 320]) for i in range(0, len(pcm) - 319, 320))


@dataclass
class DeepgramRig:
    twilio: LoopbackTwilio
    phone: PhoneService
    dg: FakeDeepgram
    script: SpeechScript
    engine: EchoEngine
    memory: Memory


@contextlib.asynccontextmanager
async def deepgram_rig(options: CallOptions) -> AsyncIterator[DeepgramRig]:
    script = SpeechScript()
    engine = EchoEngine()
    db = Database.in_memory()
    memory = (await Memory.open(db))
    async with FakeDeepgram(script=script) as dg, LoopbackTwilio(
            bot_url="http://127.0.0.1:1", public_url=PUBLIC, account_sid=ACCOUNT, auth_token=AUTH) as twilio:
        stt = DeepgramSTT(dg.api_key, base_url=dg.http_url, ws_url=dg.ws_url)
        phone = PhoneService(
            agent=Agent(default_character(), engine, memory), memory=memory, stt=stt, tts=EspeakEngine(),
            fallback_tts=None, voice=None, auth_token=AUTH, public_url=PUBLIC, options=options,
            calls=TwilioCalls(ACCOUNT, AUTH, api_base=twilio.api_base),
        )
        server = WebServer(create_app(phone=phone), "127.0.0.1", 0)
        await server.start()
        twilio.set_bot_url(server.url)
        try:
            yield DeepgramRig(twilio, phone, dg, script, engine, memory)
            assert phone.calls == {}, "a call's socket is still open"
        finally:
            await server.stop()
            await phone.aclose()
            await stt.aclose()
            await db.close()
    leftovers = [t.get_name() for t in asyncio.all_tasks() if not t.done()
                 and t.get_name().startswith(("phone-", "caller-", "stt-", "respond-", "reply-", "tts-", "speculat"))]
    assert leftovers == [], f"tasks left behind: {leftovers}"


async def say_parts(r: DeepgramRig, parts: list[str], pause: float) -> tuple[object, PhoneCall, float]:
    """Call, say ``parts`` with ``pause`` seconds of line silence between them; return the call,
    the bot's side of it and the clock time the last voiced frame was sent."""
    clips = [speech_8k(p) for p in parts]
    call = await r.twilio.call(CALLER)
    await call.wait_for(lambda: call.call_sid in r.phone.calls, TIMEOUT)
    bot = r.phone.calls[call.call_sid]
    await asyncio.wait_for(bot.started.wait(), TIMEOUT)
    r.script.say([(text, voiced(clip)) for text, clip in zip(parts, clips)])
    for k, clip in enumerate(clips):
        await call.speak_pcm(clip, trailing_silence=0.0)
        if k + 1 < len(clips):
            await call.silence(pause)  # the caller thinks; the line sends silence
    assert call.speech_sent_until is not None
    return call, bot, call.speech_sent_until


async def test_a_caller_who_pauses_mid_sentence_and_goes_on_is_one_turn_and_the_early_reply_is_never_heard() -> None:
    async with deepgram_rig(CallOptions(max_seconds=0, turn_detection=RULE, speculate=True)) as r:
        call, bot, speech_end = await say_parts(r, ["I was thinking about", "the weather in Lisbon."], pause=0.6)
        assert bot.session is not None and bot.out is not None
        # The pause was seen in the audio: Deepgram was asked for the words there, and a reply was
        # started on them; the caller went on, so it was thrown away.
        assert bot.session.speculations_wasted >= 1
        assert not any(t < speech_end for t in bot.out.first_media_at), "a reply played before the caller finished"
        await answered_on_a_silent_line(r, call, bot, until_quiet=True)
        assert [t.text for t in bot.heard] == ["I was thinking about the weather in Lisbon."]
        control = [c.control_types() for c in r.dg.connections]
        assert any("Finalize" in types for types in control)
        # Memory has the whole turn once and only the reply that was played (none for the half).
        turns = [(t.role, t.text) for t in (await r.memory.recent(f"phone:{CALLER}", 10))]
        assert turns[0] == ("user", "I was thinking about the weather in Lisbon.")
        assert [role for role, _ in turns] == ["user", "assistant"]
        assert "Lisbon" in turns[1][1] and "You said: I was thinking about." not in turns[1][1]


async def answered_on_a_silent_line(r: DeepgramRig, call: Any, bot: PhoneCall, *, until_quiet: bool = False) -> None:
    """Keep the caller's line silent (as a phone line is) until the bot has answered, then hang up
    (``until_quiet``: once the caller has also stopped receiving the reply's audio)."""
    assert bot.session is not None
    silence = asyncio.get_running_loop().create_task(call.silence(TIMEOUT), name="caller-line-silence")
    try:
        await call.wait_for(lambda: call.media_received > 0, TIMEOUT)
        await asyncio.wait_for(bot.session.wait_settled(), TIMEOUT)
    finally:
        silence.cancel()
        await asyncio.gather(silence, return_exceptions=True)
    if until_quiet:
        await call.wait_quiet(TIMEOUT)
    await call.hang_up()
    await r.phone.wait_ended(1, TIMEOUT)
    await call.close()


async def test_a_finished_sentence_ends_the_turn_on_the_short_pause_with_the_speculative_reply() -> None:
    async with deepgram_rig(CallOptions(max_seconds=0, turn_detection=RULE, speculate=True)) as r:
        call, bot, speech_end = await say_parts(r, ["Why do cats sleep so much?"], pause=0.0)
        assert bot.session is not None
        await answered_on_a_silent_line(r, call, bot)
        timing = bot.session.last_timing
        assert timing is not None and timing.speculative  # the reply started on the pause's words was the answer
        assert len(r.engine.conversations) == 1 and bot.session.speculations_wasted == 0
        assert [t.text for t in bot.heard] == ["Why do cats sleep so much?"]
        # The end of speech was the short pause (TURN_PAUSE_MS of silence), not the old 600 ms rule:
        # the recognizer was asked to finalize while the line was still silent, before 600 ms.
        assert bot.report.speech_ends and timing.turn_end is not None
        assert any("Finalize" in c.control_types() for c in r.dg.connections)


async def test_the_old_rule_still_ends_a_turn_on_the_recognizers_final_without_speculation() -> None:
    async with deepgram_rig(CallOptions(max_seconds=0)) as r:  # turn_detection None: the 600 ms rule
        call, bot, _ = await say_parts(r, ["Why do cats sleep so much?"], pause=0.0)
        assert bot.session is not None
        assert bot.session.turn_detection is None and bot.options.vad_end_ms == 600
        await answered_on_a_silent_line(r, call, bot)
        assert bot.session.speculations_started == 0
        assert [t.text for t in bot.heard] == ["Why do cats sleep so much?"]


LONG = ("The first thing to know is this. The second thing is quite long as well. "
        "The third thing follows after that. The fourth thing is the last one.")


class LongEngine(ReplyEngine):
    """A language model that goes on: the reply streams word by word."""

    name = "long"

    async def stream(self, conversation: Conversation) -> AsyncIterator[str]:
        for word in LONG.split(" "):
            yield word + " "

    async def check(self) -> str:
        return "ok"


async def test_voice_reply_max_seconds_shortens_a_reply_on_a_call() -> None:
    options = CallOptions(max_seconds=0, max_reply_seconds=1.0)

    async def make(settings: Settings, memory: Memory, db: Database) -> PhoneService:
        assert settings.twilio_api_base
        return PhoneService(
            agent=Agent(default_character(), LongEngine(), memory), memory=memory,
            stt=FakeSTTEngine(["tell me everything"]), tts=EspeakEngine(), fallback_tts=None, voice=None,
            auth_token=AUTH, public_url=PUBLIC, options=options,
            calls=TwilioCalls(ACCOUNT, AUTH, api_base=settings.twilio_api_base),
        )

    async with rig(make) as r:
        call = await r.twilio.call(CALLER)
        await call.speak_pcm(speech_8k("Tell me everything."), trailing_silence=1.0)
        bot = r.phone.calls[call.call_sid]
        await call.wait_for(lambda: call.media_received > 0, TIMEOUT)
        assert bot.session is not None
        await asyncio.wait_for(bot.session.wait_settled(), TIMEOUT)
        await call.wait_quiet(TIMEOUT)
        await call.hang_up()
        await r.phone.wait_ended(1, TIMEOUT)
        await call.close()
        said = [t for t in (await r.memory.recent(f"phone:{CALLER}", 10)) if t.role == "assistant"]
        assert said and said[0].text.startswith("The first thing")
        assert "fourth" not in said[0].text  # stopped at a sentence past the limit, not read to the end
        assert bot.session.max_reply_seconds == 1.0


def test_build_phone_takes_turn_detection_speculation_and_the_reply_limit_from_settings() -> None:
    async def build(**extra: str) -> CallOptions:
        from bot.agent.factory import build_agent

        db = Database.in_memory()
        memory = (await Memory.open(db))
        settings = phone_settings("http://127.0.0.1:1", **extra)
        agent = await build_agent(settings, memory)
        phone = build_phone(settings, agent=agent, memory=memory, store=db,
                        languages=await PlaceLanguages.open(db, settings.language))
        try:
            return phone.options
        finally:
            await phone.aclose()
            await db.close()

    smart = asyncio.run(build(TURN_PAUSE_MS="120", TURN_END_MS="300", TURN_HOLD_MS="1500",
                              VOICE_REPLY_MAX_SECONDS="20"))
    assert smart.smart and smart.speculate and smart.vad_end_ms == 120
    assert smart.turn_detection == TurnDetection(pause_ms=120, finished_ms=300, unfinished_ms=1500)
    assert smart.max_reply_seconds == 20.0
    fixed = asyncio.run(build(TURN_DETECTION="fixed", SPECULATIVE_REPLY="false"))
    assert not fixed.smart and not fixed.speculate and fixed.vad_end_ms == 600
    assert load_settings({}, env_file=None).turn_detection == "smart"  # calls follow the default too


async def test_a_final_that_comes_while_the_vad_still_hears_speech_is_dated_now_not_at_the_previous_pause() -> None:
    """The old rule on a phone line: Deepgram endpoints on 300 ms of the line's silence while the
    VAD's 600 ms have not passed. That turn ended now; dated at the caller's previous pause, it
    looked stale 10 s into a call and was dropped unanswered (seen in the call benchmark)."""
    from bot.voice.session import VoiceSession
    from bot.voice.turns import PendingTurn, TurnPolicy, VoiceMode
    from tests.test_voice_session import FRAME, RecordingOut

    stt = FakeSTTEngine()
    memory = (await Memory.open(Database.in_memory()))
    session = VoiceSession(room="phone:+15550001234", agent=FakeAgent(memory), memory=memory, stt=stt,
                           tts=EspeakEngine(), out=RecordingOut(),
                           policy=TurnPolicy(bot_names=("Testy",), mode=VoiceMode.ALWAYS))
    heard: list[PendingTurn] = []
    session.on_turn = heard.append
    try:
        session.on_speech_start(1)
        session.on_audio(1, FRAME)
        session.on_speech_end(1)
        stt.stream_for("1").say("hello there")
        await asyncio.wait_for(_until(lambda: len(heard) == 1), TIMEOUT)
        first_pause = heard[0].ended_at
        session.on_speech_start(1)  # the caller speaks again; the line's silence follows, the VAD not done yet
        session.on_audio(1, FRAME)
        stt.stream_for("1").say("and another thing")
        await asyncio.wait_for(_until(lambda: len(heard) == 2), TIMEOUT)
        assert heard[1].ended_at > first_pause
    finally:
        await session.aclose()


async def _until(predicate: object) -> None:
    while not predicate():  # type: ignore[operator]
        await asyncio.sleep(0.005)
