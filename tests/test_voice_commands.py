"""The voice and privacy commands end to end: the real VoiceBot against the loopback Discord.

Slash commands are invoked as members (real INTERACTION_CREATE payloads); the bot joins voice
through discord.py's real voice handshake (with DAVE); answers are read back from the loopback's
record of interaction responses. Speech engines are fakes implementing our own interfaces, and the
playback side is a recording AudioOut, so these tests are about the Discord glue.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest
import yarl

from audio.decode import ReceivePipeline
from audio.receive import OPTED_OUT, VoicePacket
from audio.tts.base import AudioFormat, TTSEngine, VoiceInfo, VoiceSpec
from bot.store import SqliteDatabase as Database
from bot.loopback.server import ChannelHandle, GuildHandle, InteractionHandle, LocalDiscord, MemberHandle
from bot.loopback.state import Channel, ChannelType, Interaction, Permissions, interaction_payload, option_payloads
from bot.memory import Modality, Turn
from bot.settings import load_settings
from bot.voice.session import PlayResult

TIMEOUT = 20.0
EPHEMERAL = 1 << 6
MANAGE_GUILD = 1 << 5


class FakeTTS(TTSEngine):
    """Our TTS interface: 100 ms of quiet PCM per sentence, and a short voice list."""

    name = "fake"
    format = AudioFormat("s16le", 48000, 1)

    async def synthesize(self, text: str, voice: VoiceSpec | None = None) -> AsyncIterator[bytes]:  # type: ignore[override]
        yield bytes(9600)

    async def list_voices(self) -> list[VoiceInfo]:
        return [VoiceInfo("voice-rachel", "Rachel", "calm"), VoiceInfo("voice-adam", "Adam")]

    async def check(self) -> str:
        return "ok"

    async def aclose(self) -> None:
        return None


class RecordingOut:
    """An AudioOut that consumes each utterance and records its text."""

    def __init__(self, vc: discord.VoiceClient) -> None:
        self.vc = vc
        self.played: list[str] = []
        self.closed = False

    async def play(self, text: str, chunks: AsyncIterator[bytes], fmt: AudioFormat) -> PlayResult:
        total = 0
        async for chunk in chunks:
            total += len(chunk)
        self.played.append(text)
        seconds = total / (fmt.bytes_per_second or 1)
        return PlayResult(played_seconds=seconds, total_seconds=seconds, interrupted=False,
                          first_frame_at=time.monotonic())

    def stop(self) -> None:
        return None

    async def aclose(self) -> None:
        self.closed = True


class RecordingPipeline(ReceivePipeline):
    """The real decode pipeline, noting every user whose packets reached it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.users: set[int] = set()

    def on_packet(self, packet: VoicePacket) -> None:
        self.users.add(packet.user_id)
        super().on_packet(packet)


@dataclass
class Harness:
    discord: LocalDiscord
    guild: GuildHandle
    text: ChannelHandle
    voice: ChannelHandle
    other_voice: ChannelHandle
    alice: MemberHandle  # an ordinary member
    boss: MemberHandle  # has Manage Server
    bot: Any = None
    manager: Any = None
    outs: list[RecordingOut] = field(default_factory=list)
    pipelines: list[RecordingPipeline] = field(default_factory=list)

    async def command(self, member: MemberHandle, name: str, options: dict[str, Any] | None = None) -> str:
        if " " in name:  # a subcommand: typed from its declared options (the loopback's helper takes flat ones)
            group, sub = name.split(" ", 1)
            world = self.discord.world
            command = world.find_command(group, self.guild.id)
            assert command is not None, f"/{group} was not synced"
            declared = next(o for o in command.options if o["name"] == sub).get("options", [])
            typed, resolved = option_payloads(declared, options or {}, world, self.guild.guild)
            handle = raw_invoke(self.discord, member.id, self.guild.id, self.text.id, group,
                                [{"name": sub, "type": 1, "options": typed}], resolved)
        else:
            handle = await member.invoke_command(name, options, channel=self.text)
        return await answer_of(handle)


