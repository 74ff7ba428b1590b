"""One phone call: a Twilio Media Streams socket feeding the same :class:`VoiceSession` as a voice channel.

Inbound: each ``media`` frame (base64 μ-law, 20 ms) is decoded to 8 kHz PCM in process, cut into
speech by the same VAD segmenter as Discord audio (Twilio sends silence too, so the VAD decides the
ends of speech), and handed to the session as its one speaker (``on_speech_start``/``on_audio``/
``on_speech_end``). Deepgram gets the μ-law bytes themselves (``encoding=mulaw&sample_rate=8000``);
the local recognizer resamples the 8 kHz PCM itself (soxr). Frames arriving faster than real time
beyond a small burst are dropped.

Outbound: :class:`TwilioAudioOut` is the session's :class:`AudioOut`. Each utterance (a sentence) is
converted to μ-law 8 kHz (:class:`~bot.phone.audio.MulawEncoder`), sent as ``media`` frames and
followed by a ``mark``; ``play`` returns when Twilio echoes the mark, i.e. when the caller has heard
all of it. On barge-in ``stop`` sends ``clear`` and ``play`` returns at once with the part the caller
heard, estimated from when Twilio began playing it; that is what memory keeps, marked interrupted.
When the socket is gone (the caller hung up) nothing is estimated: Twilio echoes a mark only once
the audio before it has played, so a progress mark every ``PROGRESS_MARK_SECONDS`` within an
utterance lets memory keep exactly what the echoed marks prove the caller heard.

When the caller has finished is decided as in a voice channel (:mod:`bot.voice.endpointing`):
with ``turn_detection`` smart, a short stretch of VAD silence (``TURN_PAUSE_MS``; a phone line sends
its silence, so the pause is seen in the audio, not as a packet gap) asks the recognizer for the
words at once (Deepgram ``Finalize``), and the words decide how long to wait; with ``speculate`` the
reply starts on those words and is played only once the turn is over. Without it (``fixed``) the
old rule holds: ``end_silence_ms`` of VAD silence, and the recognizer's final ends the turn.

Language: each number has one (``bot.i18n.places``, the store SMS uses, place ``phone:+E164``):
set by SMS ``LANGUAGE xx``, else ``auto``, learnt from what the number texted or said. The call's
own words (greeting, notice, time limit, "I can't hear you") are said in it, from the message
catalog; each reply is in the language of what the caller said (the recognizer's language, else
the text detector's), spoken with that language's voice, and remembered for the number.

The call ends on ``stop`` (the caller hung up), after the bot has answered a goodbye, at the maximum
length, when recognition fails for good, or when the socket breaks; the bot hangs up through the
REST API when it is the one ending. Every task is owned here and awaited in :meth:`PhoneCall.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import WSMsgType, web

from audio.decode import SpeechEvent, SpeechSegmenter
from audio.stt.base import STTEngine, STTError, STTStream, Transcript
from audio.tts.base import AudioFormat, TTSEngine, VoiceSpec
from audio.vad import Vad, WebRtcVad
from bot.i18n.catalog import catalog_language, t
from bot.i18n.places import Choice
from bot.memory import Modality
from bot.phone.audio import (
    FRAME_BYTES,
    MULAW_RATE,
    MULAW_SILENCE,
    MulawEncoder,
    UnsupportedFormat,
    mulaw_decode,
    mulaw_encode,
)
from bot.phone.protocol import (
    Connected,
    Dtmf,
    Mark,
    Media,
    ProtocolError,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
    parse_message,
)
from bot.voice.endpointing import TurnDetection
from bot.voice.session import PlayResult, VoiceSession
from bot.voice.turns import PendingTurn, TurnPolicy, VoiceMode, mentions_any

if TYPE_CHECKING:
    from bot.agent import Agent
    from bot.i18n.places import PlaceLanguages
    from bot.memory import Memory
    from bot.phone.tokens import CallGrant

__all__ = ["CallOptions", "CallReport", "CallText", "PhoneCall", "TwilioAudioOut", "CALLER_ID", "catalog_text"]

log = logging.getLogger(__name__)

CALLER_ID = 1  # the session's user id for the one person on the line
START_TIMEOUT = 10.0  # Twilio sends ``start`` right after connecting; a socket that never does is closed
PCM_FRAME = FRAME_BYTES * 2  # 20 ms of 8 kHz s16le: the VAD's frame
FLOOD_BURST_SECONDS = 2.0  # audio a caller may be ahead of real time (network jitter) before frames are dropped
MAX_PROTOCOL_ERRORS = 50  # bad messages (binary frames included) tolerated in one call before it is closed
MARK_GRACE = 10.0  # seconds past an utterance's expected end to wait for Twilio's mark echo
FINISH_GRACE = 10.0  # seconds after the end for the last words to be transcribed and remembered
MAX_SEND_BYTES = FRAME_BYTES * 5  # 100 ms of μ-law per outbound media message
# A mark within an utterance this often: after a hang-up, what the caller heard of a sentence is
# known to within this much (the echoes prove it), at the cost of two small messages a second.
PROGRESS_MARK_SECONDS = 0.5
# Under this RMS (about -52 dBFS) a frame is the line's silence, whatever the VAD says: webrtcvad
# keeps calling 60-120 ms of silence after a voice "speech" (its hangover, measured on espeak-ng
# speech at 8 kHz), and with the short pause of smart turn detection that would nearly double it.
LINE_SILENCE_RMS = 80.0
# A caller saying one of these (as whole words) ends the call once the bot has answered it.
GOODBYES = ("goodbye", "good bye", "bye", "bye bye", "hang up", "that's all",
            "tschüss", "auf wiederhören", "auf wiedersehen", "au revoir", "adiós", "hasta luego", "tchau",
            "adeus", "さようなら", "失礼します")

# What the call says in its own words: a string is said as it is (an operator's PHONE_GREETING, a
# test's text); a function of the language makes it in the caller's language (the message catalog).
CallText = str | Callable[[str], str]


def catalog_text(key: str, **values: object) -> Callable[[str], str]:
    """``key`` of the message catalog, in whatever language the call is in when it is said."""
    return partial(_catalog_text, key, values)


def _catalog_text(key: str, values: dict[str, object], language: str) -> str:
    return t(key, language, **values)


@dataclass(frozen=True)
class CallOptions:
    """Per-call behaviour from settings."""

    greeting: CallText = ""
    notice: CallText = ""  # spoken after the greeting: the call is an AI and who hears the audio
    max_seconds: float = 600.0
    # The old end-of-turn rule (no turn_detection, or fixed): this much VAD silence ends the turn.
    end_silence_ms: int = 600
    # The voice channels' rule (TURN_DETECTION, bot.voice.endpointing); None: the old rule above.
    turn_detection: TurnDetection | None = None
    speculate: bool = False  # SPECULATIVE_REPLY: start the reply on a pause's words (smart only)
    max_reply_seconds: float = 60.0  # VOICE_REPLY_MAX_SECONDS: a reply stops at the sentence past it
    time_limit_text: CallText = catalog_text("phone.time_limit")
    hearing_failed_text: CallText = catalog_text("phone.hearing_failed")

    @property
    def smart(self) -> bool:
        return self.turn_detection is not None and self.turn_detection.smart

    @property
    def vad_end_ms(self) -> int:
        """VAD silence after which the caller's speech has paused (and the recognizer is asked)."""
        return self.turn_detection.gap_ms if self.turn_detection is not None else self.end_silence_ms


