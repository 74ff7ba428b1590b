"""The loopback Discord shards as Discord does: raw gateway checks, then discord.py's AutoShardedClient.

What is checked against Discord's developer docs (docs/events/gateway.mdx, "Sharding",
"Identifying", "Get Gateway Bot"): routing by ``(guild_id >> 22) % num_shards``, DMs on shard 0
only, sessions with different ``num_shards`` side by side, close 4010/4011, op 9 for an IDENTIFY
faster than its bucket allows, and the session start limit counting down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import pytest
import yarl

from bot.client import make_intents
from bot.loopback.gateway import Sharding, guild_shard
from bot.loopback.server import GuildHandle, LocalDiscord
from tests.test_loopback_gateway import RawGateway, close_raw, open_raw
from tests.test_loopback_rest import TIMEOUT, connected

GUILDS = 1
GUILD_MESSAGES = 1 << 9
DIRECT_MESSAGES = 1 << 12
MESSAGE_CONTENT = 1 << 15
INTENTS = GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT


async def identify(discord_: LocalDiscord, shard: list[Any] | None) -> RawGateway:
    """A raw connection that has read HELLO and sent IDENTIFY (with ``shard`` when given)."""
    raw = await open_raw(discord_)
    assert (await raw.recv())["op"] == 10
    d: dict[str, Any] = {"token": discord_.token, "intents": INTENTS, "properties": {}}
    if shard is not None:
        d["shard"] = shard
    await raw.send(2, d)
    return raw


async def dispatches(raw: RawGateway, until: str) -> list[dict[str, Any]]:
    """Dispatches read up to and including the first ``until`` event."""
    seen: list[dict[str, Any]] = []
    while True:
        payload = await raw.recv()
        assert payload["op"] == 0, payload
        seen.append(payload)
        if payload["t"] == until:
            return seen


async def gateway_bot(discord_: LocalDiscord) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=discord_.connector()) as session:
        async with session.get(f"{discord_.api_base}/gateway/bot",
                               headers={"Authorization": f"Bot {discord_.token}"}) as response:
            assert response.status == 200
            return await response.json()


def guilds_on_shards(discord_: LocalDiscord, count: int) -> list[GuildHandle]:
    """One guild (with a text channel) owned by each of ``count`` shards, in shard order."""
    guilds = []
    for shard_id in range(count):
        guild = discord_.add_guild(f"G{shard_id}", shard=(shard_id, count))
        guild.add_text_channel("general")
        guilds.append(guild)
    return guilds


# --- raw protocol -----------------------------------------------------------------------------------


async def test_gateway_bot_recommends_shards_and_counts_session_starts_down() -> None:
    async with LocalDiscord(sharding=Sharding(max_concurrency=4, session_start_total=50)) as discord_:
        before = await gateway_bot(discord_)
        assert before["url"] == discord_.gateway_url
        assert before["shards"] == 1
        limit = before["session_start_limit"]
        assert limit["total"] == 50 and limit["remaining"] == 50 and limit["max_concurrency"] == 4
        assert limit["reset_after"] == 86_400_000
        raw = await identify(discord_, [0, 2])
        try:
            assert (await dispatches(raw, "READY"))[-1]["d"]["shard"] == [0, 2]
        finally:
            await close_raw(raw)
        after = (await gateway_bot(discord_))["session_start_limit"]
        assert after["remaining"] == 49
        assert 0 < after["reset_after"] <= 86_400_000
        discord_.sharding.recommended_shards = 6
        assert (await gateway_bot(discord_))["shards"] == 6
    async with LocalDiscord() as discord_:
        for n in range(1001):
            discord_.add_guild(f"G{n}")
        assert (await gateway_bot(discord_))["shards"] == 2  # Discord: about one shard per 1000 guilds


@pytest.mark.parametrize("shard", [[2, 2], [-1, 2], [0, 0], ["0", "2"], [0], [True, 2]])
async def test_an_invalid_shard_closes_4010(shard: list[Any]) -> None:
    async with LocalDiscord() as discord_:
        raw = await identify(discord_, shard)
        try:
            assert await raw.closed_with() == 4010
        finally:
            await close_raw(raw)
        assert any("invalid shard" in p for p in discord_.problems)
        assert (await gateway_bot(discord_))["session_start_limit"]["remaining"] == 1000  # no session started


async def test_a_shard_over_its_guild_limit_closes_4011_and_sharding_fixes_it() -> None:
    async with LocalDiscord(sharding=Sharding(max_guilds_per_shard=2, max_concurrency=2)) as discord_:
        guilds_on_shards(discord_, 2)
        discord_.add_guild("third", shard=(1, 2))
        raw = await identify(discord_, None)  # unsharded: one session would hold all three
        try:
            assert await raw.closed_with() == 4011
        finally:
            await close_raw(raw)
        assert any("sharding required" in p for p in discord_.problems)
        discord_.problems.clear()
        raws = [await identify(discord_, [0, 2]), await identify(discord_, [1, 2])]
        try:
            ready = [(await dispatches(raw, "READY"))[-1]["d"] for raw in raws]
            assert [len(r["guilds"]) for r in ready] == [1, 2]
        finally:
            for raw in raws:
                await close_raw(raw)
        assert discord_.problems == []


async def test_identify_faster_than_its_bucket_gets_invalid_session() -> None:
    # A long interval, so "too soon" holds however slowly this machine runs the three logins.
    async with LocalDiscord(sharding=Sharding(max_concurrency=2, identify_interval=60.0)) as discord_:
        first = await identify(discord_, [0, 4])
        other_bucket = await identify(discord_, [1, 4])  # 1 % 2: its own bucket, may start at once
        same_bucket = await identify(discord_, [2, 4])  # 2 % 2 == 0 % 2, within 5 s
        try:
            assert (await dispatches(first, "READY"))[-1]["d"]["shard"] == [0, 4]
            assert (await dispatches(other_bucket, "READY"))[-1]["d"]["shard"] == [1, 4]
            assert await same_bucket.recv() == {"op": 9, "d": False, "s": None, "t": None}
        finally:
            for raw in (first, other_bucket, same_bucket):
                await close_raw(raw)
        refused = discord_.events.of("identify_refused")
        assert [(e.data["shard"], e.data["bucket"]) for e in refused] == [([2, 4], 0)]
        assert len(discord_.problems) == 1 and "op 9" in discord_.problems[0]
        assert (await gateway_bot(discord_))["session_start_limit"]["remaining"] == 998  # refused: not a start
    async with LocalDiscord(sharding=Sharding(identify_interval=0.05)) as discord_:
        first = await identify(discord_, [0, 2])
        await dispatches(first, "READY")
        await asyncio.sleep(0.1)  # past the (shortened) interval: the bucket is free again
        second = await identify(discord_, [1, 2])
        try:
            assert (await dispatches(second, "READY"))[-1]["d"]["shard"] == [1, 2]
        finally:
            await close_raw(first)
            await close_raw(second)
        assert discord_.problems == []


async def test_events_go_to_the_shard_that_owns_the_guild_and_dms_to_shard_zero() -> None:
    # Two sessions of shard 0 share bucket 0 whatever max_concurrency is: no interval here.
    async with LocalDiscord(sharding=Sharding(max_concurrency=2, identify_interval=0.0)) as discord_:
        g0, g1 = guilds_on_shards(discord_, 2)
        alice, bob = g0.add_member("Alice"), g1.add_member("Bob")
        raws = [await identify(discord_, [0, 2]), await identify(discord_, [1, 2]),
                await identify(discord_, [0, 1])]  # another count beside them: Discord allows it
        try:
            starts = [await dispatches(raw, "READY") for raw in raws]
            ready = [s[-1]["d"] for s in starts]
            assert ready[0]["guilds"] == [{"id": str(g0.id), "unavailable": True}]
            assert ready[1]["guilds"] == [{"id": str(g1.id), "unavailable": True}]
            assert {g["id"] for g in ready[2]["guilds"]} == {str(g0.id), str(g1.id)}
            created = [[p["d"]["id"] for p in await dispatches(raw, "GUILD_CREATE")] for raw in raws[:2]]
            assert created == [[str(g0.id)], [str(g1.id)]]
            await dispatches(raws[2], "GUILD_CREATE")
            await dispatches(raws[2], "GUILD_CREATE")

            await bob.send_message(g1.channel("general"), "in guild one")
            await alice.send_dm("a direct message")
            await alice.send_message(g0.channel("general"), "in guild zero")
            shard0 = await dispatches(raws[0], "MESSAGE_CREATE")
            assert shard0[-1]["d"]["content"] == "a direct message" and "guild_id" not in shard0[-1]["d"]
            assert (await dispatches(raws[0], "MESSAGE_CREATE"))[-1]["d"]["content"] == "in guild zero"
            shard1 = await dispatches(raws[1], "MESSAGE_CREATE")
            assert shard1[-1]["d"]["content"] == "in guild one"
            whole = [(await dispatches(raws[2], "MESSAGE_CREATE"))[-1]["d"]["content"] for _ in range(3)]
            assert whole == ["in guild one", "a direct message", "in guild zero"]
        finally:
            for raw in raws:
                await close_raw(raw)
        # Shard 1 saw exactly its own guild's message: nothing else was ever queued for it.
        session1 = next(s for s in discord_.events.of("identify") if s.data["shard"] == [1, 2]).data["session_id"]
        queued = [e.data["event"] for e in discord_.events.of("dispatch") if e.data["session_id"] == session1]
        assert queued == ["READY", "GUILD_CREATE", "MESSAGE_CREATE"]
        assert discord_.problems == []


async def test_voice_state_update_on_a_shard_that_does_not_own_the_guild_is_ignored() -> None:
    async with LocalDiscord(sharding=Sharding(max_concurrency=2)) as discord_:
        g0, g1 = guilds_on_shards(discord_, 2)
        voice = g1.add_voice_channel("Lounge")
        raw = await identify(discord_, [0, 2])
        try:
            await dispatches(raw, "GUILD_CREATE")
            await raw.send(4, {"guild_id": str(g1.id), "channel_id": str(voice.id), "self_mute": False,
                               "self_deaf": False})
            await discord_.events.wait_for("problem", timeout=TIMEOUT)
        finally:
            await close_raw(raw)
        assert "does not own it" in discord_.problems[0]
        assert discord_.events.of("bot_voice_join") == []


async def test_a_clean_close_ends_the_session_and_a_drop_keeps_it_resumable() -> None:
    async with LocalDiscord(sharding=Sharding(max_concurrency=2)) as discord_:
        guild, _ = guilds_on_shards(discord_, 2)
        member = guild.add_member("Alice")
        kept = await identify(discord_, [0, 2])
        ready = (await dispatches(kept, "READY"))[-1]
        await kept.ws.close(code=4000)  # any code but 1000/1001: Discord keeps the session a while
        await kept.session.close()
        await member.send_message(guild.channel("general"), "while away")
        raw = await open_raw(discord_)
        try:
            await raw.recv()
            await raw.send(6, {"token": discord_.token, "session_id": ready["d"]["session_id"], "seq": ready["s"]})
            replayed = await dispatches(raw, "RESUMED")
            assert [p["t"] for p in replayed] == ["GUILD_CREATE", "MESSAGE_CREATE", "RESUMED"]
            await raw.ws.close(code=1000)  # the bot's clean close: Discord invalidates the session
        finally:
            await close_raw(raw)
        await discord_.events.wait_for("session_end", timeout=TIMEOUT)
        raw = await open_raw(discord_)
        try:
            await raw.recv()
            await raw.send(6, {"token": discord_.token, "session_id": ready["d"]["session_id"], "seq": 1})
            assert (await raw.recv())["op"] == 9
        finally:
            await close_raw(raw)
        assert discord_.gateway.sessions == {}


async def test_a_disconnected_session_times_out() -> None:
    async with LocalDiscord(sharding=Sharding(session_timeout=0.05)) as discord_:
        raw = await identify(discord_, [0, 1])
        ready = (await dispatches(raw, "READY"))[-1]
        await raw.ws.close(code=4000)
        await raw.session.close()
        ended = await discord_.events.wait_for("session_end", timeout=TIMEOUT)
        assert ended.data["reason"] == "timed out" and discord_.gateway.sessions == {}
        raw = await open_raw(discord_)
        try:
            await raw.recv()
            await raw.send(6, {"token": discord_.token, "session_id": ready["d"]["session_id"], "seq": ready["s"]})
            assert (await raw.recv())["op"] == 9
        finally:
            await close_raw(raw)


async def test_the_identify_past_the_session_start_limit_ends_every_session_and_resets_the_token() -> None:
    async with LocalDiscord(sharding=Sharding(max_concurrency=3, session_start_total=2)) as discord_:
        old_token = discord_.token
        live = [await identify(discord_, [0, 3]), await identify(discord_, [1, 3])]
        for raw in live:
            await dispatches(raw, "READY")
        assert (await gateway_bot(discord_))["session_start_limit"]["remaining"] == 0
        third = await identify(discord_, [2, 3])
        try:
            assert await third.closed_with() == 4004
            for raw in live:  # closed from another connection's turn: read the code the frame carried
                frame = await raw.ws.receive(timeout=TIMEOUT)
                assert (frame.type, frame.data) == (aiohttp.WSMsgType.CLOSE, 4004)
        finally:
            for raw in (*live, third):
                await close_raw(raw)
        assert discord_.token != old_token and discord_.gateway.sessions == {}
        assert any("session start limit used up" in p for p in discord_.problems)


# --- discord.py's AutoShardedClient ------------------------------------------------------------------


class QuickClient(discord.AutoShardedClient):
    """discord.py's sharded client without its 5 s pause before each IDENTIFY after the first: the
    loopback's max_concurrency (or interval) in these tests lets every shard start at once."""

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        return None


