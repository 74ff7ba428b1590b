"""Moving house: ``voicebot db status`` and ``voicebot db copy`` between SQLite files and PostgreSQL.

What is copied: every table the source holds that belongs to a registered component (see
:mod:`bot.store.registry`), at the schema version the source is at. The target gets exactly that
schema from the components' own migration steps (in its dialect), then the rows, in batches read by
primary key (keyset pagination: each batch is one indexed range read, so a million rows cost the
same per batch as a thousand). The bot migrates the target further at its next start, as it would
have migrated the source.

Verification: per table, the row count and a checksum over every row, computed the same way from
the rows each side returns: each value normalised (an integral float is its integer, a boolean is
0/1, text is UTF-8), each row hashed (BLAKE2b-128), the hashes summed modulo 2^128 — so the order
rows come back in does not matter and SQLite and PostgreSQL agree on equal data. The source's
checksum is taken from the rows as they were read for the copy, the target's by reading the target
back; the source's row counts are taken again at the end to catch a bot still writing to it.

A copy marks its target incomplete (the table :data:`MARKER_TABLE`) before it changes anything and
removes the mark only after verification passed, so an interrupted or failed copy is refused the
next time unless ``--force`` starts it over.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from bot.store.database import Database, DatabaseError, PostgresDatabase, SqliteDatabase, is_postgres_url, redact_url
from bot.store.registry import Component, all_components, component_tables, known_tables, migrate_all

__all__ = [
    "BATCH_ROWS",
    "CopyError",
    "CopyReport",
    "MARKER_TABLE",
    "TableCheck",
    "check_source",
    "copy_database",
    "describe_location",
    "incomplete_copy",
    "open_source",
    "open_target",
    "status",
    "table_checksum",
]

MARKER_TABLE = "voicebot_copy_incomplete"
# Tables the target fills itself from the ones copied: SQLite's full-text index over recall_docs (its
# triggers index each copied row), which PostgreSQL keeps as a generated column instead.
DERIVED = frozenset({"recall_fts", "recall_fts_data", "recall_fts_idx", "recall_fts_docsize", "recall_fts_config"})
BATCH_ROWS = 5000
_MOD = 1 << 128

Progress = Callable[[str, int, int, int, int], None]  # table, table rows done, table rows, all done, all rows


class CopyError(Exception):
    """Why a copy or a status cannot go on: one line for the operator (the CLI exits 2)."""


# ---------------------------------------------------------------------------------------------
# Opening


def describe_location(where: str) -> str:
    """``where`` fit for output: a PostgreSQL URL without its password, a path as given."""
    return redact_url(where) if is_postgres_url(where) else where


async def _open_postgres(url: str) -> PostgresDatabase:
    try:
        return await PostgresDatabase.connect(url, min_size=1, max_size=4)
    except DatabaseError as exc:
        raise CopyError(str(exc)) from None


async def open_source(where: str) -> Database:
    """The database to read: a PostgreSQL URL, or a SQLite file that must already exist."""
    if is_postgres_url(where):
        return await _open_postgres(where)
    path = Path(where).expanduser()
    if path.is_dir():
        raise CopyError(f"{where} is a folder, not a SQLite database file")
    if not path.exists():
        raise CopyError(f"there is no database at {where}: name one with --from, "
                        "or set DATA_DIR / DATABASE_URL as the bot has them")
    return _open_sqlite(path)


async def open_target(where: str) -> Database:
    """The database to write: a PostgreSQL URL, or a SQLite file (created) in a folder that exists."""
    if is_postgres_url(where):
        return await _open_postgres(where)
    path = Path(where).expanduser()
    if path.is_dir():
        raise CopyError(f"--to {where} is a folder: name the SQLite file to write, e.g. {path / 'voicebot.sqlite3'}")
    if not path.parent.is_dir():
        raise CopyError(f"--to {where}: the folder {str(path.parent) or '.'} does not exist: create it first")
    return _open_sqlite(path)


def _open_sqlite(path: Path) -> SqliteDatabase:
    try:
        return SqliteDatabase(path)
    except DatabaseError as exc:
        raise CopyError(str(exc)) from None


async def _same_database(a: Database, b: Database) -> bool:
    if isinstance(a, SqliteDatabase) and isinstance(b, SqliteDatabase):
        if a.path is None or b.path is None:
            return False
        try:
            return a.path.resolve() == b.path.resolve() or os.path.samefile(a.path, b.path)
        except OSError:
            return False
    if isinstance(a, PostgresDatabase) and isinstance(b, PostgresDatabase):
        # Advisory locks are per database: one held through ``a`` cannot be taken through ``b`` exactly
        # when both reach the same database (whatever host name, port spelling or user each URL has).
        key = random.getrandbits(62)
        async with a.transaction() as tx:
            await tx.scalar("SELECT pg_advisory_xact_lock(?)", (key,))
            async with b.transaction() as other:
                return not await other.scalar("SELECT pg_try_advisory_xact_lock(?)", (key,))
    return False


# ---------------------------------------------------------------------------------------------
# What a database holds


@dataclass
class Table:
    """A table's shape as one database has it."""

    name: str
    columns: list[str]
    types: dict[str, str]  # column → lowercased declared type (SQLite) or data_type (PostgreSQL)
    key: list[str]  # primary-key columns, or the row address (rowid / ctid) when there is none
    row_address: bool = False  # key is rowid / ctid, not columns of the table
    serials: list[str] = field(default_factory=list)  # columns numbered by the database itself
    identity: bool = False  # PostgreSQL identity column: inserts need OVERRIDING SYSTEM VALUE


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _table(db: Database, name: str) -> Table:
    if db.dialect == "sqlite":
        rows = await db.query(f"PRAGMA table_info({_q(name)})")
        columns = [str(r[1]) for r in rows]
        types = {str(r[1]): str(r[2] or "").lower() for r in rows}
        pk = [str(r[1]) for r in sorted((r for r in rows if r[5]), key=lambda r: r[5])]
        serials = pk if len(pk) == 1 and types[pk[0]] == "integer" else []  # an alias of the rowid
        if not pk:
            return Table(name, columns, types, ["rowid"], row_address=True)
        return Table(name, columns, types, pk, serials=serials)
    rows = await db.query(  # generated columns (recall's tsvector) are computed by the target itself
        "SELECT column_name, data_type, column_default, is_identity FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ? AND is_generated <> 'ALWAYS' "
        "ORDER BY ordinal_position", (name,))
    columns = [str(r[0]) for r in rows]
    types = {str(r[0]): str(r[1]).lower() for r in rows}
    serials = [str(r[0]) for r in rows if r[3] == "YES" or str(r[2] or "").startswith("nextval(")]
    identity = any(r[3] == "YES" for r in rows)
    pk_rows = await db.query(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(?) AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)", (_q(name),))
    pk = [str(r[0]) for r in pk_rows]
    if not pk:
        return Table(name, columns, types, ["ctid"], row_address=True, serials=serials, identity=identity)
    return Table(name, columns, types, pk, serials=serials, identity=identity)