def raw_invoke(discord_: LocalDiscord, user_id: int, guild_id: int | None, channel_id: int, name: str,
               options: list[dict[str, Any]], resolved: dict[str, Any] | None = None) -> InteractionHandle:
    """Deliver an INTERACTION_CREATE with hand-built options (subcommands) or from a DM."""
    world = discord_.world
    command = world.find_command(name, guild_id if guild_id is not None else next(iter(world.guild_commands)))
    assert command is not None, f"/{name} was not synced"
    interaction = Interaction(id=world.snowflakes.next(), token=f"raw-{world.snowflakes.next()}-token-padding",
                              type=2, guild_id=guild_id, channel_id=channel_id, user_id=user_id, name=name,
                              created_at=asyncio.get_running_loop().time())
    world.interactions[interaction.id] = interaction
    world.interactions_by_token[interaction.token] = interaction
    discord_.gateway.dispatch("INTERACTION_CREATE",
                              interaction_payload(interaction, world, command, options, resolved or {}))
    discord_.rest.track_interaction(interaction)
    return InteractionHandle(discord_, interaction)


async def answer_of(handle: InteractionHandle) -> str:
    """The bot's final visible answer to an interaction, checked to be ephemeral."""
    if handle.response_type == 5 or not handle.answered:
        await handle.wait_response(timeout=TIMEOUT)
    # A deferred answer arrives as a follow-up (or an edit of the placeholder).
    text = await handle.wait_text(timeout=TIMEOUT)
    message = handle.followups[-1] if handle.followups else handle.original
    assert message is not None and message.flags & EPHEMERAL, f"not ephemeral: {text!r}"
    assert not handle.late, "answered after Discord's 3-second window"
    return text


def _sine_pcm_48k_stereo(seconds: float, freq: float = 220.0) -> bytes:
    n = int(48000 * seconds)
    out = bytearray()
    for i in range(n):
        v = int(9000 * math.sin(2 * math.pi * freq * i / 48000))
        out += struct.pack("<hh", v, v)
    return bytes(out)


def _seed(discord_: LocalDiscord, *, bot_permissions: int = Permissions.ADMINISTRATOR,
          everyone: int | None = None) -> Harness:
    guild = discord_.add_guild("Loopback", bot_permissions=bot_permissions)
    if everyone is not None:
        guild.guild.roles[guild.id].permissions = everyone
    text = guild.add_text_channel("general")
    voice = guild.add_voice_channel("Lounge")
    other = guild.add_voice_channel("Quiet Room")
    alice = guild.add_member("Alice")
    boss = guild.add_member("Boss", roles=[guild.add_role("mods", MANAGE_GUILD)])
    return Harness(discord_, guild, text, voice, other, alice, boss)


@contextlib.asynccontextmanager
async def running_bot(h: Harness, monkeypatch: pytest.MonkeyPatch,
                      env: dict[str, str] | None = None,
                      extensions: tuple[str, ...] = ("cogs.voice", "cogs.privacy")) -> AsyncIterator[Harness]:
    from bot.client import VoiceBot
    from bot.services import build_services
    from bot.voice.manager import VoiceManager

    d = h.discord
    monkeypatch.setattr(discord.http.Route, "BASE", d.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(d.gateway_url + "/"))
    settings = load_settings({
        "DISCORD_TOKEN": d.token, "DISCORD_API_BASE": d.api_base, "DISCORD_CA_FILE": str(d.ca_file),
        "DISCORD_DEV_GUILD_ID": str(h.guild.id), "STT_ENGINE": "none", "AGENT_ENGINE": "eliza",
        "VOICE_IDLE_LEAVE_SECONDS": "0", **(env or {}),
    }, env_file=None)
    db = Database.in_memory()
    services = await build_services(settings, db=db)

    def out_factory(vc: discord.VoiceClient) -> RecordingOut:
        out = RecordingOut(vc)
        h.outs.append(out)
        return out

    def pipeline_factory(feed: Any, sample_rate: int) -> RecordingPipeline:
        pipeline = RecordingPipeline(feed, sample_rate=sample_rate)
        h.pipelines.append(pipeline)
        return pipeline

    manager = VoiceManager(settings=settings, agent=services.agent, memory=services.memory,
                           guild_settings=services.guilds, optouts=services.optouts, languages=services.languages,
                           stt=None, tts=FakeTTS(), local_tts=None, pipeline_factory=pipeline_factory,
                           out_factory=out_factory, connect_timeout=TIMEOUT)
    services.voice = manager
    bot = VoiceBot(services, extensions=extensions)
    h.bot, h.manager = bot, manager
    runner: asyncio.Task[None] | None = None
    try:
        await bot.login(d.token)
        assert not bot.failed_extensions, bot.failed_extensions
        runner = asyncio.get_running_loop().create_task(bot.connect(reconnect=True), name="test-voicebot")
        waiter = asyncio.get_running_loop().create_task(bot.wait_until_ready(), name="test-voicebot-ready")
        done, _ = await asyncio.wait({waiter, runner}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if runner in done:
                runner.result()
            raise TimeoutError("the bot never became ready")
        yield h
    finally:
        await manager.aclose()
        await bot.close()
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
    leftovers = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(("voice-", "stt-", "respond-"))
                 and not t.done()]
    assert leftovers == [], f"orphaned tasks: {leftovers}"


