"""Two components registered for the copy tests, with every kind of column the stores use and some they may.

Importing this module registers them (as a store module does). ``a_links`` sorts before
``copytest`` but needs its ``ct_people`` table (a foreign key across components), so it also tests that
migrations run in rounds. :func:`fill` writes ``n`` rows through the portable interface.
"""

from __future__ import annotations

import random

from bot.store.database import Database
from bot.store.registry import register

COPYTEST_STEPS = [
    {
        "sqlite": """
            CREATE TABLE ct_people (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at REAL NOT NULL);
            CREATE TABLE ct_turns (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                room TEXT NOT NULL,
                person_id INTEGER REFERENCES ct_people (id) ON DELETE CASCADE,
                text TEXT NOT NULL,
                created_at REAL NOT NULL,
                interrupted INTEGER NOT NULL DEFAULT 0,
                audio BLOB
            );
            CREATE INDEX ct_turns_room ON ct_turns (room, id);
            CREATE TABLE ct_pairs (guild_id INTEGER NOT NULL, channel_id INTEGER NOT NULL, kind TEXT NOT NULL,
                                   PRIMARY KEY (guild_id, channel_id, kind));
            CREATE TABLE ct_notes (note TEXT, weight REAL);
        """,
        "postgresql": """
            CREATE TABLE ct_people (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                    created_at DOUBLE PRECISION NOT NULL);
            CREATE TABLE ct_turns (
                id BIGSERIAL PRIMARY KEY,
                room TEXT NOT NULL,
                person_id BIGINT REFERENCES ct_people (id) ON DELETE CASCADE,
                text TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                interrupted BOOLEAN NOT NULL DEFAULT FALSE,
                audio BYTEA
            );
            CREATE INDEX ct_turns_room ON ct_turns (room, id);
            CREATE TABLE ct_pairs (guild_id BIGINT NOT NULL, channel_id BIGINT NOT NULL, kind TEXT NOT NULL,
                                   PRIMARY KEY (guild_id, channel_id, kind));
            CREATE TABLE ct_notes (note TEXT, weight DOUBLE PRECISION);
        """,
    },
    """
    ALTER TABLE ct_turns ADD COLUMN language TEXT;
    CREATE TABLE ct_settings (place TEXT PRIMARY KEY, value TEXT);
    """,
]

LINKS_STEPS = [
    "CREATE TABLE ct_links (number TEXT PRIMARY KEY, person_id BIGINT NOT NULL REFERENCES ct_people (id))",
]

TABLES = ("ct_links", "ct_notes", "ct_pairs", "ct_people", "ct_settings", "ct_turns")

register("copytest", COPYTEST_STEPS)
register("a_links", LINKS_STEPS)

_WORDS = ["hello", "grüße", "こんにちは", "emoji 🎙️", "it's", 'say "hi"', "line\nbreak", "", "0.1 + 0.2"]


async def fill(db: Database, n: int, *, seed: int = 7) -> None:
    """``n`` turns and proportionate people, links, pairs, notes and settings, through the portable interface."""
    rng = random.Random(seed)
    people = max(1, n // 10)
    pg = db.dialect == "postgresql"
    await db.executemany("INSERT INTO ct_people (created_at) VALUES (?)",
                         [(1.7e9 + i + 0.25,) for i in range(people)])
    ids = [int(r[0]) for r in await db.query("SELECT id FROM ct_people ORDER BY id")]
    await db.executemany(
        "INSERT INTO ct_turns (room, person_id, text, created_at, interrupted, audio, language) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(f"guild:{rng.randrange(5)}:{rng.randrange(3)}", rng.choice(ids + [None]),
          f"{rng.choice(_WORDS)} {i}", 1.7e9 + i / 3 + rng.random(),
          (i % 7 == 0) if pg else int(i % 7 == 0),
          bytes(rng.randrange(256) for _ in range(rng.randrange(4))) if i % 5 == 0 else None,
          rng.choice(["en", "de", None]))
         for i in range(n)])
    await db.executemany("INSERT INTO ct_links (number, person_id) VALUES (?, ?)",
                         [(f"+1555{i:07d}", ids[i % len(ids)]) for i in range(max(1, n // 20))])
    await db.executemany("INSERT INTO ct_pairs (guild_id, channel_id, kind) VALUES (?, ?, ?)",
                         [(1_000_000_000_000_000_000 + i, 900_000_000_000_000_000 + i * 7, kind)
                          for i in range(max(1, n // 50)) for kind in ("auto_join", "allowed")])
    await db.executemany("INSERT INTO ct_notes (note, weight) VALUES (?, ?)",
                         [(rng.choice(_WORDS + [None]), rng.choice([0.1, 1.0, 2.5e-300, -3.0, None]))
                          for _ in range(max(2, n // 30))] + [("twice", 1.0), ("twice", 1.0)])
    await db.executemany("INSERT INTO ct_settings (place, value) VALUES (?, ?)",
                         [("guild:1", "de"), ("phone:+15550000001", None)])
