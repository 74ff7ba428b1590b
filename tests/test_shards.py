"""Shards per process: the settings and flags that choose them, the IDENTIFY gate, and the real
VoiceBot (discord.py's AutoShardedBot) against the loopback Discord, which shards as Discord does."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest
import yarl

from bot.cli import _with_shard_flags, build_parser, main
from bot.store import SqliteDatabase as Database
from bot.loopback.gateway import Sharding
from bot.loopback.server import ChannelHandle, LocalDiscord
from bot.settings import SettingsError, load_settings
from bot.shards import BucketGate, SessionStartLimit, describe_shards, parse_shard_ids, shard_of
from tests.test_loopback_rest import connected
from tests.test_loopback_shards import guilds_on_shards
from tests.test_voice_commands import MANAGE_GUILD, Harness, running_bot as running_voice_bot

TIMEOUT = 30.0
TOKEN = "loopback.shardbot.0123456789abcdef"  # three parts, as settings expect of a bot token

# --- choosing shards ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "ids"), [
    ("0-3", (0, 1, 2, 3)),
    ("0,2,5", (0, 2, 5)),
    (" 8, 0-2 ", (0, 1, 2, 8)),
    ("7", (7,)),
    ("4-4", (4,)),
])
def test_shard_ids_are_ranges_lists_or_both(text: str, ids: tuple[int, ...]) -> None:
    assert parse_shard_ids(text) == ids


@pytest.mark.parametrize(("text", "said"), [
    ("", "names no shard"),
    (" , ", "names no shard"),
    ("a", "'a' is not a shard id"),
    ("1-x", "'1-x' is not a shard id"),
    ("3-1", "runs backwards (write 1-3)"),
    ("0-2,2", "lists shard 2 more than once"),
    ("-1", "'-1' is not a shard id"),
])
def test_bad_shard_ids_say_what_is_wrong(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=said.replace("(", r"\(").replace(")", r"\)")):
        parse_shard_ids(text)


def test_describe_shards_folds_runs() -> None:
    assert describe_shards([8, 0, 1, 2, 3, 5]) == "0-3, 5, 8"
    assert describe_shards([]) == ""


def test_shard_settings_are_checked_together() -> None:
    settings = load_settings({"SHARD_IDS": "2-3", "SHARD_COUNT": "4"}, env_file=None)
    assert settings.shard_ids == (2, 3) and settings.shard_count == 4
    assert load_settings({}, env_file=None).shard_ids is None
    with pytest.raises(SettingsError) as info:
        load_settings({"SHARD_IDS": "0-3"}, env_file=None)
    assert info.value.problems == ["SHARD_IDS needs SHARD_COUNT: the number of shards across all processes, "
                                   "so every process splits guilds the same way"]
    with pytest.raises(SettingsError) as info:
        load_settings({"SHARD_IDS": "0-4,9", "SHARD_COUNT": "4"}, env_file=None)
    assert info.value.problems == ["SHARD_IDS lists shard 4, 9, but SHARD_COUNT is 4: shards are numbered 0 to 3"]
    with pytest.raises(SettingsError) as info:
        load_settings({"SHARD_IDS": "3-1", "SHARD_COUNT": "0"}, env_file=None)
    assert len(info.value.problems) == 2 and info.value.problems[0].startswith("SHARD_IDS: '3-1' runs backwards")


@pytest.mark.parametrize("argv", [["--shard-ids", "1,3", "--shard-count", "4"],
                                  ["run", "--shard-ids", "1,3", "--shard-count", "4"]])
def test_run_flags_choose_the_shards(argv: list[str]) -> None:
    settings = _with_shard_flags(build_parser().parse_args(argv), load_settings({}, env_file=None))
    assert settings.shard_ids == (1, 3) and settings.shard_count == 4


def test_a_flag_overrides_its_setting_and_is_checked_with_the_other() -> None:
    base = load_settings({"SHARD_IDS": "2-3", "SHARD_COUNT": "4"}, env_file=None)
    settings = _with_shard_flags(build_parser().parse_args(["--shard-ids", "0-1"]), base)
    assert settings.shard_ids == (0, 1) and settings.shard_count == 4
    with pytest.raises(ValueError, match="^SHARD_IDS lists shard 2, 3, but --shard-count is 2"):
        _with_shard_flags(build_parser().parse_args(["--shard-count", "2"]), base)


@pytest.mark.parametrize(("argv", "line"), [
    (["--shard-ids", "0-4", "--shard-count", "4"],
     "voicebot: --shard-ids lists shard 4, but --shard-count is 4: shards are numbered 0 to 3\n"),
    (["--shard-ids", "x"], "voicebot: --shard-ids: 'x' is not a shard id or a range such as 0-3\n"),
    (["run", "--shard-count", "0"], "voicebot: --shard-count: must be from 1 to 100000, got 0\n"),
    (["--shard-ids", "1"], "voicebot: --shard-ids needs SHARD_COUNT: the number of shards across all processes, "
                           "so every process splits guilds the same way\n"),
])
def test_bad_flags_end_start_up_with_one_line(argv: list[str], line: str, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DISCORD_TOKEN", "MTAwMDAwMDAwMDAwMDAwMDAx.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB")
    assert main(["--env-file", os.devnull, *argv]) == 2
    assert capsys.readouterr().err == line


# --- the IDENTIFY gate ----------------------------------------------------------------------------------


class FakeTime:
    """A clock that only the gate's own waits move forward."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


