"""Voice replies are bounded (VOICE_REPLY_MAX_SECONDS), and memory holds what listeners heard when
the voice fails part-way through a sentence: the real ElevenLabs engine against the loopback
ElevenLabs dropping the connection mid-sentence, the local voice finishing the words."""

from __future__ import annotations

from collections.abc import AsyncIterator

from audio.tts.base import VoiceSpec
from audio.tts.elevenlabs import ElevenLabsEngine
from bot.agent.engines.base import Conversation, ReplyEngine
from tests.fakes.elevenlabs_server import DieAfter, Fail, FakeElevenLabs, Paced, error_body
from tests.test_voice_session import ROOM, ScriptedEngine, ScriptedSTT, ToneTTS, make_session, speak, wait_turns

BYTES_PER_SECOND = 48000 * 2  # pcm_48000: s16le mono
CHARS_PER_SECOND = 20  # the fake's audio: 50 ms per character


class EndlessEngine(ReplyEngine):
    """A model that never stops: one five-word sentence after another, about a megabyte if let run."""

    name = "endless"

    def __init__(self) -> None:
        self.yielded = 0
        self.closed = False

    async def stream(self, conversation: Conversation) -> AsyncIterator[str]:
        try:
            while self.yielded < 40_000:
                self.yielded += 1
                yield f"Sentence {self.yielded} goes on here. "
        finally:
            self.closed = True

    async def check(self) -> str:
        return "ok"


class PacedTone(ToneTTS):
    """Our TTS interface at a person's pace: 50 ms of audio per character."""

    async def synthesize(self, text: str, voice: VoiceSpec | None = None) -> AsyncIterator[bytes]:  # type: ignore[override]
        self.texts.append(text)
        for _ in text:
            yield bytes(BYTES_PER_SECOND // CHARS_PER_SECOND)


async def test_a_long_reply_stops_at_the_cap_on_a_sentence_and_memory_keeps_what_was_said() -> None:
    engine = EndlessEngine()
    session, memory, out = make_session(engine, ScriptedSTT({1: ["talk to me"]}), tts=PacedTone())
    session.max_reply_seconds = 3.0  # about 1.2 s a sentence
    speak(session, 1)
    await wait_turns(session, 1)
    seconds = [n / BYTES_PER_SECOND for _, n in out.played]
    assert len(seconds) == 3  # stopped at the first sentence end past the cap
    assert sum(seconds) >= 3.0 and sum(seconds[:-1]) < 3.0
    # The model was stopped once its text outgrew what could be said in the time (150 characters).
    assert engine.closed and engine.yielded <= 7
    turn = (await memory.recent(ROOM, 10))[-1]
    assert turn.role == "assistant" and turn.interrupted
    assert turn.text == " ".join(text for text, _ in out.played)
    await session.aclose()


async def test_the_voice_dying_mid_sentence_is_finished_by_the_local_voice() -> None:
    first, second = "This first sentence is fine.", "One two three four five six seven eight nine ten eleven twelve."
    third = "And the service stays down."
    async with FakeElevenLabs() as fake:
        whole = Paced()
        whole.finish()  # the first sentence streams normally
        down = Fail(503, error_body("service_unavailable"))
        # The second dies after one second of audio; then the service is down (every retry too).
        fake.script(whole, DieAfter(BYTES_PER_SECOND), down, down, down)
        tts = ElevenLabsEngine(api_key="test-key", base_url=fake.url, output_format="pcm_48000", backoff_base=0.0)
        local = ToneTTS()
        session, memory, out = make_session(ScriptedEngine([first + " ", second + " ", third]),
                                            ScriptedSTT({1: ["go"]}), tts=tts, fallback=local)
        speak(session, 1)
        await wait_turns(session, 1)
        await session.aclose()
        await tts.aclose()
    # What listeners heard: the first sentence, one second of the second in the main voice, then
    # the local voice from the first word that second did not cover.
    assert [t for t, _ in out.played][:2] == [first, second]
    heard_bytes = out.played[1][1]
    assert 0 < heard_bytes <= BYTES_PER_SECOND
    covered = heard_bytes / BYTES_PER_SECOND * CHARS_PER_SECOND
    heard_words = second[: int(covered)].rsplit(" ", 1)[0] if not second[int(covered)].isspace() \
        else second[: int(covered)]
    rest = second[len(heard_words):].strip()
    assert rest and rest.startswith(("five", "four", "six"))  # about 20 characters in
    assert local.texts == [rest, third]
    assert [t for t, _ in out.played][2:] == [rest, third]
    # What memory holds: every word was heard once, so the whole reply, not marked interrupted.
    turn = (await memory.recent(ROOM, 10))[-1]
    assert turn.role == "assistant" and not turn.interrupted
    assert turn.text == f"{first} {second} {third}"


async def test_the_voice_dying_mid_sentence_with_no_local_voice_stores_only_what_was_heard() -> None:
    first, second = "This first sentence is fine.", "One two three four five six seven eight nine ten eleven twelve."
    async with FakeElevenLabs() as fake:
        whole = Paced()
        whole.finish()
        fake.script(whole, DieAfter(BYTES_PER_SECOND))
        tts = ElevenLabsEngine(api_key="test-key", base_url=fake.url, output_format="pcm_48000", backoff_base=0.0)
        session, memory, out = make_session(ScriptedEngine([first + " ", second + " ", "Never spoken."]),
                                            ScriptedSTT({1: ["go"]}), tts=tts)
        speak(session, 1)
        await wait_turns(session, 1)
        await session.aclose()
        await tts.aclose()
    assert [t for t, _ in out.played] == [first, second]
    heard_bytes = out.played[1][1]
    turn = (await memory.recent(ROOM, 10))[-1]
    assert turn.role == "assistant" and turn.interrupted
    assert turn.text.startswith(first + " One two three")
    heard = turn.text[len(first) + 1:]
    assert second.startswith(heard) and len(heard) <= heard_bytes / BYTES_PER_SECOND * CHARS_PER_SECOND
    assert "Never spoken" not in turn.text
