"""Which rooms of a guild a member can see, by discord.py's own permission resolution.

Roles, channel overwrites, the owner and administrators are all discord.py's ``permissions_for``;
recall searches exactly these rooms besides the one the member is in (bot.recall.audience).
"""

from __future__ import annotations

import discord

__all__ = ["visible_rooms"]


def visible_rooms(guild: discord.Guild | None, member: object) -> frozenset[str] | None:
    """The rooms (``discord:{guild}:{channel}``) of ``guild``'s channels and threads ``member`` can
    view. None outside a guild or for a user who is not a cached member (recall then reads the
    current room only)."""
    if guild is None or not isinstance(member, discord.Member):
        return None
    rooms: set[str] = set()
    for channel in [*guild.channels, *guild.threads]:
        if isinstance(channel, discord.CategoryChannel):
            continue
        if channel.permissions_for(member).view_channel:
            rooms.add(f"discord:{guild.id}:{channel.id}")
    return frozenset(rooms)
