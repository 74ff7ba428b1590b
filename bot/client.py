"""The bot class: lifecycle and global policy only. Features live in cogs.

The bot is discord.py's ``AutoShardedBot``: one process runs every shard (the count Discord
recommends) or, with ``SHARD_IDS``/``SHARD_COUNT``, only its share of them, and handles the guilds
those shards own (``bot/shards.py`` says how Discord divides them). Every IDENTIFY waits on an
:class:`~bot.shards.IdentifyGate` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
import discord
import discord.gateway
import yarl
from discord import app_commands
from discord.ext import commands

from bot.shards import BucketGate, IdentifyGate, SessionStartLimit, ShardStatus, describe_shards

if TYPE_CHECKING:
    from bot.cluster import ClusterMember
    from bot.cluster.rejoin import VoicePresence
    from bot.services import Services
    from bot.settings import Settings

__all__ = ["EXTENSIONS", "VoiceBot", "make_intents", "discord_connector"]

log = logging.getLogger(__name__)

# Every feature, loaded in this order in setup_hook. One place to add or remove a feature.
EXTENSIONS: tuple[str, ...] = ("cogs.chat", "cogs.voice", "cogs.privacy", "cogs.link", "cogs.language", "cogs.memory",
                               "cogs.usage")


def make_intents() -> discord.Intents:
    intents = discord.Intents.default()
    intents.message_content = True  # privileged: enable "Message Content Intent" on the Bot page
    intents.voice_states = True
    return intents


def discord_connector(settings: Settings) -> aiohttp.TCPConnector | None:
    """A connector trusting an extra CA (the loopback Discord's); None means discord.py's default."""
    if settings.discord_ca_file is None:
        return None
    context = ssl.create_default_context(cafile=str(settings.discord_ca_file))
    return aiohttp.TCPConnector(ssl=context)


def apply_api_base(settings: Settings) -> None:
    """Point discord.py's REST routes at ``DISCORD_API_BASE`` (the loopback Discord) when set."""
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base  # read on every request (http.py Route.url)


class VoiceBotTree(app_commands.CommandTree["VoiceBot"]):
    """One tree-level handler: people see a friendly ephemeral note, the log gets the traceback."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        from bot.i18n.catalog import t
        from bot.i18n.words import interaction_language

        try:
            language = interaction_language(interaction, getattr(self.client.services, "languages", None))
        except Exception:  # the error path must answer even when the language store fails
            log.warning("could not choose the answer's language", exc_info=True)
            language = "en"
        if isinstance(error, app_commands.CheckFailure):
            key = getattr(error, "catalog_key", None)  # our own checks; discord.py's own say little more
            message = t(key or "command.not_here", language)
        elif isinstance(error, app_commands.CommandOnCooldown):
            message = t("command.cooldown", language, seconds=f"{error.retry_after:.0f}")
        else:
            command = interaction.command.qualified_name if interaction.command else "?"
            log.error("command /%s failed", command, exc_info=error,
                      extra={"guild_id": interaction.guild_id, "user_id": interaction.user.id})
            message = t("command.failed", language)
        try:
            if interaction.response.is_done():
                await interaction.followup.send(message, ephemeral=True)
            else:
                await interaction.response.send_message(message, ephemeral=True)
        except discord.HTTPException:
            log.warning("could not tell the user about a failed command", exc_info=True)


class VoiceBot(commands.AutoShardedBot):
    """Owns start-up, extension loading, command sync and shutdown.

    The services it is given belong to whoever built them (the composition root closes them after
    the bot and the web server have stopped, since both use them). ``identify_gate`` builds what
    paces this process's logins from Discord's session start limit (once ``GET /gateway/bot`` has
    told it); by default :class:`~bot.shards.BucketGate`, which knows only this process. With a
    ``cluster`` member the gate is the database's (every process's logins) and ``setup_hook`` claims
    this process's shards there before any of them logs in.
    """

    def __init__(self, services: Services, *, extensions: tuple[str, ...] = EXTENSIONS,
                 identify_gate: Callable[[SessionStartLimit], IdentifyGate] = BucketGate,
                 cluster: ClusterMember | None = None) -> None:
        settings = services.settings
        apply_api_base(settings)
        kwargs: dict[str, object] = {}
        if settings.shard_count is not None:
            kwargs["shard_count"] = settings.shard_count
            if settings.shard_ids is not None:
                kwargs["shard_ids"] = list(settings.shard_ids)
        connector = discord_connector(settings)
        if connector is not None:
            kwargs["connector"] = connector
        super().__init__(
            command_prefix=commands.when_mentioned,  # text commands are not used; slash commands are
            intents=make_intents(),
            tree_cls=VoiceBotTree,
            help_command=None,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=False),
            **kwargs,  # type: ignore[arg-type]
        )
        self.services = services
        self.settings = settings
        self._extensions = extensions
        self.failed_extensions: dict[str, str] = {}
        self.cluster = cluster
        self.voice_presence: VoicePresence | None = None
        self._rejoin_task: asyncio.Task[None] | None = None
        self._make_identify_gate = cluster.gate if cluster is not None else identify_gate
        self.identify_gate: IdentifyGate | None = None
        self.session_start_limit: SessionStartLimit | None = None

    @property
    def owned_shards(self) -> tuple[int, ...]:
        """The shards this process runs (empty until the count is known, in ``setup_hook``)."""
        if self.shard_ids is not None:
            return tuple(self.shard_ids)
        return tuple(range(self.shard_count)) if self.shard_count is not None else ()

    def shard_status(self) -> list[ShardStatus]:
        """Each of this process's shards: connected or not, its guilds, its heartbeat latency."""
        count = self.shard_count or 0
        guilds: dict[int, int] = {}
        for guild in self.guilds:
            guilds[guild.shard_id] = guilds.get(guild.shard_id, 0) + 1
        statuses: list[ShardStatus] = []
        for shard_id in self.owned_shards:
            info = self.get_shard(shard_id)
            connected = info is not None and not info.is_closed()
            latency_ms = info.latency * 1000 if info is not None and math.isfinite(info.latency) else None
            statuses.append(ShardStatus(shard_id, count, connected, guilds.get(shard_id, 0), latency_ms))
        return statuses

    async def _learn_gateway(self) -> None:
        """One ``GET /gateway/bot``: the URL to dial, the shard count when none is set, and the
        session start limit every IDENTIFY must respect."""
        recommended, url, limits = await self.http.get_bot_gateway()
        # discord.py dials DEFAULT_GATEWAY when the shard count is known; Discord asks bots to use
        # the URL it hands out (and the loopback Discord is only reachable that way).
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
        self.session_start_limit = SessionStartLimit.from_payload(limits)
        if self.shard_count is None:
            self.shard_count = recommended
        elif self.shard_count < recommended:
            log.warning("SHARD_COUNT %d is below the %d shards Discord recommends for this bot: a shard "
                        "holding too many guilds is refused (close 4011)", self.shard_count, recommended)
        self.identify_gate = self._make_identify_gate(self.session_start_limit)
        log.info("Discord shards %s of %d in this process (logins: %d at a time, %d of %d left today)",
                 describe_shards(self.owned_shards), self.shard_count, self.session_start_limit.max_concurrency,
                 self.session_start_limit.remaining, self.session_start_limit.total)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        # Replaces discord.py's "sleep 5 s unless first": Discord's rule is per bucket, and across
        # processes only a shared gate can keep it.
        assert self.identify_gate is not None, "setup_hook (run by login) sets the gate before any IDENTIFY"
        await self.identify_gate.wait(shard_id or 0)

    async def setup_hook(self) -> None:
        await self._learn_gateway()
        if self.cluster is not None:
            assert self.shard_count is not None
            self.cluster.stats = self.cluster_stats
            await self.cluster.join(self.owned_shards, self.shard_count)  # ShardsHeld: refuse to log in
        from bot.i18n.commands import CommandTranslator
        from bot.i18n.detect import preload

        # The language detector's model takes about half a second to load: not on a reply's time.
        await asyncio.to_thread(preload)

        # Command names and descriptions in each person's Discord language (sent with the sync).
        await self.tree.set_translator(CommandTranslator())
        for name in self._extensions:
            try:
                await self.load_extension(name)
            except commands.ExtensionError as exc:
                self.failed_extensions[name] = str(exc.__cause__ or exc)
                log.exception("extension %s failed to load", name)
        self._wire_rejoin()
        await self.sync_commands()

    def _wire_rejoin(self) -> None:
        """In a cluster, the voice manager records its channels in the shared database (rejoined after a restart)."""
        manager = getattr(self.get_cog("Voice"), "manager", None)
        if self.cluster is None or manager is None:
            return
        from bot.cluster.rejoin import VoicePresence

        self.voice_presence = VoicePresence(self.cluster.store.db, self.cluster.info.process_id)
        manager.voice_log = self.voice_presence
        presence = self.voice_presence

        async def refresh() -> None:
            await presence.refresh(manager)
        self.cluster.on_beat = refresh

    async def _rejoin_voice(self) -> None:
        manager = getattr(self.get_cog("Voice"), "manager", None)
        if manager is None or self.voice_presence is None:
            return
        try:
            from bot.cluster.rejoin import rejoin_guilds

            await rejoin_guilds(self, manager, self.voice_presence)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rejoining voice channels after the restart failed")

    def cluster_stats(self) -> tuple[int, int]:
        """(guilds, voice sessions) of this process, for its heartbeat."""
        manager = getattr(self.get_cog("Voice"), "manager", None)
        return len(self.guilds), len(manager.connections()) if manager is not None else 0

    async def sync_commands(self) -> None:
        """Sync to the development guild when configured; globally only on request."""
        try:
            if self.settings.discord_dev_guild_id:
                guild = discord.Object(self.settings.discord_dev_guild_id)
                self.tree.copy_global_to(guild=guild)
                synced = await self.tree.sync(guild=guild)
                log.info("synced %d commands to development guild %s", len(synced), guild.id)
            elif self.settings.discord_sync_global:
                synced = await self.tree.sync()
                log.info("synced %d commands globally (can take up to an hour to appear)", len(synced))
            else:
                log.info("slash commands not synced: set DISCORD_DEV_GUILD_ID, or DISCORD_SYNC_GLOBAL=true once")
        except discord.HTTPException:
            log.exception("command sync failed")

    async def on_ready(self) -> None:
        assert self.user is not None
        log.info("logged in as %s (%s) in %d guild(s) on shards %s of %s", self.user, self.user.id,
                 len(self.guilds), describe_shards(self.owned_shards), self.shard_count)
        if self._rejoin_task is None and self.voice_presence is not None:
            # Once per process: the voice channels its guilds had the bot in before it stopped.
            self._rejoin_task = asyncio.create_task(self._rejoin_voice(), name="rejoin-voice")

    async def close(self) -> None:
        if self._rejoin_task is not None and not self._rejoin_task.done():
            self._rejoin_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rejoin_task
        await super().close()