async def _references(db: Database, tables: Sequence[str]) -> dict[str, set[str]]:
    """table → the tables its foreign keys point at (among ``tables``)."""
    wanted = set(tables)
    refs: dict[str, set[str]] = {t: set() for t in tables}
    if db.dialect == "sqlite":
        for t in tables:
            for r in await db.query(f"PRAGMA foreign_key_list({_q(t)})"):
                if str(r[2]) in wanted and str(r[2]) != t:
                    refs[t].add(str(r[2]))
        return refs
    rows = await db.query(
        "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c "
        "JOIN pg_namespace n ON n.oid = c.connamespace WHERE c.contype = 'f' AND n.nspname = current_schema()")
    for child, parent in rows:
        child, parent = str(child).strip('"'), str(parent).strip('"')
        if child in wanted and parent in wanted and child != parent:
            refs[child].add(parent)
    return refs


def _parents_first(tables: Sequence[str], refs: dict[str, set[str]]) -> list[str]:
    order: list[str] = []
    placed: set[str] = set()
    pending = sorted(tables)
    while pending:
        ready = [t for t in pending if refs.get(t, set()) <= placed] or pending[:1]  # a cycle: any order
        for t in ready:
            order.append(t)
            placed.add(t)
        pending = [t for t in pending if t not in placed]
    return order


