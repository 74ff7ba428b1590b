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
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import pytest
import soxr

from audio.stt.base import STTError
from audio.stt.local import LocalWhisperSTT
from audio.tts.base import AudioFormat, TTSEngine, TTSError, VoiceInfo, VoiceSpec
from bot.i18n.places import PlaceLanguages
from bot.store import SqliteDatabase as Database
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
        memory = (await Memory.open(db))
        phone = await make(settings, memory, db)
        server = WebServer(create_app(phone=phone), "127.0.0.1", 0)
        await server.start()
        twilio.set_bot_url(server.url)
        try:
            yield Rig(twilio, phone, server, memory)
            assert phone.calls == {}, "a call's socket is still open"
        finally:
            await server.stop()
            await phone.aclose()
            await db.close()
    leftovers = [t.get_name() for t in asyncio.all_tasks() if not t.done()
                 and t.get_name().startswith(("phone-", "caller-", "stt-", "respond-", "reply-", "tts-"))]
    assert leftovers == [], f"tasks left behind: {leftovers}"


def scripted(agent: Any, *, stt: Any = None, tts: TTSEngine | None = None, fallback: TTSEngine | None = None,
             options: CallOptions | None = None, allowed: tuple[str, ...] = (), max_calls: int = 10,
             language: str | None = None) -> Make:
    """A phone service with test engines (the local espeak voice unless ``tts`` is given); with
    ``language``, the caller's number has that language set (the per-number rows SMS uses)."""

    async def make(settings: Settings, memory: Memory, db: Database) -> PhoneService:
        from audio.tts.espeak import EspeakEngine

        if hasattr(agent, "memory"):
            agent.memory = memory
        assert settings.twilio_api_base
        languages = None
        if language is not None:
            from bot.i18n.places import PlaceLanguages

            languages = (await PlaceLanguages.open(db, "auto"))
            (await languages.set(f"phone:{CALLER}", language))
        return PhoneService(
            agent=agent, memory=memory, stt=stt, tts=tts or EspeakEngine(), fallback_tts=fallback, voice=None,
            auth_token=AUTH, public_url=PUBLIC, options=options or CallOptions(max_seconds=0),
            allowed_callers=allowed, calls=TwilioCalls(ACCOUNT, AUTH, api_base=settings.twilio_api_base),
            max_calls=max_calls, languages=languages,
        )

    return make


