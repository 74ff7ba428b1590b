"""Real discord.py objects built from gateway payloads, the way discord.py itself builds them."""

from __future__ import annotations

from typing import Any

import discord

BOT_ID = 100000000000000001
GUILD_ID = 200000000000000001
TEXT_ID = 300000000000000001
ENABLED_ID = 300000000000000002
ALICE_ID = 400000000000000001
OTHER_BOT_ID = 400000000000000009


def user_payload(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    return {"id": str(user_id), "username": name, "discriminator": "0", "global_name": name.title(),
            "avatar": None, "bot": bot}


def make_state() -> tuple[discord.Client, Any]:
    client = discord.Client(intents=discord.Intents.default())
    state = client._connection
    state.user = discord.ClientUser(state=state, data=user_payload(BOT_ID, "nova", bot=True))
    return client, state


def make_guild(state: Any) -> discord.Guild:
    data = {
        "id": str(GUILD_ID), "name": "Test Guild", "owner_id": str(ALICE_ID), "roles": [
            {"id": str(GUILD_ID), "name": "@everyone", "permissions": "68608", "position": 0,
             "color": 0, "hoist": False, "managed": False, "mentionable": False},
        ],
        "channels": [
            {"id": str(TEXT_ID), "type": 0, "name": "general", "position": 0, "guild_id": str(GUILD_ID)},
            {"id": str(ENABLED_ID), "type": 0, "name": "bot-chat", "position": 1, "guild_id": str(GUILD_ID)},
        ],
        "members": [{"user": user_payload(ALICE_ID, "alice"), "roles": [], "joined_at": None, "flags": 0, "deaf": False,
                     "mute": False}],
        "member_count": 2, "emojis": [], "stickers": [], "features": [], "voice_states": [],
    }
    guild = discord.Guild(data=data, state=state)
    state._add_guild(guild)
    return guild


def make_message(state: Any, channel: discord.abc.Messageable, *, content: str, author_id: int = ALICE_ID,
                 author_bot: bool = False, mentions: list[int] = (), reference_author: int | None = None,
                 webhook_id: int | None = None) -> discord.Message:
    guild = getattr(channel, "guild", None)
    data: dict[str, Any] = {
        "id": "500000000000000001", "channel_id": str(channel.id), "type": 0 if reference_author is None else 19,
        "content": content, "author": user_payload(author_id, "alice" if author_id == ALICE_ID else "someone",
                                                   bot=author_bot),
        "timestamp": "2026-11-24T00:00:00+00:00", "edited_timestamp": None, "tts": False,
        "mention_everyone": False, "mentions": [user_payload(m, "nova" if m == BOT_ID else f"u{m}", bot=m == BOT_ID)
                                                for m in mentions],
        "mention_roles": [], "attachments": [], "embeds": [], "pinned": False,
    }
    if guild is not None:
        data["guild_id"] = str(guild.id)
        data["member"] = {"roles": [], "joined_at": None, "flags": 0, "deaf": False, "mute": False}
    if webhook_id is not None:
        data["webhook_id"] = str(webhook_id)
    if reference_author is not None:
        data["message_reference"] = {"message_id": "500000000000000000", "channel_id": str(channel.id)}
        data["referenced_message"] = {**data, "id": "500000000000000000", "type": 0, "content": "earlier",
                                      "author": user_payload(reference_author, "ref", bot=reference_author == BOT_ID),
                                      "mentions": []}
        data["referenced_message"].pop("message_reference")
        data["referenced_message"].pop("referenced_message", None)
    return discord.Message(state=state, channel=channel, data=data)


def make_dm(state: Any, user_id: int = ALICE_ID) -> discord.DMChannel:
    data = {"id": "600000000000000001", "type": 1, "recipients": [user_payload(user_id, "alice")]}
    return discord.DMChannel(me=state.user, state=state, data=data)
