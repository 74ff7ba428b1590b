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

from bot.sms.store import LINK_CODE_TTL, PhoneLinker, SmsStore
from bot.sms.text import link_instructions, mask_number

if TYPE_CHECKING:
    from bot.client import VoiceBot

__all__ = ["LinkCog", "link_phone_message", "unlink_message"]

log = logging.getLogger(__name__)

NO_SMS = "Texting isn't set up on this bot, so there is no phone to link."


def link_phone_message(linker: PhoneLinker, bot_number: str | None, user_id: int, display_name: str) -> str:
    """Issue a code for a Discord user and say how to use it (what ``/link phone`` replies)."""
    if bot_number is None:
        return NO_SMS
    code = linker.start(f"discord:{user_id}", display_name)
    return link_instructions(code.code, bot_number, int(LINK_CODE_TTL // 60))


def unlink_message(linker: PhoneLinker, user_id: int) -> str:
    """Remove a Discord user's phone links (what ``/unlink`` replies)."""
    numbers = linker.unlink(f"discord:{user_id}")
    if not numbers:
        return "No phone number is linked to your account."
    shown = ", ".join(mask_number(n) for n in numbers)
    return f"Unlinked {shown}. Texts from there are no longer treated as you."


class LinkCog(commands.Cog, name="Link"):
    """Link your phone so the bot knows your texts are you."""

    link = app_commands.Group(name="link", description="Link another way of talking to me to your Discord account")

    def __init__(self, linker: PhoneLinker, bot_number: str | None) -> None:
        self.linker = linker
        self.bot_number = bot_number

    @link.command(name="phone")
    async def link_phone(self, interaction: discord.Interaction) -> None:
        """Get a one-time code to text from your phone, linking it to your account."""
        text = link_phone_message(self.linker, self.bot_number, interaction.user.id, interaction.user.display_name)
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="unlink")
    async def unlink(self, interaction: discord.Interaction) -> None:
        """Unlink any phone number linked to your account."""
        await interaction.response.send_message(unlink_message(self.linker, interaction.user.id), ephemeral=True)


async def setup(bot: VoiceBot) -> None:
    services = bot.services
    settings = services.settings
    linker = PhoneLinker(SmsStore(services.db), services.memory)
    await bot.add_cog(LinkCog(linker, settings.twilio_phone_number if settings.sms_enabled else None))
