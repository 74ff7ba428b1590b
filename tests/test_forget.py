"""/forget leaves nothing behind: no row in any table on either backend, no byte in the SQLite files,
opt-outs kept.

A person writes in a guild channel and a DM, is linked to a phone (memory's link and the SMS store's
rows: a link, a pending code, three texts, a rate note), texts from it, chose a language for that
number, opts out of voice and of SMS; then forgets. Every store erases its own rows (bot/store/erase.py).
On SQLite the raw bytes of the database, its -wal and -shm hold none of their words, their number or
their ids afterwards; on PostgreSQL every table it touched was vacuumed.

The SMS rows are written here with the SMS store's own schema (bot/sms/store.py's migrations): the
SMS pipeline moves onto the async store on its own branch.
"""

from __future__ import annotations

import asyncio
import re
import struct
import time
from pathlib import Path

import pytest

from bot.i18n.places import PlaceLanguages
from bot.memory import Memory, Modality, Turn
from bot.privacy import CLEANED_BY_FORGET, NAMES_NO_PERSON, key_path, open_opt_outs
from bot.settings import load_settings
from bot.store.sms import MIGRATIONS as SMS_MIGRATIONS
from bot.store import Database, DatabaseError, SqliteDatabase
from bot.voice.guilds import GuildSettingsStore, OptOutList
from cogs.privacy import forget_message
from tests.backends import store_db  # noqa: F401  (both backends)

ROOT = Path(__file__).resolve().parent.parent
NUMBER = "+15558675309"
OTHER = "+15550001234"
USER_ID = 731945028816273409
NAME = "Zebulon Quartzfeather"
GUILD_ROOM = "discord:1111:2222"
SECRETS = ["unicorn-marmalade-7731", "saffron-pelican-4411", "waiting-walrus-5150"]


def turn(room: str, speaker: str, name: str, text: str, role: str = "user",
         modality: Modality = Modality.TEXT) -> Turn:
    return Turn(room=room, speaker_id=speaker, speaker_name=name, role=role, text=text, modality=modality,
                created_at=time.time())


def needles() -> dict[str, bytes]:
    out = {f"text {s}": s.encode() for s in SECRETS}
    out |= {"number": NUMBER.encode(), "national number": NUMBER[2:].encode(), "name": NAME.encode(),
            "discord id": str(USER_ID).encode(), "discord id (int64)": struct.pack(">q", USER_ID)}
    out["utf-16 name"] = NAME.encode("utf-16-le")
    return out


def raw_hits(db: Database) -> dict[str, list[str]]:
    path = getattr(db, "path", None)
    assert path is not None
    hits: dict[str, list[str]] = {}
    for suffix in ("", "-wal", "-shm"):
        file = Path(str(path) + suffix)
        if not file.exists():
            continue
        data = file.read_bytes()
        found = [label for label, needle in needles().items() if needle in data]
        if found:
            hits[file.name] = found
    return hits


