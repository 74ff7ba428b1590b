"""Deepgram live streaming speech-to-text (deepgram-sdk ``AsyncDeepgramClient``).

nova-3 on ``/v1/listen`` by default; a model name starting with ``flux`` selects Flux on
``/v2/listen`` (turn events). SDK types stay in this module: messages are converted to our
``Transcript`` by the pure functions below.

Protocol facts this module relies on (deepgram-sdk 7.16.0, Deepgram docs):

* The server closes a v1 socket with 1011 ``NET-0001`` after 10 s with neither audio nor a text
  message, so an idle speaker's stream gets a ``KeepAlive`` every few seconds. v2 has no KeepAlive
  message; an idle Flux stream gets a short burst of silence instead.
* Endpointing and ``UtteranceEnd`` run on the *audio* clock. Discord sends no packets while someone
  is silent, so the pause they wait for may never reach Deepgram; ``finalize()`` (``Finalize`` on
  v1, ``ForceEndTurn`` on v2) is how the receive path ends a turn.
* A failed WebSocket handshake raises ``ApiError`` with the HTTP status; the SDK never retries it.
  Finals carry ``start``/``duration`` on the connection's audio clock, which tells us which audio has
  been transcribed and which must be replayed after a reconnect.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import websockets.exceptions
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment

from audio.stt.base import STTEngine, STTError, STTStream, Transcript, TranscriptQueue, Word

__all__ = [
    "DeepgramSTT",
    "DeepgramStream",
    "results_to_transcript",
    "utterance_end_to_transcript",
    "speech_started_to_transcript",
    "turn_info_to_transcript",
    "final_covers_until",
    "handshake_error",
]

log = logging.getLogger(__name__)

FLUX_ENGLISH = "flux-general-en"
FLUX_MULTI = "flux-general-multi"  # 10 languages, the language per turn

DEFAULT_MODEL = "nova-3"
_PRODUCTION = DeepgramClientEnvironment.PRODUCTION


# --------------------------------------------------------------------------------------------
# Pure conversions: Deepgram message -> Transcript. ``offset`` is where the connection's audio
# clock starts on the stream's timeline (seconds). Fields are read defensively: the SDK builds
# messages without validation, so a malformed frame has None where a number should be.


def _num(value: Any, default: float = 0.0) -> float:
    return float(value) if isinstance(value, (int, float)) else default


def results_to_transcript(msg: Any, *, offset: float = 0.0, received_at: float = 0.0) -> Transcript | None:
    """A v1 ``Results`` message as a Transcript, or None when it carries nothing to report.

    ``end_of_turn`` is set on finals that end speech: ``speech_final`` (endpointing saw a pause) or
    ``from_finalize`` (the answer to our ``Finalize``). Empty interims and empty finals that end
    nothing are dropped.
    """
    start = offset + _num(getattr(msg, "start", None))
    end = start + _num(getattr(msg, "duration", None))
    is_final = bool(getattr(msg, "is_final", False))
    end_of_turn = is_final and bool(getattr(msg, "speech_final", False) or getattr(msg, "from_finalize", False))
    channel = getattr(msg, "channel", None)
    alternatives = getattr(channel, "alternatives", None) or []
    alt = alternatives[0] if alternatives else None
    text = (getattr(alt, "transcript", None) or "").strip()
    if not text and not end_of_turn:
        return None
    words: list[Word] = []
    for w in getattr(alt, "words", None) or []:
        word_text = getattr(w, "punctuated_word", None) or getattr(w, "word", None) or ""
        conf = getattr(w, "confidence", None)
        words.append(
            Word(
                text=word_text,
                start=offset + _num(getattr(w, "start", None)),
                end=offset + _num(getattr(w, "end", None)),
                confidence=float(conf) if isinstance(conf, (int, float)) else None,
            )
        )
    conf = getattr(alt, "confidence", None)
    # language=multi: the languages heard, most words first (absent on some code-switched audio).
    languages = getattr(alt, "languages", None) or []
    heard = languages[0] if languages and isinstance(languages[0], str) and text else None
    return Transcript(
        text=text,
        is_final=is_final,
        end_of_turn=end_of_turn,
        start=start,
        end=end,
        confidence=float(conf) if isinstance(conf, (int, float)) and text else None,
        words=tuple(words),
        received_at=received_at,
        language=heard,
    )


def utterance_end_to_transcript(msg: Any, *, offset: float = 0.0, received_at: float = 0.0) -> Transcript:
    """A v1 ``UtteranceEnd`` (a gap after the last final word) as an empty end-of-turn final."""
    at = offset + _num(getattr(msg, "last_word_end", None))
    return Transcript(text="", is_final=True, end_of_turn=True, start=at, end=at, received_at=received_at)


def speech_started_to_transcript(msg: Any, *, offset: float = 0.0, received_at: float = 0.0) -> Transcript:
    """A v1 ``SpeechStarted`` (needs ``vad_events``) as an empty interim: the barge-in hint."""
    at = offset + _num(getattr(msg, "timestamp", None))
    return Transcript(text="", is_final=False, end_of_turn=False, start=at, end=at, received_at=received_at)


def turn_info_to_transcript(msg: Any, *, offset: float = 0.0, received_at: float = 0.0) -> Transcript | None:
    """A Flux ``TurnInfo`` as a Transcript, or None when it carries nothing to report.

    Flux transcripts are the whole turn so far. ``EndOfTurn`` is the turn's one final (with
    ``end_of_turn``); ``StartOfTurn`` is an interim even when empty (speech started);
    ``Update``, ``EagerEndOfTurn`` and ``TurnResumed`` are interims (the last two with
    ``turn_event`` "eager" / "resumed": a reply may be prepared / must be thrown away). Unknown
    events are ignored.
    """
    event = getattr(msg, "event", None)
    if event not in ("StartOfTurn", "Update", "EagerEndOfTurn", "TurnResumed", "EndOfTurn"):
        return None
    window_start = offset + _num(getattr(msg, "audio_window_start", None))
    window_end = offset + _num(getattr(msg, "audio_window_end", None), window_start - offset)
    text = (getattr(msg, "transcript", None) or "").strip()
    final = event == "EndOfTurn"
    if not text and event not in ("StartOfTurn", "EndOfTurn", "TurnResumed"):
        return None
    words: list[Word] = []
    for w in getattr(msg, "words", None) or []:
        conf = getattr(w, "confidence", None)
        w_start = getattr(w, "start", None)
        w_end = getattr(w, "end", None)
        words.append(
            Word(
                text=getattr(w, "word", None) or "",
                start=offset + float(w_start) if isinstance(w_start, (int, float)) else window_start,
                end=offset + float(w_end) if isinstance(w_end, (int, float)) else window_end,
                confidence=float(conf) if isinstance(conf, (int, float)) else None,
            )
        )
    confs = [w.confidence for w in words if w.confidence is not None]
    languages = getattr(msg, "languages", None) or []  # flux-general-multi: most frequent first
    return Transcript(
        text=text,
        is_final=final,
        end_of_turn=final,
        start=window_start,
        end=window_end,
        confidence=sum(confs) / len(confs) if confs else None,
        words=tuple(words),
        received_at=received_at,
        turn_event={"EagerEndOfTurn": "eager", "TurnResumed": "resumed"}.get(str(event), ""),
        language=languages[0] if languages and isinstance(languages[0], str) and text else None,
    )


def final_covers_until(msg: Any) -> float | None:
    """Seconds of the connection's audio that a message proves transcribed, or None.

    A v1 final covers ``start + duration``; a Flux ``EndOfTurn`` covers its audio window (earlier
    Flux events are turn-cumulative and may still change, so they prove nothing).
    """
    kind = getattr(msg, "type", None)
    if kind == "Results" and getattr(msg, "is_final", False):
        return _num(getattr(msg, "start", None)) + _num(getattr(msg, "duration", None))
    if kind == "TurnInfo" and getattr(msg, "event", None) == "EndOfTurn":
        return _num(getattr(msg, "audio_window_end", None))
    return None


def handshake_error(status: int | None) -> STTError | None:
    """The fatal error for a rejected WebSocket handshake, or None when a retry may help.

    408, 429 and 5xx are transient (429 is also Deepgram's per-project concurrency limit); every
    other 4xx means the request or account is wrong and retrying would only repeat it.
    """
    if status is None or status in (408, 429) or status >= 500:
        return None
    if status == 401:
        return STTError(
            "Deepgram rejected the API key (HTTP 401)",
            retryable=False,
            user_message="Deepgram rejected the API key, so I can't hear anyone. Check DEEPGRAM_API_KEY.",
        )
    if status == 402:
        return STTError(
            "Deepgram refused the stream: payment required (HTTP 402)",
            retryable=False,
            user_message="Deepgram says the account is out of credit, so I can't hear anyone right now.",
        )
    if status == 403:
        return STTError(
            "Deepgram refused the stream: the key lacks permission (HTTP 403)",
            retryable=False,
            user_message="Deepgram refused access for this API key (no permission for this model or project).",
        )
    if status == 400:
        return STTError(
            "Deepgram rejected the stream settings (HTTP 400)",
            retryable=False,
            user_message="Deepgram rejected the speech settings. Check the speech model and language.",
        )
    if 400 <= status < 500:
        return STTError(
            f"Deepgram refused the stream (HTTP {status})",
            retryable=False,
            user_message=f"Deepgram refused the connection (HTTP {status}).",
        )
    return None


# --------------------------------------------------------------------------------------------


class _Dropped(Exception):
    """The connection ended unexpectedly; ``progressed`` if it transcribed something first."""

    def __init__(self, reason: str, progressed: bool) -> None:
        super().__init__(reason)
        self.progressed = progressed


_TRANSIENT = (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException)


class DeepgramSTT(STTEngine):
    """Deepgram live transcription; one WebSocket per active speaker.

    Args:
        api_key: the Deepgram key (always passed explicitly: the SDK would otherwise read the
            environment).
        model: ``nova-3`` (default) or any v1 model; a name starting with ``flux`` uses ``/v2/listen``.
        language: v1 language tag (ignored by Flux).
        endpointing_ms: v1 pause in ms that marks ``speech_final``; None turns endpointing off.
        utterance_end_ms: v1 gap after the last word before ``UtteranceEnd`` (Deepgram's minimum is 1000).
        smart_format: v1 punctuation and formatting.
        keyterms: words to boost, e.g. the bot's name (nova-3 and Flux).
        eot_threshold, eager_eot_threshold, eot_timeout_ms: Flux turn-detection settings.
        pause_signal: how ``finalize()`` tells Deepgram the speaker paused (Discord sends nothing
            during silence): ``"finalize"`` sends ``Finalize`` (Flux: ``ForceEndTurn``);
            ``"silence"`` sends ``endpointing_ms`` + 40 ms of silence at once so Deepgram's own
            endpointing ends the segment (v1 with endpointing only; otherwise Finalize).
        keepalive_interval: seconds without audio before a KeepAlive (Flux: a burst of silence).
        idle_timeout: seconds without pushed audio before a speaker's socket is closed; the next
            ``push`` reopens it.
        max_reconnects: consecutive failed connections before the stream gives up.
        backoff_base, backoff_max: reconnect delay bounds in seconds (exponential, jittered).
        replay_seconds: how much untranscribed audio is kept for replay after a drop.
        close_timeout: how long to wait for the server's flush after ``CloseStream``.
        base_url: REST base (``https://api.deepgram.com``); for tests ``http://127.0.0.1:PORT``.
        ws_url: WebSocket base; derived from ``base_url`` when omitted.
        clock: monotonic clock, injectable for tests.
    """

    name = "deepgram"

    def __init__(
        self,
        api_key: str,
        *,
        model: str = DEFAULT_MODEL,
        language: str | None = "en",
        endpointing_ms: int | None = 300,
        utterance_end_ms: int | None = 1000,
        smart_format: bool = True,
        keyterms: Sequence[str] = (),
        eot_threshold: float | None = None,
        eager_eot_threshold: float | None = None,
        eot_timeout_ms: int | None = None,
        pause_signal: str = "finalize",
        keepalive_interval: float = 4.0,
        idle_timeout: float = 30.0,
        max_reconnects: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        replay_seconds: float = 30.0,
        close_timeout: float = 5.0,
        base_url: str | None = None,
        ws_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if not api_key:
            raise STTError(
                "no Deepgram API key configured",
                retryable=False,
                user_message="No Deepgram API key is configured (DEEPGRAM_API_KEY).",
            )
        self.model = model
        self.flux = model.lower().startswith("flux")
        self.language = language
        self.endpointing_ms = endpointing_ms
        self.utterance_end_ms = utterance_end_ms
        self.smart_format = smart_format
        self.keyterms = [k for k in keyterms if k]
        self.eot_threshold = eot_threshold
        self.eager_eot_threshold = eager_eot_threshold
        self.eot_timeout_ms = eot_timeout_ms
        if pause_signal not in ("finalize", "silence"):
            raise ValueError(f"pause_signal must be 'finalize' or 'silence', not {pause_signal!r}")
        # Silence only works where endpointing listens for it (v1 with endpointing on).
        self.pause_signal = pause_signal if not self.flux and endpointing_ms is not None else "finalize"
        self.keepalive_interval = keepalive_interval
        self.idle_timeout = idle_timeout
        self.max_reconnects = max_reconnects
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.replay_seconds = replay_seconds
        self.close_timeout = close_timeout
        self.clock = clock
        http = base_url or _PRODUCTION.base
        if ws_url is None:
            ws_url = _PRODUCTION.production if base_url is None else _ws_from_http(base_url)
        self.ws_url = ws_url.rstrip("/")
        environment = DeepgramClientEnvironment(
            base=http.rstrip("/"), production=self.ws_url, agent=self.ws_url, agent_rest=http.rstrip("/")
        )
        self._client = AsyncDeepgramClient(api_key=api_key, environment=environment, max_retries=0)
        # A rejected key or account fails every stream the same way: remember it so that new
        # speakers fail at once instead of each repeating the rejected handshake.
        self.fatal: STTError | None = None

    def __repr__(self) -> str:
        return f"DeepgramSTT(model={self.model!r}, ws_url={self.ws_url!r})"

    def open_stream(self, *, speaker: str, sample_rate: int = 16000, encoding: str = "linear16",
                    language: str | None = None) -> DeepgramStream:
        """Open a stream for one speaker (call on the event loop); the socket opens on the first ``push``.

        ``encoding="mulaw"`` takes G.711 μ-law bytes (a phone call's audio, passed through as is).
        ``language`` overrides the engine's for this stream (a guild that chose its own language).
        """
        stream = DeepgramStream(self, speaker=speaker, sample_rate=sample_rate, encoding=encoding)
        stream.language = language
        return self._track(stream)

    def _connect(self, sample_rate: int, encoding: str = "linear16", language: str | None = None) -> Any:
        if self.flux:
            hint = language or self.language
            model = self.model
            if model == FLUX_ENGLISH and hint and not hint.lower().startswith("en"):
                # A place speaking another language (a German server while LANGUAGE=en): English
                # Flux would write German as English words; the multilingual model hears it.
                model = FLUX_MULTI
            kwargs: dict[str, Any] = {"model": model, "encoding": encoding, "sample_rate": sample_rate}
            if self.eot_threshold is not None:
                kwargs["eot_threshold"] = self.eot_threshold
            if self.eager_eot_threshold is not None:
                kwargs["eager_eot_threshold"] = self.eager_eot_threshold
            if self.eot_timeout_ms is not None:
                kwargs["eot_timeout_ms"] = self.eot_timeout_ms
            if self.keyterms:
                kwargs["keyterm"] = list(self.keyterms)
            if hint and hint != "multi" and "multi" in model:
                kwargs["language_hint"] = hint  # flux-general-multi: bias toward the place's language
            return self._client.listen.v2.connect(**kwargs)
        kwargs = {
            "model": self.model,
            "encoding": encoding,
            "sample_rate": sample_rate,
            "channels": 1,
            "interim_results": True,
            "endpointing": self.endpointing_ms if self.endpointing_ms is not None else False,
            "vad_events": True,
            "smart_format": self.smart_format,
        }
        if self.utterance_end_ms is not None:
            kwargs["utterance_end_ms"] = self.utterance_end_ms
        if language or self.language:
            kwargs["language"] = language or self.language
        if self.keyterms:
            kwargs["keyterm"] = list(self.keyterms)
        return self._client.listen.v1.connect(**kwargs)

    async def check(self) -> str:
        """Open one socket with the configured settings and close it (no audio is sent)."""
        try:
            async with self._connect(16000) as conn:
                await conn.send_close_stream()
        except ApiError as exc:
            fatal = handshake_error(exc.status_code)
            if fatal is not None:
                raise fatal from None
            raise STTError(
                f"Deepgram handshake failed (HTTP {exc.status_code})",
                retryable=True,
                user_message="Deepgram is not accepting connections right now.",
            ) from None
        except _TRANSIENT as exc:
            raise STTError(
                f"cannot reach Deepgram at {self.ws_url}: {type(exc).__name__}: {exc}",
                retryable=True,
                user_message="I can't reach Deepgram right now.",
            ) from None
        return f"{self.model} via {self.ws_url}"

    async def aclose(self) -> None:
        """Close every open stream (each flushes what it has sent)."""
        await self._close_streams()


def _ws_from_http(url: str) -> str:
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :]
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :]
    return url


class DeepgramStream(STTStream):
    """One speaker's Deepgram stream: buffers, (re)connects, keeps alive and replays.

    ``push`` must be called on the event loop thread. Audio is kept in a bounded ring with its
    position on the stream's timeline until a final proves it transcribed; after a dropped
    connection the untranscribed tail is sent again on the new socket.
    """

    def __init__(self, engine: DeepgramSTT, *, speaker: str, sample_rate: int, encoding: str = "linear16") -> None:
        self.engine = engine
        self.speaker = speaker
        self.sample_rate = sample_rate
        self.encoding = encoding
        self.language: str | None = None  # None: the engine's
        self._silence = b"\xff" if encoding == "mulaw" else b"\x00"  # one byte of a silent sample
        self._bps = sample_rate * (1 if encoding == "mulaw" else 2)
        self._max_chunk = max(2, (self._bps // 4) & ~1)  # 250 ms: Deepgram's upper chunk size
        self._ring: collections.deque[tuple[int, bytes]] = collections.deque()
        self._ring_bytes = 0
        self._ring_limit = max(self._bps, int(engine.replay_seconds * self._bps))
        self._pushed_end = 0  # bytes on the stream timeline
        self._covered = 0  # bytes proven transcribed
        self._sent = 0  # bytes sent on the current connection (timeline position)
        self._conn_start = 0  # timeline position of the current connection's audio clock zero
        self._connected = False
        self._last_audio = engine.clock()
        self._finalize_requested = False
        self._finalized_at = 0
        self._awaiting_finalize = False
        self._turn_has_speech = False
        # The voice session counts its finalize() calls against the ends of turn it is given (the
        # local engine promises one answer per call), so none may go unanswered: a Finalize that
        # finds no words, or one sent for several calls, still owes each call its end of turn.
        self._requests = 0  # finalize() calls that ask Deepgram (v1 Finalize)
        self._answers = 0  # ends of turn put out
        self._finalizes: collections.deque[int] = collections.deque()  # per Finalize in flight: _requests then
        self._progress = False
        self._closing = False
        self._ended = False
        self._dropped_audio = 0
        self._wake = asyncio.Event()
        self._out = TranscriptQueue()
        self.connections = 0
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"stt-deepgram:{speaker}")

    def __repr__(self) -> str:
        return f"DeepgramStream(speaker={self.speaker!r}, model={self.engine.model!r})"

    # ---- public interface

    def push(self, pcm: bytes) -> None:
        """Queue PCM (s16le mono at ``sample_rate``); the sender task sends it. Never blocks."""
        if self._closing or self._ended or not pcm:
            return
        self._append(bytes(pcm))
        self._last_audio = self.engine.clock()
        self._wake.set()

    async def finalize(self) -> None:
        """Ask Deepgram for a final now (v1 ``Finalize``, Flux ``ForceEndTurn``).

        Returns at once: the request goes out after the audio already pushed (opening the socket if
        needed), and the final arrives through iteration with ``end_of_turn`` set. Nothing is sent
        when no audio was sent since the previous finalize.
        """
        if self._ended or self._closing:
            return
        if self.engine.pause_signal == "silence":
            if self._pushed_end > self._finalized_at:
                # Endpointing runs on the audio clock: give it the pause Discord did not send.
                assert self.engine.endpointing_ms is not None
                self._append(bytes(self._bps * (self.engine.endpointing_ms + 40) // 1000 & ~1))
                self._finalized_at = self._pushed_end
                self._wake.set()
            return
        if not self.engine.flux:
            self._requests += 1
        self._finalize_requested = True
        self._wake.set()

    async def aclose(self) -> None:
        """Send what is buffered, ask the server to flush (CloseStream), end iteration."""
        self._closing = True
        self._wake.set()
        try:
            async with asyncio.timeout(self.engine.close_timeout + 1.0):
                await asyncio.shield(self._task)
        except asyncio.TimeoutError:
            log.warning("STT stream %s did not close in time; cancelling", self.speaker)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.engine._forget(self)

    def __aiter__(self) -> AsyncIterator[Transcript]:
        return self._out.__aiter__()

    # ---- audio ring

    def _append(self, pcm: bytes) -> None:
        self._ring.append((self._pushed_end, pcm))
        self._pushed_end += len(pcm)
        self._ring_bytes += len(pcm)
        while self._ring_bytes > self._ring_limit and len(self._ring) > 1:
            start, chunk = self._ring.popleft()
            self._ring_bytes -= len(chunk)
            end = start + len(chunk)
            if end > self._covered:
                seconds_before = self._dropped_audio // self._bps
                self._dropped_audio += end - max(start, self._covered)
                self._covered = end
                if self._dropped_audio // self._bps > seconds_before or seconds_before == 0:
                    log.warning(
                        "STT %s: %.1f s of untranscribed audio dropped so far (replay buffer full)",
                        self.speaker,
                        self._dropped_audio / self._bps,
                    )
            if self._sent < end:
                if self._connected:
                    # Deepgram's clock never saw the skipped bytes: keep later times on our timeline.
                    self._conn_start += end - self._sent
                self._sent = end

    def _cover(self, position: int) -> None:
        position = min(position & ~1, self._pushed_end)
        if position <= self._covered:
            return
        self._covered = position
        while self._ring and self._ring[0][0] + len(self._ring[0][1]) <= position:
            _, chunk = self._ring.popleft()
            self._ring_bytes -= len(chunk)

    def _unsent(self) -> bytes:
        """Up to 250 ms of audio from ``_sent`` onward."""
        pos = self._sent
        first = max(0, bisect.bisect_right(self._ring, pos, key=_chunk_start) - 1)
        pieces: list[bytes] = []
        size = 0
        for start, chunk in itertools.islice(self._ring, first, None):
            if start + len(chunk) <= pos:
                continue
            piece = chunk[pos - start :] if start < pos else chunk
            pieces.append(piece)
            size += len(piece)
            if size >= self._max_chunk:
                break
        return b"".join(pieces)[: self._max_chunk]

    # ---- connection supervision

    async def _run(self) -> None:
        failures = 0
        try:
            while await self._wait_for_work():
                fatal = self.engine.fatal
                if fatal is not None:
                    raise STTError(str(fatal), retryable=False, user_message=fatal.user_message)
                try:
                    await self._connection()
                    failures = 0
                except _Dropped as exc:
                    failures = 1 if exc.progressed else failures + 1
                    if self._closing:
                        break
                    if failures > self.engine.max_reconnects:
                        raise STTError(
                            f"Deepgram connection lost {failures} times in a row: {exc}",
                            retryable=True,
                            user_message="I lost the connection to Deepgram and couldn't get it back.",
                        ) from None
                    delay = min(self.engine.backoff_max, self.engine.backoff_base * 2 ** (failures - 1))
                    delay *= random.uniform(0.5, 1.0)
                    log.warning(
                        "STT %s: Deepgram connection dropped (%s); reconnect %d/%d in %.2f s",
                        self.speaker,
                        exc,
                        failures,
                        self.engine.max_reconnects,
                        delay,
                    )
                    await self._sleep_unless_closing(delay)
        except STTError as exc:
            log.error("STT %s: %s", self.speaker, exc)
            if not exc.retryable:
                self.engine.fatal = exc
            self._out.fail(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("STT %s: unexpected failure", self.speaker)
            self._out.fail(
                STTError(
                    f"Deepgram stream failed: {type(exc).__name__}",
                    retryable=True,
                    user_message="Speech recognition stopped unexpectedly.",
                )
            )
        finally:
            self._ended = True
            self._connected = False
            self._out.close()

    async def _sleep_unless_closing(self, delay: float) -> None:
        deadline = asyncio.get_running_loop().time() + delay
        while not self._closing:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except asyncio.TimeoutError:
                return

    async def _wait_for_work(self) -> bool:
        """Wait until there is untranscribed audio to send; False when the stream is closing."""
        while True:
            if self._covered < self._pushed_end:
                return True
            if self._closing:
                return False
            # Nothing untranscribed: a finalize request has nothing to flush.
            self._finalize_requested = False
            self._wake.clear()
            if self._covered < self._pushed_end or self._closing or self._finalize_requested:
                continue
            await self._wake.wait()

    async def _connection(self) -> None:
        engine = self.engine
        self._progress = False
        self.connections += 1
        try:
            async with engine._connect(self.sample_rate, self.encoding, self.language) as conn:
                # The new socket's audio clock starts at the first untranscribed byte: replay.
                self._conn_start = self._covered
                self._sent = self._covered
                self._finalized_at = self._covered
                self._finalizes.clear()  # the old socket's answers will not come: the re-sent Finalize answers all
                self._connected = True
                if self._awaiting_finalize:
                    self._finalize_requested = True
                replayed = self._pushed_end - self._covered
                log.debug("STT %s: connected (%d bytes to send)", self.speaker, replayed)
                reader = asyncio.create_task(self._read(conn), name=f"stt-deepgram-read:{self.speaker}")
                sender = asyncio.create_task(self._send(conn), name=f"stt-deepgram-send:{self.speaker}")
                try:
                    await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_COMPLETED)
                    if sender.done() and sender.exception() is None and not reader.done():
                        # CloseStream sent: the server flushes its finals, then closes.
                        await asyncio.wait({reader}, timeout=engine.close_timeout)
                    if sender.done() and sender.exception() is not None:
                        raise _Dropped(_describe(sender.exception()), self._progress)
                    if reader.done():
                        exc = reader.exception()
                        if exc is not None:
                            raise _Dropped(_describe(exc), self._progress)
                        if not sender.done():
                            raise _Dropped("server closed the stream", self._progress)
                finally:
                    self._connected = False
                    for task in (reader, sender):
                        task.cancel()
                    await asyncio.gather(reader, sender, return_exceptions=True)
        except ApiError as exc:
            fatal = handshake_error(exc.status_code)
            if fatal is not None:
                raise fatal from None
            raise _Dropped(f"handshake rejected (HTTP {exc.status_code})", False) from None
        except _TRANSIENT as exc:
            raise _Dropped(_describe(exc), self._progress) from None
        # A clean close after CloseStream: everything sent has been flushed by the server.
        self._cover(self._sent)
        self._awaiting_finalize = False

    async def _send(self, conn: Any) -> None:
        """Send audio as it arrives, Finalize on request, KeepAlive when idle, CloseStream to end."""
        engine = self.engine
        flux = engine.flux
        while True:
            while self._sent < self._pushed_end:
                data = self._unsent()
                if not data:  # cannot happen while the ring holds [covered, pushed_end); never spin
                    self._sent = self._pushed_end
                    break
                await conn.send_media(data)
                self._sent += len(data)
            if self._finalize_requested:
                self._finalize_requested = False
                if self._sent > self._finalized_at:
                    # Discord sends no packets while someone is silent, so endpointing may never
                    # see a pause: this is what makes Deepgram emit the final now.
                    if flux:
                        await conn.send_force_end_turn()
                    else:
                        await conn.send_finalize()
                        self._finalizes.append(self._requests)
                    self._awaiting_finalize = True
                    self._finalized_at = self._sent
                elif self._finalizes:
                    self._finalizes[-1] = self._requests  # no new audio: the Finalize in flight answers it too
                continue
            if self._closing:
                if flux and self._turn_has_speech:
                    # Flux's CloseStream emits no EndOfTurn: end the open turn first.
                    await conn.send_force_end_turn()
                await conn.send_close_stream()
                return
            self._wake.clear()
            if self._sent < self._pushed_end or self._finalize_requested or self._closing:
                continue
            try:
                async with asyncio.timeout(engine.keepalive_interval):
                    await self._wake.wait()
            except asyncio.TimeoutError:
                if engine.clock() - self._last_audio >= engine.idle_timeout:
                    log.debug("STT %s: idle, closing the socket", self.speaker)
                    await conn.send_close_stream()
                    return
                if flux:
                    # v2 has no KeepAlive message; a little silence keeps the socket busy.
                    self._append(self._silence * (self._bps * 80 // 1000 & ~1))
                else:
                    # Deepgram closes a socket after 10 s without audio or a message (NET-0001).
                    await conn.send_keep_alive()

    async def _read(self, conn: Any) -> None:
        async for msg in conn:
            self._handle(msg)

    def _handle(self, msg: Any) -> None:
        kind = getattr(msg, "type", None)
        if kind is None:
            return  # unknown message types arrive as None; binary frames are not expected
        offset = self._conn_start / self._bps
        now = self.engine.clock()
        covered = final_covers_until(msg)
        if covered is not None:
            self._progress = True
            self._cover(self._conn_start + int(round(covered * self._bps)))
        if kind == "Results":
            self._progress = True
            answers: int | None = None
            if getattr(msg, "from_finalize", False):
                self._awaiting_finalize = False
                answers = self._finalizes.popleft() if self._finalizes else None
            self._emit(results_to_transcript(msg, offset=offset, received_at=now), answers=answers)
        elif kind == "TurnInfo":
            self._progress = True
            self._emit(turn_info_to_transcript(msg, offset=offset, received_at=now))
        elif kind == "UtteranceEnd":
            self._emit(utterance_end_to_transcript(msg, offset=offset, received_at=now))
        elif kind == "SpeechStarted":
            self._emit(speech_started_to_transcript(msg, offset=offset, received_at=now))
        elif kind == "Error":
            log.warning(
                "STT %s: Deepgram error %s: %s",
                self.speaker,
                getattr(msg, "code", None) or getattr(msg, "variant", None),
                getattr(msg, "description", None),
            )
        elif kind == "Warning":
            log.info("STT %s: Deepgram warning: %s", self.speaker, getattr(msg, "description", None))
        else:
            log.debug("STT %s: %s message", self.speaker, kind)

    def _emit(self, transcript: Transcript | None, *, answers: int | None = None) -> None:
        """Put out ``transcript``; ``answers``: it answers a Finalize sent after that many finalize() calls."""
        if transcript is None:
            return
        if transcript.text:
            self._turn_has_speech = True
        if transcript.end_of_turn:
            owed = answers is not None and self._answers < answers
            # speech_final, UtteranceEnd and a Finalize answer can all end the same turn: report it
            # once, unless a finalize() call has had no end of turn yet.
            if not transcript.text and not self._turn_has_speech and not owed:
                return
            self._turn_has_speech = False
            self._awaiting_finalize = False
            self._answers += 1
            self._out.put(transcript)
            while answers is not None and self._answers < answers:  # one Finalize sent for several calls
                self._answers += 1
                self._out.put(dataclasses.replace(transcript, text="", words=(), confidence=None, language=None))
            return
        self._out.put(transcript)


def _chunk_start(item: tuple[int, bytes]) -> int:
    return item[0]


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown"
    if isinstance(exc, websockets.exceptions.ConnectionClosed):
        rcvd = exc.rcvd
        if rcvd is not None:
            return f"closed with {rcvd.code} {rcvd.reason[:120]}"
        return "connection lost without a close frame"
    return f"{type(exc).__name__}: {exc}"
