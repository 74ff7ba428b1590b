"""``/language``: the language the bot speaks in this server (Manage Server to change it).

``/language`` alone says what applies and why; ``/language language:de`` fixes it, ``auto``
answers every message and utterance in its own language, ``default`` goes back to the server's
Discord language (or ``LANGUAGE``). Answers are in the caller's Discord language when the bot has
its words in it, else the server's (``bot.i18n.words`` has the whole rule).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.i18n.bidi import isolate
from bot.i18n.catalog import catalog_language, t
from bot.i18n.languages import AUTO, LANGUAGES, language_name, parse_setting
from bot.i18n.places import PlaceLanguages
from bot.i18n.words import interaction_language
from cogs.voice import guild_only_check

if TYPE_CHECKING:
    from bot.client import VoiceBot

log = logging.getLogger(__name__)

RESET = "default"


def answer_language(interaction: discord.Interaction, languages: PlaceLanguages) -> str:
    """The language to answer an interaction in (the rule is in ``bot.i18n.words``)."""
    return interaction_language(interaction, languages)


class LanguageCog(commands.Cog, name="Language"):
    def __init__(self, bot: VoiceBot, languages: PlaceLanguages) -> None:
        self.bot = bot
        self.languages = languages

    @app_commands.command(name="language")
    @app_commands.guild_only()
    @guild_only_check
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(language="auto, default, or a language code such as de, fr, es, pt, ja")
    async def language(self, interaction: discord.Interaction,
                       language: app_commands.Range[str, 1, 32] | None = None) -> None:
        """Choose the language I speak in this server, or auto to answer each person in theirs."""
        assert interaction.guild_id is not None
        place = f"guild:{interaction.guild_id}"
        locale = str(interaction.guild_locale) if interaction.guild_locale else None
        if language is not None:
            if not interaction.permissions.manage_guild:
                await self._answer(interaction, t("command.needs_manage_server", answer_language(interaction, self.languages)))
                return
            if language.strip().lower() == RESET:
                await self.languages.set(place, None)
                fallback = self.languages.fallback(place, locale)
                await self._answer(interaction, t("language.reset", catalog_language(fallback),
                                                  language=language_name(fallback)))
                return
            try:
                setting = parse_setting(language)
            except ValueError:
                await self._answer(interaction, t("language.unknown", answer_language(interaction, self.languages),
                                                  value=isolate(discord.utils.escape_markdown(language[:32]))))
                return
            await self.languages.set(place, setting)
            log.info("/language %s", setting, extra={"guild_id": interaction.guild_id})
            if setting == AUTO:
                fallback = self.languages.fallback(place, locale)
                await self._answer(interaction, t("language.auto", catalog_language(fallback),
                                                  language=language_name(fallback)))
            else:
                # Said in the new language: the admin hears what the server will hear.
                await self._answer(interaction, t("language.set", catalog_language(setting),
                                                  language=language_name(setting)))
            return
        mode = self.languages.mode(place, locale)
        setting, _ = self.languages.store.get(place)
        speak = answer_language(interaction, self.languages)
        if mode == AUTO:
            source = t("language.source.auto", speak)
            shown = language_name(self.languages.fallback(place, locale))
        else:
            source = t("language.source.set" if setting else "language.source.server", speak)
            shown = language_name(mode)
        await self._answer(interaction, t("language.current", speak, language=shown, source=source))

    @language.autocomplete("language")
    async def _complete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        needle = current.strip().lower()
        options = [(AUTO, AUTO), (RESET, RESET)] + [
            (f"{lang.native} ({code})", code) for code, lang in LANGUAGES.items()]
        found = [app_commands.Choice(name=name, value=value) for name, value in options
                 if not needle or needle in name.lower() or needle in value]
        return found[:25]

    @staticmethod
    async def _answer(interaction: discord.Interaction, text: str) -> None:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: VoiceBot) -> None:
    languages = bot.services.languages
    assert languages is not None  # Services builds one
    await bot.add_cog(LanguageCog(bot, languages))
