"""One database for every store, on the embedded SQLite file or on PostgreSQL, behind one async interface.

SQL is written once with ``?`` placeholders and portable syntax (``ON CONFLICT``, ``RETURNING``);
the PostgreSQL backend numbers the placeholders (``$1``...) itself. Only schema migrations may differ
per dialect: a step is either one script for both or ``{"sqlite": ..., "postgresql": ...}``.

Nothing here blocks the event loop: SQLite runs on one thread of its own (one connection, WAL),
PostgreSQL through an asyncpg pool. Rows index by column name and by position on both backends.

Transactions: ``async with db.transaction() as tx:`` groups statements atomically; statements a task
makes through ``db`` while its transaction is open join that transaction (so store methods compose),
and other tasks wait for it on SQLite (one connection) or run beside it on PostgreSQL (a pool).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import logging
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "Database",
    "DatabaseError",
    "IntegrityError",
    "Migration",
    "PostgresDatabase",
    "Row",
    "SqliteDatabase",
    "is_postgres_url",
    "open_database",
    "redact_url",
]

log = logging.getLogger(__name__)

Params = Sequence[Any]
Row = Any  # sqlite3.Row or asyncpg.Record: row["column"] and row[index] on both; dict(row) on both
Migration = str | Mapping[str, str]
T = TypeVar("T")

_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_versions ("
    " component TEXT PRIMARY KEY,"
    " version INTEGER NOT NULL,"
    " updated_at DOUBLE PRECISION NOT NULL)"
)


class DatabaseError(Exception):
    """The database cannot be used: unreachable, refused, closed, or written by a newer version."""


class DatabaseClosed(DatabaseError):
    """This process closed the database (it is stopping): nothing will take a write again.

    Not an outage: a connection the server or the network closed is a plain :class:`DatabaseError`."""


def _current_task() -> object:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


def is_postgres_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """``url`` without its password, fit for a log line."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<an unreadable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _step_sql(step: Migration, dialect: str) -> str:
    if isinstance(step, str):
        return step
    return step[dialect]