async def _count(db: Database, table: str) -> int:
    return int(await db.scalar(f"SELECT COUNT(*) FROM {_q(table)}") or 0)


# ---------------------------------------------------------------------------------------------
# Reading in batches, and the checksum


async def _batches(db: Database, table: Table, columns: Sequence[str],
                   batch: int = BATCH_ROWS) -> AsyncIterator[list[tuple[Any, ...]]]:
    """Every row of ``table`` (``columns`` only), ``batch`` rows at a time, in key order (keyset pages)."""
    names = ", ".join(_q(c) for c in columns)
    if table.row_address:  # rowid / ctid: selected first, left out of the rows handed back
        address = table.key[0]
        select, order, lhs, rhs, positions, skip = f"SELECT {address}, {names}", address, address, "?", [0], 1
    else:
        missing = [k for k in table.key if k not in columns]
        if missing:
            raise CopyError(f"{table.name}: its key column(s) {', '.join(missing)} are not copied")
        keys = [_q(k) for k in table.key]
        order = ", ".join(keys)
        lhs = keys[0] if len(keys) == 1 else f"({order})"
        rhs = "?" if len(keys) == 1 else "(" + ", ".join("?" for _ in keys) + ")"
        select, positions, skip = f"SELECT {names}", [list(columns).index(k) for k in table.key], 0
    base = f"{select} FROM {_q(table.name)}"
    last: tuple[Any, ...] | None = None
    while True:
        if last is None:
            rows = await db.query(f"{base} ORDER BY {order} LIMIT {int(batch)}")
        else:
            rows = await db.query(f"{base} WHERE {lhs} > {rhs} ORDER BY {order} LIMIT {int(batch)}", last)
        if not rows:
            return
        last = tuple(rows[-1][p] for p in positions)
        yield [tuple(r)[skip:] for r in rows]
        if len(rows) < batch:
            return


_PLAIN = frozenset({int, str, bytes, type(None)})


def _norm(value: Any) -> Any:
    """One value in the form both backends agree on: None, int, a non-integral float, str or bytes."""
    kind = type(value)
    if kind is float:
        return int(value) if value.is_integer() and abs(value) < 2**63 else value
    if kind is bool:
        return int(value)
    if isinstance(value, Decimal):
        return _norm(int(value) if value == value.to_integral_value() else float(value))
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value)
    return str(value)


def _row_hash(row: Sequence[Any]) -> int:
    # repr() of a tuple of None/int/float/str/bytes is unambiguous and exact (floats round-trip),
    # and built in C: the checksum costs a few microseconds a row.
    canon = tuple(v if type(v) in _PLAIN else _norm(v) for v in row)
    digest = hashlib.blake2b(repr(canon).encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(digest, "big")


@dataclass
class TableCheck:
    """A table's row count and checksum on one side."""

    rows: int = 0
    checksum: int = 0

    def add(self, rows: Sequence[Sequence[Any]]) -> None:
        total = self.checksum
        for row in rows:
            total += _row_hash(row)
        self.checksum = total % _MOD
        self.rows += len(rows)

    @property
    def hex(self) -> str:
        return f"{self.checksum:032x}"


async def table_checksum(db: Database, table: str, columns: Sequence[str] | None = None) -> TableCheck:
    """Row count and order-independent checksum of ``table`` over ``columns`` (default: all, by name)."""
    shape = await _table(db, table)
    cols = sorted(columns if columns is not None else shape.columns)
    check = TableCheck()
    async for rows in _batches(db, shape, cols):
        check.add(rows)
    return check


# ---------------------------------------------------------------------------------------------
# Status


async def incomplete_copy(db: Database) -> str | None:
    """Where the interrupted copy into ``db`` came from and when it started, or None when there is none."""
    if MARKER_TABLE not in await db.tables():
        return None
    row = await db.query_one(f"SELECT source, started_at FROM {MARKER_TABLE}")
    if row is None:
        return "an unknown source"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(row[1])))
    return f"{row[0]}, started {started}"


