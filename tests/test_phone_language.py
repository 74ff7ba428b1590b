"""Phone calls in the caller's language (issue 15 on calls).

Real parts: the loopback Twilio caller streams espeak-ng speech made at run time (German, Japanese)
as μ-law; the real Deepgram SDK engine hears it through the loopback Deepgram in ``language=multi``
mode (which reports the language it "detected" as the service does); the real OpenAI engine talks
to a loopback OpenAI server that answers in the language its system prompt asks for; the real
espeak-ng engine speaks, and records which voice each sentence had. The number's language lives in
the same SQLite rows the SMS side reads and writes, and SMS goes through the signed webhook.
State-based: every wait is on a state (a turn answered, the call ended) with a generous timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pytest
import soxr
from aiohttp import web

from audio.stt.base import STTEngine
from audio.stt.deepgram import DeepgramSTT
from bot.agent import Agent
from bot.agent.character import default_character
from bot.agent.engines.base import Conversation, ReplyEngine
from bot.agent.engines.eliza import ElizaEngine
from bot.agent.engines.openai_engine import OpenAIEngine
from bot.store import SqliteDatabase as Database
from bot.i18n import messages
from bot.i18n.catalog import t
from bot.i18n.detect import detect
from bot.i18n.languages import language_name, normalize_code
from bot.i18n.places import PlaceLanguages
from bot.memory import Memory
from bot.phone.audio import MULAW_RATE, mulaw_decode, mulaw_encode
from bot.phone.call import CallOptions, PhoneCall, catalog_text
from bot.phone.caller import LoopbackCall, LoopbackTwilio
from bot.phone.service import PhoneService, TwilioCalls
from bot.providers import deepgram_language
from bot.settings import load_settings
from bot.sms.inbound import SmsService, TwilioWebhooks
from tests.sms_helpers import sms_store
from bot.web import WebServer, create_app
from tests.fakes.deepgram_server import FakeDeepgram, SpeechScript, is_voiced_frame
from tests.fakes.fake_stt import FakeSTTEngine
from tests.test_language_voice import PolyglotOpenAI, RecordingEspeak, espeak_voice_pcm
from tests.test_phone_call import ACCOUNT, AUTH, PUBLIC, TIMEOUT

GERMAN = "+4930123456"
JAPANESE = "+81312345678"
OTHER = "+15557654321"
NAME = default_character().name


def speech_8k(text: str, voice: str) -> bytes:
    pcm, rate = espeak_voice_pcm(text, voice)
    return np.asarray(soxr.resample(np.frombuffer(pcm, dtype="<i2"), rate, MULAW_RATE), dtype="<i2").tobytes()


def voiced(pcm8k: bytes) -> int:
    """Frames the fake Deepgram counts as speech (after the μ-law round trip it hears)."""
    pcm = mulaw_decode(mulaw_encode(pcm8k))
    return sum(is_voiced_frame(pcm[i:i + 320]) for i in range(0, len(pcm) - 319, 320))


class LanguageEngine(ReplyEngine):
    """Answers a short sentence in the language it was asked to answer in, and notes that language."""

    name = "language"
    ANSWERS = {"de": "Gern, das mache ich.", "en": "Sure, I can do that.", "ja": "はい、承知しました。",
               "fr": "Oui, bien sûr.", "es": "Claro que sí.", "pt": "Claro, pode deixar."}

    def __init__(self) -> None:
        self.languages: list[str | None] = []

    async def stream(self, conversation: Conversation) -> AsyncIterator[str]:
        self.languages.append(conversation.incoming.language)
        yield self.ANSWERS.get(conversation.incoming.language or "en", self.ANSWERS["en"])

    async def check(self) -> str:
        return "ok"


@dataclass
class LangRig:
    twilio: LoopbackTwilio
    phone: PhoneService
    sms: SmsService
    languages: PlaceLanguages
    memory: Memory
    tts: RecordingEspeak
    server: WebServer

    async def text(self, number: str, body: str) -> list[str]:
        """The number texts ``body`` (signed webhook); the bot's TwiML replies."""
        form = {"MessageSid": f"SM{abs(hash((number, body))):032x}"[:34], "AccountSid": ACCOUNT, "From": number,
                "To": "+15550001111", "Body": body, "NumMedia": "0"}
        status, xml = await self.twilio.post_webhook("/twilio/sms", form)
        assert status == 200, xml
        return re.findall(r"<Message>(.*?)</Message>", xml, re.DOTALL)

    def spoken(self, language: str | None = None) -> list[tuple[str, str | None]]:
        """(text, espeak voice) of each sentence synthesized, optionally only those in ``language``."""
        return [(text, v.voice_id if v else None) for text, v in self.tts.spoken
                if language is None or (v is not None and v.language == language)]