class Database(abc.ABC):
    """What every store uses. Subclasses: :class:`SqliteDatabase`, :class:`PostgresDatabase`."""

    dialect: str = ""

    def __init__(self) -> None:
        # The transaction the current task has open on this database, if any.
        # The transaction the current task has open on this database. Tasks started inside it inherit the
        # context; only the task that opened it joins it (a background task started there must not).
        self._tx: contextvars.ContextVar[tuple[Database, object] | None] = contextvars.ContextVar(
            f"tx{id(self)}", default=None)

    def _open_tx(self) -> Database | None:
        held = self._tx.get()
        if held is None:
            return None
        tx, owner = held
        return tx if owner is _current_task() else None

    # --- statements -------------------------------------------------------------------------

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement (committed at once unless a transaction is open); returns rows affected."""
        tx = self._open_tx()
        return await (tx or self)._execute(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """Run one statement for each parameter set, atomically."""
        if not rows:
            return
        async with self.transaction() as tx:
            await tx._executemany(sql, rows)

    async def query(self, sql: str, params: Params = ()) -> list[Row]:
        """Run a query and return every row."""
        tx = self._open_tx()
        return await (tx or self)._query(sql, params)

    async def query_one(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.query(sql, params)
        return rows[0] if rows else None

    async def scalar(self, sql: str, params: Params = ()) -> Any:
        """The first column of the first row (None when there is no row)."""
        row = await self.query_one(sql, params)
        return None if row is None else row[0]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        """Group statements into one atomic transaction; nested use joins the outer one."""
        outer = self._open_tx()
        if outer is not None:
            yield outer
            return
        async with self._begin() as tx:
            token = self._tx.set((tx, _current_task()))
            try:
                yield tx
            finally:
                self._tx.reset(token)

    # --- schema -------------------------------------------------------------------------------

    async def schema_version(self, component: str) -> int:
        value = await self.scalar("SELECT version FROM schema_versions WHERE component = ?", (component,))
        return int(value) if value is not None else 0

    async def migrate(self, component: str, steps: Sequence[Migration]) -> None:
        """Bring ``component``'s schema up to ``len(steps)``, each step atomically with its version.

        Steps are append-only. A database at a newer version than ``steps`` knows raises
        :class:`DatabaseError`. Two processes migrating at once apply each step once.
        """
        if not _COMPONENT_RE.match(component):
            raise ValueError(f"invalid component name {component!r}")
        # ``db``: where the steps run — on PostgreSQL the connection that holds the lock, so a migration
        # never needs a second pool connection while it holds one (with the pool full of tasks waiting
        # for the same lock, it would wait for ever).
        async with self._migration_lock(component) as db:
            current = await db.schema_version(component)
            if current > len(steps):
                raise DatabaseError(
                    f"{self.describe()}: the {component} schema is at version {current} but this version "
                    f"of the bot only knows {len(steps)}; it was written by a newer release"
                )
            for number in range(current + 1, len(steps) + 1):
                script = _step_sql(steps[number - 1], self.dialect).strip().rstrip(";")
                try:
                    async with db.transaction() as tx:
                        # Another process may have applied this step since the version was read (two
                        # workers starting at once on one SQLite file): read it again under the write lock.
                        done = await tx.scalar("SELECT version FROM schema_versions WHERE component = ?",
                                               (component,))
                        if done is not None and int(done) >= number:
                            continue
                        await tx._script(script)
                        await tx.execute(
                            "INSERT INTO schema_versions (component, version, updated_at) VALUES (?, ?, ?) "
                            "ON CONFLICT (component) DO UPDATE SET version = excluded.version, "
                            "updated_at = excluded.updated_at",
                            (component, number, time.time()),
                        )
                except DatabaseError:
                    raise
                except Exception as exc:
                    raise DatabaseError(
                        f"{self.describe()}: migration {component} step {number} failed (rolled back): {exc}"
                    ) from exc
                log.info("Migrated %s schema to version %d", component, number)

    async def versions(self) -> dict[str, int]:
        rows = await self.query("SELECT component, version FROM schema_versions ORDER BY component")
        return {str(r[0]): int(r[1]) for r in rows}

    # --- backend hooks ------------------------------------------------------------------------

    @abc.abstractmethod
    def describe(self) -> str:
        """Which database this is, without secrets (for log lines and ``voicebot db status``)."""

    @abc.abstractmethod
    async def tables(self) -> set[str]:
        """Every table the bot's schema holds."""

    @abc.abstractmethod
    async def scrub(self, tables: Sequence[str] = ()) -> bool:
        """Make deleted rows unrecoverable from the database's own files as far as it can."""

    @abc.abstractmethod
    async def size_bytes(self) -> int: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def _begin(self) -> Any:
        """An async context manager yielding a transaction-bound Database."""

    @abc.abstractmethod
    def _migration_lock(self, component: str) -> Any: ...

    @abc.abstractmethod
    async def _execute(self, sql: str, params: Params) -> int: ...

    @abc.abstractmethod
    async def _executemany(self, sql: str, rows: Sequence[Params]) -> None: ...

    @abc.abstractmethod
    async def _query(self, sql: str, params: Params) -> list[Row]: ...

    @abc.abstractmethod
    async def _script(self, script: str) -> None:
        """Run several statements with no parameters (inside the caller's transaction)."""


# ---------------------------------------------------------------------------------------------
# SQLite


