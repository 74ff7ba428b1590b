"""The deaf watchdog: report and rejoin once, then give up; quiet channels and healthy receive stay silent."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from audio.receive import ReceiveStats
from audio.watchdog import DeafWatchdog, WatchdogAction


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def stats(packets: int = 0, delivered: int = 0, speaking: int = 0, **dropped: int) -> ReceiveStats:
    return ReceiveStats(datagrams=packets, audio_packets=packets, delivered=delivered, dave_decrypted=delivered,
                        trial_attributed=0, speaking_events=speaking, held=0, dropped=MappingProxyType(dropped))


def run(wd: DeafWatchdog, clock: Clock, seconds: int, fn: object) -> list:
    verdicts = []
    for s in range(seconds):
        clock.now += 1
        v = wd.observe(fn(s))  # type: ignore[operator]
        if v:
            verdicts.append(v)
    return verdicts


def test_quiet_channel_is_not_deaf() -> None:
    clock = Clock()
    wd = DeafWatchdog(clock=clock)
    assert run(wd, clock, 60, lambda s: stats()) == []


def test_healthy_receive_is_not_deaf() -> None:
    clock = Clock()
    wd = DeafWatchdog(clock=clock)
    assert run(wd, clock, 60, lambda s: stats(packets=50 * s, delivered=50 * s, speaking=s)) == []


def test_packets_without_decryption_rejoin_once_then_give_up() -> None:
    clock = Clock()
    wd = DeafWatchdog(clock=clock, window_s=5)
    verdicts = run(wd, clock, 30, lambda s: stats(packets=50 * s, dave_decrypt=50 * s))
    assert [v.action for v in verdicts] == [WatchdogAction.REJOIN, WatchdogAction.GIVE_UP]
    first = verdicts[0]
    assert "rejoining" in first.channel_message
    assert "dave_decrypt=" in first.log_message and first.counts["delivered"] == 0
    assert first.counts["audio_packets"] >= 250
    assert run(wd, clock, 30, lambda s: stats(packets=5000 + s)) == []  # stopped trying
    wd.reset()
    assert not wd.given_up and wd.rejoins == 0


def test_speaking_events_without_any_packets_are_deaf() -> None:
    clock = Clock()
    wd = DeafWatchdog(clock=clock, window_s=3)
    verdicts = run(wd, clock, 6, lambda s: stats(speaking=s))
    assert [v.action for v in verdicts] == [WatchdogAction.REJOIN]


def test_recovery_after_rejoin_resets_the_window() -> None:
    clock = Clock()
    wd = DeafWatchdog(clock=clock, window_s=3)
    verdicts = run(wd, clock, 6, lambda s: stats(packets=50 * s))
    assert len(verdicts) == 1
    # the new connection's counters start from zero and frames flow again
    assert run(wd, clock, 30, lambda s: stats(packets=50 * s, delivered=50 * s)) == []
    assert wd.rejoins == 1 and not wd.given_up


def test_brief_failure_does_not_fire() -> None:
    clock = Clock()
    wd = DeafWatchdog(clock=clock, window_s=5)
    seq = [stats(packets=50 * s, delivered=50 * s if s % 4 == 0 else 50 * (s - s % 4)) for s in range(40)]
    assert run(wd, clock, 40, lambda s: seq[s]) == []


def test_verdict_is_frozen() -> None:
    clock = Clock()
    wd = DeafWatchdog(clock=clock, window_s=1)
    (v, *_) = run(wd, clock, 4, lambda s: stats(packets=100 * s))
    try:
        v.action = WatchdogAction.GIVE_UP  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("verdict must be frozen")