async def test_the_gate_lets_one_identify_per_bucket_through_every_five_seconds() -> None:
    time = FakeTime()
    gate = BucketGate(SessionStartLimit(total=1000, remaining=1000, reset_after=3600.0, max_concurrency=2),
                      clock=time.clock, sleep=time.sleep)
    went: list[tuple[int, float]] = []

    async def login(shard_id: int) -> None:
        await gate.wait(shard_id)
        went.append((shard_id, time.now))

    for shard_id in range(5):
        await login(shard_id)
    assert went == [(0, 1000.0), (1, 1000.0), (2, 1006.0), (3, 1006.0), (4, 1012.0)]
    assert gate.remaining == 995


async def test_the_gate_waits_for_the_session_start_limit_to_reset() -> None:
    time = FakeTime()
    gate = BucketGate(SessionStartLimit(total=1000, remaining=1, reset_after=600.0, max_concurrency=1),
                      clock=time.clock, sleep=time.sleep)
    await gate.wait(0)
    assert time.waits == [] and gate.remaining == 0
    await gate.wait(1)
    assert time.waits == [600.0]  # the reset is further off than the bucket's 5 s
    assert gate.remaining == 999


# --- the real bot on the loopback Discord -------------------------------------------------------------


@contextlib.asynccontextmanager
async def chat_bot(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch,
                   env: dict[str, str] | None = None, **options: Any) -> AsyncIterator[Any]:
    """The real VoiceBot with the chat cog and the built-in ELIZA, logged in to ``discord_``."""
    from bot.client import VoiceBot
    from bot.services import build_services

    monkeypatch.setattr(discord.http.Route, "BASE", discord_.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(discord_.gateway_url + "/"))
    settings = load_settings({
        "DISCORD_TOKEN": discord_.token, "DISCORD_API_BASE": discord_.api_base,
        "DISCORD_CA_FILE": str(discord_.ca_file), "STT_ENGINE": "none", "TTS_ENGINE": "none",
        "AGENT_ENGINE": "eliza", **(env or {}),
    }, env_file=None)
    services = await build_services(settings, db=Database.in_memory())
    try:
        bot = VoiceBot(services, extensions=("cogs.chat",), **options)
        async with connected(bot, discord_.token, timeout=TIMEOUT):
            yield bot
    finally:
        await services.aclose()


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (state the bot keeps) until it holds, with a generous deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():
        assert loop.time() < deadline, "timed out waiting for the bot's state"
        await asyncio.sleep(0.02)


