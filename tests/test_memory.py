"""Memory: turns by room and speaker, bounded windows, identity links, forgetting, pruning."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.db import Database
from bot.memory import Memory, Modality, Turn, private_rooms

GUILD_ROOM = "discord:10:20"


def turn(room: str, speaker: str, text: str, *, role: str = "user", name: str = "Alice",
         modality: Modality = Modality.TEXT, at: float | None = None, interrupted: bool = False) -> Turn:
    return Turn(room=room, speaker_id=speaker, speaker_name=name, role=role, text=text,
                modality=modality, created_at=time.time() if at is None else at, interrupted=interrupted)


@pytest.fixture
def memory() -> Iterator[Memory]:
    db = Database.in_memory()
    yield Memory(db)
    db.close()


def test_recent_is_bounded_and_oldest_first(memory: Memory) -> None:
    for i in range(30):
        memory.append(turn(GUILD_ROOM, "discord:1", f"m{i}"))
    memory.append(turn("discord:dm:1", "discord:1", "elsewhere"))
    window = memory.recent(GUILD_ROOM, 5)
    assert [t.text for t in window] == ["m25", "m26", "m27", "m28", "m29"]
    assert memory.recent(GUILD_ROOM, 0) == []
    assert len(memory.recent(GUILD_ROOM, 100)) == 30


def test_turn_fields_round_trip(memory: Memory) -> None:
    original = turn(GUILD_ROOM, "bot", "Hello there", role="assistant", name="Wren",
                    modality=Modality.VOICE, at=1234.5, interrupted=True)
    row_id = memory.append(original)
    assert row_id > 0
    assert memory.recent(GUILD_ROOM, 1) == [original]


def test_rejects_unknown_role(memory: Memory) -> None:
    with pytest.raises(ValueError):
        memory.append(turn(GUILD_ROOM, "discord:1", "x", role="system"))


def test_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "data" / "voicebot.sqlite3"
    db = Database(path)
    memory = Memory(db)
    memory.append(turn("sms:+15551234567", "phone:+15551234567", "remember me", modality=Modality.SMS))
    memory.link_identities("discord:1", "phone:+15551234567")
    db.close()

    db = Database(path)
    try:
        memory = Memory(db)  # migrating again is a no-op
        [t] = memory.recent("sms:+15551234567", 10)
        assert t.text == "remember me" and t.modality is Modality.SMS
        assert memory.identities_of("discord:1") == {"discord:1", "phone:+15551234567"}
    finally:
        db.close()


def test_identity_links_are_transitive_and_merge(memory: Memory) -> None:
    assert memory.identities_of("discord:1") == {"discord:1"}
    memory.link_identities("discord:1", "phone:+15550000001")
    memory.link_identities("console:alice", "discord:2")
    memory.link_identities("phone:+15550000001", "console:alice")  # merges the two people
    everyone = {"discord:1", "phone:+15550000001", "console:alice", "discord:2"}
    for ident in everyone:
        assert memory.identities_of(ident) == everyone
    memory.link_identities("discord:1", "discord:1")
    memory.link_identities("discord:1", "discord:2")  # already linked: no change
    assert memory.identities_of("discord:3") == {"discord:3"}


def test_forget_person_everywhere(memory: Memory) -> None:
    memory.link_identities("discord:1", "phone:+15550000001")
    memory.append(turn(GUILD_ROOM, "discord:1", "alice in guild"))
    memory.append(turn(GUILD_ROOM, "discord:2", "bob in guild", name="Bob"))
    memory.append(turn(GUILD_ROOM, "bot", "reply in guild", role="assistant", name="Wren"))
    memory.append(turn("discord:dm:1", "discord:1", "alice dm"))
    memory.append(turn("discord:dm:1", "bot", "reply in dm", role="assistant", name="Wren"))
    memory.append(turn("sms:+15550000001", "phone:+15550000001", "alice sms", modality=Modality.SMS))
    memory.append(turn("sms:+15550000001", "bot", "reply sms", role="assistant", modality=Modality.SMS))
    memory.append(turn("discord:dm:2", "discord:2", "bob dm", name="Bob"))

    report = memory.forget_person("phone:+15550000001")
    # Counted by kind, never summed: their 3 turns, the agent's 2 replies in their private rooms,
    # and the Discord account that was linked to the phone.
    assert report.counts == {"message": 3, "reply": 2, "linked account": 1}
    assert report.describe() == "3 messages, 2 replies to you, 1 linked account"
    assert [t.text for t in memory.recent(GUILD_ROOM, 10)] == ["bob in guild", "reply in guild"]
    assert memory.recent("discord:dm:1", 10) == []
    assert memory.recent("sms:+15550000001", 10) == []
    assert [t.text for t in memory.recent("discord:dm:2", 10)] == ["bob dm"]
    assert memory.identities_of("discord:1") == {"discord:1"}
    assert memory.forget_person("discord:404").empty


def test_private_rooms() -> None:
    assert private_rooms("discord:123") == {"discord:dm:123"}
    assert private_rooms("phone:+15551234567") == {"sms:+15551234567", "phone:+15551234567"}
    assert private_rooms("console:me") == {"console"}
    assert private_rooms("bot") == set()
    assert private_rooms("discord:notanid") == set()


def test_prune_deletes_only_old_turns(memory: Memory) -> None:
    now = time.time()
    memory.append(turn(GUILD_ROOM, "discord:1", "ancient", at=now - 40 * 86400))
    memory.append(turn(GUILD_ROOM, "discord:1", "recent", at=now - 86400))
    assert memory.prune(0) == 0
    assert memory.prune(30) == 1
    assert [t.text for t in memory.recent(GUILD_ROOM, 10)] == ["recent"]
    assert memory.count() == 1


def test_unlink_separates_a_person_again() -> None:
    from bot.db import Database
    from bot.memory import Memory

    memory = Memory(Database.in_memory())
    memory.link_identities("discord:1", "phone:+15550001111")
    memory.link_identities("discord:1", "console:me")
    assert memory.unlink_identity("phone:+15550001111")
    assert memory.identities_of("discord:1") == {"discord:1", "console:me"}
    assert memory.identities_of("phone:+15550001111") == {"phone:+15550001111"}
    assert memory.unlink_identity("console:me")
    assert memory.identities_of("discord:1") == {"discord:1"}
    assert not memory.unlink_identity("discord:1")
