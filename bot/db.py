"""One SQLite database file shared by every store (memory, per-guild settings, SMS bookkeeping...).

SQLite runs in WAL mode so readers never block the single writer, and one connection is shared by
all threads behind one re-entrant lock (``check_same_thread=False``). Each component versions its
own schema with :meth:`Database.migrate`: a list of SQL scripts, applied once each, in order.

Calls are short, local and synchronous; they are made from the event loop directly because a
typical statement takes microseconds. Bulk work (pruning years of transcripts) can be sent to an
executor by the caller.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["Database", "DatabaseError"]

log = logging.getLogger(__name__)

_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

Params = Sequence[Any] | Mapping[str, Any]


class DatabaseError(Exception):
    """A schema problem (e.g. the file was written by a newer version of the bot)."""


class Database:
    """One SQLite file (WAL), shared by all stores. Thread-safe: every call takes one lock."""

    def __init__(self, path: Path | str) -> None:
        """Open (creating if needed) the database at ``path``; its directory is created too.

        ``":memory:"`` opens a private in-memory database (see :meth:`in_memory`).
        """
        self.path: Path | None = None if str(path) == ":memory:" else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit. Every execute() is its own transaction unless a
        # transaction() block is open, so nothing is ever left uncommitted by accident.
        try:
            self._conn = sqlite3.connect(
                ":memory:" if self.path is None else str(self.path),
                check_same_thread=False,
                isolation_level=None,
                timeout=5.0,
            )
            # connect() is lazy: touch the file now so a bad DATA_DIR fails here, with its path.
            self._conn.execute("PRAGMA schema_version").fetchone()
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open the database at {self.path}: {exc}") from None
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._closed = False
        with self._lock:
            if self.path is not None:
                mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":  # e.g. a network filesystem that cannot do WAL
                    log.warning("SQLite at %s runs in %s mode, not WAL", self.path, mode)
                # WAL + NORMAL is durable across application crashes; only an OS crash can lose
                # the last transactions, which is acceptable for chat history.
                self._conn.execute("PRAGMA synchronous=NORMAL")
            # Deleted rows are overwritten with zeros instead of left in free space, so what /forget
            # and retention delete is gone from the file, not merely unreachable (see scrub()).
            self._conn.execute("PRAGMA secure_delete=ON")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions ("
                " component TEXT PRIMARY KEY,"
                " version INTEGER NOT NULL,"
                " updated_at REAL NOT NULL)"
            )

    @classmethod
    def in_memory(cls) -> Database:
        """A private in-memory database, for tests."""
        return cls(":memory:")

    def __repr__(self) -> str:
        return f"Database({str(self.path) if self.path else ':memory:'!r})"

    # -----------------------------------------------------------------------------------------

    def schema_version(self, component: str) -> int:
        """The schema version ``component`` has reached (0 if it never migrated)."""
        rows = self.query("SELECT version FROM schema_versions WHERE component = ?", (component,))
        return int(rows[0]["version"]) if rows else 0

    def migrate(self, component: str, steps: list[str]) -> None:
        """Bring ``component``'s schema up to ``len(steps)``.

        Step *n* (1-based) is an SQL script applied once, atomically together with recording
        version *n*. Steps are append-only: never edit a released step, add a new one.
        Raises :class:`DatabaseError` if the file is at a newer version than ``steps`` knows.
        """
        if not _COMPONENT_RE.match(component):
            raise ValueError(f"invalid component name {component!r}")
        with self._lock:
            self._check_open()
            current = self.schema_version(component)
            if current > len(steps):
                raise DatabaseError(
                    f"{self!r}: the {component} schema is at version {current} but this version of the bot "
                    f"only knows {len(steps)}; it was written by a newer release"
                )
            for number in range(current + 1, len(steps) + 1):
                script = steps[number - 1].strip().rstrip(";")
                # executescript() cannot take parameters; the component name is validated above
                # and the version is an int, so formatting them in is safe.
                try:
                    self._conn.executescript(
                        "BEGIN IMMEDIATE;\n"
                        f"{script};\n"
                        "INSERT INTO schema_versions (component, version, updated_at) "
                        f"VALUES ('{component}', {number}, {time.time()!r}) "
                        "ON CONFLICT(component) DO UPDATE SET version = excluded.version, "
                        "updated_at = excluded.updated_at;\n"
                        "COMMIT;"
                    )
                except sqlite3.Error as exc:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    if self.schema_version(component) >= number:
                        # Another process on this file (a second worker starting at the same moment)
                        # applied the step between our read of the version and our write lock.
                        continue
                    raise DatabaseError(f"{self!r}: migration {component} step {number} failed: {exc}") from exc
                log.info("Migrated %s schema to version %d", component, number)

    def execute(self, sql: str, params: Params = ()) -> sqlite3.Cursor:
        """Run one statement (committed at once unless inside :meth:`transaction`)."""
        with self._lock:
            self._check_open()
            return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Params]) -> sqlite3.Cursor:
        """Run one statement for each parameter set, atomically."""
        with self.transaction():
            return self._conn.executemany(sql, rows)

    def query(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Run a query and return every row (rows index by column name)."""
        with self._lock:
            self._check_open()
            return self._conn.execute(sql, params).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """Hold the lock and group statements into one atomic transaction.

        Nested use joins the outer transaction. Use :meth:`execute`/:meth:`query` inside.
        """
        with self._lock:
            self._check_open()
            if self._conn.in_transaction:  # nested: the outer block commits or rolls back
                yield self
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def tables(self) -> set[str]:
        """Every table in the file (what /forget's coverage test checks against)."""
        rows = self.query("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {str(r["name"]) for r in rows}

    def scrub(self) -> bool:
        """Make deleted rows unrecoverable from disk: checkpoint the WAL into the file and truncate it.

        With ``secure_delete`` on, a delete zeroes the freed bytes in the page it writes, but the
        page's earlier versions still sit in the ``-wal`` file until a checkpoint copies the new
        version over the old one and ``TRUNCATE`` empties the log. Returns False (and logs) when
        another connection's reader kept the checkpoint from completing.
        """
        if self.path is None:
            return True
        with self._lock:
            self._check_open()
            busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("SQLite at %s: the WAL could not be truncated (another reader is open); "
                        "deleted rows stay in the -wal file until the next checkpoint", self.path)
            return False
        return True

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise DatabaseError(f"{self!r} is closed")
