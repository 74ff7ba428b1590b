"""A loopback Deepgram live-transcription server for tests (v1 ``/v1/listen`` and Flux ``/v2/listen``).

The real ``AsyncDeepgramClient`` connects to it through a custom ``DeepgramClientEnvironment``.
It checks ``Authorization: Token <key>``, parses the query string, receives binary audio and the
JSON control messages, and answers with the message shapes Deepgram sends.

"Recognition" is a test-controlled rule on the audio itself: audio is cut into 20 ms frames; a frame
whose samples all equal one non-zero value ``v`` is speech of the word ``vocabulary[v]`` (a run of
such frames is one word), anything else is silence. ``word_audio`` builds such audio.

Speech mode (for the latency benchmark): with ``script=SpeechScript()`` a frame is speech when it
is loud enough (:func:`is_voiced_frame`, so real speech such as espeak-ng's works) and the words are
the script's: the benchmark says what the person is about to say, with how many voiced frames each
part takes, and words appear as that much voiced audio arrives. Endpointing, ``UtteranceEnd`` and
``Finalize`` then behave as on the service: on silence *in the audio received*, and a ``Finalize``
is answered after ``finalize_delay``. ``connect_delay`` holds every new handshake (a TLS handshake
over the internet); ``finals`` records when each final was asked for (a Finalize received, or the
last voiced frame before an endpoint) and sent.

Scripting switches: ``reject_status`` (answer handshakes with an HTTP status), ``drop_after_bytes``
(close a connection with 1011 ``NET-0001`` once it has received that much audio),
``drop_on_control`` (close with 1011 on receiving that control message type, once),
``drop_on_connect`` (close that many new connections at once with 1011), ``send_unknown``
(send a message of an unknown type first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

log = logging.getLogger(__name__)

FRAME_SECONDS = 0.02
NET_0001 = json.dumps(
    {"err_code": "NET-0001", "err_msg": "No audio or text message received within the timeout window."}
)


def word_audio(values: Sequence[int], *, frames_per_word: int = 10, gap_frames: int = 0, sample_rate: int = 16000) -> bytes:
    """Audio the fake recognises: each value is a word of ``frames_per_word`` frames; 0 is silence."""
    frame_samples = int(sample_rate * FRAME_SECONDS)
    out = bytearray()
    for value in values:
        out += value.to_bytes(2, "little", signed=True) * frame_samples * frames_per_word
        out += bytes(2 * frame_samples * gap_frames)
    return bytes(out)


def silence(frames: int, *, sample_rate: int = 16000) -> bytes:
    """``frames`` frames of 20 ms digital silence."""
    return bytes(2 * int(sample_rate * FRAME_SECONDS) * frames)


VOICED_RMS = 300.0  # int16 RMS above which a 20 ms frame counts as speech in speech mode


def is_voiced_frame(frame: bytes) -> bool:
    """Whether one frame of s16le mono is speech by the speech mode's rule (loud enough)."""
    samples = np.frombuffer(frame[: len(frame) - len(frame) % 2], dtype="<i2").astype(np.float32)
    return bool(samples.size) and float(np.sqrt(np.mean(samples * samples))) > VOICED_RMS


class SpeechScript:
    """What the person says next, for speech mode: parts of ``(text, voiced_frames)``.

    A word is recognised once the voiced audio received reaches its end (the part's voiced frames
    are shared out by word length). A final that comes when most of a part has been heard completes
    the part (the recogniser has the whole phrase by then). Thread-safe: the benchmark sets it from
    its own loop while the server's loop reads it.
    """

    def __init__(self, near_end: float = 0.6) -> None:
        self._lock = threading.Lock()
        self._near_end = near_end
        self._words: list[tuple[str, int, int, int]] = []  # (word, voiced frames to reveal, part start, part end)
        self._progress = 0
        self._revealed = 0
        self.language: str | None = None

    def say(self, parts: Sequence[tuple[str, int]], *, language: str | None = None) -> None:
        """The next utterance (forgets whatever of the previous one was not heard).

        ``language``: what the real service would detect in ``language=multi`` mode (reported in
        ``languages`` and on each word, as Deepgram does); ignored for a fixed language.
        """
        self.language = language
        words: list[tuple[str, int, int, int]] = []
        base = 0
        for text, frames in parts:
            tokens = text.split()
            total = sum(len(t) for t in tokens) or 1
            done = 0
            for token in tokens:
                done += len(token)
                words.append((token, base + max(1, round(frames * done / total)), base, base + frames))
            base += frames
        with self._lock:
            self._words, self._progress, self._revealed = words, 0, 0

    def advance(self) -> list[str]:
        """One more voiced frame arrived; the words it completes."""
        with self._lock:
            self._progress += 1
            return self._reveal()

    def complete_part(self) -> list[str]:
        """A final is due: when most of the current part was heard, the rest of its words."""
        with self._lock:
            if self._revealed < len(self._words):
                _, _, start, end = self._words[self._revealed]
                if self._progress >= start + self._near_end * (end - start):
                    self._progress = max(self._progress, end)
            return self._reveal()

    def _reveal(self) -> list[str]:
        out: list[str] = []
        while self._revealed < len(self._words) and self._words[self._revealed][1] <= self._progress:
            out.append(self._words[self._revealed][0])
            self._revealed += 1
        return out