@contextlib.asynccontextmanager
async def lang_rig(*, stt: STTEngine, engine: ReplyEngine | None = None, options: CallOptions | None = None,
                   recognizer_language: object = None,
                   on_app: Callable[[web.Application, Agent, Memory], None] | None = None) -> AsyncIterator[LangRig]:
    db = Database.in_memory()
    memory = (await Memory.open(db))
    character = default_character()
    agent = Agent(character, engine or ElizaEngine(character.name), memory)
    languages = (await PlaceLanguages.open(db, "en"))
    tts = RecordingEspeak()
    options = options or CallOptions(max_seconds=0, greeting=catalog_text("phone.greeting", name=NAME))
    async with LoopbackTwilio(bot_url="http://127.0.0.1:1", public_url=PUBLIC, account_sid=ACCOUNT,
                              auth_token=AUTH) as twilio:
        phone = PhoneService(
            agent=agent, memory=memory, stt=stt, tts=tts, fallback_tts=None, voice=None, auth_token=AUTH,
            public_url=PUBLIC, options=options, calls=TwilioCalls(ACCOUNT, AUTH, api_base=twilio.api_base),
            languages=languages, recognizer_language=recognizer_language,  # type: ignore[arg-type]
            allowed_callers=(GERMAN, JAPANESE, OTHER),
        )
        sms = SmsService(agent=agent, memory=memory, store=await sms_store(db), sender=None, rate_limit=50)
        sms.languages = languages  # the same rows: a number's language is one, whether it texts or calls
        app = create_app(webhooks=TwilioWebhooks(sms, auth_token=AUTH, public_url=PUBLIC), phone=phone)
        if on_app is not None:
            on_app(app, agent, memory)
        server = WebServer(app, "127.0.0.1", 0)
        await server.start()
        twilio.set_bot_url(server.url)
        try:
            yield LangRig(twilio, phone, sms, languages, memory, tts, server)
            assert phone.calls == {}, "a call's socket is still open"
        finally:
            await server.stop()
            await phone.aclose()
            await sms.aclose()
            await agent.aclose()
            await db.close()


async def converse(r: LangRig, number: str, says: Sequence[tuple[bytes, str | None]], *,
                   script: SpeechScript | None = None, hang_up: bool = True) -> tuple[LoopbackCall, PhoneCall]:
    """Call from ``number``, hear the opening, then say each (speech, language for the fake Deepgram)
    and wait until it is answered and the answer has played."""
    ended_before = len(r.phone.finished)
    call = await r.twilio.call(number)
    await call.wait_for(lambda: call.call_sid in r.phone.calls, TIMEOUT)
    bot = r.phone.calls[call.call_sid]
    await asyncio.wait_for(bot.started.wait(), TIMEOUT)
    opening = sum(1 for text in (bot.options.greeting, bot.options.notice) if text)
    await call.wait_for(lambda: len(call.marks_echoed) >= opening, TIMEOUT)
    session = bot.session
    assert session is not None
    for pcm, language in says:
        if script is not None:
            script.say([(" ".join(language_text(language)), voiced(pcm))], language=language)
        before = session.turns_done
        await call.speak_pcm(pcm, trailing_silence=0.0)
        line = asyncio.get_running_loop().create_task(call.silence(3 * TIMEOUT), name="caller-line-silence")
        try:
            async with session.answered:
                await asyncio.wait_for(session.answered.wait_for(lambda: session.turns_done > before), TIMEOUT)
            await asyncio.wait_for(session.wait_settled(), TIMEOUT)
            await call.wait_quiet(TIMEOUT)
        finally:
            line.cancel()
            await asyncio.gather(line, return_exceptions=True)
    if hang_up:
        await call.hang_up()
        await r.phone.wait_ended(ended_before + 1, TIMEOUT)
        await call.close()
    return call, bot


# What the fake Deepgram "recognises" for speech said in a language (the script's words).
SAID = {"de": "Hallo, wie geht es dir heute?", "ja": "こんにちは、お元気ですか？", "sw": "Habari yako leo rafiki?"}


def language_text(language: str | None) -> list[str]:
    return [SAID.get(language or "", "Hello there.")]


# ------------------------------------------------------------------------------------ done when


