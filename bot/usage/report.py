"""What /usage, the console and /metrics show: use per day and kind, spend with prices, shares of a
server by person. Amounts and identities only: no content ever reaches the usage tables.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from bot.usage.limits import KINDS, format_amount
from bot.usage.meter import UsageMeter

__all__ = ["ServerUsage", "UsageCollector", "UsagePanel", "server_usage", "format_server_usage"]

TOP = 5


@dataclass
class ServerUsage:
    days: list[tuple[str, dict[str, float]]]  # (day, {kind: used}), today first
    limits: dict[str, float]  # the per-server limit per kind (absent: unlimited)
    top: list[tuple[str, float, dict[str, float]]]  # (person, share 0..1, {kind: used}) over the days shown
    spend: list[float | None]  # per day, with PRICES (None without)


async def server_usage(meter: UsageMeter, guild_id: int, *, days: int = 7) -> ServerUsage:
    """A server's paid use today and the ``days - 1`` days before, and its top people by share."""
    wanted = meter.days_back(days)
    if meter.store is None:
        return ServerUsage([(d, {}) for d in wanted], {}, [], [None] * len(wanted))
    await meter.start()
    await meter.flush()
    by_day = await meter.store.by_day(f"guild:{guild_id}", wanted)
    rows = [(d, {k: v for k, v in by_day.get(d, {}).items() if k in KINDS}) for d in wanted]
    prefix = f"guild:{guild_id}/"
    shares = await meter.store.shares(prefix, wanted)
    totals = {k: sum(used.get(k, 0.0) for _, used in rows) for k in KINDS}
    people: list[tuple[str, float, dict[str, float]]] = []
    for scope, used in shares.items():
        used = {k: v for k, v in used.items() if k in KINDS and v > 0}
        if not used:
            continue
        if meter.prices:  # share of the server's spend
            spent = sum(meter.prices.spend(k, v) or 0.0 for k, v in used.items())
            whole = sum(meter.prices.spend(k, v) or 0.0 for k, v in totals.items())
            share = spent / whole if whole else 0.0
        else:  # the mean of their share of each kind the server used
            parts = [used.get(k, 0.0) / totals[k] for k in KINDS if totals[k] > 0]
            share = sum(parts) / len(parts) if parts else 0.0
        people.append((scope[len(prefix):], share, used))
    people.sort(key=lambda p: -p[1])
    spend = [_spend(meter, used) for _, used in rows]
    limits = {k: v for k in KINDS if (v := meter.per_server.get(k)) is not None}
    return ServerUsage(rows, limits, people[:TOP], spend)


def _spend(meter: UsageMeter, used: dict[str, float]) -> float | None:
    if not meter.prices:
        return None
    return sum(meter.prices.spend(k, v) or 0.0 for k, v in used.items())


def _mention(person: str) -> str:
    kind, _, ident = person.partition(":")
    if kind == "discord" and ident.isdigit():
        return f"<@{ident}>"
    if kind == "phone" and len(ident) > 4:
        return f"caller ending {ident[-4:]}"
    return person


def format_server_usage(report: ServerUsage, language: str | None = "en") -> str:
    """The /usage answer in ``language`` (amounts in their units: min, chars, tokens)."""
    from bot.i18n.catalog import t
    from bot.usage import messages  # noqa: F401  (registers the usage texts)

    lines: list[str] = []
    today, used = report.days[0]
    lines.append(t("usage.today", language, day=today))
    if not used:
        lines.append(t("usage.nothing_yet", language))
    for kind in KINDS:
        if kind in used or kind in report.limits:
            amount = format_amount(kind, used.get(kind, 0.0))
            limit = report.limits.get(kind)
            lines.append(f"- {kind}: {amount}" + (" " + t("usage.of_limit", language, limit=format_amount(kind, limit))
                                                  if limit else ""))
    if report.spend[0] is not None:
        lines.append(f"- {t('usage.spend', language)}: ${report.spend[0]:.4f}")
    lines.append(t("usage.last_days", language, days=len(report.days)))
    for (day, kinds), spend in zip(report.days, report.spend):
        parts = [f"{k} {format_amount(k, v)}" for k, v in kinds.items() if v > 0] or [t("usage.nothing", language)]
        lines.append(f"- {day}: " + ", ".join(parts) + (f" (${spend:.4f})" if spend else ""))
    if report.top:
        lines.append(t("usage.top", language, days=len(report.days)))
        for person, share, _kinds in report.top:
            lines.append(f"- {_mention(person)}: {share:.0%}")
    return "\n".join(lines)


class UsagePanel:
    """The console's "use and spend per day" panel: refreshed from the store when use changed."""

    def __init__(self, meter: UsageMeter, *, days: int = 7, every: float = 2.0) -> None:
        self.meter = meter
        self.days = days
        self.every = every
        self.data: dict[str, Any] = {"days": [], "engines": [], "limited": meter.limited, "prices": bool(meter.prices)}
        self._dirty = True
        self._last = 0.0
        self._lock = asyncio.Lock()
        meter.listeners.append(self._changed)

    def _changed(self) -> None:
        self._dirty = True

    def close(self) -> None:
        """Stop following the meter (the console closed)."""
        if self._changed in self.meter.listeners:
            self.meter.listeners.remove(self._changed)

    async def refresh(self, *, force: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        if not force and (not self._dirty or now - self._last < self.every):
            return self.data
        async with self._lock:
            self._dirty, self._last = False, now
            meter = self.meter
            wanted = meter.days_back(self.days)
            if meter.store is None:
                return self.data
            await meter.start()
            await meter.flush()
            totals = await meter.store.by_day("total", wanted)
            engines = await meter.store.engines(wanted)
            days = []
            for day in wanted:
                used = {k: v for k, v in totals.get(day, {}).items() if k in KINDS}
                spend = _spend(meter, used)
                days.append({"day": day, "used": {k: round(v, 3) for k, v in used.items()},
                             "shown": {k: format_amount(k, v) for k, v in used.items()},
                             "spend": None if spend is None else round(spend, 8)})
            self.data = {
                "days": days,
                "engines": [{"day": d, "kind": k, "engine": e, "used": round(u, 3), "shown": format_amount(k, u),
                             "requests": r} for d, k, e, u, r in engines],
                "limited": meter.limited, "prices": bool(meter.prices),
                "refusals": dict(meter.refusals),
            }
            return self.data


class UsageCollector(Collector):
    """Prometheus counters by kind and engine (no person or server labels): amounts in base units
    (seconds, characters, tokens), requests, and refusals by kind."""

    def __init__(self, meter: UsageMeter) -> None:
        self.meter = meter

    def collect(self) -> Iterator[CounterMetricFamily]:
        amount = CounterMetricFamily("voicebot_usage_amount", "Use by kind and engine in base units: speech and "
                                     "phone seconds, voice characters, model tokens", labels=["kind", "engine"])
        requests = CounterMetricFamily("voicebot_usage_requests", "Metered requests by kind and engine",
                                       labels=["kind", "engine"])
        refused = CounterMetricFamily("voicebot_usage_refusals", "Paid requests not made because a daily limit "
                                      "was reached", labels=["kind"])
        for (kind, engine), counter in sorted(self.meter.counters.items()):
            amount.add_metric([kind, engine], counter.amount)
            requests.add_metric([kind, engine], counter.requests)
        for kind, count in sorted(self.meter.refusals.items()):
            refused.add_metric([kind], count)
        yield amount
        yield requests
        yield refused

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())
