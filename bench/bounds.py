"""Benchmark: what one runaway reply and one flood of mentions cost, with the reply caps on.

Scenarios (all on 127.0.0.1; the real bot, discord.py, openai and twilio SDKs):

- ``discord_megabyte``: the real ``VoiceBot`` with the chat cog against the loopback Discord (which
  enforces Discord's rate limits), answering one mention with an OpenAI-compatible model that
  streams about 1 MB. Reports the messages posted, the longest one, the stored turn's length,
  whether the model's stream ran to its end (false: the bot hung up), the SSE chunks the server
  wrote before that (loopback socket buffers take megabytes, so this is far more than the bot
  read) and the seconds until the shortened reply was complete.
- ``sms_megabyte``: the same model answering one SMS through the real webhook (TwiML path).
- ``flood``: ``--people`` members each mentioning the bot ``--mentions`` times at once
  (``CHAT_RATE_LIMIT=2``). Reports replies, "slow down" notes, 429s the loopback answered,
  problems it recorded, and the most messages the bot created in any 5-second span.

Usage: python -m bench.bounds [--people 3] [--mentions 4]
Prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import discord.gateway
import discord.http
import yarl
from aiohttp.test_utils import TestClient, TestServer

from bot.store import SqliteDatabase as Database
from bot.loopback.server import LocalDiscord
from bot.services import Services, build_services
from bot.settings import load_settings
from bot.sms.inbound import SmsService, TwilioWebhooks
from bot.privacy import open_opt_outs
from bot.sms.store import open_sms_store
from bot.web import create_app
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.twilio_server import sign_webhook

__all__ = ["main", "run"]

TOKEN = "loopback.bench.0123456789abcdef"
MEGABYTE = [f"Sentence number {i:05d} of a reply that goes on and on. " for i in range(19_000)]
DEADLINE = 120.0


async def _until(predicate: Callable[[], Any], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        found = predicate()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            break
        if loop.time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _bot(d: LocalDiscord, env: dict[str, str]) -> AsyncIterator[Services]:
    from bot.client import VoiceBot

    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(d.gateway_url + "/")
    settings = load_settings({"DISCORD_TOKEN": d.token, "DISCORD_API_BASE": d.api_base,
                              "DISCORD_CA_FILE": str(d.ca_file), "STT_ENGINE": "none", "TTS_ENGINE": "none",
                              **env}, env_file=None)
    services = await build_services(settings, db=Database.in_memory())
    bot = VoiceBot(services, extensions=("cogs.chat",))
    runner: asyncio.Task[None] | None = None
    try:
        await bot.login(d.token)
        runner = asyncio.get_running_loop().create_task(bot.connect(reconnect=True), name="bench-bot")
        await asyncio.wait_for(bot.wait_until_ready(), DEADLINE)
        yield services
    finally:
        await bot.close()
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
        await services.agent.aclose()
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


def _openai_env(fake: FakeOpenAI) -> dict[str, str]:
    return {"AGENT_ENGINE": "openai", "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": fake.api_key,
            "OPENAI_MODEL": "gpt-test"}


async def discord_megabyte() -> dict[str, Any]:
    async with FakeOpenAI(reply_tokens=MEGABYTE) as fake, LocalDiscord(token=TOKEN) as d:
        guild = d.add_guild()
        text = guild.add_text_channel("general")
        async with _bot(d, _openai_env(fake)) as services:
            room = f"discord:{guild.id}:{text.id}"
            started = time.monotonic()
            await guild.add_member("Alice").send_message(text, f"<@{d.bot_user_id}> tell me everything")
            await _until(lambda: len(services.memory.recent(room, 5)) == 2, "the stored turn")
            seconds = time.monotonic() - started
            stored = services.memory.recent(room, 5)[-1]
            return {
                "reply_bytes_offered": sum(len(t) for t in MEGABYTE),
                "messages": len(text.bot_messages),
                "longest_message": max(len(m.content) for m in text.bot_messages),
                "stored_chars": len(stored.text),
                "stored_interrupted": stored.interrupted,
                "sse_chunks_written_of": [fake.chunks_sent, len(MEGABYTE)],
                "model_stream_completed": fake.finished,
                "seconds": round(seconds, 2),
                "rate_limited": len(d.events.of("rate_limited")),
                "problems": len(d.problems),
            }


async def sms_megabyte() -> dict[str, Any]:
    auth, number, public = "bench-auth-token", "+15557654321", "https://bot.example.com"
    async with FakeOpenAI(reply_tokens=MEGABYTE) as fake:
        settings = load_settings(_openai_env(fake), env_file=None)
        services = await build_services(settings, db=Database.in_memory())
        assert services.store is not None
        store = await open_sms_store(services.store, opt_outs=await open_opt_outs(services.store))
        service = SmsService(agent=services.agent, memory=services.memory, store=store, sender=None,
                             rate_limit=10, max_segments=settings.sms_reply_max_segments)
        app = create_app(webhooks=TwilioWebhooks(service, auth_token=auth, public_url=public))
        form = {"MessageSid": "SM" + "e" * 32, "AccountSid": "AC" + "7" * 32, "From": number, "To": "+15550009999",
                "Body": "tell me everything", "NumMedia": "0"}
        started = time.monotonic()
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/twilio/sms", data=form, headers={
                "X-Twilio-Signature": sign_webhook(auth, public + "/twilio/sms", form)})
            xml = await resp.text()
        seconds = time.monotonic() - started
        await service.aclose()
        segments = re.findall(r"<Message>(.*?)</Message>", xml, re.DOTALL)
        stored = (await services.memory.recent(f"sms:{number}", 5))[-1]
        await services.agent.aclose()
        return {"segments": len(segments), "longest_segment": max(len(s) for s in segments),
                "stored_chars": len(stored.text), "stored_interrupted": stored.interrupted,
                "seconds": round(seconds, 2)}


async def flood(people: int, mentions: int) -> dict[str, Any]:
    async with LocalDiscord(token=TOKEN) as d:
        guild = d.add_guild()
        text = guild.add_text_channel("general")
        async with _bot(d, {"AGENT_ENGINE": "eliza", "CHAT_RATE_LIMIT": "2"}) as services:
            room = f"discord:{guild.id}:{text.id}"
            members = [guild.add_member(f"Person{i}") for i in range(people)]
            started = time.monotonic()
            for round_ in range(mentions):
                for member in members:
                    await member.send_message(text, f"<@{d.bot_user_id}> hello {round_}")
            answers = people * min(mentions, 2)
            async def answered() -> bool:
                return sum(t.role == "assistant" for t in await services.memory.recent(room, 500)) == answers

            await _until(answered,
                         "every answer")
            await _until(lambda: len(text.bot_messages) >= answers + people * (mentions > 2), "the notes")
            seconds = time.monotonic() - started
        creates = sorted(e.at for e in d.events.of("rest") if e.data["route"] == "POST /channels/{channel_id}/messages")
        busiest = max((sum(1 for t in creates if s <= t < s + 5.0) for s in creates), default=0)
        return {
            "mentions": people * mentions,
            "replies": sum("faster than I can think" not in m.content for m in text.bot_messages),
            "slow_down_notes": sum("faster than I can think" in m.content for m in text.bot_messages),
            "most_messages_in_5s": busiest,
            "rate_limited": len(d.events.of("rate_limited")),
            "problems": len(d.problems),
            "seconds": round(seconds, 2),
        }


async def run(people: int, mentions: int) -> dict[str, Any]:
    return {
        "discord_megabyte": await discord_megabyte(),
        "sms_megabyte": await sms_megabyte(),
        "flood": await flood(people, mentions),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=3)
    parser.add_argument("--mentions", type=int, default=4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    print(json.dumps(asyncio.run(run(args.people, args.mentions))))


if __name__ == "__main__":
    main()
