"""The message catalog, language detection and choice, and right-to-left text."""

from __future__ import annotations

import logging
import string

import pytest

from audio.languages import CATALOG_LANGUAGES, LANGUAGES, normalize_code, parse_setting
from audio.speech import normalize_for_speech
from bot.agent import Agent, Incoming
from bot.agent.character import default_character, parse_character
from bot.agent.engines.eliza import ElizaEngine
from bot.agent.prompt import build_system_prompt
from bot.store import SqliteDatabase as Database
from bot.i18n import catalog
from bot.i18n.bidi import isolate
from bot.i18n.catalog import MESSAGES, t
from bot.i18n.detect import detect
from bot.i18n.places import LanguageChooser, PlaceLanguages
from bot.i18n.voices import voice_for_language
from bot.memory import Memory, Modality
from audio.tts.base import VoiceSpec


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


# -- the catalog -------------------------------------------------------------------------------


def test_every_key_exists_in_every_shipped_language_with_the_same_placeholders() -> None:
    missing = [(key, lang) for key, entry in MESSAGES.items() for lang in CATALOG_LANGUAGES if not entry.get(lang)]
    assert missing == []
    for key, entry in MESSAGES.items():
        expected = _fields(entry["en"])
        for lang, text in entry.items():
            assert lang in CATALOG_LANGUAGES, (key, lang)
            assert _fields(text) == expected, (key, lang)


def test_a_missing_entry_falls_back_to_english_and_is_logged_once(caplog: pytest.LogCaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MESSAGES, "test.only_english", {"en": "Only in English, {name}."})
    monkeypatch.setattr(catalog, "_warned", set())
    caplog.set_level(logging.DEBUG, logger="bot.i18n.catalog")
    assert t("test.only_english", "de", name="Ana") == "Only in English, Ana."
    assert t("test.only_english", "de-AT", name="Ana") == "Only in English, Ana."
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "de" in warnings[0].getMessage()
    # A language the bot does not ship is expected to fall back: not a warning.
    assert t("test.only_english", "it", name="Ana") == "Only in English, Ana."
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_lookups_accept_any_tag_and_fill_values() -> None:
    assert t("voice.moved", "pt-BR", channel="#sala") == "Mudei para #sala."
    assert t("voice.moved", None, channel="#x") == "Moved to #x."
    assert t("voice.moved", "xx-YY", channel="#x") == "Moved to #x."
    with pytest.raises(KeyError):
        t("no.such.key", "en")


def test_language_settings_parse() -> None:
    assert parse_setting("AUTO") == "auto"
    assert parse_setting("de-DE") == "de" and parse_setting("Deutsch") == "de" and parse_setting("日本語") == "ja"
    assert normalize_code("pt_BR") == "pt" and normalize_code("zh-CN") == "zh" and normalize_code("nb") == "no"
    with pytest.raises(ValueError):
        parse_setting("klingon")
    assert all(code in LANGUAGES for code in CATALOG_LANGUAGES)


# -- detection and choice ----------------------------------------------------------------------


def test_detection_of_common_scripts_and_languages() -> None:
    cases = {
        "Hallo, wie geht es dir heute?": "de",
        "Bonjour, comment ça va aujourd'hui ?": "fr",
        "¿Dónde está la biblioteca de la ciudad?": "es",
        "Olá, tudo bem com você hoje?": "pt",
        "こんにちは": "ja",
        "नमस्ते, आप कैसे हैं।": "hi",
        "What time is it right now?": "en",
    }
    for text, code in cases.items():
        found = detect(text)
        assert found is not None and found.language == code and found.sure, (text, found)
    assert detect("ok") is None and detect("👍👍") is None


def test_low_confidence_keeps_the_places_language() -> None:
    chooser = LanguageChooser()
    choice = chooser.choose(mode="auto", fallback="fr", text="Guten Morgen")  # two words: a guess
    assert (choice.language, choice.source, choice.notice) == ("fr", "fallback", None)
    assert chooser.choose(mode="auto", fallback="fr", text="lol").language == "fr"


