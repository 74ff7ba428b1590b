"""ElevenLabs streaming text-to-speech through the ``elevenlabs`` SDK.

Protocol facts this module relies on (elevenlabs 2.78.0):

- ``text_to_speech.stream`` is an async generator (iterate it; awaiting it is a TypeError) that
  POSTs ``/v1/text-to-speech/{voice_id}/stream?output_format=…``. The SDK never retries a streaming
  call and raises a plain ``ApiError(status_code, headers, body)`` for every non-2xx except 422.
- ``output_format="pcm_48000"`` is raw s16le mono at 48 kHz, so nothing needs decoding, and
  ``request_options={"chunk_size": 3840}`` re-chunks the body into 3840-byte pieces (40 ms mono).
- Error bodies come in two shapes, ``{"detail": {"status": …, "message": …}}`` and the newer
  ``{"detail": {"type", "code", "message", …}}``. Running out of credits is a **401**
  ``quota_exceeded``, not a 429; a 429 means either plan concurrency
  (``too_many_concurrent_requests``) or load (``system_busy`` / ``rate_limit_exceeded``).

Retries happen only before the first audio byte of a request has been yielded, so a retry can
never duplicate audio a listener has already heard.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx

from audio.tts.base import AudioFormat, TTSEngine, TTSError, VoiceInfo, VoiceSpec

__all__ = [
    "ElevenLabsEngine",
    "ErrorKind",
    "ErrorInfo",
    "classify_error",
    "voice_info_from_json",
    "audio_format_for",
    "DEFAULT_MODEL",
    "DEFAULT_VOICE_ID",
    "DEFAULT_OUTPUT_FORMAT",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "eleven_flash_v2_5"
# "George", one of ElevenLabs' premade voices available to every account.
DEFAULT_VOICE_ID = "JBFqnCBsd6RMkjVDRZzb"
DEFAULT_OUTPUT_FORMAT = "pcm_48000"
KEEPALIVE_SECONDS = 60.0  # idle time an HTTP connection is kept for the next sentence
# 20 ms of 48 kHz stereo s16le, discord.py's frame; for 48 kHz mono PCM this is 40 ms per chunk.
CHUNK_SIZE = 3840


class ErrorKind(StrEnum):
    """Why an ElevenLabs request failed, as far as we can tell from status and body."""

    INVALID_API_KEY = "invalid_api_key"
    QUOTA_EXCEEDED = "quota_exceeded"
    CONCURRENCY_LIMIT = "concurrency_limit"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    VOICE_NOT_FOUND = "voice_not_found"
    TEXT_TOO_LONG = "text_too_long"
    FORBIDDEN = "forbidden"
    BAD_REQUEST = "bad_request"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ErrorInfo:
    """The classification of one failure: kind, whether retrying can help, and words for people."""

    kind: ErrorKind
    retryable: bool
    user_message: str
    detail: str = ""  # the provider's message, for logs (never contains our key)


_USER_MESSAGES: dict[ErrorKind, str] = {
    ErrorKind.INVALID_API_KEY: "My voice service rejected its API key, so I can't speak right now.",
    ErrorKind.QUOTA_EXCEEDED: "My voice service has run out of credits, so I can't speak right now.",
    ErrorKind.CONCURRENCY_LIMIT: "Too many voices are being generated at once; please try again in a moment.",
    ErrorKind.RATE_LIMITED: "My voice service is busy; please try again in a moment.",
    ErrorKind.SERVER_ERROR: "My voice service is having trouble; please try again shortly.",
    ErrorKind.VOICE_NOT_FOUND: "The voice I'm configured to use doesn't exist.",
    ErrorKind.TEXT_TOO_LONG: "That reply is too long for me to say out loud.",
    ErrorKind.FORBIDDEN: "My voice service refused that request.",
    ErrorKind.BAD_REQUEST: "My voice service couldn't read that request.",
    ErrorKind.TIMEOUT: "My voice service took too long to answer.",
    ErrorKind.CONNECTION: "I couldn't reach my voice service.",
    ErrorKind.UNKNOWN: "Something went wrong with my voice.",
}

_CONCURRENCY_CODES = {"too_many_concurrent_requests", "concurrent_limit_exceeded"}
_RATE_CODES = {"system_busy", "rate_limit_exceeded", "too_many_requests"}
_QUOTA_CODES = {"quota_exceeded", "insufficient_credits", "credits_exhausted"}
_VOICE_CODES = {"voice_not_found", "voice_does_not_exist"}
_TOO_LONG_CODES = {"max_character_limit_exceeded", "text_too_long"}


def _detail_code_and_message(body: object) -> tuple[str, str]:
    if not isinstance(body, Mapping):
        return "", str(body)[:200] if body else ""
    detail = body.get("detail", body)
    if isinstance(detail, Mapping):
        code = detail.get("status") or detail.get("code") or detail.get("type") or ""
        message = detail.get("message") or ""
        return str(code).lower(), str(message)[:300]
    if isinstance(detail, list):  # 422 validation errors: [{"loc", "msg", "type"}, …]
        msgs = [str(d.get("msg", "")) for d in detail if isinstance(d, Mapping)]
        return "validation_error", "; ".join(msgs)[:300]
    return "", str(detail)[:300]


def classify_error(status: int | None, body: object) -> ErrorInfo:
    """Map an HTTP status and the parsed JSON error body to our ``ErrorInfo``. Pure.

    ``status`` None means no HTTP response at all (a connection failure).
    """
    code, message = _detail_code_and_message(body)

    def info(kind: ErrorKind, retryable: bool) -> ErrorInfo:
        return ErrorInfo(kind, retryable, _USER_MESSAGES[kind], f"{code}: {message}" if code else message)

    if status is None:
        return info(ErrorKind.CONNECTION, True)
    if code in _VOICE_CODES:
        return info(ErrorKind.VOICE_NOT_FOUND, False)
    if code in _TOO_LONG_CODES:
        return info(ErrorKind.TEXT_TOO_LONG, False)
    if status == 401:
        if code in _QUOTA_CODES:
            return info(ErrorKind.QUOTA_EXCEEDED, False)
        return info(ErrorKind.INVALID_API_KEY, False)
    if status == 429:
        if code in _CONCURRENCY_CODES:
            # Plan concurrency: another of our requests must finish first; waiting helps.
            return info(ErrorKind.CONCURRENCY_LIMIT, True)
        if code in _QUOTA_CODES:
            return info(ErrorKind.QUOTA_EXCEEDED, False)
        return info(ErrorKind.RATE_LIMITED, True)
    if status == 408:
        return info(ErrorKind.TIMEOUT, True)
    if status >= 500:
        return info(ErrorKind.SERVER_ERROR, True)
    if status == 404:
        # The only path parameter of the TTS endpoint is the voice id.
        return info(ErrorKind.VOICE_NOT_FOUND, False)
    if status == 403:
        return info(ErrorKind.FORBIDDEN, False)
    if 400 <= status < 500:
        return info(ErrorKind.BAD_REQUEST, False)
    return info(ErrorKind.UNKNOWN, False)


def voice_info_from_json(voice: Mapping[str, Any]) -> VoiceInfo:
    """Convert one ElevenLabs voice object (``{"voice_id", "name", "category", "labels", …}``). Pure."""
    voice_id = str(voice.get("voice_id") or "")
    name = str(voice.get("name") or voice_id)
    parts: list[str] = []
    if voice.get("description"):
        parts.append(str(voice["description"]).strip())
    labels = voice.get("labels")
    if isinstance(labels, Mapping) and labels:
        parts.append(", ".join(f"{k}: {v}" for k, v in sorted(labels.items()) if v))
    if voice.get("category"):
        parts.append(f"({voice['category']})")
    return VoiceInfo(id=voice_id, name=name, description=" ".join(p for p in parts if p))


def audio_format_for(output_format: str) -> AudioFormat:
    """The ``AudioFormat`` of an ElevenLabs ``output_format`` string such as ``pcm_48000``. Pure."""
    codec, _, rest = output_format.partition("_")
    rate = int(rest.split("_", 1)[0]) if rest else 0
    if codec == "pcm":
        return AudioFormat("s16le", rate, 1)
    if codec == "ulaw":
        return AudioFormat("ulaw", rate, 1)
    if codec == "mp3":
        return AudioFormat("mp3", rate, 1)
    raise ValueError(f"unsupported ElevenLabs output format {output_format!r}")


def _retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class ElevenLabsEngine(TTSEngine):
    """ElevenLabs HTTP streaming TTS (one request per sentence).

    Args:
        api_key: the ElevenLabs key, passed explicitly (the SDK would otherwise read the environment).
        base_url: API origin; tests point it at a loopback fake.
        voice_id / model: defaults when a ``VoiceSpec`` leaves them unset.
        output_format: ElevenLabs format string; ``pcm_48000`` needs no decoding downstream.
        max_attempts: total tries per request for retryable failures before the first audio byte.
        backoff_base / backoff_max: full-jitter exponential backoff between tries, in seconds.
        first_byte_timeout: seconds to wait for the first audio byte before treating the try as failed.
        stall_timeout: seconds without a new chunk, once audio started, before giving up.
        max_concurrency: cap on simultaneous requests (plan limits: Free 2, Starter 3, Creator 5…).
    """

    name = "elevenlabs"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        voice_id: str = DEFAULT_VOICE_ID,
        model: str = DEFAULT_MODEL,
        output_format: str = DEFAULT_OUTPUT_FORMAT,
        max_attempts: int = 3,
        backoff_base: float = 0.25,
        backoff_max: float = 2.0,
        first_byte_timeout: float = 10.0,
        stall_timeout: float = 15.0,
        max_concurrency: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        from elevenlabs.client import AsyncElevenLabs

        self.format = audio_format_for(output_format)
        self._output_format = output_format
        self._voice_id = voice_id
        self._model = model
        self._max_attempts = max(1, max_attempts)
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._first_byte_timeout = first_byte_timeout
        self._stall_timeout = stall_timeout
        self._semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._rng = rng or random.Random()
        # Our own httpx client so aclose() releases its connections; timeouts are enforced per chunk below.
        # Keep the connection across sentences and turns: httpx drops an idle one after 5 s, and a
        # new TCP+TLS handshake is ~100 ms before the first audio.
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None),
                                       limits=httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS))
        self._client = AsyncElevenLabs(api_key=api_key, base_url=base_url, httpx_client=self._http)
        self._closed = False

    def __repr__(self) -> str:
        return f"ElevenLabsEngine(voice_id={self._voice_id!r}, model={self._model!r}, format={self._output_format!r})"

    # -- synthesis -------------------------------------------------------------------------------

    def _request_kwargs(self, text: str, voice: VoiceSpec | None) -> tuple[str, dict[str, Any]]:
        from elevenlabs.types import VoiceSettings

        voice_id = (voice.voice_id if voice else None) or self._voice_id
        kwargs: dict[str, Any] = {
            "text": text,
            "model_id": (voice.model if voice else None) or self._model,
            "output_format": self._output_format,
            "request_options": {"chunk_size": CHUNK_SIZE, "max_retries": 0},
        }
        if voice is not None and voice.language:
            # Enforces the language on the multilingual models (flash/turbo v2.5) so a short
            # sentence is not read with the wrong language's pronunciation.
            kwargs["language_code"] = voice.language
        if voice is not None:
            settings = {
                "stability": voice.stability,
                "similarity_boost": voice.similarity_boost,
                "style": voice.style,
                "use_speaker_boost": voice.use_speaker_boost,
            }
            settings = {k: v for k, v in settings.items() if v is not None}
            if settings:
                kwargs["voice_settings"] = VoiceSettings(**settings)
        return voice_id, kwargs

    def _delay(self, attempt: int, info: ErrorInfo, retry_after: float | None) -> float:
        base = self._backoff_base * (2 if info.kind is ErrorKind.CONCURRENCY_LIMIT else 1)
        cap = min(self._backoff_max, base * (2 ** (attempt - 1)))
        delay = self._rng.uniform(0, cap) if cap > 0 else 0.0
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._backoff_max))
        return delay

    def _translate(self, exc: BaseException) -> tuple[ErrorInfo, float | None]:
        from elevenlabs.core.api_error import ApiError

        if isinstance(exc, ApiError):
            return classify_error(exc.status_code, exc.body), _retry_after_seconds(exc.headers)
        if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
            return ErrorInfo(ErrorKind.TIMEOUT, True, _USER_MESSAGES[ErrorKind.TIMEOUT], type(exc).__name__), None
        if isinstance(exc, (httpx.TransportError, OSError)):
            return ErrorInfo(ErrorKind.CONNECTION, True, _USER_MESSAGES[ErrorKind.CONNECTION], type(exc).__name__), None
        return ErrorInfo(ErrorKind.UNKNOWN, False, _USER_MESSAGES[ErrorKind.UNKNOWN], type(exc).__name__), None

    async def synthesize(self, text: str, voice: VoiceSpec | None = None) -> AsyncIterator[bytes]:
        """Stream audio chunks (``self.format``) for ``text``; raises ``TTSError``.

        Retryable failures are retried (bounded, jittered) only while no audio has been yielded;
        a failure after that raises ``TTSError(audio_started=True)`` so the caller can fall back
        for the rest instead of repeating what was already played.
        """
        if self._closed:
            raise TTSError("ElevenLabs engine is closed", kind="closed")
        if not text.strip():
            return
        voice_id, kwargs = self._request_kwargs(text, voice)
        if self._semaphore is not None:
            await self._semaphore.acquire()
        try:
            attempt = 0
            while True:
                attempt += 1
                started = False
                try:
                    async with aclosing(self._client.text_to_speech.stream(voice_id, **kwargs)) as stream:
                        iterator = aiter(stream)
                        while True:
                            timeout = self._stall_timeout if started else self._first_byte_timeout
                            try:
                                async with asyncio.timeout(timeout):
                                    chunk = await anext(iterator)
                            except StopAsyncIteration:
                                return
                            if chunk:
                                started = True
                                yield chunk
                except Exception as exc:  # translated below; CancelledError is not an Exception
                    info, retry_after = self._translate(exc)
                    message = (
                        f"ElevenLabs TTS failed ({info.kind}, attempt {attempt}/{self._max_attempts}, "
                        f"voice {voice_id}, audio started: {started}): {info.detail}"
                    )
                    if started or not info.retryable or attempt >= self._max_attempts:
                        raise TTSError(
                            message,
                            retryable=info.retryable,
                            user_message=info.user_message,
                            kind=str(info.kind),
                            audio_started=started,
                        ) from exc
                    delay = self._delay(attempt, info, retry_after)
                    log.warning("%s; retrying in %.2fs", message, delay)
                    await asyncio.sleep(delay)
        finally:
            if self._semaphore is not None:
                self._semaphore.release()

    # -- voices, check, close --------------------------------------------------------------------

    async def list_voices(self) -> list[VoiceInfo]:
        """Every voice of the account via ``GET /v2/voices`` (paged, at most 100 per page)."""
        voices: list[VoiceInfo] = []
        token: str | None = None
        for _page in range(20):  # bounded: 2,000 voices is far beyond any account we serve
            try:
                response = await self._client.voices.search(
                    page_size=100, next_page_token=token, request_options={"max_retries": 0}
                )
            except Exception as exc:
                info, _ = self._translate(exc)
                raise TTSError(
                    f"ElevenLabs voice list failed ({info.kind}): {info.detail}",
                    retryable=info.retryable,
                    user_message=info.user_message,
                    kind=str(info.kind),
                ) from exc
            voices.extend(voice_info_from_json(v.model_dump()) for v in response.voices)
            token = response.next_page_token
            if not response.has_more or not token:
                break
        return voices

    async def check(self) -> str:
        """List voices (verifies key and reachability) and confirm the configured voice exists."""
        voices = await self.list_voices()
        ids = {v.id for v in voices}
        if self._voice_id not in ids:
            raise TTSError(
                f"ElevenLabs voice {self._voice_id} is not in the account's {len(voices)} voices",
                user_message=_USER_MESSAGES[ErrorKind.VOICE_NOT_FOUND],
                kind=str(ErrorKind.VOICE_NOT_FOUND),
            )
        return f"{len(voices)} voices, using {self._voice_id} with {self._model} ({self._output_format})"

    async def aclose(self) -> None:
        """Close the HTTP client. Idempotent."""
        if not self._closed:
            self._closed = True
            await self._http.aclose()
