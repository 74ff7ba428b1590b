from __future__ import annotations

import discord

from cogs.chat import clean_text, room_for, should_answer
from tests.discord_objects import (
    ALICE_ID, BOT_ID, ENABLED_ID, GUILD_ID, OTHER_BOT_ID, TEXT_ID, make_dm, make_guild, make_message, make_state,
)


def _setup() -> tuple[discord.Client, object, discord.Guild]:
    client, state = make_state()
    return client, state, make_guild(state)


def test_answers_mentions_replies_dms_and_enabled_channels() -> None:
    _, state, guild = _setup()
    me = state.user
    general = guild.get_channel(TEXT_ID)
    enabled = frozenset({ENABLED_ID})
    assert should_answer(make_message(state, general, content=f"<@{BOT_ID}> hi", mentions=[BOT_ID]), me, enabled)
    assert should_answer(make_message(state, general, content="yes", reference_author=BOT_ID), me, enabled)
    assert should_answer(make_message(state, make_dm(state), content="hello"), me, enabled)
    assert should_answer(make_message(state, guild.get_channel(ENABLED_ID), content="hello"), me, enabled)
    # Not addressed: a plain message, a reply to someone else.
    assert not should_answer(make_message(state, general, content="hello"), me, enabled)
    assert not should_answer(make_message(state, general, content="yes", reference_author=ALICE_ID), me, enabled)


def test_ignores_bots_itself_and_webhooks() -> None:
    _, state, guild = _setup()
    me = state.user
    general = guild.get_channel(TEXT_ID)
    mention = f"<@{BOT_ID}> hi"
    assert not should_answer(make_message(state, general, content=mention, mentions=[BOT_ID], author_id=OTHER_BOT_ID,
                                          author_bot=True), me, frozenset())
    assert not should_answer(make_message(state, general, content=mention, mentions=[BOT_ID], author_id=BOT_ID,
                                          author_bot=True), me, frozenset())
    assert not should_answer(make_message(state, general, content=mention, mentions=[BOT_ID], webhook_id=7),
                             me, frozenset())


def test_clean_text_and_rooms() -> None:
    _, state, guild = _setup()
    general = guild.get_channel(TEXT_ID)
    message = make_message(state, general, content=f"<@{BOT_ID}>   what about <@{ALICE_ID}>? <:wave:123>",
                           mentions=[BOT_ID, ALICE_ID])
    assert clean_text(message, state.user) == "what about @U400000000000000001? :wave:"
    assert clean_text(make_message(state, general, content=f"<@!{BOT_ID}>", mentions=[BOT_ID]), state.user) == ""
    assert room_for(general, message.author) == f"discord:{GUILD_ID}:{TEXT_ID}"
    dm = make_dm(state)
    assert room_for(dm, make_message(state, dm, content="x").author) == f"discord:dm:{ALICE_ID}"