async def status(db: Database) -> dict[str, Any]:
    """Backend, schema versions (with what this bot knows), row counts per table, size."""
    components = all_components()
    versions = await db.versions()
    owners = known_tables()
    present = await db.tables()
    tables = {}
    for name in sorted(present - {"schema_versions"}):
        tables[name] = {"rows": await _count(db, name), "component": owners.get(name)}
    return {
        "backend": db.dialect,
        "database": db.describe(),
        "size_bytes": await db.size_bytes(),
        "schema": {name: {"version": versions.get(name, 0),
                          "known": components[name].version if name in components else None}
                   for name in sorted(set(versions) | set(components))},
        "tables": tables,
        "incomplete_copy": await incomplete_copy(db),
    }


# ---------------------------------------------------------------------------------------------
# Copy


@dataclass
class CopyReport:
    """What a finished, verified copy did."""

    tables: dict[str, TableCheck]
    versions: dict[str, int]
    seconds: float

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.tables.values())


async def check_source(source: Database) -> dict[str, int]:
    """The source's schema versions (component → version); CopyError when this bot cannot copy it."""
    return await _source_schema(source, all_components())


async def _source_schema(source: Database, components: dict[str, Component]) -> dict[str, int]:
    versions = await source.versions()
    for name, version in versions.items():
        if name not in components:
            raise CopyError(f"{source.describe()} holds the {name} schema (version {version}), which this version "
                            "of the bot does not know: it was written by a newer release; copy it with that release")
        if version > components[name].version:
            raise CopyError(f"{source.describe()}: the {name} schema is at version {version} but this version of "
                            f"the bot only knows {components[name].version}; it was written by a newer release: "
                            "copy it with that release")
    return {name: v for name, v in versions.items() if v > 0}


async def _target_holds_data(target: Database, tables: set[str]) -> str | None:
    """A table of the bot's that holds rows in ``target`` (None when the target is empty)."""
    for name in sorted(tables & await target.tables()):
        if await target.scalar(f"SELECT 1 FROM {_q(name)} LIMIT 1") is not None:
            return name
    return None


async def _clear_target(target: Database, tables: set[str], components: Sequence[str]) -> None:
    """Drop the bot's tables from ``target`` (foreign keys off on SQLite, CASCADE on PostgreSQL) and their versions."""
    present = sorted(tables & await target.tables())
    if target.dialect == "sqlite":
        await target.execute("PRAGMA foreign_keys=OFF")
        try:
            async with target.transaction() as tx:
                for name in present:
                    await tx.execute(f"DROP TABLE IF EXISTS {_q(name)}")
        finally:
            await target.execute("PRAGMA foreign_keys=ON")
    else:
        async with target.transaction() as tx:
            for name in present:
                await tx.execute(f"DROP TABLE IF EXISTS {_q(name)} CASCADE")
    if components:
        marks = ", ".join("?" for _ in components)
        await target.execute(f"DELETE FROM schema_versions WHERE component IN ({marks})", tuple(components))


_PASS = frozenset({int, str, bytes, float, type(None)})