@dataclass
class FakeWord:
    text: str
    start: float
    end: float


@dataclass
class FakeConnection:
    """What one accepted socket saw and said."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    audio: bytearray = field(default_factory=bytearray)
    control: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False
    close_code: int | None = None

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def control_types(self) -> list[str]:
        return [str(m.get("type")) for m in self.control]

    def sent_types(self) -> list[str]:
        return [str(m.get("type")) for m in self.sent]


class _Recognizer:
    """Per-connection speech state on the connection's own audio clock."""

    def linear(self, data: bytes) -> bytes:
        """The received bytes as s16le (μ-law decoded when the connection asked for it)."""
        if not self.mulaw:
            return data
        from bot.phone.audio import mulaw_decode

        return mulaw_decode(data)

    def __init__(self, conn: FakeConnection, vocabulary: Mapping[int, str]) -> None:
        self.conn = conn
        self.vocabulary = vocabulary
        rate = int(conn.param("sample_rate") or 16000)
        self.frame_bytes = 2 * int(rate * FRAME_SECONDS)
        # encoding=mulaw (a phone call's audio): the service decodes G.711; so does the fake.
        self.mulaw = conn.param("encoding") == "mulaw"
        self.buffer = bytearray()
        self.frames = 0
        self.words: list[FakeWord] = []  # since the last final (v1) / in the current turn (v2)
        self.current: int | None = None  # value of the word being spoken
        self.segment_start = 0.0  # v1: end of the last final; v2: start of the turn window
        self.silent_frames = 0
        self.endpointed = True
        self.utterance_ended = True
        self.last_word_end = 0.0
        self.turn_index = 0
        self.in_turn = False  # Flux: a turn has started and not yet ended

    @property
    def now(self) -> float:
        return round(self.frames * FRAME_SECONDS, 6)

    def before_final(self) -> None:
        """A final is about to be sent (speech mode completes a nearly heard phrase)."""

    def text_of(self, words: Sequence[FakeWord], is_final: bool) -> str:
        text = " ".join(w.text for w in words)
        if self.conn.param("smart_format") == "true":
            return text.capitalize() + ("." if text and is_final else "")
        return text

    def feed(self, data: bytes) -> Iterator[tuple[str, Any]]:
        """Process whole frames, yielding events as they happen so replies see the state of that
        moment: ("speech_started", t), ("silence", ms of silence so far), and ("speech", None) once
        at the end of a message that contained speech."""
        self.buffer += data
        new_speech = False
        while len(self.buffer) >= self.frame_bytes:
            frame = bytes(self.buffer[: self.frame_bytes])
            del self.buffer[: self.frame_bytes]
            value = int.from_bytes(frame[:2], "little", signed=True)
            speech = value != 0 and frame == frame[:2] * (len(frame) // 2)
            start = self.now
            self.frames += 1
            if speech:
                if self.endpointed:
                    self.endpointed = False
                    yield ("speech_started", start)
                if self.current != value or self.silent_frames or not self.words:
                    self.words.append(FakeWord(self.vocabulary.get(value, f"w{value}"), start, self.now))
                else:
                    self.words[-1].end = self.now
                self.current = value
                self.silent_frames = 0
                self.utterance_ended = False
                self.in_turn = True
                self.last_word_end = self.now
                new_speech = True
            else:
                self.current = None
                self.silent_frames += 1
                yield ("silence", self.silent_frames * FRAME_SECONDS * 1000)
        if new_speech:
            yield ("speech", None)


class _SpeechRecognizer(_Recognizer):
    """Speech mode: loud frames are speech, words come from the :class:`SpeechScript`."""

    def __init__(self, conn: FakeConnection, script: SpeechScript) -> None:
        super().__init__(conn, {})
        self.script = script
        self.voiced_at = 0.0  # monotonic time the last voiced frame arrived

    def _add(self, words: list[str], start: float) -> None:
        for word in words:
            self.words.append(FakeWord(word, start, self.now))

    def feed(self, data: bytes) -> Iterator[tuple[str, Any]]:
        self.buffer += data
        new_words = False
        while len(self.buffer) >= self.frame_bytes:
            frame = bytes(self.buffer[: self.frame_bytes])
            del self.buffer[: self.frame_bytes]
            start = self.now
            self.frames += 1
            if is_voiced_frame(frame):
                self.voiced_at = time.monotonic()
                if self.endpointed:
                    self.endpointed = False
                    yield ("speech_started", start)
                words = self.script.advance()
                self._add(words, start)
                new_words = new_words or bool(words)
                self.silent_frames = 0
                self.utterance_ended = False
                self.in_turn = True
                self.last_word_end = self.now
            else:
                self.silent_frames += 1
                yield ("silence", self.silent_frames * FRAME_SECONDS * 1000)
        if new_words:
            yield ("speech", None)  # interims come as words are recognised

    def before_final(self) -> None:
        # Inside the audio the final covers (a final takes words that start before its end).
        self._add(self.script.complete_part(), max(self.segment_start, self.now - FRAME_SECONDS))

    def text_of(self, words: Sequence[FakeWord], is_final: bool) -> str:
        return " ".join(w.text for w in words)  # the script's own capitals and punctuation


class FakeDeepgram:
    """Loopback Deepgram. Use as ``async with FakeDeepgram(...) as dg:`` and point the engine at
    ``dg.http_url``. Every handshake (accepted or not) is counted in ``handshakes``; accepted
    sockets are recorded in ``connections``."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        vocabulary: Mapping[int, str] | None = None,
        reject_status: int | None = None,
        drop_after_bytes: int | None = None,
        drop_on_connect: int = 0,
        send_unknown: bool = False,
        drop_on_control: str | None = None,
        script: SpeechScript | None = None,
        connect_delay: float = 0.0,
        finalize_delay: float = 0.0,
        endpoint_delay: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.script = script
        self.connect_delay = connect_delay
        self.finalize_delay = finalize_delay
        self.endpoint_delay = endpoint_delay  # processing time before an endpointing final goes out
        # (asked at, sent at, how) per final with end of turn: "finalize" or "endpoint"; monotonic
        self.finals: list[tuple[float, float, str]] = []
        self.vocabulary = dict(vocabulary or {})
        self.reject_status = reject_status
        self.drop_after_bytes = drop_after_bytes
        self.drops_remaining = 1 if drop_after_bytes is not None else 0
        self.drop_on_connect = drop_on_connect
        self.send_unknown = send_unknown
        self.drop_on_control = drop_on_control
        self.handshakes = 0
        self.connections: list[FakeConnection] = []
        self._server: Server | None = None
        self._changed = asyncio.Event()
        self.port = 0

    # ---- lifecycle

    async def __aenter__(self) -> FakeDeepgram:
        self._server = await serve(self._handler, "127.0.0.1", 0, process_request=self._process_request)
        self.port = self._server.sockets[0].getsockname()[1] if self._server.sockets else 0
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # ---- waiting helpers (event-driven; the timeout is only a failure guard)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async def _loop() -> None:
            while True:
                changed = self._changed
                if predicate():
                    return
                await changed.wait()

        await asyncio.wait_for(_loop(), timeout)

    # ---- protocol

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes += 1
        self._notify()
        if self.connect_delay > 0:
            await asyncio.sleep(self.connect_delay)  # simulated TLS handshake time, not synchronisation
        path = urlsplit(request.path).path
        if path not in ("/v1/listen", "/v2/listen"):
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if self.reject_status is not None:
            body = {
                402: '{"err_code":"ASR_PAYMENT_REQUIRED","err_msg":"Project does not have enough credits."}',
                403: '{"err_code":"INSUFFICIENT_PERMISSIONS","err_msg":"This key cannot use this model."}',
                429: '{"err_code":"TOO_MANY_REQUESTS","err_msg":"Too many concurrent requests."}',
            }.get(self.reject_status, '{"err_code":"ERROR","err_msg":"Rejected."}')
            return connection.respond(self.reject_status, body)
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            return connection.respond(
                HTTPStatus.UNAUTHORIZED,
                '{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials."}',
            )
        return None

    async def _send(self, ws: ServerConnection, conn: FakeConnection, message: dict[str, Any]) -> None:
        conn.sent.append(message)
        await ws.send(json.dumps(message))
        self._notify()

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        split = urlsplit(ws.request.path)
        conn = FakeConnection(
            path=split.path,
            query=parse_qs(split.query),
            headers={k: v for k, v in ws.request.headers.raw_items()},
        )
        self.connections.append(conn)
        self._notify()
        request_id = str(uuid.uuid4())
        rec = _Recognizer(conn, self.vocabulary) if self.script is None else _SpeechRecognizer(conn, self.script)
        flux = conn.path == "/v2/listen"
        try:
            if self.drop_on_connect > 0:
                self.drop_on_connect -= 1
                await ws.close(1011, NET_0001)
                return
            if flux:
                await self._send(ws, conn, {"type": "Connected", "request_id": request_id, "sequence_id": 0})
            if self.send_unknown:
                await self._send(ws, conn, {"type": "SomethingNew", "detail": "ignore me"})
            async for message in ws:
                if isinstance(message, bytes):
                    conn.audio += message
                    self._notify()
                    if flux:
                        await self._flux_audio(ws, conn, rec, request_id, message)
                    else:
                        await self._v1_audio(ws, conn, rec, request_id, message)
                    if (
                        self.drops_remaining
                        and self.drop_after_bytes is not None
                        and len(conn.audio) >= self.drop_after_bytes
                    ):
                        self.drops_remaining -= 1
                        await ws.close(1011, NET_0001)
                        return
                    continue
                control = json.loads(message)
                conn.control.append(control)
                self._notify()
                kind = control.get("type")
                if kind is not None and kind == self.drop_on_control:
                    self.drop_on_control = None
                    await ws.close(1011, NET_0001)
                    return
                if kind == "KeepAlive":
                    continue
                if kind == "Finalize" and not flux:
                    asked = time.monotonic()
                    if self.finalize_delay > 0:
                        await asyncio.sleep(self.finalize_delay)  # the service's processing time
                    await self._v1_final(ws, conn, rec, request_id, from_finalize=True)
                    self.finals.append((asked, time.monotonic(), "finalize"))
                elif kind == "ForceEndTurn" and flux:
                    await self._flux_end_of_turn(ws, conn, rec, request_id, trigger="manual")
                elif kind == "CloseStream":
                    if not flux:
                        if rec.now > rec.segment_start:
                            await self._v1_final(ws, conn, rec, request_id)
                        await self._send(
                            ws,
                            conn,
                            {
                                "type": "Metadata",
                                "transaction_key": "deprecated",
                                "request_id": request_id,
                                "sha256": "0" * 64,
                                "created": "2026-01-01T00:00:00.000Z",
                                "duration": rec.now,
                                "channels": 1,
                            },
                        )
                    await ws.close(1000)
                    return
                else:
                    await self._send(
                        ws,
                        conn,
                        {"type": "Error", "variant": "SchemaError", "description": "unknown message", "message": message},
                    )
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            conn.close_code = ws.close_code
            self._notify()

    # ---- v1

    def _results(self, conn: FakeConnection, rec: _Recognizer, request_id: str, *, is_final: bool,
                 speech_final: bool = False, from_finalize: bool = False, until: float | None = None) -> dict[str, Any]:
        end = rec.now if until is None else until
        words = [w for w in rec.words if w.start < end]
        text = rec.text_of(words, is_final)
        alternative: dict[str, Any] = {
            "transcript": text,
            "confidence": 0.99 if text else 0.0,
            "words": [
                {"word": w.text, "start": w.start, "end": min(w.end, end), "confidence": 0.99, "punctuated_word": w.text}
                for w in words
            ],
        }
        heard = getattr(getattr(rec, "script", None), "language", None)
        if conn.param("language") == "multi" and heard and text:
            # Deepgram's multilingual model: the languages heard (most words first), and each word's.
            alternative["languages"] = [heard]
            for word in alternative["words"]:
                word["language"] = heard
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "start": rec.segment_start,
            "duration": round(end - rec.segment_start, 6),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [alternative]},
            "metadata": {
                "request_id": request_id,
                "model_uuid": "00000000-0000-0000-0000-000000000000",
                "model_info": {"name": conn.param("model") or "", "version": "fake", "arch": conn.param("model") or ""},
            },
        }

    async def _v1_final(self, ws: ServerConnection, conn: FakeConnection, rec: _Recognizer, request_id: str, *,
                        speech_final: bool = False, from_finalize: bool = False, until: float | None = None) -> None:
        rec.before_final()
        msg = self._results(conn, rec, request_id, is_final=True, speech_final=speech_final,
                            from_finalize=from_finalize, until=until)
        rec.segment_start = rec.now if until is None else until
        rec.words = [w for w in rec.words if w.start >= rec.segment_start]
        rec.endpointed = True
        await self._send(ws, conn, msg)

    async def _v1_audio(self, ws: ServerConnection, conn: FakeConnection, rec: _Recognizer, request_id: str, data: bytes) -> None:
        endpointing = conn.param("endpointing")
        endpoint_ms = float(endpointing) if endpointing and endpointing not in ("false", "true") else None
        utterance_end = conn.param("utterance_end_ms")
        utterance_end_ms = float(utterance_end) if utterance_end else None
        for event, detail in rec.feed(rec.linear(data)):
            if event == "speech_started" and conn.param("vad_events") == "true":
                await self._send(ws, conn, {"type": "SpeechStarted", "channel": [0, 1], "timestamp": detail})
            elif event == "silence":
                if endpoint_ms is not None and not rec.endpointed and detail >= endpoint_ms:
                    if self.endpoint_delay > 0:
                        await asyncio.sleep(self.endpoint_delay)  # the service's processing time
                    await self._v1_final(ws, conn, rec, request_id, speech_final=True, until=rec.now)
                    if isinstance(rec, _SpeechRecognizer):
                        self.finals.append((rec.voiced_at, time.monotonic(), "endpoint"))
                if (
                    utterance_end_ms is not None
                    and not rec.utterance_ended
                    and rec.now - rec.last_word_end >= utterance_end_ms / 1000
                ):
                    rec.utterance_ended = True
                    await self._send(
                        ws, conn, {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": rec.last_word_end}
                    )
            elif event == "speech" and conn.param("interim_results") == "true":
                await self._send(ws, conn, self._results(conn, rec, request_id, is_final=False))

    # ---- v2 (Flux)

    def _turn_info(self, rec: _Recognizer, request_id: str, event: str, trigger: str | None = None) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "type": "TurnInfo",
            "request_id": request_id,
            "sequence_id": 0,
            "event": event,
            "turn_index": rec.turn_index,
            "audio_window_start": rec.segment_start,
            "audio_window_end": rec.now,
            "transcript": " ".join(w.text for w in rec.words),
            "words": [{"word": w.text, "confidence": 0.99, "start": w.start, "end": w.end} for w in rec.words],
            "end_of_turn_confidence": 0.9 if event == "EndOfTurn" else 0.1,
        }
        if trigger is not None:
            msg["trigger"] = trigger
        return msg

    async def _flux_end_of_turn(self, ws: ServerConnection, conn: FakeConnection, rec: _Recognizer, request_id: str, trigger: str) -> None:
        msg = self._turn_info(rec, request_id, "EndOfTurn", trigger)
        msg["sequence_id"] = len(conn.sent)
        rec.segment_start = rec.now
        rec.words = []
        rec.turn_index += 1
        rec.in_turn = False
        rec.endpointed = True
        await self._send(ws, conn, msg)

    async def _flux_audio(self, ws: ServerConnection, conn: FakeConnection, rec: _Recognizer, request_id: str, data: bytes) -> None:
        timeout = conn.param("eot_timeout_ms")
        eot_ms = float(timeout) if timeout else 500.0
        for event, detail in rec.feed(rec.linear(data)):
            if event == "speech_started":
                msg = self._turn_info(rec, request_id, "StartOfTurn")
                msg["sequence_id"] = len(conn.sent)
                await self._send(ws, conn, msg)
            elif event == "silence":
                if rec.in_turn and detail >= eot_ms:
                    await self._flux_end_of_turn(ws, conn, rec, request_id, trigger="timeout")
                elif not rec.in_turn:
                    rec.segment_start = rec.now
            elif event == "speech":
                msg = self._turn_info(rec, request_id, "Update")
                msg["sequence_id"] = len(conn.sent)
                await self._send(ws, conn, msg)
