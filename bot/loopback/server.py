"""A local Discord on 127.0.0.1 that an unchanged discord.py bot connects to.

One HTTPS/WSS port serves REST (``/api/v10``), the main gateway (``/gateway``) and the voice
gateway (``/`` and ``/{region}/``); one UDP port carries voice media. Usage::

    async with LocalDiscord() as discord_:
        guild = discord_.add_guild("Loopback")
        alice = guild.add_member("Alice")
        text = guild.add_text_channel("general")
        voice = guild.add_voice_channel("General")
        # the bot: Route.BASE = discord_.api_base, DEFAULT_GATEWAY = discord_.gateway_url,
        # connector trusting discord_.ca_file, token discord_.token
        await discord_.wait_until_identified()
        participant = await alice.join_voice(voice)
        interaction = await alice.invoke_command("join")
        await interaction.wait_response()
        await participant.speak_wav("hello.wav")
        heard = await participant.wait_heard()
        assert not discord_.problems

discord.py's plain ``Client`` connects to ``DiscordWebSocket.DEFAULT_GATEWAY`` (it only asks
``GET /gateway/bot`` when sharded), so the bot must set that class attribute to
:attr:`LocalDiscord.gateway_url` (or to the URL from ``GET /gateway/bot``) as well as
``discord.http.Route.BASE``; :meth:`LocalDiscord.configure_discord_py` does both.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import shutil
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.loopback.gateway import GatewaySession, MainGateway, Sharding, guild_shard
from bot.loopback.participant import Participant, ParticipantOptions
from bot.loopback.ratelimit import RateLimiter
from bot.loopback.rest import ATTACHMENT_LIMIT, RestAPI, new_interaction_token
from bot.loopback.state import (
    Channel,
    ChannelType,
    Event,
    Guild,
    Interaction,
    Member,
    Message,
    Permissions,
    Role,
    User,
    VoiceState,
    World,
    channel_payload,
    command_options,
    guild_create_payload,
    interaction_payload,
    member_payload,
    message_payload,
    voice_state_payload,
)
from bot.loopback.tls import TLSMaterial, make_tls_material
from bot.loopback.voice import VoiceConnection, VoiceService

__all__ = ["LocalDiscord", "GuildHandle", "ChannelHandle", "MemberHandle", "InteractionHandle"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelHandle:
    """A channel in the loopback Discord."""

    discord: LocalDiscord
    channel: Channel

    @property
    def id(self) -> int:
        return self.channel.id

    @property
    def name(self) -> str:
        return self.channel.name

    @property
    def messages(self) -> list[Message]:
        """Messages in this channel, oldest first."""
        return sorted(self.discord.world.channel_messages(self.channel.id), key=lambda m: m.id)

    @property
    def bot_messages(self) -> list[Message]:
        return [m for m in self.messages if m.author.id == self.discord.world.bot.id]


class InteractionHandle:
    """An interaction a member started; follow what the bot answered."""

    def __init__(self, discord_: LocalDiscord, interaction: Interaction) -> None:
        self.discord = discord_
        self.interaction = interaction

    @property
    def id(self) -> int:
        return self.interaction.id

    @property
    def answered(self) -> bool:
        return self.interaction.answered

    @property
    def late(self) -> bool:
        return self.interaction.late

    @property
    def response_type(self) -> int | None:
        return self.interaction.response_type

    @property
    def response_latency(self) -> float | None:
        """Seconds from INTERACTION_CREATE to the callback, or None if unanswered."""
        if self.interaction.responded_at is None:
            return None
        return self.interaction.responded_at - self.interaction.created_at

    @property
    def original(self) -> Message | None:
        """The response message (type 4, or the deferred placeholder once edited)."""
        mid = self.interaction.original_message_id
        return self.discord.world.messages.get(mid) if mid is not None else None

    @property
    def followups(self) -> list[Message]:
        return [self.discord.world.messages[m] for m in self.interaction.followup_ids]

    @property
    def texts(self) -> list[str]:
        """Everything the bot said for this interaction: the original response, then follow-ups."""
        out = []
        if self.original is not None and self.original.content:
            out.append(self.original.content)
        out.extend(m.content for m in self.followups if m.content)
        return out

    @property
    def choices(self) -> list[dict[str, Any]] | None:
        """The autocomplete choices the bot offered (a type-8 answer), or None before it answered."""
        data = self.interaction.response_data
        if self.interaction.response_type != 8 or data is None:
            return None
        return list(data.get("choices") or [])

    async def wait_choices(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait for the bot's autocomplete answer; its choices (checked against Discord's limits)."""
        await self.wait_response(timeout)
        choices = self.choices
        if choices is None:
            raise AssertionError(f"the bot answered autocomplete {self.id} with type {self.response_type}, not 8")
        return choices

    async def wait_response(self, timeout: float = 10.0) -> Event:
        return await self.discord.events.wait_for(
            "interaction_response", lambda e: e.data["interaction_id"] == self.id, timeout=timeout)

    async def wait_text(self, timeout: float = 10.0) -> str:
        """Wait until the bot has said something visible for this interaction; return it."""
        kinds = ("interaction_response", "followup", "followup_edit")
        if not self.texts:
            await self.discord.events.wait_for(
                kinds, lambda e: e.data.get("interaction_id") == self.id and bool(e.data.get("content")),
                timeout=timeout)
        return self.texts[-1]