def test_an_unsupported_language_gets_one_clear_notice_then_the_fallback() -> None:
    chooser = LanguageChooser()
    swahili = "Habari yako, rafiki yangu? Ninafurahi sana kukuona leo."
    first = chooser.choose(mode="auto", fallback="de", text=swahili, place="guild:1")
    assert first.language == "de" and first.source == "fallback"
    assert first.notice == "Diese Sprache (sw) spreche ich noch nicht, deshalb antworte ich auf Deutsch."
    again = chooser.choose(mode="auto", fallback="de", text=swahili, place="guild:1")
    assert again.language == "de" and again.notice is None  # said once per place
    # The recognizer naming a language we do not know is treated the same way.
    heard = chooser.choose(mode="auto", fallback="en", text="…", heard="xh", place="guild:2")
    assert heard.language == "en" and heard.notice is not None and "(xh)" in heard.notice


def test_the_recognizers_language_wins_over_the_text_detector() -> None:
    choice = LanguageChooser().choose(mode="auto", fallback="en", text="Hallo, wie geht es dir heute?", heard="ja")
    assert (choice.language, choice.source) == ("ja", "recognizer")
    assert LanguageChooser().choose(mode="de", fallback="en", text="Hello there", heard="en").language == "de"


def test_a_mixed_language_sentence_is_answered_in_one_of_its_languages() -> None:
    choice = LanguageChooser().choose(mode="auto", fallback="fr", text="Ich gehe morgen to the store with my friend")
    assert choice.language in ("de", "en") and choice.notice is None


async def test_places_default_to_the_servers_locale_then_learn_for_phones() -> None:
    db = Database.in_memory()
    places = (await PlaceLanguages.open(db, "en"))
    assert places.mode("guild:1", "es-ES") == "es" and places.mode("guild:1", None) == "en"
    await places.set("guild:1", "auto")
    assert places.mode("guild:1", "es-ES") == "auto" and places.fallback("guild:1", "es-ES") == "es"
    assert places.choose("guild:1", "ok", preferred_locale="es-ES").language == "es"
    # A phone number is auto by default and remembers what it was sure of.
    assert places.choose("phone:+15550001111", "Bonjour, comment ça va aujourd'hui ?", learn=True).language == "fr"
    assert places.choose("phone:+15550001111", "ok", learn=True).language == "fr"
    assert (await PlaceLanguages.open(db, "auto")).mode("guild:9", "de") == "auto"
    await db.close()


# -- answering ---------------------------------------------------------------------------------


def _incoming(text: str, language: str | None) -> Incoming:
    return Incoming(room="discord:1:2", speaker_id="discord:9", speaker_name="Ana", text=text,
                    modality=Modality.TEXT, language=language)


def test_the_prompt_names_the_answer_language_and_uses_the_characters_style_for_it() -> None:
    character = parse_character({
        "name": "Nova", "style": {"all": ["Be kind."]},
        "languages": {"de": {"style": ["Duze die Leute."], "voice": {"espeak": "de", "elevenlabs": "voice-de"},
                             "messageExamples": [[{"user": "{{user1}}", "content": {"text": "Hallo!"}},
                                                  {"user": "Nova", "content": {"text": "Hallo, schön dich zu sehen!"}}]]}},
    })
    prompt = build_system_prompt(character, _incoming("Hallo", "de"))
    assert "Answer in German (Deutsch)" in prompt and "Duze die Leute." in prompt and "schön dich zu sehen" in prompt
    english = build_system_prompt(character, _incoming("Hi", None))
    assert "Answer in" not in english and "Duze" not in english
    assert voice_for_language(None, "espeak", "de", character) == VoiceSpec(voice_id="de", language="de")
    eleven = voice_for_language(VoiceSpec(voice_id="base", model="eleven_turbo_v2"), "elevenlabs", "de", character)
    assert eleven == VoiceSpec(voice_id="voice-de", model="eleven_flash_v2_5", language="de")
    # A guild's espeak choice of another language gives way to the reply's language.
    assert voice_for_language(VoiceSpec(voice_id="en-gb"), "espeak", "ja").voice_id == "ja"
    assert voice_for_language(VoiceSpec(voice_id="en-gb"), "espeak", "en").voice_id == "en-gb"