async def wait_answers(discord_: LocalDiscord, channels: list[ChannelHandle]) -> None:
    for channel in channels:
        await discord_.wait_bot_message(channel, timeout=TIMEOUT)


async def test_each_process_answers_its_own_guilds_and_only_shard_zero_answers_dms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with LocalDiscord(token=TOKEN, sharding=Sharding(max_concurrency=2)) as discord_:
        g0, g1 = guilds_on_shards(discord_, 2)
        text0, text1 = g0.channel("general"), g1.channel("general")
        alice, bob = g0.add_member("Alice"), g1.add_member("Bob")
        async with chat_bot(discord_, monkeypatch, {"SHARD_COUNT": "2", "SHARD_IDS": "1"}) as one, \
                chat_bot(discord_, monkeypatch, {"SHARD_COUNT": "2", "SHARD_IDS": "0"}) as zero:
            assert (zero.owned_shards, one.owned_shards) == ((0,), (1,))
            assert {g.id for g in zero.guilds} == {g0.id} and {g.id for g in one.guilds} == {g1.id}
            mention = f"<@{discord_.bot_user_id}>"
            await alice.send_message(text0, f"{mention} I feel happy today")
            await bob.send_message(text1, f"{mention} I feel tired today")
            await alice.send_dm("I remember my mother")
            dm = alice.dm_channel()
            await wait_answers(discord_, [text0, text1, dm])
            # Each answered by the process that owns it: its memory holds the exchange (stored once
            # the reply is out, so a moment after the message appears).
            room0, room1, dm_room = f"discord:{g0.id}:{text0.id}", f"discord:{g1.id}:{text1.id}", f"discord:dm:{alice.id}"
            await until(lambda: all(len(bot.services.memory.held(room)[-5:]) == 2
                                    for bot, room in ((zero, room0), (zero, dm_room), (one, room1))))
            assert [len((await one.services.memory.recent(r, 5))) for r in (room0, dm_room)] == [0, 0]
            assert len((await zero.services.memory.recent(room1, 5))) == 0
            statuses = zero.shard_status() + one.shard_status()
            assert [(s.shard_id, s.shard_count, s.connected, s.guilds) for s in statuses] == [(0, 2, True, 1),
                                                                                               (1, 2, True, 1)]
        assert [len(c.bot_messages) for c in (text0, text1, dm)] == [1, 1, 1]
        assert sorted(e.data["shard"] for e in discord_.events.of("identify")) == [[0, 2], [1, 2]]
        assert discord_.problems == []


async def test_without_settings_one_process_runs_every_recommended_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    async with LocalDiscord(token=TOKEN, sharding=Sharding(max_concurrency=3, recommended_shards=3)) as discord_:
        guilds = guilds_on_shards(discord_, 3)
        last = guilds[2].channel("general")
        alice = guilds[2].add_member("Alice")
        limits: list[SessionStartLimit] = []
        waited: list[int] = []

        class RecordingGate(BucketGate):  # where a gate shared by processes plugs in
            def __init__(self, limit: SessionStartLimit) -> None:
                limits.append(limit)
                super().__init__(limit)

            async def wait(self, shard_id: int) -> None:
                waited.append(shard_id)
                await super().wait(shard_id)

        async with chat_bot(discord_, monkeypatch, identify_gate=RecordingGate) as bot:
            assert limits == [SessionStartLimit(total=1000, remaining=1000, reset_after=86_400.0, max_concurrency=3)]
            assert waited == [0, 1, 2]
            assert bot.shard_count == 3 and bot.owned_shards == (0, 1, 2)
            assert {g.id for g in bot.guilds} == {g.id for g in guilds}
            await alice.send_message(last, f"<@{discord_.bot_user_id}> hello on the last shard")
            await wait_answers(discord_, [last])
            assert sorted(s.guilds for s in bot.shard_status()) == [1, 1, 1]
        assert sorted(e.data["shard"] for e in discord_.events.of("identify")) == [[0, 3], [1, 3], [2, 3]]
        assert discord_.problems == []


