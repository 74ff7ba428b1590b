"""The bot class: lifecycle and global policy only. Features live in cogs."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

import aiohttp
import discord
import discord.gateway
import yarl
from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.services import Services
    from bot.settings import Settings

__all__ = ["EXTENSIONS", "VoiceBot", "make_intents", "discord_connector"]

log = logging.getLogger(__name__)

# Every feature, loaded in this order in setup_hook. One place to add or remove a feature.
EXTENSIONS: tuple[str, ...] = ("cogs.chat", "cogs.voice", "cogs.privacy", "cogs.link", "cogs.language")


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


class VoiceBot(commands.Bot):
    """Owns start-up, extension loading, command sync and shutdown.

    The services it is given belong to whoever built them (the composition root closes them after
    the bot and the web server have stopped, since both use them).
    """

    def __init__(self, services: Services, *, extensions: tuple[str, ...] = EXTENSIONS) -> None:
        settings = services.settings
        apply_api_base(settings)
        kwargs: dict[str, object] = {}
        if settings.discord_shard_count is not None:
            kwargs.update(shard_id=settings.discord_shard_id, shard_count=settings.discord_shard_count)
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

    async def setup_hook(self) -> None:
        if self.settings.discord_api_base:
            # An unsharded client never asks /gateway/bot; it dials discord.py's default gateway.
            # With a custom API base (the loopback Discord) the gateway must come from that API.
            _, url, _ = await self.http.get_bot_gateway()
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
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
        await self.sync_commands()

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
        log.info("logged in as %s (%s) in %d guild(s)", self.user, self.user.id, len(self.guilds))

