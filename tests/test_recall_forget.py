"""/forget and retention reach the recall index: rows, FTS5 shadow tables and the bytes on disk."""

from __future__ import annotations

import time
from pathlib import Path

from bot.store import SqliteDatabase as Database
from bot.memory import Memory, Modality, Turn
from bot.recall import Recall, RecallConfig
from bot.store import SqliteDatabase

ME = "discord:4242"
SECRETS = ("quetzalcoatl", "xylophonist", "marmalade")
GUILD = "discord:1:2"


def turn(room: str, who: str, name: str, text: str, *, role: str = "user", age_days: float = 0.0) -> Turn:
    return Turn(room=room, speaker_id=who, speaker_name=name, role=role, text=text, modality=Modality.TEXT,
                created_at=time.time() - age_days * 86400)


def on_disk(path: Path) -> list[str]:
    found = []
    for suffix in ("", "-wal", "-shm"):
        part = Path(str(path) + suffix)
        if part.exists():
            data = part.read_bytes()
            found += [f"{part.name}:{s}" for s in SECRETS if s.encode() in data]
    return found


async def test_forget_removes_index_rows_and_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "voicebot.sqlite3"
    db = Database(path)
    memory = (await Memory.open(db))
    store = db  # one database, as the bot runs: the index is on it too
    recall = Recall(store)
    memory.on_stored.append(recall.on_stored)
    memory.append(turn(GUILD, ME, "Zed", f"my pet snake is called {SECRETS[0]}"))
    memory.append(turn(GUILD, "agent", "Wren", f"What a name, {SECRETS[1]} fits too!", role="assistant"))
    memory.append(turn(GUILD, "discord:7", "Bob", "my pet snake is called Bob Junior"))
    memory.append(turn("discord:dm:4242", ME, "Zed", f"keep this private: {SECRETS[2]}"))
    await memory.flush()  # the index takes turns once they are stored
    assert len(await recall.search("pet snake", asker=ME, place=GUILD)) == 3
    assert len(await recall.search("private", asker=ME, place="discord:dm:4242")) == 1
    await store.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the index's pages are in the main file now
    assert on_disk(path)  # the test can see what it looks for

    (await memory.forget_person(ME))

    assert [h.speaker_name for h in await recall.search("pet snake", asker="discord:7", place=GUILD)] == ["Bob"]
    assert await recall.search("private", asker=ME, place="discord:dm:4242") == []
    rows = await store.query("SELECT text FROM recall_docs")
    assert [r["text"] for r in rows] == ["my pet snake is called Bob Junior"]
    assert on_disk(path) == []
    await memory.aclose()
    await db.close()


async def test_retention_prunes_the_index_with_the_transcripts() -> None:
    store = SqliteDatabase(":memory:")
    now = time.time()
    recall = Recall(store, RecallConfig(retention_days=30), clock=lambda: now)
    await recall.add_turn(turn(GUILD, ME, "Zed", "the old harbour story", age_days=40), turn_id=1)
    await recall.add_turn(turn(GUILD, ME, "Zed", "the new harbour story", age_days=1), turn_id=2)
    recall.on_stored(turn(GUILD, ME, "Zed", "harbour again", age_days=0), 3)  # the hook runs retention hourly
    await recall.flush()
    assert sorted(h.text for h in await recall.search("harbour", asker=ME, place=GUILD)) == [
        "harbour again", "the new harbour story"]
    await store.close()