class MemberHandle:
    """A (human) member of a guild: sends messages, invokes commands, joins voice."""

    def __init__(self, discord_: LocalDiscord, guild: GuildHandle, member: Member) -> None:
        self.discord = discord_
        self.guild = guild
        self.member = member
        self.participant: Participant | None = None

    @property
    def id(self) -> int:
        return self.member.user.id

    @property
    def name(self) -> str:
        return self.member.display_name

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    async def send_message(self, channel: ChannelHandle, content: str, *, reply_to: Message | None = None) -> Message:
        """Post a message as this member (MESSAGE_CREATE to the bot); ``<@id>`` mentions resolve."""
        return self.discord.post_message(self, channel, content, reply_to=reply_to)

    async def send_dm(self, content: str) -> Message:
        """Write to the bot in a direct message (MESSAGE_CREATE without a guild: shard 0 only)."""
        return self.discord.post_dm(self, content)

    def dm_channel(self) -> ChannelHandle:
        """This member's DM channel with the bot."""
        return ChannelHandle(self.discord, self.discord.world.dm_channel(self.id))

    async def invoke_command(self, name: str, options: dict[str, Any] | None = None, *,
                             channel: ChannelHandle | None = None) -> InteractionHandle:
        """Use a slash command the bot registered, as this member (INTERACTION_CREATE)."""
        return self.discord.invoke_command(self, name, options, channel=channel)

    async def type_option(self, name: str, options: dict[str, Any], *, focused: str,
                          channel: ChannelHandle | None = None) -> InteractionHandle:
        """Type into option ``focused`` of ``/name``: the autocomplete interaction Discord sends the bot."""
        return self.discord.autocomplete(self, name, options, focused=focused, channel=channel)

    async def join_voice(self, channel: ChannelHandle, options: ParticipantOptions | None = None) -> Participant:
        """Join a voice channel as a scripted participant (DAVE member, can speak and listen)."""
        return await self.discord.join_voice(self, channel, options)

    async def leave_voice(self) -> None:
        await self.discord.leave_voice(self)

    async def move_voice(self, channel: ChannelHandle) -> Participant:
        await self.discord.leave_voice(self, dispatch=False)
        return await self.discord.join_voice(self, channel, self.participant.options if self.participant else None)


