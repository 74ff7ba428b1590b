"""Replies from any OpenAI-compatible chat endpoint (OpenAI, Ollama, vLLM, OpenRouter, LM Studio...).

Uses the official ``openai`` SDK with ``stream=True``: the server answers with Server-Sent Events,
one ``chat.completion.chunk`` per ``data:`` line and ``data: [DONE]`` at the end. SDK types stay in
this module; everything that leaves it is ``str`` or :class:`AgentError`.

Retries: the SDK retries the *request* (connection errors, 408, 409, 429, 5xx) with exponential
backoff and jitter, honouring ``retry-after``; other 4xx are never retried. Once text has started
streaming nothing is retried, because the person has already heard or seen the beginning.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
import openai
from openai import AsyncOpenAI, AsyncStream, DefaultAsyncHttpxClient
from openai._constants import DEFAULT_CONNECTION_LIMITS
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from bot.agent.engines.base import AgentError, Conversation, ReplyEngine
from bot.i18n.catalog import t

__all__ = ["OPENAI_BASE_URL", "OpenAIEngine", "safe_url", "translate_error"]

log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
# Local servers (Ollama, vLLM, LM Studio) ignore the key but the SDK insists on one.
PLACEHOLDER_KEY = "not-needed"
KEEPALIVE_SECONDS = 60.0  # idle time an HTTP connection is kept for the next turn


def safe_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, fit for logs and errors."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _server_message(exc: openai.APIStatusError, limit: int = 200) -> str:
    body = exc.body
    message: Any = None
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
    text = " ".join(str(message or "").split())
    return text[:limit]


def translate_error(exc: BaseException, *, model: str, base_url: str, timeout: float,
                    language: str | None = None) -> AgentError:
    """Map an ``openai`` SDK exception to an :class:`AgentError` (pure; never includes secrets).

    Server messages are left out for 401/403 because OpenAI echoes part of the key in them. The
    ``user_message`` is in ``language`` (the reply's, from the catalog); the log message stays English.
    """
    where = safe_url(base_url)
    lang = language or "en"
    if isinstance(exc, openai.AuthenticationError):
        return AgentError(
            f"LLM endpoint {where} rejected the API key (401): check OPENAI_API_KEY",
            user_message=t("agent.credentials", lang),
        )
    if isinstance(exc, openai.PermissionDeniedError):
        return AgentError(
            f"LLM endpoint {where} denied access (403) for model {model!r}: check the key's permissions",
            user_message=t("agent.denied", lang),
        )
    if isinstance(exc, openai.NotFoundError):
        return AgentError(
            f"LLM endpoint {where} has no model {model!r} (404): check OPENAI_MODEL (and OPENAI_BASE_URL)",
            user_message=t("agent.model_missing", lang),
        )
    if isinstance(exc, openai.RateLimitError):
        return AgentError(
            f"LLM endpoint {where} is rate limiting or out of quota (429): {_server_message(exc)}",
            user_message=t("agent.overloaded", lang),
            retryable=True,
        )
    if isinstance(exc, openai.APITimeoutError):
        return AgentError(
            f"LLM endpoint {where} timed out (no data for {timeout:g}s)",
            user_message=t("agent.slow", lang),
            retryable=True,
        )
    if isinstance(exc, openai.APIConnectionError):
        return AgentError(
            f"cannot connect to the LLM endpoint {where}: is it running and is OPENAI_BASE_URL right?",
            user_message=t("agent.unreachable", lang),
            retryable=True,
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status >= 500 or status in (408, 409)
        return AgentError(
            f"LLM endpoint {where} answered HTTP {status} for model {model!r}: {_server_message(exc)}",
            user_message=t("agent.trouble" if retryable else "agent.rejected", lang),
            retryable=retryable,
        )
    if isinstance(exc, openai.APIError):  # an error event inside the stream
        return AgentError(
            f"LLM endpoint {where} reported an error mid-reply: {' '.join(str(exc.message).split())[:200]}",
            user_message=t("agent.lost_thread", lang),
            retryable=True,
        )
    if isinstance(exc, (httpx2.RequestError, OSError)):  # the connection broke while the reply streamed
        return AgentError(
            f"LLM endpoint {where} broke off the reply ({type(exc).__name__}): is the server or a proxy "
            "cutting long responses?",
            user_message=t("agent.lost_thread", lang),
            retryable=True,
        )
    if isinstance(exc, ValueError):  # JSONDecodeError / UnicodeDecodeError: an event that is not JSON
        return AgentError(
            f"LLM endpoint {where} sent a malformed server-sent event ({type(exc).__name__}: {exc}): "
            f"is OPENAI_BASE_URL an OpenAI-compatible server?",
            user_message=t("agent.unreadable", lang),
            retryable=True,
        )
    if isinstance(exc, (TypeError, AttributeError, KeyError, IndexError)):
        return AgentError(
            f"LLM endpoint {where} sent an event that is not a chat.completion.chunk ({type(exc).__name__}): "
            "is OPENAI_BASE_URL an OpenAI-compatible server?",
            user_message=t("agent.unreadable", lang),
            retryable=True,
        )
    return AgentError(f"LLM request to {where} failed: {type(exc).__name__}", user_message=t("agent.failed", lang))


def _keepalive_limits() -> Any:
    """The SDK's own connection limits with a longer keep-alive. Built from the SDK's limits
    object because its HTTP library differs between versions (httpx, later httpx2)."""
    limits = DEFAULT_CONNECTION_LIMITS
    return type(limits)(max_connections=limits.max_connections,
                        max_keepalive_connections=limits.max_keepalive_connections,
                        keepalive_expiry=KEEPALIVE_SECONDS)


class OpenAIEngine(ReplyEngine):
    """Streams chat completions from an OpenAI-compatible endpoint."""

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None = None,
        model: str = "gpt-4o-mini",
        max_tokens: int = 400,
        temperature: float = 0.8,
        timeout: float = 30.0,
        max_retries: int = 2,
    ) -> None:
        """``api_key`` may be None for a local server (``base_url`` set); a placeholder is sent."""
        if not api_key and not base_url:
            raise AgentError("the OpenAI engine needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)")
        self.model = model
        self.base_url = (base_url or OPENAI_BASE_URL).rstrip("/")
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        # base_url is always passed so the SDK never falls back to reading OPENAI_BASE_URL itself.
        self._client = AsyncOpenAI(
            api_key=api_key or PLACEHOLDER_KEY,
            base_url=self.base_url,
            timeout=timeout,
            max_retries=max_retries,
            # Keep the connection across voice turns: httpx drops an idle one after 5 s, and a new
            # TCP+TLS handshake is ~100 ms of every reply's wait. A connection the server closed
            # meanwhile is noticed when taken from the pool and replaced.
            http_client=DefaultAsyncHttpxClient(limits=_keepalive_limits()),
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"OpenAIEngine(base_url={safe_url(self.base_url)!r}, model={self.model!r})"

    @property
    def _is_openai(self) -> bool:
        return urlsplit(self.base_url).hostname == "api.openai.com"

    def _limits(self) -> dict[str, Any]:
        # OpenAI's newer models reject max_tokens in favour of max_completion_tokens, while many
        # compatible servers only understand max_tokens.
        key = "max_completion_tokens" if self._is_openai else "max_tokens"
        return {key: self.max_tokens}

    def _error(self, exc: BaseException, language: str | None = None) -> AgentError:
        return translate_error(exc, model=self.model, base_url=self.base_url, timeout=self.timeout, language=language)

    async def stream(self, conversation: Conversation) -> AsyncIterator[str]:
        language = conversation.incoming.language  # what the person is answered in, failures included
        body = {
            "model": self.model,
            "messages": [dict(m) for m in conversation.messages],
            "stream": True,
            "stream_options": {"include_usage": True},  # a last chunk with the request's token counts
            "temperature": self.temperature,
            **self._limits(),
        }
        try:
            # The SDK's typed ``chat.completions.create`` re-validates every message of the prompt
            # against its TypedDicts before sending (measured: ~20 ms for a 20-turn context on this
            # machine's class of CPU, most of our share of a voice turn's latency budget). Our
            # messages are plain role/content strings, so the same request goes through the SDK's
            # generic post: same auth, retries, errors and SSE parsing.
            stream = await self._client.post(
                "/chat/completions",
                body=body,
                cast_to=ChatCompletionChunk,
                stream=True,
                stream_cls=AsyncStream[ChatCompletionChunk],
            )
        except openai.OpenAIError as exc:
            raise self._error(exc, language) from None
        try:
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None and (figures := conversation.usage) is not None:
                        figures["prompt_tokens"] = int(chunk.usage.prompt_tokens or 0)
                        figures["completion_tokens"] = int(chunk.usage.completion_tokens or 0)
                    for choice in chunk.choices:
                        if choice.index == 0 and choice.delta is not None and choice.delta.content:
                            content = choice.delta.content
                            if not isinstance(content, str):  # the SDK builds chunks without validating
                                raise TypeError(f"delta.content is {type(content).__name__}, not text")
                            yield content
        except openai.APITimeoutError as exc:
            raise self._error(exc, language) from None
        except openai.APIConnectionError as exc:
            # The server was reached and answered 200; its body broke off (not "cannot connect").
            cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else ConnectionResetError()
            raise self._error(cause, language) from None
        except openai.OpenAIError as exc:
            raise self._error(exc, language) from None
        except Exception as exc:
            # Nothing of ours runs in this loop but reading fields: any other error is the server's
            # stream (an event that is not JSON, a chunk of the wrong shape, a connection cut
            # mid-body), a provider error like the others, not a crash of the engine.
            raise self._error(exc, language) from None

    async def complete(self, messages: list[dict[str, str]], *, max_tokens: int,
                       temperature: float = 0.0) -> tuple[str, int | None]:
        """One whole (not streamed) completion for background work: (text, tokens the server counted).

        Raises :class:`AgentError`. The token count is ``usage.total_tokens`` when the server reports it.
        """
        key = "max_completion_tokens" if self._is_openai else "max_tokens"
        body = {"model": self.model, "messages": messages, "temperature": temperature, key: max_tokens}
        try:
            response = await self._client.post("/chat/completions", body=body, cast_to=ChatCompletion)
        except openai.OpenAIError as exc:
            raise self._error(exc) from None
        try:
            text = response.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError) as exc:
            raise self._error(exc) from None
        usage = getattr(response, "usage", None)
        total = getattr(usage, "total_tokens", None) if usage is not None else None
        return str(text), int(total) if isinstance(total, int) and total > 0 else None

    async def check(self) -> str:
        """List the server's models and confirm the configured one is there."""
        try:
            page = await self._client.models.list()
            ids = [m.id async for m in page]
        except openai.NotFoundError:
            # Some compatible servers have no /models: a one-token completion proves the path.
            try:
                await self._client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": "ping"}], max_tokens=1
                )
            except openai.OpenAIError as exc:
                raise self._error(exc) from None
            return f"{safe_url(self.base_url)} answered with model {self.model}"
        except openai.OpenAIError as exc:
            raise self._error(exc) from None
        if ids and self.model not in ids:
            shown = ", ".join(sorted(ids)[:8]) + (" ..." if len(ids) > 8 else "")
            raise AgentError(
                f"model {self.model!r} is not offered by {safe_url(self.base_url)} (OPENAI_MODEL); available: {shown}"
            )
        return f"{safe_url(self.base_url)} offers model {self.model}"

    async def warm(self) -> None:
        """Open a connection now if the pool has none (a voice reply thrown away mid-stream closes
        its connection): one small request, so the next reply does not pay the handshake. Quiet."""
        if self._closed:
            return
        try:
            await self._client.models.list()
        except Exception as exc:  # only an optimisation; the real request reports real problems
            log.debug("warming the connection failed: %s", type(exc).__name__)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.close()
