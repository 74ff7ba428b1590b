"""The loopback Discord's world: guilds, channels, members, roles, messages, commands, voice states.

Everything here is plain data plus pure functions that turn it into the JSON payloads Discord
sends (user, member, channel, guild create, message, voice state, interaction). The REST and
gateway modules share one :class:`World`; its :class:`EventLog` records what the bot did, and
``problems`` records what it did wrong, in Discord's terms.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ChannelType",
    "Permissions",
    "Snowflakes",
    "User",
    "Role",
    "Channel",
    "Member",
    "Guild",
    "Message",
    "VoiceState",
    "AppCommand",
    "Interaction",
    "Event",
    "EventLog",
    "World",
    "iso_timestamp",
    "user_payload",
    "member_payload",
    "role_payload",
    "channel_payload",
    "guild_create_payload",
    "message_payload",
    "voice_state_payload",
    "interaction_payload",
    "command_payload",
    "option_payloads",
    "command_options",
]

log = logging.getLogger(__name__)

# Discord's epoch (2015-01-01) in milliseconds: snowflakes carry a timestamp relative to it.
DISCORD_EPOCH_MS = 1420070400000


class ChannelType:
    """Discord channel type numbers (the subset the bot meets)."""

    TEXT = 0
    DM = 1
    VOICE = 2
    CATEGORY = 4
    STAGE = 13


class Permissions:
    """Permission bits the loopback checks or reports (Discord's bit positions)."""

    MANAGE_GUILD = 1 << 5
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    READ_MESSAGE_HISTORY = 1 << 16
    CONNECT = 1 << 20
    SPEAK = 1 << 21
    USE_VAD = 1 << 25
    ADMINISTRATOR = 1 << 3
    USE_APPLICATION_COMMANDS = 1 << 31
    DEFAULT_EVERYONE = VIEW_CHANNEL | SEND_MESSAGES | READ_MESSAGE_HISTORY | CONNECT | SPEAK | USE_VAD | USE_APPLICATION_COMMANDS


class Snowflakes:
    """Monotonic snowflake ids whose timestamps are the current time."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def next(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (next(self._counter) & 0x3FFFFF)

    @staticmethod
    def on_shard(snowflake: int, shard_id: int, shard_count: int) -> int:
        """``snowflake`` moved up to ``shard_count - 1`` ms later, so ``(id >> 22) % shard_count`` is
        ``shard_id``; the low 22 bits (which keep ids unique) stay."""
        ms = snowflake >> 22
        ms += (shard_id - ms) % shard_count
        return (ms << 22) | (snowflake & 0x3FFFFF)


def iso_timestamp(at: float | None = None) -> str:
    """An ISO-8601 UTC timestamp as Discord formats them."""
    moment = datetime.datetime.fromtimestamp(time.time() if at is None else at, datetime.timezone.utc)
    return moment.isoformat()


@dataclass
class User:
    id: int
    username: str
    bot: bool = False
    global_name: str | None = None
    locale: str = "en-US"  # the Discord client's language (interaction.locale)


@dataclass
class Role:
    id: int
    name: str
    permissions: int
    position: int = 0


@dataclass
class Channel:
    id: int
    guild_id: int | None
    type: int
    name: str
    position: int = 0
    parent_id: int | None = None
    bitrate: int = 64000
    user_limit: int = 0
    status: str | None = None  # voice channel status (PUT /channels/{id}/voice-status)
    # Discord's permission_overwrites: {"id", "type" (0 role, 1 member), "allow", "deny"} (bit strings).
    overwrites: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Member:
    user: User
    guild_id: int
    nick: str | None = None
    role_ids: list[int] = field(default_factory=list)
    joined_at: str = field(default_factory=iso_timestamp)

    @property
    def display_name(self) -> str:
        return self.nick or self.user.global_name or self.user.username


@dataclass
class VoiceState:
    user_id: int
    guild_id: int
    channel_id: int | None
    session_id: str
    self_mute: bool = False
    self_deaf: bool = False


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, Role] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)
    voice_states: dict[int, VoiceState] = field(default_factory=dict)
    preferred_locale: str = "en-US"  # the server's language (Community settings)

    def permissions_of(self, user_id: int) -> int:
        """Base permissions: @everyone (the role sharing the guild id) OR the member's roles."""
        member = self.members.get(user_id)
        perms = self.roles[self.id].permissions if self.id in self.roles else 0
        if member is not None:
            for role_id in member.role_ids:
                role = self.roles.get(role_id)
                if role is not None:
                    perms |= role.permissions
        if user_id == self.owner_id or perms & Permissions.ADMINISTRATOR:
            return (1 << 53) - 1
        return perms


@dataclass
class Message:
    id: int
    channel_id: int
    guild_id: int | None
    author: User
    content: str
    created_at: float
    mentions: list[int] = field(default_factory=list)
    reference_id: int | None = None
    embeds: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    interaction_id: int | None = None  # set for interaction responses and follow-ups
    webhook_id: int | None = None
    edited_at: float | None = None
    deleted: bool = False
    attachments: list[str] = field(default_factory=list)  # file names
    attachment_data: list[bytes] = field(default_factory=list)  # their bytes, in the same order


@dataclass
class AppCommand:
    id: int
    application_id: int
    name: str
    type: int
    description: str
    options: list[dict[str, Any]]
    guild_id: int | None
    raw: dict[str, Any]
    version: int = 1


@dataclass
class Interaction:
    """One interaction delivered to the bot and what became of it."""

    id: int
    token: str
    type: int
    guild_id: int | None
    channel_id: int
    user_id: int
    name: str
    created_at: float  # loop time when INTERACTION_CREATE was sent
    response_type: int | None = None
    responded_at: float | None = None  # loop time of the callback
    response_data: dict[str, Any] | None = None
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    late: bool = False
    focused_type: int | None = None  # autocomplete (type 4): the option type of the focused option

    @property
    def answered(self) -> bool:
        return self.response_type is not None


@dataclass(frozen=True)
class Event:
    """Something the bot did (or that happened to it), as the loopback saw it."""

    kind: str
    data: dict[str, Any]
    at: float  # loop time


class EventLog:
    """Append-only log with awaitable waits (no polling): tests wait on what the bot did."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []

    def append(self, kind: str, **data: Any) -> Event:
        event = Event(kind, data, asyncio.get_running_loop().time())
        self.events.append(event)
        log.debug("loopback event %s %s", kind, data)
        still: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []
        for predicate, future in self._waiters:
            if future.done():
                continue
            try:
                matched = predicate(event)
            except Exception as exc:  # a broken predicate fails its own wait, not the server
                future.set_exception(exc)
                continue
            if matched:
                future.set_result(event)
            else:
                still.append((predicate, future))
        self._waiters = still
        return event

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    async def wait_for(
        self, kind: str | tuple[str, ...], predicate: Callable[[Event], bool] | None = None, *, timeout: float = 10.0,
        past: bool = True,
    ) -> Event:
        """Wait for an event of ``kind`` (or any of several) matching ``predicate``.

        With ``past``, an event already logged counts.
        """
        kinds = (kind,) if isinstance(kind, str) else kind

        def match(event: Event) -> bool:
            return event.kind in kinds and (predicate is None or predicate(event))

        if past:
            for event in self.events:
                if match(event):
                    return event
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.append((match, future))
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            if not future.done():
                future.cancel()


class World:
    """All state of the loopback Discord, shared by REST, gateway and voice."""

    def __init__(self, *, token: str, bot_name: str = "voicebot") -> None:
        self.snowflakes = Snowflakes()
        self.token = token
        self.application_id = self.snowflakes.next()
        # A bot user's id equals its application's id on Discord.
        self.bot = User(id=self.application_id, username=bot_name, bot=True)
        self.owner = User(id=self.snowflakes.next(), username="owner")
        self.users: dict[int, User] = {self.bot.id: self.bot, self.owner.id: self.owner}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, Message] = {}
        self.global_commands: dict[str, AppCommand] = {}
        self.guild_commands: dict[int, dict[str, AppCommand]] = {}
        self.interactions: dict[int, Interaction] = {}
        self.interactions_by_token: dict[str, Interaction] = {}
        self.events = EventLog()
        self.problems: list[str] = []

    def problem(self, text: str, **data: Any) -> None:
        """Record something the bot did that real Discord would reject or punish."""
        log.warning("loopback Discord: %s", text)
        self.problems.append(text)
        self.events.append("problem", text=text, **data)

    def dm_channel(self, user_id: int) -> Channel:
        """The DM channel between the bot and ``user_id`` (made on first use; the recipient is kept
        in ``parent_id``)."""
        for channel in self.channels.values():
            if channel.type == ChannelType.DM and channel.parent_id == user_id:
                return channel
        channel = Channel(self.snowflakes.next(), None, ChannelType.DM, "", parent_id=user_id)
        self.channels[channel.id] = channel
        return channel

    def channel_messages(self, channel_id: int) -> list[Message]:
        return [m for m in self.messages.values() if m.channel_id == channel_id and not m.deleted]

    def find_command(self, name: str, guild_id: int | None, type_: int = 1) -> AppCommand | None:
        """The command a user would see: guild commands shadow global ones of the same name."""
        if guild_id is not None:
            command = self.guild_commands.get(guild_id, {}).get(name)
            if command is not None and command.type == type_:
                return command
        command = self.global_commands.get(name)
        if command is not None and command.type == type_:
            return command
        return None


# --- payload builders (pure) ------------------------------------------------------------------


def user_payload(user: User) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": str(user.id),
        "username": user.username,
        "discriminator": "0",
        "global_name": user.global_name,
        "avatar": None,
        "public_flags": 0,
        "flags": 0,
    }
    if user.bot:
        payload["bot"] = True
    return payload


def member_payload(member: Member, *, with_user: bool = True, permissions: int | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "nick": member.nick,
        "roles": [str(r) for r in member.role_ids],
        "joined_at": member.joined_at,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "avatar": None,
        "communication_disabled_until": None,
    }
    if with_user:
        payload["user"] = user_payload(member.user)
    if permissions is not None:
        payload["permissions"] = str(permissions)
    return payload


def role_payload(role: Role) -> dict[str, Any]:
    return {
        "id": str(role.id),
        "name": role.name,
        "color": 0,
        "hoist": False,
        "position": role.position,
        "permissions": str(role.permissions),
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }


def channel_payload(channel: Channel) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": str(channel.id),
        "type": channel.type,
        "name": channel.name,
        "position": channel.position,
        "permission_overwrites": [dict(o) for o in channel.overwrites],
        "parent_id": str(channel.parent_id) if channel.parent_id else None,
        "nsfw": False,
        "flags": 0,
    }
    if channel.guild_id is not None:
        payload["guild_id"] = str(channel.guild_id)
    if channel.type in (ChannelType.VOICE, ChannelType.STAGE):
        payload.update(bitrate=channel.bitrate, user_limit=channel.user_limit, rtc_region=None)
    if channel.type == ChannelType.TEXT:
        payload.update(topic=None, last_message_id=None, rate_limit_per_user=0)
    return payload


def voice_state_payload(state: VoiceState, member: Member | None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "guild_id": str(state.guild_id),
        "channel_id": str(state.channel_id) if state.channel_id is not None else None,
        "user_id": str(state.user_id),
        "session_id": state.session_id,
        "deaf": False,
        "mute": False,
        "self_deaf": state.self_deaf,
        "self_mute": state.self_mute,
        "self_video": False,
        "suppress": False,
        "request_to_speak_timestamp": None,
    }
    if member is not None:
        payload["member"] = member_payload(member)
    return payload


def guild_create_payload(guild: Guild) -> dict[str, Any]:
    """GUILD_CREATE with every member, so discord.py sees the guild as chunked and asks for no chunks."""
    return {
        "id": str(guild.id),
        "name": guild.name,
        "icon": None,
        "owner_id": str(guild.owner_id),
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "features": [],
        "mfa_level": 0,
        "system_channel_id": None,
        "premium_tier": 0,
        "preferred_locale": guild.preferred_locale,
        "nsfw_level": 0,
        "unavailable": False,
        "large": False,
        "joined_at": iso_timestamp(),
        "member_count": len(guild.members),
        "roles": [role_payload(r) for r in guild.roles.values()],
        "emojis": [],
        "stickers": [],
        "channels": [channel_payload(c) for c in guild.channels.values()],
        "threads": [],
        "members": [member_payload(m) for m in guild.members.values()],
        "voice_states": [
            {k: v for k, v in voice_state_payload(v, None).items() if k != "guild_id"}
            for v in guild.voice_states.values()
            if v.channel_id is not None
        ],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
    }


def message_payload(message: Message, world: World) -> dict[str, Any]:
    guild = world.guilds.get(message.guild_id) if message.guild_id is not None else None
    mentions: list[dict[str, Any]] = []
    for user_id in message.mentions:
        user = world.users.get(user_id)
        if user is None:
            continue
        entry = user_payload(user)
        if guild is not None and user_id in guild.members:
            entry["member"] = member_payload(guild.members[user_id], with_user=False)
        mentions.append(entry)
    payload: dict[str, Any] = {
        "id": str(message.id),
        "type": 19 if message.reference_id else 0,
        "channel_id": str(message.channel_id),
        "author": user_payload(message.author),
        "content": message.content,
        "timestamp": iso_timestamp(message.created_at),
        "edited_timestamp": iso_timestamp(message.edited_at) if message.edited_at else None,
        "tts": False,
        "mention_everyone": False,
        "mentions": mentions,
        "mention_roles": [],
        "attachments": [],
        "embeds": message.embeds,
        "pinned": False,
        "flags": message.flags,
        "components": [],
    }
    if message.webhook_id is not None:
        payload["webhook_id"] = str(message.webhook_id)
    if message.guild_id is not None:
        payload["guild_id"] = str(message.guild_id)
        if guild is not None and message.author.id in guild.members:
            payload["member"] = member_payload(guild.members[message.author.id], with_user=False)
    if message.reference_id is not None:
        ref = world.messages.get(message.reference_id)
        payload["message_reference"] = {
            "type": 0,
            "message_id": str(message.reference_id),
            "channel_id": str(message.channel_id),
            **({"guild_id": str(message.guild_id)} if message.guild_id else {}),
        }
        payload["referenced_message"] = message_payload(ref, world) if ref is not None and not ref.deleted else None
    return payload


def command_payload(command: AppCommand) -> dict[str, Any]:
    payload = dict(command.raw)
    payload.update(
        id=str(command.id),
        application_id=str(command.application_id),
        name=command.name,
        type=command.type,
        description=command.description,
        options=command.options,
        version=str(command.version),
        default_member_permissions=command.raw.get("default_member_permissions"),
        nsfw=command.raw.get("nsfw", False),
    )
    if command.guild_id is not None:
        payload["guild_id"] = str(command.guild_id)
    return payload


# Option type numbers (Discord): 1 sub-command, 2 group, 3 string, 4 integer, 5 boolean, 6 user,
# 7 channel, 8 role, 9 mentionable, 10 number, 11 attachment.
_OPTION_CASTS: dict[int, Callable[[Any], Any]] = {3: str, 4: int, 5: bool, 10: float}


def option_payloads(
    declared: list[dict[str, Any]], values: dict[str, Any], world: World, guild: Guild | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Typed interaction options (and ``resolved``) for ``values`` against the declared options.

    Raises ``KeyError`` naming an option the command does not declare, ``ValueError`` for a
    missing required option.
    """
    by_name = {o["name"]: o for o in declared}
    for name in values:
        if name not in by_name:
            raise KeyError(name)
    options: list[dict[str, Any]] = []
    resolved: dict[str, Any] = {}
    for decl in declared:
        name = decl["name"]
        if name not in values:
            if decl.get("required"):
                raise ValueError(f"required option {name!r} missing")
            continue
        value = values[name]
        kind = int(decl.get("type", 3))
        if kind in _OPTION_CASTS:
            options.append({"name": name, "type": kind, "value": _OPTION_CASTS[kind](value)})
            continue
        ident = int(getattr(value, "id", value))
        options.append({"name": name, "type": kind, "value": str(ident)})
        if kind == 6 and ident in world.users:
            resolved.setdefault("users", {})[str(ident)] = user_payload(world.users[ident])
            if guild is not None and ident in guild.members:
                resolved.setdefault("members", {})[str(ident)] = member_payload(guild.members[ident], with_user=False)
        elif kind == 7 and ident in world.channels:
            ch = world.channels[ident]
            resolved.setdefault("channels", {})[str(ident)] = {
                "id": str(ch.id), "type": ch.type, "name": ch.name, "permissions": str((1 << 53) - 1),
            }
        elif kind == 8 and guild is not None and ident in guild.roles:
            resolved.setdefault("roles", {})[str(ident)] = role_payload(guild.roles[ident])
    return options, resolved


# Option types a slash command's options may autocomplete (string, integer, number).
AUTOCOMPLETE_TYPES = (3, 4, 10)


def command_options(
    command: AppCommand, path: list[str], values: dict[str, Any], world: World, guild: Guild | None,
    *, focused: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], int | None]:
    """Interaction options for ``/command path…`` (subcommands and groups nested as Discord nests them).

    With ``focused`` (an autocomplete interaction) that option carries ``"focused": true`` and what the
    person has typed so far as a string, whatever the option's type: Discord sends the partial input,
    which need not be a valid value yet. Returns the options, ``resolved`` and the focused option's type.
    Raises ``KeyError`` naming an undeclared subcommand or option, ``LookupError`` for a focused option
    that does not autocomplete.
    """
    declared = command.options
    chain: list[dict[str, Any]] = []
    for name in path:
        sub = next((o for o in declared if o.get("name") == name and int(o.get("type", 0)) in (1, 2)), None)
        if sub is None:
            raise KeyError(name)
        chain.append(sub)
        declared = list(sub.get("options") or [])
    focused_type: int | None = None
    typed_values = dict(values)
    partial = ""
    if focused is not None:
        decl = next((o for o in declared if o.get("name") == focused), None)
        if decl is None:
            raise KeyError(focused)
        focused_type = int(decl.get("type", 3))
        if focused_type not in AUTOCOMPLETE_TYPES or not decl.get("autocomplete"):
            raise LookupError(f"option {focused!r} of /{command.name} does not autocomplete")
        partial = str(typed_values.pop(focused, ""))
        # A command still being typed: required options may be empty yet.
        declared = [{**o, "required": False} for o in declared]
    options, resolved = option_payloads(declared, typed_values, world, guild)
    if focused is not None:
        options.append({"name": focused, "type": focused_type, "value": partial, "focused": True})
        order = {str(o.get("name")): i for i, o in enumerate(declared)}
        options.sort(key=lambda o: order[o["name"]])
    for sub in reversed(chain):
        options = [{"name": sub["name"], "type": int(sub["type"]), "options": options}]
    return options, resolved, focused_type


