"""A loopback caller: plays Twilio's part of a phone call against the bot's own web server.

For tests, benchmarks and ``voicebot simulate --call``. It does what Twilio does, on the real wire
protocols: posts the signed incoming-call webhook (``X-Twilio-Signature`` over ``PUBLIC_URL``), reads
the TwiML, opens the ``<Stream url>`` (rewritten from the public host to the bot's real address, as a
proxy in front would; the upgrade signed, like Twilio's, over the ``wss://`` URL of the TwiML with no
parameters), sends ``connected`` and ``start``, streams audio as base64 μ-law in 20 ms
``media`` frames paced in real time, and plays what the bot sends back on a virtual playout clock:
``media`` queues audio, a ``mark`` is echoed when the audio sent before it would have finished
playing, and ``clear`` drops what is still queued and echoes the pending marks at once (Twilio's
documented behaviour). It also serves the REST ``Calls`` resource the bot hangs up through.

Everything heard is kept, cut where a ``clear`` or the hang-up cut it, so a test can decode it and
check what the caller actually heard.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
import wave
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import soxr
from aiohttp import web
from twilio.request_validator import RequestValidator

from bot.phone.audio import FRAME_BYTES, MULAW_RATE, MULAW_SILENCE, mulaw_decode, mulaw_encode
from bot.phone.service import STATUS_PATH, VOICE_PATH, stream_base

__all__ = ["HeardSegment", "LoopbackCall", "LoopbackTwilio", "CallRefused", "load_wav_8k"]

log = logging.getLogger(__name__)

FRAME_SECONDS = FRAME_BYTES / MULAW_RATE


class CallRefused(Exception):
    """The bot did not connect the call (TwiML without a stream, or the socket was refused)."""

    def __init__(self, message: str, twiml: str = "") -> None:
        super().__init__(message)
        self.twiml = twiml


def load_wav_8k(path: Path) -> bytes:
    """A 16-bit PCM WAV (any rate, mono or stereo) as 8 kHz mono s16le (blocking)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * wav.getsampwidth()}-bit audio; save it as 16-bit PCM WAV")
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype("<i2")
    if rate != MULAW_RATE:
        samples = soxr.resample(samples, rate, MULAW_RATE)
    return np.asarray(samples, dtype="<i2").tobytes()


@dataclass
class HeardSegment:
    """A piece of the bot's audio on the caller's playout timeline (loop clock seconds)."""

    start: float
    mulaw: bytes

    @property
    def end(self) -> float:
        return self.start + len(self.mulaw) / MULAW_RATE


