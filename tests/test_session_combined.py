"""Features that meet in the voice session: speculative replies (#12) with per-reply language
(#15), closing mid-adoption, the echo guard (#16) with /say during a reply, and the console's
metering (#14) with per-stream recognizer options. Every wait is on state."""
from __future__ import annotations

import asyncio

from audio.stt.base import Transcript
from bot.agent import Agent
from bot.agent.character import default_character
from bot.store import SqliteDatabase as Database
from bot.i18n.places import Choice
from bot.memory import Memory
from bot.voice.session import VoiceSession
from bot.voice.turns import TurnPolicy, VoiceMode
from tests.test_turn_detection import RULE, EchoEngine, pause, until
from tests.test_voice_session import FRAME, ROOM, RecordingOut, ScriptedSTT, ToneTTS, wait_turns


def build(engine, stt, *, notify=None, choose=None, out=None):
    memory = Memory(Database.in_memory())
    character = default_character()
    session = VoiceSession(
        room=ROOM, agent=Agent(character, engine, memory), memory=memory, stt=stt, tts=ToneTTS(),
        out=out or RecordingOut(), policy=TurnPolicy(bot_names=(character.name,), mode=VoiceMode.ALWAYS),
        name_of=lambda uid: f"user{uid}", turn_detection=RULE, speculate=True,
        notify=notify, choose_language=choose,
    )
    return session


def once_notice_chooser():
    """Like LanguageChooser._unsupported: the notice is given once per place."""
    given: set[str] = set()

    def choose(text: str, heard: str | None) -> Choice:
        if "tlh" in given:
            return Choice("en", "fallback")
        given.add("tlh")
        return Choice("en", "fallback", "I don't speak that language; answering in English.")
    return choose


async def test_a_thrown_away_speculation_swallows_the_one_time_language_notice() -> None:
    notes: list[str] = []

    async def notify(text: str) -> None:
        notes.append(text)

    engine = EchoEngine(hold=True)
    stt = ScriptedSTT({1: ["I was thinking about", "the weather in Lisbon."]})
    session = build(engine, stt, notify=notify, choose=once_notice_chooser())
    pause(session, 1)  # unfinished words: a speculation starts (and chooses the language)
    await until(lambda: len(engine.conversations) == 1)
    pause(session, 1)  # they go on: the speculation is thrown away
    engine.release.set()
    await wait_turns(session, 1)
    assert session.speculations_wasted == 1
    # The place never got its one notice.
    assert any("don't speak" in n for n in notes), notes
    await session.aclose()


async def test_closing_while_a_speculative_reply_is_adopted_stops_its_agent_stream() -> None:
    gate, posting = asyncio.Event(), asyncio.Event()

    async def notify(text: str) -> None:
        posting.set()
        await gate.wait()  # a slow channel post

    engine = EchoEngine(hold=True)
    stt = ScriptedSTT({1: ["What time is it?"]})
    session = build(engine, stt, notify=notify, choose=once_notice_chooser())
    pause(session, 1)
    # The turn ends (finished words); the answer adopts the speculation and posts the notice first.
    await asyncio.wait_for(posting.wait(), 10)
    await session.aclose()
    running = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("speculative-") and not t.done()]
    assert running == [], f"the speculative reply outlived the session: {running}"


async def test_eager_speculation_ignores_the_recognizers_language() -> None:
    seen: list[str | None] = []

    def choose(text: str, heard: str | None) -> Choice:
        seen.append(heard)
        return Choice(heard or "en", "recognizer" if heard else "fallback")

    engine = EchoEngine()
    stt = ScriptedSTT({1: []})
    session = build(engine, stt, choose=choose)
    session.on_speech_start(1)
    session.on_audio(1, FRAME)
    stream = stt.streams["1"]
    # Flux multi: the eager guess and the end of turn both carry the language heard.
    stream.queue.put_nowait(Transcript("¿Qué hora es?", is_final=False, end_of_turn=False, start=0.0, end=1.0,
                                       turn_event="eager", language="es"))
    await until(lambda: len(engine.conversations) == 1)
    session.on_speech_end(1)
    stream.queue.put_nowait(Transcript("¿Qué hora es?", is_final=True, end_of_turn=True, start=0.0, end=1.0,
                                       language="es"))
    await wait_turns(session, 1)
    assert len(engine.conversations) == 1  # the eager reply was adopted
    assert engine.conversations[0].incoming.language == "es", (seen, engine.conversations[0].incoming.language)
    await session.aclose()


async def test_say_during_a_reply_unguards_the_sentence_still_playing() -> None:
    out = RecordingOut(hold=True)
    engine = EchoEngine()
    session = build(engine, ScriptedSTT({1: []}), out=out)
    session.hear_text(1, "Hello there.")
    await asyncio.wait_for(out.started.wait(), 10)  # "You said: Hello there." is playing
    say = asyncio.ensure_future(session.say("The meeting starts at noon."))  # /say, queued behind it
    await until(lambda: any("noon" in p.words for p in session.echo._playing))
    # A listener's speakers now feed the reply sentence (still audible) back to the recognizer:
    assert session.echo.is_echo("you said hello there", speech_started=session.clock()), \
        "the reply sentence still playing is no longer recognised as the bot's own voice"
    say.cancel()
    await session.aclose()
    await asyncio.gather(say, return_exceptions=True)


async def test_console_metering_passes_a_guilds_recognizer_language_through() -> None:
    from audio.stt.deepgram import DeepgramSTT
    from bot.console.metrics import Metrics, meter_stt

    engine = DeepgramSTT("key")
    metered = meter_stt(engine, Metrics())
    assert metered.name == "deepgram"  # so VoiceManager._stream_options may return {"language": ...}
    stream = metered.open_stream(speaker="1", sample_rate=48000, language="fr")  # what _ensure_stream calls
    assert stream._inner.language == "fr"  # type: ignore[attr-defined]  # reached the Deepgram stream
    await stream.aclose()
    await engine.aclose()