@dataclass
class CallReport:
    """What happened on one call (for logs, ``voicebot simulate --call`` and tests)."""

    call_sid: str
    caller: str
    ended_by: str = ""  # "caller", "goodbye", "max-length", "stt-failed", "socket", "shutdown", "refused"
    media_in: int = 0
    flood_dropped: int = 0
    protocol_errors: int = 0
    media_out: int = 0
    clears: int = 0
    dtmf: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    speech_ends: list[float] = field(default_factory=list)  # clock times the caller's speech ended


class _LineVad:
    """The VAD, except that a frame under the line's noise floor is silence at once (see
    ``LINE_SILENCE_RMS``). Every frame still goes through the VAD, so its state follows the line."""

    def __init__(self, inner: Vad) -> None:
        self._inner = inner
        self.sample_rate = inner.sample_rate

    def is_speech(self, pcm: bytes) -> bool:
        voiced = self._inner.is_speech(pcm)
        if not voiced:
            return False
        samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float32)
        return bool(samples.size) and float(np.sqrt(np.mean(samples * samples))) >= LINE_SILENCE_RMS

    def reset(self) -> None:
        self._inner.reset()


@dataclass
class _Playing:
    """The utterance being played: its progress marks and what their echoes prove."""

    name: str  # its final mark; progress marks are ``{name}.{k}``
    marks: dict[str, int] = field(default_factory=dict)  # progress mark -> μ-law bytes sent before it
    proven: int = 0  # μ-law bytes the caller has heard for sure (the furthest echoed progress mark)
    marked: int = 0  # μ-law bytes sent before the latest progress mark
    cleared: bool = False  # a clear was sent: Twilio echoes the marks it dropped at once, proving nothing