class GuildHandle:
    """A guild in the loopback Discord; add channels, members and roles to it."""

    def __init__(self, discord_: LocalDiscord, guild: Guild) -> None:
        self.discord = discord_
        self.guild = guild
        self.members: dict[int, MemberHandle] = {}

    @property
    def id(self) -> int:
        return self.guild.id

    def _add_channel(self, name: str, type_: int, overwrites: list[dict[str, Any]] | None = None) -> ChannelHandle:
        world = self.discord.world
        channel = Channel(world.snowflakes.next(), self.guild.id, type_, name, position=len(self.guild.channels),
                          overwrites=list(overwrites or []))
        self.guild.channels[channel.id] = channel
        world.channels[channel.id] = channel
        self.discord._announce("CHANNEL_CREATE", channel_payload(channel))
        return ChannelHandle(self.discord, channel)

    def add_text_channel(self, name: str = "general", *, overwrites: list[dict[str, Any]] | None = None) -> ChannelHandle:
        """A text channel; ``overwrites`` are Discord permission overwrites (e.g. hide it from @everyone)."""
        return self._add_channel(name, ChannelType.TEXT, overwrites)

    def add_voice_channel(self, name: str = "General") -> ChannelHandle:
        return self._add_channel(name, ChannelType.VOICE)

    def add_stage_channel(self, name: str = "Stage") -> ChannelHandle:
        return self._add_channel(name, ChannelType.STAGE)

    def add_role(self, name: str, permissions: int) -> Role:
        world = self.discord.world
        role = Role(world.snowflakes.next(), name, permissions, position=len(self.guild.roles))
        self.guild.roles[role.id] = role
        return role

    def add_member(self, name: str, *, roles: list[Role] | None = None, bot: bool = False) -> MemberHandle:
        world = self.discord.world
        user = User(world.snowflakes.next(), name.lower().replace(" ", "_"), bot=bot, global_name=name)
        world.users[user.id] = user
        member = Member(user, self.guild.id, role_ids=[r.id for r in roles or []])
        self.guild.members[user.id] = member
        handle = MemberHandle(self.discord, self, member)
        self.members[user.id] = handle
        self.discord._announce("GUILD_MEMBER_ADD", {**member_payload(member), "guild_id": str(self.guild.id)})
        return handle

    def channel(self, name: str) -> ChannelHandle:
        for channel in self.guild.channels.values():
            if channel.name == name:
                return ChannelHandle(self.discord, channel)
        raise KeyError(name)


