"""``voicebot db copy`` and ``db status`` as real processes: SQLite → PostgreSQL → SQLite with every table
equal, refusals (a non-empty target, an interrupted copy, a newer schema, the same database, an
unreachable target, a missing folder), ``--force``, and the sequences a copy leaves behind.

The processes run the real ``voicebot`` entry point (``bot.cli.main``) with the test components of
tests/store_components.py registered as well as every store's own (filled by tests/store_fill.py from
their declarations, so a component registered later is covered with no edit here); the test tables carry the column
kinds that differ between the two backends (identity and serial ids, booleans, blobs, big ids,
floats, text with quotes and newlines, a table without a primary key holding duplicate rows).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tests.store_components as components
from bot.store.copy import DERIVED, MARKER_TABLE, table_checksum
from bot.store.database import PostgresDatabase, SqliteDatabase, open_database
from bot.store.registry import all_components, component_tables, migrate_all
from tests.cli_runs import ROOT
from tests.store_fill import fill_every_table

ENTRY = "import sys, tests.store_components; from bot.cli import main; sys.exit(main())"


def voicebot(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], cwd=home, env=_env(home, env), text=True,
                          capture_output=True, timeout=timeout)


def _env(home: Path, extra: dict[str, str] | None) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": str(home),
            "PYTHONDONTWRITEBYTECODE": "1", "DATA_DIR": str(home / "data"), **(extra or {})}


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


async def _make_sqlite(path: Path, turns: int) -> None:
    db = SqliteDatabase(path)
    try:
        await migrate_all(db)
        await components.fill(db, turns)
        await fill_every_table(db)  # every other registered store's tables, from their declarations
    finally:
        await db.close()


async def _checksums(where: str | Path) -> dict[str, tuple[int, int]]:
    """Every table of every registered component the database holds: (rows, checksum)."""
    db = await open_database(str(where))
    try:
        present = await db.tables()
        wanted = ({t for name in all_components() for t in component_tables(name)[-1]} & present) - DERIVED
        return {t: (c.rows, c.checksum) for t in sorted(wanted) for c in [await table_checksum(db, t)]}
    finally:
        await db.close()


def _one_line(result: subprocess.CompletedProcess[str], prog: str) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(prog) and "settings from" not in ln]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return tmp_path


def test_round_trip_sqlite_postgres_sqlite_every_table_equal(home: Path, pg_url: str) -> None:
    source = home / "data" / "voicebot.sqlite3"
    run(_make_sqlite(source, 1200))
    key = bytes(range(32))
    source.with_name("voicebot.sqlite3.key").write_bytes(key)

    there = voicebot(home, "db", "copy", "--to", pg_url)
    assert there.returncode == 0, there.stderr
    assert "verified" in there.stdout and "ct_turns" in there.stdout
    assert "PRIVACY_KEY_FILE=" in there.stdout  # the key stays outside PostgreSQL, and the operator is told where
    assert "copying ct_turns" in there.stderr  # the progress (stderr is not a terminal: lines)

    back = home / "back" / "voicebot.sqlite3"
    back.parent.mkdir()
    # The bot on PostgreSQL was told where the key is (PRIVACY_KEY_FILE); copying back carries it beside the file.
    again = voicebot(home, "db", "copy", "--from", pg_url, "--to", str(back),
                     env={"PRIVACY_KEY_FILE": str(source.with_name("voicebot.sqlite3.key"))})
    assert again.returncode == 0, again.stderr

    original, on_pg, returned = run(_checksums(source)), run(_checksums(pg_url)), run(_checksums(back))
    assert set(components.TABLES) <= set(original)
    empty = [t for t, (rows, _) in original.items() if rows == 0]
    assert not empty, f"tests/store_fill.py could not fill {empty}: the round trip would not test them"
    assert original == on_pg == returned

    # The key travelled beside the copied file (never inside the database).
    assert back.with_name("voicebot.sqlite3.key").read_bytes() == key

    async def numbering() -> tuple[int, int, int]:
        pg = await PostgresDatabase.connect(pg_url)
        sq = SqliteDatabase(back)
        try:
            top = int(await pg.scalar("SELECT MAX(id) FROM ct_people"))
            new_pg = await pg.scalar("INSERT INTO ct_people (created_at) VALUES (1.0) RETURNING id")
            new_turn = await pg.scalar("INSERT INTO ct_turns (room, text, created_at) VALUES ('r', 't', 1.0) RETURNING id")
            await pg.execute("DELETE FROM ct_people WHERE id = ?", (new_pg,))
            new_sq = await sq.scalar("INSERT INTO ct_people (created_at) VALUES (1.0) RETURNING id")
            assert int(new_turn) == int(await pg.scalar("SELECT MAX(id) FROM ct_turns"))
            return top, int(new_pg), int(new_sq)
        finally:
            await pg.close()
            await sq.close()

    top, new_pg, new_sq = run(numbering())
    assert new_pg == top + 1  # the identity sequence continues after the copied ids
    assert new_sq == top + 1  # sqlite_sequence too


def test_status_shows_backend_versions_rows_and_size_without_the_password(home: Path, pg_url: str) -> None:
    source = home / "data" / "voicebot.sqlite3"
    run(_make_sqlite(source, 100))
    status = voicebot(home, "db", "status")
    assert status.returncode == 0, status.stderr
    assert f"SQLite at {source}" in status.stdout
    assert "copytest" in status.stdout and " 2 / 2" in status.stdout
    assert "ct_turns" in status.stdout and "100" in status.stdout
    assert "size:" in status.stdout

    secret_url = pg_url.replace("postgres@", "root:hunter2-not-shown@")  # "postgres" (8 letters) counts as a secret name
    assert voicebot(home, "db", "copy", "--to", secret_url).returncode == 0
    on_pg = voicebot(home, "db", "status", "--json", env={"DATABASE_URL": secret_url, "PRIVACY_KEY": "ab" * 32})
    assert on_pg.returncode == 0, on_pg.stderr
    assert "hunter2-not-shown" not in on_pg.stdout + on_pg.stderr
    import json

    info = json.loads(on_pg.stdout)
    assert info["backend"] == "postgresql" and info["database"].endswith("@127.0.0.1:5432/" + pg_url.rsplit("/", 1)[1])
    assert info["schema"]["copytest"] == {"version": 2, "known": 2}
    assert info["tables"]["ct_turns"] == {"rows": 100, "component": "copytest"}
    assert info["size_bytes"] > 0 and info["incomplete_copy"] is None


def test_non_empty_target_is_refused_and_force_replaces_it(home: Path, pg_url: str) -> None:
    source = home / "data" / "voicebot.sqlite3"
    run(_make_sqlite(source, 300))
    assert voicebot(home, "db", "copy", "--to", pg_url).returncode == 0
    before = run(_checksums(pg_url))

    refused = voicebot(home, "db", "copy", "--to", pg_url)
    assert refused.returncode == 2
    assert "is not empty" in _one_line(refused, "voicebot db copy") and "--force" in refused.stderr
    assert run(_checksums(pg_url)) == before  # nothing touched

    # The source changes; --force replaces the target's rows with the source's (not added to them).
    async def change() -> None:
        db = SqliteDatabase(source)
        await db.execute("DELETE FROM ct_turns WHERE id % 3 = 0")
        await db.execute("UPDATE ct_settings SET value = 'ja' WHERE place = 'guild:1'")
        await db.close()

    run(change())
    forced = voicebot(home, "db", "copy", "--to", pg_url, "--force")
    assert forced.returncode == 0, forced.stderr
    assert run(_checksums(pg_url)) == run(_checksums(source)) != before


def test_interrupted_copy_leaves_the_target_marked_and_refused_until_force(home: Path, pg_url: str) -> None:
    import asyncpg

    async def fill_pg() -> None:
        db = await PostgresDatabase.connect(pg_url)
        await migrate_all(db)
        await components.fill(db, 400)
        await db.close()

    run(fill_pg())
    target = home / "data" / "copy.sqlite3"

    async def interrupt() -> subprocess.CompletedProcess[str]:
        # Hold ct_turns locked on the source: the copy blocks on it after marking the target, so
        # Ctrl-C lands mid-copy however fast the machine is.
        lock = await asyncpg.connect(pg_url)
        tx = lock.transaction()
        await tx.start()
        await lock.execute("LOCK TABLE ct_turns IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen([sys.executable, "-c", ENTRY, "db", "copy", "--from", pg_url, "--to", str(target)],
                                cwd=home, env=_env(home, None), text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        # Polled on a connection of its own: inside the lock's transaction the view would stay as first read.
        watch = await asyncpg.connect(pg_url)
        try:
            deadline = time.monotonic() + 60
            while not await watch.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the copy never reached the locked table"
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.get_running_loop().run_in_executor(None, proc.communicate, None, 60)
        finally:
            await watch.close()
            await tx.rollback()
            await lock.close()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    stopped = run(interrupt())
    assert stopped.returncode == 2, stopped.stderr
    assert "interrupted" in _one_line(stopped, "voicebot db copy") and "--force" in stopped.stderr

    async def marked() -> bool:
        db = SqliteDatabase(target)
        try:
            return MARKER_TABLE in await db.tables()
        finally:
            await db.close()

    assert run(marked())
    # The bot itself refuses to start on the half-copied database, in one line.
    (home / "half").mkdir()
    (home / "half" / "voicebot.sqlite3").write_bytes(target.read_bytes())
    started = subprocess.run([sys.executable, "-m", "bot", "chat"], cwd=home, text=True, capture_output=True,
                             input="", timeout=120, env=_env(home, {"DATA_DIR": str(home / "half")}))
    assert started.returncode == 2, started.stderr
    assert "holds an interrupted `voicebot db copy`" in started.stderr and "Traceback" not in started.stderr
    refused = voicebot(home, "db", "copy", "--from", pg_url, "--to", str(target))
    assert refused.returncode == 2
    assert "interrupted copy" in _one_line(refused, "voicebot db copy")
    status = voicebot(home, "db", "status", "--from", str(target))
    assert "INCOMPLETE" in status.stdout

    forced = voicebot(home, "db", "copy", "--from", pg_url, "--to", str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    assert run(_checksums(target)) == run(_checksums(pg_url))
    assert not run(marked())


def test_source_at_a_newer_schema_or_unknown_component_is_refused(home: Path, tmp_path: Path) -> None:
    source = home / "data" / "voicebot.sqlite3"
    run(_make_sqlite(source, 10))

    async def bump(sql: str, params: tuple[object, ...]) -> None:
        db = SqliteDatabase(source)
        await db.execute(sql, params)
        await db.close()

    run(bump("UPDATE schema_versions SET version = 3 WHERE component = ?", ("copytest",)))
    newer = voicebot(home, "db", "copy", "--to", str(home / "out.sqlite3"))
    assert newer.returncode == 2
    line = _one_line(newer, "voicebot db copy")
    assert "copytest schema is at version 3" in line and "only knows 2" in line and "newer release" in line
    assert not (home / "out.sqlite3").exists()  # refused before the target was made

    run(bump("UPDATE schema_versions SET version = 2 WHERE component = ?", ("copytest",)))
    run(bump("INSERT INTO schema_versions (component, version, updated_at) VALUES (?, 1, 0)", ("from_the_future",)))
    unknown = voicebot(home, "db", "copy", "--to", str(home / "out2.sqlite3"))
    assert unknown.returncode == 2
    assert "from_the_future" in _one_line(unknown, "voicebot db copy")


def test_bad_targets_are_one_line_and_exit_2(home: Path, pg_url: str) -> None:
    source = home / "data" / "voicebot.sqlite3"
    run(_make_sqlite(source, 10))
    cases = {
        "unreachable": (["--to", "postgresql://postgres:pw-never-shown@127.0.0.1:1/nowhere"], "cannot reach"),
        "no such database": (["--to", pg_url.rsplit("/", 1)[0] + "/vb_no_such_database"], "database does not exist"),
        "no folder": (["--to", str(home / "missing" / "x.sqlite3")], "does not exist"),
        "a folder": (["--to", str(home)], "is a folder"),
        "itself": (["--to", str(source)], "same database"),
        "itself by another path": (["--to", str(home / "data" / ".." / "data" / "voicebot.sqlite3")], "same database"),
        "no source": (["--from", str(home / "none.sqlite3"), "--to", str(home / "y.sqlite3")], "no database at"),
    }
    for name, (args, expected) in cases.items():
        result = voicebot(home, "db", "copy", *args)
        assert result.returncode == 2, (name, result.stderr)
        line = _one_line(result, "voicebot db copy")
        assert expected in line, (name, line)
        assert "pw-never-shown" not in result.stderr + result.stdout
    assert not (home / "none.sqlite3").exists()  # a mistyped source is not created

    # The same PostgreSQL database under another spelling of its address.
    assert voicebot(home, "db", "copy", "--to", pg_url).returncode == 0
    other = pg_url.replace("127.0.0.1", "localhost")
    same = voicebot(home, "db", "copy", "--from", pg_url, "--to", other, "--force")
    assert same.returncode == 2
    assert "same database" in _one_line(same, "voicebot db copy")


def test_postgres_to_postgres(home: Path, pg_url: str) -> None:
    from tests.pg import create_database, drop_database

    source = home / "data" / "voicebot.sqlite3"
    run(_make_sqlite(source, 200))
    assert voicebot(home, "db", "copy", "--to", pg_url).returncode == 0
    second = create_database()
    try:
        result = voicebot(home, "db", "copy", "--from", pg_url, "--to", second)
        assert result.returncode == 0, result.stderr
        assert run(_checksums(second)) == run(_checksums(source))
    finally:
        drop_database(second)


def test_progress_bar_on_a_terminal(home: Path, tmp_path: Path) -> None:
    import pty

    run(_make_sqlite(home / "data" / "voicebot.sqlite3", 50))
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-c", ENTRY, "db", "copy", "--to", str(home / "t.sqlite3")], cwd=home,
                                env=_env(home, None), stdout=subprocess.PIPE, stderr=follower, text=True)
        os.close(follower)
        follower = -1
        seen = b""
        while True:  # read the terminal until the process closes it
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        proc.wait(timeout=120)
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert proc.returncode == 0, seen
    text = seen.decode()
    assert "\r[" in text and "100%" in text and "rows/s" in text
    assert "copying ct_turns" not in text  # the line-per-tenth form is for pipes and files
