"""Text chat: answers when mentioned, replied to, in DMs, or in channels enabled in settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import discord
from discord.ext import commands

from bot.agent import AgentError, Incoming
from bot.i18n.catalog import t
from bot.i18n.places import Choice
from bot.memory import Modality
from bot.recall.discord_rooms import visible_rooms
from bot.textchat import RateLimiter, StreamingWriter

if TYPE_CHECKING:
    from bot.client import VoiceBot

__all__ = ["ChatCog", "room_for", "should_answer", "clean_text"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def room_for(channel: discord.abc.Messageable, author: discord.abc.User) -> str:
    """The memory room of a text channel, thread or DM."""
    if isinstance(channel, discord.DMChannel) or getattr(channel, "guild", None) is None:
        return f"discord:dm:{author.id}"
    return f"discord:{channel.guild.id}:{channel.id}"  # type: ignore[union-attr]


def should_answer(message: discord.Message, me: discord.abc.User, enabled_channels: frozenset[int]) -> bool:
    """Whether a message is addressed to the bot."""
    if message.author.bot or message.author.id == me.id or message.webhook_id is not None:
        return False
    if message.type not in (discord.MessageType.default, discord.MessageType.reply):
        return False
    if message.guild is None:
        return True
    if any(user.id == me.id for user in message.mentions):
        return True
    ref = message.reference
    if ref is not None and isinstance(ref.resolved, discord.Message) and ref.resolved.author.id == me.id:
        return True
    channel_id = message.channel.id
    parent_id = getattr(message.channel, "parent_id", None)
    return channel_id in enabled_channels or (parent_id is not None and parent_id in enabled_channels)


def clean_text(message: discord.Message, me: discord.abc.User) -> str:
    """The message text with the bot's own mention removed and other mentions as names."""
    text = re.sub(rf"<@!?{me.id}>", "", message.content)
    for user in message.mentions:
        text = re.sub(rf"<@!?{user.id}>", f"@{user.display_name}", text)
    for role in message.role_mentions:
        text = text.replace(f"<@&{role.id}>", f"@{role.name}")
    for channel in message.channel_mentions:
        text = text.replace(f"<#{channel.id}>", f"#{channel.name}")
    text = re.sub(r"<a?:(\w+):\d+>", r":\1:", text)  # custom emoji
    return text.strip()


