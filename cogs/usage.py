"""``/usage``: what this server used of the paid services today and in the last 7 days, and the top
people by share (Manage Server; amounts only, never what anyone said)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.i18n.catalog import t
from bot.i18n.words import interaction_language
from bot.usage.report import format_server_usage, server_usage
from cogs.voice import guild_only_check

if TYPE_CHECKING:
    from bot.client import VoiceBot
    from bot.usage import UsageMeter

log = logging.getLogger(__name__)


class UsageCog(commands.Cog, name="Usage"):
    def __init__(self, bot: VoiceBot, meter: UsageMeter) -> None:
        self.bot = bot
        self.meter = meter

    @app_commands.command(name="usage")
    @app_commands.guild_only()
    @guild_only_check
    @app_commands.default_permissions(manage_guild=True)
    async def usage(self, interaction: discord.Interaction) -> None:
        """Show what this server used of the paid services today and this week, and who used most."""
        assert interaction.guild_id is not None
        languages = self.bot.services.languages
        language = interaction_language(interaction, languages) if languages is not None else "en"
        if not interaction.permissions.manage_guild:
            await interaction.response.send_message(t("command.needs_manage_server", language), ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        report = await server_usage(self.meter, interaction.guild_id)
        text = format_server_usage(report, language)
        await interaction.followup.send(text[:2000], ephemeral=True,
                                        allowed_mentions=discord.AllowedMentions.none())


async def setup(bot: VoiceBot) -> None:
    meter = bot.services.usage
    assert meter is not None  # Services builds one
    await bot.add_cog(UsageCog(bot, meter))
