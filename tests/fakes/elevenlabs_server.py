"""A loopback ElevenLabs API the real ``AsyncElevenLabs`` SDK talks to (base_url=server.url).

Speaks the wire protocol the SDK uses (elevenlabs 2.78.0): ``POST /v1/text-to-speech/{voice_id}/stream``
with ``?output_format=…``, header ``xi-api-key``, JSON body ``{"text", "model_id", "voice_settings"?…}``,
answered with a chunked raw-PCM body; ``GET /v2/voices`` and ``GET /v1/voices`` for voice listing.
Every request is validated and recorded. Tests script what the next requests do (fail with a
given error shape, stall, stream only when released, die mid-stream) with asyncio primitives,
never with sleeps.

Timing like the service (for the latency benchmark, never for tests): ``first_audio_delay``
before the first audio, then ``speed`` times real time; ``connect_delay`` before the first answer
on each new connection (a TLS handshake). ``streams`` records each stream's request and first byte.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from tests.fakes.connection_cost import connection_cost_middleware

__all__ = [
    "FakeElevenLabs",
    "TTSRequest",
    "Fail",
    "Stall",
    "Paced",
    "DieAfter",
    "error_body",
    "tone_pcm",
    "OUTPUT_FORMATS",
]

OUTPUT_FORMATS = {
    "mp3_22050_32", "mp3_24000_48", "mp3_44100_32", "mp3_44100_64", "mp3_44100_96", "mp3_44100_128",
    "mp3_44100_192", "pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_32000", "pcm_44100",
    "pcm_48000", "ulaw_8000", "alaw_8000",
}
DEFAULT_VOICES = [
    {"voice_id": "JBFqnCBsd6RMkjVDRZzb", "name": "George", "category": "premade",
     "labels": {"accent": "british", "gender": "male"}, "description": "Warm storyteller"},
    {"voice_id": "21m00Tcm4TlvDq8ikWAM", "name": "Rachel", "category": "premade", "labels": {}, "description": ""},
]


def error_body(code: str, message: str = "", *, shape: str = "status") -> dict[str, Any]:
    """An ElevenLabs error body: ``shape="status"`` (older) or ``"code"`` (newer, with type/request_id)."""
    message = message or code.replace("_", " ")
    if shape == "status":
        return {"detail": {"status": code, "message": message}}
    return {"detail": {"type": "error", "code": code, "message": message, "request_id": "req_fake", "param": None}}


def tone_pcm(seconds: float, rate: int = 48000, freq: float = 440.0) -> bytes:
    """A non-silent s16le mono sine tone (deterministic test audio)."""
    n = int(seconds * rate)
    return (8000 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype("<i2").tobytes()


@dataclass
class TTSRequest:
    """One TTS request as the server received it."""

    voice_id: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Fail:
    """Answer with ``status`` and JSON ``body`` (or a non-JSON text body when ``body`` is a str)."""

    status: int
    body: dict[str, Any] | str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stall:
    """Accept the request and send nothing until ``release`` is set (or the server closes)."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Paced:
    """Send one chunk per ``allow()``; ``finish()`` lets the rest through. ``arrived`` is set on request."""

    credits: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(0))
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _unlimited: bool = False

    def allow(self, chunks: int = 1) -> None:
        for _ in range(chunks):
            self.credits.release()

    def finish(self) -> None:
        self._unlimited = True
        self.credits.release()


@dataclass
class DieAfter:
    """Send ``nbytes`` of audio, then drop the connection without finishing the chunked body."""

    nbytes: int
    sent: asyncio.Event = field(default_factory=asyncio.Event)


Behaviour = Fail | Stall | Paced | DieAfter