async def test_logins_in_one_bucket_wait_their_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """max_concurrency 1: one bucket, so the second shard's IDENTIFY waits 5 s after the first's
    (the loopback refuses anything sooner with op 9 and counts a problem)."""
    async with LocalDiscord(token=TOKEN) as discord_:
        guilds_on_shards(discord_, 2)
        async with chat_bot(discord_, monkeypatch, {"SHARD_COUNT": "2"}):
            identifies = discord_.events.of("identify")
            assert [e.data["shard"] for e in identifies] == [[0, 2], [1, 2]]
            assert identifies[1].at - identifies[0].at >= 5.0
        assert discord_.events.of("identify_refused") == [] and discord_.problems == []


async def test_voice_goes_through_the_shard_that_owns_the_guild(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two shards in one process, the guild on shard 1: /join's voice state update (op 4) must go
    on shard 1's socket (the loopback ignores it elsewhere and counts a problem)."""
    async with LocalDiscord(token=TOKEN, sharding=Sharding(max_concurrency=2)) as discord_:
        guild = discord_.add_guild("Loopback", shard=(1, 2))
        h = Harness(discord_, guild, guild.add_text_channel("general"), guild.add_voice_channel("Lounge"),
                    guild.add_voice_channel("Quiet Room"), guild.add_member("Alice"),
                    guild.add_member("Boss", roles=[guild.add_role("mods", MANAGE_GUILD)]))
        async with running_voice_bot(h, monkeypatch, env={"SHARD_COUNT": "2"}):
            await h.alice.join_voice(h.voice)
            assert "I'm in" in await h.command(h.alice, "join")
            await discord_.wait_bot_voice(h.guild, timeout=TIMEOUT)
            request = discord_.events.of("voice_state_request")[0]
            assert int(request.data["guild_id"]) == guild.id
        assert discord_.problems == []
        assert shard_of(guild.id, 2) == 1



async def test_too_few_shards_end_start_up_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Discord closes 4011 when a shard would hold too many guilds; discord.py gives up, and the
    command's failure line says what to change."""
    from bot.cli import describe_failure
    from bot.client import VoiceBot
    from bot.services import build_services

    async with LocalDiscord(token=TOKEN, sharding=Sharding(max_guilds_per_shard=1, recommended_shards=2)) as discord_:
        guilds_on_shards(discord_, 2)
        monkeypatch.setattr(discord.http.Route, "BASE", discord_.api_base)
        settings = load_settings({
            "DISCORD_TOKEN": TOKEN, "DISCORD_API_BASE": discord_.api_base, "DISCORD_CA_FILE": str(discord_.ca_file),
            "STT_ENGINE": "none", "TTS_ENGINE": "none", "AGENT_ENGINE": "eliza", "SHARD_COUNT": "1",
        }, env_file=None)
        services = await build_services(settings, db=Database.in_memory())
        bot = VoiceBot(services, extensions=())
        try:
            with pytest.raises(discord.ConnectionClosed) as info:
                await bot.login(TOKEN)
                await asyncio.wait_for(bot.connect(reconnect=True), TIMEOUT)
        finally:
            await bot.close()
            await services.aclose()
        assert "SHARD_COUNT 1 is below the 2 shards Discord recommends" in caplog.text
        failure = describe_failure(info.value, settings)
        assert failure.status == 2
        assert failure.line == ("Discord's gateway closed with 4011: sharding required: a shard would hold too many "
                                "guilds; raise SHARD_COUNT, or leave it empty for Discord's recommended count")
        assert any("sharding required" in p for p in discord_.problems)
