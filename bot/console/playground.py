"""The voice playground: a browser tab as one speaker in a :class:`VoiceSession` (room ``playground``).

Wire protocol on the WebSocket ``/playground/ws`` (the page's ``console.js`` speaks it):

- browser → server, text frames (JSON, at most :data:`MAX_TEXT_FRAME` bytes):
  ``{"type": "start"}`` (the talk button is down), ``{"type": "end"}`` (released),
  ``{"type": "text", "text": "..."}`` (the text box), ``{"type": "ping"}``,
  ``{"type": "language", "language": "de"}`` (the language selector: a code, ``auto`` or ``default``);
- browser → server, binary frames: microphone audio between ``start`` and ``end``, raw PCM
  (s16le, mono, 16 kHz), at most :data:`MAX_AUDIO_FRAME` bytes each and no faster than real time
  (a two-second burst allowance); anything else is refused with one ``error`` message;
- server → browser, text frames: ``hello`` (engines, the languages to choose from and the one in
  use), ``language`` (the one now in use), ``transcript``, ``reply_start``
  (``sample_rate`` of the audio that follows), ``reply_end``, ``stop`` (barge-in: drop what is
  queued), ``released`` (the talk button was held too long: the server ended the turn), ``turn`` (outcome, wait by stage, what was said), ``note`` and ``error``;
- server → browser, binary frames: reply audio, raw PCM s16le mono at ``reply_start``'s rate.

One tab at a time: a second connection is refused (close code 1013) while one is open. Closing the
tab closes its session: the reply stops, the recognizer stream closes, every task ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from audio.tts.base import AudioFormat
from audio.vad import WebRtcVad
from bot.i18n.languages import AUTO, LANGUAGES, language_name, parse_setting
from bot.i18n.voices import voice_for_language
from bot.voice.session import PlayResult, TurnTiming, VoiceSession
from bot.voice.turns import PendingTurn, TurnPolicy, VoiceMode

if TYPE_CHECKING:
    from bot.console.hub import Console

__all__ = ["Playground", "PlaygroundOut", "MAX_AUDIO_FRAME", "MAX_TEXT_FRAME", "MAX_MESSAGE", "SAMPLE_RATE"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
BYTES_PER_SECOND = SAMPLE_RATE * 2
MAX_AUDIO_FRAME = 16 * 1024  # about 0.5 s of audio; the page sends 20-100 ms frames
MAX_TEXT_FRAME = 4096
MAX_MESSAGE = 64 * 1024  # aiohttp closes the socket (1009) on anything larger, before buffering it
MAX_TEXT_CHARS = 1000
AUDIO_BURST_SECONDS = 2.0  # audio may run this far ahead of the wall clock (network jitter)
MAX_TALK_SECONDS = 60.0  # a talk button held longer is released for the person
CONTROL_RATE = 10.0  # control messages per second, sustained
CONTROL_BURST = 20.0
TEXT_RATE = 0.5  # typed messages per second, sustained (one every two seconds)
TEXT_BURST = 3.0
MAX_STRIKES = 50  # refused messages before the connection is closed
PLAYGROUND_USER = 1  # the one speaker's id inside the playground's session
PLACE = "playground"  # the playground's language setting (bot.i18n.places), kept like a server's
RESET_LANGUAGE = "default"
SEND_TIMEOUT = 10.0  # a tab that stops reading is dropped rather than blocking the reply
VAD_FRAME = SAMPLE_RATE * 20 // 1000 * 2  # bytes of one 20 ms frame, what the voice detector judges
# A frame quieter than this (RMS of s16 samples, about -50 dBFS) is silence whatever the detector
# says: webrtcvad keeps saying "speech" for a while after the voice stops (its hangover).
VOICE_RMS = 100.0
# Magic numbers of containers people might send instead of raw PCM.
_CONTAINERS = {b"RIFF": "a WAV file", b"OggS": "Ogg", b"\x1aE\xdf\xa3": "WebM", b"ID3": "MP3", b"fLaC": "FLAC"}


class _Bucket:
    """A token bucket: ``rate`` per second sustained, ``burst`` at once."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _to_mono_s16(chunk: bytes, fmt: AudioFormat, carry: bytearray) -> bytes:
    """Raw PCM (s16le of any channel count, or μ-law) as s16le mono; ``carry`` keeps a split frame."""
    carry += chunk
    if fmt.encoding == "ulaw":
        data = bytes(carry)
        carry.clear()
        return _ulaw_to_s16(data)
    frame = 2 * fmt.channels
    usable = len(carry) - len(carry) % frame
    data = bytes(carry[:usable])
    del carry[:usable]
    if fmt.channels == 1:
        return data
    samples = np.frombuffer(data, dtype="<i2").reshape(-1, fmt.channels).astype(np.int32)
    return samples.mean(axis=1).astype("<i2").tobytes()


