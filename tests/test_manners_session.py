"""The room's manners at the session level: auto mode as the room changes, names said at once."""

from __future__ import annotations

import asyncio

from bot.voice.session import VoiceSession
from bot.voice.turns import VoiceMode
from tests.test_voice_session import RecordingOut, ScriptedEngine, ScriptedSTT, FRAME, make_session, wait_turns


def start(session: VoiceSession, user: int) -> None:
    session.on_speech_start(user)
    session.on_audio(user, FRAME)


async def test_auto_decides_by_the_room_a_person_spoke_into() -> None:
    room = {"humans": 1}
    stt = ScriptedSTT({1: ["what's the time", "and the date"], 2: ["nice hat"]})
    session, memory, out = make_session(ScriptedEngine(["Noon."]), stt, mode=VoiceMode.AUTO)
    session.humans_present = lambda: room["humans"]
    heard: list = []
    session.on_turn = heard.append
    start(session, 1)  # alone with the bot...
    room["humans"] = 2  # ...when Bob walks in mid-sentence
    session.on_speech_end(1)
    await wait_turns(session, 1)
    assert [t for t, _ in out.played] == ["Noon."]  # she spoke to the bot: answered
    # Now two people are here: Bob's unnamed words are heard, not answered...
    start(session, 2)
    session.on_speech_end(2)
    await asyncio.wait_for(session.wait_settled(), 10)
    assert [t.text for t in heard] == ["what's the time", "nice hat"] and len(out.played) == 1
    # ...while Alice, who was just answered, may follow up without the name.
    start(session, 1)
    session.on_speech_end(1)
    await wait_turns(session, 2)
    assert len(out.played) == 2
    assert [t.text for t in (await memory.recent("discord:1:2", 10)) if t.role == "user"] == [
        "what's the time", "nice hat", "and the date"]
    await session.aclose()


async def test_two_people_naming_the_bot_at_once_are_both_answered_in_turn() -> None:
    stt = ScriptedSTT({1: ["wren what's the time"], 2: ["wren what's the date"]})
    out = RecordingOut()
    session, memory, _ = make_session(ScriptedEngine(["Sure thing."]), stt, out=out, mode=VoiceMode.AUTO, humans=2)
    start(session, 1)
    start(session, 2)
    session.on_speech_end(1)
    session.on_speech_end(2)
    await wait_turns(session, 2)
    assert out.stops == 0  # neither answer was cut off by the other person's finished words
    assistant = [t for t in (await memory.recent("discord:1:2", 10)) if t.role == "assistant"]
    assert [t.interrupted for t in assistant] == [False, False]
    assert [t.speaker_name for t in (await memory.recent("discord:1:2", 10)) if t.role == "user"] == ["user1", "user2"]
    await session.aclose()
