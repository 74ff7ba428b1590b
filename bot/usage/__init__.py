"""Keeping costs down (issue 25): metering every paid request, daily limits per person, per server
and in total, checked before the request is made, and the totals for /usage, the console and /metrics.

Rooms: :mod:`bot.usage.limits` (the settings' lists), :mod:`bot.usage.store` (daily totals in the
shared store), :mod:`bot.usage.meter` (reserve before, settle after), :mod:`bot.usage.guards` (the
engines wrapped at each paid call), :mod:`bot.usage.report` (what /usage and the console show).
"""

from bot.usage.limits import KINDS, Limits, Prices, parse_limits, parse_prices
from bot.usage.meter import Grant, OverLimit, UsageMeter, Who, current_person, who_of_room
from bot.usage.store import UsageStore

__all__ = ["KINDS", "Grant", "Limits", "OverLimit", "Prices", "UsageMeter", "UsageStore", "Who", "current_person",
           "parse_limits", "parse_prices", "who_of_room"]
