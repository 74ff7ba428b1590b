"""Loopback providers with fixed, timed behaviour for the latency benchmark.

Unlike the test fakes (which are driven by events so tests never depend on wall-clock speed), these
deliberately behave like providers on a clock, so the benchmark can separate the providers' time from
ours. Each speaks the real wire protocol and the real SDK talks to it.

- Deepgram v1 listen (WebSocket): the final transcript (``speech_final``) arrives ``stt_delay`` after
  the last audio frame received, as endpointing would. ``Finalize`` is deliberately ignored: the
  issue fixes the provider's end-of-turn time at ``stt_delay`` after the end of speech.
- OpenAI-compatible chat completions (SSE): first token ``llm_first_token`` after the request, then
  ``llm_tokens_per_second``.
- ElevenLabs ``/v1/text-to-speech/{voice}/stream``: first audio byte ``tts_first_byte`` after the
  request, then PCM 48 kHz mono at ``tts_speed`` times real time.

All times are ``time.monotonic()``, the clock ``VoiceSession`` and ``audio.playback`` record with, so
provider-side and client-side times of one turn can be subtracted. :class:`ProviderThread` runs the
servers on their own event loop in a thread, so the pipeline under test never delays a provider's
clock (remote providers do not share our event loop either).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

__all__ = [
    "Timings",
    "REPLY_TOKENS",
    "FIRST_SENTENCE_TOKENS",
    "SPEECH_CHARS_PER_SECOND",
    "LLMCall",
    "TimedProviders",
    "ProviderThread",
]

# About 40 tokens; the first sentence is 6 tokens.
REPLY_TOKENS: list[str] = (
    ["Sure", ",", " I", " can", " help", "."]
    + [" The", " meeting", " moved", " to", " Thursday", " at", " three", "."]
    + [" Bring", " the", " notes", " from", " last", " week", ",", " please", "."]
    + [" I", " will", " send", " everyone", " a", " reminder", " tomorrow", " morning", "."]
    + [" Anything", " else", " I", " can", " do", "?"]
)
FIRST_SENTENCE_TOKENS = 6
SPEECH_CHARS_PER_SECOND = 15.0  # how long the fake TTS's audio is for a text
TTS_OUTPUT_FORMAT = "pcm_48000"  # what the fake produces; any other requested format is refused
_TTS_CHUNK = 3840  # 40 ms of 48 kHz mono s16le per write
# A quiet square wave rather than zeros, so "non-silent" checks downstream see audio.
_TONE = b"\x00\x04\x00\xfc" * (_TTS_CHUNK // 4)


@dataclass(frozen=True)
class Timings:
    """The providers' fixed behaviour (seconds, tokens per second, speed factor)."""

    stt_delay: float = 0.300
    llm_first_token: float = 0.200
    llm_tokens_per_second: float = 100.0
    tts_first_byte: float = 0.150
    tts_speed: float = 4.0


@dataclass
class LLMCall:
    """One chat completion as the fake saw it (``time.monotonic()`` times)."""

    requested_at: float
    first_sentence_at: float | None = None  # the first sentence's last token was written
    finished_at: float | None = None
    disconnected: bool = False  # the client went away mid-stream (a stopped reply)