def test_a_character_with_a_bad_languages_field_is_named() -> None:
    from bot.agent.character import CharacterError

    with pytest.raises(CharacterError, match="languages.xx"):
        parse_character({"name": "Nova", "languages": {"xx": {}}})
    with pytest.raises(CharacterError, match="languages"):
        parse_character({"name": "Nova", "languages": ["de"]})


async def test_eliza_says_in_the_persons_language_that_it_knows_only_english() -> None:
    engine = ElizaEngine("Nova")
    memory = (await Memory.open(Database.in_memory()))
    agent = Agent(default_character(), engine, memory)
    reply = agent.reply(_incoming("Wie spät ist es?", "de"))
    text = "".join([d async for d in reply])
    assert text.startswith("Ich bin ein einfaches eingebautes Skript") and "Deutsch" in text
    reply = agent.reply(_incoming("I feel tired today", "en"))
    assert "Skript" not in "".join([d async for d in reply])


async def test_an_empty_mention_is_answered_in_the_places_language() -> None:
    agent = Agent(default_character(), ElizaEngine("Nova"), (await Memory.open(Database.in_memory())))
    said = {code: "".join([d async for d in agent.reply(_incoming("  ", code))]) for code in CATALOG_LANGUAGES}
    assert said["de"] == "Wolltest du etwas sagen, Ana? Ich höre zu."
    assert said["en"] == "Did you mean to say something, Ana? I'm listening."
    assert len(set(said.values())) == len(CATALOG_LANGUAGES) and all("Ana" in text for text in said.values())
    nameless = Incoming(room="console", speaker_id="console:x", speaker_name=" ", text="", modality=Modality.TEXT,
                        language="ja")
    assert "".join([d async for d in agent.reply(nameless)]) == "何か言おうとしましたか？聞いていますよ。"


def test_a_shortened_sms_says_so_in_the_replys_language() -> None:
    from bot.sms.text import SHORTENED_SMS_NOTE, cap_sms

    long = " ".join(f"Satz Nummer {i} einer langen Antwort." for i in range(400))
    notes = {code: cap_sms(long, 1, language=code)[0][-1] for code in CATALOG_LANGUAGES}
    assert notes["de"].endswith(" …(Antwort gekürzt)") and notes["en"].endswith(" " + SHORTENED_SMS_NOTE)
    assert all(text.endswith(t("sms.shortened", code)) and len(text) <= 1600 for code, text in notes.items())
    assert len({t("sms.shortened", code) for code in CATALOG_LANGUAGES}) == len(CATALOG_LANGUAGES)


async def test_an_sms_reply_cut_short_says_so_in_the_senders_language() -> None:
    """Through the SMS service: the webhook, the real agent (OpenAI engine on the loopback server)."""
    import re

    from aiohttp.test_utils import TestClient, TestServer

    from bot.services import build_services
    from bot.settings import load_settings
    from bot.sms.inbound import SmsService, TwilioWebhooks
    from bot.privacy import open_opt_outs
    from bot.sms.store import open_sms_store
    from bot.web import create_app
    from tests.fakes.openai_server import FakeOpenAI
    from tests.fakes.twilio_server import sign_webhook

    account, token, public = "AC" + "5" * 32, "i18n-sms-token", "https://bot.example.com"
    endless = [f"Das ist Satz Nummer {i:04d} einer Antwort, die nicht aufhört. " for i in range(400)]
    async with FakeOpenAI(reply_tokens=endless) as fake:
        settings = load_settings({"AGENT_ENGINE": "openai", "OPENAI_BASE_URL": fake.base_url,
                                  "OPENAI_API_KEY": fake.api_key, "OPENAI_MODEL": "gpt-test",
                                  "SMS_REPLY_MAX_SEGMENTS": "1"}, env_file=None)
        services = await build_services(settings, db=Database.in_memory())
        service = SmsService(agent=services.agent, memory=services.memory, store=await open_sms_store(services.store, opt_outs=await open_opt_outs(services.store)),  # type: ignore[arg-type]
                             sender=None,
                             rate_limit=10, max_segments=settings.sms_reply_max_segments)
        service.languages = services.languages
        app = create_app(webhooks=TwilioWebhooks(service, auth_token=token, public_url=public))
        form = {"MessageSid": "SM" + "e" * 32, "AccountSid": account, "From": "+15557654321", "To": "+15550009999",
                "Body": "Erzähl mir bitte alles über die Geschichte von Rom, ganz ausführlich und genau.",
                "NumMedia": "0"}
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/twilio/sms", data=form, headers={
                "X-Twilio-Signature": sign_webhook(token, public + "/twilio/sms", form)})
            assert resp.status == 200
            [message] = re.findall(r"<Message>(.*?)</Message>", await resp.text(), re.DOTALL)
            await service.wait_idle()
        await service.aclose()
        await services.aclose()
    assert message.startswith("Das ist Satz Nummer 0000") and message.endswith(". …(Antwort gekürzt)")


