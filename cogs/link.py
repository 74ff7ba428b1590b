"""Linking a phone number to a Discord account, so SMS and Discord share one person's memory.

``/link phone`` shows a one-time code to text to the bot's number; ``/unlink`` undoes it. The
logic lives in :mod:`bot.sms`; this cog only translates commands into calls and replies.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.sms.store import LINK_CODE_TTL, PhoneLinker, open_sms_store
from bot.i18n.catalog import t
from bot.i18n.places import PlaceLanguages
from bot.i18n.words import interaction_language
from bot.sms.text import mask_number

if TYPE_CHECKING:
    from bot.client import VoiceBot

__all__ = ["LinkCog", "link_phone_message", "unlink_message"]

log = logging.getLogger(__name__)

NO_SMS = t("link.no_sms", "en")


async def link_phone_message(linker: PhoneLinker, bot_number: str | None, user_id: int, display_name: str,
                       language: str = "en") -> str:
    """Issue a code for a Discord user and say how to use it (what ``/link phone`` replies)."""
    if bot_number is None:
        return t("link.no_sms", language)
    code = await linker.start(f"discord:{user_id}", display_name)
    return t("link.instructions", language, code=code.code, number=bot_number, minutes=int(LINK_CODE_TTL // 60))


async def unlink_message(linker: PhoneLinker, user_id: int, language: str = "en") -> str:
    """Remove a Discord user's phone links (what ``/unlink`` replies)."""
    numbers = await linker.unlink(f"discord:{user_id}")
    if not numbers:
        return t("link.unlink_none", language)
    shown = ", ".join(mask_number(n) for n in numbers)
    return t("link.unlinked", language, numbers=shown)


class LinkCog(commands.Cog, name="Link"):
    """Link your phone so the bot knows your texts are you."""

    link = app_commands.Group(name="link", description="Link another way of talking to me to your Discord account")

    def __init__(self, linker: PhoneLinker, bot_number: str | None, languages: PlaceLanguages | None = None) -> None:
        self.linker = linker
        self.bot_number = bot_number
        self.languages = languages

    @link.command(name="phone")
    async def link_phone(self, interaction: discord.Interaction) -> None:
        """Get a one-time code to text from your phone, linking it to your account."""
        text = await link_phone_message(self.linker, self.bot_number, interaction.user.id, interaction.user.display_name,
                                  interaction_language(interaction, self.languages))
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="unlink")
    async def unlink(self, interaction: discord.Interaction) -> None:
        """Unlink any phone number linked to your account."""
        language = interaction_language(interaction, self.languages)
        await interaction.response.send_message(await unlink_message(self.linker, interaction.user.id, language),
                                                ephemeral=True)


async def setup(bot: VoiceBot) -> None:
    services = bot.services
    settings = services.settings
    assert services.store is not None
    linker = PhoneLinker(await open_sms_store(services.store), services.memory)
    await bot.add_cog(LinkCog(linker, settings.twilio_phone_number if settings.sms_enabled else None,
                              services.languages))