async def test_a_german_and_a_japanese_caller_are_answered_in_their_language_with_their_espeak_voice() -> None:
    script = SpeechScript()
    async with FakeDeepgram(script=script) as dg, PolyglotOpenAI() as llm:
        settings = load_settings({}, env_file=None)  # LANGUAGE=en: numbers are still auto, like SMS
        stt = DeepgramSTT(dg.api_key, base_url=dg.http_url, ws_url=dg.ws_url, language=settings.deepgram_language)
        engine = OpenAIEngine(api_key=llm.api_key, base_url=llm.base_url, model=llm.models[0])
        try:
            async with lang_rig(stt=stt, engine=engine, recognizer_language=partial(deepgram_language, settings)) as r:
                german = speech_8k(SAID["de"], "de")
                japanese = speech_8k(SAID["ja"], "ja")
                await converse(r, GERMAN, [(german, "de")], script=script)
                await converse(r, JAPANESE, [(japanese, "ja")], script=script)
                # Deepgram was asked for its multilingual model on both calls.
                assert len(dg.connections) >= 2 and all(c.param("language") == "multi" for c in dg.connections)
                systems = [next(m["content"] for m in q.body["messages"] if m["role"] == "system")
                           for q in llm.completion_requests]
                assert any("Answer in German (Deutsch)" in s for s in systems)
                assert any("Answer in Japanese (日本語)" in s for s in systems)
                # Each reply in its language's espeak voice; German said the German way.
                german_said, japanese_said = r.spoken("de"), r.spoken("ja")
                assert german_said and all(voice == "de" for _, voice in german_said)
                assert japanese_said and all(voice == "ja" for _, voice in japanese_said)
                assert any("vierzehn Uhr dreißig" in text for text, _ in german_said)
                assert "".join(text for text, _ in japanese_said) == "こんにちは。元気です。"
                # The numbers' languages are remembered where SMS reads them: a text is answered in
                # German, and the German number's next call is greeted in German.
                assert r.languages.fallback(f"phone:{GERMAN}") == "de"
                assert r.languages.fallback(f"phone:{JAPANESE}") == "ja"
                sms = await r.text(GERMAN, "ok")
                assert sms and "Hallo" in sms[0]
                await converse(r, GERMAN, [])
                assert (t("phone.greeting", "de", name=NAME), "de") in r.spoken("de")
        finally:
            await stt.aclose()


async def test_a_number_that_texted_in_german_is_greeted_and_answered_in_german_on_a_call() -> None:
    # "Okay." says nothing about a language (low confidence): the number's language decides.
    stt = FakeSTTEngine(["Okay."], interim=False)
    options = CallOptions(max_seconds=0, greeting=catalog_text("phone.greeting", name=NAME),
                          notice=catalog_text("phone.notice.ai"))
    async with lang_rig(stt=stt, options=options) as r:
        replies = await r.text(GERMAN, "Hallo, ich hätte gern morgen früh einen Termin beim Zahnarzt.")
        assert replies and r.languages.fallback(f"phone:{GERMAN}") == "de"
        call, bot = await converse(r, GERMAN, [(speech_8k("Okay.", "en-us"), None)])
        german = r.spoken("de")
        assert german[0] == (t("phone.greeting", "de", name=NAME), "de")
        assert german[1] == (t("phone.notice.ai", "de"), "de")
        # ELIZA knows only English: it says so, in German, in the German voice (not English nonsense).
        apology = t("language.eliza_english_only", "de", language=language_name("de"))
        assert any(apology.startswith(text) or text in apology for text, _ in german[2:])
        said = [turn.text for turn in (await r.memory.recent(f"phone:{GERMAN}", 10)) if turn.role == "assistant"]
        assert len(said) == 1 and said[0].split()[:4] == apology.split()[:4]
        assert bot.language == "de"


# ------------------------------------------------------------------------------------ bad inputs


async def test_a_language_the_engines_do_not_support_gets_one_spoken_notice_and_the_fallback() -> None:
    script = SpeechScript()
    engine = LanguageEngine()
    async with FakeDeepgram(script=script) as dg:
        settings = load_settings({}, env_file=None)
        stt = DeepgramSTT(dg.api_key, base_url=dg.http_url, ws_url=dg.ws_url)
        try:
            async with lang_rig(stt=stt, engine=engine, recognizer_language=partial(deepgram_language, settings)) as r:
                speech = speech_8k("Habari yako leo rafiki?", "sw")
                await converse(r, OTHER, [(speech, "sw"), (speech, "sw")], script=script)
                notice = t("language.unsupported", "en", code="sw", language=language_name("en"))
                texts = [text for text, _ in r.spoken()]
                assert texts.count(notice) == 1, texts  # once per number, said before the first answer
                assert texts.index(notice) < texts.index(LanguageEngine.ANSWERS["en"])
                assert engine.languages == ["en", "en"]  # answered in the fallback
        finally:
            await stt.aclose()


async def test_mixed_language_speech_is_answered_in_one_language_the_detector_chose() -> None:
    mixed = "Ich hätte gern einen Termin beim Zahnarzt, maybe tomorrow morning, vielen Dank"
    found = detect(mixed)
    expected = (normalize_code(found.language) if found is not None and found.sure else None) or "en"
    engine = LanguageEngine()
    async with lang_rig(stt=FakeSTTEngine([mixed], interim=False), engine=engine) as r:
        await converse(r, OTHER, [(speech_8k("Ich hätte gern einen Termin.", "de"), None)])
        assert engine.languages == [expected]
        answer = LanguageEngine.ANSWERS[expected]
        assert any(text == answer and voice == ("en-us" if expected == "en" else expected) for text, voice in r.spoken())
        assert not any("(" in text for text, _ in r.spoken())  # no "can't speak that language" notice