class LocalDiscord:
    """The loopback Discord. Start it (``async with``), seed it, point the bot at it."""

    def __init__(
        self,
        *,
        token: str | None = None,
        bot_name: str = "voicebot",
        interaction_deadline: float = 3.0,
        voice_event_delay: float = 0.005,
        dave: bool = True,
        directory: Path | None = None,
        rate_limits: RateLimiter | None = None,
        sharding: Sharding | None = None,
    ) -> None:
        self.world = World(token=token or f"loopback.{secrets.token_urlsafe(24)}", bot_name=bot_name)
        self._directory = directory
        self._own_directory: Path | None = None
        self.tls: TLSMaterial | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.gateway = MainGateway(self.world, resume_url=lambda: self.gateway_url,
                                   on_voice_state=self._on_voice_state, sharding=sharding)
        self.sharding = self.gateway.sharding  # settable while running (recommended shards, limits)
        self.rest = RestAPI(self.world, gateway_url=lambda: self.gateway_url, dispatch=self.gateway.dispatch,
                            interaction_deadline=interaction_deadline, rate_limits=rate_limits,
                            recommended_shards=self.gateway.recommended_shards,
                            session_start_limit=self.gateway.session_start_limit)
        self.voice = VoiceService(self.world, endpoint_host=lambda: f"127.0.0.1:{self.port}",
                                  dispatch_later=self.gateway.dispatch_later, event_delay=voice_event_delay,
                                  dave_version=1 if dave else 0)
        self.guilds: dict[int, GuildHandle] = {}

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Generate TLS material, bind the HTTPS/WSS port and the UDP port on 127.0.0.1."""
        directory = self._directory
        if directory is None:
            directory = self._own_directory = Path(tempfile.mkdtemp(prefix="loopback-discord-"))
        self.tls = await asyncio.get_running_loop().run_in_executor(None, make_tls_material, directory)
        # Room for a full-size upload, so an oversized one gets Discord's own error from the REST
        # handler rather than aiohttp's.
        app = web.Application(client_max_size=ATTACHMENT_LIMIT + (1 << 20))
        self.rest.register(app)
        self.gateway.register(app)
        self.voice.register(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls.server_context())
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await self.voice.start()
        log.info("loopback Discord on https://127.0.0.1:%s (UDP %s)", self.port, self.voice.udp_port)

    async def stop(self) -> None:
        self.rest.cancel_deadlines()
        await self.voice.stop()
        await self.gateway.shutdown()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_directory is not None:
            shutil.rmtree(self._own_directory, ignore_errors=True)
            self._own_directory = None

    async def __aenter__(self) -> LocalDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- what the bot needs -----------------------------------------------------------------------

    @property
    def token(self) -> str:
        """The bot token (a new one after an IDENTIFY past the session start limit, as Discord resets it)."""
        return self.world.token

    @property
    def api_base(self) -> str:
        """For ``DISCORD_API_BASE`` / ``discord.http.Route.BASE``."""
        return f"https://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        """The main gateway (also what ``GET /gateway/bot`` returns)."""
        return f"wss://127.0.0.1:{self.port}/gateway"

    @property
    def ca_file(self) -> Path:
        """For ``DISCORD_CA_FILE``: the CA that signed the server certificate."""
        assert self.tls is not None, "start() first"
        return self.tls.ca_file

    @property
    def udp_port(self) -> int:
        return self.voice.udp_port

    @property
    def application_id(self) -> int:
        return self.world.application_id

    @property
    def bot_user_id(self) -> int:
        return self.world.bot.id

    @property
    def events(self):  # noqa: ANN201 - EventLog, re-exported for convenience
        return self.world.events

    @property
    def problems(self) -> list[str]:
        """What the bot did wrong, in Discord's terms (empty when all is well)."""
        return self.world.problems

    def ssl_context(self) -> ssl.SSLContext:
        assert self.tls is not None, "start() first"
        return self.tls.client_context()

    def connector(self) -> aiohttp.TCPConnector:
        """A connector for ``discord.Client(connector=...)`` that trusts this server."""
        return aiohttp.TCPConnector(ssl=self.ssl_context())

    def configure_discord_py(self) -> None:
        """Point discord.py (process-wide) at this server: REST base and default gateway."""
        import discord.gateway
        import discord.http
        import yarl

        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url + "/")

    # --- seeding ----------------------------------------------------------------------------------

    def add_guild(self, name: str = "Loopback", *, bot_permissions: int = Permissions.ADMINISTRATOR,
                  shard: tuple[int, int] | None = None) -> GuildHandle:
        """A guild the bot is in, with @everyone and a role for the bot carrying ``bot_permissions``.

        ``shard=(shard_id, shard_count)`` picks an id that shard owns.
        """
        world = self.world
        guild_id = world.snowflakes.next()
        if shard is not None:
            guild_id = world.snowflakes.on_shard(guild_id, *shard)
        guild = Guild(guild_id, name, owner_id=world.owner.id)
        guild.roles[guild.id] = Role(guild.id, "@everyone", Permissions.DEFAULT_EVERYONE)
        bot_role = Role(world.snowflakes.next(), world.bot.username, bot_permissions, position=1)
        guild.roles[bot_role.id] = bot_role
        guild.members[world.bot.id] = Member(world.bot, guild.id, role_ids=[bot_role.id])
        guild.members[world.owner.id] = Member(world.owner, guild.id)
        world.guilds[guild.id] = guild
        handle = GuildHandle(self, guild)
        self.guilds[guild.id] = handle
        self._announce("GUILD_CREATE", guild_create_payload(guild))
        return handle

    def _announce(self, event: str, data: dict[str, Any]) -> None:
        # Seeding before a shard identified is part of its READY/GUILD_CREATE; afterwards an event
        # (dispatch drops what no session's shard owns).
        self.gateway.dispatch(event, data)

    # --- people doing things ----------------------------------------------------------------------

    def post_message(self, author: MemberHandle, channel: ChannelHandle, content: str, *,
                     reply_to: Message | None = None) -> Message:
        world = self.world
        mentions = [int(m) for m in re.findall(r"<@!?(\d+)>", content) if int(m) in world.users]
        message = Message(world.snowflakes.next(), channel.id, channel.channel.guild_id, author.member.user,
                          content, time.time(), mentions=mentions,
                          reference_id=reply_to.id if reply_to is not None else None)
        world.messages[message.id] = message
        world.events.append("member_message", channel_id=channel.id, message_id=message.id, author_id=author.id)
        self.gateway.dispatch("MESSAGE_CREATE", message_payload(message, world))
        return message

    def post_dm(self, author: MemberHandle, content: str) -> Message:
        world = self.world
        channel = world.dm_channel(author.id)
        message = Message(world.snowflakes.next(), channel.id, None, author.member.user, content, time.time())
        world.messages[message.id] = message
        world.events.append("member_message", channel_id=channel.id, message_id=message.id, author_id=author.id)
        self.gateway.dispatch("MESSAGE_CREATE", message_payload(message, world))
        return message

    def invoke_command(self, member: MemberHandle, name: str, options: dict[str, Any] | None = None, *,
                       channel: ChannelHandle | None = None) -> InteractionHandle:
        """Build and deliver the real INTERACTION_CREATE for ``/name`` used by ``member``.

        ``name`` may name a subcommand as Discord shows it ("memory forget"); ``options`` are its own.
        """
        return self._interaction(member, name, options or {}, channel=channel, focused=None)

    def autocomplete(self, member: MemberHandle, name: str, options: dict[str, Any] | None = None, *,
                     focused: str, channel: ChannelHandle | None = None) -> InteractionHandle:
        """``member`` is typing option ``focused`` of ``/name`` (APPLICATION_COMMAND_AUTOCOMPLETE, type 4).

        ``options[focused]`` is what they have typed so far (sent as a string, as Discord does); the
        other options are what they filled in before. The bot answers with a type-8 callback whose
        choices :attr:`InteractionHandle.choices` holds once checked against Discord's limits.
        """
        return self._interaction(member, name, options or {}, channel=channel, focused=focused)

    def _interaction(self, member: MemberHandle, name: str, options: dict[str, Any], *,
                     channel: ChannelHandle | None, focused: str | None) -> InteractionHandle:
        world = self.world
        guild = member.guild.guild
        top, *path = name.split()
        command = world.find_command(top, guild.id)
        if command is None:
            raise LookupError(f"/{top} is not registered for guild {guild.id}: the bot has not synced it "
                              f"(registered: {sorted(world.global_commands) + sorted(world.guild_commands.get(guild.id, {}))})")
        if channel is None:
            channel = next((ChannelHandle(self, c) for c in guild.channels.values() if c.type == ChannelType.TEXT), None)
            if channel is None:
                raise LookupError("the guild has no text channel to invoke the command in")
        opts, resolved, focused_type = command_options(command, path, options, world, guild, focused=focused)
        loop = asyncio.get_running_loop()
        # Interaction types: 2 application command, 4 application command autocomplete.
        interaction = Interaction(id=world.snowflakes.next(), token=new_interaction_token(),
                                  type=2 if focused is None else 4, guild_id=guild.id, channel_id=channel.id,
                                  user_id=member.id, name=name, created_at=loop.time(), focused_type=focused_type)
        world.interactions[interaction.id] = interaction
        world.interactions_by_token[interaction.token] = interaction
        payload = interaction_payload(interaction, world, command, opts, resolved)
        world.events.append("interaction_create", interaction_id=interaction.id, name=name, user_id=member.id,
                            type=interaction.type)
        self.gateway.dispatch("INTERACTION_CREATE", payload)
        self.rest.track_interaction(interaction)
        return InteractionHandle(self, interaction)

    async def join_voice(self, member: MemberHandle, channel: ChannelHandle,
                         options: ParticipantOptions | None = None) -> Participant:
        if channel.channel.type not in (ChannelType.VOICE, ChannelType.STAGE):
            raise ValueError(f"{channel.name} is not a voice channel")
        if member.participant is not None:
            await self.leave_voice(member, dispatch=False)
        guild = member.guild.guild
        state = VoiceState(member.id, guild.id, channel.id, secrets.token_hex(16))
        guild.voice_states[member.id] = state
        participant = Participant(user_id=member.id, name=member.name, ssrc=self.voice.new_ssrc(),
                                  channel_id=channel.id, options=options,
                                  dave_version=self.voice.dave_version)
        member.participant = participant
        call = self.voice.call(guild.id, channel.id)
        participant.call = call
        self.world.events.append("member_voice_join", user_id=member.id, channel_id=channel.id)
        self.gateway.dispatch("VOICE_STATE_UPDATE", voice_state_payload(state, member.member))
        await call.add_local(participant)
        return participant

    async def leave_voice(self, member: MemberHandle, *, dispatch: bool = True) -> None:
        participant = member.participant
        if participant is None:
            return
        guild = member.guild.guild
        call = participant.call
        participant.detach()
        member.participant = None
        if call is not None:
            await call.remove(member.id)
        state = guild.voice_states.pop(member.id, None)
        self.world.events.append("member_voice_leave", user_id=member.id)
        if dispatch and state is not None:
            state.channel_id = None
            self.gateway.dispatch("VOICE_STATE_UPDATE", voice_state_payload(state, member.member))

    # --- the bot's side, for tests ----------------------------------------------------------------

    async def wait_until_identified(self, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            await self.gateway.identified.wait()

    def shard_of(self, guild: GuildHandle, shard_count: int) -> int:
        """The shard that receives ``guild``'s events when the bot runs ``shard_count`` shards."""
        return guild_shard(guild.id, shard_count)

    def bot_voice_connection(self, guild: GuildHandle) -> VoiceConnection | None:
        grant = self.voice.bot_voice.get(guild.id)
        return grant.connection if grant is not None else None

    async def wait_bot_voice(self, guild: GuildHandle, *, timeout: float = 15.0) -> VoiceConnection:
        """Wait until the bot has a voice session (op 4 sent) in ``guild``; return its connection."""
        async def ready() -> VoiceConnection:
            async with self.voice.connection_changed:
                while True:
                    conn = self.bot_voice_connection(guild)
                    if conn is not None and conn.session_ready.is_set() and not conn.closed.is_set():
                        return conn
                    await self.voice.connection_changed.wait()

        async with asyncio.timeout(timeout):
            return await ready()

    async def wait_dave_transition(self, guild: GuildHandle | None = None, *, after: int = 0,
                                   timeout: float = 20.0) -> Event:
        """Wait for a completed DAVE transition with id > ``after``."""
        return await self.events.wait_for(
            "dave_transition", lambda e: e.data["transition_id"] > after, timeout=timeout)

    async def wait_bot_message(self, channel: ChannelHandle | None = None, *, timeout: float = 10.0,
                               contains: str | None = None) -> Message:
        """Wait for a message the bot posts (optionally in ``channel``, containing ``contains``)."""
        def match(event: Event) -> bool:
            return (channel is None or event.data["channel_id"] == channel.id) and (
                contains is None or contains in (event.data.get("content") or ""))

        event = await self.events.wait_for("message", match, timeout=timeout)
        return self.world.messages[event.data["message_id"]]

    async def close_bot_voice(self, guild: GuildHandle, code: int) -> None:
        """Close the bot's voice websocket with ``code`` (4006 session invalid, 4014 disconnected,
        4015 voice server crashed, ...)."""
        conn = self.bot_voice_connection(guild)
        if conn is None:
            raise LookupError("the bot has no voice connection in that guild")
        await conn.close(code)

    async def disconnect_bot_from_voice(self, guild: GuildHandle) -> None:
        """Kick the bot out of voice: VOICE_STATE_UPDATE with no channel, then close 4014."""
        world = self.world
        state = guild.guild.voice_states.get(world.bot.id)
        grant = self.voice.bot_voice.pop(guild.id, None)
        if state is not None:
            state.channel_id = None
            self.gateway.dispatch("VOICE_STATE_UPDATE", voice_state_payload(state, guild.guild.members.get(world.bot.id)))
        if grant is not None and grant.connection is not None:
            await grant.connection.close(4014)

    async def change_voice_server(self, guild: GuildHandle) -> str:
        """Send the bot a VOICE_SERVER_UPDATE with a new endpoint and token (a voice server change)."""
        return await self.voice.change_server(guild.id)

    async def drop_gateway(self, code: int = 4000, *, shard_id: int | None = None) -> None:
        """Close the bot's main gateway sockets (one shard's, when given); a resumable code makes
        discord.py RESUME."""
        await self.gateway.close_socket(code, shard_id=shard_id)

    async def _on_voice_state(self, session: GatewaySession, d: dict[str, Any]) -> None:
        await self.voice.on_gateway_voice_state(session.session_id, d)
