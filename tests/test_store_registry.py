"""The registry of components: registration, the tables each version holds, and bringing an empty
database (SQLite and PostgreSQL) to the full schema whatever the order components registered in."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import tests.store_components as components
from bot.store.database import PostgresDatabase, SqliteDatabase
from bot.store.registry import all_components, component_tables, known_tables, migrate_all, register, unregister


def test_register_is_idempotent_and_refuses_other_steps() -> None:
    register("copytest", components.COPYTEST_STEPS)  # a module imported twice
    with pytest.raises(ValueError, match="already registered"):
        register("copytest", components.COPYTEST_STEPS[:1])
    assert all_components()["copytest"].version == 2


def test_tables_per_version_come_from_the_steps() -> None:
    assert component_tables("copytest") == (
        frozenset(), frozenset({"ct_people", "ct_turns", "ct_pairs", "ct_notes"}),
        frozenset({"ct_people", "ct_turns", "ct_pairs", "ct_notes", "ct_settings"}))
    assert component_tables("a_links") == (frozenset(), frozenset({"ct_links"}))
    owners = known_tables()
    assert owners["ct_links"] == "a_links" and owners["ct_settings"] == "copytest"

    register("dropper", ["CREATE TABLE dr_old (x TEXT)", "DROP TABLE dr_old; CREATE TABLE dr_new (x TEXT)"])
    try:
        assert component_tables("dropper") == (frozenset(), frozenset({"dr_old"}), frozenset({"dr_new"}))
        assert {"dr_old", "dr_new"} <= set(known_tables())  # a copy of an old database knows both
    finally:
        unregister("dropper")


def test_migrate_all_brings_an_empty_database_to_the_full_schema(tmp_path: Path, pg_url: str) -> None:
    async def both() -> None:
        # a_links registers first but needs copytest's table: on PostgreSQL its first try fails and
        # it runs again after copytest.
        for db in (SqliteDatabase(tmp_path / "x.sqlite3"), await PostgresDatabase.connect(pg_url)):
            try:
                await migrate_all(db)
                assert await db.versions() == {n: c.version for n, c in all_components().items()}
                assert set(components.TABLES) <= await db.tables()
                await migrate_all(db)  # again: nothing to do
            finally:
                await db.close()

    asyncio.run(both())


def test_every_store_that_migrates_a_component_registers_it_where_tools_find_it() -> None:
    """A store that runs ``db.migrate(COMPONENT, STEPS)`` must also ``register(COMPONENT, STEPS)`` at
    import, in a module ``all_components()`` imports: otherwise ``voicebot db copy`` would leave its
    tables behind without a word."""
    import re
    import sys

    from tests.cli_runs import ROOT

    all_components()
    for path in sorted(ROOT.glob("bot/**/*.py")):
        if path.name == "registry.py":
            continue
        text = path.read_text(encoding="utf-8")
        if not re.search(r"await\s+[\w.]+\.migrate\(\s*[\w.\"']+\s*,", text):
            continue
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        assert re.search(r"\bregister\(", text), f"{module} migrates a component but never registers it: add " \
            "`register(COMPONENT, MIGRATIONS)` (from bot.store.registry) after its MIGRATIONS"
        assert module in sys.modules, f"{module} registers a component but all_components() does not import " \
            "it: move it into bot/store or name it in bot.store.registry.STORE_MODULES"
