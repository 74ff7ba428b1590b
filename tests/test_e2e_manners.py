"""A good guest in a room of people, end to end on the loopback Discord with real audio.

The bot runs unchanged (local faster-whisper, espeak-ng, the built-in ELIZA); a listener who plays
the bot back into the call through their speakers is a participant that echoes the bot's audio
with a delay and a level change. Every wait is on state (the session settled), never on time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from audio.native import load_libopus
from bot.providers import local_stt_available
from bot.settings import Settings, load_settings
from bot.simulate import running_bot
from bot.voice.turns import VoiceMode
from tests.fakes.openai_server import FakeOpenAI

SETTLE = 60.0
MORNING = "Good morning, can you hear me?"

needs_whisper = pytest.mark.skipif(not local_stt_available(), reason="faster-whisper is not installed")


def _wav(tmp_path_factory: pytest.TempPathFactory, text: str, name: str) -> Path:
    import wave

    from tests.speech_samples import espeak_pcm

    pcm, rate = espeak_pcm(text)
    path = tmp_path_factory.mktemp("speech") / name
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return path


@pytest.fixture(scope="module")
def morning_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _wav(tmp_path_factory, MORNING, "morning.wav")


@pytest.fixture(scope="module")
def joke_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _wav(tmp_path_factory, "Please tell me a joke about the weather.", "joke.wav")


@pytest.fixture(scope="module", autouse=True)
def _opus() -> None:
    load_libopus()


@needs_whisper
@pytest.mark.parametrize(("mode", "delay", "gain"), [
    (VoiceMode.AUTO, 0.2, 0.8),
    (VoiceMode.ALWAYS, 0.5, 0.5),
    (VoiceMode.ADDRESSED, 0.8, 1.0),
    (VoiceMode.PUSH_TO_TALK, 0.4, 0.6),
    (VoiceMode.SCRIBE, 0.4, 0.6),
])
async def test_a_listener_on_speakers_never_makes_the_bot_answer_itself(
        mode: str, delay: float, gain: float, morning_wav: Path) -> None:
    # "good morning" is a wake phrase, so Alice addresses the bot in every mode that needs it.
    settings = load_settings({"AGENT_ENGINE": "eliza", "STT_ENGINE": "local", "TTS_ENGINE": "espeak",
                              "VOICE_MODE": mode, "WAKE_PHRASES": "good morning"}, env_file=None)
    async with running_bot(settings, ["Alice", "Eddie"]) as lb:
        alice, eddie = lb.members["Alice"], lb.members["Eddie"]
        pa = await alice.join_voice(lb.voice)
        pe = await eddie.join_voice(lb.voice)
        await lb.command(alice, "join")
        await lb.wait_dave_group([alice, eddie])
        session = lb.manager.session(lb.guild.id)
        assert session is not None and session.policy.mode == mode
        if mode == VoiceMode.PUSH_TO_TALK:
            assert "listening" in await lb.command(alice, "listen")
        pe.echo(lb.discord.bot_user_id, delay=delay, gain=gain)
        turns: list = []
        session.on_turn = turns.append

        await lb.speak(pa.speak_wav(morning_wav))
        await asyncio.wait_for(session.wait_settled(), SETTLE)

        assert [t.name for t in turns] == ["Alice"], turns  # the echo never became a turn
        if mode == VoiceMode.SCRIBE:
            assert session.timings == [] and pe.echoed_frames == 0  # notes only: nothing said
        else:
            assert len(session.timings) == 1, session.timings  # one answer, to Alice, none to itself
            timing = session.timings[0]
            assert timing.user_id == pa.user_id and timing.reply and not timing.interrupted, timing
            assert pe.echoed_frames > 25  # the bot really was played back into the call
            assert session.echo.dropped >= 1
        pe.stop_echo()
        await lb.command(alice, "leave")
    assert lb.discord.problems == []


@needs_whisper
async def test_scribe_answers_nobody_and_its_transcript_and_notes_arrive(morning_wav: Path) -> None:
    summary = "- Alice and Bob said good morning."
    async with FakeOpenAI(reply_tokens=[summary[:12], summary[12:]]) as llm:
        settings = load_settings({"AGENT_ENGINE": "openai", "OPENAI_BASE_URL": llm.base_url,
                                  "OPENAI_API_KEY": llm.api_key, "OPENAI_MODEL": "gpt-test", "STT_ENGINE": "local",
                                  "TTS_ENGINE": "espeak", "VOICE_MODE": "scribe"}, env_file=None)
        await _scribe_call(settings, morning_wav, summary)
        [request] = llm.completion_requests  # one call to the model: the summary, no replies
        assert "Alice: Good morning" in request.body["messages"][-1]["content"]


async def _scribe_call(settings: Settings, morning_wav: Path, summary: str) -> None:
    async with running_bot(settings, ["Alice", "Bob"]) as lb:
        alice, bob = lb.members["Alice"], lb.members["Bob"]
        pa, pb = await alice.join_voice(lb.voice), await bob.join_voice(lb.voice)
        await lb.command(alice, "join")
        notice = await lb.discord.wait_bot_message(lb.voice, contains="/optout")
        assert "taking notes" in notice.content
        await lb.wait_dave_group([alice, bob])
        session = lb.manager.session(lb.guild.id)
        assert session is not None
        await lb.speak(pa.speak_wav(morning_wav))
        await asyncio.wait_for(session.wait_settled(), SETTLE)
        await lb.speak(pb.speak_wav(morning_wav))
        await asyncio.wait_for(session.wait_settled(), SETTLE)
        assert session.timings == []  # nobody was answered
        assert not [u for u in pa.heard + pb.heard if u.user_id == lb.discord.bot_user_id]

        handle = await alice.invoke_command("transcript", channel=lb.text)
        assert "transcript" in await handle.wait_text(timeout=30)
        [data] = handle.original.attachment_data
        lines = data.decode().splitlines()
        spoken = [line for line in lines if line.startswith("[")]
        assert [line.split("] ")[1].split(":")[0] for line in spoken] == ["Alice", "Bob"], lines
        assert all("morning" in line.lower() for line in spoken), lines

        assert "Left" in await lb.command(alice, "leave", timeout=60)
        notes = await lb.discord.wait_bot_message(lb.voice, contains="Notes from")
        assert summary in notes.content
        [posted] = notes.attachment_data
        assert posted.count(b"] Alice: ") == 1 and posted.count(b"] Bob: ") == 1
    assert lb.discord.problems == []


@needs_whisper
async def test_auto_answers_a_lone_person_unnamed_and_in_company_only_who_addresses_it(morning_wav: Path,
                                                                                       joke_wav: Path) -> None:
    settings = load_settings({"AGENT_ENGINE": "eliza", "STT_ENGINE": "local", "TTS_ENGINE": "espeak",
                              "WAKE_PHRASES": "good morning"}, env_file=None)
    async with running_bot(settings, ["Alice", "Bob"]) as lb:
        alice, bob = lb.members["Alice"], lb.members["Bob"]
        pa = await alice.join_voice(lb.voice)
        await lb.command(alice, "join")
        await lb.wait_dave_group([alice])
        session = lb.manager.session(lb.guild.id)
        assert session is not None and session.policy.mode == VoiceMode.AUTO
        await lb.speak(pa.speak_wav(joke_wav))  # alone, and not naming the bot
        await asyncio.wait_for(session.wait_settled(), SETTLE)
        assert [t.user_id for t in session.timings] == [pa.user_id]
        assert "one person here" in await lb.command(alice, "status")

        pb = await bob.join_voice(lb.voice)
        await lb.wait_dave_group([alice, bob])
        assert "2 people here" in await lb.command(alice, "status")
        await lb.speak(pb.speak_wav(joke_wav))  # in company, not addressed: heard, not answered
        await asyncio.wait_for(session.wait_settled(), SETTLE)
        assert [t.user_id for t in session.timings] == [pa.user_id]
        await lb.speak(pb.speak_wav(morning_wav))  # "good morning" is a wake phrase here
        await asyncio.wait_for(session.wait_settled(), SETTLE)
        assert [t.user_id for t in session.timings] == [pa.user_id, pb.user_id]
        await lb.command(alice, "leave")
    assert lb.discord.problems == []
