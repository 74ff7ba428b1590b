"""Per-guild voice settings and the opt-out list, on both backends; caches kept current across processes."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from bot.i18n.places import PlaceLanguages
from bot.settings import Settings
from bot.store import Database, PostgresDatabase, SqliteDatabase
from bot.store.guilds import MIGRATIONS
from bot.voice.guilds import GuildSettingsError, GuildSettingsStore, OptOutList
from tests.backends import store_db  # noqa: F401  (both backends)

GUILD = 200000000000000001
OTHER_GUILD = 200000000000000002
ALICE = 400000000000000001
DEADLINE = 10.0


async def test_defaults_come_from_settings_until_a_guild_chooses(store_db: Database) -> None:  # noqa: F811
    store = await GuildSettingsStore.open(store_db, Settings(voice_mode="always", voice_idle_leave_seconds=120))
    gs = store.get(GUILD)
    assert (gs.mode, gs.voice_id, gs.mirror_transcripts, gs.idle_leave_seconds, gs.record_audio) == \
        ("always", None, False, 120, False)
    await store.update(GUILD, mode="push-to-talk", voice_id="voice-123", mirror_transcripts=True)
    gs = store.get(GUILD)
    assert (gs.mode, gs.voice_id, gs.mirror_transcripts, gs.idle_leave_seconds) == \
        ("push-to-talk", "voice-123", True, 120)
    assert store.get(OTHER_GUILD).mode == "always"  # one guild's choice stays in that guild
    # None goes back to the default, which follows the bot's settings
    await store.update(GUILD, mode=None, voice_id=None)
    assert store.get(GUILD).mode == "always" and store.get(GUILD).voice_id is None
    assert await store.set_channel(GUILD, "allowed", 300000000000000001, True) == {300000000000000001}
    assert not store.may_join(GUILD, 300000000000000002) and store.may_join(GUILD, 300000000000000001)


async def test_settings_persist_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    db = SqliteDatabase(path)
    await (await GuildSettingsStore.open(db, Settings())).update(GUILD, idle_leave_seconds=0, record_audio=True)
    await (await OptOutList.open(db)).opt_out(ALICE)
    await db.close()
    db = SqliteDatabase(path)
    gs = (await GuildSettingsStore.open(db, Settings())).get(GUILD)
    assert gs.idle_leave_seconds == 0 and gs.record_audio
    assert (await OptOutList.open(db)).is_opted_out(ALICE)
    await db.close()


@pytest.mark.parametrize("changes", [
    {"mode": "sometimes"},
    {"voice_id": "has space"},
    {"voice_id": ""},
    {"voice_id": "x" * 129},
    {"idle_leave_seconds": -1},
    {"idle_leave_seconds": 86_401},
    {"idle_leave_seconds": True},
    {"idle_leave_seconds": "60"},
    {"mirror_transcripts": "yes"},
    {"record_audio": 1},
    {"include_bots": "no"},
    {"guild_id": 5},
    {"colour": "blue"},
])
async def test_bad_values_are_refused_and_nothing_is_stored(changes: dict[str, object]) -> None:
    db = SqliteDatabase.in_memory()
    store = await GuildSettingsStore.open(db, Settings())
    with pytest.raises(GuildSettingsError):
        await store.update(GUILD, **({"mirror_transcripts": True, "record_audio": True} | changes))
    gs = store.get(GUILD)
    assert gs.mirror_transcripts is False and gs.record_audio is False
    assert await db.scalar("SELECT COUNT(*) FROM voice_guild_settings") == 0
    await db.close()


async def test_other_bots_are_ignored_until_a_guild_includes_them(tmp_path: Path) -> None:
    """A database from before the setting existed gains it, off, with every stored choice kept."""
    path = tmp_path / "bot.sqlite3"
    db = SqliteDatabase(path)
    await db.migrate(GuildSettingsStore.COMPONENT, MIGRATIONS[:1])
    await db.execute("INSERT INTO voice_guild_settings (guild_id, mode, updated_at) VALUES (?, 'always', 0)", (GUILD,))
    await db.close()
    db = SqliteDatabase(path)
    store = await GuildSettingsStore.open(db, Settings())
    gs = store.get(GUILD)
    assert gs.mode == "always" and gs.include_bots is False and store.get(OTHER_GUILD).include_bots is False
    assert (await store.update(GUILD, include_bots=True)).include_bots is True
    await db.close()
    db = SqliteDatabase(path)
    assert (await GuildSettingsStore.open(db, Settings())).get(GUILD).include_bots is True
    await db.close()


async def test_recording_needs_both_the_admin_and_the_operator(store_db: Database) -> None:  # noqa: F811
    for operator, admin, expected in [(False, False, False), (False, True, False), (True, False, False),
                                      (True, True, True)]:
        settings = Settings(record_audio=operator)
        gs = await (await GuildSettingsStore.open(store_db, settings)).update(GUILD, record_audio=admin)
        assert gs.recording_allowed(settings) is expected


async def test_opt_outs_are_global_and_reported_once(store_db: Database) -> None:  # noqa: F811
    optouts = await OptOutList.open(store_db)
    assert optouts.accepts(ALICE)
    assert await optouts.opt_out(ALICE) is True
    assert await optouts.opt_out(ALICE) is False  # already
    assert not optouts.accepts(ALICE) and optouts.is_opted_out(ALICE)
    assert optouts.user_ids == frozenset({ALICE})
    assert await optouts.opt_in(ALICE) is True
    assert await optouts.opt_in(ALICE) is False
    assert optouts.accepts(ALICE)


async def test_the_receive_filter_can_be_read_from_another_thread() -> None:
    # accept_user runs on discord.py's socket thread for every packet: no database, no lock.
    db = SqliteDatabase.in_memory()
    optouts = await OptOutList.open(db)
    await optouts.opt_out(ALICE)
    seen: list[bool] = []
    worker = threading.Thread(target=lambda: seen.extend(optouts.accepts(u) for u in (ALICE, ALICE + 1)))
    worker.start()
    worker.join(timeout=10)
    assert seen == [False, True]
    await db.close()


async def test_reset_forgets_a_guild(store_db: Database) -> None:  # noqa: F811
    store = await GuildSettingsStore.open(store_db, Settings())
    await store.update(GUILD, mode="always")
    await store.set_channel(GUILD, "auto_join", 5, True)
    await store.reset(GUILD)
    assert store.get(GUILD).mode == Settings().voice_mode and store.channels(GUILD, "auto_join") == frozenset()


async def _until(predicate: object, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"not within {DEADLINE} s: {what}")
        await asyncio.sleep(0.01)  # polling a condition; the deadline only guards a failure


async def test_a_change_in_one_process_holds_in_another_within_a_second(pg_url: str) -> None:
    """Two Database objects (two pools, as two processes have) on one PostgreSQL: LISTEN/NOTIFY."""
    one, two = await PostgresDatabase.connect(pg_url), await PostgresDatabase.connect(pg_url)
    try:
        guilds_one = await GuildSettingsStore.open(one, Settings())
        guilds_two = await GuildSettingsStore.open(two, Settings())
        langs_one = await PlaceLanguages.open(one, "en")
        langs_two = await PlaceLanguages.open(two, "en")
        assert langs_two.mode(f"guild:{GUILD}") == "en"

        loop = asyncio.get_running_loop()
        started = loop.time()
        await langs_one.set(f"guild:{GUILD}", "de")  # /language de through process one
        await _until(lambda: langs_two.mode(f"guild:{GUILD}") == "de", "the language in process two")
        assert loop.time() - started < 1.0  # the promise: within a second
        await guilds_one.update(GUILD, mode="push-to-talk")
        await guilds_one.set_channel(GUILD, "auto_join", 7, True)
        await _until(lambda: guilds_two.get(GUILD).mode == "push-to-talk"
                     and guilds_two.channels(GUILD, "auto_join") == {7}, "the guild settings in process two")
        await guilds_two.reset(GUILD)  # and back the other way
        await _until(lambda: guilds_one.get(GUILD).mode == Settings().voice_mode, "the reset in process one")

        # The listening connection drops (a restart, a network cut): it reconnects and reloads,
        # so a change made while it was away still arrives.
        from bot.store.notify import listener

        watch = listener(two)
        await one.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                          " AND query LIKE 'LISTEN%'")
        await _until(lambda: watch.reconnects >= 1, "the listener reconnecting")
        await langs_one.set(f"guild:{GUILD}", "fr")
        await _until(lambda: langs_two.mode(f"guild:{GUILD}") == "fr", "a change after the reconnect")
        await langs_one.aclose()
        await langs_two.aclose()
    finally:
        await one.close()
        await two.close()