# -- right-to-left text -----------------------------------------------------------------------


def test_right_to_left_text_is_isolated_in_the_bots_lines_and_its_controls_are_not_spoken() -> None:
    assert isolate("Hello") == "Hello"
    assert isolate("مرحبا؟") == "\u2068مرحبا؟\u2069"
    assert isolate(isolate("שלום")) == isolate("שלום")
    rtl = "\u202bمرحبا\u202c \u200fكيف حالك؟\u200f"
    assert normalize_for_speech(rtl, language="ar") == "مرحبا كيف حالك؟"
    found = detect(rtl)
    assert found is not None and found.language == "ar"


def test_check_and_status_say_local_recognition_is_english_only() -> None:
    from bot.providers import local_stt_english_only, stt_language_note
    from bot.settings import load_settings
    from bot.voice.consent import Providers, status_summary

    settings = load_settings({}, env_file=None)
    assert local_stt_english_only(settings)

    class Local:
        name = "local"

    class Deepgram:
        name = "deepgram"
        language = "multi"

    assert "English only" in stt_language_note(settings, Local())  # type: ignore[arg-type]
    assert stt_language_note(settings, Deepgram()) == ", language multi"  # type: ignore[arg-type]
    assert not local_stt_english_only(load_settings({"LOCAL_STT_MODEL": "/models/whisper-small"}, env_file=None))
    providers = Providers(stt="a local recognizer on the bot's own server", stt_remote=False, tts=None,
                          tts_remote=False, llm="x", llm_remote=False)
    assert "English only" in status_summary(None, providers, bot_name="Nova", language="German")


def test_deepgram_multi_reports_the_main_language_of_a_mixed_sentence() -> None:
    from deepgram.core.unchecked_base_model import construct_type
    from deepgram.listen.v1.socket_client import V1SocketClientResponse

    from audio.stt.deepgram import results_to_transcript

    def frame(languages: list[str] | None, text: str = "quiero un coffee por favor") -> object:
        alternative: dict[str, object] = {"transcript": text, "confidence": 0.9, "words": []}
        if languages is not None:
            alternative["languages"] = languages
        return construct_type(type_=V1SocketClientResponse, object_={
            "type": "Results", "channel_index": [0, 1], "start": 0.0, "duration": 1.0, "is_final": True,
            "speech_final": True, "channel": {"alternatives": [alternative]},
            "metadata": {"request_id": "r", "model_uuid": "u", "model_info": {"name": "n", "version": "v", "arch": "a"}}})

    mixed = results_to_transcript(frame(["es", "en"]))
    assert mixed is not None and mixed.language == "es"  # most words first, as Deepgram sorts them
    # Code-switched audio may come without languages: the text detector decides then.
    bare = results_to_transcript(frame(None))
    assert bare is not None and bare.language is None
    assert results_to_transcript(frame(["de"], text="")) is None or results_to_transcript(frame(["de"], text="")).language is None


