"""Recall off the wait: it starts on the pause's words (with the speculative reply) or the final
transcript, and a reply never waits past RECALL_BUDGET_MS for it (an index slowed on purpose)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from bot.agent import Agent
from bot.agent.character import default_character
from bot.console.metrics import Metrics
from bot.store import SqliteDatabase as Database
from bot.memory import Memory, Modality, Turn
from bot.recall import Recall, RecallConfig
from bot.recall.index import Hit
from bot.store import SqliteDatabase
from bot.voice.session import VoiceSession
from bot.voice.turns import TurnPolicy, VoiceMode
from tests.test_turn_detection import RULE, EchoEngine, pause, until
from tests.test_voice_session import ROOM, RecordingOut, ScriptedSTT, ToneTTS, wait_turns

WEEK = 7 * 86400.0


class SlowRecall(Recall):
    """A real index whose lexical query waits until the test lets it go (a slow disk, a locked table)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def _lexical(self, terms: Sequence[str], rooms: Sequence[str], kinds: Sequence[str] | None,
                       when: tuple[float, float] | None, limit: int, *, around: bool = False
                       ) -> tuple[list[Hit], list[Hit]]:
        self.entered.set()
        await self.gate.wait()
        return await super()._lexical(terms, rooms, kinds, when, limit, around=around)


async def voice(recall: Recall, engine: EchoEngine, stt: ScriptedSTT, *, speculate: bool = True
                ) -> tuple[VoiceSession, Memory, RecordingOut]:
    memory = await Memory.open(recall.db)  # the one database, as the bot runs
    memory.on_stored.append(recall.on_stored)
    character = default_character()
    agent = Agent(character, engine, memory)
    agent.recall = recall
    out = RecordingOut()
    session = VoiceSession(
        room=ROOM, agent=agent, memory=memory, stt=stt, tts=ToneTTS(), out=out,  # type: ignore[arg-type]
        policy=TurnPolicy(bot_names=(character.name,), mode=VoiceMode.ALWAYS),
        name_of=lambda uid: f"user{uid}", turn_detection=RULE, speculate=speculate,
    )
    return session, memory, out


async def test_recall_starts_on_the_pauses_words_before_the_turn_is_over() -> None:
    store = SqliteDatabase(":memory:")
    recall = SlowRecall(store, RecallConfig(budget_ms=60_000))
    engine = EchoEngine()
    session, memory, out = await voice(recall, engine, ScriptedSTT({1: ["I was thinking about my sister's wedding and"]}))
    pause(session, 1)
    await asyncio.wait_for(recall.entered.wait(), 10)  # the search is running...
    assert session.speculations_started == 1 and out.played == [] and engine.conversations == []  # ...turn not over
    recall.gate.set()
    await until(lambda: len(engine.conversations) == 1)
    await session.aclose()
    await memory.aclose()
    await store.close()


async def test_a_slow_index_is_cut_off_at_the_budget_and_counted() -> None:
    store = SqliteDatabase(":memory:")
    recall = SlowRecall(store, RecallConfig(budget_ms=30))
    metrics = Metrics(process=False)
    recall.listeners.append(metrics.recall_outcome)
    engine = EchoEngine()
    session, memory, out = await voice(recall, engine, ScriptedSTT({1: ["Where is my sister's wedding?"]}), speculate=False)
    started = time.monotonic()
    pause(session, 1)
    await wait_turns(session, 1)
    # The index never answered (its gate is shut): the reply went on without memories.
    assert not recall.gate.is_set() and recall.entered.is_set()
    assert [t for t, _ in out.played] == ["You said: Where is my sister's wedding.", "Anything else?"]
    assert engine.conversations[0].memories == ()
    assert all("Memories" not in m["content"] for m in engine.conversations[0].messages[1:])
    assert recall.outcomes["over_budget"] == 1
    assert b'voicebot_recall_total{outcome="over_budget"} 1.0' in metrics.render()
    assert time.monotonic() - started < 30  # a guard against a hang, not a speed figure
    recall.gate.set()  # the abandoned search finishes on its own
    await session.aclose()
    await session.agent.aclose()
    await memory.aclose()
    await store.close()