@contextlib.asynccontextmanager
async def sharded_client(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch, *,
                         shard_ids: list[int] | None = None, shard_count: int | None = None,
                         ) -> AsyncIterator[tuple[discord.AutoShardedClient, asyncio.Queue[discord.Message]]]:
    """A real AutoShardedClient logged in to ``discord_``; yields it and the messages it receives."""
    monkeypatch.setattr(discord.http.Route, "BASE", discord_.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(discord_.gateway_url + "/"))
    options: dict[str, Any] = {"shard_count": shard_count} if shard_count is not None else {}
    if shard_ids is not None:
        options["shard_ids"] = shard_ids
    client = QuickClient(intents=make_intents(), connector=discord_.connector(),
                                       guild_ready_timeout=0.05, **options)
    received: asyncio.Queue[discord.Message] = asyncio.Queue()

    @client.event
    async def on_message(message: discord.Message) -> None:
        await received.put(message)

    async with connected(client, discord_.token):
        yield client, received


async def wait_guilds(client: discord.Client, wanted: set[int]) -> None:
    """Wait (polling the client's own cache) until it holds exactly ``wanted`` guilds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while {g.id for g in client.guilds} != wanted:
        assert loop.time() < deadline, f"guilds {[g.id for g in client.guilds]} never became {wanted}"
        await asyncio.sleep(0.01)


async def test_two_sharded_clients_each_get_their_own_guilds_and_only_shard_zero_gets_dms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with LocalDiscord(sharding=Sharding(max_concurrency=2)) as discord_:
        g0, g1 = guilds_on_shards(discord_, 2)
        alice, bob = g0.add_member("Alice"), g1.add_member("Bob")
        async with sharded_client(discord_, monkeypatch, shard_ids=[0], shard_count=2) as (zero, got0), \
                sharded_client(discord_, monkeypatch, shard_ids=[1], shard_count=2) as (one, got1):
            await wait_guilds(zero, {g0.id})
            await wait_guilds(one, {g1.id})
            assert zero.get_guild(g0.id).shard_id == 0 and one.get_guild(g1.id).shard_id == 1  # type: ignore[union-attr]
            await alice.send_dm("hello in private")
            await bob.send_message(g1.channel("general"), "hello in guild one")
            dm = await asyncio.wait_for(got0.get(), TIMEOUT)
            assert dm.guild is None and dm.content == "hello in private"
            assert (await asyncio.wait_for(got1.get(), TIMEOUT)).content == "hello in guild one"
            await alice.send_message(g0.channel("general"), "hello in guild zero")
            assert (await asyncio.wait_for(got0.get(), TIMEOUT)).content == "hello in guild zero"
            assert got0.empty() and got1.empty()
        identified = sorted(e.data["shard"] for e in discord_.events.of("identify"))
        assert identified == [[0, 2], [1, 2]]
        assert discord_.problems == []


async def test_without_a_count_the_client_runs_every_recommended_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    async with LocalDiscord(sharding=Sharding(max_concurrency=3, recommended_shards=3)) as discord_:
        guilds = guilds_on_shards(discord_, 3)
        async with sharded_client(discord_, monkeypatch) as (client, _):
            assert client.shard_count == 3 and sorted(client.shards) == [0, 1, 2]
            await wait_guilds(client, {g.id for g in guilds})
            assert sorted(guild_shard(g.id, 3) for g in guilds) == [0, 1, 2]
        assert discord_.problems == []


async def test_two_processes_identifying_at_once_in_one_bucket_are_refused_then_recover(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two clients each running one shard know nothing of each other: the second IDENTIFYs inside
    the first's 5 s and Discord refuses it (op 9); discord.py connects again and IDENTIFYs anew.
    This is what a gate shared by the processes prevents."""
    async with LocalDiscord(sharding=Sharding(identify_interval=60.0)) as discord_:
        g0, g1 = guilds_on_shards(discord_, 2)

        async def bucket_frees_after_the_refusal() -> None:
            await discord_.events.wait_for("identify_refused", timeout=TIMEOUT)
            discord_.sharding.identify_interval = 0.0  # as if the 5 s had passed

        freeing = asyncio.create_task(bucket_frees_after_the_refusal(), name="test-bucket-frees")
        try:
            async with sharded_client(discord_, monkeypatch, shard_ids=[0], shard_count=2) as (zero, _), \
                    sharded_client(discord_, monkeypatch, shard_ids=[1], shard_count=2) as (one, _):
                await wait_guilds(zero, {g0.id})
                await wait_guilds(one, {g1.id})
        finally:
            await freeing
        assert [e.data["shard"] for e in discord_.events.of("identify_refused")] == [[1, 2]]
        assert sorted(e.data["shard"] for e in discord_.events.of("identify")) == [[0, 2], [1, 2]]
        assert len(discord_.problems) == 1 and "op 9" in discord_.problems[0]
