"""Daily usage totals in the shared store (bot/store): one row per (day, kind, scope), no content.

``scope`` is who the use counts against: ``total``, ``guild:<id>``, a person's memory identity
(``discord:<id>``, ``phone:+E164``), or ``guild:<id>/<person>`` (a person's share of one server, for
/usage). ``used`` is in the kind's base unit (seconds, characters, tokens) and includes what is
reserved for requests in flight.

Every change is one atomic ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` per row, so processes on
one PostgreSQL share one budget: a reservation takes what is left under the limit inside the row's
lock, and a reservation over several scopes (person, server, total) is one transaction that locks
its rows in one fixed order (so two of them cannot deadlock) and gives back what the tightest
scope could not grant.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from bot.store import Database

__all__ = ["UsageStore", "Reservation", "MIGRATIONS"]

MIGRATIONS = [
    "CREATE TABLE usage_daily ("
    " day TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " scope TEXT NOT NULL,"
    " used DOUBLE PRECISION NOT NULL,"
    " last_grant DOUBLE PRECISION NOT NULL DEFAULT 0,"
    " requests INTEGER NOT NULL DEFAULT 0,"
    " updated_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (day, kind, scope));"
    "CREATE INDEX usage_daily_scope ON usage_daily (scope, day);"
    "CREATE TABLE usage_engines ("
    " day TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " engine TEXT NOT NULL,"
    " used DOUBLE PRECISION NOT NULL,"
    " requests INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (day, kind, engine))",
]

_UNLIMITED = (
    "INSERT INTO usage_daily (day, kind, scope, used, last_grant, requests, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (day, kind, scope) DO UPDATE SET used = usage_daily.used + excluded.used, "
    "last_grant = excluded.last_grant, requests = usage_daily.requests + excluded.requests, "
    "updated_at = excluded.updated_at RETURNING used, last_grant"
)
# What is left under the limit is granted up to ``want``, and only when at least ``minimum`` is left;
# SET expressions read the row as it was (both dialects), so last_grant is this request's grant.
_LIMITED = (
    "INSERT INTO usage_daily (day, kind, scope, used, last_grant, requests, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?) "
    "ON CONFLICT (day, kind, scope) DO UPDATE SET "
    "used = usage_daily.used + CASE WHEN ? - usage_daily.used >= ? THEN ? ELSE ? - usage_daily.used END, "
    "last_grant = CASE WHEN ? - usage_daily.used >= ? THEN ? ELSE ? - usage_daily.used END, "
    "requests = usage_daily.requests + 1, updated_at = excluded.updated_at "
    "WHERE ? - usage_daily.used >= ? "
    "RETURNING used, last_grant"
)


class _Refused(Exception):
    def __init__(self, scope: str) -> None:
        self.scope = scope


@dataclass(frozen=True)
class Reservation:
    granted: float  # 0 when refused
    refused_by: str | None = None  # the scope with too little left


class UsageStore:
    """The usage tables on one :class:`bot.store.Database` (SQLite or PostgreSQL)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._ready = False

    async def ensure(self) -> None:
        if not self._ready:
            await self.db.migrate("usage", MIGRATIONS)
            self._ready = True

    async def reserve(self, day: str, kind: str, scopes: Sequence[tuple[str, float | None]], want: float,
                      minimum: float) -> Reservation:
        """Take up to ``want`` (at least ``minimum``) from every scope at once, each under its limit
        (None: unlimited). All or nothing: refused, nothing is taken anywhere."""
        minimum = min(minimum, want)
        now = time.time()
        for scope, limit in scopes:  # what can never fit needs no round trip
            if limit is not None and limit < minimum:
                return Reservation(0.0, scope)
        try:
            async with self.db.transaction() as tx:
                grants: list[tuple[str, float]] = []
                for scope, limit in sorted(scopes, key=lambda s: s[0]):  # one lock order for everyone
                    if limit is None:
                        row = await tx.query_one(_UNLIMITED, (day, kind, scope, float(want), float(want), 1, now))
                    else:
                        first = float(min(want, limit))
                        lim, w, m = float(limit), float(want), float(minimum)
                        row = await tx.query_one(_LIMITED, (day, kind, scope, first, first, now,
                                                            lim, w, w, lim, lim, w, w, lim, lim, m))
                    if row is None:
                        raise _Refused(scope)
                    grants.append((scope, float(row[1])))
                granted = min(g for _, g in grants)
                for scope, grant in grants:
                    if grant > granted:  # the tightest scope granted less: give the rest back here
                        await tx.execute("UPDATE usage_daily SET used = used - ? WHERE day = ? AND kind = ? AND scope = ?",
                                         (float(grant - granted), day, kind, scope))
        except _Refused as refused:
            return Reservation(0.0, refused.scope)
        return Reservation(granted)

    async def adjust(self, day: str, kind: str, scopes: Sequence[str], delta: float) -> None:
        """Settle a reservation: add ``delta`` (what was used beyond it, or minus what was left) to
        rows that the reservation made."""
        if delta == 0 or not scopes:
            return
        marks = ", ".join("?" for _ in scopes)
        await self.db.execute(
            f"UPDATE usage_daily SET used = CASE WHEN used + ? < 0 THEN 0 ELSE used + ? END, updated_at = ? "
            f"WHERE day = ? AND kind = ? AND scope IN ({marks})",
            (float(delta), float(delta), time.time(), day, kind, *sorted(scopes)))

    async def add(self, day: str, kind: str, scopes: Sequence[str], amount: float, requests: int = 1) -> None:
        """Count use that needed no reservation (nothing limited for these scopes)."""
        now = time.time()
        async with self.db.transaction() as tx:
            for scope in sorted(scopes):
                await tx.query_one(_UNLIMITED, (day, kind, scope, float(amount), float(amount), int(requests), now))

    async def add_engine(self, day: str, kind: str, engine: str, amount: float, requests: int) -> None:
        await self.db.execute(
            "INSERT INTO usage_engines (day, kind, engine, used, requests) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (day, kind, engine) DO UPDATE SET used = usage_engines.used + excluded.used, "
            "requests = usage_engines.requests + excluded.requests",
            (day, kind, engine, float(amount), int(requests)))

    # --- reading ---------------------------------------------------------------------------------

    async def used(self, day: str, kind: str, scope: str) -> float:
        value = await self.db.scalar("SELECT used FROM usage_daily WHERE day = ? AND kind = ? AND scope = ?",
                                     (day, kind, scope))
        return float(value) if value is not None else 0.0

    async def by_day(self, scope: str, days: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{day: {kind: used}}`` for one scope over ``days``."""
        if not days:
            return {}
        marks = ", ".join("?" for _ in days)
        rows = await self.db.query(
            f"SELECT day, kind, used FROM usage_daily WHERE scope = ? AND day IN ({marks})", (scope, *days))
        out: dict[str, dict[str, float]] = {d: {} for d in days}
        for row in rows:
            out[str(row[0])][str(row[1])] = float(row[2])
        return out

    async def shares(self, prefix: str, days: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{scope: {kind: used}}`` over ``days`` for the scopes starting with ``prefix``."""
        if not days:
            return {}
        marks = ", ".join("?" for _ in days)
        rows = await self.db.query(
            f"SELECT scope, kind, SUM(used) FROM usage_daily WHERE scope LIKE ? ESCAPE '\\' AND day IN ({marks}) "
            "GROUP BY scope, kind", (prefix.replace("%", "").replace("_", "\\_") + "%", *days))
        out: dict[str, dict[str, float]] = {}
        for row in rows:
            out.setdefault(str(row[0]), {})[str(row[1])] = float(row[2])
        return out

    async def engines(self, days: Sequence[str]) -> list[tuple[str, str, str, float, int]]:
        """``(day, kind, engine, used, requests)`` rows over ``days``."""
        if not days:
            return []
        marks = ", ".join("?" for _ in days)
        rows = await self.db.query(
            f"SELECT day, kind, engine, used, requests FROM usage_engines WHERE day IN ({marks}) "
            "ORDER BY day, kind, engine", tuple(days))
        return [(str(r[0]), str(r[1]), str(r[2]), float(r[3]), int(r[4])) for r in rows]

    async def latest_day(self) -> str | None:
        value = await self.db.scalar("SELECT MAX(day) FROM usage_daily")
        return str(value) if value is not None else None

    async def forget(self, person: str, keep_day: str) -> int:
        """Remove a person's own rows and their shares of servers before ``keep_day`` (today's stay:
        they hold today's limit, and forgetting must not hand out a fresh allowance; they name no
        content and go with the next forget). Server and total rows keep their amounts."""
        escaped = person.replace("\\", "").replace("%", "").replace("_", "\\_")
        return await self.db.execute(
            "DELETE FROM usage_daily WHERE day < ? AND (scope = ? OR scope LIKE ? ESCAPE '\\')",
            (keep_day, person, "guild:%/" + escaped))


from bot.store import registry as _schemas  # noqa: E402  (tools that open a database know this schema)

_schemas.register("usage", MIGRATIONS)
