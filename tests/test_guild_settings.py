"""Per-guild voice settings and the opt-out list, on a real (in-memory) SQLite database."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bot.db import Database
from bot.settings import Settings
from bot.voice.guilds import GuildSettingsError, GuildSettingsStore, OptOutList

GUILD = 200000000000000001
OTHER_GUILD = 200000000000000002
ALICE = 400000000000000001


def test_defaults_come_from_settings_until_a_guild_chooses() -> None:
    db = Database.in_memory()
    store = GuildSettingsStore(db, Settings(voice_mode="always", voice_idle_leave_seconds=120))
    gs = store.get(GUILD)
    assert (gs.mode, gs.voice_id, gs.mirror_transcripts, gs.idle_leave_seconds, gs.record_audio) == \
        ("always", None, False, 120, False)
    store.update(GUILD, mode="push-to-talk", voice_id="voice-123", mirror_transcripts=True)
    gs = store.get(GUILD)
    assert (gs.mode, gs.voice_id, gs.mirror_transcripts, gs.idle_leave_seconds) == \
        ("push-to-talk", "voice-123", True, 120)
    assert store.get(OTHER_GUILD).mode == "always"  # one guild's choice stays in that guild
    # None goes back to the default, which follows the bot's settings
    store.update(GUILD, mode=None, voice_id=None)
    assert store.get(GUILD).mode == "always" and store.get(GUILD).voice_id is None


def test_settings_persist_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    db = Database(path)
    GuildSettingsStore(db, Settings()).update(GUILD, idle_leave_seconds=0, record_audio=True)
    OptOutList(db).opt_out(ALICE)
    db.close()
    db = Database(path)
    gs = GuildSettingsStore(db, Settings()).get(GUILD)
    assert gs.idle_leave_seconds == 0 and gs.record_audio
    assert OptOutList(db).is_opted_out(ALICE)
    db.close()


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
def test_bad_values_are_refused_and_nothing_is_stored(changes: dict[str, object]) -> None:
    store = GuildSettingsStore(Database.in_memory(), Settings())
    with pytest.raises(GuildSettingsError):
        store.update(GUILD, **({"mirror_transcripts": True, "record_audio": True} | changes))
    gs = store.get(GUILD)
    assert gs.mirror_transcripts is False and gs.record_audio is False


def test_other_bots_are_ignored_until_a_guild_includes_them(tmp_path: Path) -> None:
    """A database from before the setting existed gains it, off, with every stored choice kept."""
    from bot.voice.guilds import _MIGRATIONS

    path = tmp_path / "bot.sqlite3"
    db = Database(path)
    db.migrate(GuildSettingsStore.COMPONENT, _MIGRATIONS[:1])
    db.execute("INSERT INTO voice_guild_settings (guild_id, mode, updated_at) VALUES (?, 'always', 0)", (GUILD,))
    db.close()
    db = Database(path)
    store = GuildSettingsStore(db, Settings())
    gs = store.get(GUILD)
    assert gs.mode == "always" and gs.include_bots is False and store.get(OTHER_GUILD).include_bots is False
    assert store.update(GUILD, include_bots=True).include_bots is True
    db.close()
    assert GuildSettingsStore(Database(path), Settings()).get(GUILD).include_bots is True


def test_recording_needs_both_the_admin_and_the_operator() -> None:
    db = Database.in_memory()
    for operator, admin, expected in [(False, False, False), (False, True, False), (True, False, False),
                                      (True, True, True)]:
        settings = Settings(record_audio=operator)
        gs = GuildSettingsStore(db, settings).update(GUILD, record_audio=admin)
        assert gs.recording_allowed(settings) is expected


def test_opt_outs_are_global_and_reported_once() -> None:
    db = Database.in_memory()
    optouts = OptOutList(db)
    assert optouts.accepts(ALICE)
    assert optouts.opt_out(ALICE) is True
    assert optouts.opt_out(ALICE) is False  # already
    assert not optouts.accepts(ALICE) and optouts.is_opted_out(ALICE)
    assert optouts.user_ids == frozenset({ALICE})
    assert optouts.opt_in(ALICE) is True
    assert optouts.opt_in(ALICE) is False
    assert optouts.accepts(ALICE)


def test_the_receive_filter_can_be_read_from_another_thread() -> None:
    # accept_user runs on discord.py's socket thread for every packet: no database, no lock.
    db = Database.in_memory()
    optouts = OptOutList(db)
    optouts.opt_out(ALICE)
    seen: list[bool] = []
    worker = threading.Thread(target=lambda: seen.extend(optouts.accepts(u) for u in (ALICE, ALICE + 1)))
    worker.start()
    worker.join(timeout=10)
    assert seen == [False, True]


def test_reset_forgets_a_guild() -> None:
    store = GuildSettingsStore(Database.in_memory(), Settings())
    store.update(GUILD, mode="always")
    store.reset(GUILD)
    assert store.get(GUILD).mode == Settings().voice_mode