@pytest.fixture
async def discord_() -> AsyncIterator[LocalDiscord]:
    async with LocalDiscord(token="loopback.voicebot.0123456789abcdef") as server:
        yield server


# ------------------------------------------------------------------------------------------------


async def test_join_status_say_and_leave(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        await h.alice.join_voice(h.voice)
        answer = await h.command(h.alice, "join")
        assert "I'm in" in answer and "Lounge" in answer or str(h.voice.id) in answer
        await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        notice = await discord_.wait_bot_message(h.voice, contains="/optout", timeout=TIMEOUT)
        assert "listening" in notice.content and "/forget" in notice.content
        assert h.voice.channel.status is not None and "listening" in h.voice.channel.status
        gv = h.manager.connection(h.guild.id)
        assert gv is not None and gv.channel.id == h.voice.id

        status = await h.command(h.alice, "status")
        assert "Lounge" in status and "DAVE" in status and "Packets:" in status and "Last turn" in status
        assert "Right now:** auto: one person here" in status  # which rule the room puts in force

        assert await h.command(h.alice, "say", {"text": "Hello there, everyone."}) == "Said it."
        assert h.outs[-1].played == ["Hello there, everyone."]

        assert "already" in await h.command(h.alice, "join")

        assert "Left" in await h.command(h.alice, "leave")
        assert h.manager.connection(h.guild.id) is None
        assert h.outs[-1].closed
        assert h.voice.channel.status is None  # the status came down with the bot
        assert "not in a voice channel" in await h.command(h.alice, "status")
    assert discord_.problems == []


async def test_join_moves_to_another_channel(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        await h.alice.join_voice(h.voice)
        assert "I'm in" in await h.command(h.alice, "join")
        assert "Moved" in await h.command(h.alice, "join", {"channel": h.other_voice.id})
        gv = h.manager.connection(h.guild.id)
        assert gv is not None and gv.channel.id == h.other_voice.id
        assert gv.session.room == f"discord:{h.guild.id}:{h.other_voice.id}"
        await discord_.wait_bot_message(h.other_voice, contains="/optout", timeout=TIMEOUT)
        assert "Left" in await h.command(h.alice, "leave")


async def test_join_when_caller_not_in_voice(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        answer = await h.command(h.alice, "join")
        assert "not in a voice channel" in answer
        assert h.manager.connection(h.guild.id) is None


async def test_join_without_connect_permission(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    no_connect = Permissions.DEFAULT_EVERYONE & ~Permissions.CONNECT
    h = _seed(discord_, bot_permissions=no_connect, everyone=no_connect)
    async with running_bot(h, monkeypatch):
        await h.alice.join_voice(h.voice)
        answer = await h.command(h.alice, "join")
        assert "Connect" in answer and "permission" in answer
        assert h.manager.connection(h.guild.id) is None
        assert discord_.bot_voice_connection(h.guild) is None


async def test_join_without_speak_permission(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    no_speak = Permissions.DEFAULT_EVERYONE & ~Permissions.SPEAK
    h = _seed(discord_, bot_permissions=no_speak, everyone=no_speak)
    async with running_bot(h, monkeypatch):
        await h.alice.join_voice(h.voice)
        assert "Speak" in await h.command(h.alice, "join")
        assert h.manager.connection(h.guild.id) is None


async def test_join_full_channel(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = Permissions.DEFAULT_EVERYONE
    h = _seed(discord_, bot_permissions=plain)
    h.voice.channel.user_limit = 1
    async with running_bot(h, monkeypatch):
        await h.alice.join_voice(h.voice)
        assert "full" in await h.command(h.alice, "join")


async def test_leave_when_not_in_voice(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        assert "not in a voice channel" in await h.command(h.alice, "leave")
        assert "not in a voice channel" in await h.command(h.alice, "say", {"text": "hi"})


async def test_commands_in_dms_are_refused(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        world = discord_.world
        dm = Channel(world.snowflakes.next(), None, ChannelType.DM, "", parent_id=h.alice.id)
        world.channels[dm.id] = dm
        for name in ("join", "optout", "mode"):
            options = [{"name": "mode", "type": 3, "value": "always"}] if name == "mode" else []
            answer = await answer_of(raw_invoke(discord_, h.alice.id, None, dm.id, name, options))
            assert "only in a server" in answer
        assert h.manager.optouts.user_ids == frozenset()


async def test_mode_needs_manage_server(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        assert "Manage Server" in await h.command(h.alice, "mode", {"mode": "always"})
        assert h.manager.guild_settings.get(h.guild.id).mode == "auto"
        assert "Mode set to **push-to-talk**" in await h.command(h.boss, "mode", {"mode": "push-to-talk"})
        assert h.manager.guild_settings.get(h.guild.id).mode == "push-to-talk"
        assert "only taking notes" in await h.command(h.boss, "mode", {"mode": "scribe"})
        assert "Mode set to **auto**" in await h.command(h.boss, "mode", {"mode": "auto"})
        assert "Mode set to **push-to-talk**" in await h.command(h.boss, "mode", {"mode": "push-to-talk"})
        # /voice set is admin-only too; /voice list is for everyone
        assert "Manage Server" in await h.command(h.alice, "voice set", {"voice": "Rachel"})
        assert "Rachel" in await h.command(h.alice, "voice list")
        assert "Rachel" in await h.command(h.boss, "voice set", {"voice": "rachel"})
        assert h.manager.guild_settings.get(h.guild.id).voice_id == "voice-rachel"
        assert "don't know a voice" in await h.command(h.boss, "voice set", {"voice": "Nobody"})
        assert "transcript in chat: **on**" in await h.command(h.boss, "voice settings", {"transcript": True})
        # push-to-talk: the consent notice carries the button, /listen opens a window
        await h.alice.join_voice(h.voice)
        await h.command(h.alice, "join")
        notice = await discord_.wait_bot_message(h.voice, contains="/optout", timeout=TIMEOUT)
        assert "push-to-talk" not in notice.content or "Talk to" in notice.content
        assert "listening to you" in await h.command(h.alice, "listen")
        policy = h.manager.session(h.guild.id).policy
        assert policy.wants(h.alice.id, "anything", humans_present=2)
        await h.command(h.alice, "leave")


async def test_join_racing_leave_ends_consistent(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        await h.alice.join_voice(h.voice)
        join = await h.alice.invoke_command("join", channel=h.text)
        leave = await h.alice.invoke_command("leave", channel=h.text)
        answers = await asyncio.gather(answer_of(join), answer_of(leave))
        connected = h.manager.connection(h.guild.id) is not None
        if connected:
            assert "I'm in" in answers[0]
            await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        else:
            assert "Left" in answers[1] or "not in a voice channel" in answers[1]
        # Whatever the order, a /leave now always ends disconnected with nothing left running.
        await h.command(h.alice, "leave")
        assert h.manager.connection(h.guild.id) is None
        assert h.bot.get_guild(h.guild.id).voice_client is None


async def test_optout_drops_speech_at_receive(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        participant = await h.alice.join_voice(h.voice)
        await h.command(h.alice, "join")
        await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        assert "ignore your voice" in await h.command(h.alice, "optout")
        assert "already" in await h.command(h.alice, "optout")
        gv = h.manager.connection(h.guild.id)
        refused = asyncio.Event()
        loop = asyncio.get_running_loop()
        real_filter: Callable[[int], bool] = gv.vc.accept_user

        def spy(user_id: int) -> bool:  # runs on discord.py's socket thread
            accepted = real_filter(user_id)
            if not accepted and user_id == h.alice.id:
                loop.call_soon_threadsafe(refused.set)
            return accepted

        assert threading.current_thread() is threading.main_thread()
        gv.vc.accept_user = spy
        await participant.wait_dave_ready(timeout=TIMEOUT)
        await participant.speak_pcm(_sine_pcm_48k_stereo(0.4))
        await asyncio.wait_for(refused.wait(), TIMEOUT)
        assert gv.vc.stats.dropped.get(OPTED_OUT, 0) > 0
        assert h.alice.id not in h.pipelines[-1].users
        assert h.alice.id not in gv.session.participants
        # /forget erases what was remembered of them
        h.manager.memory.append(Turn(room=f"discord:{h.guild.id}:{h.text.id}", speaker_id=f"discord:{h.alice.id}",
                                     speaker_name="Alice", role="user", text="remember me", modality=Modality.TEXT,
                                     created_at=time.time()))
        assert "erased 1 message (" in await h.command(h.alice, "forget")
        assert "nothing stored" in await h.command(h.alice, "forget")
        # Forgetting does not undo the opt-out (kept as a keyed subject, not the raw id).
        assert "already" in await h.command(h.alice, "optout")
        assert str(h.alice.id) not in " ".join(str(v) for r in await h.manager.memory.db.query(
            "SELECT * FROM opt_outs") for v in tuple(r))
        assert "Welcome back" in await h.command(h.alice, "optin")
        await h.command(h.alice, "leave")


async def test_kicked_by_a_moderator_cleans_up(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        await h.alice.join_voice(h.voice)
        await h.command(h.alice, "join")
        await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        async with h.manager.left:
            await discord_.disconnect_bot_from_voice(h.guild)
            await asyncio.wait_for(h.manager.left.wait_for(lambda: h.manager.connection(h.guild.id) is None), TIMEOUT)
        assert h.outs[-1].closed
        assert "not in a voice channel" in await h.command(h.alice, "leave")


async def test_leaves_when_alone(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch):
        await h.command(h.boss, "voice settings", {"idle_leave_seconds": 1})
        await h.alice.join_voice(h.voice)
        await h.command(h.alice, "join")
        await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
        async with h.manager.left:
            await h.alice.leave_voice()
            await asyncio.wait_for(h.manager.left.wait_for(lambda: h.manager.connection(h.guild.id) is None), TIMEOUT)
        await discord_.wait_bot_message(h.voice, contains="Nobody's here", timeout=TIMEOUT)


async def test_joining_policy_allow_list_and_auto_join(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    musicbot = h.guild.add_member("Tunes", bot=True)
    async with running_bot(h, monkeypatch):
        # Only admins choose, and the answer names the list.
        assert "Manage Server" in await h.command(h.alice, "voice allow", {"channel": h.voice.id, "on": True})
        assert f"brought into: <#{h.voice.id}>." in await h.command(h.boss, "voice allow",
                                                                     {"channel": h.voice.id, "on": True})
        assert h.manager.guild_settings.channels(h.guild.id, "allowed") == {h.voice.id}
        await h.alice.join_voice(h.other_voice)
        refused = await h.command(h.alice, "join")
        assert "chose where I may join" in refused and f"<#{h.voice.id}>" in refused
        assert h.manager.connection(h.guild.id) is None

        # Auto-join: a bot arriving does not bring it; the first person does (allowed even off the allow-list).
        await h.command(h.boss, "voice autojoin", {"channel": h.other_voice.id, "on": True})
        await h.alice.leave_voice()
        await musicbot.join_voice(h.other_voice)
        await h.command(h.alice, "status")  # handled after the voice state update above
        assert h.manager.connection(h.guild.id) is None
        await h.alice.join_voice(h.other_voice)
        notice = await discord_.wait_bot_message(h.other_voice, contains="/optout", timeout=TIMEOUT)
        assert "listening" in notice.content  # the same notice as after /join
        gv = h.manager.connection(h.guild.id)
        assert gv is not None and gv.channel.id == h.other_voice.id
        settings = await h.command(h.boss, "voice settings")
        assert f"joins by itself: **<#{h.other_voice.id}>**" in settings
        assert "Left" in await h.command(h.alice, "leave")
        assert "by myself when someone arrives: none" in await h.command(
            h.boss, "voice autojoin", {"channel": h.other_voice.id, "on": False})
        assert "joins by itself: **nowhere**" in await h.command(h.boss, "voice settings")
    assert discord_.problems == []