def _coerce(types: Sequence[str], dialect: str) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """Values as the target's driver takes them for its column types.

    sqlite3 takes what either backend returns but Decimal and dates; asyncpg takes an int for a
    double and an integral float for a bigint, but wants a bool for a boolean, str for text and
    bytes for bytea, so only those columns are converted (a row at a time costs microseconds).
    """
    if dialect == "sqlite":
        def to_sqlite(v: Any) -> Any:
            if type(v) in _PASS:
                return v
            if isinstance(v, bool):
                return int(v)
            if isinstance(v, Decimal):
                return int(v) if v == v.to_integral_value() else float(v)
            if isinstance(v, (datetime, date)):
                return v.isoformat()
            if isinstance(v, (bytearray, memoryview)):
                return bytes(v)
            return v
        return lambda row: row if _PASS.issuperset(map(type, row)) else tuple(to_sqlite(v) for v in row)
    converters: dict[int, Callable[[Any], Any]] = {}
    for i, t in enumerate(types):
        if t == "boolean":
            converters[i] = lambda v: v if v is None or isinstance(v, bool) else bool(int(v))
        elif t in ("text", "character varying", "character"):
            converters[i] = lambda v: v if v is None or isinstance(v, str) else \
                (bytes(v).decode("utf-8") if isinstance(v, (bytes, bytearray, memoryview)) else str(v))
        elif t == "bytea":
            converters[i] = lambda v: v if v is None or isinstance(v, bytes) else \
                (v.encode() if isinstance(v, str) else bytes(v))
        elif t in ("bigint", "integer", "smallint"):
            converters[i] = lambda v: v if v is None or type(v) is int else int(v)
    text_like = {i for i, t in enumerate(types) if t in ("text", "character varying", "character")}
    # Text columns hold str from either backend: only the others need a look at each value.
    checked = {i: c for i, c in converters.items() if i not in text_like}
    if not checked:
        return lambda row: row

    def convert(row: tuple[Any, ...]) -> tuple[Any, ...]:
        out = list(row)
        for i, c in checked.items():
            out[i] = c(out[i])
        return tuple(out)
    return convert


async def _high_water(db: Database, table: Table, column: str) -> int:
    """The last number ``db`` handed out for ``column`` (0 when none): ids are never reused after a copy."""
    if db.dialect == "sqlite":
        if "sqlite_sequence" not in {str(r[0]) for r in await db.query(
                "SELECT name FROM sqlite_master WHERE name = 'sqlite_sequence'")}:
            return 0
        value = await db.scalar("SELECT seq FROM sqlite_sequence WHERE name = ?", (table.name,))
        return int(value or 0)
    seq = await db.scalar("SELECT pg_get_serial_sequence(?, ?)", (_q(table.name), column))
    if seq is None:
        return 0
    row = await db.query_one(f"SELECT last_value, is_called FROM {seq}")
    return int(row[0]) if row is not None and row[1] else 0


async def _reset_numbering(source: Database, target: Database, src: Table, dst: Table) -> None:
    """After a copy, the target's counters continue after the highest id either side handed out."""
    for column in dst.serials:
        top = int(await target.scalar(f"SELECT COALESCE(MAX({_q(column)}), 0) FROM {_q(dst.name)}") or 0)
        if column in src.serials:
            top = max(top, await _high_water(source, src, column))
        if target.dialect == "postgresql":
            seq = await target.scalar("SELECT pg_get_serial_sequence(?, ?)", (_q(dst.name), column))
            if seq is None:
                continue
            if top > 0:
                await target.scalar("SELECT setval(?::regclass, ?, true)", (seq, top))
            else:
                await target.scalar("SELECT setval(?::regclass, 1, false)", (seq,))
        elif top > 0 and await target.scalar(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ? AND sql LIKE '%AUTOINCREMENT%'",
                (dst.name,)) is not None:
            async with target.transaction() as tx:
                if await tx.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (top, dst.name)) == 0:
                    await tx.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (dst.name, top))


