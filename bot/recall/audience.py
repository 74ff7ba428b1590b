"""Who could have heard a memory, and which memories an asker may be reminded of where they are.

A memory's audience is fixed when it is stored, from the room it was said in:

- ``discord:{guild}:{channel}`` — a guild channel (text or voice): the people who can see that channel;
- ``discord:dm:{user}``, ``sms:{number}``, ``phone:{number}``, ``console``, ``playground`` — one person's
  private conversation: that person alone (under any identity linked to theirs);
- everyone — character knowledge, said to no one in particular.

A search states who asks (their identities), where (the place the answer will be read or heard) and,
in a guild, which of its channels the asker can see. :func:`scope_for` turns that into the rooms a
search may read; the index applies it inside the SQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Audience", "Scope", "guild_of", "is_private_room", "private_rooms_of", "scope_for"]

_PRIVATE_PREFIXES = ("discord:dm:", "sms:", "phone:")
_OPERATOR_ROOMS = ("console", "playground")  # the terminal chat and the browser playground


def is_private_room(room: str) -> bool:
    return room.startswith(_PRIVATE_PREFIXES) or room in _OPERATOR_ROOMS


def guild_of(room: str) -> str | None:
    """The guild id of a guild channel's room (``discord:{guild}:{channel}``), else None."""
    if not room.startswith("discord:") or room.startswith("discord:dm:"):
        return None
    parts = room.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return None
    return parts[1]


def private_rooms_of(identities: Iterable[str]) -> set[str]:
    """The private rooms that belong to a person known by ``identities`` (their linked identities)."""
    rooms: set[str] = set()
    for identity in identities:
        kind, _, rest = identity.partition(":")
        if not rest:
            continue
        if kind == "discord" and rest.isdigit():
            rooms.add(f"discord:dm:{rest}")
        elif kind == "phone":
            rooms.update((f"sms:{rest}", f"phone:{rest}"))
        elif kind == "console":
            rooms.update(_OPERATOR_ROOMS)
    return rooms


@dataclass(frozen=True)
class Audience:
    """Who could have heard a document: ``scope`` is ``"guild"``, ``"private"`` or ``"everyone"``.

    ``room`` is the room it was said in (a guild channel's or the private conversation's);
    ``guild`` the guild id for guild rooms.
    """

    scope: str
    room: str = ""
    guild: str | None = None

    @classmethod
    def of_room(cls, room: str) -> Audience:
        """The audience of something said in ``room`` (an unknown kind of room counts as private)."""
        guild = guild_of(room)
        if guild is not None:
            return cls("guild", room, guild)
        return cls("private", room)

    @classmethod
    def everyone(cls) -> Audience:
        return cls("everyone")


@dataclass(frozen=True)
class Scope:
    """The rooms one search may read: ``rooms`` (guild channels or private rooms) and whether
    documents for everyone are included."""

    rooms: frozenset[str]
    everyone: bool = True


def scope_for(identities: Iterable[str], place: str, visible: Iterable[str] | None = None) -> Scope:
    """What an asker known by ``identities`` may be reminded of at ``place``.

    In a guild channel: the channels of that guild in ``visible`` (always including ``place``, which
    they are in); ``None`` reads ``place`` alone. In one of the asker's private rooms: all of their
    private rooms. Anywhere else (someone else's private room, a room of unknown kind): ``place`` only
    if it is private to someone, so nothing of another room.
    """
    guild = guild_of(place)
    if guild is not None:
        rooms = {place}
        for room in visible or ():
            if guild_of(room) == guild:
                rooms.add(room)
        return Scope(frozenset(rooms))
    own = private_rooms_of(identities)
    if place in own:
        return Scope(frozenset(own))
    return Scope(frozenset({place}) if is_private_room(place) else frozenset())
