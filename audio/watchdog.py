"""The "connected but deaf" watchdog: people are talking, yet none of their audio is heard.

Pure logic fed counters over time (``observe(stats, heard)`` every second or so, injectable
clock). What it measures is what matters: for each person whose audio is meant to be heard (not
opted out, not an ignored bot), whether they are *speaking* (authenticated packets arriving on
their SSRC, or op 5 speaking events) and whether frames decoded from their packets reach the
decode pipeline (``heard``, from :meth:`audio.decode.ReceivePipeline.heard`). Someone speaking for
``window_s`` with nothing of theirs decoded is deaf, whatever else is flowing: a decoder stuck on a
stray sequence number delivers packets at the receive level, so receive counters alone cannot see
it. A coarser check covers audio no one could be attributed to (packets arriving, nothing
delivered at all).

Verdicts: first :attr:`WatchdogAction.REJOIN` (report and rejoin once), and if it happens again
:attr:`WatchdogAction.GIVE_UP` (report and stop trying). The session glue turns verdicts into a log
line, a channel message and a reconnect. :meth:`DeafWatchdog.snapshot` exposes the counters.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from audio.receive import ReceiveStats

__all__ = ["WatchdogAction", "WatchdogVerdict", "WatchdogStats", "DeafWatchdog"]

log = logging.getLogger(__name__)


class WatchdogAction(enum.StrEnum):
    REJOIN = "rejoin"  # report, then leave and rejoin the channel once
    GIVE_UP = "give_up"  # report; the rejoin did not help, stop trying


@dataclass(frozen=True, slots=True)
class WatchdogVerdict:
    """What to do and what to say; ``counts`` are the counters behind the decision."""

    action: WatchdogAction
    channel_message: str  # safe to post in the channel
    log_message: str  # for the log: counts and the main drop reasons
    counts: Mapping[str, int] = field(default_factory=dict)
    unheard: tuple[int, ...] = ()  # user ids speaking but not heard (empty: audio no one was matched to)


@dataclass(frozen=True, slots=True)
class WatchdogStats:
    """What the watchdog sees now (for ``/status``): people speaking lately and how many were heard."""

    speaking: int  # people with packets or speaking events in the last window
    heard: int  # of them, people with frames decoded in the last window
    unheard: Mapping[int, float]  # user id -> seconds they have been speaking without being heard
    rejoins: int
    given_up: bool
    verdicts: int  # deaf verdicts so far


_REJOIN_TEXT = "I'm connected but can't hear anyone right now, so I'm rejoining the voice channel to fix it."
_GIVE_UP_TEXT = (
    "I still can't hear anyone after rejoining, so I've stopped trying. "
    "Text chat still works; an admin can check the bot's log for details."
)


class _Person:
    """One speaker's counters at the last observation and their unheard stretch, if any."""

    __slots__ = ("packets", "speaking", "heard", "since", "unheard_packets", "unheard_speaking",
                 "last_active", "last_heard")

    def __init__(self, packets: int, speaking: int, heard: int) -> None:
        self.packets = packets
        self.speaking = speaking
        self.heard = heard
        self.since: float | None = None  # first activity not followed by any decoded frame
        self.unheard_packets = 0
        self.unheard_speaking = 0
        self.last_active: float | None = None
        self.last_heard: float | None = None


