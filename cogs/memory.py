"""``/memory show`` and ``/memory forget``: a person sees, privately, what the bot keeps about them, and
removes what it learnt.

``show`` lists the facts learnt from what they said (numbered, with where and when each came from), how
many of their messages are kept in each place, and the voice-session summaries they appear in; every
answer is ephemeral and in the person's own Discord language. ``forget`` removes one fact by its number,
or with ``all`` everything learnt about them (facts and the summaries naming them) while their messages
stay; ``/forget`` (cogs/privacy.py) erases everything, messages included. Works in servers and DMs, and
with an engine that learns nothing (the ELIZA engine): then only the messages are listed.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.i18n.catalog import t
from bot.i18n.words import interaction_language
from bot.privacy import ForgetReport
from cogs.privacy import forgotten_items

if TYPE_CHECKING:
    from bot.client import VoiceBot
    from bot.facts import FactsService

__all__ = ["MemoryCog", "place_name"]

log = logging.getLogger(__name__)

MAX_CHARS = 1900  # Discord's 2,000-character message, with room for the "and N more" line
MAX_SUMMARY_CHARS = 160  # a summary's first words; /memory show lists where and when, recall has the whole
MAX_CHOICES = 25  # Discord shows at most 25 autocomplete choices and refuses more
MAX_CHOICE_CHARS = 100  # and a choice's name of at most 100 characters


def place_name(bot: discord.Client, room: str, language: str) -> str:
    """Where a room is, said to the person (a channel by name when the bot still sees it)."""
    if room.startswith("discord:dm:"):
        return t("memory.place.dm", language)
    if room.startswith("sms:"):
        return t("memory.place.sms", language)
    if room.startswith("phone:"):
        return t("memory.place.phone", language)
    if room in ("console", "playground"):
        return t("memory.place.console", language)
    parts = room.split(":")
    if len(parts) == 3 and parts[0] == "discord" and parts[2].isdigit():
        channel = bot.get_channel(int(parts[2]))
        guild = getattr(channel, "guild", None)
        if channel is not None and guild is not None:
            return t("memory.place.channel", language, channel=getattr(channel, "name", "?"), guild=guild.name)
    return t("memory.place.unknown", language)


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


def _clip(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fit(lines: list[str], language: str, budget: int) -> list[str]:
    """As many of ``lines`` as fit in ``budget`` characters, then how many were left out."""
    out: list[str] = []
    used = 0
    for i, line in enumerate(lines):
        if used + len(line) + 1 > budget:
            out.append(t("memory.more", language, count=len(lines) - i))
            break
        out.append(line)
        used += len(line) + 1
    return out


class MemoryCog(commands.Cog, name="Memory"):
    """See and remove what I keep about you."""

    memory = app_commands.Group(name="memory", description="What I remember about you, and removing it.")

    def __init__(self, bot: VoiceBot) -> None:
        self.bot = bot

    @property
    def facts(self) -> FactsService | None:
        return getattr(self.bot.services, "facts", None)

    async def cog_load(self) -> None:
        facts = self.facts
        if facts is None:
            return
        facts.is_bot = self._is_bot  # never learn from another bot's words
        manager = getattr(self.bot.services, "voice", None) or getattr(self.bot.get_cog("Voice"), "manager", None)
        if manager is not None:
            manager.session_listeners.append(facts.session_ended)

    async def cog_unload(self) -> None:
        facts = self.facts
        manager = getattr(self.bot.services, "voice", None) or getattr(self.bot.get_cog("Voice"), "manager", None)
        if facts is not None and manager is not None and facts.session_ended in manager.session_listeners:
            manager.session_listeners.remove(facts.session_ended)

    def _is_bot(self, identity: str) -> bool:
        kind, _, rest = identity.partition(":")
        if kind != "discord" or not rest.isdigit():
            return False
        # Voice-channel members are cached from their voice states (the bot has no members intent);
        # text messages from bots are never stored in the first place.
        user = self.bot.get_user(int(rest))
        if user is None:
            user = next((m for g in self.bot.guilds if (m := g.get_member(int(rest))) is not None), None)
        return bool(user is not None and user.bot)

    def _lang(self, interaction: discord.Interaction) -> str:
        """The language of the answer, by the rule every command follows (bot.i18n.words)."""
        return interaction_language(interaction, getattr(self.bot.services, "languages", None))

    async def _turn_counts(self, people: set[str]) -> list[tuple[str, int]]:
        from bot.facts import MemoryTurns

        return await MemoryTurns(self.bot.services.memory).counts_by_room(people)

    @memory.command(name="show")
    async def show(self, interaction: discord.Interaction) -> None:
        """See what I keep about you: facts, your messages by place, summaries (only you see it)."""
        language = self._lang(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        identity = f"discord:{interaction.user.id}"
        from bot.facts import MemoryTurns

        people = await MemoryTurns(self.bot.services.memory).identities_of(identity)
        sections: list[list[str]] = []
        facts = self.facts
        if facts is None:
            sections.append([t("memory.no_learning", language)])
            summaries = []
        else:
            kept, summaries = await facts.about(identity)
            if kept:
                sections.append([t("memory.facts", language, count=len(kept))] + [
                    t("memory.fact_line", language, id=f.id, text=discord.utils.escape_markdown(f.text),
                      place=place_name(self.bot, f.room, language), date=_day(f.updated_at)) for f in kept])
            else:
                sections.append([t("memory.no_facts", language)])
        counts = await self._turn_counts(people)
        if counts:
            sections.append([t("memory.turns", language)] + [
                t("memory.turns_line", language, place=place_name(self.bot, room, language), count=n)
                for room, n in counts])
        else:
            sections.append([t("memory.no_turns", language)])
        if summaries:
            sections.append([t("memory.summaries", language, count=len(summaries))] + [
                t("memory.summary_line", language, date=_day(s.started_at), place=place_name(self.bot, s.room, language),
                  text=discord.utils.escape_markdown(" ".join(s.text.split())[:MAX_SUMMARY_CHARS]))
                for s in summaries])
        how = t("memory.how", language)
        title = t("memory.title", language)
        budget = MAX_CHARS - len(how) - len(title) - 8
        lines: list[str] = [title]
        cut = False
        for section in sections:
            share = max(200, budget // len(sections))
            fitted = _fit(section, language, share)
            cut = cut or len(fitted) < len(section) or fitted[-1] != section[-1]
            lines += [""] + fitted
        lines += ["", how]
        if not cut:
            await interaction.followup.send("\n".join(lines)[:2000], ephemeral=True)
            return
        # Too much for one message: the whole list as a file beside it, so nothing kept is hidden.
        everything = "\n".join([title, *("\n" + "\n".join(section) for section in sections)]) + "\n"
        await interaction.followup.send("\n".join(lines)[:2000], ephemeral=True,
                                        file=discord.File(io.BytesIO(everything.encode()), filename="memory.txt"))

    @memory.command(name="forget")
    @app_commands.describe(item="The fact's number from /memory show, or all")
    async def forget(self, interaction: discord.Interaction, item: str) -> None:
        """Remove one fact I learnt about you, or all of them (your messages stay)."""
        language = self._lang(interaction)
        identity = f"discord:{interaction.user.id}"
        facts = self.facts
        choice = item.strip().lower()
        if facts is None:
            await interaction.response.send_message(t("memory.no_learning", language), ephemeral=True)
            return
        if choice == "all":
            counts = await facts.forget_learnt(identity)
            report = ForgetReport()
            for kind, n in counts.items():
                report.add(kind, n)
            log.info("removed what was learnt about a person", extra={"removed": report.counts})
            text = (t("memory.nothing_learnt", language) if report.empty
                    else t("memory.removed_all", language, what=forgotten_items(report, language)))
            await interaction.response.send_message(text, ephemeral=True)
            return
        number = choice.lstrip("#`")
        kept, _ = await facts.about(identity)
        target = next((f for f in kept if number.isdigit() and f.id == int(number)), None)
        if target is None or not await facts.remove_fact(identity, target.id):
            await interaction.response.send_message(
                t("memory.not_found", language, item=discord.utils.escape_markdown(item.strip()[:40])), ephemeral=True)
            return
        await interaction.response.send_message(
            t("memory.removed_one", language, text=discord.utils.escape_markdown(target.text)), ephemeral=True)

    @forget.autocomplete("item")
    async def _item_autocomplete(self, interaction: discord.Interaction,
                                 current: str) -> list[app_commands.Choice[str]]:
        """The person's own facts that match what they typed; "all" last, and only when it matches too:
        Discord highlights the first choice, and Enter must never pick "everything" for a search."""
        language = self._lang(interaction)
        everything = app_commands.Choice(name=t("memory.all_choice", language)[:MAX_CHOICE_CHARS], value="all")
        needle = current.strip().casefold()
        offer_all = not needle or needle in everything.name.casefold() or "all".startswith(needle)
        facts = self.facts
        if facts is None:
            return [everything] if offer_all else []
        kept, _ = await facts.about(f"discord:{interaction.user.id}")
        room = MAX_CHOICES - (1 if offer_all else 0)
        out: list[app_commands.Choice[str]] = []
        for fact in kept:
            label = f"{fact.id}: {fact.text}"
            if needle and needle not in label.casefold():
                continue
            if len(out) == room:
                break
            out.append(app_commands.Choice(name=_clip(label, MAX_CHOICE_CHARS), value=str(fact.id)))
        return out + [everything] if offer_all else out


async def setup(bot: VoiceBot) -> None:
    await bot.add_cog(MemoryCog(bot))
