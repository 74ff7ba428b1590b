"""The one database interface on both backends: the same statements, the same answers."""

from __future__ import annotations

import asyncio

import pytest

from bot.store import Database, DatabaseError, IntegrityError, PostgresDatabase, SqliteDatabase, open_database
from bot.store.database import _numbered, redact_url
from tests.backends import store_db  # noqa: F401


@pytest.fixture
def db(store_db: Database) -> Database:  # noqa: F811  (tests/backends: a fresh SQLite file, then PostgreSQL)
    return store_db


STEPS = [
    {"sqlite": "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, n INTEGER)",
     "postgresql": "CREATE TABLE t (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE, n BIGINT)"},
    "CREATE INDEX t_n ON t (n); CREATE TABLE u (k TEXT PRIMARY KEY, v DOUBLE PRECISION)",
]


async def test_statements_rows_and_rowcounts_are_the_same_on_both(db: Database) -> None:
    await db.migrate("demo", STEPS)
    assert await db.schema_version("demo") == 2 and {"t", "u", "schema_versions"} <= await db.tables()
    await db.executemany("INSERT INTO t (name, n) VALUES (?, ?)", [("a", 1), ("b", 2), ("c '?' d", 3)])
    rows = await db.query("SELECT name, n FROM t WHERE n >= ? ORDER BY n", (2,))
    assert [(r["name"], r[1]) for r in rows] == [("b", 2), ("c '?' d", 3)]
    assert await db.execute("UPDATE t SET n = n + 10 WHERE n < ?", (3,)) == 2
    new_id = await db.scalar("INSERT INTO t (name, n) VALUES (?, ?) RETURNING id", ("e", 5))
    assert isinstance(new_id, int) and dict(await db.query_one("SELECT name FROM t WHERE id = ?", (new_id,))) == {"name": "e"}
    with pytest.raises(IntegrityError):
        await db.execute("INSERT INTO t (name, n) VALUES (?, ?)", ("a", 9))
    await db.execute("INSERT INTO u (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", ("x", 1.5))
    await db.execute("INSERT INTO u (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", ("x", 2.5))
    assert await db.scalar("SELECT v FROM u WHERE k = ?", ("x",)) == 2.5


async def test_a_failed_transaction_leaves_nothing_and_nested_blocks_join_it(db: Database) -> None:
    await db.migrate("demo", STEPS)
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (name, n) VALUES (?, ?)", ("a", 1))
            async with db.transaction():  # joins
                await db.execute("INSERT INTO t (name, n) VALUES (?, ?)", ("b", 2))  # through db: joins too
            raise RuntimeError("boom")
    assert await db.scalar("SELECT COUNT(*) FROM t") == 0
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO t (name, n) VALUES (?, ?)", ("a", 1))
    assert await db.scalar("SELECT COUNT(*) FROM t") == 1


async def test_other_tasks_never_see_or_join_an_open_transaction(db: Database) -> None:
    await db.migrate("demo", STEPS)
    inside, release = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (name, n) VALUES (?, ?)", ("a", 1))
            inside.set()
            await release.wait()
            raise RuntimeError("rolled back")

    task = asyncio.create_task(writer())
    await inside.wait()
    reader = asyncio.create_task(db.scalar("SELECT COUNT(*) FROM t"))
    if db.dialect == "postgresql":  # a pool: the reader runs beside the transaction and sees nothing of it
        assert await reader == 0
        release.set()
    else:  # one connection: the reader waits for the transaction to end
        await asyncio.sleep(0)
        assert not reader.done()
        release.set()
        assert await reader == 0
    with pytest.raises(RuntimeError):
        await task


async def test_a_cancelled_transaction_does_not_wedge_the_connection(db: Database) -> None:
    await db.migrate("demo", STEPS)
    started = asyncio.Event()

    async def slow() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (name, n) VALUES (?, ?)", ("a", 1))
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await db.scalar("SELECT COUNT(*) FROM t") == 0
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO t (name, n) VALUES (?, ?)", ("b", 2))
    assert await db.scalar("SELECT COUNT(*) FROM t") == 1


async def test_a_newer_schema_is_refused_and_a_failing_step_is_rolled_back(db: Database) -> None:
    await db.migrate("demo", STEPS)
    with pytest.raises(DatabaseError, match="newer release"):
        await db.migrate("demo", STEPS[:1])
    bad = [*STEPS, "CREATE TABLE w (k TEXT); INSERT INTO nowhere VALUES (1)"]
    with pytest.raises(DatabaseError, match="step 3 failed"):
        await db.migrate("demo", bad)
    assert await db.schema_version("demo") == 2 and "w" not in await db.tables()


async def test_two_processes_migrating_at_once_apply_each_step_once(pg_url: str) -> None:
    first, second = await open_database(pg_url), await open_database(pg_url)
    try:
        counting = [*STEPS, "CREATE TABLE applied (n INTEGER); INSERT INTO applied VALUES (1)"]
        await asyncio.gather(first.migrate("demo", counting), second.migrate("demo", counting))
        assert await first.scalar("SELECT COUNT(*) FROM applied") == 1
        assert await second.schema_version("demo") == 3
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("url, line", [
    ("postgresql://nobody:secret@127.0.0.1:1/x", "cannot reach PostgreSQL at postgresql://nobody:***@127.0.0.1:1/x"),
    ("postgresql://postgres@127.0.0.1:5432/no_such_database_here", "that database does not exist"),
])
async def test_a_database_that_cannot_be_opened_is_one_line_without_its_password(url: str, line: str) -> None:
    with pytest.raises(DatabaseError) as caught:
        await open_database(url)
    assert line in str(caught.value) and "secret" not in str(caught.value) and "\n" not in str(caught.value)


def test_placeholders_are_numbered_outside_quotes_and_comments() -> None:
    sql = "SELECT '?', \"a?\" FROM t -- why?\nWHERE a = ? AND b = '' || ?"
    assert _numbered(sql) == "SELECT '?', \"a?\" FROM t -- why?\nWHERE a = $1 AND b = '' || $2"
    assert redact_url("postgresql://u:pw@h:5/d") == "postgresql://u:***@h:5/d"
    assert isinstance(SqliteDatabase.in_memory(), SqliteDatabase) and PostgresDatabase.dialect == "postgresql"


async def test_the_sqlite_file_makes_its_folder_runs_in_wal_and_says_which_file_it_cannot_open(tmp_path) -> None:
    path = tmp_path / "nested" / "dir" / "bot.sqlite3"
    db = SqliteDatabase(path)
    assert path.parent.is_dir() and await db.scalar("PRAGMA journal_mode") == "wal"
    with pytest.raises(ValueError, match="invalid component"):
        await db.migrate("no spaces; please", STEPS)
    await db.close()
    await db.close()  # idempotent
    with pytest.raises(DatabaseError, match="closed"):
        await db.query("SELECT 1")
    (tmp_path / "taken").mkdir()
    with pytest.raises(DatabaseError, match=r"cannot open the database at .*taken"):
        SqliteDatabase(tmp_path / "taken")