@dataclass
class LoopbackCall:
    """One call in progress (made by :meth:`LoopbackTwilio.call`)."""

    twilio: LoopbackTwilio
    call_sid: str
    caller: str
    stream_sid: str
    twiml: str
    ws: aiohttp.ClientWebSocketResponse | None = None
    segments: list[HeardSegment] = field(default_factory=list)
    # The bot's marks echoed back: ``marks_echoed`` the one ending each utterance (``utt-N``),
    # ``echoes`` every mark (progress marks ``utt-N.K`` too) with the μ-law bytes received before it.
    marks_echoed: list[str] = field(default_factory=list)
    echoes: list[tuple[str, int]] = field(default_factory=list)
    bytes_received: int = 0
    clears: int = 0
    media_received: int = 0
    sent_frames: int = 0
    speech_sent_until: float | None = None  # loop time the last frame of the latest speech was sent
    closed_code: int | None = None
    hung_up_by: str = ""  # "caller" or "bot"
    _playout_end: float = 0.0
    _pending_marks: dict[str, tuple[asyncio.TimerHandle, int]] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _sequence: int = 0

    # ---- what was heard

    def heard_mulaw(self) -> bytes:
        return b"".join(s.mulaw for s in self.segments)

    def played(self) -> int:
        """μ-law bytes played so far on the playout clock (what was received is queued ahead of it)."""
        now = asyncio.get_running_loop().time()
        return sum(min(len(s.mulaw), max(0, int((now - s.start) * MULAW_RATE))) for s in self.segments)

    def heard_pcm(self) -> bytes:
        """Everything heard, decoded to 8 kHz s16le (gaps not kept)."""
        return mulaw_decode(self.heard_mulaw())

    def utterances(self, gap: float = 0.15) -> list[list[HeardSegment]]:
        """Heard segments grouped into utterances (a pause longer than ``gap`` starts a new one)."""
        groups: list[list[HeardSegment]] = []
        for seg in self.segments:
            if groups and seg.start - groups[-1][-1].end <= gap:
                groups[-1].append(seg)
            else:
                groups.append([seg])
        return groups

    @property
    def ended(self) -> bool:
        return self.ws is None or self.ws.closed

    # ---- sending

    async def _send(self, message: dict[str, Any]) -> None:
        if self.ws is None or self.ws.closed:
            raise ConnectionResetError("the call is over")
        self._sequence += 1
        message.setdefault("sequenceNumber", str(self._sequence))
        await self.ws.send_str(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        """Send a frame as is (tests of bad input)."""
        assert self.ws is not None
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def send_media(self, mulaw: bytes) -> None:
        await self._send({"event": "media", "streamSid": self.stream_sid,
                          "media": {"track": "inbound", "chunk": str(self.sent_frames + 1),
                                    "timestamp": str(int(self.sent_frames * FRAME_SECONDS * 1000)),
                                    "payload": base64.b64encode(mulaw).decode("ascii")}})
        self.sent_frames += 1

    async def speak_pcm(self, pcm8k: bytes, *, trailing_silence: float = 1.0) -> None:
        """Say 8 kHz s16le PCM in real time (20 ms frames), then ``trailing_silence`` seconds of silence.

        Twilio sends silence when the caller is quiet, so the bot's VAD, not a packet gap, ends speech.
        """
        mulaw = mulaw_encode(pcm8k[: len(pcm8k) - len(pcm8k) % 2])
        frames = [mulaw[i:i + FRAME_BYTES].ljust(FRAME_BYTES, bytes([MULAW_SILENCE]))
                  for i in range(0, len(mulaw), FRAME_BYTES)]
        await self._stream(frames)
        self.speech_sent_until = asyncio.get_running_loop().time()
        await self.silence(trailing_silence)

    async def silence(self, seconds: float) -> None:
        await self._stream([bytes([MULAW_SILENCE]) * FRAME_BYTES] * max(0, round(seconds / FRAME_SECONDS)))

    async def _stream(self, frames: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, frame in enumerate(frames):
            # Real-time pacing: this is the phone line's clock, not a wait for the bot.
            delay = start + i * FRAME_SECONDS - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.ended:
                return
            await self.send_media(frame)

    async def dtmf(self, digit: str) -> None:
        await self._send({"event": "dtmf", "streamSid": self.stream_sid,
                          "dtmf": {"track": "inbound_track", "digit": digit}})

    async def hang_up(self) -> None:
        """The caller hangs up: what is still queued is never heard; ``stop``, then the socket closes."""
        self._cut(asyncio.get_running_loop().time())
        self.hung_up_by = self.hung_up_by or "caller"
        with contextlib.suppress(ConnectionError):
            await self._send({"event": "stop", "streamSid": self.stream_sid,
                              "stop": {"accountSid": self.twilio.account_sid, "callSid": self.call_sid}})
        await self.close()

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        for handle, _ in self._pending_marks.values():
            handle.cancel()
        self._pending_marks.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- receiving

    async def _read(self) -> None:
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    self.twilio.problems.append(f"bot sent a {msg.type.name.lower()} frame (Twilio error 31950)")
                    continue
                data = json.loads(msg.data)
                event = data.get("event")
                if data.get("streamSid") != self.stream_sid:
                    self.twilio.problems.append(f"bot sent {event} with a wrong streamSid (Twilio error 31951)")
                    continue
                now = loop.time()
                if event == "media":
                    self.media_received += 1
                    audio = base64.b64decode(data["media"]["payload"])
                    self.bytes_received += len(audio)
                    start = max(now, self._playout_end)
                    self.segments.append(HeardSegment(start, audio))
                    self._playout_end = start + len(audio) / MULAW_RATE
                elif event == "mark":
                    name = str(data["mark"]["name"])
                    if self.twilio.echo_marks:
                        handle = loop.call_at(max(now, self._playout_end), self._echo, name)
                        self._pending_marks[name] = (handle, self.bytes_received)
                elif event == "clear":
                    self.clears += 1
                    self._cut(now)
                    for name in list(self._pending_marks):
                        handle, _ = self._pending_marks[name]
                        handle.cancel()
                        self._echo(name)
                else:
                    self.twilio.problems.append(f"bot sent an unknown event {event!r} (Twilio error 31951)")
                async with self._changed:
                    self._changed.notify_all()
        finally:
            self.closed_code = self.ws.close_code
            self.hung_up_by = self.hung_up_by or "bot"
            self._cut(loop.time())
            async with self._changed:
                self._changed.notify_all()

    def _cut(self, at: float) -> None:
        """Audio not played by ``at`` is never heard."""
        kept: list[HeardSegment] = []
        for seg in self.segments:
            if seg.start >= at:
                continue
            if seg.end > at:
                seg = HeardSegment(seg.start, seg.mulaw[: int((at - seg.start) * MULAW_RATE)])
            kept.append(seg)
        self.segments = kept
        self._playout_end = min(self._playout_end, at)

    def _echo(self, name: str) -> None:
        _, position = self._pending_marks.pop(name)
        self.echoes.append((name, position))
        if "." not in name:
            self.marks_echoed.append(name)
        task = asyncio.get_running_loop().create_task(self._send_mark(name), name=f"caller-mark-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_mark(self, name: str) -> None:
        with contextlib.suppress(ConnectionError):
            await self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds: re-checked on every message and every 50 ms (for
        predicates on the playout clock); the timeout only guards failures."""
        async with asyncio.timeout(timeout):
            while not predicate():
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await self._changed.wait()

    async def wait_quiet(self, timeout: float = 30.0) -> None:
        """Wait until everything the bot sent has played and its marks were echoed."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not self.ended and (self._pending_marks or self._playout_end > loop.time()):
                delay = max(0.02, self._playout_end - loop.time())
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._changed.wait()


class LoopbackTwilio:
    """Twilio's side for one bot web server: places calls and serves the REST ``Calls`` resource.

    ``bot_url`` is where the bot really listens (``http://127.0.0.1:PORT``); ``public_url`` is its
    ``PUBLIC_URL`` (what Twilio signs and what the TwiML's stream URL is built from).
    """

    def __init__(self, *, bot_url: str, public_url: str, account_sid: str, auth_token: str,
                 number: str = "+15550001111") -> None:
        self.bot_url = bot_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.number = number
        self.hangups: list[str] = []  # CallSids the bot hung up through REST
        self.problems: list[str] = []  # protocol mistakes the bot made, in Twilio's terms
        self.calls: list[LoopbackCall] = []
        self.echo_marks = True  # False: a Twilio that never echoes marks (tests)
        self.api_base = ""
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LoopbackTwilio:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> str:
        """Serve the REST API on 127.0.0.1; returns its base URL (the bot's ``TWILIO_API_BASE``)."""
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Calls/{call_sid}.json", self._update_call)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.api_base = f"http://{host}:{port}"
        self._http = aiohttp.ClientSession()
        return self.api_base

    async def stop(self) -> None:
        for call in self.calls:
            await call.close()
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def set_bot_url(self, bot_url: str) -> None:
        self.bot_url = bot_url.rstrip("/")

    # ---- webhooks, signed like Twilio's

    def sign(self, url: str, form: dict[str, str]) -> str:
        return RequestValidator(self.auth_token).compute_signature(url, form)

    async def post_webhook(self, path: str, form: dict[str, str], *, signature: str | None = None) -> tuple[int, str]:
        assert self._http is not None
        sig = self.sign(self.public_url + path, form) if signature is None else signature
        async with self._http.post(self.bot_url + path, data=form, headers={"X-Twilio-Signature": sig}) as resp:
            return resp.status, await resp.text()

    def call_form(self, call_sid: str, caller: str) -> dict[str, str]:
        return {"CallSid": call_sid, "AccountSid": self.account_sid, "From": caller, "To": self.number,
                "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}

    async def ring(self, caller: str = "+15557654321", *, call_sid: str | None = None) -> tuple[str, str]:
        """Post the incoming-call webhook; returns (CallSid, TwiML). Raises on a non-200 answer."""
        call_sid = call_sid or "CA" + secrets.token_hex(16)
        status, body = await self.post_webhook(VOICE_PATH, self.call_form(call_sid, caller))
        if status != 200:
            raise CallRefused(f"the voice webhook answered {status}: {body[:200]}")
        return call_sid, body

    def stream_url(self, twiml: str) -> str | None:
        """The ``<Connect><Stream url>`` of ``twiml``, pointed at the bot's real address."""
        root = ET.fromstring(twiml)
        stream = root.find("./Connect/Stream")
        if stream is None:
            return None
        url = stream.get("url", "")
        public, real = stream_base(self.public_url), stream_base(self.bot_url)
        return real + url[len(public):] if url.startswith(public) else url

    def public_stream_url(self, url: str) -> str:
        """``url`` (at the bot's real address) as the TwiML named it: what Twilio signs."""
        public, real = stream_base(self.public_url), stream_base(self.bot_url)
        return public + url[len(real):] if url.startswith(real) else url

    async def open_stream(self, url: str, call_sid: str, caller: str, *, start_call_sid: str | None = None,
                          send_start: bool = True, signature: str | None = None) -> LoopbackCall:
        """Open the media socket and send ``connected`` and ``start`` (``start_call_sid`` lies about
        the call; ``signature`` replaces Twilio's signature of the upgrade)."""
        assert self._http is not None
        if signature is None:
            signature = self.sign(self.public_stream_url(url), {})
        ws = await self._http.ws_connect(url, headers={"X-Twilio-Signature": signature},
                                         max_msg_size=4 * 1024 * 1024)
        call = LoopbackCall(self, call_sid, caller, "MZ" + secrets.token_hex(16), "", ws)
        self.calls.append(call)
        call._reader = asyncio.get_running_loop().create_task(call._read(), name=f"caller-read-{call_sid}")
        await call._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        if send_start:
            await call._send({
                "event": "start", "streamSid": call.stream_sid,
                "start": {"accountSid": self.account_sid, "streamSid": call.stream_sid,
                          "callSid": start_call_sid or call_sid, "tracks": ["inbound"], "customParameters": {},
                          "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": MULAW_RATE, "channels": 1}},
            })
        return call

    async def call(self, caller: str = "+15557654321") -> LoopbackCall:
        """Ring the bot and connect the stream its TwiML names."""
        call_sid, twiml = await self.ring(caller)
        url = self.stream_url(twiml)
        if url is None:
            raise CallRefused("the bot answered without a <Connect><Stream>", twiml)
        try:
            call = await self.open_stream(url, call_sid, caller)
        except aiohttp.WSServerHandshakeError as exc:
            raise CallRefused(f"the media socket was refused ({exc.status})", twiml) from None
        call.twiml = twiml
        return call

    async def status_callback(self, call_sid: str, status: str, *, duration: int | None = None) -> int:
        form = {"CallSid": call_sid, "AccountSid": self.account_sid, "CallStatus": status}
        if duration is not None:
            form["CallDuration"] = str(duration)
        code, _ = await self.post_webhook(STATUS_PATH, form)
        return code

    # ---- REST: the bot hangs up

    async def _update_call(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("Authorization") != expected or request.match_info["sid"] != self.account_sid:
            return web.json_response({"code": 20003, "message": "Authenticate", "more_info": None, "status": 401},
                                     status=401)
        form = await request.post()
        call_sid = request.match_info["call_sid"]
        call = next((c for c in self.calls if c.call_sid == call_sid), None)
        if call is None:
            return web.json_response({"code": 20404, "message": "The requested resource was not found",
                                      "more_info": None, "status": 404}, status=404)
        if form.get("Status") == "completed":
            self.hangups.append(call_sid)
            call.hung_up_by = call.hung_up_by or "bot"
            # Twilio ends the stream when the call ends: stop, then the socket closes.
            with contextlib.suppress(ConnectionError):
                await call._send({"event": "stop", "streamSid": call.stream_sid,
                                  "stop": {"accountSid": self.account_sid, "callSid": call_sid}})
        now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        return web.json_response({
            "sid": call_sid, "account_sid": self.account_sid, "status": "completed", "to": self.number,
            "from": call.caller, "direction": "inbound", "date_created": now, "date_updated": now,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{call_sid}.json", "subresource_uris": {},
        })
