"""``voicebot db status`` and ``voicebot db copy``: what the database holds, and moving it to another.

The configured database is DATABASE_URL when set, else the SQLite file in DATA_DIR. Results go to
stdout, the progress bar and every refusal to stderr (one line; exit status 2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from bot.settings import Settings

__all__ = ["add_db_parser", "cmd_db", "configured_location", "ProgressBar"]

CONFIG = 2


def configured_location(settings: Settings) -> str:
    """Where the bot keeps its data: DATABASE_URL, else the SQLite file in DATA_DIR."""
    url = getattr(settings, "database_url", None)
    return url if url else str(settings.data_dir / "voicebot.sqlite3")


def add_db_parser(sub: Any) -> None:
    db = sub.add_parser("db", help="the database: what it holds, and copying it to another (SQLite, PostgreSQL)")
    commands = db.add_subparsers(dest="db_command", metavar="{status,copy}")
    commands.required = True
    status = commands.add_parser("status", help="backend, schema versions, rows per table and size")
    status.add_argument("--from", dest="source", metavar="URL_OR_PATH",
                        help="the database to look at (default: DATABASE_URL, else the SQLite file in DATA_DIR)")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    copy = commands.add_parser("copy", help="copy everything to another database, verified table by table")
    copy.add_argument("--to", required=True, metavar="URL_OR_PATH",
                      help="postgresql://user:password@host:5432/name, or a SQLite file to write")
    copy.add_argument("--from", dest="source", metavar="URL_OR_PATH",
                      help="the database to copy (default: DATABASE_URL, else the SQLite file in DATA_DIR)")
    copy.add_argument("--force", action="store_true",
                      help="replace what the target holds (also needed after an interrupted copy)")


class ProgressBar:
    """A progress bar on a terminal; on anything else one line per table and per tenth."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.perf_counter()
        self.shown = 0.0
        self.tenth = -1
        self.table = ""

    def __call__(self, table: str, done: int, rows: int, all_done: int, all_rows: int) -> None:
        now = time.perf_counter()
        fraction = all_done / all_rows if all_rows else 1.0
        rate = all_done / max(now - self.started, 1e-9)
        if self.tty:
            if now - self.shown < 0.1 and done not in (0, rows):
                return
            self.shown = now
            width = 30
            filled = int(width * fraction)
            self.stream.write(f"\r[{'#' * filled}{'-' * (width - filled)}] {fraction:4.0%}  {table} {done:,}/{rows:,}"
                              f"  {all_done:,}/{all_rows:,} rows  {rate:,.0f} rows/s\033[K")
            self.stream.flush()
            return
        tenth = int(fraction * 10)
        if table != self.table or tenth != self.tenth:
            self.table, self.tenth = table, tenth
            self.stream.write(f"copying {table}: {done:,}/{rows:,} rows; {all_done:,}/{all_rows:,} in all "
                              f"({fraction:.0%})\n")
            self.stream.flush()

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


async def _status(where: str, as_json: bool, out: TextIO) -> int:
    from bot.store.copy import open_source, status

    db = await open_source(where)
    try:
        info = await status(db)
    finally:
        await db.close()
    if as_json:
        out.write(json.dumps(info, indent=2) + "\n")
        return 0
    out.write(f"backend: {info['database']}\n")
    out.write(f"size: {_size(info['size_bytes'])}\n")
    if info["incomplete_copy"]:
        out.write(f"INCOMPLETE: an interrupted copy into this database (from {info['incomplete_copy']}); "
                  "copy again with --force\n")
    out.write("schema versions (here / this bot):\n")
    for name, v in info["schema"].items():
        known = "not known to this bot" if v["known"] is None else str(v["known"])
        note = "  (newer than this bot)" if v["known"] is not None and v["version"] > v["known"] else ""
        out.write(f"  {name:<24} {v['version']:>4} / {known}{note}\n")
    out.write("rows per table:\n")
    for name, t in info["tables"].items():
        owner = t["component"] or "not the bot's"
        out.write(f"  {name:<24} {t['rows']:>12,}  ({owner})\n")
    return 0


