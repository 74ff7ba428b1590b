"""The usage meter on both backends: limits checked before, counts settled after, one budget
shared by processes, days that never hand out an allowance twice, and the settings' lists."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from bot.settings import SettingsError, load_settings
from bot.store import Database, open_database
from bot.usage import OverLimit, UsageMeter, UsageStore, Who, parse_limits, parse_prices
from tests.backends import store_db  # noqa: F401  (both backends)


@pytest.fixture
def db(store_db: Database) -> Database:  # noqa: F811  (tests/backends: a fresh SQLite file, then PostgreSQL)
    return store_db


class Clock:
    """A clock the test moves (epoch seconds)."""

    def __init__(self, when: str) -> None:
        self.now = dt.datetime.fromisoformat(when).replace(tzinfo=dt.timezone.utc).timestamp()

    def __call__(self) -> float:
        return self.now


def meter(db: Database, clock: Clock, lease: float = 0.0, **limits: str) -> UsageMeter:
    """A meter whose every reservation is a round trip (``lease``: the share of the tightest limit
    it reserves ahead, served from memory)."""
    return UsageMeter(UsageStore(db), per_person=parse_limits(limits.get("person", "")),
                      per_server=parse_limits(limits.get("server", "")), total=parse_limits(limits.get("total", "")),
                      clock=clock, lease_share=lease)


ANN = Who(person="discord:111", guild=900)
BEN = Who(person="discord:222", guild=900)


async def test_a_person_gets_what_is_left_and_then_nothing(db: Database) -> None:
    m = meter(db, Clock("2026-12-07T10:00:00"), person="voice=100")
    g = await m.reserve("voice", ANN, 60, engine="elevenlabs")
    assert g.granted == 60
    with pytest.raises(OverLimit) as refused:
        await m.reserve("voice", ANN, 60, engine="elevenlabs")  # all or nothing: 40 left
    assert refused.value.level == "person" and refused.value.first
    assert refused.value.until == Clock("2026-12-08T00:00:00").now
    part = await m.reserve("speech", ANN, 10, engine="deepgram", minimum=1)  # speech is not limited here
    assert part.granted == 10
    g2 = await m.reserve("voice", ANN, 40, engine="elevenlabs")
    m.settle(g, 60)
    m.settle(g2, 40)
    with pytest.raises(OverLimit) as again:
        await m.reserve("voice", ANN, 1, engine="elevenlabs")
    assert not again.value.first  # told once
    await m.flush()
    day = m.day()
    assert await m.store.used(day, "voice", "discord:111") == 100
    assert await m.store.used(day, "voice", "guild:900") == 100
    assert await m.store.used(day, "voice", "guild:900/discord:111") == 100
    assert await m.store.used(day, "voice", "total") == 100


async def test_partial_grants_follow_the_tightest_scope_and_settling_gives_back(db: Database) -> None:
    m = meter(db, Clock("2026-12-07T10:00:00"), person="speech=10m", server="speech=1m")
    g = await m.reserve("speech", ANN, 45, engine="deepgram", minimum=1)
    assert g.granted == 45
    g2 = await m.reserve("speech", BEN, 45, engine="deepgram", minimum=1)
    assert g2.granted == 15  # the server had 15 s left
    day = m.day()
    assert await m.store.used(day, "speech", "discord:222") == 15  # what the server could not grant went back
    m.settle(g, 5)  # spoke 5 s of the 45 reserved: 40 s back for everyone in the server
    await m.flush()
    assert await m.store.used(day, "speech", "guild:900") == 20
    g3 = await m.reserve("speech", BEN, 45, engine="deepgram", minimum=1)
    assert g3.granted == 40
    with pytest.raises(OverLimit) as refused:
        await m.reserve("speech", ANN, 45, engine="deepgram", minimum=1)
    assert refused.value.level == "server"


async def test_local_engines_are_counted_never_limited_and_no_limits_means_no_round_trip(db: Database) -> None:
    clock = Clock("2026-12-07T10:00:00")
    free = meter(db, clock)
    g = await free.reserve("model", ANN, 500, engine="openai")
    assert not g.reserved
    free.settle(g, 321)
    free.record("speech", ANN, 30, engine="local")
    await free.flush()
    assert await free.store.used(free.day(), "model", "discord:111") == 321
    assert await free.store.used(free.day(), "speech", "discord:111") == 0  # local use is not paid use
    rows = await free.store.engines([free.day()])
    assert ("model", "openai", 321.0, 1) in [(k, e, u, r) for _d, k, e, u, r in rows]
    assert ("speech", "local", 30.0, 1) in [(k, e, u, r) for _d, k, e, u, r in rows]
    assert free.counters[("speech", "local")].amount == 30


async def test_the_operator_is_counted_never_limited(db: Database) -> None:
    m = meter(db, Clock("2026-12-07T10:00:00"), person="model=100", total="model=100")
    operator = Who(person="console:playground")
    for _ in range(3):
        m.settle(await m.reserve("model", operator, 80, engine="openai"), 80)
    await m.flush()
    assert await m.store.used(m.day(), "model", "console:playground") == 240
    with pytest.raises(OverLimit) as refused:  # everyone else meets the total the operator used up
        await m.reserve("model", ANN, 10, engine="openai")
    assert refused.value.level == "total"


async def test_leases_serve_requests_from_memory_and_go_back(db: Database) -> None:
    m = meter(db, Clock("2026-12-07T10:00:00"), lease=0.1, person="model=10k", server="model=100k")
    calls = 0
    reserve = m.store.reserve

    async def counted(*args: object, **kw: object) -> object:
        nonlocal calls
        calls += 1
        return await reserve(*args, **kw)  # type: ignore[arg-type]

    m.store.reserve = counted  # type: ignore[method-assign]
    grants = [await m.reserve("model", ANN, 100, engine="openai") for _ in range(10)]
    assert calls == 1  # one lease of 1,000 tokens (10% of the person's 10k) served ten requests
    for g in grants:
        m.settle(g, 80)  # 20 unused each: back to the lease, up to its size
    await m.flush()
    assert await m.store.used(m.day(), "model", "discord:111") == 1000  # the lease, held
    await m.release()
    assert await m.store.used(m.day(), "model", "discord:111") == 800  # what was used
    assert await m.store.used(m.day(), "model", "guild:900") == 800


async def test_two_pools_on_one_postgresql_share_one_budget(pg_url: str) -> None:
    """Two processes' databases (two asyncpg pools) racing for one person's 60 s: never more."""
    first, second = await open_database(pg_url), await open_database(pg_url)
    try:
        clock = Clock("2026-12-07T10:00:00")
        a, b = meter(first, clock, person="speech=1m", total="speech=10m"), meter(second, clock, person="speech=1m")
        await a.start()
        await b.start()

        async def take(m: UsageMeter) -> float:
            try:
                g = await m.reserve("speech", ANN, 7, engine="deepgram", minimum=7)
            except OverLimit:
                return 0.0
            m.settle(g, 7)
            return g.granted

        got = await asyncio.gather(*(take(a if i % 2 else b) for i in range(40)))
        await a.flush()
        await b.flush()
        assert sum(got) == 56  # 8 × 7 s fit in 60 s; nothing twice
        assert await a.store.used(a.day(), "speech", "discord:111") == 56
    finally:
        await first.close()
        await second.close()


async def test_a_clock_that_jumps_back_and_forth_never_grants_a_day_twice(db: Database) -> None:
    clock = Clock("2026-12-07T23:59:59")
    m = meter(db, clock, person="model=1000")
    m.settle(await m.reserve("model", ANN, 1000, engine="openai"), 1000)
    clock.now += 2  # midnight: a new day, a new allowance
    g = await m.reserve("model", ANN, 1000, engine="openai")
    m.settle(g, 1000)
    clock.now -= 3600  # the clock steps back an hour, across midnight
    with pytest.raises(OverLimit) as refused:
        await m.reserve("model", ANN, 1, engine="openai")
    assert refused.value.until == Clock("2026-12-09T00:00:00").now  # still counting on the 8th
    clock.now += 7200  # and forward again: still the 8th, still spent
    with pytest.raises(OverLimit):
        await m.reserve("model", ANN, 1, engine="openai")
    await m.flush()
    assert await m.store.used("2026-12-07", "model", "discord:111") == 1000
    assert await m.store.used("2026-12-08", "model", "discord:111") == 1000


async def test_a_restart_at_235959_loses_no_count_and_grants_nothing_twice(db: Database, tmp_path) -> None:
    clock = Clock("2026-12-07T23:59:59")
    m = meter(db, clock, person="phone=1m")
    g = await m.reserve("phone", ANN, 60, engine="twilio")  # a call in flight when the process dies
    assert g.granted == 60
    # a new process, on a clock a second behind the last one's
    clock.now -= 1
    again = meter(db, clock, person="phone=1m")
    with pytest.raises(OverLimit):
        await again.reserve("phone", ANN, 1, engine="twilio")
    clock.now += 3  # 00:00:01 on the 8th: the new day's allowance, once
    assert (await again.reserve("phone", ANN, 60, engine="twilio")).granted == 60
    with pytest.raises(OverLimit):
        await again.reserve("phone", ANN, 1, engine="twilio")
    # a restart after midnight whose clock is behind again keeps the 8th (the store's latest day)
    clock.now -= 5
    third = meter(db, clock, person="phone=1m")
    with pytest.raises(OverLimit) as refused:
        await third.reserve("phone", ANN, 1, engine="twilio")
    assert refused.value.until == Clock("2026-12-09T00:00:00").now


def test_settings_parse_limits_and_prices_and_refuse_bad_ones_in_one_line() -> None:
    s = load_settings({"LIMITS_PER_PERSON": "speech=30m,voice=20k,model=200k,phone=10m",
                       "LIMITS_TOTAL": "speech=2h, model=1.5M",
                       "PRICES": "speech=0.0077/m,voice=0.18/k,model=0.6/M,phone=0.0085/m"}, env_file=None)
    assert dict(s.limits_per_person.amounts) == {"speech": 1800, "voice": 20000, "model": 200000, "phone": 600}
    assert dict(s.limits_total.amounts) == {"speech": 7200, "model": 1_500_000}
    assert s.prices.spend("speech", 60) == pytest.approx(0.0077)
    assert s.prices.spend("model", 1_000_000) == pytest.approx(0.6)
    assert s.limits_per_server.get("speech") is None
    for var, raw, words in [("LIMITS_PER_PERSON", "speach=30m", "unknown kind 'speach'"),
                            ("LIMITS_PER_SERVER", "speech=30", None),
                            ("LIMITS_TOTAL", "voice=20q", "unknown unit 'q'"),
                            ("LIMITS_TOTAL", "voice", "is not kind=amount"),
                            ("LIMITS_TOTAL", "voice=1k,voice=2k", "given twice"),
                            ("PRICES", "speech=0.0077", "name the unit priced"),
                            ("PRICES", "model=cheap/M", "is not a price")]:
        if words is None:
            assert load_settings({var: raw}, env_file=None)  # a bare number is minutes for speech
            continue
        with pytest.raises(SettingsError) as exc:
            load_settings({var: raw}, env_file=None)
        assert exc.value.problems == [exc.value.problems[0]] and exc.value.problems[0].startswith(f"{var}: ")
        assert words in exc.value.problems[0]


def test_parsers_round_numbers() -> None:
    assert parse_limits("speech=90s").get("speech") == 90
    assert parse_limits("phone=1.5h").get("phone") == 5400
    assert parse_prices("voice=0.3/1").spend("voice", 10) == pytest.approx(3.0)


def test_a_malformed_limit_stops_the_bot_at_start_with_one_line(capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import os

    from bot.cli import main

    monkeypatch.setenv("LIMITS_PER_SERVER", "speech=30m,voice=lots")
    code = main(["--env-file", os.devnull, "chat"], stdin=io.StringIO(""), out=io.StringIO())
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "LIMITS_PER_SERVER: voice='lots' is not an amount" in err


async def test_forgetting_a_person_keeps_todays_count_and_drops_the_rest(db: Database) -> None:
    clock = Clock("2026-12-06T10:00:00")
    m = meter(db, clock, person="speech=1h")
    m.settle(await m.reserve("speech", ANN, 30, engine="deepgram"), 30)
    m.settle(await m.reserve("speech", BEN, 30, engine="deepgram"), 30)
    clock.now += 86400
    m.settle(await m.reserve("speech", ANN, 20, engine="deepgram"), 20)
    await m.release()
    removed = await m.store.forget("discord:111", keep_day=m.day())
    assert removed == 2  # yesterday's own row and share of the server
    assert await m.store.used("2026-12-06", "speech", "discord:111") == 0
    assert await m.store.used("2026-12-07", "speech", "discord:111") == 20  # today's limit still holds
    assert await m.store.used("2026-12-06", "speech", "discord:222") == 30
    assert await m.store.used("2026-12-06", "speech", "guild:900") == 60  # names no one
