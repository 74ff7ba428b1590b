"""Database: WAL file, per-component versioned migrations, thread safety, transactions."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bot.db import Database, DatabaseError

STEPS = [
    "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
    "ALTER TABLE notes ADD COLUMN author TEXT; CREATE INDEX notes_author ON notes (author)",
]


def test_creates_data_dir_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "bot.sqlite3"
    db = Database(path)
    try:
        assert path.parent.is_dir()
        assert db.query("PRAGMA journal_mode")[0][0] == "wal"
    finally:
        db.close()


def test_migrations_apply_once_in_order_per_component(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    db = Database(path)
    db.migrate("notes", STEPS[:1])
    assert db.schema_version("notes") == 1
    db.execute("INSERT INTO notes (body) VALUES (?)", ("hello",))
    db.migrate("notes", STEPS)  # only step 2 runs; step 1 would fail if re-run
    assert db.schema_version("notes") == 2
    db.migrate("other", ["CREATE TABLE other (x INTEGER)"])
    assert db.schema_version("other") == 1
    db.close()

    db = Database(path)  # reopen: versions and data persisted
    try:
        db.migrate("notes", STEPS)
        assert db.schema_version("notes") == 2
        db.execute("INSERT INTO notes (body, author) VALUES (?, ?)", ("again", "me"))
        assert [r["body"] for r in db.query("SELECT body FROM notes ORDER BY id")] == ["hello", "again"]
    finally:
        db.close()


def test_failed_migration_step_rolls_back_and_says_which() -> None:
    db = Database.in_memory()
    try:
        with pytest.raises(DatabaseError, match="notes step 2"):
            db.migrate("notes", [STEPS[0], "CREATE TABLE half (x INTEGER); THIS IS NOT SQL"])
        assert db.schema_version("notes") == 1
        assert db.query("SELECT name FROM sqlite_master WHERE name = 'half'") == []
    finally:
        db.close()


def test_newer_schema_than_code_is_refused() -> None:
    db = Database.in_memory()
    try:
        db.migrate("notes", STEPS)
        with pytest.raises(DatabaseError, match="newer release"):
            db.migrate("notes", STEPS[:1])
    finally:
        db.close()


def test_bad_component_name_rejected() -> None:
    db = Database.in_memory()
    try:
        with pytest.raises(ValueError):
            db.migrate("x'; DROP TABLE schema_versions; --", STEPS)
    finally:
        db.close()


def test_transaction_rolls_back_on_error() -> None:
    db = Database.in_memory()
    try:
        db.migrate("notes", STEPS)
        with pytest.raises(RuntimeError):
            with db.transaction():
                db.execute("INSERT INTO notes (body) VALUES ('a')")
                with db.transaction():  # nested joins the outer one
                    db.execute("INSERT INTO notes (body) VALUES ('b')")
                raise RuntimeError("boom")
        assert db.query("SELECT COUNT(*) FROM notes")[0][0] == 0
    finally:
        db.close()


def test_many_threads_share_one_connection(tmp_path: Path) -> None:
    db = Database(tmp_path / "bot.sqlite3")
    db.migrate("notes", STEPS)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                db.execute("INSERT INTO notes (body, author) VALUES (?, ?)", (f"{n}-{i}", str(n)))
                db.query("SELECT COUNT(*) FROM notes WHERE author = ?", (str(n),))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert db.query("SELECT COUNT(*) FROM notes")[0][0] == 400
    finally:
        db.close()


def test_closed_database_raises_clearly() -> None:
    db = Database.in_memory()
    db.close()
    db.close()  # idempotent
    with pytest.raises(DatabaseError, match="closed"):
        db.query("SELECT 1")


def test_unopenable_path_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(DatabaseError, match=r"cannot open the database at .*taken"):
        Database(tmp_path / "taken")
