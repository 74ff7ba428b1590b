"""Which components keep tables in the database, and the migration steps that build them.

Each store module registers its component once, at import, next to its steps::

    register("memory", _MIGRATIONS)

so a tool that opens a database without starting the bot (``voicebot db copy``, ``db status``) knows
the full schema: :func:`all_components` imports every module of the ``bot.store`` package (so a store
added there registers itself, no list to edit) and returns what registered. A store module that lives
elsewhere is named in :data:`STORE_MODULES`.

The tables a component owns are not declared: :func:`component_tables` applies its steps to an
empty in-memory SQLite database and reads which tables exist after each one, so a table a later
step adds (or drops) is known without anyone keeping a second list in step with the first.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["Component", "STORE_MODULES", "all_components", "component_tables", "known_tables", "migrate_all",
           "register", "unregister"]

log = logging.getLogger(__name__)

# Store modules outside the bot.store package (imported by all_components for their register() call).
STORE_MODULES: tuple[str, ...] = ("bot.recall.index", "bot.facts.store", "bot.usage.store", "bot.cluster.store",
                                  "bot.phone.tokens")

Step = str | Mapping[str, str]


@dataclass(frozen=True)
class Component:
    """One component's schema: its name and the append-only list of its migration steps."""

    name: str
    steps: tuple[Step, ...]

    @property
    def version(self) -> int:
        """The schema version this release of the bot builds."""
        return len(self.steps)


_registry: dict[str, Component] = {}


def register(component: str, steps: Sequence[Step]) -> Component:
    """Declare ``component``'s migration steps (call once at import of the store module).

    Registering the same steps again (a module imported twice) is harmless; different steps under
    a name already taken are a programming error.
    """
    entry = Component(component, tuple(_frozen(step) for step in steps))
    known = _registry.get(component)
    if known is not None and known != entry:
        raise ValueError(f"component {component!r} is already registered with other migration steps")
    _registry[component] = entry
    _schema_map.cache_clear()
    return entry


def unregister(component: str) -> None:
    """Forget ``component`` (tests that register a component of their own)."""
    _registry.pop(component, None)
    _schema_map.cache_clear()


def _frozen(step: Step) -> Step:
    return step if isinstance(step, str) else dict(step)


def _discover() -> None:
    import bot.store as package

    names = [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    for name in (*names, *STORE_MODULES):
        try:
            importlib.import_module(name)
        except ImportError as exc:  # an optional dependency of one store must not hide the others
            log.warning("store module %s could not be imported: %s", name, exc)


def all_components() -> dict[str, Component]:
    """Every registered component by name, after importing every store module."""
    _discover()
    return dict(sorted(_registry.items()))


def component_tables(component: str) -> tuple[frozenset[str], ...]:
    """The tables ``component`` holds at each version: entry *v* is the set after its step *v* (entry 0 empty)."""
    return _schema_map()[component]


@lru_cache(maxsize=1)
def _schema_map() -> dict[str, tuple[frozenset[str], ...]]:
    # Every component's steps on one empty in-memory SQLite database, in rounds: a step that fails
    # (it needs another component's table first) waits for the next round, as migrate_all does.
    conn = sqlite3.connect(":memory:", isolation_level=None)
    owned: dict[str, set[str]] = {name: set() for name in _registry}
    history: dict[str, list[frozenset[str]]] = {name: [frozenset()] for name in _registry}
    errors: dict[str, str] = {}

    def tables() -> set[str]:
        return {str(r[0]) for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}

    try:
        moved = True
        while moved:
            moved = False
            for name, entry in _registry.items():
                while len(history[name]) <= entry.version:
                    number = len(history[name])
                    step = entry.steps[number - 1]
                    script = step if isinstance(step, str) else step.get("sqlite")
                    if script is None:
                        raise ValueError(f"component {name!r} step {number} has no SQLite form")
                    before = tables()
                    try:
                        conn.executescript(f"BEGIN;\n{script.strip().rstrip(';')};\nCOMMIT;")
                    except sqlite3.Error as exc:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        errors[name] = f"step {number}: {exc}"
                        break
                    errors.pop(name, None)
                    after = tables()
                    for other in owned.values():
                        other -= before - after
                    owned[name] |= after - before
                    history[name].append(frozenset(owned[name]))
                    moved = True
    finally:
        conn.close()
    if errors:
        name, error = next(iter(errors.items()))
        raise ValueError(f"component {name!r} does not migrate on an empty SQLite database: {error}")
    return {name: tuple(seen) for name, seen in history.items()}


async def migrate_all(db: Any, versions: Mapping[str, int] | None = None) -> None:
    """Bring ``db`` to every registered component's schema (or to ``versions``, component → version).

    Components migrate in rounds: one whose step fails because it needs another component's table
    is tried again after the others, so registration order does not matter.
    """
    from bot.store.database import DatabaseError

    components = all_components()
    wanted = dict(versions) if versions is not None else {n: c.version for n, c in components.items()}
    pending = [n for n, v in wanted.items() if v > 0]
    while pending:
        failed: list[tuple[str, Exception]] = []
        for name in pending:
            try:
                await db.migrate(name, list(components[name].steps[:wanted[name]]))
            except DatabaseError as exc:
                failed.append((name, exc))
        if len(failed) == len(pending):
            raise failed[0][1]
        pending = [name for name, _ in failed]


def known_tables() -> dict[str, str]:
    """Every table any version of any registered component creates, with its component."""
    owners: dict[str, str] = {}
    for name in all_components():
        for tables in component_tables(name):
            for table in tables:
                owners.setdefault(table, name)
    return owners