async def sms_rows(db: Database) -> None:
    """What the SMS store holds for the person (and for someone else) after a LINK and two texts."""
    await db.migrate("sms", SMS_MIGRATIONS)
    now = time.time()
    for i, (body, state) in enumerate([("LINK 123456", "linked"), (f"my secret is {SECRETS[1]}", "answered"),
                                       (f"and {SECRETS[2]}", "replying")]):
        await db.execute("INSERT INTO sms_messages (message_sid, from_number, received_at, state, body, updated_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (f"SM{i:032d}", NUMBER, now, state, body, now))
    await db.execute("INSERT INTO sms_messages (message_sid, from_number, received_at, state, body, updated_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)", ("SM" + "9" * 32, OTHER, now, "keyword:stop", "STOP", now))
    await db.execute("INSERT INTO sms_links (number, identity, display_name, linked_at) VALUES (?, ?, ?, ?)",
                     (NUMBER, f"discord:{USER_ID}", NAME, now))
    await db.execute("INSERT INTO sms_link_codes (identity, code_hash, display_name, expires_at) VALUES (?, ?, ?, ?)",
                     (f"discord:{USER_ID}", "f" * 64, NAME, now + 600))
    await db.execute("INSERT INTO sms_rate_notes (number, noted_at) VALUES (?, ?)", (NUMBER, now))


async def test_forget_removes_every_row_of_the_person_and_keeps_opt_outs(store_db: Database) -> None:  # noqa: F811
    db = store_db
    settings = load_settings({}, env_file=None)
    memory = await Memory.open(db)
    languages = await PlaceLanguages.open(db, "en")
    await GuildSettingsStore.open(db, settings)
    optouts = await OptOutList.open(db)
    opt_out_store = await open_opt_outs(db)
    me = f"discord:{USER_ID}"
    try:
        memory.append(turn(GUILD_ROOM, me, NAME, f"in the guild: {SECRETS[0]}"))
        memory.append(turn(GUILD_ROOM, "agent", "Wren", f"Good point, {NAME}!", role="assistant"))
        memory.append(turn(GUILD_ROOM, "discord:42", "Bob", "bob says hi"))
        memory.append(turn(GUILD_ROOM, "agent", "Wren", "Hi Bob.", role="assistant"))
        memory.append(turn(f"discord:dm:{USER_ID}", me, NAME, "a private word"))
        memory.append(turn(f"discord:dm:{USER_ID}", "agent", "Wren", f"Of course, {NAME}.", role="assistant"))
        await memory.link_identities(me, f"phone:{NUMBER}")
        memory.append(turn(f"sms:{NUMBER}", f"phone:{NUMBER}", NAME, f"my secret is {SECRETS[1]}",
                           modality=Modality.SMS))
        memory.append(turn(f"sms:{NUMBER}", "agent", "Wren", f"Noted, {NAME}.", role="assistant",
                           modality=Modality.SMS))
        memory.append(turn(f"sms:{NUMBER}", f"phone:{NUMBER}", NAME, f"and {SECRETS[2]}", modality=Modality.SMS))
        await sms_rows(db)
        await languages.set(f"phone:{NUMBER}", "de")
        await languages.set("guild:1111", "fr")  # a guild's row names no one: it stays
        assert await optouts.opt_out(USER_ID)
        await opt_out_store.add(f"phone:{NUMBER}", "sms", "keyword")
        await opt_out_store.add(f"phone:{OTHER}", "sms", "keyword")  # someone else's opt-out stays too
        await memory.flush()
        if db.dialect == "sqlite":
            assert raw_hits(db)  # the test can see the bytes it looks for

        report = await memory.forget_person(me)
        # Counted by kind: their 5 turns (guild, DM, 3 texts... one a reply), the agent's replies to them
        # (guild, DM, SMS), the linked phone, and the SMS store's rows for that number.
        assert report.counts == {"message": 4, "reply": 3, "linked phone": 1, "sms record": 3, "link code": 1,
                                 "bookkeeping": 1}, report.counts
        assert forget_message(report).startswith("Forgotten: I erased 4 messages, 3 replies to you, 1 linked phone, "
                                                 "3 SMS records, 1 pending link code")
        assert {"turns", "identities", "people", "sms_messages", "language_places"} <= report.touched

        # No row anywhere names them.
        for table in sorted(await db.tables()):
            for row in await db.query(f'SELECT * FROM "{table}"'):
                flat = " ".join(str(v) for v in tuple(row))
                assert str(USER_ID) not in flat and NUMBER not in flat and NAME not in flat, (table, flat)
                assert not any(s in flat for s in SECRETS), (table, flat)
        assert [t.text for t in await memory.recent(GUILD_ROOM, 10)] == ["bob says hi", "Hi Bob."]
        assert languages.store.get(f"phone:{NUMBER}") == (None, None)  # the cache forgot it too
        assert languages.store.get("guild:1111") == ("fr", None)
        assert await db.scalar("SELECT COUNT(*) FROM sms_messages") == 1  # the other number's
        if db.dialect == "sqlite":
            assert raw_hits(db) == {}  # and no byte on disk
        else:
            # VACUUM ran on the tables it touched: PostgreSQL records when (its statistics may lag a moment).
            wanted = {"turns", "identities", "people", "sms_messages", "language_places"}
            deadline = time.monotonic() + 20
            while True:
                vacuumed = {r[0] for r in await db.query(
                    "SELECT relname FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL")}
                if wanted <= vacuumed or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)  # polling the server's statistics; the deadline only guards a failure
            assert wanted <= vacuumed, vacuumed

        # The opt-outs hold after the forget, also for a fresh reader of the same database.
        assert optouts.is_opted_out(USER_ID)
        assert await opt_out_store.has(f"phone:{NUMBER}") and await opt_out_store.has(f"phone:{OTHER}")
        assert (await OptOutList.open(db)).is_opted_out(USER_ID)
    finally:
        await memory.aclose()
        await languages.aclose()
    if db.dialect == "sqlite":
        key = key_path(db)
        assert key is not None and key.read_bytes() not in db.path.read_bytes()  # type: ignore[attr-defined]


async def test_forget_reports_kinds_not_a_sum(store_db: Database) -> None:  # noqa: F811
    memory = await Memory.open(store_db)
    try:
        memory.append(turn("discord:dm:5", "discord:5", "Ann", "one message"))
        await store_db.migrate("sms", SMS_MIGRATIONS)
        await store_db.execute("INSERT INTO sms_links (number, identity, display_name, linked_at) VALUES (?, ?, ?, ?)",
                               ("+15550102030", "discord:5", "Ann", time.time()))
        await memory.link_identities("discord:5", "phone:+15550102030")
        report = await memory.forget_person("discord:5")
        assert report.describe() == "1 message, 1 linked phone"
        assert forget_message(report).startswith("Forgotten: I erased 1 message, 1 linked phone ")
    finally:
        await memory.aclose()