class FakeElevenLabs:
    """The fake server. Use ``async with FakeElevenLabs() as fake:`` then ``fake.url``.

    ``audio_for(text, output_format)`` decides the audio (default: a tone whose length is 50 ms per
    character, at the requested PCM rate); ``script(*behaviours)`` queues behaviours for the next
    TTS requests (one each; afterwards requests succeed normally).
    """

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        voices: list[dict[str, Any]] | None = None,
        audio_for: Callable[[str, str], bytes] | None = None,
        chunk_bytes: int = 4096,
        first_audio_delay: float = 0.0,
        speed: float | None = None,
        connect_delay: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.first_audio_delay = first_audio_delay
        self.speed = speed
        self.connect_delay = connect_delay
        self.new_connections = [0]
        # (requested at, first audio byte written at or None), time.monotonic()
        self.streams: list[list[float | None]] = []
        self.voices = list(DEFAULT_VOICES if voices is None else voices)
        self.audio_for = audio_for or self._default_audio
        self.chunk_bytes = chunk_bytes
        self.requests: list[TTSRequest] = []
        self.voice_requests: list[tuple[str, dict[str, str]]] = []
        self.problems: list[str] = []  # protocol violations seen (tests assert it stays empty)
        self._script: deque[Behaviour] = deque()
        self._runner: web.AppRunner | None = None
        self._blocked: list[Stall | Paced] = []
        self.url = ""

    @staticmethod
    def _default_audio(text: str, output_format: str) -> bytes:
        if output_format == "ulaw_8000":  # what a phone call asks for: G.711 μ-law, one byte a sample
            from bot.phone.audio import mulaw_encode

            return mulaw_encode(tone_pcm(0.05 * len(text), 8000))
        rate = int(output_format.split("_")[1]) if output_format.startswith("pcm_") else 48000
        return tone_pcm(0.05 * len(text), rate)

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next TTS requests, in order."""
        self._script.extend(behaviours)

    async def __aenter__(self) -> FakeElevenLabs:
        app = web.Application(middlewares=[connection_cost_middleware(self.connect_delay, self.new_connections)])
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._tts_stream)
        app.router.add_get("/v2/voices", self._voices_v2)
        app.router.add_get("/v1/voices", self._voices_v1)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Let blocked handlers finish so the runner's shutdown does not wait for them.
        for behaviour in self._blocked:
            if isinstance(behaviour, Stall):
                behaviour.release.set()
            else:
                behaviour.finish()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- handlers --------------------------------------------------------------------------------

    def _auth(self, request: web.Request) -> web.Response | None:
        if request.headers.get("xi-api-key") != self.api_key:
            return web.json_response(error_body("invalid_api_key", "Invalid API key"), status=401)
        return None

    async def _tts_stream(self, request: web.Request) -> web.StreamResponse:
        requested_at = time.monotonic()
        voice_id = request.match_info["voice_id"]
        try:
            body = await request.json()
        except json.JSONDecodeError:
            self.problems.append("body is not JSON")
            return web.json_response({"detail": [{"msg": "invalid json"}]}, status=422)
        record = TTSRequest(voice_id, dict(request.query), dict(request.headers), body)
        self.requests.append(record)
        if (denied := self._auth(request)) is not None:
            return denied
        output_format = request.query.get("output_format", "mp3_44100_128")
        if output_format not in OUTPUT_FORMATS:
            self.problems.append(f"bad output_format {output_format}")
            return web.json_response({"detail": [{"msg": "bad output_format"}]}, status=422)
        if not request.headers.get("content-type", "").startswith("application/json"):
            self.problems.append("content-type is not JSON")
        if not isinstance(body.get("text"), str) or not body["text"]:
            self.problems.append("missing text")
            return web.json_response({"detail": [{"msg": "text required"}]}, status=422)
        settings = body.get("voice_settings")
        if settings is not None and (
            not isinstance(settings, dict) or set(settings) - {"stability", "similarity_boost", "style", "use_speaker_boost", "speed"}
        ):
            self.problems.append(f"bad voice_settings {settings!r}")
        if voice_id not in {v["voice_id"] for v in self.voices}:
            return web.json_response(
                error_body("voice_not_found", f"A voice with voice_id {voice_id} was not found."), status=404
            )

        behaviour = self._script.popleft() if self._script else None
        if isinstance(behaviour, Fail):
            if isinstance(behaviour.body, str):
                return web.Response(status=behaviour.status, text=behaviour.body, headers=behaviour.headers)
            return web.json_response(behaviour.body, status=behaviour.status, headers=behaviour.headers)
        if isinstance(behaviour, Stall):
            self._blocked.append(behaviour)
            behaviour.arrived.set()
            await behaviour.release.wait()

        audio = self.audio_for(body["text"], output_format)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if isinstance(behaviour, DieAfter):
            await response.write(audio[: behaviour.nbytes])
            behaviour.sent.set()
            # Drop the TCP connection mid-body: the client sees an incomplete chunked response.
            assert request.transport is not None
            request.transport.abort()
            return response
        if isinstance(behaviour, Paced):
            self._blocked.append(behaviour)
            behaviour.arrived.set()
        timing: list[float | None] = [requested_at, None]
        self.streams.append(timing)
        rate = int(output_format.split("_")[1]) if output_format.startswith("pcm_") else 48000
        bytes_per_second = 8000 if output_format == "ulaw_8000" else 2 * rate
        for offset in range(0, len(audio), self.chunk_bytes):
            if isinstance(behaviour, Paced) and not behaviour._unlimited:
                await behaviour.credits.acquire()
            await self._pace(requested_at, offset / bytes_per_second)
            try:
                await response.write(audio[offset : offset + self.chunk_bytes])
            except (ConnectionResetError, ConnectionError):
                return response  # the client stopped listening (a cancelled sentence)
            if timing[1] is None:
                timing[1] = time.monotonic()
            if isinstance(behaviour, Paced):
                behaviour.sent += 1
        try:
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            return response
        if isinstance(behaviour, Paced):
            behaviour.done.set()
        return response

    async def _pace(self, start: float, audio_seconds: float) -> None:
        """The service's timing: first audio ``first_audio_delay`` after the request, then
        ``speed`` times real time (paced against the request's start so it does not drift)."""
        if not self.first_audio_delay and not self.speed:
            return
        due = start + self.first_audio_delay + (audio_seconds / self.speed if self.speed else 0.0)
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the provider's own clock, not synchronisation

    async def _voices_v2(self, request: web.Request) -> web.Response:
        self.voice_requests.append(("/v2/voices", dict(request.query)))
        if (denied := self._auth(request)) is not None:
            return denied
        page_size = int(request.query.get("page_size", "10"))
        if not 1 <= page_size <= 100:
            self.problems.append(f"page_size {page_size} out of range")
        start = int(request.query.get("next_page_token", "0") or 0)
        page = self.voices[start : start + page_size]
        more = start + page_size < len(self.voices)
        return web.json_response(
            {"voices": page, "has_more": more, "total_count": len(self.voices),
             "next_page_token": str(start + page_size) if more else None}
        )

    async def _voices_v1(self, request: web.Request) -> web.Response:
        self.voice_requests.append(("/v1/voices", dict(request.query)))
        if (denied := self._auth(request)) is not None:
            return denied
        return web.json_response({"voices": self.voices})
