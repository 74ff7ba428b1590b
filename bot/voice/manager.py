"""The Discord side of voice: one connection and one :class:`VoiceSession` per guild.

:class:`VoiceManager` joins, moves and leaves voice channels, wires a connection's receive path
(``ReceiveVoiceClient`` → decode pipeline → session) and its playback path (session → AudioOut
adapter → playback queue), tells people that the bot is listening (a notice in the channel's chat
and the voice channel status), and follows what Discord does to the bot: being moved, kicked, muted,
or left alone. Every join, move and leave of one guild runs under that guild's lock, so ``/join``
racing ``/leave`` (or a kick arriving mid-join) always ends in one consistent state.

Voice drops are reconnected by discord.py itself (``reconnect=True``: it resumes or re-handshakes
the voice websocket on 4006/4015 and server changes); while it does, the connection reports
``reconnecting`` and commands that need the connection say so instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

import discord

from audio.decode import ReceivePipeline
from audio.receive import ReceiveVoiceClient, VoicePacket
from audio.watchdog import DeafWatchdog, WatchdogAction
from audio.tts.base import AudioFormat, TTSEngine, VoiceInfo, VoiceSpec
from bot.i18n.bidi import isolate
from bot.i18n.catalog import MESSAGES, t
from bot.i18n.engine_texts import translate_engine_text
from bot.i18n.places import Choice, LanguageStore, PlaceLanguages
from bot.providers import voice_for
from bot.recall.discord_rooms import visible_rooms
from bot.voice.consent import (
    ConnectionStatus,
    Providers,
    channel_status,
    consent_notice,
    providers_from_settings,
)
from audio.native import NativeLibraryError, load_libopus
from bot.voice.endpointing import TurnDetection
from bot.voice.guilds import ALLOWED, AUTO_JOIN, GuildSettingsStore, GuildVoiceSettings, OptOutList
from bot.voice.scribe import call_transcript, render_transcript, summarize
from bot.voice.session import AudioOut, PlayResult, VoiceSession
from bot.voice.turns import TurnPolicy, VoiceMode

if TYPE_CHECKING:
    from audio.stt.base import STTEngine
    from bot.agent import Agent
    from bot.cluster.rejoin import VoicePresence
    from bot.memory import Memory
    from bot.services import Services
    from bot.settings import Settings

__all__ = [
    "VoiceManager",
    "VoiceCommandError",
    "JoinOutcome",
    "GuardedOut",
    "SpeechFeed",
    "join_problem",
    "humans_in",
    "LISTEN_BUTTON_ID",
]

log = logging.getLogger(__name__)

LISTEN_BUTTON_ID = "voicebot:listen"  # persistent custom_id of the push-to-talk button
LISTEN_WINDOW_SECONDS = 30.0


class VoiceCommandError(Exception):
    """A voice request that cannot be done, as a catalog key and its values (``bot.i18n``).

    ``in_language(code)`` is the friendly message for the person asking; ``str(exc)`` is the English
    one, for logs. A text that is not a catalog key is kept as it is (already in someone's language).
    """

    def __init__(self, key: str, /, **values: object) -> None:
        self.key = key
        self.values = values
        super().__init__(t(key, "en", **values) if key in MESSAGES else key)

    def in_language(self, language: str) -> str:
        return t(self.key, language, **self.values) if self.key in MESSAGES else str(self)


class JoinOutcome(enum.StrEnum):
    JOINED = "joined"
    MOVED = "moved"
    ALREADY = "already"


# ---------------------------------------------------------------------------------------------
# Pure checks


def humans_in(channel: discord.abc.GuildChannel | None) -> list[discord.Member]:
    """The people (not bots) in a voice or stage channel, from the guild's voice states."""
    if channel is None:
        return []
    return [m for m in getattr(channel, "members", ()) if not m.bot]


def join_refusal(channel: discord.VoiceChannel | discord.StageChannel, me: discord.Member) -> VoiceCommandError | None:
    """Why the bot cannot join ``channel`` (an error to raise or show), or None."""
    perms = channel.permissions_for(me)
    if not perms.view_channel or not perms.connect:
        return VoiceCommandError("voice.no_connect_permission", channel=channel.mention)
    if isinstance(channel, discord.VoiceChannel) and not perms.speak:
        return VoiceCommandError("voice.no_speak_permission", channel=channel.mention)
    already_there = me.voice is not None and me.voice.channel is not None and me.voice.channel.id == channel.id
    limit = channel.user_limit
    # Move Members lets a member (or bot) join a full channel, as in the Discord client.
    if limit and not already_there and len(channel.members) >= limit and not perms.move_members:
        return VoiceCommandError("voice.channel_full", channel=channel.mention, limit=limit)
    return None


def join_problem(channel: discord.VoiceChannel | discord.StageChannel, me: discord.Member,
                 language: str = "en") -> str | None:
    """Why the bot cannot join ``channel`` (a message for the person asking, in ``language``), or None."""
    refusal = join_refusal(channel, me)
    return refusal.in_language(language) if refusal is not None else None


def can_speak_in(channel: discord.abc.GuildChannel | None, me: discord.Member) -> bool:
    """Whether the bot may talk now: not server-muted, a speaker on a stage, allowed to Speak."""
    voice = me.voice
    if channel is None or voice is None:
        return False
    if voice.mute:  # server mute: talking anyway would be ignored and is rude
        return False
    if isinstance(channel, discord.StageChannel) and voice.suppress:
        return False  # on a stage the bot is audience until made a speaker
    return channel.permissions_for(me).speak


# ---------------------------------------------------------------------------------------------
# Adapters between Discord, the decode pipeline, playback and the session


class PipelineSink(Protocol):
    """What the decode pipeline offers (audio.decode.ReceivePipeline): a receive sink with a timer."""

    def on_packet(self, packet: VoicePacket) -> None: ...

    def on_speaker_left(self, user_id: int) -> None: ...

    async def run(self, interval: float = 0.05) -> None: ...

    def close(self) -> None: ...


class ClosableAudioOut(AudioOut, Protocol):
    async def aclose(self) -> None: ...


PipelineFactory = Callable[["SpeechFeed", int], PipelineSink]  # (consumer, sample_rate) -> sink
OutFactory = Callable[[discord.VoiceClient], ClosableAudioOut]


class SpeechFeed:
    """The decode pipeline's consumer: forwards per-speaker speech events to the guild's session.

    Checks the opt-out list again: the receive filter already dropped opted-out people, and this
    catches frames decoded in the instant between an opt-out and the filter seeing it.
    """

    def __init__(self, session: VoiceSession, optouts: OptOutList) -> None:
        self.session = session
        self._optouts = optouts

    def on_speech_start(self, user_id: int) -> None:
        if self._optouts.accepts(user_id):
            self.session.on_speech_start(user_id)

    def on_audio(self, user_id: int, pcm: bytes) -> None:
        if self._optouts.accepts(user_id):
            self.session.on_audio(user_id, pcm)

    def on_speech_end(self, user_id: int) -> None:
        if self._optouts.accepts(user_id):
            self.session.on_speech_end(user_id)


class GuardedOut:
    """An :class:`AudioOut` that only talks when the bot may: otherwise the words go to the text chat.

    Server-muted, or audience on a stage: playing would be wrong (and inaudible), so the sentence is
    posted instead and reported as played, since the people did get it.
    """

    def __init__(self, inner: ClosableAudioOut, *, can_speak: Callable[[], bool],
                 post_text: Callable[[str], Awaitable[None]]) -> None:
        self.inner = inner
        self._can_speak = can_speak
        self._post_text = post_text
        self.muted_sentences = 0

    async def play(self, text: str, chunks: AsyncIterator[bytes], fmt: AudioFormat) -> PlayResult:
        if not self._can_speak():
            self.muted_sentences += 1
            await self._post_text(f"🔇 {text}")
            return PlayResult(played_seconds=0.0, total_seconds=0.0, interrupted=False, first_frame_at=None)
        return await self.inner.play(text, chunks, fmt)

    def stop(self) -> None:
        self.inner.stop()

    async def aclose(self) -> None:
        await self.inner.aclose()


# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class GuildVoice:
    """Everything the bot holds for one guild's voice connection."""

    guild_id: int
    channel: discord.VoiceChannel | discord.StageChannel
    vc: ReceiveVoiceClient
    session: VoiceSession
    sink: PipelineSink
    out: GuardedOut
    joined_at: float = field(default_factory=time.monotonic)
    joined_wall: float = field(default_factory=time.time)  # epoch seconds, for the call's transcript
    notice: discord.Message | None = None
    status_set: bool = False
    idle_task: asyncio.Task[None] | None = None
    pump_task: asyncio.Task[None] | None = None
    watch_task: asyncio.Task[None] | None = None
    watchdog: DeafWatchdog = field(default_factory=DeafWatchdog)
    company: asyncio.Event = field(default_factory=asyncio.Event)  # set while a human is present
    leaving: bool = False
    bots: set[int] = field(default_factory=set)  # other bots in the channel (ignored unless the guild includes them)
    notes_pending: bool = False  # a scribe's notes will be posted after leaving: they are the session's summary

    @property
    def room(self) -> str:
        return f"discord:{self.guild_id}:{self.channel.id}"


class ListenView(discord.ui.View):
    """The push-to-talk button on the consent notice: opens a listening window for whoever presses it."""

    def __init__(self, manager: VoiceManager, bot_name: str, language: str = "en") -> None:
        super().__init__(timeout=None)
        self.manager = manager
        # The label is in the server's language when posted; the custom_id (what Discord sends back) never changes.
        button: discord.ui.Button[ListenView] = discord.ui.Button(
            label=t("listen.button", language, bot=bot_name)[:80], emoji="🎙️", style=discord.ButtonStyle.primary,
            custom_id=LISTEN_BUTTON_ID,
        )
        button.callback = self._pressed  # type: ignore[method-assign]
        self.add_item(button)

    async def _pressed(self, interaction: discord.Interaction) -> None:
        from bot.i18n.words import interaction_language

        language = interaction_language(interaction, self.manager.languages)
        try:
            text = self.manager.listen(interaction.guild, interaction.user, language=language)
        except VoiceCommandError as exc:
            text = exc.in_language(language)
        await interaction.response.send_message(text, ephemeral=True)


class VoiceManager:
    """One voice connection and conversation per guild. Create one per bot; close it with :meth:`aclose`."""

    def __init__(
        self,
        *,
        settings: Settings,
        agent: Agent,
        memory: Memory,
        guild_settings: GuildSettingsStore,
        optouts: OptOutList,
        stt: STTEngine | None,
        tts: TTSEngine | None,
        local_tts: TTSEngine | None = None,
        pipeline_factory: PipelineFactory | None = None,
        out_factory: OutFactory | None = None,
        owned: tuple[Any, ...] = (),
        connect_timeout: float = 30.0,
        languages: PlaceLanguages | None = None,
        usage: Any = None,
        usage_local_stt: STTEngine | None = None,
    ) -> None:
        self.settings = settings
        self.usage = usage  # bot.usage.UsageMeter: paid requests reserved first (None: not metered)
        self.usage_local_stt = usage_local_stt  # who is over the speech limit is heard by this one
        self.agent = agent
        self.memory = memory
        # Told when a voice session ends: (room, joined at, left at, the scribe's posted summary or None),
        # epoch seconds. Long-term memory writes the session's dated summary from it, in the background.
        self.session_listeners: list[Callable[..., None]] = []
        self.guild_settings = guild_settings
        self.optouts = optouts
        # The language per guild (bot.i18n); tests that build a manager by hand get one on its database.
        self.languages = languages or PlaceLanguages(LanguageStore(guild_settings._db), settings.language)
        self.stt = stt
        self.tts = tts or local_tts
        self.silent = self.tts is None  # TTS_ENGINE=none: replies go to the voice channel's chat
        self.local_tts = local_tts
        self.turn_detection = TurnDetection(
            mode=settings.turn_detection, pause_ms=settings.turn_pause_ms, finished_ms=settings.turn_end_ms,
            unfinished_ms=settings.turn_hold_ms)
        self._pipeline_factory = pipeline_factory or _default_pipeline(self.turn_detection.gap_ms)
        self._out_factory = out_factory or _default_out_factory(settings)
        self._owned = owned  # engines this manager built and must close
        self._connect_timeout = connect_timeout
        self._guilds: dict[int, GuildVoice] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._voices_cache: tuple[float, list[VoiceInfo]] | None = None
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()  # rejoins started by the watchdog
        self.providers: Providers = providers_from_settings(settings, agent.engine_name)
        self.left = asyncio.Condition()  # notified after every teardown (tests and simulate wait on it)
        # Where each guild's voice is, for a restarted process to rejoin (bot/cluster/rejoin.py): set
        # by the bot when it runs in a cluster. Kept when the process stops, dropped on a real leave.
        self.voice_log: VoicePresence | None = None

    @classmethod
    def from_services(cls, services: Services) -> VoiceManager:
        """Build from the composition root's services, with the speech engines the settings choose."""
        from bot.providers import build_local_tts, build_stt, build_tts

        settings = services.settings
        owned: list[Any] = []
        stt = build_stt(settings, keyterms=(services.agent.character.name,))
        tts = build_tts(settings)
        owned += [engine for engine in (stt, tts) if engine is not None]
        local: TTSEngine | None = None
        if settings.tts_engine != "none":
            if tts is not None and tts.name in ("espeak", "piper"):
                local = tts  # the main voice is already the local one
            else:
                local = build_local_tts(settings)
                owned.append(local)
        from bot.usage.wiring import local_fallback_stt

        usage_local = local_fallback_stt(settings, stt)
        if usage_local is not None:
            owned.append(usage_local)
        return cls(settings=settings, agent=services.agent, memory=services.memory,
                   guild_settings=services.guilds, optouts=services.optouts,
                   stt=stt, tts=tts, local_tts=local, owned=tuple(owned), languages=services.languages,
                   usage=services.usage, usage_local_stt=usage_local)

    # ------------------------------------------------------------------ queries

    def connection(self, guild_id: int) -> GuildVoice | None:
        return self._guilds.get(guild_id)

    def connections(self) -> list[GuildVoice]:
        """Every guild's voice connection now (the console and /metrics read them)."""
        return list(self._guilds.values())

    def session(self, guild_id: int) -> VoiceSession | None:
        gv = self._guilds.get(guild_id)
        return gv.session if gv is not None else None

    def busy(self, guild_id: int) -> bool:
        """A join, move or leave is in progress for this guild."""
        lock = self._locks.get(guild_id)
        return lock is not None and lock.locked()

    def reconnecting(self, guild_id: int) -> bool:
        gv = self._guilds.get(guild_id)
        return gv is not None and not gv.vc.is_connected()

    def status(self, guild_id: int) -> ConnectionStatus | None:
        """What ``/status`` shows about this guild's voice connection; None when not in voice."""
        gv = self._guilds.get(guild_id)
        if gv is None:
            return None
        vc = gv.vc
        conn = vc._connection  # discord.py keeps DAVE state on the connection state object
        dave_session = getattr(conn, "dave_session", None)
        stats = vc.stats
        latency = vc.latency
        me = gv.channel.guild.me
        humans = humans_in(gv.channel)
        gs = self.guild_settings.get(guild_id)
        timing = gv.session.last_timing
        return ConnectionStatus(
            channel_name=gv.channel.name,
            connected=vc.is_connected(),
            reconnecting=not vc.is_connected(),
            latency_ms=None if latency == float("inf") else latency * 1000,
            dave_version=int(getattr(conn, "dave_protocol_version", 0) or 0),
            dave_ready=bool(dave_session.ready) if dave_session is not None else False,
            received=stats.audio_packets,
            decrypted=stats.delivered,
            dropped=dict(stats.dropped),
            lost=stats.lost,
            rejected=stats.rejected,
            hearing=gv.watchdog.snapshot(),
            bots_ignored=len(vc.ignore_users),
            mode=gv.session.policy.mode,
            voice=gs.voice_id,
            listeners=len(humans),
            opted_out_present=sum(1 for m in humans if self.optouts.is_opted_out(m.id)),
            server_muted=bool(me.voice and me.voice.mute),
            can_speak=can_speak_in(gv.channel, me),
            breakdown=timing.breakdown_ms() if timing is not None else None,
            rule=gv.session.policy.rule_now(len(humans)),
            ignored={"echo": gv.session.echo.dropped, **gv.session.invented.dropped},
        )

    # ------------------------------------------------------------------ join / move / leave

    def _lock(self, guild_id: int) -> asyncio.Lock:
        lock = self._locks.get(guild_id)
        if lock is None:
            lock = self._locks[guild_id] = asyncio.Lock()
        return lock

    async def join(self, channel: discord.VoiceChannel | discord.StageChannel) -> JoinOutcome:
        """Join ``channel``, or move there from another channel of the same guild.

        Raises :class:`VoiceCommandError` with a friendly reason when it cannot.
        """
        if self._closed:
            raise VoiceCommandError("voice.shutting_down")
        guild = channel.guild
        async with self._lock(guild.id):
            if not self.guild_settings.may_join(guild.id, channel.id):
                allowed = self.guild_settings.channels(guild.id, ALLOWED) | self.guild_settings.channels(guild.id, AUTO_JOIN)
                names = ", ".join(f"<#{cid}>" for cid in sorted(allowed))
                raise VoiceCommandError("voice.join_restricted", channels=names)
            refusal = join_refusal(channel, guild.me)
            if refusal is not None:
                raise refusal
            gv = self._guilds.get(guild.id)
            if gv is not None and gv.channel.id == channel.id:
                return JoinOutcome.ALREADY
            if gv is not None:
                await self._move(gv, channel)
                return JoinOutcome.MOVED
            await self._connect(channel)
            return JoinOutcome.JOINED

    async def leave(self, guild_id: int, *, reason: str = "asked to leave", notes: bool = False) -> bool:
        """Leave the guild's voice channel and release everything. Returns False if not in voice.

        With ``notes`` (``/leave``, or leaving an empty channel) a note-taking bot then posts the
        call's transcript and summary in the channel's chat.
        """
        async with self._lock(guild_id):
            gv = self._guilds.get(guild_id)
            scribe = notes and gv is not None and gv.session.policy.mode == VoiceMode.SCRIBE
            if scribe and gv is not None:
                gv.notes_pending = True  # the session's summary is the notes posted below
            left = await self._leave_locked(guild_id, reason=reason)
        if left and scribe and gv is not None:
            summary = await self._post_notes(gv)
            self._session_ended(gv, summary)
        return left

    def _session_ended(self, gv: GuildVoice, summary: str | None = None) -> None:
        for listener in list(self.session_listeners):
            try:
                listener(gv.room, gv.joined_wall, time.time(), notes=summary)
            except Exception:
                log.exception("session listener failed", extra={"guild_id": gv.guild_id})

    # ------------------------------------------------------------------ notes (scribe)

    async def transcript(self, guild_id: int, *, language: str = "en") -> tuple[bytes, str, bool]:
        """The current call's transcript as a file: (bytes, file name, whether its start was cut)."""
        gv = self._guilds.get(guild_id)
        if gv is None:
            raise VoiceCommandError("transcript.no_call")
        return await self._transcript_of(gv, language)

    async def _transcript_of(self, gv: GuildVoice, language: str) -> tuple[bytes, str, bool]:
        turns = await call_transcript(self.memory, gv.room, gv.joined_wall)
        started = datetime.fromtimestamp(gv.joined_wall, tz=timezone.utc)
        title = t("transcript.title", language, channel=gv.channel.name, start=f"{started:%Y-%m-%d %H:%M}")
        data, cut = render_transcript(turns, title=title, limit_bytes=gv.channel.guild.filesize_limit,
                                      language=language)
        return data, f"transcript-{started:%Y%m%d-%H%M}.txt", cut

    async def _post_notes(self, gv: GuildVoice) -> str | None:
        """After a note-taking call: the transcript as a file and, from a language model, a summary
        (returned, so long-term memory keeps the same one)."""
        turns = await call_transcript(self.memory, gv.room, gv.joined_wall)
        language = self.guild_language(gv.channel.guild)
        if not turns:
            await self._post(gv, t("notes.nothing_said", language))
            return None
        data, name, cut = await self._transcript_of(gv, language)
        summary = await summarize(self.agent, gv.room, turns, language)
        text = t("notes.title", language, channel=isolate(discord.utils.escape_markdown(gv.channel.name)))
        if summary:
            text += "\n" + summary
        if cut:
            text += "\n" + t("notes.cut", language)
        try:
            await gv.channel.send(text[:2000], file=discord.File(io.BytesIO(data), filename=name),
                                  allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as exc:
            log.info("could not post the call's notes: %s", exc.status, extra={"guild_id": gv.guild_id})
        return summary

    async def _leave_locked(self, guild_id: int, *, reason: str, already_disconnected: bool = False) -> bool:
        gv = self._guilds.pop(guild_id, None)
        if gv is None:
            return False
        log.info("leaving voice: %s", reason, extra={"guild_id": guild_id, "channel_id": gv.channel.id})
        await self._teardown(gv, disconnect=not already_disconnected)
        if not gv.notes_pending:
            self._session_ended(gv)
        if not self._closed:  # stopping the process keeps the record: the next start rejoins
            await self._forget_channel(guild_id)
        return True

    async def _remember(self, gv: GuildVoice) -> None:
        if self.voice_log is None:
            return
        from bot.cluster.rejoin import state_of

        try:
            mode, language = state_of(self, gv.guild_id)
            await self.voice_log.joined(gv.guild_id, gv.channel.id, mode, language)
        except Exception as exc:  # the database is away: the call goes on, only a restart would not rejoin it
            log.warning("could not record the voice channel to rejoin after a restart: %s", exc,
                        extra={"guild_id": gv.guild_id})

    async def _forget_channel(self, guild_id: int) -> None:
        if self.voice_log is None:
            return
        try:
            await self.voice_log.left(guild_id)
        except Exception as exc:
            log.warning("could not drop the voice channel to rejoin: %s", exc, extra={"guild_id": guild_id})

    async def _connect(self, channel: discord.VoiceChannel | discord.StageChannel, *, announce: bool = True) -> None:
        guild = channel.guild
        stray = guild.voice_client
        if stray is not None:  # a connection we don't track (e.g. a failed earlier attempt): start clean
            with contextlib.suppress(Exception):
                await stray.disconnect(force=True)
        try:
            load_libopus(self.settings.opus_library)  # bundled with PyAV; nothing else loads it
        except NativeLibraryError as exc:
            log.error("cannot join voice: %s", exc)
            raise VoiceCommandError("voice.no_codec") from None
        try:
            vc = await channel.connect(cls=ReceiveVoiceClient, self_deaf=False, timeout=self._connect_timeout,
                                       reconnect=True)
        except asyncio.TimeoutError:
            raise VoiceCommandError("voice.connect_timeout", channel=channel.mention) from None
        except discord.ClientException as exc:
            log.warning("could not join voice: %s", exc, extra={"guild_id": guild.id, "channel_id": channel.id})
            raise VoiceCommandError("voice.connect_failed", channel=channel.mention) from None
        except Exception:
            if guild.voice_client is not None:
                with contextlib.suppress(Exception):
                    await guild.voice_client.disconnect(force=True)
            raise
        try:
            gv = self._wire(vc, channel)
        except BaseException:
            await vc.disconnect(force=True)
            raise
        self._guilds[guild.id] = gv
        log.info("joined voice", extra={"guild_id": guild.id, "channel_id": channel.id})
        await self._remember(gv)
        await self._after_arrival(gv, announce=announce)

    def _wire(self, vc: ReceiveVoiceClient, channel: discord.VoiceChannel | discord.StageChannel) -> GuildVoice:
        guild = channel.guild
        gs = self.guild_settings.get(guild.id)
        # The receive filter: opted-out people are dropped before their audio is even decrypted,
        # and so are other bots (a music bot is not someone to answer) unless the guild includes them.
        vc.accept_user = self.optouts.accepts
        me = guild.me.id if guild.me is not None else None
        bots = {m.id for m in channel.members if m.bot and m.id != me}
        vc.ignore_users = frozenset() if gs.include_bots else frozenset(bots)
        inner = self._out_factory(vc)
        holder: dict[str, GuildVoice] = {}

        def allowed_to_speak() -> bool:
            gv = holder.get("gv")
            if self.silent:
                return False
            return gv is not None and vc.is_connected() and can_speak_in(gv.channel, guild.me)

        async def post(text: str) -> None:
            gv = holder.get("gv")
            if gv is not None:
                await self._post(gv, text)

        out = GuardedOut(inner, can_speak=allowed_to_speak, post_text=post)
        session = self._new_session(guild, channel, gs, out, holder)
        sink = self._pipeline_factory(SpeechFeed(session, self.optouts), self.settings.stt_sample_rate)
        vc.set_sink(sink)
        gv = GuildVoice(guild_id=guild.id, channel=channel, vc=vc, session=session, sink=sink, out=out, bots=bots)
        holder["gv"] = gv
        self._start_tasks(gv)
        return gv

    def _start_tasks(self, gv: GuildVoice) -> None:
        loop = asyncio.get_running_loop()
        # Discord sends nothing while someone is quiet: end of speech is found by the pipeline's timer.
        # Every 20 ms (one frame): the pause that starts end-of-turn detection is only ~100 ms.
        gv.pump_task = loop.create_task(gv.sink.run(0.02), name=f"voice-pipeline-{gv.guild_id}")
        gv.watch_task = loop.create_task(self._watch_receive(gv), name=f"voice-watchdog-{gv.guild_id}")

    async def _stop_tasks(self, gv: GuildVoice) -> None:
        current = asyncio.current_task()
        tasks = [t for t in (gv.pump_task, gv.watch_task) if t is not None and t is not current]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        gv.pump_task = gv.watch_task = None

    def _new_session(self, guild: discord.Guild, channel: discord.abc.GuildChannel, gs: GuildVoiceSettings,
                     out: AudioOut, holder: dict[str, GuildVoice]) -> VoiceSession:
        character = self.agent.character
        me = guild.me
        names = tuple(dict.fromkeys(n for n in (character.name, me.display_name if me else None) if n))
        policy = TurnPolicy(bot_names=names, mode=gs.mode, wake_phrases=self.settings.wake_phrases)

        async def notify(text: str) -> None:
            gv = holder.get("gv")
            if gv is not None:
                # A speech engine's failure is English at its source: said in the server's language.
                await self._post(gv, translate_engine_text(text, self.guild_language(guild)))

        async def mirror(name: str, text: str) -> None:
            gv = holder.get("gv")
            if gv is not None and self.guild_settings.get(gv.guild_id).mirror_transcripts:
                # Right-to-left names and words keep their own direction inside the line (bot.i18n.bidi).
                await self._post(gv, f"**{isolate(discord.utils.escape_markdown(name))}:** {isolate(text)}")

        def humans_present() -> int:
            gv = holder.get("gv")
            return len(humans_in(gv.channel)) if gv is not None else 0

        def visible(user_id: int) -> frozenset[str] | None:
            return visible_rooms(guild, guild.get_member(user_id))

        session = VoiceSession(
            room=f"discord:{guild.id}:{channel.id}",
            visible=visible,
            agent=self.agent,
            memory=self.memory,
            stt=self.stt,
            tts=self.tts if self.tts is not None else _SilentTTS(),
            out=out,
            policy=policy,
            voice=self._voice(gs.voice_id),
            fallback_tts=self.local_tts,
            sample_rate=self.settings.stt_sample_rate,
            name_of=lambda uid: _name_of(guild, uid),
            humans_present=humans_present,
            notify=notify,
            mirror=mirror,
            max_reply_seconds=self.settings.voice_reply_max_seconds,
            turn_detection=self.turn_detection,
            speculate=self.settings.speculative_reply,
            choose_language=self._language_chooser(guild),
            stream_options=self._stream_options(guild),
        )
        if self.usage is not None:
            from bot.usage import Who
            from bot.usage.wiring import guard_session

            async def post(text: str) -> None:
                gv = holder.get("gv")
                if gv is not None:
                    await self._post(gv, text)

            guard_session(session, self.usage, who_of=lambda speaker: Who(f"discord:{speaker}", guild.id),
                          guild=guild.id, post=post, language=lambda: self.guild_language(guild),
                          local_stt=self.usage_local_stt)
        return session

    def language_summary(self, guild: discord.Guild | None, *, words: str = "en") -> str | None:
        """One line for /status: the server's language mode (``/language`` changes it), said in ``words``.

        Language names are English in English and each language's own name otherwise ("Deutsch").
        """
        if guild is None:
            return None
        from bot.i18n.languages import AUTO, language_name

        native = words != "en"
        locale = str(guild.preferred_locale) if guild.preferred_locale else None
        mode = self.languages.mode(f"guild:{guild.id}", locale)
        if mode == AUTO:
            fallback = language_name(self.languages.fallback(f"guild:{guild.id}", locale), native=native)
            return t("status.language_auto", words, language=fallback)
        return language_name(mode, native=native)

    def guild_language(self, guild: discord.Guild) -> str:
        """The language of the bot's posts in ``guild``'s channels (the rule is in ``bot.i18n.words``)."""
        from bot.i18n.words import guild_words_language

        locale = str(guild.preferred_locale) if guild.preferred_locale else None
        return guild_words_language(self.languages, guild.id, locale)

    def _language_chooser(self, guild: discord.Guild) -> Callable[[str, str | None], Choice]:
        place, locale = f"guild:{guild.id}", str(guild.preferred_locale) if guild.preferred_locale else None

        def choose(text: str, heard: str | None) -> Choice:
            return self.languages.choose(place, text, heard=heard, preferred_locale=locale)

        return choose

    def _stream_options(self, guild: discord.Guild) -> dict[str, str]:
        """Deepgram's language for this guild when it differs from the engine's (a guild's own choice)."""
        if self.stt is None or self.stt.name != "deepgram":
            return {}
        from bot.providers import deepgram_language

        locale = str(guild.preferred_locale) if guild.preferred_locale else None
        wanted = deepgram_language(self.settings, self.languages.mode(f"guild:{guild.id}", locale))
        return {} if wanted == getattr(self.stt, "language", None) else {"language": wanted}

    async def _watch_receive(self, gv: GuildVoice, interval: float = 1.0) -> None:
        """Connected but deaf (people talk, nothing decrypts): rejoin once, then say so and stop trying."""
        while True:
            await asyncio.sleep(interval)
            if not gv.vc.is_connected():
                continue  # discord.py is reconnecting; counters mean nothing meanwhile
            heard = getattr(gv.sink, "heard", None)  # frames decoded per person: what the watchdog measures
            verdict = gv.watchdog.observe(gv.vc.stats, heard() if heard is not None else None)
            if verdict is None:
                continue
            log.warning(verdict.log_message, extra={"guild_id": gv.guild_id})
            key = "voice.deaf_rejoin" if verdict.action is WatchdogAction.REJOIN else "voice.deaf_give_up"
            await self._post(gv, t(key, self.guild_language(gv.channel.guild)))
            if verdict.action is WatchdogAction.REJOIN:
                self._spawn(self._rejoin(gv), f"voice-rejoin-{gv.guild_id}")
                return
            if verdict.action is WatchdogAction.GIVE_UP:
                return

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _rejoin(self, gv: GuildVoice) -> None:
        """Leave and join the same channel again, keeping the watchdog's rejoin budget."""
        async with self._lock(gv.guild_id):
            if self._guilds.get(gv.guild_id) is not gv:
                return
            channel, watchdog = gv.channel, gv.watchdog
            await self._leave_locked(gv.guild_id, reason="deaf watchdog")
            try:
                await self._connect(channel, announce=False)
            except VoiceCommandError as exc:
                log.warning("rejoin after a deaf connection failed: %s", exc, extra={"guild_id": gv.guild_id})
                return
            fresh = self._guilds.get(gv.guild_id)
            if fresh is not None:
                watchdog.rebase()  # the new connection's counters start from zero
                fresh.watchdog = watchdog

    async def _move(self, gv: GuildVoice, channel: discord.VoiceChannel | discord.StageChannel) -> None:
        """A command moving the bot: a clean leave and join (a new conversation in a new room anyway).

        discord.py's ``move_to`` swallows its own timeout and can leave a half-moved connection; a
        full reconnect under the guild lock always ends connected to ``channel`` or not at all.
        """
        await self._leave_locked(gv.guild_id, reason=f"moving to channel {channel.id}")
        await self._connect(channel)

    async def _rebind(self, gv: GuildVoice, old: discord.abc.GuildChannel,
                      channel: discord.VoiceChannel | discord.StageChannel) -> None:
        """The bot is now in ``channel`` (moved by a command or by someone else): a new conversation."""
        await self._clear_presence(gv, old)
        await gv.session.aclose()
        gv.channel = channel
        gs = self.guild_settings.get(gv.guild_id)
        holder = {"gv": gv}
        gv.session = self._new_session(channel.guild, channel, gs, gv.out, holder)
        await self._stop_tasks(gv)
        gv.sink.close()
        gv.sink = self._pipeline_factory(SpeechFeed(gv.session, self.optouts), self.settings.stt_sample_rate)
        gv.vc.set_sink(gv.sink)
        me = channel.guild.me.id if channel.guild.me is not None else None
        gv.bots = {m.id for m in channel.members if m.bot and m.id != me}
        self._apply_bot_filter(gv)
        gv.watchdog.reset()
        self._start_tasks(gv)
        log.info("moved voice channel", extra={"guild_id": gv.guild_id, "from": old.id, "to": channel.id})
        await self._remember(gv)
        await self._after_arrival(gv)

    async def _after_arrival(self, gv: GuildVoice, *, announce: bool = True) -> None:
        """Tell the channel the bot is listening, ask for the stage, and start the idle watch."""
        channel = gv.channel
        me = channel.guild.me
        if isinstance(channel, discord.StageChannel) and me.voice is not None and me.voice.suppress:
            await self._request_stage(me, channel)
        if announce:
            await self._announce(gv)
        self._watch_company(gv)

    async def _request_stage(self, me: discord.Member, channel: discord.StageChannel) -> None:
        try:
            if channel.permissions_for(me).mute_members:
                await me.edit(suppress=False)  # a stage moderator may make itself a speaker
            else:
                await me.request_to_speak()
        except discord.HTTPException as exc:
            log.info("could not become a stage speaker: %s", exc.status, extra={"guild_id": channel.guild.id})

    async def _announce(self, gv: GuildVoice) -> None:
        channel = gv.channel
        gs = self.guild_settings.get(gv.guild_id)
        bot_name = self.agent.character.name
        language = self.guild_language(channel.guild)
        # A right-to-left channel name keeps its own direction inside the notice's line (bot.i18n.bidi).
        text = consent_notice(bot_name=bot_name, channel_name=isolate(channel.name), mode=gs.mode,
                              providers=self.providers,
                              recording=gs.recording_allowed(self.settings),
                              retention_days=self.settings.transcript_retention_days, mirror=gs.mirror_transcripts,
                              language=language)
        perms = channel.permissions_for(channel.guild.me)
        if perms.send_messages:
            view = ListenView(self, bot_name, language) if gs.mode == VoiceMode.PUSH_TO_TALK else None
            try:
                gv.notice = await channel.send(text, view=view or discord.utils.MISSING,
                                               allowed_mentions=discord.AllowedMentions.none())
            except discord.HTTPException as exc:
                log.info("could not post the consent notice: %s", exc.status, extra={"guild_id": gv.guild_id})
        else:
            log.info("no permission to post the consent notice", extra={"guild_id": gv.guild_id})
        if isinstance(channel, discord.VoiceChannel) and (perms.set_voice_channel_status or perms.manage_channels):
            try:
                await channel.edit(status=channel_status(bot_name, mode=gs.mode, language=language))
                gv.status_set = True
            except discord.HTTPException as exc:
                log.info("could not set the voice channel status: %s", exc.status, extra={"guild_id": gv.guild_id})

    async def _clear_presence(self, gv: GuildVoice, channel: discord.abc.GuildChannel) -> None:
        if gv.status_set and isinstance(channel, discord.VoiceChannel):
            gv.status_set = False
            try:
                await channel.edit(status=None)
            except discord.HTTPException as exc:
                log.info("could not clear the voice channel status: %s", exc.status, extra={"guild_id": gv.guild_id})
        if gv.notice is not None and gv.notice.components:
            with contextlib.suppress(discord.HTTPException):
                await gv.notice.edit(view=None)  # the push-to-talk button no longer does anything there
        gv.notice = None

    async def _teardown(self, gv: GuildVoice, *, disconnect: bool = True) -> None:
        """Release everything one connection holds; safe after a kick (already disconnected)."""
        gv.leaving = True
        current = asyncio.current_task()
        if gv.idle_task is not None and gv.idle_task is not current:
            gv.idle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gv.idle_task
        gv.idle_task = None
        gv.vc.set_sink(None)
        await self._stop_tasks(gv)
        try:
            gv.sink.close()  # ends open speech segments while the session can still take them
        except Exception:
            log.exception("closing the decode pipeline failed", extra={"guild_id": gv.guild_id})
        try:
            await gv.session.aclose()
        except Exception:
            log.exception("closing the voice session failed", extra={"guild_id": gv.guild_id})
        try:
            await gv.out.aclose()
        except Exception:
            log.exception("closing playback failed", extra={"guild_id": gv.guild_id})
        if disconnect:
            await self._clear_presence(gv, gv.channel)
            try:
                # waits for Discord to confirm the bot left, so an immediate rejoin cannot race it
                await gv.vc.disconnect(force=True)
            except Exception:
                log.exception("voice disconnect failed", extra={"guild_id": gv.guild_id})
        else:
            # Kicked: discord.py already tore the connection down and Discord cleared the status.
            gv.status_set = False
            await self._clear_presence(gv, gv.channel)
        async with self.left:
            self.left.notify_all()

    # ------------------------------------------------------------------ speaking and settings

    def _require(self, guild_id: int) -> GuildVoice:
        gv = self._guilds.get(guild_id)
        if gv is None:
            raise VoiceCommandError("voice.not_in_channel_use_join")
        if not gv.vc.is_connected():
            raise VoiceCommandError("voice.reconnecting")
        return gv

    async def say(self, guild_id: int, text: str) -> PlayResult | None:
        """Speak ``text`` in the guild's voice channel (queued behind anything being said)."""
        gv = self._require(guild_id)
        return await gv.session.say(text)

    def listen(self, guild: discord.Guild | None, user: discord.abc.User, *, language: str = "en") -> str:
        """Push-to-talk: open a listening window for ``user``; returns what to tell them (in ``language``)."""
        if guild is None:
            raise VoiceCommandError("command.guild_only")
        gv = self._require(guild.id)
        member = guild.get_member(user.id)
        if member is None or member.voice is None or member.voice.channel is None \
                or member.voice.channel.id != gv.channel.id:
            raise VoiceCommandError("listen.join_first", channel=gv.channel.mention)
        if self.optouts.is_opted_out(user.id):
            raise VoiceCommandError("listen.opted_out")
        gv.session.policy.open_listening_window(user.id, LISTEN_WINDOW_SECONDS)
        if gv.session.policy.mode != VoiceMode.PUSH_TO_TALK:
            return t("listen.not_needed", language)
        return t("listen.window", language, seconds=f"{LISTEN_WINDOW_SECONDS:.0f}")

    async def set_mode(self, guild_id: int, mode: str) -> GuildVoiceSettings:
        gs = await self.guild_settings.update(guild_id, mode=mode)
        session = self.session(guild_id)
        if session is not None:
            session.policy.mode = gs.mode
        return gs

    async def set_voice(self, guild_id: int, voice_id: str | None) -> GuildVoiceSettings:
        gs = await self.guild_settings.update(guild_id, voice_id=voice_id)
        session = self.session(guild_id)
        if session is not None:
            session.voice = self._voice(gs.voice_id)
        return gs

    def _voice(self, override: str | None) -> VoiceSpec:
        engine = self.tts.name if self.tts is not None else "elevenlabs"
        return voice_for(self.settings, self.agent.character, override, engine=engine)

    async def update_settings(self, guild_id: int, **changes: Any) -> GuildVoiceSettings:
        gs = await self.guild_settings.update(guild_id, **changes)
        gv = self._guilds.get(guild_id)
        if gv is not None and "idle_leave_seconds" in changes:
            self._watch_company(gv, restart=True)
        if gv is not None and "include_bots" in changes:
            self._apply_bot_filter(gv, gs.include_bots)
        return gs

    def _apply_bot_filter(self, gv: GuildVoice, include_bots: bool | None = None) -> None:
        """Point the receive filter at the bots now in the channel (none when the guild includes bots)."""
        if include_bots is None:
            include_bots = self.guild_settings.get(gv.guild_id).include_bots
        ignored = frozenset() if include_bots else frozenset(gv.bots)
        newly = ignored - gv.vc.ignore_users
        gv.vc.ignore_users = ignored
        for user_id in newly:  # anything of theirs already in flight is forgotten too
            gv.session.on_leave(user_id)
            try:
                gv.sink.on_speaker_left(user_id)
            except Exception:
                log.exception("decode pipeline failed to drop a speaker", extra={"guild_id": gv.guild_id})

    async def list_voices(self, *, max_age: float = 300.0) -> list[VoiceInfo]:
        """The voices the TTS engine offers (cached for autocomplete; an engine failure raises TTSError)."""
        now = time.monotonic()
        if self._voices_cache is not None and now - self._voices_cache[0] < max_age:
            return self._voices_cache[1]
        if self.tts is None:
            return []
        voices = await self.tts.list_voices()
        self._voices_cache = (now, voices)
        return voices

    # ------------------------------------------------------------------ privacy

    async def opt_out(self, user_id: int) -> bool:
        """Stop hearing this person everywhere, at once (before the opt-out is stored)."""
        self.optouts.block(user_id)
        self.drop_live_state(user_id)
        return await self.optouts.opt_out(user_id)

    async def opt_in(self, user_id: int) -> bool:
        return await self.optouts.opt_in(user_id)

    def drop_live_state(self, user_id: int) -> None:
        """Close the person's STT streams, waiting turns and decoder state in every guild."""
        for gv in self._guilds.values():
            gv.session.on_leave(user_id)
            try:
                gv.sink.on_speaker_left(user_id)
            except Exception:
                log.exception("decode pipeline failed to drop a speaker", extra={"guild_id": gv.guild_id})

    # ------------------------------------------------------------------ what Discord does to us

    async def on_voice_state_update(self, member: discord.Member, before: discord.VoiceState,
                                    after: discord.VoiceState) -> None:
        """Follow the bot being moved, kicked or muted, and people coming and going."""
        guild = member.guild
        if guild.id not in self._guilds:
            await self._maybe_auto_join(member, after)
            return
        if member.id == guild.me.id:
            async with self._lock(guild.id):
                gv = self._guilds.get(guild.id)
                if gv is None or gv.leaving:
                    return
                if after.channel is None:
                    # Not asked to leave: a moderator disconnected the bot (discord.py has already
                    # torn the connection down, having no reason to reconnect).
                    await self._leave_locked(guild.id, reason="disconnected by someone in the server",
                                             already_disconnected=True)
                elif after.channel.id != gv.channel.id and isinstance(after.channel,
                                                                      (discord.VoiceChannel, discord.StageChannel)):
                    await self._rebind(gv, gv.channel, after.channel)
                elif not can_speak_in(gv.channel, guild.me):
                    gv.out.stop()  # muted (or moved to the audience) mid-sentence: stop at once
            return
        gv = self._guilds.get(guild.id)
        if gv is None:
            return
        was_here = before.channel is not None and before.channel.id == gv.channel.id
        is_here = after.channel is not None and after.channel.id == gv.channel.id
        if member.bot and was_here != is_here:
            if is_here:
                gv.bots.add(member.id)
            else:
                gv.bots.discard(member.id)
            self._apply_bot_filter(gv)
        if was_here and not is_here:
            gv.session.on_leave(member.id)
        if was_here != is_here and not member.bot:
            self._watch_company(gv)

    async def _maybe_auto_join(self, member: discord.Member, after: discord.VoiceState) -> None:
        """A person arrived in a channel the guild wants the bot in: join it (and tell them, as always)."""
        channel = after.channel
        if member.bot or channel is None or self._closed or self.busy(member.guild.id):
            return
        if not isinstance(channel, (discord.VoiceChannel, discord.StageChannel)):
            return
        if channel.id not in self.guild_settings.channels(member.guild.id, AUTO_JOIN):
            return
        log.info("joining by myself: someone arrived", extra={"guild_id": member.guild.id, "channel_id": channel.id})
        try:
            await self.join(channel)
        except VoiceCommandError as exc:
            log.info("could not join by myself: %s", exc, extra={"guild_id": member.guild.id})

    def _watch_company(self, gv: GuildVoice, *, restart: bool = False) -> None:
        """Leave after the configured time with no humans; any human arriving cancels the countdown."""
        if gv.leaving:
            return
        if humans_in(gv.channel):
            gv.company.set()
        else:
            gv.company.clear()
        seconds = self.guild_settings.get(gv.guild_id).idle_leave_seconds
        task = gv.idle_task
        if restart and task is not None:
            task.cancel()
            gv.idle_task = task = None
        if gv.company.is_set() or seconds <= 0 or (task is not None and not task.done()):
            return
        gv.idle_task = asyncio.get_running_loop().create_task(self._idle(gv, seconds),
                                                              name=f"voice-idle-{gv.guild_id}")

    async def _idle(self, gv: GuildVoice, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await gv.company.wait()
            return  # someone arrived in time
        except asyncio.TimeoutError:
            pass
        async with self._lock(gv.guild_id):
            if self._guilds.get(gv.guild_id) is not gv or humans_in(gv.channel):
                return
            await self._post(gv, t("voice.idle_left", self.guild_language(gv.channel.guild), channel=gv.channel.mention))
            await self._leave_locked(gv.guild_id, reason=f"alone for {seconds:.0f} s")
        if gv.session.policy.mode == VoiceMode.SCRIBE:
            await self._post_notes(gv)

    async def _post(self, gv: GuildVoice, text: str) -> None:
        """Post in the voice channel's text chat; failures are logged, never raised."""
        try:
            await gv.channel.send(text[:2000], allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as exc:
            log.info("could not post in the voice channel chat: %s", exc.status, extra={"guild_id": gv.guild_id})

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Leave every voice channel and close the engines this manager built. Idempotent."""
        self._closed = True
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for guild_id in list(self._guilds):
            try:
                await self.leave(guild_id, reason="shutting down")
            except Exception:
                log.exception("leaving voice at shutdown failed", extra={"guild_id": guild_id})
        for engine in self._owned:
            try:
                await engine.aclose()
            except Exception:
                log.exception("closing a speech engine failed")
        self._owned = ()


def _name_of(guild: discord.Guild, user_id: int) -> str:
    member = guild.get_member(user_id)
    return member.display_name if member is not None else f"user {user_id}"


class _SilentTTS(TTSEngine):
    """TTS_ENGINE=none: nothing is synthesized, so replies go to the text chat only."""

    name = "none"
    format = AudioFormat("s16le", 48000, 2)

    async def synthesize(self, text: str, voice: Any = None) -> AsyncIterator[bytes]:  # type: ignore[override]
        # One silent frame, so the session hands the sentence to GuardedOut, which posts it as text.
        yield bytes(3840)

    async def list_voices(self) -> list[VoiceInfo]:
        return []

    async def check(self) -> str:
        return "speech output is off"

    async def aclose(self) -> None:
        return None


def _default_pipeline(end_gap_ms: int) -> PipelineFactory:
    """Decode pipelines that report the end of speech after ``end_gap_ms`` without packets (the
    turn-detection rule's pause; quiet audio still takes the pipeline's default 600 ms)."""

    def make(feed: SpeechFeed, sample_rate: int) -> PipelineSink:
        return ReceivePipeline(feed, sample_rate=sample_rate, end_gap_ms=end_gap_ms)

    return make


def _default_out_factory(settings: Settings) -> OutFactory:
    """Speech goes out through the playback queue, with FFmpeg from settings or the bundled one."""

    def make(vc: discord.VoiceClient) -> ClosableAudioOut:
        from audio.native import find_ffmpeg
        from audio.playback import Speaker
        from bot.providers import tts_choice
        from bot.voice.session import SpeakerOut

        # Only Piper's voice needs FFmpeg (espeak-ng and ElevenLabs are 48 kHz PCM, played in process),
        # and FFmpeg is the optional voicebot[ffmpeg]: looked for when it will be used, so that its
        # absence is one clear error at /join rather than a failed sentence.
        piper = tts_choice(settings) == "piper" or settings.piper_model is not None
        ffmpeg = find_ffmpeg(settings.ffmpeg_path) if settings.ffmpeg_path or piper else None
        return SpeakerOut(Speaker(vc, ffmpeg=ffmpeg, name=f"speaker-{vc.channel.id}"))

    return make
