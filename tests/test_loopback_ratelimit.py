"""The loopback Discord enforces Discord's rate limits, and discord.py's own handling copes with them.

Raw requests (aiohttp, no discord.py) show the wire shape of a 429 and the problem it records; the
window clock is a test clock, so nothing waits for real time to pass. A plain discord.py client
then floods a channel against the real clock and is never answered 429: it reads the headers and
waits, as it does against Discord.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import discord
import pytest

from bot.loopback.ratelimit import RateLimiter
from bot.loopback.server import LocalDiscord
from tests.test_loopback_rest import running_client

TIMEOUT = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clock_discord() -> AsyncIterator[tuple[LocalDiscord, Clock]]:
    clock = Clock()
    async with LocalDiscord(rate_limits=RateLimiter(clock=clock)) as server:
        yield server, clock


async def _post(session: aiohttp.ClientSession, d: LocalDiscord, path: str, body: dict[str, object],
                method: str = "POST", auth: bool = True) -> tuple[int, dict[str, object], aiohttp.typedefs.LooseHeaders]:
    headers = {"Authorization": f"Bot {d.token}"} if auth else {}
    async with session.request(method, d.api_base + path, json=body, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def test_a_sixth_message_in_five_seconds_is_answered_429_like_discord(
    clock_discord: tuple[LocalDiscord, Clock],
) -> None:
    d, clock = clock_discord
    guild = d.add_guild()
    general, other = guild.add_text_channel("general"), guild.add_text_channel("other")
    async with aiohttp.ClientSession(connector=d.connector()) as session:
        remaining = []
        for i in range(5):
            status, _, headers = await _post(session, d, f"/channels/{general.id}/messages", {"content": f"m{i}"})
            assert status == 200
            remaining.append(headers["X-RateLimit-Remaining"])
            assert headers["X-RateLimit-Limit"] == "5"
        assert remaining == ["4", "3", "2", "1", "0"]
        assert d.problems == []

        clock.now += 1.5
        status, body, headers = await _post(session, d, f"/channels/{general.id}/messages", {"content": "too soon"})
        assert status == 429
        assert body["global"] is False and body["message"] == "You are being rate limited."
        assert body["retry_after"] == pytest.approx(3.5, abs=0.002)
        assert headers["X-RateLimit-Scope"] == "user"
        assert headers["X-RateLimit-Remaining"] == "0"
        assert float(headers["X-RateLimit-Reset-After"]) == pytest.approx(3.5, abs=0.002)
        assert headers["Retry-After"] == "4"
        assert headers["X-RateLimit-Bucket"] and "X-RateLimit-Reset" in headers and headers["Via"]
        assert "too soon" not in [m.content for m in general.messages]
        assert len(d.problems) == 1 and "rate limit" in d.problems[0]

        # Another channel is another bucket; an edit is another route.
        status, _, _ = await _post(session, d, f"/channels/{other.id}/messages", {"content": "elsewhere"})
        assert status == 200
        first = general.messages[0]
        status, _, _ = await _post(session, d, f"/channels/{general.id}/messages/{first.id}",
                                   {"content": "edited"}, method="PATCH")
        assert status == 200

        clock.now += 3.5  # the window has rolled over
        status, _, headers = await _post(session, d, f"/channels/{general.id}/messages", {"content": "now"})
        assert status == 200 and headers["X-RateLimit-Remaining"] == "4"
    assert len(d.problems) == 1


async def test_the_global_limit_spares_interaction_routes(clock_discord: tuple[LocalDiscord, Clock]) -> None:
    d, clock = clock_discord
    guild = d.add_guild()
    text = guild.add_text_channel("general")
    headers = {"Authorization": f"Bot {d.token}"}
    async with aiohttp.ClientSession(connector=d.connector()) as session:
        statuses = []
        for _ in range(50):
            async with session.get(f"{d.api_base}/channels/{text.id}", headers=headers) as response:
                statuses.append(response.status)
        assert statuses == [200] * 50
        async with session.get(f"{d.api_base}/users/@me", headers=headers) as response:
            assert response.status == 429
            body = await response.json()
            assert body["global"] is True and 0 < body["retry_after"] <= 1.0
            assert response.headers["X-RateLimit-Global"] == "true"
            assert response.headers["X-RateLimit-Scope"] == "global"
            assert response.headers["Retry-After"] == "1"
        assert len(d.problems) == 1 and "global" in d.problems[0]
        # An unknown interaction token is still answered by the route, not refused by the global limit.
        async with session.post(f"{d.api_base}/webhooks/{d.application_id}/no-such-token",
                                json={"content": "x"}) as response:
            assert response.status == 404
        clock.now += 1.0
        async with session.get(f"{d.api_base}/users/@me", headers=headers) as response:
            assert response.status == 200


async def test_discord_py_waits_for_the_bucket_instead_of_being_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    async with LocalDiscord() as d:
        guild = d.add_guild()
        text = guild.add_text_channel("general")
        async with running_client(d, monkeypatch) as client:
            channel = client.get_channel(text.id)
            assert isinstance(channel, discord.TextChannel)
            sent = await asyncio.wait_for(asyncio.gather(*(channel.send(f"n{i}") for i in range(7))), TIMEOUT)
            assert len(sent) == 7
        creates = [e for e in d.events.of("rest") if e.data["route"] == "POST /channels/{channel_id}/messages"]
        assert len(creates) == 7
        # The sixth had to wait for the first window to end (a lower bound: slowness only adds).
        assert creates[5].at - creates[0].at >= 4.9
        assert d.events.of("rate_limited") == []
        assert d.problems == []