def interaction_payload(
    interaction: Interaction,
    world: World,
    command: AppCommand,
    options: list[dict[str, Any]],
    resolved: dict[str, Any],
) -> dict[str, Any]:
    """INTERACTION_CREATE for an application command invoked by a guild member."""
    guild = world.guilds.get(interaction.guild_id) if interaction.guild_id is not None else None
    channel = world.channels[interaction.channel_id]
    data: dict[str, Any] = {
        "id": str(command.id),
        "name": command.name,
        "type": command.type,
        "options": options,
    }
    if resolved:
        data["resolved"] = resolved
    if command.guild_id is not None:
        data["guild_id"] = str(command.guild_id)
    payload: dict[str, Any] = {
        "id": str(interaction.id),
        "application_id": str(world.application_id),
        "type": interaction.type,
        "data": data,
        "channel_id": str(channel.id),
        "channel": {**channel_payload(channel), "permissions": str((1 << 53) - 1)},
        "token": interaction.token,
        "version": 1,
        "locale": world.users[interaction.user_id].locale if interaction.user_id in world.users else "en-US",
        "entitlements": [],
        "authorizing_integration_owners": {"0": str(guild.id)} if guild else {"1": str(interaction.user_id)},
        "context": 0 if guild else 1,
        "attachment_size_limit": 10 * 1024 * 1024,
    }
    if guild is not None:
        member = guild.members[interaction.user_id]
        payload["guild_id"] = str(guild.id)
        payload["guild_locale"] = guild.preferred_locale
        payload["guild"] = {"id": str(guild.id), "locale": guild.preferred_locale, "features": []}
        payload["member"] = member_payload(member, permissions=guild.permissions_of(member.user.id))
        payload["app_permissions"] = str(guild.permissions_of(world.bot.id))
    else:
        payload["user"] = user_payload(world.users[interaction.user_id])
    return payload