async def real_phone(settings: Settings, memory: Memory, db: Database) -> PhoneService:
    from bot.agent.factory import build_agent

    agent = await build_agent(settings, memory)
    phone = build_phone(settings, agent=agent, memory=memory, store=db,
                        languages=await PlaceLanguages.open(db, settings.language))
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

        # An independent listener: Whisper with its full window. The bot's own recognizer encodes
        # only the speech (LOCAL_STT_SHORT_WINDOW), which on this short reply cut from a phone line
        # heard "Please, go on." as "Clean, gone." under load (the clip's start varies by a frame).
        listener = LocalWhisperSTT(language="en", short_window=False)
        recognised = await listener.transcribe(to_whisper(mulaw_decode(reply_mulaw)))
        expected = {w for w in words(reply) if len(w) > 3}
        assert len(expected & words(recognised)) >= max(1, len(expected) // 2), (recognised, reply)
        await call.hang_up()
        bot = await ended(r, call)
        assert bot.report.ended_by == "caller"
        turns = (await r.memory.recent(f"phone:{CALLER}", 10))
        assert [t.role for t in turns] == ["user", "assistant"]
        assert turns[0].speaker_id == f"phone:{CALLER}" and turns[0].modality is Modality.CALL
        assert turns[1].text == reply and not turns[1].interrupted
        assert await r.healthy()


LONG_REPLY = ("Well, let me tell you a rather long story about the weather. It rained on Monday and it rained "
              "on Tuesday. On Wednesday the sun came out for an hour. Then the wind picked up on Thursday. "
              "By Friday everybody had an umbrella. And on Saturday it snowed, which nobody expected at all.")


async def speak(call: LoopbackCall, text: str = "Hello there, how are you today?", silence: float = 1.0) -> None:
    await call.speak_pcm(speech_8k(text), trailing_silence=silence)


async def test_barge_in_sends_clear_and_memory_marks_the_reply_interrupted() -> None:
    agent = FakeAgent(replies=[LONG_REPLY, "Sure, go ahead."])
    stt = FakeSTTEngine(["tell me about the weather", "wait, stop please"])
    async with rig(scripted(agent, stt=stt)) as r:
        call = await r.twilio.call(CALLER)
        await speak(call)
        await call.wait_for(lambda: call.media_received > 0, TIMEOUT)  # the reply is playing
        await speak(call, "Wait, stop please.")
        await call.wait_for(lambda: call.clears >= 1, TIMEOUT)
        bot_call = r.phone.calls[call.call_sid]
        await asyncio.wait_for(bot_call.session.wait_settled(), TIMEOUT)
        await call.wait_quiet(TIMEOUT)
        await call.hang_up()
        bot = await ended(r, call)
        assert bot.report.clears >= 1
        said = [t for t in (await r.memory.recent(f"phone:{CALLER}", 10)) if t.role == "assistant"]
        assert said[0].interrupted and said[0].text and LONG_REPLY.startswith(said[0].text.rstrip(" …"))
        assert len(said[0].text) < len(LONG_REPLY)
        assert said[1].text == "Sure, go ahead." and not said[1].interrupted
        # What memory says was heard matches what the caller heard of that reply, roughly.
        assert call.utterances(), "the caller heard nothing"


class ToneTTS(TTSEngine):
    """μ-law 8 kHz, 20 ms (160 bytes) of a tone per character of the text: audio lengths a test can count."""

    name = "tone"
    format = AudioFormat("ulaw", MULAW_RATE, 1)
    BYTES_PER_CHAR = 160

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def synthesize(self, text: str, voice: VoiceSpec | None = None) -> AsyncIterator[bytes]:
        from bot.phone.audio import mulaw_encode

        self.texts.append(text)
        samples = np.sin(np.arange(self.BYTES_PER_CHAR * len(text)) * 2 * np.pi * 440 / MULAW_RATE) * 8000
        tone = mulaw_encode(samples.astype("<i2").tobytes())
        for i in range(0, len(tone), 800):  # 100 ms chunks, as a streaming voice sends them
            yield tone[i:i + 800]

    async def list_voices(self) -> list[VoiceInfo]:
        return []

    async def check(self) -> str:
        return "tone"


def words_within(texts: list[str], audio_bytes: int) -> str:
    """The words of the sentences ``texts``, spoken one after the other by :class:`ToneTTS`, that lie
    within their first ``audio_bytes`` of μ-law (whole words, as memory keeps them)."""
    from audio.playback import spoken_prefix

    said: list[str] = []
    for text in texts:
        size = ToneTTS.BYTES_PER_CHAR * len(text)
        if audio_bytes >= size:
            said.append(text)
            audio_bytes -= size
            continue
        said.append(spoken_prefix(text, audio_bytes / size))
        break
    return " ".join(part for part in said if part)


async def test_caller_hanging_up_mid_reply_leaves_only_what_was_heard() -> None:
    agent = FakeAgent(replies=[LONG_REPLY])
    tts = ToneTTS()
    async with rig(scripted(agent, stt=FakeSTTEngine(["tell me about the weather"]), tts=tts)) as r:
        call = await r.twilio.call(CALLER)
        await speak(call)
        # Hang up a quarter of a second past a progress mark inside the second sentence: the caller has
        # heard more than that mark proves, and less than the sentence.
        await call.wait_for(lambda: any(name.startswith("utt-2.") for name, _ in call.echoes), TIMEOUT)
        mark = next(position for name, position in call.echoes if name.startswith("utt-2."))
        await call.wait_for(lambda: call.played() >= mark + MULAW_RATE // 4, TIMEOUT)
        await call.hang_up()
        bot = await ended(r, call)
        assert bot.report.ended_by == "caller"
        [said] = [t for t in (await r.memory.recent(f"phone:{CALLER}", 10)) if t.role == "assistant"]
        # What the caller heard (μ-law bytes played before the hang-up, from the reply's start: there
        # is no greeting) and what the marks they echoed prove of it.
        heard = len(call.heard_mulaw())
        proven = max(position for _name, position in call.echoes)
        assert mark <= proven < heard
        # Memory holds exactly the words the echoed marks prove were played: every one of them, and
        # nothing of what was sent to Twilio but never proven played.
        assert said.interrupted and said.text == words_within(tts.texts, proven)
        assert tts.texts[0] in said.text and 0 < len(said.text) < len(LONG_REPLY)
        assert said.text != words_within(tts.texts, sum(ToneTTS.BYTES_PER_CHAR * len(t) for t in tts.texts))
        assert await r.healthy()


async def test_a_socket_gone_before_the_last_mark_keeps_only_what_the_echoes_prove() -> None:
    """The caller hangs up right after the last audio of a sentence went out: the final mark cannot
    be sent, and the sentence is not counted as heard (only the progress Twilio echoed is)."""
    import json

    from bot.phone.call import PROGRESS_MARK_SECONDS, TwilioAudioOut

    out: TwilioAudioOut | None = None
    marks: list[str] = []

    async def send(message: str) -> None:
        data = json.loads(message)
        if data["event"] != "mark":
            return
        name = data["mark"]["name"]
        if "." not in name:
            raise ConnectionResetError("the call's socket is closed")
        marks.append(name)
        if len(marks) == 1:
            assert out is not None
            out.on_mark(name)  # Twilio echoed the first progress mark: half a second played for sure

    out = TwilioAudioOut(send, "MZ" + "0" * 32)

    async def two_seconds() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"\x55" * 800

    result = await out.play("A sentence of two seconds.", two_seconds(), AudioFormat("ulaw", MULAW_RATE, 1))
    assert marks == ["utt-1.1", "utt-1.2", "utt-1.3"]  # one each half second of audio
    assert result.interrupted and result.total_seconds == 2.0
    assert result.played_seconds == PROGRESS_MARK_SECONDS


async def test_goodbye_is_answered_then_the_bot_hangs_up_through_rest() -> None:
    agent = FakeAgent(replies=["Goodbye, talk soon."])
    async with rig(scripted(agent, stt=FakeSTTEngine(["okay, goodbye"]))) as r:
        call = await r.twilio.call(CALLER)
        await speak(call, "Okay, goodbye.")
        bot = await ended(r, call)
        assert bot.report.ended_by == "goodbye"
        assert r.twilio.hangups == [call.call_sid]
        assert call.marks_echoed  # the goodbye was heard before hanging up
        [said] = [t for t in (await r.memory.recent(f"phone:{CALLER}", 10)) if t.role == "assistant"]
        assert said.text == "Goodbye, talk soon." and not said.interrupted


async def test_the_call_ends_at_its_maximum_length() -> None:
    options = CallOptions(greeting="Hi.", max_seconds=1.0, time_limit_text="Time is up.")
    async with rig(scripted(FakeAgent(), stt=FakeSTTEngine(), options=options)) as r:
        call = await r.twilio.call(CALLER)
        bot = await ended(r, call)
        assert bot.report.ended_by == "max-length" and r.twilio.hangups == [call.call_sid]
        assert len(call.utterances()) >= 1


async def test_greeting_and_ai_notice_are_spoken_first() -> None:
    options = CallOptions(greeting="Hi, this is Testy.", notice="This call is answered by an AI agent.",
                          max_seconds=0)
    async with rig(scripted(FakeAgent(), stt=FakeSTTEngine(), options=options)) as r:
        call = await r.twilio.call(CALLER)
        await call.wait_for(lambda: len(call.marks_echoed) >= 2, TIMEOUT)
        assert call.marks_echoed == ["utt-1", "utt-2"]  # one mark per sentence, each heard in full
        assert len(call.heard_mulaw()) / MULAW_RATE > 2.0
        await call.hang_up()
        await ended(r, call)


async def test_speech_recognition_failing_for_good_is_said_and_the_call_ends() -> None:
    stt = FakeSTTEngine(["hello"], fail_after=2,
                        stream_error=STTError("key rejected", retryable=False, user_message="no key"))
    agent = FakeAgent(replies=["Hi!"])
    async with rig(scripted(agent, stt=stt)) as r:
        call = await r.twilio.call(CALLER)
        await speak(call)
        await call.wait_for(lambda: len(call.marks_echoed) >= 1, TIMEOUT)
        await speak(call, "Are you still there?")
        bot = await ended(r, call)
        assert bot.report.ended_by == "stt-failed" and r.twilio.hangups == [call.call_sid]
        assert len(call.utterances()) >= 2  # the reply, then the spoken apology
        assert await r.healthy()


class BrokenTTS(TTSEngine):
    """Fails every request, after ``after`` chunks of audio (0: before any)."""

    name = "broken"
    format = AudioFormat("s16le", 16000, 1)

    def __init__(self, after: int = 0) -> None:
        self.after = after

    async def synthesize(self, text: str, voice: VoiceSpec | None = None) -> AsyncIterator[bytes]:
        for _ in range(self.after):
            yield bytes(3200)
        raise TTSError("provider down", retryable=True)

    async def list_voices(self) -> list[VoiceInfo]:
        return []

    async def check(self) -> str:
        return "broken"


async def test_tts_failing_mid_call_falls_back_and_the_call_continues() -> None:
    from audio.tts.espeak import EspeakEngine

    agent = FakeAgent(replies=["First answer.", "Second answer."])
    async with rig(scripted(agent, stt=FakeSTTEngine(["one", "two"]), tts=BrokenTTS(), fallback=EspeakEngine())) as r:
        call = await r.twilio.call(CALLER)
        await speak(call)
        await call.wait_for(lambda: len(call.marks_echoed) >= 1, TIMEOUT)
        await speak(call, "And another thing.")
        await call.wait_for(lambda: len(call.marks_echoed) >= 2, TIMEOUT)
        await call.hang_up()
        await ended(r, call)
        said = [t.text for t in (await r.memory.recent(f"phone:{CALLER}", 10)) if t.role == "assistant"]
        assert said == ["First answer.", "Second answer."]


async def test_tts_failing_mid_sentence_plays_what_came_and_the_call_goes_on() -> None:
    agent = FakeAgent(replies=["This sentence breaks halfway through."])
    async with rig(scripted(agent, stt=FakeSTTEngine(["hi"]), tts=BrokenTTS(after=5))) as r:
        call = await r.twilio.call(CALLER)
        await speak(call)
        await call.wait_for(lambda: len(call.marks_echoed) >= 1, TIMEOUT)
        await call.hang_up()
        await ended(r, call)
        assert len(call.heard_mulaw()) == 5 * 3200 // 4  # 5 × 100 ms of 16 kHz PCM → μ-law 8 kHz
        assert await r.healthy()


# ------------------------------------------------------------------------------------ webhooks


async def test_forged_or_unsigned_webhooks_get_403() -> None:
    async with rig(scripted(FakeAgent(), stt=FakeSTTEngine())) as r:
        form = r.twilio.call_form("CA" + "1" * 32, CALLER)
        assert (await r.twilio.post_webhook("/twilio/voice", form, signature="forged"))[0] == 403
        assert (await r.twilio.post_webhook("/twilio/voice", form, signature=""))[0] == 403
        # Signed for another URL (not PUBLIC_URL) is forged too.
        wrong = r.twilio.sign("https://evil.example/twilio/voice", form)
        assert (await r.twilio.post_webhook("/twilio/voice", form, signature=wrong))[0] == 403
        status = {"CallSid": form["CallSid"], "CallStatus": "completed"}
        assert (await r.twilio.post_webhook("/twilio/voice/status", status, signature="forged"))[0] == 403
        assert await r.twilio.status_callback(form["CallSid"], "completed", duration=3) == 204
        assert await r.phone.tokens.pending() == 0 and not r.phone.calls


async def test_callers_outside_the_allow_list_hear_a_goodbye() -> None:
    async with rig(scripted(FakeAgent(), stt=FakeSTTEngine(), allowed=("+15550009999",))) as r:
        _, twiml = await r.twilio.ring(CALLER)
        assert "<Say>" in twiml and "<Hangup />" in twiml and "<Connect>" not in twiml
        _, twiml = await r.twilio.ring("+15550009999")
        assert "<Connect><Stream" in twiml


@needs_whisper
async def test_a_number_that_texted_stop_can_still_call() -> None:
    from bot.privacy import open_opt_outs

    async def make(settings: Settings, memory: Memory, db: Database) -> PhoneService:
        await (await open_opt_outs(db)).add(f"phone:{CALLER}", "sms", "keyword")  # what an SMS STOP records
        return await real_phone(settings, memory, db)

    async with rig(make) as r:
        _, twiml = await r.twilio.ring(CALLER)
        assert "<Connect><Stream" in twiml


# ------------------------------------------------------------------------------------ the media socket


async def test_sockets_without_a_live_token_are_refused_before_any_audio() -> None:
    async with rig(scripted(FakeAgent(), stt=FakeSTTEngine())) as r:
        base = r.server.url.replace("http://", "ws://")
        for url in (f"{base}/twilio/media/", f"{base}/twilio/media/not-a-token"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await r.twilio.open_stream(url, "CA" + "2" * 32, CALLER)
            assert info.value.status in (403, 404)
        # A used token.
        call_sid, twiml = await r.twilio.ring(CALLER)
        url = r.twilio.stream_url(twiml)
        assert url is not None
        first = await r.twilio.open_stream(url, call_sid, CALLER)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await r.twilio.open_stream(url, call_sid, CALLER)
        assert info.value.status == 403
        await first.hang_up()
        await ended(r, first)
        # An expired token.
        call_sid, twiml = await r.twilio.ring(CALLER)
        clock = r.phone.tokens.clock
        r.phone.tokens.clock = lambda: clock() + 3600
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await r.twilio.open_stream(r.twilio.stream_url(twiml) or "", call_sid, CALLER)
        assert info.value.status == 403
        r.phone.tokens.clock = clock
        # A call that ended (status callback) before its stream connected.
        call_sid, twiml = await r.twilio.ring(CALLER)
        assert await r.twilio.status_callback(call_sid, "canceled") == 204
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await r.twilio.open_stream(r.twilio.stream_url(twiml) or "", call_sid, CALLER)
        assert await r.healthy()


async def test_a_token_used_for_another_call_is_refused_before_any_audio() -> None:
    greeting = CallOptions(greeting="You should never hear this.", max_seconds=0)
    async with rig(scripted(FakeAgent(), stt=FakeSTTEngine(), options=greeting)) as r:
        call_sid, twiml = await r.twilio.ring(CALLER)
        call = await r.twilio.open_stream(r.twilio.stream_url(twiml) or "", call_sid, CALLER,
                                          start_call_sid="CA" + "3" * 32)
        bot = await ended(r, call)
        assert call.closed_code == 4403 and call.media_received == 0
        assert bot.report.ended_by == "refused" and bot.session is None


async def test_malformed_unknown_and_early_messages_are_skipped_and_the_call_goes_on() -> None:
    agent = FakeAgent(replies=["Still here."])
    async with rig(scripted(agent, stt=FakeSTTEngine(["hello"]))) as r:
        call_sid, twiml = await r.twilio.ring(CALLER)
        call = await r.twilio.open_stream(r.twilio.stream_url(twiml) or "", call_sid, CALLER, send_start=False)
        await call.send_media(b"\xff" * 160)  # media before start
        await call.send_raw("{not json")
        await call.send_raw('{"event": "start", "start": {}}')  # a start without what it needs
        # ... then the real start: the call begins.
        await call._send({"event": "start", "streamSid": call.stream_sid,
                          "start": {"accountSid": ACCOUNT, "streamSid": call.stream_sid, "callSid": call_sid,
                                    "tracks": ["inbound"], "customParameters": {},
                                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        await call.send_raw('{"event": "wobble", "streamSid": "x"}')
        await call.send_raw('{"event": "media", "media": {"payload": "%%% not base64 %%%"}}')
        await call.send_raw(b"\x00\x01binary")
        await call.send_raw("[1, 2, 3]")
        await call.dtmf("5")
        await speak(call)
        await call.wait_for(lambda: len(call.marks_echoed) >= 1, TIMEOUT)
        await call.hang_up()
        bot = await ended(r, call)
        assert bot.report.protocol_errors == 7 and bot.report.dtmf == ["5"]
        [said] = [t.text for t in (await r.memory.recent(f"phone:{CALLER}", 10)) if t.role == "assistant"]
        assert said == "Still here."


async def test_a_one_megabyte_frame_closes_the_call_and_the_server_keeps_serving() -> None:
    async with rig(scripted(FakeAgent(), stt=FakeSTTEngine())) as r:
        call = await r.twilio.call(CALLER)
        await call.send_raw('{"event": "media", "media": {"payload": "' + "A" * (1024 * 1024) + '"}}')
        bot = await ended(r, call)
        assert call.closed_code == 1009 and bot.report.ended_by == "socket"
        assert await r.healthy()
        again = await r.twilio.call(CALLER)  # the next call is served
        await again.hang_up()
        await ended(r, again, 2)


async def test_a_media_flood_is_dropped_beyond_real_time_and_the_call_goes_on() -> None:
    agent = FakeAgent(replies=["Got it."])
    async with rig(scripted(agent, stt=FakeSTTEngine(["hello"]))) as r:
        call = await r.twilio.call(CALLER)
        for _ in range(500):  # 10 s of audio at once
            await call.send_media(b"\xff" * 160)
        await speak(call)
        await call.wait_for(lambda: len(call.marks_echoed) >= 1, TIMEOUT)
        await call.hang_up()
        bot = await ended(r, call)
        assert bot.report.flood_dropped > 0
        assert any("faster than real time" in p for p in bot.report.problems)
        assert await r.healthy()


async def test_forgetting_the_caller_erases_their_calls() -> None:
    agent = FakeAgent(replies=["Noted."])
    async with rig(scripted(agent, stt=FakeSTTEngine(["remember my name is Sam"]))) as r:
        call = await r.twilio.call(CALLER)
        await speak(call)
        await call.wait_for(lambda: len(call.marks_echoed) >= 1, TIMEOUT)
        await call.hang_up()
        await ended(r, call)
        assert (await r.memory.count(f"phone:{CALLER}")) == 2
        (await r.memory.forget_person(f"phone:{CALLER}"))
        assert (await r.memory.count(f"phone:{CALLER}")) == 0


async def test_shutdown_ends_calls_in_progress() -> None:
    async with rig(scripted(FakeAgent(), stt=FakeSTTEngine())) as r:
        call = await r.twilio.call(CALLER)
        await asyncio.wait_for(_until(lambda: call.call_sid in r.phone.calls, r), TIMEOUT)
        await r.phone.end_calls()
        await call.wait_for(lambda: call.ended, TIMEOUT)
        _, twiml = await r.twilio.ring(CALLER)
        assert "<Hangup />" in twiml  # new calls are turned away while shutting down


async def _until(predicate: Callable[[], bool], r: Rig) -> None:
    async with r.phone.changed:
        await r.phone.changed.wait_for(predicate)


async def test_deepgram_gets_the_callers_mulaw_as_is() -> None:
    from audio.stt.deepgram import DeepgramSTT
    from bot.phone.audio import mulaw_encode
    from tests.fakes.deepgram_server import FakeDeepgram

    async with FakeDeepgram() as deepgram:
        stt = DeepgramSTT("test-key", base_url=deepgram.http_url, ws_url=deepgram.ws_url)
        try:
            async with rig(scripted(FakeAgent(), stt=stt)) as r:
                call = await r.twilio.call(CALLER)
                question = speech_8k("Hello there, how are you today?")
                await call.speak_pcm(question)
                await deepgram.wait_for(lambda: bool(deepgram.connections) and len(deepgram.connections[0].audio) > 8000,
                                        TIMEOUT)
                await call.hang_up()
                await ended(r, call)
        finally:
            await stt.aclose()
    conn = deepgram.connections[0]
    assert (conn.param("encoding"), conn.param("sample_rate")) == ("mulaw", "8000")
    # The bytes Deepgram got are the caller's own μ-law (the speech, from a little before it began).
    sent = mulaw_encode(question[: len(question) - len(question) % 2])
    received = bytes(conn.audio)
    # Identical but for μ-law's two zeros: negative zero (0x7f) comes back as positive zero (0xff).
    same = bytes.maketrans(b"\x7f", b"\xff")
    assert len(received) > 8000
    assert received[:4000].translate(same) in (b"\xff" * 8000 + sent + b"\xff" * 8000).translate(same)


@needs_whisper
async def test_elevenlabs_is_asked_for_mulaw_and_its_bytes_reach_the_caller_unchanged() -> None:
    from tests.fakes.elevenlabs_server import FakeElevenLabs

    audio = bytes(range(256)) * 8  # 256 ms of μ-law: any byte is valid
    async with FakeElevenLabs(audio_for=lambda text, fmt: audio) as eleven:
        async with rig(real_phone, TTS_ENGINE="elevenlabs", ELEVENLABS_API_KEY="test-key",
                       ELEVENLABS_BASE_URL=eleven.url, PHONE_GREETING="Hello caller.") as r:
            call = await r.twilio.call(CALLER)
            await call.wait_for(lambda: len(call.marks_echoed) >= 1, TIMEOUT)
            await call.hang_up()
            await ended(r, call)
    assert [req.query.get("output_format") for req in eleven.requests] == ["ulaw_8000"]
    heard = call.heard_mulaw()
    assert heard[: len(audio)] == audio and set(heard[len(audio):]) <= {0xFF}  # padded to whole 20 ms frames
    assert eleven.problems == []


async def test_a_mark_never_echoed_does_not_stall_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    import bot.phone.call

    monkeypatch.setattr(bot.phone.call, "MARK_GRACE", 0.3)
    agent = FakeAgent(replies=["One.", "Two."])
    async with rig(scripted(agent, stt=FakeSTTEngine(["first", "second"]))) as r:
        r.twilio.echo_marks = False
        call = await r.twilio.call(CALLER)
        await speak(call)
        await speak(call, "And again.")
        bot_call = r.phone.calls[call.call_sid]
        await asyncio.wait_for(_until_answered(bot_call, 2), TIMEOUT)
        await call.hang_up()
        await ended(r, call)
        said = [t.text for t in (await r.memory.recent(f"phone:{CALLER}", 10)) if t.role == "assistant"]
        assert said == ["One.", "Two."] and call.marks_echoed == []


async def _until_answered(bot_call: Any, count: int) -> None:
    session = bot_call.session
    async with session.answered:
        await session.answered.wait_for(lambda: session.turns_done >= count)


async def test_without_a_recognizer_calls_are_turned_away_politely() -> None:
    async with rig(scripted(FakeAgent(), stt=None)) as r:
        _, twiml = await r.twilio.ring(CALLER)
        assert "<Say>" in twiml and "<Hangup />" in twiml and "<Connect>" not in twiml


async def test_a_passing_recognition_failure_loses_one_turn_and_the_call_goes_on() -> None:
    stt = FakeSTTEngine(["lost words", "hello again"], fail_after=1,
                        stream_error=STTError("connection dropped", retryable=True))
    agent = FakeAgent(replies=["Hi again."])
    async with rig(scripted(agent, stt=stt)) as r:
        call = await r.twilio.call(CALLER)
        await speak(call)
        bot_call = r.phone.calls[call.call_sid]
        session = bot_call.session
        await call.wait_for(lambda: 1 in session.participants and session.participants[1].stream is None
                            and session.participants[1].speech_ends >= 1, TIMEOUT)
        stt.fail_after = None  # the provider is back
        await speak(call, "Hello again.")
        await call.wait_for(lambda: len(call.marks_echoed) >= 1, TIMEOUT)
        await call.hang_up()
        bot = await ended(r, call)
        assert bot.report.ended_by == "caller"
        said = [t.text for t in (await r.memory.recent(f"phone:{CALLER}", 10)) if t.role == "assistant"]
        assert said == ["Hi again."]


async def test_a_socket_that_never_starts_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    import bot.phone.call

    monkeypatch.setattr(bot.phone.call, "START_TIMEOUT", 0.3)
    async with rig(scripted(FakeAgent(), stt=FakeSTTEngine())) as r:
        call_sid, twiml = await r.twilio.ring(CALLER)
        call = await r.twilio.open_stream(r.twilio.stream_url(twiml) or "", call_sid, CALLER, send_start=False)
        bot = await ended(r, call)
        assert bot.report.ended_by == "refused" and bot.session is None and call.media_received == 0
        assert await r.healthy()


async def test_a_linked_caller_is_their_discord_self_until_forgotten() -> None:
    from bot.agent.factory import build_agent
    from bot.sms.store import open_sms_store

    db = Database.in_memory()
    memory = (await Memory.open(db))
    settings = phone_settings("http://127.0.0.1:9", STT_ENGINE="none")
    phone = build_phone(settings, agent=await build_agent(settings, memory), memory=memory, store=db,
                        languages=await PlaceLanguages.open(db, settings.language))
    try:
        sms = await open_sms_store(db)
        code = await sms.create_link_code("discord:100000000000000001", "Alice")
        assert await sms.consume_link_code(code.code, CALLER) is not None
        await memory.link_identities("discord:100000000000000001", f"phone:{CALLER}")
        assert await phone._name(CALLER) == "Alice"
        await memory.forget_person("discord:100000000000000001")
        assert await phone._name(CALLER) == "caller ending 4321"
    finally:
        await phone.aclose()
        await db.close()


# ------------------------------------------------------------------------------------ one call, one token; strangers


async def test_a_replayed_voice_webhook_gets_the_same_token_or_none_and_no_token_outlives_its_call() -> None:
    options = CallOptions(greeting="Hello.", max_seconds=0)
    async with rig(scripted(FakeAgent(), stt=FakeSTTEngine(), options=options)) as r:
        call_sid, twiml = await r.twilio.ring(CALLER)
        form = r.twilio.call_form(call_sid, CALLER)
        # Before the stream connects the same signed webhook (Twilio retrying) gets the same answer.
        assert await r.twilio.post_webhook("/twilio/voice", form) == (200, twiml)
        url = r.twilio.stream_url(twiml) or ""
        call = await r.twilio.open_stream(url, call_sid, CALLER)
        await call.wait_for(lambda: len(call.marks_echoed) >= 1, TIMEOUT)  # the greeting was heard
        # Replayed while the call is connected, or after it ended: no token, no stream, no greeting.
        assert (await r.twilio.post_webhook("/twilio/voice", form))[0] == 409
        await call.hang_up()
        await ended(r, call)
        status, body = await r.twilio.post_webhook("/twilio/voice", form)
        assert status == 409 and "<Stream" not in body
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await r.twilio.open_stream(url, call_sid, CALLER)
        assert info.value.status == 403
        # A call that ended (status callback) before its stream connected: its token dies with it.
        other_sid, other = await r.twilio.ring(CALLER)
        assert await r.twilio.status_callback(other_sid, "completed", duration=0) == 204
        assert (await r.twilio.post_webhook("/twilio/voice", r.twilio.call_form(other_sid, CALLER)))[0] == 409
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await r.twilio.open_stream(r.twilio.stream_url(other) or "", other_sid, CALLER)
        assert len(r.phone.finished) == 1 and await r.phone.tokens.pending() == 0
        assert await r.healthy()


async def test_the_media_socket_needs_twilios_signature_of_the_upgrade(caplog: pytest.LogCaptureFixture) -> None:
    from twilio.request_validator import RequestValidator

    caplog.set_level(logging.INFO)
    async with rig(scripted(FakeAgent(), stt=FakeSTTEngine())) as r:
        call_sid, twiml = await r.twilio.ring(CALLER)
        url = r.twilio.stream_url(twiml) or ""
        public = r.twilio.public_stream_url(url)
        assert public.startswith("wss://bot.example.test/twilio/media/")
        forged = [
            "", "forged",
            r.twilio.sign(url, {}),  # signed for the bot's own address, not the URL Twilio was given
            r.twilio.sign(public, {"CallSid": call_sid}),  # with parameters: Twilio signs an upgrade without
            RequestValidator("another-auth-token").compute_signature(public, {}),  # another account's
        ]
        for signature in forged:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await r.twilio.open_stream(url, call_sid, CALLER, signature=signature)
            assert info.value.status == 403
        assert await r.phone.tokens.pending() == 1  # refused before the token was looked at: Twilio's is still good
        call = await r.twilio.open_stream(url, call_sid, CALLER)  # signed the way Twilio signs it
        await call.hang_up()
        await ended(r, call)
        refusals = [rec.getMessage() for rec in caplog.records if "media stream refused" in rec.getMessage()]
        assert len(refusals) == len(forged)
        assert not any("/twilio/media/" in line for line in refusals)  # the token stays out of the log


@pytest.mark.parametrize("started", [True, False], ids=["live", "before-start"])
async def test_binary_frames_count_toward_closing_the_call(started: bool) -> None:
    from bot.phone.call import MAX_PROTOCOL_ERRORS

    async with rig(scripted(FakeAgent(), stt=FakeSTTEngine())) as r:
        call_sid, twiml = await r.twilio.ring(CALLER)
        call = await r.twilio.open_stream(r.twilio.stream_url(twiml) or "", call_sid, CALLER, send_start=started)
        for _ in range(MAX_PROTOCOL_ERRORS):
            await call.send_raw(b"\x00\x01binary")
        bot = await ended(r, call)
        assert call.closed_code == 1008 and bot.report.ended_by == "socket"
        assert bot.report.protocol_errors == MAX_PROTOCOL_ERRORS
        assert await r.healthy()


async def test_deeply_nested_json_is_one_bad_message_and_the_call_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    agent = FakeAgent(replies=["Still here."])
    async with rig(scripted(agent, stt=FakeSTTEngine(["hello"]))) as r:
        call_sid, twiml = await r.twilio.ring(CALLER)
        call = await r.twilio.open_stream(r.twilio.stream_url(twiml) or "", call_sid, CALLER, send_start=False)
        await call.send_raw("[" * 4000)  # before start
        await call._send({"event": "start", "streamSid": call.stream_sid,
                          "start": {"accountSid": ACCOUNT, "streamSid": call.stream_sid, "callSid": call_sid,
                                    "tracks": ["inbound"], "customParameters": {},
                                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        await call.send_raw('{"event": "media", "media": ' + '{"a": ' * 5000)  # during the call
        await speak(call)
        await call.wait_for(lambda: len(call.marks_echoed) >= 1, TIMEOUT)
        await call.hang_up()
        bot = await ended(r, call)
        assert bot.report.protocol_errors == 2 and bot.report.ended_by == "caller"
        assert [t.text for t in (await r.memory.recent(f"phone:{CALLER}", 10)) if t.role == "assistant"] == ["Still here."]
        nested = [rec for rec in caplog.records if "nested too deeply" in rec.getMessage()]
        assert len(nested) == 2 and not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


async def test_a_multipart_body_on_the_call_webhooks_is_415_not_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async with rig(scripted(FakeAgent(), stt=FakeSTTEngine())) as r:
        async with aiohttp.ClientSession() as http:
            for path in ("/twilio/voice", "/twilio/voice/status"):
                data = aiohttp.FormData()
                data.add_field("CallSid", "CA" + "4" * 32)
                data.add_field("Recording", b"\x00" * 64, filename="call.wav", content_type="audio/wav")
                async with http.post(r.server.url + path, data=data, headers={"X-Twilio-Signature": "x"}) as resp:
                    assert resp.status == 415
        lines = [rec for rec in caplog.records if rec.name == "bot.twilio_signature"]
        assert len(lines) == 2 and all("415" in rec.getMessage() for rec in lines)
        assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
        assert await r.healthy()


async def test_callers_beyond_phone_max_calls_hear_busy_in_their_language_and_no_stream() -> None:
    import html

    from bot.i18n.catalog import t

    other = "+15550002222"
    async with rig(scripted(FakeAgent(), stt=FakeSTTEngine(), max_calls=1, language="de")) as r:
        first_sid, first_twiml = await r.twilio.ring(other)  # connecting: it holds the one line
        _, busy = await r.twilio.ring(CALLER)
        assert "<Connect>" not in busy and "<Hangup />" in busy
        assert t("phone.busy", "de") in html.unescape(busy) and 'language="de-DE"' in busy
        # Twilio retrying the first call's webhook is that call, not a new one.
        assert await r.twilio.post_webhook("/twilio/voice", r.twilio.call_form(first_sid, other)) == (200, first_twiml)
        first = await r.twilio.open_stream(r.twilio.stream_url(first_twiml) or "", first_sid, other)
        await asyncio.wait_for(_until(lambda: first_sid in r.phone.calls, r), TIMEOUT)
        _, busy = await r.twilio.ring(CALLER)  # connected now: still busy
        assert "<Connect>" not in busy
        await first.hang_up()
        await ended(r, first)
        call = await r.twilio.call(CALLER)  # the line is free again
        await call.hang_up()
        await ended(r, call, 2)


def test_phone_max_calls_is_a_setting() -> None:
    assert phone_settings("http://127.0.0.1:9").phone_max_calls == 10
    assert phone_settings("http://127.0.0.1:9", PHONE_MAX_CALLS="3").phone_max_calls == 3
    with pytest.raises(Exception, match="PHONE_MAX_CALLS"):
        phone_settings("http://127.0.0.1:9", PHONE_MAX_CALLS="0")


async def test_build_phone_takes_phone_max_calls() -> None:
    from bot.agent.factory import build_agent

    db = Database.in_memory()
    memory = (await Memory.open(db))
    settings = phone_settings("http://127.0.0.1:9", STT_ENGINE="none", PHONE_MAX_CALLS="2")
    phone = build_phone(settings, agent=await build_agent(settings, memory), memory=memory, store=db,
                        languages=await PlaceLanguages.open(db, settings.language))
    try:
        assert phone.max_calls == 2
    finally:
        await phone.aclose()
        await db.close()