async def copy_database(source: Database, target: Database, *, force: bool = False,
                        source_name: str | None = None, progress: Progress | None = None,
                        batch: int = BATCH_ROWS) -> CopyReport:
    """Copy every registered component's tables from ``source`` to ``target`` and verify them.

    Raises :class:`CopyError` (one line) for a target that holds data or an interrupted copy
    (unless ``force``), the same database on both sides, a source at a newer schema, and a
    verification that failed (the target then stays marked incomplete).
    """
    started = time.perf_counter()
    if await _same_database(source, target):
        raise CopyError(f"the source and the target are the same database ({target.describe()}): "
                        "name another target with --to")
    components = all_components()
    versions = await _source_schema(source, components)
    owners = known_tables()
    bot_tables = set(owners) | {MARKER_TABLE}
    if not force:
        interrupted = await incomplete_copy(target)
        if interrupted is not None:
            raise CopyError(f"{target.describe()} holds an interrupted copy (from {interrupted}): "
                            "run the copy again with --force to start it over")
        holder = await _target_holds_data(target, bot_tables)
        if holder is not None:
            raise CopyError(f"{target.describe()} is not empty (the table {holder} has rows): "
                            "add --force to replace what it holds, or name an empty target")

    # Mark first: from here on an interruption leaves a target the next copy refuses.
    await target.execute("CREATE TABLE IF NOT EXISTS voicebot_copy_incomplete (source TEXT NOT NULL, "
                         "started_at DOUBLE PRECISION NOT NULL)")  # MARKER_TABLE
    await target.execute(f"DELETE FROM {MARKER_TABLE}")
    await target.execute(f"INSERT INTO {MARKER_TABLE} (source, started_at) VALUES (?, ?)",
                         (source_name or source.describe(), time.time()))
    await _clear_target(target, bot_tables - {MARKER_TABLE}, list(components))
    try:
        await migrate_all(target, versions)
    except DatabaseError as exc:
        raise CopyError(str(exc)) from None

    source_tables = await source.tables()
    target_tables = await target.tables()
    wanted = sorted(({t for name, v in versions.items() for t in component_tables(name)[v]}
                     & source_tables & target_tables) - DERIVED)
    order = _parents_first(wanted, await _references(target, wanted))
    shapes: dict[str, tuple[Table, Table, list[str]]] = {}
    totals: dict[str, int] = {}
    for name in order:
        src, dst = await _table(source, name), await _table(target, name)
        missing = [c for c in dst.columns if c not in src.columns]
        if missing:
            raise CopyError(f"{source.describe()}: the table {name} lacks the column(s) {', '.join(missing)} its "
                            "schema version has: the source was changed by hand")
        shapes[name] = (src, dst, sorted(dst.columns))
        totals[name] = await _count(source, name)
    all_rows = sum(totals.values())

    # Rows a migration step may have seeded are replaced by the source's.
    async with target.transaction() as tx:
        for name in reversed(order):
            await tx.execute(f"DELETE FROM {_q(name)}")

    copied: dict[str, TableCheck] = {}
    done = 0
    for name in order:
        src, dst, columns = shapes[name]
        check = copied[name] = TableCheck()
        overriding = " OVERRIDING SYSTEM VALUE" if dst.identity else ""
        insert = (f"INSERT INTO {_q(name)} (" + ", ".join(_q(c) for c in columns) + f"){overriding} VALUES ("
                  + ", ".join("?" for _ in columns) + ")")
        coerce = _coerce([dst.types[c] for c in columns], target.dialect)
        if progress is not None:
            progress(name, 0, totals[name], done, all_rows)
        # The target writes one batch while the next is read and the last one hashed.
        writing: asyncio.Task[None] | None = None
        try:
            async for rows in _batches(source, src, columns, batch):
                payload = [coerce(r) for r in rows]
                if writing is not None:
                    await writing
                writing = asyncio.create_task(target.executemany(insert, payload), name=f"copy-{name}")
                check.add(rows)
                done += len(rows)
                if progress is not None:
                    progress(name, check.rows, totals[name], done, all_rows)
            if writing is not None:
                await writing
        finally:
            if writing is not None and not writing.done():
                writing.cancel()
                await asyncio.gather(writing, return_exceptions=True)
        await _reset_numbering(source, target, src, dst)

    problems = []
    for name in order:
        _src, _dst, columns = shapes[name]
        there = await table_checksum(target, name, columns)
        here = copied[name]
        if (there.rows, there.checksum) != (here.rows, here.checksum):
            problems.append(f"{name}: {here.rows} rows / checksum {here.hex[:12]} read from the source, "
                            f"{there.rows} / {there.hex[:12]} in the target")
        elif await _count(source, name) != here.rows:
            problems.append(f"{name}: the source changed while it was copied (is the bot still running on it?): "
                            "stop the bot and copy again with --force")
    if problems:
        raise CopyError(f"verification failed, the target stays marked incomplete: {'; '.join(problems)}")
    await target.execute(f"DROP TABLE {MARKER_TABLE}")
    return CopyReport(tables=copied, versions=versions, seconds=time.perf_counter() - started)