def _key_note(settings: Settings, source_where: str, target_where: str) -> list[str]:
    """Carry the opt-out key with the data (it is not in the database): copy it beside a SQLite target, or say how."""
    from bot.store.database import is_postgres_url

    if getattr(settings, "privacy_key", None) is not None:
        return ["the opt-out key is PRIVACY_KEY: give the bot that uses the target the same PRIVACY_KEY"]
    configured = getattr(settings, "privacy_key_file", None)
    if configured is not None:
        key = Path(configured)
    elif not is_postgres_url(source_where):
        key = Path(source_where).with_name(Path(source_where).name + ".key")
    else:
        return ["the opt-out key is not in the database and none is configured here (PRIVACY_KEY_FILE or "
                "PRIVACY_KEY): give the bot that uses the target the key the source's bot used"]
    if not key.is_file():
        return [f"no opt-out key at {key} (none was made yet): the bot makes one at its first start"]
    if is_postgres_url(target_where):
        return [f"the opt-out key stays outside the database: set PRIVACY_KEY_FILE={key.absolute()} for the bot "
                "that uses the target (copy that file along if it runs on another machine), or PRIVACY_KEY to its "
                f"contents in hex (xxd -p -c 64 {key})"]
    target = Path(target_where)
    beside = target.with_name(target.name + ".key")
    if beside.exists():
        if beside.read_bytes() == key.read_bytes():
            return [f"the opt-out key is already beside the target ({beside})"]
        return [f"WARNING: {beside} holds another opt-out key: replace it with {key}, or the copied opt-outs "
                "cannot be recognised"]
    fd = os.open(beside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.read_bytes())
    shutil.copystat(key, beside)
    note = f"copied the opt-out key to {beside} (it travels beside the file, never inside it)"
    if configured is not None:
        note += f"; a bot that keeps PRIVACY_KEY_FILE={key} reads the same key"
    return [note]


async def _copy(settings: Settings, source_where: str, target_where: str, force: bool, out: TextIO,
                err: TextIO) -> int:
    from bot.store.copy import CopyError, check_source, copy_database, describe_location, open_source, open_target

    source = await open_source(source_where)
    try:
        await check_source(source)  # before the target is touched (a new SQLite file is not even made)
        target = await open_target(target_where)
        try:
            bar = ProgressBar(err)
            try:
                report = await copy_database(source, target, force=force,
                                             source_name=describe_location(source_where), progress=bar)
            finally:
                bar.end()
        finally:
            await target.close()
    finally:
        await source.close()
    out.write(f"copied {report.rows:,} rows in {len(report.tables)} tables from {source.describe()} to "
              f"{target.describe()} in {report.seconds:.1f} s; every table verified (row count and checksum):\n")
    for name, check in report.tables.items():
        out.write(f"  {name:<24} {check.rows:>12,}  {check.hex}\n")
    try:
        notes = _key_note(settings, source_where, target_where)
    except OSError as exc:
        raise CopyError(f"the data is copied, but the opt-out key could not be: {exc}") from None
    for note in notes:
        out.write(note + "\n")
    return 0


def _still_marked(target: str) -> bool | None:
    """Whether an interrupted copy left ``target`` marked incomplete (None: cannot tell)."""
    from bot.store.copy import incomplete_copy
    from bot.store.database import is_postgres_url

    if not is_postgres_url(target) and not Path(target).expanduser().is_file():
        return False

    async def look() -> bool:
        from bot.store.copy import open_target

        async with asyncio.timeout(10):
            db = await open_target(target)
        try:
            return await incomplete_copy(db) is not None
        finally:
            await db.close()

    try:
        return asyncio.run(look())
    except (Exception, KeyboardInterrupt):
        return None


def cmd_db(args: argparse.Namespace, settings: Settings, out: TextIO, prog: str) -> int:
    """Run ``voicebot db status|copy``; every refusal is one line on stderr and exit status 2."""
    from bot.store.copy import CopyError, describe_location
    from bot.store.database import DatabaseError

    source = args.source or configured_location(settings)
    try:
        if args.db_command == "status":
            return asyncio.run(_status(source, args.json, out))
        target = args.to
        try:
            return asyncio.run(_copy(settings, source, target, args.force, out, sys.stderr))
        except KeyboardInterrupt:
            where = describe_location(target)
            marked = _still_marked(target)
            if marked is False:
                sys.stderr.write(f"\n{prog}: interrupted before anything was written to {where}\n")
            else:
                sys.stderr.write(f"\n{prog}: interrupted: {where} is incomplete and marked so; run the copy "
                                 "again with --force to start it over\n")
            return CONFIG
    except (CopyError, DatabaseError) as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return CONFIG
