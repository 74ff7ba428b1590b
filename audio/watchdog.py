"""The "connected but deaf" watchdog: people are talking, yet nothing decrypts.

Pure logic fed receive counters over time (``observe(stats)`` every second or so, injectable
clock). When audio packets or speaking events keep arriving for ``window_s`` while no frame is
delivered, it returns a verdict: first :attr:`WatchdogAction.REJOIN` (report and rejoin once), and
if it happens again :attr:`WatchdogAction.GIVE_UP` (report and stop trying). The session glue
turns verdicts into a log line, a channel message and a reconnect.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from audio.receive import ReceiveStats

__all__ = ["WatchdogAction", "WatchdogVerdict", "DeafWatchdog"]

log = logging.getLogger(__name__)


class WatchdogAction(enum.StrEnum):
    REJOIN = "rejoin"  # report, then leave and rejoin the channel once
    GIVE_UP = "give_up"  # report; the rejoin did not help, stop trying


@dataclass(frozen=True, slots=True)
class WatchdogVerdict:
    """What to do and what to say; ``counts`` are the receive counters since the last good frame."""

    action: WatchdogAction
    channel_message: str  # safe to post in the channel
    log_message: str  # for the log: counts and the main drop reasons
    counts: Mapping[str, int] = field(default_factory=dict)


_REJOIN_TEXT = "I'm connected but can't hear anyone right now, so I'm rejoining the voice channel to fix it."
_GIVE_UP_TEXT = (
    "I still can't hear anyone after rejoining, so I've stopped trying. "
    "Text chat still works; an admin can check the bot's log for details."
)


class DeafWatchdog:
    """Decides when receive is deaf; one per voice session.

    ``min_packets`` audio packets (or any speaking event) without a single delivered frame for
    ``window_s`` seconds counts as deaf. Counters going backwards (a new connection after a rejoin)
    start a fresh baseline.
    """

    def __init__(
        self,
        *,
        window_s: float = 5.0,
        min_packets: int = 25,
        max_rejoins: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.min_packets = min_packets
        self.max_rejoins = max_rejoins
        self._clock = clock
        self._baseline: ReceiveStats | None = None
        self._activity_since: float | None = None
        self.rejoins = 0
        self.given_up = False

    def observe(self, stats: ReceiveStats) -> WatchdogVerdict | None:
        """Feed the latest counters; returns a verdict when action is needed, else None."""
        if self.given_up:
            return None
        now = self._clock()
        base = self._baseline
        if (
            base is None
            or stats.delivered != base.delivered  # progress (or a reset to a new connection)
            or stats.audio_packets < base.audio_packets
            or stats.speaking_events < base.speaking_events
        ):
            self._baseline = stats
            self._activity_since = None
            return None
        packets = stats.audio_packets - base.audio_packets
        speaking = stats.speaking_events - base.speaking_events
        if packets < self.min_packets and speaking == 0:
            return None
        if self._activity_since is None:
            self._activity_since = now
            return None
        if now - self._activity_since < self.window_s:
            return None
        return self._verdict(stats, base, packets, speaking)

    def _verdict(self, stats: ReceiveStats, base: ReceiveStats, packets: int, speaking: int) -> WatchdogVerdict:
        dropped = {k: v - base.dropped.get(k, 0) for k, v in stats.dropped.items() if v - base.dropped.get(k, 0)}
        counts = {"audio_packets": packets, "speaking_events": speaking, "delivered": 0, **dropped}
        top = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1])[:4]) or "none"
        # A fresh window: after a rejoin the new connection gets the full grace period.
        self._baseline = stats
        self._activity_since = None
        if self.rejoins < self.max_rejoins:
            self.rejoins += 1
            action, text = WatchdogAction.REJOIN, _REJOIN_TEXT
        else:
            self.given_up = True
            action, text = WatchdogAction.GIVE_UP, _GIVE_UP_TEXT
        msg = (
            f"voice receive deaf for {self.window_s:.0f}s: {packets} audio packets, {speaking} speaking events, "
            f"0 frames decrypted; drops: {top}; action: {action.value}"
        )
        return WatchdogVerdict(action, text, msg, MappingProxyType(counts))

    def reset(self) -> None:
        """Start over (a new voice session): rejoin budget restored."""
        self._baseline = None
        self._activity_since = None
        self.rejoins = 0
        self.given_up = False
