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


# --- people speaking whose decoded audio reaches the pipeline (issue 11) --------------------------

ALICE, BOB = 1, 2


def people(packets: dict[int, int], delivered: int | None = None, speaking: dict[int, int] | None = None,
           **dropped: int) -> ReceiveStats:
    total = sum(packets.values())
    return dataclasses.replace(
        stats(packets=total, delivered=total if delivered is None else delivered,
              speaking=sum((speaking or {}).values()), **dropped),
        packets_by_user=MappingProxyType(packets), speaking_by_user=MappingProxyType(speaking or {}))


def run_people(wd: DeafWatchdog, clock: Clock, seconds: int, fn: object) -> list:
    verdicts = []
    for s in range(seconds):
        clock.now += 1
        v = wd.observe(*fn(s))  # type: ignore[operator]
        if v:
            verdicts.append(v)
    return verdicts


def test_a_stuck_decoder_is_deaf_although_packets_are_delivered() -> None:
    """The stray-frame case: every packet decrypts and reaches the pipeline, nothing is decoded."""
    clock = Clock()
    wd = DeafWatchdog(clock=clock, window_s=5)
    verdicts = run_people(wd, clock, 10, lambda s: (people({ALICE: 50 * s}), {ALICE: 100}))
    assert [v.action for v in verdicts] == [WatchdogAction.REJOIN]
    v = verdicts[0]
    assert v.unheard == (ALICE,) and v.counts["people_unheard"] == 1 and v.counts["delivered"] > 0
    assert "1 people speaking with no audio decoded" in v.log_message


def test_one_person_unheard_among_people_heard_is_deaf() -> None:
    clock = Clock()
    wd = DeafWatchdog(clock=clock, window_s=3)
    verdicts = run_people(wd, clock, 8, lambda s: (people({ALICE: 50 * s, BOB: 50 * s}),
                                                   {ALICE: 50 * s, BOB: 0}))
    assert len(verdicts) == 1 and verdicts[0].unheard == (BOB,)


def test_pauses_between_sentences_do_not_hide_deafness() -> None:
    """Two-second sentences with four-second pauses, never heard: deaf by the second sentence."""
    clock = Clock()
    wd = DeafWatchdog(clock=clock, window_s=5)
    talking = [s % 6 < 2 for s in range(20)]
    counts = [50 * sum(talking[: s + 1]) for s in range(20)]
    verdicts = run_people(wd, clock, 20, lambda s: (people({ALICE: counts[s]}), {ALICE: 0}))
    assert verdicts and verdicts[0].unheard == (ALICE,)


def test_people_heard_with_pauses_and_a_new_stream_are_fine() -> None:
    clock = Clock()
    wd = DeafWatchdog(clock=clock, window_s=3)
    talking = [s % 5 < 2 for s in range(40)]
    counts = [50 * sum(talking[: s + 1]) for s in range(40)]
    # at 20 s Alice's stream moves to a new SSRC: her packet count starts again from zero
    packets = [c if s < 20 else c - counts[19] for s, c in enumerate(counts)]
    assert run_people(wd, clock, 40, lambda s: (people({ALICE: packets[s]}), {ALICE: counts[s]})) == []
    snap = wd.snapshot()
    assert snap.speaking == 1 and snap.heard == 1 and snap.unheard == {} and snap.rejoins == 0


def test_speaking_events_alone_count_per_person() -> None:
    clock = Clock()
    wd = DeafWatchdog(clock=clock, window_s=3)
    verdicts = run_people(wd, clock, 6, lambda s: (people({}, speaking={BOB: s}), {}))
    assert len(verdicts) == 1 and verdicts[0].unheard == (BOB,)
    snap = wd.snapshot()
    assert snap.rejoins == 1 and snap.verdicts == 1 and not snap.given_up


def test_opted_out_and_ignored_traffic_is_not_deafness() -> None:
    """Their packets arrive and are rightly never delivered; the receiver leaves them out per person."""
    clock = Clock()
    wd = DeafWatchdog(clock=clock, window_s=3)
    verdicts = run_people(wd, clock, 20, lambda s: (
        dataclasses.replace(people({}, delivered=0, opted_out=25 * s, bot=25 * s), audio_packets=50 * s), {}))
    assert verdicts == []
    # the same packets with nothing ignored are deaf (audio no one was matched to)
    verdicts = run_people(wd, clock, 20, lambda s: (
        dataclasses.replace(people({}, delivered=0, hold_overflow=50 * s), audio_packets=2000 + 50 * s), {}))
    assert verdicts and verdicts[0].unheard == () and "0 frames delivered" in verdicts[0].log_message


def test_one_short_unheard_sentence_is_enough() -> None:
    """Alice says one sentence (1 s), nothing of it decoded, then waits: deaf once the window has passed."""
    clock = Clock()
    wd = DeafWatchdog(clock=clock, window_s=3)
    verdicts = run_people(wd, clock, 6, lambda s: (people({ALICE: 50}), {}))
    assert len(verdicts) == 1 and verdicts[0].unheard == (ALICE,) and verdicts[0].counts["audio_packets"] == 50


def test_a_short_gap_in_hearing_someone_is_not_deafness() -> None:
    clock = Clock()
    wd = DeafWatchdog(clock=clock, window_s=5)
    decoded = [50 * s if s % 4 == 0 else 50 * (s - s % 4) for s in range(40)]
    assert run_people(wd, clock, 40, lambda s: (people({ALICE: 50 * s}), {ALICE: decoded[s]})) == []
