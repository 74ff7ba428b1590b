"""A language setting per place (``guild:ID``, ``phone:+1555…``, ``discord:ID``, ``console``): the rows.

Rows of a person's place name that person, so forget deletes them; guild rows name no one.
"""

from __future__ import annotations

import time
from typing import Any

from bot.store.database import Database
from bot.store.erase import Erasure, ForgetReport, Who, marks, register, register_builtin

__all__ = ["LanguageRows", "CHANNEL"]

COMPONENT = "languages"
CHANNEL = "voicebot_languages"  # NOTIFY channel: payload is the place whose row changed

MIGRATIONS: list[Any] = [
    {"sqlite": """
    CREATE TABLE language_places (
        place TEXT PRIMARY KEY,
        setting TEXT,
        learned TEXT,
        updated_at REAL NOT NULL
    )
    """, "postgresql": """
    CREATE TABLE language_places (
        place TEXT PRIMARY KEY,
        setting TEXT,
        learned TEXT,
        updated_at DOUBLE PRECISION NOT NULL
    )
    """},
]


class LanguageRows(Erasure):
    component = COMPONENT
    cleans = {"language_places": "the language a phone number chose or wrote in (guild rows name no one)"}

    def __init__(self, db: Database | None) -> None:
        self.db: Database = db  # type: ignore[assignment]  # None: erasure only
        self.forgotten_places: Any = None  # the cache's callback, told which places a forget removed

    async def migrate(self) -> None:
        await self.db.migrate(COMPONENT, MIGRATIONS)
        register(self.db, self)

    async def all(self) -> dict[str, tuple[str | None, str | None]]:
        rows = await self.db.query("SELECT place, setting, learned FROM language_places")
        return {str(r[0]): (r[1], r[2]) for r in rows}

    async def get(self, place: str) -> tuple[str | None, str | None] | None:
        row = await self.db.query_one("SELECT setting, learned FROM language_places WHERE place = ?", (place,))
        return None if row is None else (row[0], row[1])

    async def set(self, place: str, setting: str | None) -> None:
        await self.db.execute(
            "INSERT INTO language_places (place, setting, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (place) DO UPDATE SET setting = excluded.setting, updated_at = excluded.updated_at",
            (place, setting, time.time()))

    async def learn(self, place: str, language: str) -> None:
        await self.db.execute(
            "INSERT INTO language_places (place, learned, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (place) DO UPDATE SET learned = excluded.learned, updated_at = excluded.updated_at",
            (place, language, time.time()))

    async def delete(self, place: str) -> None:
        await self.db.execute("DELETE FROM language_places WHERE place = ?", (place,))

    async def forget(self, tx: Database, who: Who, report: ForgetReport) -> None:
        ids = sorted(who.identities)
        await tx.execute(f"DELETE FROM language_places WHERE place IN ({marks(ids)})", ids)
        report.touched.add("language_places")

    async def forgotten(self, who: Who) -> None:
        if self.forgotten_places is not None:
            await self.forgotten_places(set(who.identities))


register_builtin(LanguageRows(None))


from bot.store import registry as _schemas  # noqa: E402  (tools that open a database know this schema)

_schemas.register(COMPONENT, MIGRATIONS)