async def test_a_missing_catalog_entry_is_said_in_english_with_an_english_voice_and_logged_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from bot.i18n import catalog

    entry = {k: v for k, v in messages.MESSAGES["phone.greeting"].items() if k != "de"}
    monkeypatch.setitem(messages.MESSAGES, "phone.greeting", entry)
    monkeypatch.setattr(catalog, "_warned", set())
    caplog.set_level(logging.WARNING, logger="bot.i18n.catalog")
    async with lang_rig(stt=FakeSTTEngine()) as r:
        r.languages.store.learn(f"phone:{GERMAN}", "de")
        for _ in range(2):
            await converse(r, GERMAN, [])
        greetings = [(text, voice) for text, voice in r.spoken() if text.startswith("Hi, this is")]
        assert greetings == [(t("phone.greeting", "en", name=NAME), "en-us")] * 2
    warnings = [rec for rec in caplog.records if "phone.greeting" in rec.getMessage()]
    assert len(warnings) == 1 and "de" in warnings[0].getMessage()


async def test_the_twiml_a_caller_hears_is_in_the_numbers_language() -> None:
    async with lang_rig(stt=FakeSTTEngine()) as r:
        r.languages.store.learn("phone:+81399990000", "ja")
        _sid, twiml = await r.twilio.ring("+81399990000")  # not an allowed caller
        say = re.search(r"<Say ([^>]*)>(.*?)</Say><Hangup />", twiml)
        assert say is not None and say.group(2) == t("phone.not_allowed", "ja")
        assert sorted(say.group(1).split()) == ['language="ja-JP"', 'voice="Polly.Mizuki"']
        _sid, twiml = await r.twilio.ring("+15559990000")  # nothing known: English, Twilio's default voice
        assert f"<Say>{t('phone.not_allowed', 'en')}</Say>" in twiml
        r.phone._closing = True  # shutting down: the restart text in the number's language
        r.languages.store.learn(f"phone:{GERMAN}", "de")
        _sid, twiml = await r.twilio.ring(GERMAN)
        assert f'<Say language="de-DE">{t("phone.restarting", "de")}</Say>' in twiml
        r.phone._closing = False


async def test_the_time_limit_is_said_in_the_callers_language() -> None:
    async with lang_rig(stt=FakeSTTEngine(), options=CallOptions(max_seconds=1.0)) as r:
        r.languages.store.learn(f"phone:{GERMAN}", "de")
        call = await r.twilio.call(GERMAN)
        finished = await r.phone.wait_ended(1, TIMEOUT)
        await call.close()
        assert finished[-1].report.ended_by == "max-length"
        assert (t("phone.time_limit", "de"), "de") in [(x, v) for x, v in r.spoken("de")] or \
            any(t("phone.time_limit", "de").startswith(x) for x, _ in r.spoken("de"))


async def test_a_call_is_counted_in_the_consoles_metrics() -> None:
    from bot.console.app import CONSOLE_KEY
    from bot.console.hub import Console
    from bot.console.metrics import Metrics
    from bot.services import Services

    from bot.voice.guilds import GuildSettingsStore, OptOutList

    metrics = Metrics(process=False)
    db = Database.in_memory()
    settings = load_settings({}, env_file=None)
    stores = {"languages": await PlaceLanguages.open(db, "en"), "guilds": await GuildSettingsStore.open(db, settings),
              "optouts": await OptOutList.open(db)}

    def with_console(app: web.Application, agent: Agent, memory: Memory) -> None:
        services = Services(settings=settings, store=db, memory=memory, agent=agent, **stores)  # type: ignore[arg-type]
        app[CONSOLE_KEY] = Console(services, metrics=metrics)

    try:
        async with lang_rig(stt=FakeSTTEngine(["Hello there."], interim=False), engine=LanguageEngine(),
                            on_app=with_console) as r:
            await converse(r, OTHER, [(speech_8k("Hello there.", "en-us"), None)])
    finally:
        await db.close()
    assert metrics.registry.get_sample_value("voicebot_turns_total", {"channel": "call", "outcome": "answered"}) == 1
    assert metrics.registry.get_sample_value("voicebot_wait_seconds_count", {"channel": "call"}) == 1
    # A call's turn is a call's, not also a text turn (the agent's engine is metered too).
    assert metrics.registry.get_sample_value("voicebot_turns_total", {"channel": "text", "outcome": "answered"}) == 0