class ChatCog(commands.Cog, name="Chat"):
    """Talks with people in text channels and DMs."""

    def __init__(self, bot: VoiceBot) -> None:
        self.bot = bot
        self.agent = bot.services.agent
        self.enabled_channels = bot.settings.discord_chat_channels
        self.limiter = RateLimiter(limit=bot.settings.chat_rate_limit, window=60.0)
        # One REST call at a time per channel. discord.py tracks a bucket from the headers of each
        # answer, in the order its tasks read them; with several calls in flight it can read an
        # older "remaining" last and go over Discord's 5-per-5-seconds (a 429). In sequence its
        # count is exact, and one channel cannot use more than that rate anyway.
        self._channel_locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
        self._typing_in: set[int] = set()

    async def _in_turn(self, channel_id: int, call: Callable[[], Awaitable[T]]) -> T:
        lock = self._channel_locks.get(channel_id)
        if lock is None:
            lock = self._channel_locks[channel_id] = asyncio.Lock()
        async with lock:
            return await call()

    @contextlib.asynccontextmanager
    async def _typing(self, channel: discord.abc.Messageable, channel_id: int) -> AsyncIterator[None]:
        """The typing indicator, once per channel: replies written at the same time share it."""
        if channel_id in self._typing_in:
            yield
            return
        self._typing_in.add(channel_id)
        try:
            async with channel.typing():
                yield
        finally:
            self._typing_in.discard(channel_id)

    @commands.Cog.listener()
    async def on_command_error(self, ctx: commands.Context[VoiceBot], error: commands.CommandError) -> None:
        # The bot has no text commands, but its prefix is its mention, so discord.py reads every
        # "@bot hello" as the command "hello"; without a listener it logs each one as an ERROR
        # with a traceback. A mention is a chat message, answered by on_message.
        if isinstance(error, commands.CommandNotFound):
            return
        log.warning("text command failed: %s: %s", type(error).__name__, error)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        me = self.bot.user
        if me is None or not should_answer(message, me, self.enabled_channels):
            return
        allowed, wait = self.limiter.check(message.author.id)
        if not allowed:
            if self.limiter.should_warn(message.author.id):
                await self._send_safely(message, t("chat.slow_down", self._words_language(message),
                                                   seconds=f"{wait:.0f}"))
            log.info("rate limited a user", extra={"user_id": message.author.id})
            self.agent.turn_ignored(Modality.TEXT)
            return
        await self.answer(message, clean_text(message, me))

    async def answer(self, message: discord.Message, text: str) -> None:
        choice = self._language(message, text)
        if choice is not None and choice.notice:
            await self._send_safely(message, choice.notice)
        incoming = Incoming(
            room=room_for(message.channel, message.author),
            speaker_id=f"discord:{message.author.id}",
            speaker_name=message.author.display_name,
            text=text,
            modality=Modality.TEXT,
            language=choice.language if choice is not None else None,
            visible=visible_rooms(message.guild, message.author),
        )
        reply = self.agent.reply(incoming)

        channel_id = message.channel.id

        async def send(chunk: str) -> discord.Message:
            if not writer.messages:
                return await self._in_turn(channel_id, lambda: message.reply(chunk, mention_author=False))
            return await self._in_turn(channel_id, lambda: message.channel.send(chunk))

        async def edit(handle: object, chunk: str) -> None:
            assert isinstance(handle, discord.Message)
            await self._in_turn(channel_id, lambda: handle.edit(content=chunk))

        writer = StreamingWriter(send, edit, max_messages=self.bot.settings.discord_reply_max_messages,
                                 shortened_note=t("chat.shortened", incoming.language))
        try:
            async with self._typing(message.channel, channel_id):
                await writer.stream(reply)
                if writer.capped:
                    await reply.aclose()  # stop the engine generating what nobody will see
        except AgentError as exc:
            log.warning("reply failed: %s", exc, extra={"room": incoming.room, "user_id": message.author.id})
            note = exc.user_message
            if not note:
                return  # nothing to say: a daily limit already told them once (bot/usage)
            if writer.messages:
                await self._finish_safely(writer, f"\n\n*({note})*")
            else:
                await self._send_safely(message, note)
            return
        except discord.HTTPException as exc:
            log.warning("could not deliver a reply: %s %s", exc.status, exc.text,
                        extra={"room": incoming.room, "user_id": message.author.id})
            return
        if not writer.text.strip():
            log.warning("the agent produced an empty reply", extra={"room": incoming.room})
            await self._send_safely(message, t("chat.lost_for_words", incoming.language))
            return
        if writer.capped:
            log.info("reply shortened to %d message(s), %d characters", len(writer.messages), len(writer.delivered),
                     extra={"room": incoming.room, "user_id": message.author.id})
            reply.finish(writer.delivered, interrupted=True)  # remembered as cut short, as shown
            return
        reply.finish()

    def _words_language(self, message: discord.Message) -> str:
        """The language of the bot's own words in this channel (the server's, or the person's in a DM)."""
        languages = self.bot.services.languages
        if languages is None:
            return "en"
        if message.guild is None:
            return languages.fallback(f"discord:{message.author.id}")
        locale = str(message.guild.preferred_locale) if message.guild.preferred_locale else None
        return languages.fallback(f"guild:{message.guild.id}", locale)

    def _language(self, message: discord.Message, text: str) -> Choice | None:
        """The language to answer in: the server's setting (or auto); in a DM, the person's own."""
        languages = self.bot.services.languages
        if languages is None:
            return None
        guild = message.guild
        if guild is None:
            # A DM is one person's place, like an SMS thread: their language, remembered.
            return languages.choose(f"discord:{message.author.id}", text, learn=True)
        locale = str(guild.preferred_locale) if guild.preferred_locale else None
        return languages.choose(f"guild:{guild.id}", text, preferred_locale=locale)

    async def _finish_safely(self, writer: StreamingWriter, suffix: str) -> None:
        try:
            await writer.finish(suffix)
        except discord.HTTPException as exc:
            log.warning("could not deliver an error note: %s", exc.status)

    async def _send_safely(self, message: discord.Message, text: str) -> None:
        try:
            await self._in_turn(message.channel.id, lambda: message.reply(text, mention_author=False))
        except discord.HTTPException as exc:
            log.warning("could not reply in channel %s: %s %s", message.channel.id, exc.status, exc.text)


async def setup(bot: VoiceBot) -> None:
    await bot.add_cog(ChatCog(bot))