async def test_a_week_old_voice_turn_is_recalled_into_the_voice_prompt() -> None:
    store = SqliteDatabase(":memory:")
    recall = Recall(store, RecallConfig(budget_ms=60_000))  # generous: the test is about what, not how fast
    engine = EchoEngine()
    session, memory, out = await voice(recall, engine, ScriptedSTT({7: ["Where is my sister's wedding?"]}),
                                 speculate=False)
    memory.append(Turn(room=ROOM, speaker_id="discord:7", speaker_name="user7", role="user",
                       text="My sister is getting married in Lisbon in June", modality=Modality.VOICE,
                       created_at=time.time() - WEEK))
    for i in range(3):  # in a channel this asker was not shown to see
        memory.append(Turn(room="discord:1:3", speaker_id="discord:8", speaker_name="user8", role="user",
                           text=f"the wedding playlist number {i}", modality=Modality.TEXT, created_at=time.time()))
    for i in range(session.agent.context_turns + 5):  # talk since: the turn is out of the recent window
        memory.append(Turn(room=ROOM, speaker_id="discord:8", speaker_name="user8", role="user",
                           text=f"the weather today is fine {i}", modality=Modality.VOICE, created_at=time.time()))
    pause(session, 7)
    await wait_turns(session, 1)
    conversation = engine.conversations[0]
    assert [h.text for h in conversation.memories][:1] == ["My sister is getting married in Lisbon in June"]
    block = conversation.messages[-2]["content"]
    assert block.startswith("Memories") and "(7 days ago), here, by voice, user7 said: \"My sister is getting " \
        "married in Lisbon in June\"" in block
    assert "playlist" not in block
    assert all("Lisbon" not in m["content"] for m in conversation.messages[:-2])  # not in the recent turns
    await session.aclose()
    await memory.aclose()
    await store.close()


def test_visible_rooms_follow_discord_py_permissions() -> None:
    import discord

    from bot.recall.discord_rooms import visible_rooms
    from tests.discord_objects import ALICE_ID, GUILD_ID, TEXT_ID, make_state, user_payload

    _, state = make_state()
    bob, hidden, voice_id = 400000000000000002, 300000000000000009, 300000000000000010
    guild = discord.Guild(data={
        "id": str(GUILD_ID), "name": "g", "owner_id": str(ALICE_ID), "roles": [
            {"id": str(GUILD_ID), "name": "@everyone", "permissions": "68608", "position": 0, "color": 0,
             "hoist": False, "managed": False, "mentionable": False}],
        "channels": [
            {"id": str(TEXT_ID), "type": 0, "name": "general", "position": 0, "guild_id": str(GUILD_ID)},
            {"id": str(voice_id), "type": 2, "name": "Lounge", "position": 1, "guild_id": str(GUILD_ID),
             "bitrate": 64000, "user_limit": 0},
            {"id": str(hidden), "type": 0, "name": "mods", "position": 2, "guild_id": str(GUILD_ID),
             "permission_overwrites": [{"id": str(GUILD_ID), "type": 0, "allow": "0", "deny": "1024"}]},
        ],
        "members": [{"user": user_payload(uid, name), "roles": [], "joined_at": None, "flags": 0, "deaf": False,
                     "mute": False} for uid, name in ((ALICE_ID, "alice"), (bob, "bob"))],
        "member_count": 2, "emojis": [], "stickers": [], "features": [], "voice_states": [],
    }, state=state)
    def member(uid: int, name: str) -> discord.Member:
        return discord.Member(data={"user": user_payload(uid, name), "roles": [], "joined_at": None, "flags": 0,
                                    "deaf": False, "mute": False}, guild=guild, state=state)

    room = f"discord:{GUILD_ID}:"
    assert visible_rooms(guild, member(bob, "bob")) == {room + str(TEXT_ID), room + str(voice_id)}
    assert visible_rooms(guild, member(ALICE_ID, "alice")) == {room + str(c) for c in (TEXT_ID, voice_id, hidden)}
    assert visible_rooms(guild, None) is None and visible_rooms(None, member(bob, "bob")) is None


async def test_recall_starts_on_the_interim_words_at_the_pause_and_the_reply_takes_that_search() -> None:
    store = SqliteDatabase(":memory:")
    recall = SlowRecall(store, RecallConfig(budget_ms=60_000))
    engine = EchoEngine()
    stt = ScriptedSTT({3: ["Where is my sister's wedding?"]})  # the final differs in case and punctuation
    session, memory, out = await voice(recall, engine, stt, speculate=False)
    session.on_speech_start(3)
    stream = stt.streams["3"]
    stream.emit("where is my sister's")
    stream.emit("where is my sister's wedding")
    await until(lambda: session.participants[3].interim == "where is my sister's wedding")
    session.on_speech_end(3)  # the pause: recall starts on the interim words, before the final is in
    await asyncio.wait_for(recall.entered.wait(), 10)
    searches = [t for t in session.agent._recalls]
    assert len(searches) == 1 and engine.conversations == []
    recall.gate.set()
    await wait_turns(session, 1)
    assert len(engine.conversations) == 1 and recall.outcomes["none"] == 1  # one search, taken by the reply
    assert sum(recall.outcomes.values()) == 1
    await session.aclose()
    await session.agent.aclose()
    await memory.aclose()
    await store.close()
