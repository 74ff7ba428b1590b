"""Where the opt-out key comes from: beside the SQLite file (the default), PRIVACY_KEY_FILE, or
PRIVACY_KEY; and why PostgreSQL needs one of the two (the bot refuses to start without)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.privacy import KeySource, _load_key, key_path, open_opt_outs, use_key_source
from bot.store import DatabaseError, SqliteDatabase
from bot.settings import SettingsError, load_settings
from tests.cli_runs import ROOT


@pytest.fixture(autouse=True)
def _default_source() -> object:
    use_key_source(KeySource())
    yield
    use_key_source(KeySource())


def _opt_out(path: Path, identity: str) -> None:
    async def run() -> None:
        db = SqliteDatabase(path)
        try:
            await (await open_opt_outs(db)).add(identity, "sms", "STOP")
        finally:
            await db.close()
    asyncio.run(run())


def _opted_out(path: Path, identity: str) -> bool:
    async def run() -> bool:
        db = SqliteDatabase(path)
        try:
            return await (await open_opt_outs(db)).has(identity)
        finally:
            await db.close()
    return asyncio.run(run())


def test_default_key_sits_beside_the_sqlite_file(tmp_path: Path) -> None:
    _opt_out(tmp_path / "voicebot.sqlite3", "phone:+15550001111")
    key = tmp_path / "voicebot.sqlite3.key"
    assert len(key.read_bytes()) == 32 and (key.stat().st_mode & 0o777) == 0o600
    assert _opted_out(tmp_path / "voicebot.sqlite3", "phone:+15550001111")


def test_key_file_setting_travels_with_a_moved_database(tmp_path: Path) -> None:
    key_file = tmp_path / "secrets" / "optout.key"
    key_file.parent.mkdir()
    settings = load_settings({"PRIVACY_KEY_FILE": str(key_file)}, env_file=None)
    use_key_source(KeySource.from_settings(settings))
    first = tmp_path / "a" / "voicebot.sqlite3"
    _opt_out(first, "phone:+15550002222")
    assert key_file.is_file() and not first.with_name("voicebot.sqlite3.key").exists()

    moved = tmp_path / "b" / "voicebot.sqlite3"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    assert _opted_out(moved, "phone:+15550002222")  # same key file: the opt-out is recognised
    use_key_source(KeySource())
    assert not _opted_out(moved, "phone:+15550002222")  # what the setting prevents: a fresh key beside it


def test_key_setting_is_the_key_itself_and_no_file_is_made(tmp_path: Path) -> None:
    raw = bytes(range(32))
    for text in (raw.hex(), base64.b64encode(raw).decode()):
        settings = load_settings({"PRIVACY_KEY": text}, env_file=None)
        use_key_source(KeySource.from_settings(settings))
        db = SqliteDatabase(tmp_path / "voicebot.sqlite3")

        async def subject(db: SqliteDatabase = db) -> str:
            try:
                return (await open_opt_outs(db)).subject("discord:123456789012345678")
            finally:
                await db.close()
        expected = hmac.new(raw, b"discord:123456789012345678", hashlib.sha256).hexdigest()
        assert asyncio.run(subject()) == expected
        assert key_path(db) is None
        assert not (tmp_path / "voicebot.sqlite3.key").exists()
    assert "000102" not in repr(KeySource.from_settings(settings))


def test_postgres_without_a_key_setting_is_refused(pg_url: str, tmp_path: Path) -> None:
    from bot.store.database import PostgresDatabase

    async def load(source: KeySource) -> tuple[bytes, bool]:
        db = await PostgresDatabase.connect(pg_url)
        try:
            return _load_key(db, source)
        finally:
            await db.close()

    with pytest.raises(DatabaseError, match="PRIVACY_KEY_FILE.*PRIVACY_KEY"):
        asyncio.run(load(KeySource()))
    key_file = tmp_path / "shared.key"
    made, created = asyncio.run(load(KeySource(file=key_file)))
    assert created and key_file.read_bytes() == made
    assert asyncio.run(load(KeySource(file=key_file))) == (made, False)  # a second process reads the same key
    assert asyncio.run(load(KeySource(key=b"k" * 32))) == (b"k" * 32, False)


def test_a_key_file_of_the_wrong_size_names_the_setting(tmp_path: Path) -> None:
    bad = tmp_path / "optout.key"
    bad.write_bytes(b"short")
    with pytest.raises(DatabaseError, match="PRIVACY_KEY_FILE .*optout.key.* is not a voicebot opt-out key"):
        _load_key(SqliteDatabase.in_memory(), KeySource(file=bad))


def test_settings_rules() -> None:
    url = "postgresql://bot:pw@127.0.0.1:5432/voicebot"
    with pytest.raises(SettingsError) as missing:
        load_settings({"DATABASE_URL": url}, env_file=None)
    assert len(missing.value.problems) == 1
    assert "PRIVACY_KEY_FILE" in missing.value.problems[0] and "PRIVACY_KEY " in missing.value.problems[0]
    with pytest.raises(SettingsError, match="both set"):
        load_settings({"PRIVACY_KEY_FILE": "/k", "PRIVACY_KEY": "ab" * 32}, env_file=None)
    with pytest.raises(SettingsError) as bad:
        load_settings({"PRIVACY_KEY": "c0ffee" * 5}, env_file=None)
    assert "c0ffee" not in str(bad.value) and "PRIVACY_KEY: expected 32 bytes" in str(bad.value)
    assert load_settings({"DATABASE_URL": url, "PRIVACY_KEY": "ab" * 32}, env_file=None).database_url == url
    assert load_settings({"DATABASE_URL": url, "PRIVACY_KEY_FILE": "/k"}, env_file=None).privacy_key_file == Path("/k")


def test_the_bot_refuses_to_start_on_postgres_without_a_key(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
           "DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": "postgresql://bot:pw-not-shown@127.0.0.1:5432/x"}
    result = subprocess.run([sys.executable, "-m", "bot"], cwd=tmp_path, env=env, text=True, capture_output=True,
                            timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PRIVACY_KEY_FILE" in lines[0] and "PRIVACY_KEY" in lines[0], result.stderr
    assert "pw-not-shown" not in result.stderr + result.stdout
