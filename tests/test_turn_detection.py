"""End of turn from a short pause plus the words, and speculative replies (issue 12 bad inputs).

State-based throughout: the rule's waits are either 0 (the turn ends as soon as the words are in)
or a minute (it never ends on its own within a test), so nothing depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from audio.stt.deepgram import DeepgramSTT
from bot.agent import Agent
from bot.agent.character import default_character
from bot.agent.engines.base import AgentError, Conversation, ReplyEngine
from bot.store import SqliteDatabase as Database
from bot.memory import Memory
from bot.voice.endpointing import TurnDetection, looks_finished
from bot.voice.session import VoiceSession
from bot.voice.turns import PendingTurn, TurnPolicy, VoiceMode
from tests.fakes.deepgram_server import FakeDeepgram, silence, word_audio
from tests.test_voice_session import FRAME, ROOM, RecordingOut, ScriptedSTT, ToneTTS, wait_turns

# Finished-looking words end the turn at once; unfinished-looking ones would wait a minute.
RULE = TurnDetection(pause_ms=100, finished_ms=0, unfinished_ms=60_000)


class EchoEngine(ReplyEngine):
    """Answers "You said: <words>. Anything else?"; can fail after ``fail_after`` deltas, or hold
    its stream open until ``release`` is set (so a test can see it cancelled mid-stream)."""

    name = "echo"

    def __init__(self, *, fail_after: int | None = None, hold: bool = False) -> None:
        self.fail_after = fail_after
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.conversations: list[Conversation] = []
        self.closed_early = 0

    async def stream(self, conversation: Conversation) -> AsyncIterator[str]:
        self.conversations.append(conversation)
        deltas = [f"You said: {conversation.text.rstrip('.?!')}.", " Anything else?"]
        finished = False
        try:
            for i, delta in enumerate(deltas):
                if self.fail_after is not None and i >= self.fail_after:
                    raise AgentError("scripted failure", user_message="My thoughts got tangled.")
                yield delta
                await self.release.wait()
            finished = True
        finally:
            if not finished:
                self.closed_early += 1

    async def check(self) -> str:
        return "ok"


def make(engine: ReplyEngine, stt: object, *, out: RecordingOut | None = None, speculate: bool = True
         ) -> tuple[VoiceSession, Memory, RecordingOut, list[PendingTurn]]:
    memory = Memory(Database.in_memory())
    character = default_character()
    out = out or RecordingOut()
    session = VoiceSession(
        room=ROOM, agent=Agent(character, engine, memory), memory=memory, stt=stt, tts=ToneTTS(),  # type: ignore[arg-type]
        out=out, policy=TurnPolicy(bot_names=(character.name,), mode=VoiceMode.ALWAYS),
        name_of=lambda uid: f"user{uid}", turn_detection=RULE, speculate=speculate,
    )
    heard: list[PendingTurn] = []
    session.on_turn = heard.append
    return session, memory, out, heard


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a state predicate (the timeout only guards against a hang)."""
    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(loop(), timeout)


def pause(session: VoiceSession, user: int, frames: int = 5) -> None:
    """Speak, then go quiet (the receive path's short packet gap)."""
    session.on_speech_start(user)
    for _ in range(frames):
        session.on_audio(user, FRAME)
    session.on_speech_end(user)


def stored(memory: Memory) -> list[tuple[str, str]]:
    return [(t.role, t.text) for t in memory.held(ROOM)[-20:]]