class SqliteDatabase(Database):
    """The embedded file (WAL, secure_delete), one connection on one thread of its own."""

    dialect = "sqlite"

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path: Path | None = None if str(path) == ":memory:" else Path(path)
        self._closed = False
        self._thread_lock = threading.Lock()  # guards the connection against close() racing a call
        self._loop_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._migrating: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Lock] = {}
        self._pool = _OneThread(f"sqlite:{self.path.name if self.path else 'memory'}")
        try:
            self._conn = self._pool.call(self._open)
        except BaseException:
            self._pool.shutdown()
            raise

    @classmethod
    def in_memory(cls) -> SqliteDatabase:
        """A private in-memory database, for tests and the playground."""
        return cls(":memory:")

    def _open(self) -> sqlite3.Connection:
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseError(f"cannot create the folder for the database at {self.path}: {exc}") from None
        try:
            # isolation_level=None: autocommit; BEGIN/COMMIT only where a transaction is asked for.
            conn = sqlite3.connect(":memory:" if self.path is None else str(self.path),
                                   check_same_thread=False, isolation_level=None, timeout=5.0)
            conn.execute("PRAGMA schema_version").fetchone()  # connect() is lazy: fail here, with the path
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open the database at {self.path}: {exc}") from None
        conn.row_factory = sqlite3.Row
        if self.path is not None:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # e.g. a network filesystem that cannot do WAL
                log.warning("SQLite at %s runs in %s mode, not WAL", self.path, mode)
            # WAL + NORMAL survives an application crash; only an OS crash can lose the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
        # Deleted rows are overwritten with zeros, so what forget and retention delete is gone from the file.
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(_SCHEMA_TABLE)
        return conn

    def __repr__(self) -> str:
        return f"SqliteDatabase({str(self.path) if self.path else ':memory:'!r})"

    def describe(self) -> str:
        return f"SQLite at {self.path}" if self.path else "SQLite in memory"

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._loop_locks.get(loop)
        if lock is None:
            lock = self._loop_locks[loop] = asyncio.Lock()
        return lock

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._thread_lock:
                if self._closed:
                    raise DatabaseClosed(f"{self.describe()} is closed")
                return fn(self._conn)
        try:
            return await self._pool.submit(call)
        except sqlite3.Error as exc:
            raise _translate_sqlite(exc) from exc

    async def _execute(self, sql: str, params: Params) -> int:
        async with self._lock():
            return await self._run(lambda c: c.execute(sql, params).rowcount)

    async def _executemany(self, sql: str, rows: Sequence[Params]) -> None:
        async with self._lock():
            await self._run(lambda c: c.executemany(sql, rows))

    async def _query(self, sql: str, params: Params) -> list[Row]:
        async with self._lock():
            return await self._run(lambda c: c.execute(sql, params).fetchall())

    async def _script(self, script: str) -> None:
        raise NotImplementedError  # only a transaction runs scripts

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[Database]:
        async with self._lock():
            # Any transaction still open here is a stale one whose opener was cancelled mid-BEGIN.
            await self._run(lambda c: (c.in_transaction and c.execute("ROLLBACK"), c.execute("BEGIN IMMEDIATE")))
            tx = _SqliteTx(self)
            try:
                yield tx
            except BaseException:
                # The block's own exception (a cancellation too) goes on: a rollback that fails (the
                # database closed meanwhile) must not replace it, or a cancelled task would carry on.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._run(lambda c: c.execute("ROLLBACK") if c.in_transaction else None))
                raise
            else:
                await self._run(lambda c: c.execute("COMMIT"))
            finally:
                tx._done = True

    @asynccontextmanager
    async def _migration_lock(self, component: str) -> AsyncIterator[Database]:
        # BEGIN IMMEDIATE orders processes; within this one, two tasks migrating the same component
        # at once (stores opened side by side) take turns, so the second finds every step applied.
        key = (asyncio.get_running_loop(), component)
        lock = self._migrating.get(key)
        if lock is None:
            lock = self._migrating[key] = asyncio.Lock()
        async with lock:
            yield self

    async def tables(self) -> set[str]:
        rows = await self.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        return {str(r[0]) for r in rows}

    async def scrub(self, tables: Sequence[str] = ()) -> bool:
        """Checkpoint the WAL into the file and truncate it, so deleted rows' old pages leave the -wal file."""
        if self.path is None:
            return True
        async with self._lock():
            busy = await self._run(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])
        if busy:
            log.warning("SQLite at %s: the WAL could not be truncated (another reader is open); "
                        "deleted rows stay in the -wal file until the next checkpoint", self.path)
            return False
        return True

    async def size_bytes(self) -> int:
        if self.path is None:
            return 0
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    async def close(self) -> None:
        def shut() -> None:
            with self._thread_lock:
                if not self._closed:
                    self._closed = True
                    self._conn.close()
        if not self._pool.closed:
            await self._pool.submit(shut)
            self._pool.shutdown()

    def close_now(self) -> None:
        """Close from synchronous code (atexit, a finished test)."""
        if not self._pool.closed:
            self._pool.call(lambda: (setattr(self, "_closed", True), self._conn.close()))
            self._pool.shutdown()