async def test_raw_opt_outs_from_an_earlier_version_are_keyed_at_start_and_survive_forget(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    db = SqliteDatabase(path)
    # What version 1 wrote: raw ids and numbers.
    await db.migrate("guilds", ["CREATE TABLE voice_guild_settings (guild_id INTEGER PRIMARY KEY, mode TEXT, "
                                "voice_id TEXT, mirror_transcripts INTEGER NOT NULL DEFAULT 0, idle_leave_seconds "
                                "INTEGER, record_audio INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL); "
                                "CREATE TABLE voice_opt_outs (user_id INTEGER PRIMARY KEY, created_at REAL NOT NULL)"])
    await db.execute("INSERT INTO voice_opt_outs VALUES (?, ?)", (USER_ID, time.time()))
    await db.migrate("sms", [SMS_MIGRATIONS[0]["sqlite"] + "; CREATE TABLE sms_opt_outs (number TEXT PRIMARY KEY, "
                             "opted_out_at REAL NOT NULL, source TEXT NOT NULL)"])
    await db.execute("INSERT INTO sms_opt_outs VALUES (?, ?, 'keyword')", (NUMBER, time.time()))
    await db.close()

    db = SqliteDatabase(path)
    optouts = await OptOutList.open(db)
    assert optouts.is_opted_out(USER_ID) and await (await open_opt_outs(db)).has(f"phone:{NUMBER}")
    assert "sms_opt_outs" not in await db.tables() and await db.scalar("SELECT COUNT(*) FROM voice_opt_outs") == 0
    data = path.read_bytes() + (Path(str(path) + "-wal").read_bytes() if Path(str(path) + "-wal").exists() else b"")
    assert NUMBER.encode() not in data and struct.pack(">q", USER_ID) not in data  # converted, and scrubbed
    memory = await Memory.open(db)
    await memory.forget_person(f"discord:{USER_ID}")
    await memory.aclose()
    assert (await OptOutList.open(db)).is_opted_out(USER_ID)
    assert str(USER_ID).encode() not in path.read_bytes()
    assert struct.pack(">q", USER_ID) not in path.read_bytes()
    assert NUMBER.encode() not in path.read_bytes()
    await db.close()


async def test_every_table_is_classified_for_forget(store_db: Database) -> None:  # noqa: F811
    """A new table must say whether forget cleans it or why it names no person."""
    db = store_db
    memory = await Memory.open(db)
    await db.migrate("sms", SMS_MIGRATIONS)
    await GuildSettingsStore.open(db, load_settings({}, env_file=None))
    await OptOutList.open(db)
    languages = await PlaceLanguages.open(db, "en")
    await memory.append_now(turn("r", "s", "n", "t"))  # SQLite: creates sqlite_sequence
    await memory.aclose()
    await languages.aclose()
    assert not set(CLEANED_BY_FORGET) & set(NAMES_NO_PERSON)
    known = set(CLEANED_BY_FORGET) | set(NAMES_NO_PERSON)
    live = await db.tables()
    assert live - known == set(), f"classify these tables in their store (bot/store/*): {sorted(live - known)}"
    # Tables created by code that this test did not instantiate are found in the source.
    declared: set[str] = set()
    for path in [*ROOT.glob("bot/**/*.py"), *ROOT.glob("cogs/**/*.py"), *ROOT.glob("audio/**/*.py")]:
        declared |= set(re.findall(r"CREATE TABLE(?: IF NOT EXISTS)?\s+([A-Za-z_][A-Za-z0-9_]*)",
                                   path.read_text(encoding="utf-8")))
    assert declared - known == set(), f"classify these tables in their store (bot/store/*): {sorted(declared - known)}"


async def test_a_damaged_opt_out_key_is_one_clear_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "voicebot.sqlite3"
    db = SqliteDatabase(path)
    (tmp_path / "voicebot.sqlite3.key").write_bytes(b"not a key")
    with pytest.raises(DatabaseError) as caught:
        await open_opt_outs(db)
    message = str(caught.value)
    assert "voicebot.sqlite3.key" in message and "9 bytes, expected 32" in message and "\n" not in message
    assert "restore it from a backup" in message
    await db.close()


async def test_a_lost_key_is_reported_and_a_new_one_made(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "voicebot.sqlite3"
    db = SqliteDatabase(path)
    await (await open_opt_outs(db)).add(f"phone:{NUMBER}", "sms", "keyword")
    await db.close()
    (tmp_path / "voicebot.sqlite3.key").unlink()
    db = SqliteDatabase(path)
    assert not await (await open_opt_outs(db)).has(f"phone:{NUMBER}")  # unrecognisable without the key: said
    assert any("opt-out key" in r.getMessage() and "1 opt-outs" in r.getMessage() for r in caplog.records)
    await db.close()
