"""VoiceManager's pure checks and adapters (real discord.py objects from payloads), and its behaviour
on the loopback Discord: server mute, voice drops, and a clean shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest

from audio.tts.base import AudioFormat
from bot.store import SqliteDatabase as Database
from bot.voice.guilds import OptOutList
from bot.voice.manager import GuardedOut, SpeechFeed, can_speak_in, humans_in, join_problem
from bot.voice.session import PlayResult
from tests.discord_objects import ALICE_ID, BOT_ID, GUILD_ID, make_state, user_payload
from tests.test_voice_commands import TIMEOUT, _seed, discord_, running_bot  # noqa: F401

VOICE_ID = 300000000000000010
STAGE_ID = 300000000000000011
CONNECT, SPEAK, VIEW, MOVE = 1 << 20, 1 << 21, 1 << 10, 1 << 24


def _guild(everyone: int, *, user_limit: int = 0, bot_state: dict[str, Any] | None = None,
           alice_in_voice: bool = True) -> discord.Guild:
    _, state = make_state()
    voice_states = []
    if alice_in_voice:
        voice_states.append({"user_id": str(ALICE_ID), "channel_id": str(VOICE_ID), "session_id": "a",
                             "deaf": False, "mute": False, "self_deaf": False, "self_mute": False,
                             "suppress": False})
    if bot_state is not None:
        voice_states.append({"user_id": str(BOT_ID), "session_id": "b", "deaf": False, "self_deaf": False,
                             "self_mute": False, "mute": False, "suppress": False, **bot_state})
    data = {
        "id": str(GUILD_ID), "name": "G", "owner_id": "1",
        "roles": [{"id": str(GUILD_ID), "name": "@everyone", "permissions": str(everyone), "position": 0,
                   "color": 0, "hoist": False, "managed": False, "mentionable": False}],
        "channels": [
            {"id": str(VOICE_ID), "type": 2, "name": "Lounge", "position": 0, "user_limit": user_limit,
             "bitrate": 64000},
            {"id": str(STAGE_ID), "type": 13, "name": "Stage", "position": 1, "bitrate": 64000, "user_limit": 0},
        ],
        "members": [
            {"user": user_payload(ALICE_ID, "alice"), "roles": [], "joined_at": None, "deaf": False, "mute": False,
             "flags": 0},
            {"user": user_payload(BOT_ID, "nova", bot=True), "roles": [], "joined_at": None, "deaf": False,
             "mute": False, "flags": 0},
        ],
        "member_count": 2, "emojis": [], "stickers": [], "features": [], "voice_states": voice_states,
    }
    guild = discord.Guild(data=data, state=state)
    state._add_guild(guild)
    return guild


ALL = VIEW | CONNECT | SPEAK


def test_join_problem_explains_each_refusal() -> None:
    assert join_problem(_guild(ALL).get_channel(VOICE_ID), _guild(ALL).me) is None
    g = _guild(VIEW | SPEAK)
    assert "Connect" in join_problem(g.get_channel(VOICE_ID), g.me)
    g = _guild(SPEAK | CONNECT)  # can't even see it
    assert "Connect" in join_problem(g.get_channel(VOICE_ID), g.me)
    g = _guild(VIEW | CONNECT)
    assert "Speak" in join_problem(g.get_channel(VOICE_ID), g.me)
    assert join_problem(g.get_channel(STAGE_ID), g.me) is None  # on a stage the bot starts as audience
    g = _guild(ALL, user_limit=1)
    assert "full" in join_problem(g.get_channel(VOICE_ID), g.me)
    g = _guild(ALL | MOVE, user_limit=1)  # Move Members gets in anyway, as in the client
    assert join_problem(g.get_channel(VOICE_ID), g.me) is None
    g = _guild(ALL, user_limit=2)
    assert join_problem(g.get_channel(VOICE_ID), g.me) is None


def test_humans_in_ignores_bots() -> None:
    g = _guild(ALL, bot_state={"channel_id": str(VOICE_ID)})
    assert [m.id for m in humans_in(g.get_channel(VOICE_ID))] == [ALICE_ID]
    assert humans_in(None) == []


@pytest.mark.parametrize("bot_state, channel, expected", [
    ({"channel_id": str(VOICE_ID)}, VOICE_ID, True),
    ({"channel_id": str(VOICE_ID), "mute": True}, VOICE_ID, False),  # server-muted
    ({"channel_id": str(STAGE_ID), "suppress": True}, STAGE_ID, False),  # stage audience
    ({"channel_id": str(STAGE_ID), "suppress": False}, STAGE_ID, True),  # made a speaker
])
def test_can_speak_respects_mute_and_stage(bot_state: dict[str, Any], channel: int, expected: bool) -> None:
    g = _guild(ALL, bot_state=bot_state)
    assert can_speak_in(g.get_channel(channel), g.me) is expected


def test_can_speak_needs_a_voice_state_and_speak() -> None:
    g = _guild(ALL)
    assert not can_speak_in(g.get_channel(VOICE_ID), g.me)  # not in voice at all
    g = _guild(VIEW | CONNECT, bot_state={"channel_id": str(VOICE_ID)})
    assert not can_speak_in(g.get_channel(VOICE_ID), g.me)


class _Out:
    def __init__(self) -> None:
        self.played: list[str] = []
        self.stopped = 0
        self.closed = False

    async def play(self, text: str, chunks: AsyncIterator[bytes], fmt: AudioFormat) -> PlayResult:
        async for _ in chunks:
            pass
        self.played.append(text)
        return PlayResult(1.0, 1.0, False, time.monotonic())

    def stop(self) -> None:
        self.stopped += 1

    async def aclose(self) -> None:
        self.closed = True


async def _chunks() -> AsyncIterator[bytes]:
    yield bytes(10)


async def test_guarded_out_posts_instead_of_speaking_when_not_allowed() -> None:
    inner, posted = _Out(), []
    allowed = True

    async def post(text: str) -> None:
        posted.append(text)

    out = GuardedOut(inner, can_speak=lambda: allowed, post_text=post)
    fmt = AudioFormat("s16le", 48000)
    result = await out.play("First.", _chunks(), fmt)
    assert result.first_frame_at is not None and inner.played == ["First."]
    allowed = False
    result = await out.play("Second.", _chunks(), fmt)
    assert result.first_frame_at is None and not result.interrupted
    assert inner.played == ["First."] and posted == ["🔇 Second."] and out.muted_sentences == 1
    out.stop()
    await out.aclose()
    assert inner.stopped == 1 and inner.closed


class _Session:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def on_speech_start(self, user_id: int) -> None:
        self.calls.append(("start", user_id))

    def on_audio(self, user_id: int, pcm: bytes) -> None:
        self.calls.append(("audio", user_id))

    def on_speech_end(self, user_id: int) -> None:
        self.calls.append(("end", user_id))


async def test_speech_feed_drops_opted_out_people() -> None:
    optouts = (await OptOutList.open(Database.in_memory()))
    session = _Session()
    feed = SpeechFeed(session, optouts)  # type: ignore[arg-type]
    feed.on_speech_start(1)
    feed.on_audio(1, b"x")
    (await optouts.opt_out(1))
    feed.on_audio(1, b"x")
    feed.on_speech_end(1)
    feed.on_speech_start(2)
    assert session.calls == [("start", 1), ("audio", 1), ("start", 2)]


# ------------------------------------------------------------------ on the loopback Discord



async def test_server_mute_sends_words_to_the_chat(discord_, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        await h.alice.join_voice(h.voice)
        await h.command(h.alice, "join")
        await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        state = h.guild.guild.voice_states[discord_.bot_user_id]
        from bot.loopback.state import voice_state_payload

        payload = voice_state_payload(state, h.guild.guild.members[discord_.bot_user_id])
        payload["mute"] = True
        muted = asyncio.Event()

        async def on_update(member: discord.Member, before: discord.VoiceState, after: discord.VoiceState) -> None:
            if member.id == discord_.bot_user_id and after.mute:
                muted.set()

        h.bot.add_listener(on_update, "on_voice_state_update")  # type: ignore[arg-type]
        discord_.gateway.dispatch("VOICE_STATE_UPDATE", payload)
        await asyncio.wait_for(muted.wait(), TIMEOUT)
        answer = await h.command(h.alice, "say", {"text": "Can you hear me?"})
        assert "posted it in its chat" in answer
        await discord_.wait_bot_message(h.voice, contains="🔇 Can you hear me?", timeout=TIMEOUT)
        assert h.outs[-1].played == []
        assert "not allowed here right now" in await h.command(h.alice, "status")
        await h.command(h.alice, "leave")


async def test_voice_drop_reconnects_and_commands_wait(discord_, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        await h.alice.join_voice(h.voice)
        await h.command(h.alice, "join")
        first = await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        gv = h.manager.connection(h.guild.id)
        await discord_.close_bot_voice(h.guild, 4015)  # voice server crashed: discord.py resumes/reconnects
        await first.closed.wait()
        again = await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        assert again is not first or again.session_ready.is_set()
        assert h.manager.connection(h.guild.id) is gv  # same conversation, no re-announcement needed
        assert await h.command(h.alice, "say", {"text": "Still here."}) == "Said it."
        assert "Left" in await h.command(h.alice, "leave")
    assert discord_.problems == []
