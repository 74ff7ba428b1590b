"""Rows for every registered table a test has not filled itself, made from the table's own declaration.

So the copy round trip covers whatever component registers later (usage, recall, cluster...) with no
test to edit: each column gets a value of its declared kind (keys distinct, other integers 0/1 so a
SQLite INTEGER that is a PostgreSQL BOOLEAN agrees, floats with a fraction, text with quotes and
non-ASCII, NULL in every fourth row of a nullable column), a foreign key takes its parent's values,
and ``CHECK (column IN (...))`` is honoured. Runs on the SQLite source (the sqlite forms of the steps).
"""

from __future__ import annotations

import re

from bot.store.database import Database, IntegrityError
from bot.store.registry import all_components, component_tables

_CHECK_IN = re.compile(r"CHECK\s*\(\s*\"?(\w+)\"?\s+IN\s*\(([^)]*)\)\s*\)", re.IGNORECASE)


async def fill_every_table(db: Database, rows: int = 40) -> dict[str, int]:
    """Insert up to ``rows`` rows into every empty table of every registered component; rows per table."""
    assert db.dialect == "sqlite"
    present = await db.tables()
    wanted = sorted({t for name in all_components() for t in component_tables(name)[-1]} & present)
    parents: dict[str, dict[str, tuple[str, str]]] = {}
    for table in wanted:
        parents[table] = {str(r[3]): (str(r[2]), str(r[4] or "rowid"))
                          for r in await db.query(f'PRAGMA foreign_key_list("{table}")')}
    order: list[str] = []
    while len(order) < len(wanted):
        ready = [t for t in wanted if t not in order
                 and all(p in order or p == t or p not in wanted for p, _ in parents[t].values())]
        order.extend(ready or [t for t in wanted if t not in order][:1])
    filled: dict[str, int] = {}
    for table in order:
        if await db.scalar(f'SELECT 1 FROM "{table}" LIMIT 1') is not None:
            continue
        sql = str(await db.scalar("SELECT sql FROM sqlite_master WHERE name = ?", (table,)) or "")
        choices = {col: [v.strip().strip("'") for v in values.split(",")] for col, values in _CHECK_IN.findall(sql)}
        info = await db.query(f'PRAGMA table_info("{table}")')
        keys = {str(r[1]) for r in info if r[5]}
        autoincrement = "AUTOINCREMENT" in sql.upper()
        pools = {col: [r[0] for r in await db.query(f'SELECT "{pcol}" FROM "{ptable}"')]
                 for col, (ptable, pcol) in parents[table].items()}
        columns = [r for r in info if not (autoincrement and str(r[1]) in keys)]
        names = [str(r[1]) for r in columns]
        insert = (f'INSERT INTO "{table}" (' + ", ".join(f'"{n}"' for n in names) + ") VALUES ("
                  + ", ".join("?" for _ in names) + ")")
        done = 0
        for i in range(rows):
            values = []
            for r in columns:
                col, kind, notnull = str(r[1]), str(r[2] or "").upper(), bool(r[3]) or str(r[1]) in keys
                if col in pools and pools[col]:
                    values.append(pools[col][i % len(pools[col])])
                elif col in choices:
                    values.append(choices[col][i % len(choices[col])])
                elif not notnull and i % 4 == 3:
                    values.append(None)
                elif "INT" in kind:
                    # keys past 32 bits where the column is declared BIGINT (PostgreSQL's INTEGER is 32-bit)
                    values.append(((10**15 if "BIG" in kind else 2**31 - 1000) + i) if col in keys else i % 2)
                elif any(k in kind for k in ("REAL", "DOUBLE", "FLOA")):
                    values.append(1.7e9 + i + 0.25)
                elif "BLOB" in kind or "BYTEA" in kind:
                    values.append(bytes([i % 256, 0, 255]))
                else:
                    values.append(f"{col} {i}: it's \"ok\" ✓")
            try:
                await db.execute(insert, values)
                done += 1
            except IntegrityError:
                continue
        filled[table] = done
    return filled