# ---------------------------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(("text", "finished"), [
    ("What is the weather like in Lisbon today?", True),
    ("What are you up to?", True),  # a question ends the turn even on "to"
    ("Turn it off.", True),
    ("I was thinking about", False),
    ("I was thinking about.", False),  # a recognizer's full stop on a word that needs more
    ("Could you remind me to call my mother and", False),
    ("The best part of the trip was...", False),
    ("Well, the", False),
    ("so", False),
    ("", False),
    # The other languages the bot speaks: their own full stops and question marks, their own words
    # that need more, and the sentences ending on words that only look like those.
    ("明日の天気はどうですか？", True),
    ("東京に行きました。", True),
    ("駅の近くで、", False),
    ("क्या आप मेरी मदद करेंगे।", True),
    ("هل يمكنك مساعدتي؟", True),
    ("Ich habe über das Wetter und.", False),
    ("Ich wollte dir etwas über", False),
    ("Das Licht ist aus.", True),
    ("Ich mag das.", True),
    ("Je pensais à la météo et", False),
    ("Je voudrais parler de la météo pour.", False),
    ("Fais-le.", True),
    ("Quería preguntarte sobre el tiempo y.", False),
    ("¿Qué tiempo hace en Lisboa?", True),
    ("Eu queria saber sobre o tempo com.", False),
    ("Über Nacht bleiben wir dort.", True),
])
def test_what_the_words_say(text: str, finished: bool) -> None:
    assert looks_finished(text) is finished
    assert TurnDetection().hold_seconds(text) == (0.25 if finished else 1.2)
    assert TurnDetection(mode="fixed").hold_seconds(text) == 0.0


def test_the_rule_reports_its_gap_and_rejects_unknown_modes() -> None:
    assert TurnDetection().gap_ms == 100 and TurnDetection(mode="fixed").gap_ms == 600
    with pytest.raises(ValueError):
        TurnDetection(mode="magic")


# ---------------------------------------------------------------------------------------------- bad inputs


async def test_a_person_who_pauses_and_continues_is_answered_once_for_the_whole_sentence() -> None:
    engine = EchoEngine(hold=True)
    stt = ScriptedSTT({1: ["I was thinking about", "the weather in Lisbon."]})
    session, memory, out, heard = make(engine, stt)
    pause(session, 1)
    # The pause's words are in and look unfinished: a reply starts, unheard, and the turn waits.
    await until(lambda: len(engine.conversations) == 1)
    assert session.speculations_started == 1 and heard == [] and out.played == []
    assert stored(memory) == []  # nothing they said is stored until their turn is over
    pause(session, 1)  # they go on
    engine.release.set()
    await wait_turns(session, 1)
    assert [t.text for t in heard] == ["I was thinking about the weather in Lisbon."]
    assert session.speculations_wasted == 1 and engine.closed_early == 1
    assert [c.text for c in engine.conversations] == ["I was thinking about",
                                                      "I was thinking about the weather in Lisbon."]
    assert [t for t, _ in out.played] == ["You said: I was thinking about the weather in Lisbon.", "Anything else?"]
    assert stored(memory) == [("user", "I was thinking about the weather in Lisbon."),
                              ("assistant", "You said: I was thinking about the weather in Lisbon. Anything else?")]
    await until(lambda: session.settled)
    await session.aclose()


async def test_a_finished_sentence_is_answered_with_the_speculative_reply() -> None:
    engine = EchoEngine()
    session, memory, out, heard = make(engine, ScriptedSTT({1: ["What time is it?"]}))
    pause(session, 1)
    await wait_turns(session, 1)
    assert len(engine.conversations) == 1  # the speculative call was the answer: no second call
    assert session.speculations_started == 1 and session.speculations_wasted == 0
    assert session.last_timing is not None and session.last_timing.speculative
    assert [t for t, _ in out.played] == ["You said: What time is it.", "Anything else?"]
    assert stored(memory) == [("user", "What time is it?"), ("assistant", "You said: What time is it. Anything else?")]
    await session.aclose()


async def test_two_people_finishing_at_the_same_moment_are_both_answered_once() -> None:
    engine = EchoEngine()
    stt = ScriptedSTT({1: ["Is it raining?"], 2: ["Where is my umbrella?"]})
    session, memory, out, heard = make(engine, stt)
    for user in (1, 2):
        session.on_speech_start(user)
    for user in (1, 2):
        session.on_audio(user, FRAME)
    for user in (1, 2):
        session.on_speech_end(user)
    await wait_turns(session, 2)
    assert sorted(t.text for t in heard) == ["Is it raining?", "Where is my umbrella?"]
    played = [t for t, _ in out.played]
    assert sorted(p for p in played if p.startswith("You said")) == [
        "You said: Is it raining.", "You said: Where is my umbrella."]
    assert session.speculations_wasted == 0 and len(engine.conversations) == 2
    users = [text for role, text in stored(memory) if role == "user"]
    assert sorted(users) == ["Is it raining?", "Where is my umbrella?"]
    assert len([1 for role, _ in stored(memory) if role == "assistant"]) == 2
    await session.aclose()


