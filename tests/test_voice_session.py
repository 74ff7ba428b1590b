"""The voice conversation: decoded PCM in, spoken replies out, with scripted STT, agent and TTS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from audio.stt.base import STTEngine, STTError, STTStream, Transcript
from audio.tts.base import AudioFormat, TTSEngine, TTSError, VoiceInfo, VoiceSpec
from bot.agent import Agent
from bot.agent.character import default_character
from bot.agent.engines.base import AgentError, Conversation, ReplyEngine
from bot.store import SqliteDatabase as Database
from bot.memory import Memory
from bot.voice.session import PlayResult, VoiceSession
from bot.voice.turns import TurnPolicy, VoiceMode

FRAME = b"\x01\x00" * 320  # 20 ms of 16 kHz mono
ROOM = "discord:1:2"


class ScriptedEngine(ReplyEngine):
    name = "scripted"

    def __init__(self, deltas: list[str], *, fail_after: int | None = None) -> None:
        self.deltas = deltas
        self.fail_after = fail_after
        self.conversations: list[Conversation] = []

    async def stream(self, conversation: Conversation) -> AsyncIterator[str]:
        self.conversations.append(conversation)
        for i, delta in enumerate(self.deltas):
            if self.fail_after is not None and i >= self.fail_after:
                raise AgentError("scripted failure", user_message="My thoughts got tangled.")
            yield delta

    async def check(self) -> str:
        return "ok"


class ScriptedStream(STTStream):
    """Finalize answers with the scripted words; tests may also emit interims directly."""

    def __init__(self, words: list[str], sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.words = words
        self.pushed = 0
        self.queue: asyncio.Queue[Transcript | BaseException | None] = asyncio.Queue()

    def push(self, pcm: bytes) -> None:
        self.pushed += len(pcm)

    def emit(self, text: str, *, final: bool = False, end: bool = False) -> None:
        self.queue.put_nowait(Transcript(text=text, is_final=final, end_of_turn=end, start=0.0, end=1.0))

    async def finalize(self) -> None:
        text = self.words.pop(0) if self.words else ""
        self.emit(text, final=True, end=True)

    async def aclose(self) -> None:
        self.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[Transcript]:  # type: ignore[override]
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class ScriptedSTT(STTEngine):
    name = "scripted"

    def __init__(self, words: dict[int, list[str]]) -> None:
        self.words = words
        self.streams: dict[str, ScriptedStream] = {}

    def open_stream(self, *, speaker: str, sample_rate: int = 16000) -> STTStream:
        stream = ScriptedStream(self.words.setdefault(int(speaker), []), sample_rate)
        self.streams[speaker] = stream
        return stream

    async def check(self) -> str:
        return "ok"

    async def aclose(self) -> None:
        return None


class ToneTTS(TTSEngine):
    name = "tone"
    format = AudioFormat("s16le", 48000, 1)

    def __init__(self, *, fail: TTSError | None = None) -> None:
        self.fail = fail
        self.texts: list[str] = []

    async def synthesize(self, text: str, voice: VoiceSpec | None = None) -> AsyncIterator[bytes]:
        self.texts.append(text)
        if self.fail is not None:
            raise self.fail
        for _ in range(len(text.split())):
            yield b"\x00\x10" * 960  # 20 ms per word

    async def list_voices(self) -> list[VoiceInfo]:
        return []

    async def check(self) -> str:
        return "ok"


class RecordingOut:
    """An AudioOut that records utterances; with ``hold`` it plays until released or stopped."""

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self.played: list[tuple[str, int]] = []
        self.started = asyncio.Event()
        self._release = asyncio.Event()
        self._stopped = asyncio.Event()
        self.stops = 0

    async def play(self, text: str, chunks: AsyncIterator[bytes], fmt: AudioFormat) -> PlayResult:
        total = 0
        async for chunk in chunks:
            total += len(chunk)
        self.started.set()
        seconds = total / (fmt.sample_rate * 2)
        if self.hold:
            waiter = asyncio.ensure_future(self._release.wait())
            stopper = asyncio.ensure_future(self._stopped.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if self._stopped.is_set():
                self.played.append((text, total // 2))
                return PlayResult(seconds / 2, seconds, interrupted=True, first_frame_at=1.0)
        self.played.append((text, total))
        return PlayResult(seconds, seconds, interrupted=False, first_frame_at=1.0)

    def stop(self) -> None:
        self.stops += 1
        self._stopped.set()


def make_session(engine: ReplyEngine, stt: STTEngine, *, tts: TTSEngine | None = None, out: RecordingOut | None = None,
                 mode: str = VoiceMode.ALWAYS, humans: int = 1, fallback: TTSEngine | None = None,
                 notes: list[str] | None = None) -> tuple[VoiceSession, Memory, RecordingOut]:
    memory = Memory(Database.in_memory())
    character = default_character()
    agent = Agent(character, engine, memory)
    out = out or RecordingOut()

    async def notify(text: str) -> None:
        if notes is not None:
            notes.append(text)

    session = VoiceSession(
        room=ROOM, agent=agent, memory=memory, stt=stt, tts=tts or ToneTTS(), out=out,
        policy=TurnPolicy(bot_names=(character.name,), mode=mode), fallback_tts=fallback,
        name_of=lambda uid: f"user{uid}", humans_present=lambda: humans, notify=notify,
    )
    return session, memory, out


async def wait_turns(session: VoiceSession, n: int) -> None:
    async with session.answered:
        await asyncio.wait_for(session.answered.wait_for(lambda: session.turns_done >= n), 10)


def speak(session: VoiceSession, user: int, frames: int = 10) -> None:
    session.on_speech_start(user)
    for _ in range(frames):
        session.on_audio(user, FRAME)
    session.on_speech_end(user)


async def test_a_full_turn_streams_sentences_to_speech_and_memory() -> None:
    engine = ScriptedEngine(["Hello ", "there. ", "How can ", "I help ", "today?"])
    stt = ScriptedSTT({7: ["what can you do"]})
    session, memory, out = make_session(engine, stt)
    speak(session, 7)
    await wait_turns(session, 1)
    assert [t for t, _ in out.played] == ["Hello there.", "How can I help today?"]
    assert stt.streams["7"].pushed == 10 * len(FRAME)
    turns = (await memory.recent(ROOM, 10))
    assert [(t.role, t.text) for t in turns] == [("user", "what can you do"),
                                                ("assistant", "Hello there. How can I help today?")]
    timing = session.last_timing
    assert timing is not None and timing.first_text is not None and timing.first_tts_audio is not None
    assert timing.breakdown_ms()["end_of_speech_to_first_frame"] is not None
    await session.aclose()


async def test_barge_in_on_interim_text_stops_and_stores_only_what_was_played() -> None:
    engine = ScriptedEngine(["One two three four five six seven eight. ", "Never reached."])
    stt = ScriptedSTT({1: ["tell me a story"]})
    out = RecordingOut(hold=True)
    session, memory, _ = make_session(engine, stt, out=out)
    speak(session, 1)
    await asyncio.wait_for(out.started.wait(), 10)
    session.on_speech_start(2)
    session.on_audio(2, FRAME)
    stt.streams["2"].emit("")  # an empty interim (noise, the bot's own voice leaking) does not interrupt
    stt.streams["2"].emit("wait")
    await wait_turns(session, 1)
    assert out.stops == 1
    assistant = [t for t in (await memory.recent(ROOM, 10)) if t.role == "assistant"]
    assert len(assistant) == 1 and assistant[0].interrupted
    assert assistant[0].text == "One two three four"
    await session.aclose()


async def test_words_said_before_the_bot_began_do_not_interrupt_it() -> None:
    engine = ScriptedEngine(["One two three four five six seven eight."])
    stt = ScriptedSTT({1: ["tell me a story"], 2: [""]})
    out = RecordingOut(hold=True)
    session, _, _ = make_session(engine, stt, out=out)
    speak(session, 2)  # Bob finished speaking; his recognizer is still working on it
    speak(session, 1)
    await asyncio.wait_for(out.started.wait(), 10)
    stt.streams["2"].emit("what I said earlier", final=True)
    for _ in range(20):
        await asyncio.sleep(0)
    assert out.stops == 0
    session.on_speech_start(2)  # now Bob really talks over the bot
    stt.streams["2"].emit("hold on")
    await wait_turns(session, 1)
    assert out.stops == 1
    await session.aclose()


async def test_addressed_mode_answers_only_when_named_but_remembers_everything() -> None:
    engine = ScriptedEngine(["Yes?"])
    stt = ScriptedSTT({1: ["nice weather today", "hey wren are you there"]})
    session, memory, out = make_session(engine, stt, mode=VoiceMode.ADDRESSED, humans=3)
    speak(session, 1)
    speak(session, 1)
    await wait_turns(session, 1)
    assert [t for t, _ in out.played] == ["Yes?"]
    assert len(engine.conversations) == 1
    assert [t.text for t in (await memory.recent(ROOM, 10))] == ["nice weather today", "hey wren are you there", "Yes?"]
    await session.aclose()


async def test_tts_failure_falls_back_to_the_local_voice() -> None:
    engine = ScriptedEngine(["All good here."])
    broken = ToneTTS(fail=TTSError("503 from provider", retryable=True, user_message="voice service down"))
    local = ToneTTS()
    session, memory, out = make_session(engine, ScriptedSTT({1: ["status?"]}), tts=broken, fallback=local)
    speak(session, 1)
    await wait_turns(session, 1)
    assert broken.texts == ["All good here."] and local.texts == ["All good here."]
    assert out.played and out.played[0][0] == "All good here."
    await session.aclose()


async def test_no_voice_at_all_posts_the_text_instead() -> None:
    notes: list[str] = []
    engine = ScriptedEngine(["Here is the answer."])
    broken = ToneTTS(fail=TTSError("401", user_message="My voice service rejected its API key."))
    session, _, out = make_session(engine, ScriptedSTT({1: ["question"]}), tts=broken, notes=notes)
    speak(session, 1)
    await wait_turns(session, 1)
    assert out.played == []
    assert notes and "Here is the answer." in notes[0] and "rejected" in notes[0]
    await session.aclose()


async def test_agent_failure_is_spoken_and_nothing_is_stored_as_said() -> None:
    engine = ScriptedEngine(["never"], fail_after=0)
    session, memory, out = make_session(engine, ScriptedSTT({1: ["hello"]}))
    speak(session, 1)
    await wait_turns(session, 1)
    assert [t for t, _ in out.played] == ["My thoughts got tangled."]
    assert [t.role for t in (await memory.recent(ROOM, 10))] == ["user"]
    await session.aclose()


@pytest.mark.parametrize("reply", [["   "], ["```python\nprint(1)\n```"], ["😀🎉"]])
async def test_unspeakable_replies_leave_nothing_stuck(reply: list[str]) -> None:
    session, _, out = make_session(ScriptedEngine(reply), ScriptedSTT({1: ["hi", "again"]}))
    speak(session, 1)
    await wait_turns(session, 1)
    speak(session, 1)
    await wait_turns(session, 2)  # the queue moved on
    await session.aclose()


async def test_a_rejected_recognizer_key_is_reported_once_and_not_retried() -> None:
    notes: list[str] = []
    stt = ScriptedSTT({})
    session, _, _ = make_session(ScriptedEngine(["x"]), stt, notes=notes)
    session.on_speech_start(1)
    stt.streams["1"].queue.put_nowait(STTError("401", retryable=False, user_message="Deepgram rejected the API key."))
    for _ in range(50):
        if notes:
            break
        await asyncio.sleep(0)
    assert notes == ["Deepgram rejected the API key."]
    session.on_speech_start(3)
    session.on_audio(3, FRAME)
    assert "3" not in stt.streams  # no new streams after a fatal error
    await session.aclose()


async def test_a_leaver_is_forgotten_and_close_leaves_no_tasks() -> None:
    stt = ScriptedSTT({1: []})
    session, _, _ = make_session(ScriptedEngine(["x"]), stt)
    session.on_speech_start(1)
    session.on_leave(1)
    assert 1 not in session.participants
    await session.aclose()
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert not [t for t in pending if t.get_name().startswith(("stt-", "respond-", "tts-", "reply-"))]