def _ulaw_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = ((mantissa << 3) + 0x84) << exponent
    value = magnitude - 0x84
    return np.where(sign != 0, -value, value).astype("<i2")


_ULAW = _ulaw_table()


def _ulaw_to_s16(data: bytes) -> bytes:
    return _ULAW[np.frombuffer(data, dtype=np.uint8)].tobytes()


class PlaygroundOut:
    """:class:`AudioOut` that streams reply audio to the browser and waits as long as it plays there.

    Audio is sent as fast as it is synthesized (the page schedules it gap-free); ``play`` returns
    once the audio's duration has passed since the first frame was sent, so the session knows the
    bot is still talking (barge-in) exactly as long as the person hears it.
    """

    def __init__(self, send_json: Callable[[dict[str, Any]], Any], send_bytes: Callable[[bytes], Any],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send_json = send_json
        self._send_bytes = send_bytes
        self._clock = clock
        self._stop = asyncio.Event()
        self.closed = False

    async def play(self, text: str, chunks: AsyncIterator[bytes], fmt: AudioFormat) -> PlayResult:
        self._stop.clear()
        if fmt.encoding not in ("s16le", "ulaw"):
            await self._send_json({"type": "note", "message": f"the playground cannot play {fmt.encoding} audio; "
                                   "use a PCM output format"})
            async for _ in chunks:  # drain so the synthesizer finishes
                pass
            return PlayResult(0.0, 0.0, False, None)
        started: float | None = None
        total = 0.0
        carry = bytearray()
        interrupted = False
        try:
            await self._send_json({"type": "reply_start", "sample_rate": fmt.sample_rate})
            async with contextlib.aclosing(chunks):  # type: ignore[type-var]
                async for chunk in chunks:
                    if self._stop.is_set() or self.closed:
                        interrupted = True
                        break
                    pcm = _to_mono_s16(chunk, fmt, carry)
                    if not pcm:
                        continue
                    if started is None:
                        started = self._clock()
                    total += len(pcm) / (2 * fmt.sample_rate)
                    await self._send_bytes(pcm)
        except (ConnectionError, asyncio.TimeoutError) as exc:
            # The tab closed, or stopped reading for SEND_TIMEOUT: what was sent is all it heard.
            log.info("playground reply cut short: %s", type(exc).__name__)
            self.closed = True
            interrupted = True
        if started is not None and not interrupted:
            # Wait while the browser plays what it was sent (or until stopped).
            remaining = started + total - self._clock()
            if remaining > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._stop.wait()
            interrupted = self._stop.is_set()
        played = total if started is None else min(total, self._clock() - started)
        if not self.closed:
            with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
                await self._send_json({"type": "stop" if interrupted else "reply_end"})
        return PlayResult(played_seconds=played, total_seconds=total, interrupted=interrupted,
                          first_frame_at=started)

    def stop(self) -> None:
        self._stop.set()


class Playground:
    """The playground's WebSocket handler and its one live connection."""

    def __init__(self, console: Console, *, max_connections: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.max_connections = max_connections
        self.clock = clock
        self._connections: dict[web.WebSocketResponse, VoiceSession] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._closers: set[asyncio.Task[None]] = set()
        self._closed = False

    def count(self) -> int:
        return len(self._connections)

    def sessions(self) -> list[VoiceSession]:
        return list(self._connections.values())

    async def aclose(self) -> None:
        """Close every open tab's socket (their handlers close their sessions)."""
        self._closed = True
        for ws in list(self._connections):
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=10)
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=30.0, compress=False)
        await ws.prepare(request)
        if self._closed or len(self._connections) >= self.max_connections:
            await ws.send_json({"type": "error", "message": "The playground is already open in another tab; "
                                                          "close that one first."})
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"playground busy")
            return ws
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve(ws)
        finally:
            if task is not None:
                self._handlers.discard(task)
        return ws

    async def _serve(self, ws: web.WebSocketResponse) -> None:
        console = self.console
        services = console.services
        send_lock = asyncio.Lock()

        async def send_json(data: dict[str, Any]) -> None:
            if ws.closed:
                return
            async with send_lock:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await ws.send_str(json.dumps(data))

        async def send_bytes(data: bytes) -> None:
            if ws.closed:
                raise ConnectionError("the tab closed")
            async with send_lock:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await ws.send_bytes(data)

        stt, tts, fallback = await console.playground_engines()
        out = PlaygroundOut(send_json, send_bytes, clock=self.clock)
        agent = services.agent
        policy = TurnPolicy(bot_names=(agent.character.name,), mode=VoiceMode.ALWAYS)

        async def notify(text: str) -> None:
            await send_json({"type": "note", "message": text})

        if tts is None:
            from bot.voice.manager import _SilentTTS

            tts = _SilentTTS()
        languages = services.languages
        session = VoiceSession(room="playground", agent=agent, memory=services.memory, stt=stt, tts=tts,
                               out=out, policy=policy, fallback_tts=fallback, sample_rate=SAMPLE_RATE,
                               name_of=lambda _: "you", notify=notify, clock=self.clock,
                               speaker_id=lambda _: "console:playground",
                               # LANGUAGE decides here: a code, or auto (each utterance in its own)
                               choose_language=None if languages is None else
                               (lambda text, heard: languages.choose(PLACE, text, heard=heard)))
        if services.usage is not None:  # counted like any voice (the operator's use is never limited)
            from bot.usage.meter import Who
            from bot.usage.wiring import guard_session

            guard_session(session, services.usage, who_of=lambda _speaker: Who(person="console:playground"),
                          person="console:playground")
        self._apply_language(session)
        console.watch(session)
        pending: set[asyncio.Task[None]] = set()

        def later(coro: Any, name: str) -> None:
            t = asyncio.get_running_loop().create_task(coro, name=name)
            pending.add(t)
            t.add_done_callback(pending.discard)

        heard = session.on_outcome

        def on_turn(turn: PendingTurn) -> None:
            later(send_json({"type": "transcript", "text": turn.text}), "playground-transcript")

        def on_outcome(outcome: str, timing: TurnTiming | None) -> None:
            if heard is not None:
                heard(outcome, timing)
            record = console.turns[-1].to_json(True) if console.turns else {}
            record.update(type="turn", outcome=outcome)
            if timing is not None:
                record.update(text=timing.text, reply=timing.reply)
            # What the reply was said in, and the voice that language gets (the selector's effect).
            language = session.reply_language
            voice = voice_for_language(session.voice, session.tts.name, language, agent.character)
            record.update(language=language, voice=voice.voice_id if voice is not None else None)
            later(send_json(record), "playground-turn")

        session.on_turn = on_turn
        session.on_outcome = on_outcome
        self._connections[ws] = session
        log.info("playground opened")
        try:
            await send_json({"type": "hello", "bot": agent.character.name, "sample_rate": SAMPLE_RATE,
                             "stt": stt.name if stt is not None else None, "tts": tts.name,
                             "max_frame": MAX_AUDIO_FRAME, "language": self._language_state(),
                             "languages": [{"code": code, "name": f"{lang.native} ({code})"}
                                           for code, lang in LANGUAGES.items()]})
            if stt is None:
                await send_json({"type": "note", "message": "No speech recognizer is installed: type below, or "
                                 "pip install 'voicebot[local]' (or set DEEPGRAM_API_KEY) to talk."})
            await self._read(ws, session, send_json)
        except (ConnectionError, asyncio.TimeoutError) as exc:
            log.info("playground connection ended: %s", type(exc).__name__)
        finally:
            out.closed = True
            self._connections.pop(ws, None)
            # aiohttp cancels a handler whose client went away: the closing runs in a task of its
            # own, so a closed tab still ends its session, recognizer stream and synthesis.
            closer = asyncio.get_running_loop().create_task(self._close(ws, session, pending), name="playground-close")
            self._closers.add(closer)
            closer.add_done_callback(self._closers.discard)
            await asyncio.shield(closer)

    def _language_state(self) -> dict[str, Any]:
        """The playground's language: its own setting (None: ``LANGUAGE`` decides) and what applies."""
        languages = self.console.services.languages
        if languages is None:
            return {"setting": None, "mode": "en", "name": language_name("en")}
        setting, _ = languages.store.get(PLACE)
        mode = languages.mode(PLACE)
        name = "auto" if mode == AUTO else language_name(mode)
        return {"setting": setting, "mode": mode, "name": name}

    def _apply_language(self, session: VoiceSession) -> None:
        """Point the recognizer at the playground's language (Deepgram takes it per stream)."""
        services = self.console.services
        stt = session.stt
        if services.languages is None or stt is None or stt.name != "deepgram":
            return
        from bot.providers import deepgram_language

        wanted = deepgram_language(services.settings, services.languages.mode(PLACE))
        if wanted == getattr(stt, "language", None):
            session.stream_options.pop("language", None)
        else:
            session.stream_options["language"] = wanted

    async def _set_language(self, session: VoiceSession, value: object,
                            send_json: Callable[[dict[str, Any]], Any]) -> str | None:
        """The language selector: store the choice, answer with what applies; or a reason to refuse."""
        languages = self.console.services.languages
        if languages is None:
            return "Languages are not available in this process."
        if not isinstance(value, str) or not value.strip() or len(value) > 32:
            return "Choose a language code (de, fr...), auto or default."
        if value.strip().lower() == RESET_LANGUAGE:
            setting = None
        else:
            try:
                setting = parse_setting(value)
            except ValueError:
                return f"Unknown language {value.strip()[:32]!r}; choose a code such as de or ja, auto or default."
        await languages.set(PLACE, setting)
        self._apply_language(session)
        state = self._language_state()
        log.info("playground language: %s", state["mode"])
        await send_json({"type": "language", **state})
        return None

    def _mark_voice(self, session: VoiceSession, vad: WebRtcVad, pending: bytearray, now: float,
                    since: float) -> None:
        """Judge the whole 20 ms frames in ``pending`` (arrived ``now``); the last voiced one is
        marked when it was said: before ``now`` by the audio after it, paced as a microphone records,
        but not before ``since`` (a burst of messages, sent late, says nothing of when it was said)."""
        whole = len(pending) - len(pending) % VAD_FRAME
        last_voiced = None
        for start in range(0, whole, VAD_FRAME):
            frame = bytes(pending[start:start + VAD_FRAME])
            if vad.is_speech(frame):  # every frame goes through the detector, so its state follows the audio
                samples = np.frombuffer(frame, dtype="<i2").astype(np.float32)
                if float(np.sqrt(np.mean(samples * samples))) >= VOICE_RMS:
                    last_voiced = start + VAD_FRAME
        if last_voiced is not None:
            session.mark_voice(PLAYGROUND_USER, at=max(since, now - (len(pending) - last_voiced) / BYTES_PER_SECOND))
        del pending[:whole]

    async def _close(self, ws: web.WebSocketResponse, session: VoiceSession, pending: set[asyncio.Task[None]]) -> None:
        try:
            await session.aclose()
        finally:
            for t in list(pending):
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
            log.info("playground closed")

    async def _read(self, ws: web.WebSocketResponse, session: VoiceSession,
                    send_json: Callable[[dict[str, Any]], Any]) -> None:
        clock = self.clock
        control = _Bucket(CONTROL_RATE, CONTROL_BURST, clock)
        typed = _Bucket(TEXT_RATE, TEXT_BURST, clock)
        talking_since: float | None = None
        received = 0.0  # seconds of audio received in this talk
        strikes = 0
        warned: set[str] = set()
        # The talk button says when the person may be talking, not when they stop: the wait of a
        # turn the recognizer ends while the button is still down runs from their last voiced frame.
        vad = WebRtcVad(SAMPLE_RATE)
        pending_vad = bytearray()
        arrived = 0.0  # when the previous audio message came: what a message holds was said after it

        async def refuse(kind: str, message: str) -> bool:
            """Tell the page once per kind; returns True when the connection should close."""
            nonlocal strikes
            strikes += 1
            if kind not in warned:
                warned.add(kind)
                log.info("playground refused a message: %s", kind)
                await send_json({"type": "error", "message": message})
            return strikes > MAX_STRIKES

        def end_talk() -> None:
            nonlocal talking_since, received
            if talking_since is not None:
                talking_since, received = None, 0.0
                session.on_speech_end(PLAYGROUND_USER)

        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                data: bytes = msg.data
                problem = None
                if talking_since is None:
                    problem = ("idle-audio", "Audio arrived without {\"type\": \"start\"}; press the talk button first.")
                elif data[:4] in _CONTAINERS or data[:3] in _CONTAINERS:
                    kind = _CONTAINERS.get(data[:4]) or _CONTAINERS.get(data[:3])
                    problem = ("container", f"That looks like {kind}; send raw 16-bit PCM, mono, {SAMPLE_RATE} Hz.")
                elif len(data) % 2 or not data:
                    problem = ("odd", "Audio frames must be whole 16-bit samples (an even number of bytes).")
                elif len(data) > MAX_AUDIO_FRAME:
                    problem = ("large", f"Audio frames may be at most {MAX_AUDIO_FRAME} bytes.")
                if problem is None:
                    assert talking_since is not None
                    seconds = len(data) / BYTES_PER_SECOND
                    elapsed = clock() - talking_since
                    if received + seconds > elapsed + AUDIO_BURST_SECONDS:
                        problem = ("fast", "Audio is arriving faster than real time; the extra is dropped.")
                    else:
                        received += seconds
                        session.on_audio(PLAYGROUND_USER, data)
                        pending_vad += data
                        now = clock()
                        self._mark_voice(session, vad, pending_vad, now, max(arrived, talking_since))
                        arrived = now
                        if elapsed > MAX_TALK_SECONDS:
                            end_talk()
                            await send_json({"type": "released", "message": "That was a minute; I'm answering now."})
                if problem is not None and await refuse(*problem):
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too many refused messages")
                    return
            elif msg.type == WSMsgType.TEXT:
                if len(msg.data) > MAX_TEXT_FRAME or not control.take():
                    if await refuse("rate", "Too many messages; slow down."):
                        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too many refused messages")
                        return
                    continue
                try:
                    message = json.loads(msg.data)
                    kind = message.get("type") if isinstance(message, dict) else None
                except ValueError:
                    kind = None
                except RecursionError:  # "[[[[…": the parser recurses once per level
                    if await refuse("nested", "That message is nested too deeply; send flat JSON."):
                        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too many refused messages")
                        return
                    continue
                if kind == "start":
                    if talking_since is None:
                        talking_since, received = clock(), 0.0
                        pending_vad.clear()
                        session.on_speech_start(PLAYGROUND_USER)
                elif kind == "end":
                    end_talk()
                elif kind == "text":
                    text = message.get("text")
                    if not isinstance(text, str) or not text.strip():
                        continue
                    if not typed.take():
                        if await refuse("typing", "One message every couple of seconds, please."):
                            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too many refused messages")
                            return
                        continue
                    session.hear_text(PLAYGROUND_USER, text.strip()[:MAX_TEXT_CHARS])
                elif kind == "ping":
                    await send_json({"type": "pong"})
                elif kind == "language":
                    refusal = await self._set_language(session, message.get("language"), send_json)
                    if refusal is not None:
                        await send_json({"type": "error", "message": refusal})
                elif await refuse("unknown", "Unknown message; see bot/console/playground.py for the protocol."):
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too many refused messages")
                    return
            elif msg.type == WSMsgType.ERROR:
                log.info("playground socket error: %s", ws.exception())
                return