async def test_talking_over_a_speculative_reply() -> None:
    # While it is being prepared: someone else talking does not throw it away...
    engine = EchoEngine(hold=True)
    stt = ScriptedSTT({1: ["Tell me about", "your day."], 2: []})
    out = RecordingOut(hold=True)
    session, memory, _, heard = make(engine, stt, out=out)
    pause(session, 1)
    await until(lambda: len(engine.conversations) == 1)
    session.on_speech_start(2)
    session.on_audio(2, FRAME)
    assert session.speculations_wasted == 0
    # ...the speaker going on does, unheard and unstored.
    session.on_speech_start(1)
    await until(lambda: engine.closed_early == 1)
    assert session.speculations_wasted == 1 and out.played == [] and stored(memory) == []
    # Once their turn is over the new reply plays; talking over it stops it (barge-in), and only
    # what was played is remembered, marked as interrupted.
    session.on_audio(1, FRAME)
    session.on_speech_end(1)
    engine.release.set()
    await asyncio.wait_for(out.started.wait(), 10)
    session.on_speech_start(1)
    stt.streams["1"].emit("wait, stop")
    await wait_turns(session, 1)
    assert [t.text for t in heard] == ["Tell me about your day."]
    assistant = [t for t in (await memory.recent(ROOM, 10)) if t.role == "assistant"]
    assert len(assistant) == 1 and assistant[0].interrupted
    assert "Anything else" not in assistant[0].text
    await session.aclose()


async def test_an_agent_that_fails_after_the_speculative_start() -> None:
    # The turn ends: the failure is said, the words are remembered, no reply is stored.
    engine = EchoEngine(fail_after=0)
    session, memory, out, _ = make(engine, ScriptedSTT({1: ["How are you?"]}))
    pause(session, 1)
    await wait_turns(session, 1)
    assert [t for t, _ in out.played] == ["My thoughts got tangled."]
    assert stored(memory) == [("user", "How are you?")]
    await session.aclose()

    # The person goes on instead: the failed speculation is thrown away without a word.
    engine = EchoEngine(fail_after=1)
    session, memory, out, heard = make(engine, ScriptedSTT({1: ["So I was", "wondering why."]}))
    pause(session, 1)
    await until(lambda: len(engine.conversations) == 1 and session._speculations[1].produce.done())
    pause(session, 1)
    await wait_turns(session, 1)
    assert [t.text for t in heard] == ["So I was wondering why."]
    assert session.speculations_wasted == 1
    # The real answer fails too, before a sentence was complete: the failure is said once.
    assert [t for t, _ in out.played] == ["My thoughts got tangled."]
    assert stored(memory) == [("user", "So I was wondering why.")]
    await session.aclose()


async def test_an_stt_stream_that_drops_during_the_pause() -> None:
    """Deepgram (the real SDK against the loopback fake) drops the socket when the pause's Finalize
    arrives: the stream reconnects, replays the words and finalizes again; one turn, all the words."""
    async with FakeDeepgram(vocabulary={1: "hello", 2: "there", 3: "friend"}, drop_on_control="Finalize") as fake:
        stt = DeepgramSTT(fake.api_key, base_url=fake.http_url, backoff_base=0.01, backoff_max=0.05)
        engine = EchoEngine()
        session, memory, out, heard = make(engine, stt)
        audio = word_audio([1, 2, 3])
        session.on_speech_start(5)
        for i in range(0, len(audio), 640):
            session.on_audio(5, audio[i:i + 640])
        session.on_speech_end(5)
        await wait_turns(session, 1)
        assert len(fake.connections) >= 2  # it did drop and come back
        assert [t.text for t in heard] == ["Hello there friend."]
        assert stored(memory)[0] == ("user", "Hello there friend.")
        assert [t for t, _ in out.played][0] == "You said: Hello there friend."
        await session.aclose()
        await stt.aclose()


def say(session: VoiceSession, user: int, audio: bytes) -> None:
    """One stretch of speech as the receive path hands it over: start, 20 ms frames, end."""
    session.on_speech_start(user)
    for i in range(0, len(audio), 640):
        session.on_audio(user, audio[i:i + 640])
    session.on_speech_end(user)


