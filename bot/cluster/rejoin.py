"""Back where it was: the voice channel each guild had the bot in, rejoined after a restart.

The voice manager records a guild's channel when it joins (and its mode and language, refreshed with
every heartbeat), and forgets it when it leaves on purpose (``/leave``, an empty channel, a kick) but
not when the process stops: a crash, a deploy or a SIGTERM leaves the row, and the process that next
runs the guild's shard (this one restarted, or another on the same database) joins that channel again
with the same mode and language, and says so once in the channel's chat.

Rows live in the database every process shares (``cluster_voice``), so a guild's shard moving to
another machine brings its voice channel with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from bot.i18n.catalog import t
from bot.store import Database

if TYPE_CHECKING:
    from bot.voice.manager import VoiceManager

__all__ = ["VoicePresence", "VoiceRow", "rejoin_guilds"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VoiceRow:
    guild_id: int
    channel_id: int
    mode: str
    language: str  # the guild's /language setting; "" when it has none (the default applies)


class VoicePresence:
    """The ``cluster_voice`` rows (the schema is the cluster's: :data:`bot.cluster.store.CLUSTER_STEPS`)."""

    def __init__(self, db: Database, process_id: str) -> None:
        self.db = db
        self.process_id = process_id

    async def joined(self, guild_id: int, channel_id: int, mode: str, language: str) -> None:
        await self.db.execute(
            "INSERT INTO cluster_voice (guild_id, channel_id, mode, language, process_id, joined_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id) DO UPDATE SET channel_id = excluded.channel_id, "
            "mode = excluded.mode, language = excluded.language, process_id = excluded.process_id, "
            "joined_at = excluded.joined_at",
            (int(guild_id), int(channel_id), str(mode), language, self.process_id, time.time()))

    async def left(self, guild_id: int) -> None:
        await self.db.execute("DELETE FROM cluster_voice WHERE guild_id = ?", (int(guild_id),))

    async def rows(self, guild_ids: Iterable[int]) -> list[VoiceRow]:
        wanted = {int(g) for g in guild_ids}
        if not wanted:
            return []
        found = await self.db.query("SELECT guild_id, channel_id, mode, language FROM cluster_voice")
        return [VoiceRow(int(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in found if int(r[0]) in wanted]

    async def refresh(self, manager: VoiceManager) -> None:
        """The mode and language of every guild in voice now (a heartbeat keeps /mode and /language current)."""
        for gv in manager.connections():
            mode, language = state_of(manager, gv.guild_id)
            await self.db.execute("UPDATE cluster_voice SET mode = ?, language = ? WHERE guild_id = ? AND "
                                  "(mode <> ? OR language <> ?)", (mode, language, int(gv.guild_id), mode, language))


def state_of(manager: VoiceManager, guild_id: int) -> tuple[str, str]:
    """A guild's voice mode and its /language setting ("" for none)."""
    mode = str(manager.guild_settings.get(guild_id).mode)
    setting, _learned = manager.languages.store.get(f"guild:{guild_id}")
    return mode, setting or ""


async def rejoin_guilds(client: discord.Client, manager: VoiceManager, presence: VoicePresence) -> list[int]:
    """Join again the channels this process's guilds had the bot in; returns the guild ids rejoined."""
    from bot.voice.manager import VoiceCommandError

    rejoined: list[int] = []
    for row in await presence.rows(g.id for g in client.guilds):
        guild = client.get_guild(row.guild_id)
        channel = guild.get_channel(row.channel_id) if guild is not None else None
        if guild is None or not isinstance(channel, (discord.VoiceChannel, discord.StageChannel)):
            log.info("not rejoining voice: the channel is gone", extra={"guild_id": row.guild_id})
            await presence.left(row.guild_id)
            continue
        if manager.connection(guild.id) is not None:
            continue
        mode, language = state_of(manager, guild.id)
        if row.mode and row.mode != mode:
            manager.set_mode(guild.id, row.mode)
        if row.language != language:
            manager.languages.set(f"guild:{guild.id}", row.language or None)
        try:
            await manager.join(channel)
        except VoiceCommandError as exc:
            log.warning("could not rejoin voice after the restart: %s", exc.in_language("en"),
                        extra={"guild_id": guild.id, "channel_id": channel.id})
            continue
        except Exception:
            log.exception("rejoining voice failed", extra={"guild_id": guild.id, "channel_id": channel.id})
            continue
        rejoined.append(guild.id)
        log.info("rejoined voice after a restart", extra={"guild_id": guild.id, "channel_id": channel.id})
        try:
            await channel.send(t("voice.back", manager.guild_language(guild), channel=channel.mention),
                               allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as exc:
            log.info("could not say the bot is back: %s", exc.status, extra={"guild_id": guild.id})
    return rejoined