class DeafWatchdog:
    """Decides when receive is deaf; one per voice session.

    Per person: ``min_packets`` packets (or two speaking events) over at least ``window_s`` seconds
    with no frame of theirs decoded. Globally: ``min_packets`` audio packets that are not ignored
    traffic, over ``window_s`` seconds, while nothing at all is delivered. Counters going backwards
    (a new connection after a rejoin, a stream on a new SSRC) start a fresh baseline. Pauses do not
    clear an unheard stretch (people wait for an answer between sentences); hearing them does.
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
        self._people: dict[int, _Person] = {}
        self.rejoins = 0
        self.given_up = False
        self.verdicts = 0

    def observe(self, stats: ReceiveStats, heard: Mapping[int, int] | None = None) -> WatchdogVerdict | None:
        """Feed the latest counters (and frames decoded per person); a verdict when action is needed."""
        if self.given_up:
            return None
        now = self._clock()
        if heard is not None:
            deaf = self._observe_people(now, stats, heard)
            if deaf:
                return self._verdict(stats, deaf)
        return self._observe_total(now, stats)

    def _observe_people(self, now: float, stats: ReceiveStats, heard: Mapping[int, int]) -> list[tuple[int, _Person]]:
        people = self._people
        packets_by, speaking_by = stats.packets_by_user, stats.speaking_by_user
        current = set(packets_by) | set(speaking_by)
        for gone in set(people) - current:  # left, opted out, or now ignored
            del people[gone]
        deaf: list[tuple[int, _Person]] = []
        for user_id in current:
            packets, speaking, frames = packets_by.get(user_id, 0), speaking_by.get(user_id, 0), heard.get(user_id, 0)
            p = people.get(user_id)
            if p is None:  # counted from zero: a new person's first packets are activity too
                p = people[user_id] = _Person(0, 0, 0)
            dp, ds, dh = packets - p.packets, speaking - p.speaking, frames - p.heard
            p.packets, p.speaking, p.heard = packets, speaking, frames
            if dp < 0 or ds < 0 or dh < 0:  # a new connection or a new stream: start over for them
                p.since, p.unheard_packets, p.unheard_speaking = None, 0, 0
                continue
            if dp or ds:
                p.last_active = now
            if dh:
                p.last_heard = now
                p.since, p.unheard_packets, p.unheard_speaking = None, 0, 0
                continue
            if dp or ds:
                if p.since is None:
                    p.since = now
                p.unheard_packets += dp
                p.unheard_speaking += ds
            # No need to be speaking at this very moment: someone who spoke and was not heard for
            # the whole window is unheard, even if they stopped to wait for an answer.
            if p.since is not None and now - p.since >= self.window_s and (p.unheard_packets >= self.min_packets or p.unheard_speaking >= 2):
                deaf.append((user_id, p))
        return deaf

    def _observe_total(self, now: float, stats: ReceiveStats) -> WatchdogVerdict | None:
        """Audio arriving that no one could be matched to (or that never decrypts), nothing delivered."""
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
        # Opted-out people and ignored bots send real packets that are rightly never delivered.
        packets = (stats.audio_packets - stats.ignored) - (base.audio_packets - base.ignored)
        speaking = stats.speaking_events - base.speaking_events
        if packets < self.min_packets and speaking == 0:
            return None
        if self._activity_since is None:
            self._activity_since = now
            return None
        if now - self._activity_since < self.window_s:
            return None
        return self._verdict(stats, [])

    def _verdict(self, stats: ReceiveStats, deaf: list[tuple[int, _Person]]) -> WatchdogVerdict:
        base = self._baseline or stats
        dropped = {k: v - base.dropped.get(k, 0) for k, v in stats.dropped.items() if v - base.dropped.get(k, 0)}
        if deaf:
            packets = sum(p.unheard_packets for _, p in deaf)
            speaking = sum(p.unheard_speaking for _, p in deaf)
            delivered = stats.delivered - base.delivered
        else:
            packets = stats.audio_packets - base.audio_packets
            speaking = stats.speaking_events - base.speaking_events
            delivered = 0
        counts = {"audio_packets": packets, "speaking_events": speaking, "delivered": delivered,
                  "people_unheard": len(deaf), **dropped}
        top = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1])[:4]) or "none"
        unheard = tuple(sorted(user_id for user_id, _ in deaf))
        # A fresh window: after a rejoin the new connection gets the full grace period.
        self._restart(stats)
        self.verdicts += 1
        if self.rejoins < self.max_rejoins:
            self.rejoins += 1
            action, text = WatchdogAction.REJOIN, _REJOIN_TEXT
        else:
            self.given_up = True
            action, text = WatchdogAction.GIVE_UP, _GIVE_UP_TEXT
        who = f"{len(deaf)} people speaking with no audio decoded" if deaf else "audio arriving, 0 frames delivered"
        msg = (
            f"voice receive deaf for {self.window_s:.0f}s: {who}; {packets} audio packets, {speaking} speaking "
            f"events, {delivered} frames delivered; drops: {top}; action: {action.value}"
        )
        return WatchdogVerdict(action, text, msg, MappingProxyType(counts), unheard)

    def _restart(self, stats: ReceiveStats | None) -> None:
        self._baseline = stats
        self._activity_since = None
        self._people.clear()

    def snapshot(self) -> WatchdogStats:
        """The counters the watchdog decides on, for ``/status`` and the log."""
        now = self._clock()
        recent = now - self.window_s
        speaking = [p for p in self._people.values() if p.last_active is not None and p.last_active >= recent]
        heard = sum(1 for p in speaking if p.last_heard is not None and p.last_heard >= recent)
        unheard = {u: now - p.since for u, p in self._people.items() if p.since is not None}
        return WatchdogStats(speaking=len(speaking), heard=heard, unheard=MappingProxyType(unheard),
                             rejoins=self.rejoins, given_up=self.given_up, verdicts=self.verdicts)

    def rebase(self) -> None:
        """A new connection (after a rejoin): forget the old counters, keep the rejoin budget."""
        self._restart(None)

    def reset(self) -> None:
        """Start over (a new voice session): rejoin budget restored."""
        self._restart(None)
        self.rejoins = 0
        self.given_up = False
