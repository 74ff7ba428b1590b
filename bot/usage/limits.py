"""Daily limits and unit prices as the operator writes them (LIMITS_PER_PERSON, PRICES…), parsed once.

Four kinds of paid use, each counted in one base unit:

* ``speech``: seconds of audio sent to a paid recognizer (Deepgram); written in minutes (``30m``),
  seconds (``90s``) or hours (``2h``);
* ``voice``: characters sent to a paid voice (ElevenLabs); ``20k`` is 20,000 characters;
* ``model``: model tokens in and out; ``200k``, ``1.5M``;
* ``phone``: seconds of a phone call (Twilio); written like speech.

A limit list is ``kind=amount`` pairs separated by commas (``speech=30m,voice=20k``); a kind left out
is unlimited. Prices are per unit the operator names: ``speech=0.0077/m`` (per minute),
``voice=0.18/k`` (per thousand characters), ``model=0.6/M`` (per million tokens), ``phone=0.0085/m``.
Parsers raise ``ValueError`` with one line that says what is wrong; the settings loader names the variable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

__all__ = ["KINDS", "Limits", "Prices", "parse_limits", "parse_prices", "format_amount", "TIME_KINDS"]

KINDS: tuple[str, ...] = ("speech", "voice", "model", "phone")
TIME_KINDS = frozenset({"speech", "phone"})  # counted in seconds; the others in characters / tokens

_TIME_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_COUNT_UNITS = {"": 1.0, "k": 1_000.0, "m": 1_000_000.0}  # "m"/"M" for counts: million
_AMOUNT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


@dataclass(frozen=True)
class Limits:
    """Daily limits per kind in base units (seconds, characters, tokens); a kind absent is unlimited."""

    amounts: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, kind: str) -> float | None:
        return self.amounts.get(kind)

    def __bool__(self) -> bool:
        return bool(self.amounts)

    def __repr__(self) -> str:
        return "Limits(" + ",".join(f"{k}={format_amount(k, v)}" for k, v in self.amounts.items()) + ")"


@dataclass(frozen=True)
class Prices:
    """Price per base unit (second, character, token) for each kind the operator priced."""

    per_unit: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def spend(self, kind: str, amount: float) -> float | None:
        price = self.per_unit.get(kind)
        return None if price is None else price * amount

    def __bool__(self) -> bool:
        return bool(self.per_unit)


def _kind(raw: str) -> str:
    kind = raw.strip().lower()
    if kind not in KINDS:
        raise ValueError(f"unknown kind {raw.strip()!r} (expected {', '.join(KINDS)})")
    return kind


def _amount(kind: str, raw: str) -> float:
    match = _AMOUNT_RE.match(raw)
    if match is None:
        example = "30m" if kind in TIME_KINDS else "20k"
        raise ValueError(f"{kind}={raw.strip()!r} is not an amount (write it like {kind}={example})")
    number, unit = float(match.group(1)), match.group(2)
    if kind in TIME_KINDS:
        scale = _TIME_UNITS.get(unit.lower() if unit else "m")
        if scale is None or len(unit) > 1:
            raise ValueError(f"{kind}={raw.strip()!r}: unknown unit {unit!r} (use s, m or h)")
    else:
        scale = _COUNT_UNITS.get(unit.lower())
        if scale is None or len(unit) > 1:
            raise ValueError(f"{kind}={raw.strip()!r}: unknown unit {unit!r} (use k or M, or none)")
    value = number * scale
    if not math.isfinite(value):
        raise ValueError(f"{kind}={raw.strip()!r} is too large")
    return value


def _pairs(raw: str) -> list[tuple[str, str]]:
    pairs = []
    seen: set[str] = set()
    for part in raw.split(","):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"{part.strip()!r} is not kind=amount (e.g. speech=30m,voice=20k)")
        kind = _kind(name)
        if kind in seen:
            raise ValueError(f"{kind} is given twice")
        seen.add(kind)
        pairs.append((kind, value))
    return pairs


def parse_limits(raw: str) -> Limits:
    """``speech=30m,voice=20k,model=200k,phone=10m`` → :class:`Limits` (ValueError with the reason)."""
    return Limits(MappingProxyType({kind: _amount(kind, value) for kind, value in _pairs(raw)}))


def parse_prices(raw: str) -> Prices:
    """``speech=0.0077/m,voice=0.18/k,model=0.6/M,phone=0.0085/m`` → price per base unit."""
    per_unit: dict[str, float] = {}
    for kind, value in _pairs(raw):
        price, slash, unit = value.partition("/")
        try:
            amount = float(price.strip())
        except ValueError:
            raise ValueError(f"{kind}={value.strip()!r}: {price.strip()!r} is not a price") from None
        if not math.isfinite(amount) or amount < 0:
            raise ValueError(f"{kind}={value.strip()!r}: a price is a number of at least 0")
        unit = unit.strip() if slash else ""
        if kind in TIME_KINDS:
            scale = _TIME_UNITS.get(unit.lower()) if unit else None
            if scale is None or len(unit) != 1:
                raise ValueError(f"{kind}={value.strip()!r}: name the unit priced, /s, /m or /h "
                                 f"(e.g. {kind}=0.0077/m)")
        else:
            scale = {"1": 1.0, "k": 1_000.0, "M": 1_000_000.0, "m": 1_000_000.0}.get(unit) if unit else None
            if scale is None:
                raise ValueError(f"{kind}={value.strip()!r}: name the unit priced, /1, /k or /M "
                                 f"(e.g. {kind}={'0.18/k' if kind == 'voice' else '0.6/M'})")
        per_unit[kind] = amount / scale
    return Prices(MappingProxyType(per_unit))


def format_amount(kind: str, value: float) -> str:
    """A base-unit amount as people read it: ``12.5 min``, ``18.2k chars``, ``1.2M tokens``."""
    if kind in TIME_KINDS:
        if value < 60:
            return f"{value:.0f} s"
        if value < 3600:
            return f"{value / 60:.1f} min"
        return f"{value / 3600:.2f} h"
    noun = "chars" if kind == "voice" else "tokens"
    if value >= 1_000_000:
        return f"{value / 1_000_000:.2f}M {noun}"
    if value >= 1_000:
        return f"{value / 1_000:.1f}k {noun}"
    return f"{value:.0f} {noun}"