class TwilioAudioOut:
    """:class:`~bot.voice.session.AudioOut` over a Media Streams socket (see the module docstring)."""

    def __init__(self, send: Callable[[str], Awaitable[None]], stream_sid: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self.stream_sid = stream_sid
        self.clock = clock
        self._marks = 0
        self._mark_waiters: dict[str, asyncio.Future[None]] = {}
        self._playing_now: _Playing | None = None
        self._stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._playout_end = 0.0  # estimated clock time Twilio finishes playing what it was sent
        self._closed = False
        self._playing = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.media_sent = 0
        self.clears = 0
        self.first_media_at: list[float] = []  # clock time of each utterance's first media frame

    async def play(self, text: str, chunks: AsyncIterator[bytes], fmt: AudioFormat) -> PlayResult:
        # One utterance at a time, in order (a /say or a notice queues behind a reply); a barge-in
        # also ends the utterances queued behind the one playing.
        stopped = self._stopped
        async with self._playing:
            if self._closed or stopped.done():
                return PlayResult(0.0, 0.0, True, None)
            return await self._play(chunks, fmt, stopped)

    async def _play(self, chunks: AsyncIterator[bytes], fmt: AudioFormat, stopped: asyncio.Future[None]) -> PlayResult:
        try:
            encoder = MulawEncoder(fmt)
        except UnsupportedFormat as exc:
            log.error("cannot play on the phone: %s", exc)
            return PlayResult(0.0, 0.0, False, None)
        self._marks += 1
        playing = self._playing_now = _Playing(f"utt-{self._marks}")
        try:
            return await self._stream(encoder, aiter(chunks), stopped, playing)
        finally:
            self._playing_now = None

    async def _stream(self, encoder: MulawEncoder, iterator: AsyncIterator[bytes], stopped: asyncio.Future[None],
                      playing: _Playing) -> PlayResult:
        pending = bytearray()
        sent = 0  # μ-law bytes
        first_at: float | None = None
        started_at: float | None = None  # estimated clock time the caller began hearing this utterance
        interrupted = False
        lost = False  # the socket went away under us: the caller hung up
        progress_bytes = int(PROGRESS_MARK_SECONDS * MULAW_RATE)

        async def send(final: bool) -> None:
            nonlocal sent, first_at, started_at
            while len(pending) >= FRAME_BYTES or (final and pending):
                size = min(MAX_SEND_BYTES, len(pending) - len(pending) % FRAME_BYTES) or len(pending)
                block = bytes(pending[:size])
                del pending[:size]
                if len(block) % FRAME_BYTES:
                    block += bytes([MULAW_SILENCE]) * (FRAME_BYTES - len(block) % FRAME_BYTES)
                if sent - playing.marked >= progress_bytes:
                    mark = f"{playing.name}.{len(playing.marks) + 1}"
                    playing.marks[mark], playing.marked = sent, sent
                    await self._send(mark_message(self.stream_sid, mark))
                now = self.clock()
                begins = max(now, self._playout_end)
                self._playout_end = begins + len(block) / MULAW_RATE
                if started_at is None:
                    started_at, first_at = begins, now
                    self.first_media_at.append(now)
                await self._send(media_message(self.stream_sid, block))
                self.media_sent += 1
                sent += len(block)

        try:
            while True:
                step = asyncio.ensure_future(anext(iterator))
                await asyncio.wait({step, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await step
                    interrupted = True
                    break
                try:
                    chunk = step.result()
                except StopAsyncIteration:
                    break
                pending += encoder.feed(chunk)
                await send(final=False)
                if stopped.done():
                    interrupted = True
                    break
            if not interrupted:
                pending += encoder.flush()
                await send(final=True)
        except ConnectionError:
            lost = True
        total = sent / MULAW_RATE
        if sent == 0:
            return PlayResult(0.0, 0.0, interrupted or lost, None)
        if not interrupted and not lost:
            heard = asyncio.get_running_loop().create_future()
            self._mark_waiters[playing.name] = heard
            try:
                await self._send(mark_message(self.stream_sid, playing.name))
                # Twilio echoes the mark when the audio before it has played; should the echo never
                # come, the utterance counts as heard once it would have finished, plus a grace.
                playing_for = max(0.0, self._playout_end - self.clock())
                await asyncio.wait({heard, stopped}, timeout=playing_for + MARK_GRACE,
                                   return_when=asyncio.FIRST_COMPLETED)
            except ConnectionError:
                lost = True
            finally:
                self._mark_waiters.pop(playing.name, None)
            if heard.done():
                return PlayResult(total, total, False, first_at)
            if not stopped.done() and not lost:
                log.warning("no echo of mark %s within %.0f s of its audio's end; counting it as heard",
                            playing.name, MARK_GRACE)
                return PlayResult(total, total, False, first_at)
        if lost or self._closed:
            # The caller is gone: what Twilio had buffered may never have played, so only what the
            # echoed marks prove was heard counts (not the time since the audio was sent).
            return PlayResult(min(total, playing.proven / MULAW_RATE), total, True, first_at)
        played = 0.0 if started_at is None else min(total, max(0.0, self.clock() - started_at))
        return PlayResult(played, total, True, first_at)

    def stop(self) -> None:
        """Barge-in: drop what Twilio has buffered (``clear``) and end the current ``play``."""
        if not self._stopped.done():
            self._stopped.set_result(None)
        self._stopped = asyncio.get_running_loop().create_future()
        if self._closed or (self._playout_end <= self.clock() and not self._mark_waiters):
            return  # nothing is queued at Twilio: no clear needed
        self._playout_end = self.clock()
        if self._playing_now is not None:
            self._playing_now.cleared = True
        self.clears += 1
        task = asyncio.get_running_loop().create_task(self._send_quietly(clear_message(self.stream_sid)),
                                                      name="phone-clear")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_mark(self, name: str) -> None:
        """Twilio echoed a mark: the caller has heard everything sent before it."""
        waiter = self._mark_waiters.get(name)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        playing = self._playing_now
        if playing is not None and name in playing.marks and not playing.cleared:
            playing.proven = max(playing.proven, playing.marks[name])

    async def _send_quietly(self, message: str) -> None:
        with contextlib.suppress(ConnectionError):
            await self._send(message)

    async def aclose(self) -> None:
        """The socket is gone: any ``play`` returns now with what was heard."""
        self._closed = True
        if not self._stopped.done():
            self._stopped.set_result(None)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class _ObservedSTT(STTEngine):
    """The real engine, with stream failures reported to the call (it cannot hear after a fatal one)."""

    def __init__(self, engine: STTEngine, on_error: Callable[[STTError], None]) -> None:
        super().__init__()
        self.engine = engine
        self.name = engine.name
        self._on_error = on_error

    def open_stream(self, *, speaker: str, sample_rate: int = 16000, **options: str) -> STTStream:
        if self.engine.name == "deepgram" and sample_rate == MULAW_RATE:
            # Deepgram takes the call's μ-law as is (encoding=mulaw&sample_rate=8000): the PCM the
            # session hands over re-encodes to the bytes Twilio sent (negative zero becomes positive
            # zero, the same silence), half the bytes of PCM and no resampling.
            inner = self.engine.open_stream(speaker=speaker, sample_rate=MULAW_RATE,  # type: ignore[call-arg]
                                            encoding="mulaw", **options)
            return _ObservedStream(inner, self._on_error, encode=mulaw_encode)
        return _ObservedStream(self.engine.open_stream(speaker=speaker, sample_rate=sample_rate, **options),
                               self._on_error)

    async def check(self) -> str:
        return await self.engine.check()

    async def aclose(self) -> None:
        return None  # the engine is shared by every call and closed by its owner


class _ObservedStream(STTStream):
    def __init__(self, inner: STTStream, on_error: Callable[[STTError], None], *,
                 encode: Callable[[bytes], bytes] | None = None) -> None:
        self.inner = inner
        self.sample_rate = inner.sample_rate
        self.speaker = inner.speaker
        self._on_error = on_error
        self._encode = encode

    def push(self, pcm: bytes) -> None:
        self.inner.push(self._encode(pcm) if self._encode is not None else pcm)

    async def finalize(self) -> None:
        await self.inner.finalize()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aiter__(self) -> AsyncIterator[Transcript]:  # type: ignore[override]
        try:
            async for transcript in self.inner:
                yield transcript
        except STTError as exc:
            self._on_error(exc)
            raise


class PhoneCall:
    """One call's media socket, from ``start`` to the end (see the module docstring)."""

    def __init__(
        self,
        *,
        grant: CallGrant,
        agent: Agent,
        memory: Memory,
        stt: STTEngine | None,
        tts: TTSEngine,
        fallback_tts: TTSEngine | None,
        voice: VoiceSpec | None,
        options: CallOptions,
        caller_name: str,
        hangup: Callable[[str], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        languages: PlaceLanguages | None = None,
        stream_options: dict[str, str] | None = None,
        on_session: Callable[[VoiceSession], None] | None = None,
    ) -> None:
        self.grant = grant
        self.agent = agent
        self.memory = memory
        self.stt = stt
        self.tts = tts
        self.fallback_tts = fallback_tts
        self.voice = voice
        self.options = options
        self.caller_name = caller_name
        self._hangup = hangup
        self.clock = clock
        self.report = CallReport(grant.call_sid, grant.caller)
        self.room = f"phone:{grant.caller}"
        # The number's language (None: English only, as before #15); each reply's is chosen per turn.
        self.languages = languages
        self.stream_options = dict(stream_options or {})  # e.g. Deepgram ``language=multi`` for auto
        self.language = "en"
        if languages is not None:
            try:
                self.language = languages.fallback(self.room)
            except Exception:  # the number's row is unreadable: the call goes on in English
                log.exception("call %s: reading the number's language failed", grant.call_sid)
        self._notices: dict[str, str] = {}  # a one-time language notice -> the language it is in
        self._on_session = on_session  # the console's metrics hook
        self.session: VoiceSession | None = None
        self.out: TwilioAudioOut | None = None
        self.heard: list[PendingTurn] = []
        self.started = asyncio.Event()  # the stream started and the session exists
        self._ws: web.WebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ending = False
        self._goodbye = False
        vad: Vad = WebRtcVad(MULAW_RATE)
        if options.smart:
            vad = _LineVad(vad)  # the short pause is meant from the end of the voice, not of the VAD's hangover
        self._segmenter = SpeechSegmenter(vad, end_silence_ms=options.vad_end_ms, clock=clock)
        self._pre_roll: list[bytes] = []
        self._pcm = bytearray()
        self._audio_started_at: float | None = None
        self._received_seconds = 0.0
        self._flood_logged = False

    def __repr__(self) -> str:
        return f"PhoneCall(call_sid={self.grant.call_sid!r}, ended_by={self.report.ended_by!r})"

    # ------------------------------------------------------------------ the socket

    async def run(self, ws: web.WebSocketResponse) -> None:
        """Serve the socket until the call ends; everything started here is finished on return."""
        self._ws = ws
        try:
            async with asyncio.timeout(START_TIMEOUT):
                start = await self._await_start(ws)
            if start is None:
                return
            refusal = self._refusal(start)
            if refusal is not None:
                await self._close(*refusal)
                return
            self._begin(start)
            await self._serve(ws)
        except asyncio.TimeoutError:
            self._note("no start message within %.0f s" % START_TIMEOUT, "refused")
        finally:
            await self._finish()

    async def _await_start(self, ws: web.WebSocketResponse) -> Start | None:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    self._bad(f"{msg.type.name.lower()} frame before start")
                    break
                if await self._too_many_bad(f"{msg.type.name.lower()} frame before start"):
                    break
                continue
            try:
                event = parse_message(msg.data)
            except ProtocolError as exc:
                if await self._too_many_bad(str(exc)):
                    break
                continue
            if isinstance(event, Start):
                return event
            if isinstance(event, Stop):
                self.report.ended_by = "caller"
                return None
            if not isinstance(event, Connected) and await self._too_many_bad(
                    f"{type(event).__name__.lower()} before start (ignored)"):
                break
        self.report.ended_by = self.report.ended_by or "socket"
        return None

    def _refusal(self, start: Start) -> tuple[int, str] | None:
        """Why a stream is refused before any audio (the close code and reason), or None to accept it."""
        if start.call_sid != self.grant.call_sid:
            self._note(f"start names another call than the token's ({start.call_sid[:40]!r})", "refused")
            return 4403, "wrong call"
        if start.encoding != "audio/x-mulaw" or start.sample_rate != MULAW_RATE or start.channels not in (0, 1):
            self._note(f"unsupported media format {start.encoding[:40]!r} at {start.sample_rate} Hz", "refused")
            return 4415, "unsupported media format"
        return None

    def _begin(self, start: Start) -> None:
        self.out = TwilioAudioOut(self._send, start.stream_sid, clock=self.clock)
        self.session = VoiceSession(
            room=self.room,
            agent=self.agent,
            memory=self.memory,
            stt=_ObservedSTT(self.stt, self._on_stt_error) if self.stt is not None else None,
            tts=self.tts,
            out=self.out,
            policy=TurnPolicy(bot_names=(self.agent.character.name,), mode=VoiceMode.ALWAYS),
            voice=self.voice,
            fallback_tts=self.fallback_tts,
            sample_rate=MULAW_RATE,
            name_of=lambda _uid: self.caller_name,
            notify=self._notify,
            clock=self.clock,
            speaker_id=lambda _uid: f"phone:{self.grant.caller}",
            modality=Modality.CALL,
            max_reply_seconds=self.options.max_reply_seconds,
            turn_detection=self.options.turn_detection,
            speculate=self.options.speculate,
            choose_language=self._choose_language if self.languages is not None else None,
            stream_options=self.stream_options,
        )
        self.session.on_turn = self._on_turn
        if self._on_session is not None:
            try:
                self._on_session(self.session)
            except Exception:
                log.exception("call %s: the session hook failed", self.grant.call_sid)
        self._audio_started_at = self.clock()
        self._spawn(self._open(), "phone-greeting")
        if self.options.max_seconds > 0:
            self._spawn(self._time_limit(), "phone-time-limit")
        self.started.set()
        log.info("call %s from %s connected", self.grant.call_sid, _mask(self.grant.caller))

    async def _serve(self, ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.ERROR:
                    self._note(f"socket error: {ws.exception()}", "socket")
                    break
                if await self._too_many_bad(f"{msg.type.name.lower()} frame (Media Streams sends text)"):
                    break
                continue
            try:
                event = parse_message(msg.data)
            except ProtocolError as exc:
                if await self._too_many_bad(str(exc)):
                    break
                continue
            if isinstance(event, Media):
                self._on_media(event)
            elif isinstance(event, Mark):
                if self.out is not None:
                    self.out.on_mark(event.name)
            elif isinstance(event, Dtmf):
                self.report.dtmf.append(event.digit[:1])
                del self.report.dtmf[:-32]  # keypresses are logged, not acted on; keep the last few
            elif isinstance(event, Stop):
                self.report.ended_by = self.report.ended_by or "caller"
                break
            elif isinstance(event, Start) and await self._too_many_bad("a second start (ignored)"):
                break
        if ws.close_code is not None and ws.close_code >= 1002 and ws.close_code != 4000 and not self.report.ended_by:
            self._note(f"socket closed with code {ws.close_code}", "socket")
        self.report.ended_by = self.report.ended_by or "socket"

    async def _send(self, message: str) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionResetError("the call's socket is closed")
        async with self._send_lock:
            await ws.send_str(message)

    async def _close(self, code: int, reason: str) -> None:
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._ws.close(code=code, message=reason.encode())

    # ------------------------------------------------------------------ inbound audio

    def _on_media(self, media: Media) -> None:
        self.report.media_in += 1
        if media.track not in ("inbound", "inbound_track") or not media.payload:
            return
        now = self.clock()
        seconds = len(media.payload) / MULAW_RATE
        allowed = (now - (self._audio_started_at or now)) + FLOOD_BURST_SECONDS
        if self._received_seconds + seconds > allowed:
            self.report.flood_dropped += 1
            if not self._flood_logged:
                self._flood_logged = True
                log.warning("call %s: media arriving faster than real time; dropping the excess", self.grant.call_sid)
                self.report.problems.append("media arrived faster than real time; the excess was dropped")
            return
        self._received_seconds += seconds
        self._pcm += mulaw_decode(media.payload)
        while len(self._pcm) >= PCM_FRAME:
            frame = bytes(self._pcm[:PCM_FRAME])
            del self._pcm[:PCM_FRAME]
            self._frame(frame)

    def _frame(self, pcm: bytes) -> None:
        session = self.session
        if session is None:
            return
        event = self._segmenter.feed(pcm)
        if event == SpeechEvent.START:
            session.on_speech_start(CALLER_ID)
            for earlier in self._pre_roll:
                session.on_audio(CALLER_ID, earlier)
            self._pre_roll.clear()
            session.on_audio(CALLER_ID, pcm)
        elif self._segmenter.speaking:
            session.on_audio(CALLER_ID, pcm)
        else:
            if event == SpeechEvent.END:
                self.report.speech_ends.append(self.clock())
                session.on_speech_end(CALLER_ID)
            self._pre_roll.append(pcm)
            del self._pre_roll[:-10]  # 200 ms before the start, so onsets are not clipped

    # ------------------------------------------------------------------ the conversation

    async def _open(self) -> None:
        for text in (self.options.greeting, self.options.notice):
            if not self._ending:
                await self.say(text)

    async def say(self, text: CallText) -> None:
        """Say one of the call's own texts: a catalog text in the caller's language and its voice,
        an operator's own words as written (in the default voice)."""
        assert self.session is not None
        if isinstance(text, str):
            if text:
                await self.session.say(text)
            return
        language = catalog_language(self.language)
        words = text(language)
        if language != "en" and words == text("en"):
            language = "en"  # the catalog had no entry in this language (logged once): English, in an English voice
        if words:
            await self.session.say(words, language=language)

    def _choose_language(self, text: str, heard: str | None) -> Choice:
        """The session's chooser: the number's place, ``auto`` unless it set a language, a sure
        detection remembered for the number (its SMS replies follow too)."""
        assert self.languages is not None
        try:
            choice = self.languages.choose(self.room, text, heard=heard, learn=True)
        except Exception:  # a database error must not cost the caller the answer
            log.exception("call %s: choosing the reply's language failed", self.grant.call_sid)
            return Choice(self.language, "fallback")
        self.language = choice.language
        if choice.notice:
            self._notices[choice.notice] = choice.language
        return choice

    def _on_turn(self, turn: PendingTurn) -> None:
        self.heard.append(turn)
        if not self._goodbye and mentions_any(turn.text, GOODBYES):
            self._goodbye = True
            self._spawn(self._end_after_reply("goodbye"), "phone-goodbye")

    async def _end_after_reply(self, reason: str) -> None:
        assert self.session is not None
        await self.session.wait_settled()  # the goodbye is answered and heard first
        await self.end(reason)

    async def _time_limit(self) -> None:
        await asyncio.sleep(self.options.max_seconds)  # the call's length limit, a product timer
        assert self.session is not None
        log.info("call %s reached its %.0f s limit", self.grant.call_sid, self.options.max_seconds)
        if self.out is not None:
            self.out.stop()  # cut the reply in progress: the limit is said now
        await self.say(self.options.time_limit_text)
        await self.end("max-length")

    def _on_stt_error(self, exc: STTError) -> None:
        if exc.retryable:
            return  # the session opens a new stream with the next speech
        self._spawn(self._hearing_failed(), "phone-stt-failed")

    async def _hearing_failed(self) -> None:
        if self._ending:
            return
        assert self.session is not None
        self.report.problems.append("speech recognition failed for good")
        await self.say(self.options.hearing_failed_text)
        await self.end("stt-failed")

    async def _notify(self, text: str) -> None:
        # The session's notes for a text channel; a caller cannot read them (failures are spoken
        # where it helps, by the handlers above), so they go to the log. The one exception is the
        # notice that the caller's language is not one the bot speaks: the caller must hear that.
        language = self._notices.pop(text, None)
        if language is not None and self.session is not None and not self._ending:
            log.info("call %s: saying the language notice (%s)", self.grant.call_sid, language)
            await self.session.say(text, language=language)
            return
        log.info("call %s: %s", self.grant.call_sid, text)

    async def end(self, reason: str) -> None:
        """The bot ends the call: hang up through the REST API, then close the socket."""
        if self._ending:
            return
        self._ending = True
        self.report.ended_by = self.report.ended_by or reason
        log.info("call %s: hanging up (%s)", self.grant.call_sid, reason)
        if self._hangup is not None:
            try:
                await self._hangup(self.grant.call_sid)
            except Exception as exc:  # the socket close below still ends the stream (and with it the call)
                log.warning("call %s: REST hang-up failed: %s", self.grant.call_sid, exc)
                self.report.problems.append(f"REST hang-up failed: {type(exc).__name__}")
        await self._close(1000, reason)

    # ------------------------------------------------------------------ lifecycle

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{name}-{self.grant.call_sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    def _bad(self, reason: str) -> None:
        self.report.protocol_errors += 1
        if self.report.protocol_errors <= 3:
            log.warning("call %s: bad Media Streams message: %s", self.grant.call_sid, reason)
            self.report.problems.append(f"bad message: {reason}")

    async def _too_many_bad(self, reason: str) -> bool:
        """Count a bad message; at :data:`MAX_PROTOCOL_ERRORS` close the socket (1008) and say True."""
        self._bad(reason)
        if self.report.protocol_errors < MAX_PROTOCOL_ERRORS:
            return False
        self._note(f"{self.report.protocol_errors} bad messages; closing", "socket")
        await self._close(1008, "too many bad messages")
        return True

    def _note(self, problem: str, ended_by: str) -> None:
        log.warning("call %s: %s", self.grant.call_sid, problem)
        self.report.problems.append(problem)
        self.report.ended_by = self.report.ended_by or ended_by

    async def _finish(self) -> None:
        session = self.session
        if session is not None and self._segmenter.speaking:
            session.on_speech_end(CALLER_ID)  # the caller hung up mid-sentence: transcribe what was said
        if self.out is not None:
            await self.out.aclose()  # a reply in progress returns with what the caller heard
        if session is not None:
            # Let the last words be transcribed and remembered, and the reply in progress record
            # what was heard (nothing more can play), then stop everything.
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(FINISH_GRACE):
                    await session.wait_settled()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if session is not None:
            await session.aclose()
        await self._close(1000, "call ended")
        if self.out is not None:
            self.report.media_out, self.report.clears = self.out.media_sent, self.out.clears
        log.info("call %s from %s ended (%s): %d turns heard", self.grant.call_sid, _mask(self.grant.caller),
                 self.report.ended_by or "?", len(self.heard))


def _mask(number: str) -> str:
    return f"…{number[-4:]}" if len(number) > 4 else "…"


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("phone call task %s failed", task.get_name(), exc_info=task.exception())
