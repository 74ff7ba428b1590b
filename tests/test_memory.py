"""Memory: turns by room and speaker, bounded windows, identity links, forgetting, pruning — on both backends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.memory import Memory, Modality, Turn, private_rooms
from bot.store import Database, SqliteDatabase
from tests.backends import store_db  # noqa: F401  (both backends)

GUILD_ROOM = "discord:10:20"


def turn(room: str, speaker: str, text: str, *, role: str = "user", name: str = "Alice",
         modality: Modality = Modality.TEXT, at: float | None = None, interrupted: bool = False) -> Turn:
    return Turn(room=room, speaker_id=speaker, speaker_name=name, role=role, text=text,
                modality=modality, created_at=time.time() if at is None else at, interrupted=interrupted)


@pytest.fixture
async def memory(store_db: Database) -> AsyncIterator[Memory]:  # noqa: F811
    memory = await Memory.open(store_db)
    yield memory
    await memory.aclose()


async def test_recent_is_bounded_and_oldest_first(memory: Memory) -> None:
    for i in range(30):
        memory.append(turn(GUILD_ROOM, "discord:1", f"m{i}"))
    memory.append(turn("discord:dm:1", "discord:1", "elsewhere"))
    window = await memory.recent(GUILD_ROOM, 5)
    assert [t.text for t in window] == ["m25", "m26", "m27", "m28", "m29"]
    assert await memory.recent(GUILD_ROOM, 0) == []
    assert len(await memory.recent(GUILD_ROOM, 100)) == 30
    await memory.flush()
    assert await memory.turns.count(GUILD_ROOM) == 30  # stored, not only cached


async def test_a_cold_room_is_filled_from_the_database_with_what_is_still_queued(store_db: Database) -> None:  # noqa: F811
    first = await Memory.open(store_db)
    for i in range(5):
        first.append(turn(GUILD_ROOM, "discord:1", f"old{i}"))
    await first.aclose()
    again = await Memory.open(store_db)  # a restart: the cache is empty
    try:
        again.append(turn(GUILD_ROOM, "discord:1", "new"))  # queued, maybe not written yet
        assert [t.text for t in await again.recent(GUILD_ROOM, 10)] == [f"old{i}" for i in range(5)] + ["new"]
        again.append(turn(GUILD_ROOM, "discord:1", "newer"))  # into the filled cache
        assert [t.text for t in await again.recent(GUILD_ROOM, 2)] == ["new", "newer"]
        await again.flush()
        assert [t.text for t in await again.recent(GUILD_ROOM, 100)][-2:] == ["new", "newer"]  # uncached path
        assert await again.count(GUILD_ROOM) == 7
    finally:
        await again.aclose()


async def test_turn_fields_round_trip(memory: Memory, store_db: Database) -> None:  # noqa: F811
    original = turn(GUILD_ROOM, "bot", "Hello there", role="assistant", name="Wren",
                    modality=Modality.VOICE, at=1234.5, interrupted=True)
    row_id = await memory.append_now(original)
    assert row_id > 0
    assert await memory.recent(GUILD_ROOM, 1) == [original]
    fresh = await Memory.open(store_db)
    try:
        assert await fresh.recent(GUILD_ROOM, 1) == [original]  # read back from the database
    finally:
        await fresh.aclose()


async def test_rejects_unknown_role(memory: Memory) -> None:
    with pytest.raises(ValueError):
        memory.append(turn(GUILD_ROOM, "discord:1", "x", role="system"))


async def test_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "data" / "voicebot.sqlite3"
    db = SqliteDatabase(path)
    memory = await Memory.open(db)
    memory.append(turn("sms:+15551234567", "phone:+15551234567", "remember me", modality=Modality.SMS))
    await memory.link_identities("discord:1", "phone:+15551234567")
    await memory.aclose()  # writes what is queued
    await db.close()

    db = SqliteDatabase(path)
    try:
        memory = await Memory.open(db)  # migrating again is a no-op
        [t] = await memory.recent("sms:+15551234567", 10)
        assert t.text == "remember me" and t.modality is Modality.SMS
        assert await memory.identities_of("discord:1") == {"discord:1", "phone:+15551234567"}
        await memory.aclose()
    finally:
        await db.close()


async def test_identity_links_are_transitive_and_merge(memory: Memory) -> None:
    assert await memory.identities_of("discord:1") == {"discord:1"}
    await memory.link_identities("discord:1", "phone:+15550000001")
    await memory.link_identities("console:alice", "discord:2")
    await memory.link_identities("phone:+15550000001", "console:alice")  # merges the two people
    everyone = {"discord:1", "phone:+15550000001", "console:alice", "discord:2"}
    for ident in everyone:
        assert await memory.identities_of(ident) == everyone
    await memory.link_identities("discord:1", "discord:1")
    await memory.link_identities("discord:1", "discord:2")  # already linked: no change
    assert await memory.identities_of("discord:3") == {"discord:3"}


async def test_forget_person_everywhere(memory: Memory) -> None:
    await memory.link_identities("discord:1", "phone:+15550000001")
    memory.append(turn(GUILD_ROOM, "discord:1", "alice in guild"))
    memory.append(turn(GUILD_ROOM, "discord:2", "bob in guild", name="Bob"))
    memory.append(turn(GUILD_ROOM, "bot", "reply in guild", role="assistant", name="Wren"))
    memory.append(turn("discord:dm:1", "discord:1", "alice dm"))
    memory.append(turn("discord:dm:1", "bot", "reply in dm", role="assistant", name="Wren"))
    memory.append(turn("sms:+15550000001", "phone:+15550000001", "alice sms", modality=Modality.SMS))
    memory.append(turn("sms:+15550000001", "bot", "reply sms", role="assistant", modality=Modality.SMS))
    memory.append(turn("discord:dm:2", "discord:2", "bob dm", name="Bob"))
    assert len(await memory.recent(GUILD_ROOM, 10)) == 3  # cached before the forget

    report = await memory.forget_person("phone:+15550000001")  # queued turns are stored first, then erased
    # Counted by kind, never summed: their 3 turns, the agent's 2 replies in their private rooms,
    # and the Discord account that was linked to the phone.
    assert report.counts == {"message": 3, "reply": 2, "linked account": 1}
    assert report.describe() == "3 messages, 2 replies to you, 1 linked account"
    assert [t.text for t in await memory.recent(GUILD_ROOM, 10)] == ["bob in guild", "reply in guild"]
    assert await memory.recent("discord:dm:1", 10) == []
    assert await memory.recent("sms:+15550000001", 10) == []
    assert [t.text for t in await memory.recent("discord:dm:2", 10)] == ["bob dm"]
    assert await memory.identities_of("discord:1") == {"discord:1"}
    assert (await memory.forget_person("discord:404")).empty


def test_private_rooms() -> None:
    assert private_rooms("discord:123") == {"discord:dm:123"}
    assert private_rooms("phone:+15551234567") == {"sms:+15551234567", "phone:+15551234567"}
    assert private_rooms("console:me") == {"console"}
    assert private_rooms("bot") == set()
    assert private_rooms("discord:notanid") == set()


async def test_prune_deletes_only_old_turns(memory: Memory) -> None:
    now = time.time()
    memory.append(turn(GUILD_ROOM, "discord:1", "ancient", at=now - 40 * 86400))
    memory.append(turn(GUILD_ROOM, "discord:1", "recent", at=now - 86400))
    await memory.flush()
    assert await memory.prune(0) == 0
    assert await memory.prune(30) == 1
    assert [t.text for t in await memory.recent(GUILD_ROOM, 10)] == ["recent"]
    assert await memory.count() == 1


async def test_unlink_separates_a_person_again(memory: Memory) -> None:
    await memory.link_identities("discord:1", "phone:+15550001111")
    await memory.link_identities("discord:1", "console:me")
    assert await memory.unlink_identity("phone:+15550001111")
    assert await memory.identities_of("discord:1") == {"discord:1", "console:me"}
    assert await memory.identities_of("phone:+15550001111") == {"phone:+15550001111"}
    assert await memory.unlink_identity("console:me")
    assert await memory.identities_of("discord:1") == {"discord:1"}
    assert not await memory.unlink_identity("discord:1")


async def test_over_the_bound_turns_are_dropped_and_counted(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "v.sqlite3")
    memory = Memory(db, queue_max=10)
    await memory.turns.migrate()  # the writer is not started: every turn stays queued
    try:
        for i in range(15):
            memory.append(turn(GUILD_ROOM, "discord:1", f"m{i}"))
        assert memory.pending == 10 and memory.dropped == 5
        state = memory.queue_state()
        assert state["dropped"] == 5 and state["pending"] == 10 and state["bound"] == 10
        memory.start()
        await memory.flush()
        assert await memory.turns.count() == 10 and memory.written == 10
    finally:
        await memory.aclose()
        await db.close()