async def test_a_breath_or_a_sentence_tail_the_recognizer_hears_nothing_in_leaves_the_bot_listening() -> None:
    """Under load a packet gap cuts a sentence's last syllable off as a stretch of its own, and a
    breath is speech to the VAD: Deepgram (the real SDK against the loopback fake) finds no words
    in either. The turn still ends, the session settles, and the next sentence is answered (before,
    the swallowed answer left the session waiting for the recognizer for ever: deaf to that person)."""
    async with FakeDeepgram(vocabulary={1: "hello", 2: "there", 3: "friend"}) as fake:
        stt = DeepgramSTT(fake.api_key, base_url=fake.http_url)
        session, memory, out, heard = make(EchoEngine(), stt)
        say(session, 5, word_audio([1, 2]))
        say(session, 5, silence(5))  # the tail, ended before the recognizer answered the first pause
        await wait_turns(session, 1)
        await asyncio.wait_for(session.wait_settled(), 10)  # failure guard only
        say(session, 5, silence(5))  # a breath after the answer
        await asyncio.wait_for(session.wait_settled(), 10)
        say(session, 5, word_audio([3, 2, 1]))
        await wait_turns(session, 2)
        assert [t.text for t in heard] == ["Hello there.", "Friend there hello."]
        assert [t for t, _ in out.played][-2:] == ["You said: Friend there hello.", "Anything else?"]
        await session.aclose()
        await stt.aclose()


async def test_fixed_mode_ends_the_turn_on_the_recognizer_final_as_before() -> None:
    engine = EchoEngine()
    memory = Memory(Database.in_memory())
    character = default_character()
    out = RecordingOut()
    session = VoiceSession(
        room=ROOM, agent=Agent(character, engine, memory), memory=memory,
        stt=ScriptedSTT({1: ["I was thinking about"]}), tts=ToneTTS(), out=out,
        policy=TurnPolicy(bot_names=(character.name,), mode=VoiceMode.ALWAYS),
        turn_detection=TurnDetection(mode="fixed"), speculate=True,
    )
    pause(session, 1)
    await wait_turns(session, 1)
    assert session.speculations_started == 0  # speculation needs the smart rule
    assert stored(memory)[0] == ("user", "I was thinking about")
    await session.aclose()


async def test_deepgram_hears_a_pause_as_silence_audio_when_asked() -> None:
    """pause_signal="silence": no Finalize; the silence sent makes the fake's endpointing end the
    segment (speech_final), which ends the turn."""
    async with FakeDeepgram(vocabulary={1: "good", 2: "morning"}) as fake:
        stt = DeepgramSTT(fake.api_key, base_url=fake.http_url, pause_signal="silence")
        session, memory, out, heard = make(EchoEngine(), stt)
        audio = word_audio([1, 2])
        session.on_speech_start(5)
        for i in range(0, len(audio), 640):
            session.on_audio(5, audio[i:i + 640])
        session.on_speech_end(5)
        await wait_turns(session, 1)
        assert [t.text for t in heard] == ["Good morning."]
        assert "Finalize" not in fake.connections[0].control_types()
        assert any(m.get("speech_final") for m in fake.connections[0].sent)
        await session.aclose()
        await stt.aclose()
    with pytest.raises(ValueError):
        DeepgramSTT("key", pause_signal="shout")


async def test_flux_eager_end_of_turn_prepares_a_reply_and_turn_resumed_throws_it_away() -> None:
    from audio.stt.base import Transcript

    engine = EchoEngine()
    stt = ScriptedSTT({1: ["What is the time?"]})
    session, memory, out, heard = make(engine, stt)
    session.on_speech_start(1)
    session.on_audio(1, FRAME)
    stream = stt.streams["1"]

    def event(text: str, kind: str) -> None:
        stream.queue.put_nowait(Transcript(text, is_final=False, end_of_turn=False, start=0.0, end=1.0,
                                           turn_event=kind))

    event("What is", "eager")
    await until(lambda: len(engine.conversations) == 1)
    event("", "resumed")
    await until(lambda: session.speculations_wasted == 1)
    event("What is the time", "eager")
    await until(lambda: len(engine.conversations) == 2)
    session.on_speech_end(1)  # the end of turn brings the same words: the prepared reply is the answer
    await wait_turns(session, 1)
    assert [t.text for t in heard] == ["What is the time?"]
    assert len(engine.conversations) == 2 and session.speculations_started == 2
    assert [t for t, _ in out.played][0] == "You said: What is the time."
    assert [role for role, _ in stored(memory)] == ["user", "assistant"]
    await session.aclose()