@dataclass
class TimedProviders:
    """The three fakes; ``start()``/``stop()`` on the loop that should serve them."""

    timings: Timings = field(default_factory=Timings)
    transcript: str = "what is the plan for the meeting"
    llm_calls: list[LLMCall] = field(default_factory=list)
    tts_requests: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, text)
    # (last audio frame received, final sent) for each final transcript, monotonic times
    stt_finals: list[tuple[float, float]] = field(default_factory=list)

    @property
    def llm_requests(self) -> list[float]:
        """Monotonic time of each chat completion request."""
        return [c.requested_at for c in self.llm_calls]

    @property
    def llm_first_sentence_at(self) -> list[float]:
        """Monotonic time the first sentence was complete, for each request that got that far."""
        return [c.first_sentence_at for c in self.llm_calls if c.first_sentence_at is not None]

    async def start(self) -> None:
        self._connections: set[asyncio.Task[None]] = set()
        self._ws: Server = await serve(self._deepgram, "127.0.0.1", 0)
        self.deepgram_url = f"ws://127.0.0.1:{self._ws.sockets[0].getsockname()[1]}"  # type: ignore[index]
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/text-to-speech/{voice}/stream", self._tts)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.http_url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self._ws.close()
        await self._ws.wait_closed()
        await self._runner.cleanup()

    # ------------------------------------------------------------------ Deepgram v1 listen

    async def _deepgram(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None
        audio_seconds = 0.0
        last_audio_at = 0.0
        pending: asyncio.Queue[str] = asyncio.Queue()

        def fire() -> None:
            message = {
                "type": "Results", "channel_index": [0, 1], "start": 0.0, "duration": audio_seconds,
                "is_final": True, "speech_final": True, "from_finalize": False,
                "channel": {"alternatives": [{"transcript": self.transcript, "confidence": 0.99, "words": []}]},
                "metadata": {"request_id": str(uuid.uuid4()), "model_uuid": "bench",
                             "model_info": {"name": "bench", "version": "1", "arch": "nova-3"}},
            }
            self.stt_finals.append((last_audio_at, time.monotonic()))
            pending.put_nowait(json.dumps(message))

        async def sender() -> None:
            while True:
                await ws.send(await pending.get())

        send_task = asyncio.create_task(sender(), name="bench-deepgram-send")
        try:
            async for frame in ws:
                if isinstance(frame, bytes):
                    last_audio_at = time.monotonic()
                    # linear16 mono at 16 kHz, as DeepgramSTT opens it for the session.
                    audio_seconds += len(frame) / 32000
                    if timer is not None:
                        timer.cancel()
                    timer = loop.call_later(self.timings.stt_delay, fire)
                elif json.loads(frame).get("type") == "CloseStream":
                    break
        except ConnectionClosed:
            pass  # the client went away without a close handshake: nothing left to answer
        finally:
            if timer is not None:
                timer.cancel()
            send_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await send_task

    # ------------------------------------------------------------------ OpenAI chat completions

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        start = time.monotonic()
        call = LLMCall(requested_at=start)
        self.llm_calls.append(call)
        body = await request.json()
        if body.get("stream") is not True:
            return web.json_response({"error": {"message": "the benchmark fake only streams"}}, status=400)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        step = 1.0 / self.timings.llm_tokens_per_second
        try:
            for i, token in enumerate(REPLY_TOKENS):
                # Paced against the request's start so pacing does not drift.
                due = start + self.timings.llm_first_token + i * step
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
                         "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if i + 1 == FIRST_SENTENCE_TOKENS:
                    call.first_sentence_at = time.monotonic()
            done = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            await response.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            call.disconnected = True  # a stopped reply closes its stream early
        call.finished_at = time.monotonic()
        return response

    # ------------------------------------------------------------------ ElevenLabs stream

    async def _tts(self, request: web.Request) -> web.StreamResponse:
        start = time.monotonic()
        output_format = request.query.get("output_format", "mp3_44100_128")
        body = await request.json()
        text = body.get("text", "")
        self.tts_requests.append((start, text))
        if output_format != TTS_OUTPUT_FORMAT:
            return web.json_response(
                {"detail": {"status": "invalid_output_format",
                            "message": f"the benchmark fake only produces {TTS_OUTPUT_FORMAT}"}},
                status=400,
            )
        seconds = max(0.2, len(text) / SPEECH_CHARS_PER_SECOND)
        total = int(seconds * 48000) * 2
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        await response.prepare(request)
        sent = 0
        try:
            while sent < total:
                due = start + self.timings.tts_first_byte + (sent / 96000) / self.timings.tts_speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                n = min(_TTS_CHUNK, total - sent)
                await response.write(_TONE[:n])
                sent += n
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # a stopped or cancelled utterance closes its stream early
        return response


class ProviderThread:
    """Runs :class:`TimedProviders` on a private event loop in a daemon thread.

    Usage: ``with ProviderThread(timings) as providers: ...`` (``providers.deepgram_url`` and
    ``providers.http_url`` are ready inside). Lists on the providers are appended from that thread;
    read them once the turn that produced them is over.
    """

    def __init__(self, timings: Timings | None = None) -> None:
        self.providers = TimedProviders(timings or Timings())
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-providers", daemon=True)

    def __enter__(self) -> TimedProviders:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.providers.start(), self._loop).result(timeout=30)
        return self.providers

    def __exit__(self, *exc_info: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.providers.stop(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