async def test_an_english_only_voice_gives_way_to_one_that_speaks_the_reply_language() -> None:
    from bot.i18n.places import Choice
    from bot.voice.session import VoiceSession
    from bot.voice.turns import TurnPolicy, VoiceMode
    from tests.test_voice_session import RecordingOut, ScriptedEngine, ScriptedSTT, ToneTTS, speak, wait_turns

    class PiperLike(ToneTTS):
        name = "piper"

    class EspeakLike(ToneTTS):
        name = "espeak"

        def __init__(self) -> None:
            super().__init__()
            self.voices: list[VoiceSpec | None] = []

        async def synthesize(self, text, voice=None):  # type: ignore[no-untyped-def, override]
            self.voices.append(voice)
            async for chunk in super().synthesize(text, voice):
                yield chunk

    piper, espeak = PiperLike(), EspeakLike()
    memory = (await Memory.open(Database.in_memory()))
    agent = Agent(default_character(), ScriptedEngine(["Guten Tag! ", "Wie geht's?"]), memory)
    session = VoiceSession(room="discord:1:2", agent=agent, memory=memory, stt=ScriptedSTT({7: ["hallo zusammen"]}),
                           tts=piper, fallback_tts=espeak, out=RecordingOut(),
                           policy=TurnPolicy(bot_names=("Wren",), mode=VoiceMode.ALWAYS),
                           choose_language=lambda text, heard: Choice("de", "fixed"))
    speak(session, 7)
    await wait_turns(session, 1)
    await session.aclose()
    assert piper.texts == [] and espeak.texts == ["Guten Tag!", "Wie geht's?"]
    assert all(v is not None and v.voice_id == "de" and v.language == "de" for v in espeak.voices)


def test_flux_multilingual_reports_the_turns_language_and_is_chosen_for_other_languages() -> None:
    from deepgram.core.unchecked_base_model import construct_type
    from deepgram.listen.v2.socket_client import V2SocketClientResponse

    from audio.stt.deepgram import turn_info_to_transcript
    from bot.providers import deepgram_model
    from bot.settings import load_settings

    msg = construct_type(type_=V2SocketClientResponse, object_={
        "type": "TurnInfo", "request_id": "r", "sequence_id": 1, "event": "EndOfTurn", "turn_index": 0,
        "audio_window_start": 0.0, "audio_window_end": 1.0, "transcript": "Hola, ¿qué tal?", "words": [],
        "end_of_turn_confidence": 0.9, "languages": ["es", "en"]})
    t = turn_info_to_transcript(msg)
    assert t is not None and t.language == "es"
    base = {"DEEPGRAM_API_KEY": "k" * 20, "DEEPGRAM_MODEL": "flux-general-en"}
    assert deepgram_model(load_settings(base, env_file=None)) == "flux-general-en"
    assert deepgram_model(load_settings({**base, "LANGUAGE": "auto"}, env_file=None)) == "flux-general-multi"
    assert deepgram_model(load_settings({**base, "DEEPGRAM_MODEL": "nova-3", "LANGUAGE": "auto"}, env_file=None)) == "nova-3"


async def test_eliza_in_an_english_place_still_owns_up_to_a_clearly_foreign_message() -> None:
    memory = (await Memory.open(Database.in_memory()))
    agent = Agent(default_character(), ElizaEngine("Nova"), memory)
    text = "".join([d async for d in agent.reply(_incoming("Bonjour, je voudrais te parler de ma journée.", "en"))])
    assert text.startswith("Je ne suis qu'un petit script intégré")
    text = "".join([d async for d in agent.reply(_incoming("ok", "en"))])
    assert "script" not in text


def test_everyday_english_is_never_taken_for_another_language() -> None:
    chooser = LanguageChooser()
    for line in ["Hello there", "Tell me a joke", "hey nova", "lol thats funny", "I need help", "no problem",
                 "okay cool thanks", "I am sad about my mother", "sure", "yes"]:
        choice = chooser.choose(mode="auto", fallback="en", text=line, place="guild:1")
        assert (choice.language, choice.notice) == ("en", None), (line, choice)