def test_flux_turn_events_become_transcript_turn_events() -> None:
    from types import SimpleNamespace

    from audio.stt.deepgram import turn_info_to_transcript

    eager = turn_info_to_transcript(SimpleNamespace(event="EagerEndOfTurn", transcript="so what", words=[],
                                                    audio_window_start=0.0, audio_window_end=1.0))
    resumed = turn_info_to_transcript(SimpleNamespace(event="TurnResumed", transcript="", words=[],
                                                      audio_window_start=0.0, audio_window_end=1.0))
    assert eager is not None and eager.turn_event == "eager" and not eager.is_final
    assert resumed is not None and resumed.turn_event == "resumed"


async def test_a_thrown_away_speculation_rewarms_the_llm_connection() -> None:
    """Cancelling a streaming reply closes its connection; the engine opens a fresh one at once
    (one small request) so the real answer does not pay the handshake."""
    from bot.agent.engines.openai_engine import OpenAIEngine
    from tests.fakes.openai_server import FakeOpenAI

    async with FakeOpenAI(paced=True) as fake:
        engine = OpenAIEngine(api_key=fake.api_key, base_url=fake.base_url, model="gpt-test")
        session, memory, out, heard = make(engine, ScriptedSTT({1: ["I was wondering about", "the moon."]}))
        pause(session, 1)
        await until(lambda: len(fake.completion_requests) == 1)
        session.on_speech_start(1)  # they go on: the speculative stream is cancelled mid-reply
        await until(lambda: any(r.path.endswith("/models") for r in fake.requests))
        assert session.speculations_wasted == 1 and stored(memory) == []
        fake.allow(100)
        session.on_audio(1, FRAME)
        session.on_speech_end(1)
        await wait_turns(session, 1)
        assert [t.text for t in heard] == ["I was wondering about the moon."]
        await session.aclose()
        await engine.aclose()


async def test_a_pause_with_no_speech_in_it_leaves_the_local_session_settled() -> None:
    """A packet burst the local recognizer's VAD finds no speech in (a click, breath, background
    hum) still gets an answer to its end of speech, so nothing looks in flight afterwards."""
    from bot.providers import local_stt_available

    if not local_stt_available():
        pytest.skip("faster-whisper is not installed")
    from audio.stt.local import LocalWhisperSTT

    stt = LocalWhisperSTT()
    session, memory, out, heard = make(EchoEngine(), stt)
    pause(session, 1, frames=10)  # 200 ms of near-silence: no speech for webrtcvad
    await until(lambda: session.settled, timeout=60.0)
    assert heard == [] and out.played == [] and session.speculations_started == 0
    pause(session, 1, frames=3)  # and again: each end of speech is answered once
    await until(lambda: session.settled, timeout=60.0)
    assert heard == [] and session.participants[1].turn_ends == session.participants[1].speech_ends == 2
    await session.aclose()
    await stt.aclose()


async def test_words_heard_when_the_session_closes_are_kept_unanswered() -> None:
    # A deploy (SIGTERM) closes the session while one person's turn waits to end (a speculative
    # reply started on it, never adopted): what they said is stored, no reply is; a "forget what I
    # just said" heard that way is a request, never stored as a remark.
    engine = EchoEngine(hold=True)
    stt = ScriptedSTT({1: ["I was thinking about"], 2: ["forget what I just said"]})
    session, memory, out, heard = make(engine, stt)
    pause(session, 1)
    await until(lambda: len(engine.conversations) == 1)
    pause(session, 2)
    await until(lambda: all(p.candidate is not None for p in session.participants.values())
                and len(session.participants) == 2)
    assert stored(memory) == []
    await session.aclose()
    assert stored(memory) == [("user", "I was thinking about")]
    assert out.played == [] and engine.closed_early == 1