class _Transaction(Database):
    """An open transaction of ``_db``: statements go straight to its connection; nested blocks join it."""

    _db: Database

    def describe(self) -> str:
        return self._db.describe()

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._execute(sql, params)

    async def query(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._query(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        await self._executemany(sql, rows)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        yield self

    def _begin(self) -> Any:
        raise NotImplementedError

    def _migration_lock(self, component: str) -> Any:
        raise NotImplementedError

    async def tables(self) -> set[str]:
        return await self._db.tables()

    async def scrub(self, tables: Sequence[str] = ()) -> bool:
        raise DatabaseError("scrub() cannot run inside a transaction")

    async def size_bytes(self) -> int:
        return await self._db.size_bytes()

    async def close(self) -> None:
        raise DatabaseError("close the database, not its transaction")


class _SqliteTx(_Transaction):
    """The open transaction of a :class:`SqliteDatabase` (its lock is held by the opener)."""

    dialect = "sqlite"

    def __init__(self, db: SqliteDatabase) -> None:
        super().__init__()
        self._db = db
        self._done = False

    def _check(self) -> None:
        if self._done:
            raise DatabaseError("the transaction is over")

    async def _execute(self, sql: str, params: Params) -> int:
        self._check()
        return await self._db._run(lambda c: c.execute(sql, params).rowcount)

    async def _executemany(self, sql: str, rows: Sequence[Params]) -> None:
        self._check()
        await self._db._run(lambda c: c.executemany(sql, rows))

    async def _query(self, sql: str, params: Params) -> list[Row]:
        self._check()
        return await self._db._run(lambda c: c.execute(sql, params).fetchall())

    async def _script(self, script: str) -> None:
        self._check()
        # executescript() would COMMIT the open transaction first; run the statements one by one.
        def run(c: sqlite3.Connection) -> None:
            for statement in _split_statements(script):
                c.execute(statement)
        await self._db._run(run)



def _split_statements(script: str) -> list[str]:
    statements, buf = [], ""
    for piece in script.split(";"):
        buf += piece
        if sqlite3.complete_statement(buf + ";"):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
        else:
            buf += ";"
    if buf.strip().rstrip(";").strip():
        statements.append(buf.strip())
    return statements


def _translate_sqlite(exc: sqlite3.Error) -> Exception:
    if isinstance(exc, sqlite3.IntegrityError):
        return IntegrityError(str(exc))
    text = str(exc).lower()
    if "disk" in text and ("full" in text or "i/o" in text):
        return DatabaseError(f"the database's disk is full or failing: {exc}")
    return exc


class IntegrityError(DatabaseError):
    """A unique, foreign-key or check constraint refused the statement (both backends)."""


CANCEL_WAIT = 10.0  # seconds a cancelled caller waits for the statement it sent to finish


class _OneThread:
    """A single worker thread that runs calls in order (sqlite3 connections belong to one thread)."""

    def __init__(self, name: str) -> None:
        import queue

        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, done = item
            try:
                result = fn()
            except BaseException as exc:  # handed to the waiting side
                done(None, exc)
            else:
                done(result, None)

    async def submit(self, fn: Callable[[], T]) -> T:
        if self.closed:
            raise DatabaseClosed("the database is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def done(result: Any, exc: BaseException | None) -> None:
            def settle() -> None:
                if future.cancelled():
                    return
                if exc is not None:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the loop closed while the call ran
                pass

        self._q.put((fn, done))
        # A cancelled caller still waits for the statement it sent to finish (so a cancelled COMMIT
        # is known to have committed before anyone else uses the connection), then is cancelled.
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # Bounded: a call that never finishes (its loop going away) must not make the task uncancellable.
            deadline = time.monotonic() + CANCEL_WAIT
            while not future.done() and time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
                except (asyncio.CancelledError, asyncio.TimeoutError):
                    continue
                except BaseException:
                    break
            raise

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the thread and wait for it from synchronous code."""
        box: dict[str, Any] = {}
        event = threading.Event()

        def done(result: Any, exc: BaseException | None) -> None:
            box["r"], box["e"] = result, exc
            event.set()

        self._q.put((fn, done))
        event.wait()
        if box["e"] is not None:
            raise box["e"]
        return box["r"]

    def shutdown(self) -> None:
        if not self.closed:
            self.closed = True
            self._q.put(None)


# ---------------------------------------------------------------------------------------------
# PostgreSQL


_PLACEHOLDER_RE = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|\?")


def _numbered(sql: str) -> str:
    """``?`` placeholders → ``$1, $2...``, leaving quoted strings, identifiers and comments alone."""
    counter = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal counter
        if m.group(0) != "?":
            return m.group(0)
        counter += 1
        return f"${counter}"

    return _PLACEHOLDER_RE.sub(sub, sql)


class PostgresDatabase(Database):
    """A PostgreSQL database through an asyncpg pool. Open with :meth:`connect`."""

    dialect = "postgresql"

    def __init__(self, url: str, pool: Any) -> None:
        super().__init__()
        self.url = url
        self._pool = pool
        self._sql_cache: dict[str, str] = {}
        self.closed = False  # close() was called: errors from here on are DatabaseClosed
        self._migrating: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Lock] = {}

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 1, max_size: int = 8, timeout: float = 10.0) -> PostgresDatabase:
        """Open a pool; an unreachable server, a wrong password or a missing database is one DatabaseError line."""
        import asyncpg

        where = redact_url(url)
        try:
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, timeout=timeout,
                                             command_timeout=60)
        except asyncpg.InvalidPasswordError:
            raise DatabaseError(f"PostgreSQL at {where} refused the password") from None
        except asyncpg.InvalidCatalogNameError:
            raise DatabaseError(f"PostgreSQL at {where}: that database does not exist") from None
        except asyncpg.InvalidAuthorizationSpecificationError as exc:
            raise DatabaseError(f"PostgreSQL at {where} refused the login: {exc}") from None
        except (OSError, asyncio.TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else (exc.strerror or str(exc))
            raise DatabaseError(f"cannot reach PostgreSQL at {where}: {reason}") from None
        except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise DatabaseError(f"cannot open PostgreSQL at {where}: {exc}") from None
        db = cls(url, pool)
        try:
            # Creating the table "if not exists" is not safe against itself: two processes starting at once
            # could both try to create the table (a duplicate pg_type row). One at a time, then.
            async with db.transaction() as tx:
                await tx.execute("SELECT pg_advisory_xact_lock(?)", (zlib.crc32(b"voicebot-schema-versions"),))
                await tx.execute(_SCHEMA_TABLE)
        except BaseException:
            await pool.close()
            raise
        return db

    def describe(self) -> str:
        return f"PostgreSQL at {redact_url(self.url)}"

    def __repr__(self) -> str:
        return f"PostgresDatabase({redact_url(self.url)!r})"

    def sql(self, sql: str) -> str:
        numbered = self._sql_cache.get(sql)
        if numbered is None:
            numbered = self._sql_cache[sql] = _numbered(sql)
        return numbered

    async def _execute(self, sql: str, params: Params) -> int:
        async with _pg_errors(self):
            return _rowcount(await self._pool.execute(self.sql(sql), *params))

    async def _executemany(self, sql: str, rows: Sequence[Params]) -> None:
        async with _pg_errors(self):
            await self._pool.executemany(self.sql(sql), rows)

    async def _query(self, sql: str, params: Params) -> list[Row]:
        async with _pg_errors(self):
            return await self._pool.fetch(self.sql(sql), *params)

    async def _script(self, script: str) -> None:
        raise NotImplementedError  # only a transaction runs scripts

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[Database]:
        async with _pg_errors(self):
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    yield _PgTx(self, conn)

    @asynccontextmanager
    async def _migration_lock(self, component: str) -> AsyncIterator[Database]:
        # A session-level advisory lock on a connection of its own: a second process starting at the
        # same moment waits here, then finds every step applied. Within this process tasks take turns
        # first, so they do not fill the pool with connections all waiting for the one lock.
        key = zlib.crc32(f"voicebot-migrate:{component}".encode())
        loop_key = (asyncio.get_running_loop(), component)
        lock = self._migrating.get(loop_key)
        if lock is None:
            lock = self._migrating[loop_key] = asyncio.Lock()
        async with lock, _pg_errors(self):
            async with self._pool.acquire() as conn:
                await conn.execute("SELECT pg_advisory_lock($1)", key)
                try:
                    yield _PgSession(self, conn)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)

    async def tables(self) -> set[str]:
        rows = await self.query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        return {str(r[0]) for r in rows}

    async def scrub(self, tables: Sequence[str] = ()) -> bool:
        """VACUUM the tables a delete touched, so their dead tuples' space is marked free at once.

        VACUUM does not overwrite the freed space, and WAL segments, replicas and backups keep what
        they hold: the README says what an operator does about those.
        """
        names = sorted(set(tables) & await self.tables()) if tables else []
        async with _pg_errors(self):
            async with self._pool.acquire() as conn:
                for name in names:
                    await conn.execute(f'VACUUM "{name}"')
        return True

    async def size_bytes(self) -> int:
        return int(await self.scalar("SELECT pg_database_size(current_database())") or 0)

    async def close(self) -> None:
        from bot.store.notify import close_listener

        self.closed = True
        await close_listener(self)
        await self._pool.close()


class _PgTx(_Transaction):
    dialect = "postgresql"

    def __init__(self, db: PostgresDatabase, conn: Any) -> None:
        super().__init__()
        self._db = db
        self._conn = conn

    async def _execute(self, sql: str, params: Params) -> int:
        async with _pg_errors(self._db):
            return _rowcount(await self._conn.execute(self._db.sql(sql), *params))

    async def _executemany(self, sql: str, rows: Sequence[Params]) -> None:
        async with _pg_errors(self._db):
            await self._conn.executemany(self._db.sql(sql), rows)

    async def _query(self, sql: str, params: Params) -> list[Row]:
        async with _pg_errors(self._db):
            return await self._conn.fetch(self._db.sql(sql), *params)

    async def _script(self, script: str) -> None:
        async with _pg_errors(self._db):
            await self._conn.execute(script)  # no parameters: the simple protocol runs several statements



class _PgSession(_PgTx):
    """One pool connection outside a transaction (the migration lock's): statements run on it, and a
    transaction opened on it is a real one on that connection."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        async with _pg_errors(self._db):
            async with self._conn.transaction():
                yield _PgTx(self._db, self._conn)


def _rowcount(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


@asynccontextmanager
async def _pg_errors(db: PostgresDatabase) -> AsyncIterator[None]:
    import asyncpg

    if db.closed:
        raise DatabaseClosed(f"{db.describe()} is closed")
    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise IntegrityError(str(exc)) from exc
    except asyncpg.DiskFullError as exc:
        raise DatabaseError(f"{db.describe()}: the disk is full: {exc}") from exc
    except (OSError, asyncpg.ConnectionDoesNotExistError, asyncpg.CannotConnectNowError,
            asyncpg.InterfaceError) as exc:
        if isinstance(exc, asyncpg.InterfaceError) and "another operation is in progress" in str(exc):
            raise
        if db.closed:
            raise DatabaseClosed(f"{db.describe()} is closed") from exc
        raise DatabaseError(f"{db.describe()} is unreachable: {exc}") from exc


async def open_database(where: str | Path) -> Database:
    """A PostgreSQL URL opens a pool; anything else is a SQLite file path (``:memory:`` too)."""
    if isinstance(where, str) and is_postgres_url(where):
        return await PostgresDatabase.connect(where)
    return SqliteDatabase(where)
