"""Text replies are bounded, and stay inside Discord's rate limits: the real bot and chat cog against
the loopback Discord (which enforces Discord's limits) and a loopback OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest
import yarl

from bot.store import SqliteDatabase as Database
from bot.loopback.server import ChannelHandle, GuildHandle, LocalDiscord
from bot.loopback.state import Message
from bot.settings import load_settings
from bot.textchat import SHORTENED_NOTE
from tests.fakes.openai_server import FakeOpenAI

TIMEOUT = 60.0
TOKEN = "loopback.chatbot.0123456789abcdef"
# About 1 MB of reply, one sentence per streamed token.
MEGABYTE_REPLY = [f"Sentence number {i:05d} of a reply that goes on and on. " for i in range(19_000)]


@dataclass
class Bot:
    discord: LocalDiscord
    guild: GuildHandle
    text: ChannelHandle
    services: Any

    @property
    def room(self) -> str:
        return f"discord:{self.guild.id}:{self.text.id}"


@contextlib.asynccontextmanager
async def running_bot(d: LocalDiscord, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> AsyncIterator[Bot]:
    from bot.client import VoiceBot
    from bot.services import build_services

    guild = d.add_guild("Loopback")
    text = guild.add_text_channel("general")
    monkeypatch.setattr(discord.http.Route, "BASE", d.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(d.gateway_url + "/"))
    settings = load_settings({
        "DISCORD_TOKEN": d.token, "DISCORD_API_BASE": d.api_base, "DISCORD_CA_FILE": str(d.ca_file),
        "STT_ENGINE": "none", "TTS_ENGINE": "none", **env,
    }, env_file=None)
    services = await build_services(settings, db=Database.in_memory())
    bot = VoiceBot(services, extensions=("cogs.chat",))
    runner: asyncio.Task[None] | None = None
    try:
        await bot.login(d.token)
        assert not bot.failed_extensions, bot.failed_extensions
        runner = asyncio.get_running_loop().create_task(bot.connect(reconnect=True), name="test-chatbot")
        waiter = asyncio.get_running_loop().create_task(bot.wait_until_ready(), name="test-chatbot-ready")
        done, _ = await asyncio.wait({waiter, runner}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if runner in done:
                runner.result()
            raise TimeoutError("the bot never became ready")
        yield Bot(d, guild, text, services)
    finally:
        await bot.close()
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
        await services.agent.aclose()


def _openai_env(fake: FakeOpenAI) -> dict[str, str]:
    return {"AGENT_ENGINE": "openai", "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": fake.api_key,
            "OPENAI_MODEL": "gpt-test"}


async def _wait_for(predicate: Any, what: str, timeout: float = TIMEOUT) -> None:
    """Poll a predicate on world state (the loopback logs every message) with a generous deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = predicate()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _shortened(messages: list[Message]) -> bool:
    return bool(messages) and messages[-1].content.endswith(SHORTENED_NOTE)


async def test_a_megabyte_reply_is_capped_and_memory_holds_what_was_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeOpenAI(reply_tokens=MEGABYTE_REPLY) as fake, LocalDiscord(token=TOKEN) as d:
        async with running_bot(d, monkeypatch, _openai_env(fake)) as bot:
            alice = bot.guild.add_member("Alice")
            await alice.send_message(bot.text, f"<@{d.bot_user_id}> tell me everything")
            await _wait_for(lambda: _shortened(bot.text.bot_messages), "the shortened reply")
            async def stored() -> bool:
                return len(await bot.services.memory.recent(bot.room, 10)) == 2

            await _wait_for(stored, "the stored turn")
            shown = bot.text.bot_messages
            assert len(shown) == 4 and all(len(m.content) <= 2000 for m in shown)
            turn = (await bot.services.memory.recent(bot.room, 10))[-1]
            assert turn.role == "assistant" and turn.interrupted
            delivered = " ".join(m.content for m in shown).replace(SHORTENED_NOTE, "")
            assert turn.text.split() == delivered.split()
            assert turn.text.endswith("on and on.") and len(turn.text) < 8000
        assert d.problems == []


async def test_the_agent_stream_is_closed_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # The model sends more than the cap, then holds the stream open forever: the reply can only
    # finish if the bot stops reading at the cap.
    async with FakeOpenAI(reply_tokens=MEGABYTE_REPLY[:400], stall=True, stall_after=300) as fake, \
            LocalDiscord(token=TOKEN) as d:
        async with running_bot(d, monkeypatch, _openai_env(fake)) as bot:
            alice = bot.guild.add_member("Alice")
            await alice.send_message(bot.text, f"<@{d.bot_user_id}> go on")
            await _wait_for(lambda: _shortened(bot.text.bot_messages), "the shortened reply")
            async def stored() -> bool:
                return len(await bot.services.memory.recent(bot.room, 10)) == 2

            await _wait_for(stored, "the stored turn")
            assert (await bot.services.memory.recent(bot.room, 10))[-1].interrupted
        assert d.problems == []


async def test_a_flood_of_mentions_stays_inside_discords_rate_limits(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    async with LocalDiscord(token=TOKEN) as d:
        async with running_bot(d, monkeypatch, {"AGENT_ENGINE": "eliza", "CHAT_RATE_LIMIT": "2"}) as bot:
            people = [bot.guild.add_member(name) for name in ("Ann", "Ben", "Cy")]
            sent = []
            for round_ in range(4):
                for person in people:
                    sent.append(await person.send_message(bot.text, f"<@{d.bot_user_id}> hello number {round_}"))
            # Each person: two answers, then one "slow down" note, then silence.
            await _wait_for(lambda: len(bot.text.bot_messages) >= 9, "nine bot messages")
            # Every answer finished (its last edit done, its turn stored) before the bot is closed.
            await _wait_for(lambda: sum(t.role == "assistant" for t in bot.services.memory.held(bot.room)[-50:]) == 6,
                            "six stored answers")
            replies = bot.text.bot_messages
            assert len(replies) == 9
            answered = {m.reference_id for m in replies}
            assert len(answered) == 9 and answered <= {m.id for m in sent}
            notes = [m for m in replies if "faster than I can think" in m.content]
            assert len(notes) == 3
            creates = [e.at for e in d.events.of("rest") if e.data["route"] == "POST /channels/{channel_id}/messages"]
            # Nine messages in one channel cannot fit one five-second window: the bot waited.
            assert creates[5] - creates[0] >= 4.9
        assert d.events.of("rate_limited") == []
        assert d.problems == []
    # A mention is not a text command: no "CommandNotFound" traceback per message.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
