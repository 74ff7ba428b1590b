"""Privacy commands anyone can use for themselves: ``/optout``, ``/optin`` and ``/forget``.

Opting out is global across servers and takes effect at once: the person's voice packets are
dropped at the receive stage, before decryption, so they are neither transcribed nor remembered.
``/forget`` erases what the bot remembers of the person under every linked identity (a linked phone
number too) and drops anything about them still in flight (an open recognizer stream, a waiting turn).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.i18n.catalog import MESSAGES, t
from bot.i18n.words import interaction_language
from bot.memory import Memory, private_rooms
from bot.privacy import ForgetReport
from bot.voice.guilds import OptOutList
from cogs.voice import guild_only_check

if TYPE_CHECKING:
    from bot.client import VoiceBot
    from bot.facts import FactsService
    from bot.voice.manager import VoiceManager

__all__ = ["PrivacyCog", "forget_everything", "forget_message", "forgotten_items", "optin_message", "optout_message"]

log = logging.getLogger(__name__)


def optout_message(changed: bool, language: str = "en") -> str:
    return t("privacy.optout_done" if changed else "privacy.optout_already", language)


def optin_message(changed: bool, language: str = "en") -> str:
    return t("privacy.optin_done" if changed else "privacy.optin_unchanged", language)


def forgotten_items(report: ForgetReport, language: str = "en") -> str:
    """What a forget removed, in ``language``: ``"3 messages, 1 linked phone"``."""
    order = ("message", "reply", "fact", "summary", "linked phone", "linked account", "sms record", "link code",
             "bookkeeping")
    kinds = [k for k in order if k in report.counts] + [k for k in report.counts if k not in order]
    parts = []
    for kind in kinds:
        n = report.counts[kind]
        if n <= 0:
            continue
        key = f"forget.kind.{kind.replace(' ', '_')}.{'one' if n == 1 else 'many'}"
        parts.append(t(key, language, count=n) if key in MESSAGES else f"{n} {kind}")
    return t("forget.and", language).join(parts)


async def forget_everything(memory: Memory, facts: FactsService | None, identity: str,
                            usage: Any = None) -> ForgetReport:
    """``/forget``: the person's turns, links and SMS rows (memory), then what was learnt from them: facts
    about them and the summaries that name them, and their daily use totals before today (bot/usage:
    today's hold today's limit), under every identity linked to theirs."""
    people = await memory.identities_of(identity) | {identity}  # before memory forgets the links
    report = await memory.forget_person(identity)
    if usage is not None:
        for who in sorted(people):
            try:
                await usage.forget(who)
            except Exception:
                log.exception("could not forget a person's usage totals")
    if facts is not None:
        counts = await facts.forget(people, {room for who in people for room in private_rooms(who)})
        for kind, n in counts.items():
            report.add(kind, n)
        scrubbed = await facts.store.db.scrub(["facts", "fact_sources", "summaries", "summary_people",
                                               "facts_rooms"])
        report.scrubbed = report.scrubbed and scrubbed
    return report


def forget_message(report: ForgetReport, language: str = "en") -> str:
    if report.empty:
        return t("privacy.forget_nothing", language)
    return t("privacy.forget_done", language, what=forgotten_items(report, language))


class PrivacyCog(commands.Cog, name="Privacy"):
    """Decide whether the bot hears and remembers you."""

    def __init__(self, bot: VoiceBot, memory: Memory, fallback_optouts: OptOutList) -> None:
        self.bot = bot
        self.memory = memory
        self._fallback_optouts = fallback_optouts

    def _manager(self) -> VoiceManager | None:
        # The voice cog owns the live opt-out snapshot the receive filter reads; share it when loaded.
        cog = self.bot.get_cog("Voice")
        return getattr(cog, "manager", None)

    def _lang(self, interaction: discord.Interaction) -> str:
        """The language of this answer (the rule is in ``bot.i18n.words``)."""
        return interaction_language(interaction, getattr(self.bot.services, "languages", None))

    @app_commands.command(name="optout")
    @app_commands.guild_only()
    @guild_only_check
    async def optout(self, interaction: discord.Interaction) -> None:
        """Stop me from hearing you: your voice is ignored in every server, from now on."""
        manager = self._manager()
        user_id = interaction.user.id
        if manager is not None:
            changed = await manager.opt_out(user_id)
        else:
            changed = await self._fallback_optouts.opt_out(user_id)
        log.info("voice opt-out", extra={"user_id": user_id, "changed": changed})
        await interaction.response.send_message(optout_message(changed, self._lang(interaction)), ephemeral=True)

    @app_commands.command(name="optin")
    @app_commands.guild_only()
    @guild_only_check
    async def optin(self, interaction: discord.Interaction) -> None:
        """Let me hear you again in voice channels after an /optout."""
        manager = self._manager()
        user_id = interaction.user.id
        changed = await (manager.opt_in(user_id) if manager is not None else self._fallback_optouts.opt_in(user_id))
        log.info("voice opt-in", extra={"user_id": user_id, "changed": changed})
        await interaction.response.send_message(optin_message(changed, self._lang(interaction)), ephemeral=True)

    @app_commands.command(name="forget")
    @app_commands.guild_only()
    @guild_only_check
    async def forget(self, interaction: discord.Interaction) -> None:
        """Erase everything I remember about you (voice, text, and any linked phone)."""
        user_id = interaction.user.id
        language = self._lang(interaction)  # before forgetting: a DM's learned language goes too
        # Erasing and scrubbing a large history (PostgreSQL's VACUUM, SQLite's zeroed pages) can take longer
        # than the 3 s Discord gives an answer: acknowledge first.
        await interaction.response.defer(ephemeral=True, thinking=True)
        manager = self._manager()
        if manager is not None:
            manager.drop_live_state(user_id)
        services = self.bot.services
        removed = await forget_everything(self.memory, getattr(services, "facts", None), f"discord:{user_id}",
                                          usage=getattr(services, "usage", None))
        log.info("forgot a person", extra={"removed": removed.counts})  # no id: they asked to be forgotten
        await interaction.followup.send(forget_message(removed, language), ephemeral=True)


async def setup(bot: VoiceBot) -> None:
    services = bot.services
    await bot.add_cog(PrivacyCog(bot, services.memory, services.optouts))
