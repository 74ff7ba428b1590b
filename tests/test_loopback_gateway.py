"""The loopback Discord's main gateway: raw protocol checks and a discord.py client's session."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest

from bot.loopback.server import LocalDiscord
from tests.test_loopback_rest import TIMEOUT, running_client


@pytest.fixture
async def discord_() -> AsyncIterator[LocalDiscord]:
    async with LocalDiscord() as server:
        yield server


class RawGateway:
    """A bare websocket client for protocol-level checks (no compression)."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session = session
        self.ws = ws

    async def recv(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=TIMEOUT)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return json.loads(msg.data)

    async def send(self, op: int, d: Any) -> None:
        await self.ws.send_str(json.dumps({"op": op, "d": d}))

    async def closed_with(self) -> int | None:
        msg = await self.ws.receive(timeout=TIMEOUT)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
        return self.ws.close_code


async def open_raw(discord_: LocalDiscord, query: str = "?v=10&encoding=json") -> RawGateway:
    session = aiohttp.ClientSession(connector=discord_.connector())
    ws = await session.ws_connect(discord_.gateway_url + query)
    return RawGateway(session, ws)


async def close_raw(raw: RawGateway) -> None:
    await raw.ws.close()
    await raw.session.close()


async def test_hello_heartbeat_identify_ready_guild_create(discord_: LocalDiscord) -> None:
    guild = discord_.add_guild("G")
    guild.add_text_channel("general")
    raw = await open_raw(discord_)
    try:
        hello = await raw.recv()
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
        await raw.send(1, None)
        assert (await raw.recv())["op"] == 11
        await raw.send(2, {"token": discord_.token, "intents": 1 | (1 << 9), "properties": {}})
        ready = await raw.recv()
        assert ready["t"] == "READY" and ready["s"] == 1
        assert ready["d"]["user"]["id"] == str(discord_.bot_user_id)
        assert ready["d"]["guilds"] == [{"id": str(guild.id), "unavailable": True}]
        assert ready["d"]["resume_gateway_url"] == discord_.gateway_url
        create = await raw.recv()
        assert create["t"] == "GUILD_CREATE" and create["s"] == 2
        assert create["d"]["member_count"] == len(create["d"]["members"])
    finally:
        await close_raw(raw)


async def test_identify_with_wrong_token_closes_4004(discord_: LocalDiscord) -> None:
    raw = await open_raw(discord_)
    try:
        await raw.recv()
        await raw.send(2, {"token": "wrong", "intents": 1, "properties": {}})
        assert await raw.closed_with() == 4004
    finally:
        await close_raw(raw)
    assert any("wrong token" in p for p in discord_.problems)


async def test_op_before_identify_closes_4003_and_missing_intents_4013(discord_: LocalDiscord) -> None:
    raw = await open_raw(discord_)
    try:
        await raw.recv()
        await raw.send(4, {"guild_id": "1", "channel_id": None})
        assert await raw.closed_with() == 4003
    finally:
        await close_raw(raw)
    raw = await open_raw(discord_)
    try:
        await raw.recv()
        await raw.send(2, {"token": discord_.token, "properties": {}})
        assert await raw.closed_with() == 4013
    finally:
        await close_raw(raw)


async def test_zlib_stream_transport_compression(discord_: LocalDiscord) -> None:
    raw = await open_raw(discord_, "?v=10&encoding=json&compress=zlib-stream")
    inflate = zlib.decompressobj()
    try:
        msg = await raw.ws.receive(timeout=TIMEOUT)
        assert msg.type == aiohttp.WSMsgType.BINARY and msg.data.endswith(b"\x00\x00\xff\xff")
        assert json.loads(inflate.decompress(msg.data))["op"] == 10
        await raw.send(1, None)
        msg = await raw.ws.receive(timeout=TIMEOUT)
        assert json.loads(inflate.decompress(msg.data))["op"] == 11  # same stream, continued
    finally:
        await close_raw(raw)


async def test_discord_py_resumes_and_gets_missed_events(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    guild = discord_.add_guild()
    text = guild.add_text_channel("general")
    alice = guild.add_member("Alice")
    received: asyncio.Queue[str] = asyncio.Queue()

    def setup(client: discord.Client) -> None:
        @client.event
        async def on_message(message: discord.Message) -> None:
            await received.put(message.content)

    async with running_client(discord_, monkeypatch, setup):
        identify = discord_.events.of("identify")[0]
        assert identify.data["compress"] in ("zlib-stream", "zstd-stream")
        await discord_.drop_gateway(4000)
        await alice.send_message(text, "sent while the bot was away")
        await discord_.events.wait_for("resume", timeout=TIMEOUT)
        assert await asyncio.wait_for(received.get(), TIMEOUT) == "sent while the bot was away"
        await discord_.events.wait_for("dispatch", lambda e: e.data["event"] == "RESUMED", timeout=TIMEOUT)
        assert len(discord_.events.of("identify")) == 1
    assert discord_.problems == []


async def test_member_joining_later_and_channel_created_later_are_dispatched(
    discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    guild = discord_.add_guild()
    async with running_client(discord_, monkeypatch) as client:
        joined = asyncio.ensure_future(client.wait_for("member_join", timeout=TIMEOUT))
        created = asyncio.ensure_future(client.wait_for("guild_channel_create", timeout=TIMEOUT))
        bob = guild.add_member("Bob")
        later = guild.add_text_channel("later")
        member = await joined
        channel = await created
        assert member.id == bob.id and channel.id == later.id
        seen = client.get_guild(guild.id)
        assert seen is not None and seen.get_member(bob.id) is not None
