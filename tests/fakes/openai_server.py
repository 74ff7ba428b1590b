"""A loopback OpenAI-compatible server speaking the real chat-completions wire protocol.

``POST /v1/chat/completions`` with ``"stream": true`` answers ``text/event-stream``: one
``data: {chat.completion.chunk}`` event per token, a final chunk with ``finish_reason``, then
``data: [DONE]``. Without ``stream`` it answers one ``chat.completion`` object. ``GET /v1/models``
lists models. ``POST /v1/embeddings`` answers a ``list`` of ``embedding`` objects (``index``,
``embedding``) with ``usage.prompt_tokens``: each vector is the hashed words of its input projected
on ``embedding_dim`` dimensions, so texts that share words are near; ``hold_embeddings`` (an event)
keeps embedding requests waiting until it is set. Errors use OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``.

Switches: ``responder`` (a function of the request body giving a whole completion's text),
``fail_with`` (401 / 404 / 500 / 429), ``broken_sse`` (after the first token, one event
that is not JSON (``"not-json"``), not UTF-8 (``"not-utf8"``), a chunk of the wrong shape
(``"wrong-shape"``), or the connection cut mid-body (``"cut"``)), ``stall`` (hold the request open after
``stall_after`` chunks, never finishing), ``paced`` (send each chunk only when the test calls
:meth:`FakeOpenAI.allow`). Every request is recorded for assertions.

Timing like the service (for the latency benchmark, never for tests): ``first_token_delay``
before the first token, then ``tokens_per_second``; ``connect_delay`` before the first answer on
each new connection (a TLS handshake). ``streams`` records when each streamed reply began and got
its first token.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.fakes.connection_cost import connection_cost_middleware
from tests.fakes.loopback_http import serve_on_loopback

__all__ = ["FakeOpenAI", "RecordedRequest", "StreamTiming"]


@dataclass
class StreamTiming:
    """One streamed completion (``time.monotonic()`` times)."""

    requested_at: float
    first_token_at: float | None = None
    finished_at: float | None = None
    disconnected: bool = False  # the client went away before the end (a cancelled reply)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class FakeOpenAI:
    api_key: str = "sk-test-0123456789abcdef"
    models: tuple[str, ...] = ("gpt-test", "llama3.2")
    reply_tokens: list[str] = field(default_factory=lambda: ["Hello", " there", ",", " friend", "."])
    fail_with: int | None = None
    broken_sse: str | None = None  # "not-json" | "not-utf8" | "wrong-shape" | "cut"
    stall: bool = False
    stall_after: int = 0
    paced: bool = False
    require_key: bool = True
    models_endpoint: bool = True
    first_token_delay: float = 0.0
    tokens_per_second: float | None = None  # None: as fast as the socket takes them
    connect_delay: float = 0.0
    # The text of a whole (not streamed) completion, from its request body; None: ``reply_tokens`` joined.
    responder: Callable[[dict[str, Any]], str] | None = None
    embedding_dim: int = 64
    hold_embeddings: asyncio.Event | None = None

    requests: list[RecordedRequest] = field(default_factory=list)
    streams: list[StreamTiming] = field(default_factory=list)
    usage_reported: list[tuple[int, int]] = field(default_factory=list)  # (prompt, completion) per streamed reply
    new_connections: list[int] = field(default_factory=lambda: [0])
    chunks_sent: int = 0
    finished: bool = False

    def __post_init__(self) -> None:
        self._permits: asyncio.Semaphore | None = None
        self._release = asyncio.Event()  # set on close: lets stalled handlers end
        self._chunk_sent = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> str:
        """Start on 127.0.0.1 (a free port); returns the base URL ending in ``/v1``."""
        self._permits = asyncio.Semaphore(0)
        app = web.Application(middlewares=[connection_cost_middleware(self.connect_delay, self.new_connections)])
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner, url = await serve_on_loopback(app, shutdown_timeout=0.5)
        self.base_url = url + "/v1"
        return self.base_url

    async def close(self) -> None:
        self._release.set()
        if self.hold_embeddings is not None:
            self.hold_embeddings.set()
        if self._permits is not None:
            for _ in range(1000):
                self._permits.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------ test hooks

    def allow(self, n: int = 1) -> None:
        """Let ``n`` more chunks out (paced mode)."""
        assert self._permits is not None
        for _ in range(n):
            self._permits.release()

    async def wait_chunks(self, n: int) -> None:
        """Wait until at least ``n`` chunks have been written to the socket."""
        async with self._chunk_sent:
            await self._chunk_sent.wait_for(lambda: self.chunks_sent >= n)

    @property
    def completion_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # ------------------------------------------------------------------------------ protocol

    @staticmethod
    def _error(status: int, message: str, type_: str, code: str | None, param: str | None = None) -> web.Response:
        return web.json_response(
            {"error": {"message": message, "type": type_, "param": param, "code": code}}, status=status
        )

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if not self.require_key:
            return None
        header = request.headers.get("Authorization", "")
        if header != f"Bearer {self.api_key}" or self.fail_with == 401:
            given = header.removeprefix("Bearer ")
            # Like OpenAI, the message quotes the key it was given (we echo it whole so tests
            # can prove it never reaches our logs or errors).
            return self._error(401, f"Incorrect API key provided: {given}. You can find your API key at "
                                    "https://platform.openai.com/account/api-keys.", "invalid_request_error",
                               "invalid_api_key")
        return None

    async def _record(self, request: web.Request) -> dict[str, Any] | None:
        body: dict[str, Any] | None = None
        if request.can_read_body:
            body = await request.json()
        self.requests.append(RecordedRequest(request.method, request.path, dict(request.headers), body))
        return body

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if not self.models_endpoint:
            return self._error(404, "Not found", "invalid_request_error", None)
        if (err := self._auth_error(request)) is not None:
            return err
        created = int(time.time())
        return web.json_response({
            "object": "list",
            "data": [{"id": m, "object": "model", "created": created, "owned_by": "fake"} for m in self.models],
        })

    @property
    def embedding_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/embeddings")]

    def vector_of(self, text: str) -> list[float]:
        """The fake model: each word adds a fixed pseudo-random direction (sha256 of the word)."""
        import hashlib
        import re

        vec = [0.0] * self.embedding_dim
        for word in re.findall(r"\w+", text.lower()):
            digest = hashlib.sha256(word.encode()).digest()
            for i in range(self.embedding_dim):
                vec[i] += (digest[i % 32] - 127.5) / 127.5
        return vec

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._record(request)
        except ConnectionResetError:  # the client gave up mid-body (a question's vector no longer wanted)
            return web.Response(status=499)
        except ValueError:
            return self._error(400, "We could not parse the JSON body of your request.", "invalid_request_error", None)
        if (err := self._auth_error(request)) is not None:
            return err
        if self.fail_with is not None:
            return self._error(self.fail_with, "The server had an error while processing your request.",
                               "server_error", None)
        texts = (body or {}).get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not (body or {}).get("model") or not isinstance(texts, list) or not texts \
                or not all(isinstance(t, str) and t for t in texts):
            return self._error(400, "'input' must be a non-empty string or array of non-empty strings",
                               "invalid_request_error", None, "input")
        if self.hold_embeddings is not None:
            await self.hold_embeddings.wait()
        tokens = sum(max(1, len(t.split())) for t in texts)
        return web.json_response({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": self.vector_of(t)} for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._record(request)
        except ConnectionResetError:  # the client gave up mid-body (a speculative reply thrown away)
            return web.Response(status=499)
        except json.JSONDecodeError:
            return self._error(400, "We could not parse the JSON body of your request.", "invalid_request_error", None)
        if (err := self._auth_error(request)) is not None:
            return err
        if self.fail_with == 429:
            response = self._error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")
            response.headers["retry-after-ms"] = "1"
            return response
        if self.fail_with == 500:
            response = self._error(500, "The server had an error while processing your request.", "server_error", None)
            response.headers["retry-after-ms"] = "1"  # keeps the SDK's retry quick in tests
            return response
        assert body is not None
        problem = self._validate(body)
        if problem is not None:
            return self._error(400, problem, "invalid_request_error", None)
        model = body["model"]
        if model not in self.models or self.fail_with == 404:
            return self._error(404, f"The model `{model}` does not exist or you do not have access to it.",
                               "invalid_request_error", "model_not_found")
        if body.get("stream"):
            return await self._stream(request, model)
        text = self.responder(body) if self.responder is not None else "".join(self.reply_tokens)
        # Usage as a tokenizer would roughly count it (four characters a token), so budgets are real.
        prompt_tokens = sum(len(m["content"]) for m in body["messages"]) // 4 + 1
        completion_tokens = len(text) // 4 + 1
        return web.json_response({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    @staticmethod
    def _validate(body: dict[str, Any]) -> str | None:
        if not isinstance(body.get("model"), str):
            return "you must provide a model parameter"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty array"
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
                return f"Invalid value for 'messages[{i}].role'"
            if not isinstance(m.get("content"), str):
                return f"Invalid type for 'messages[{i}].content'"
        if "stream" in body and not isinstance(body["stream"], bool):
            return "'stream' must be a boolean"
        return None

    def _chunk(self, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload = {
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return f"data: {json.dumps(payload)}\n\n".encode()

    async def _send(self, response: web.StreamResponse, data: bytes) -> None:
        await response.write(data)
        async with self._chunk_sent:
            self.chunks_sent += 1
            self._chunk_sent.notify_all()

    async def _break(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        if self.broken_sse == "cut":
            # Chunked encoding with no terminating chunk: the client sees the body end mid-stream.
            assert request.transport is not None
            request.transport.close()
            return response
        broken = {
            "not-json": b'data: {"id": "chatcmpl-fake", "choices": [{"index": 0, "delta": {"content": "x"\n\n',
            "not-utf8": b'data: {"choices": [{"index": 0, "delta": {"content": "\xff\xfe"}}]}\n\n',
            "wrong-shape": b'data: {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": 5}\n\n',
        }[self.broken_sse or ""]
        await self._send(response, broken)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _stream(self, request: web.Request, model: str) -> web.StreamResponse:
        body = self.requests[-1].body or {}  # this request's (recorded just before; subclasses read it too)
        timing = StreamTiming(requested_at=time.monotonic())
        self.streams.append(timing)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            await response.write(self._chunk(model, {"role": "assistant", "content": ""}))
            for i, token in enumerate(self.reply_tokens):
                if self.broken_sse is not None and i == 1:
                    return await self._break(request, response)
                if self.stall and i >= self.stall_after:
                    await self._release.wait()  # hold the connection open, sending nothing
                    return response
                if self.paced:
                    assert self._permits is not None
                    await self._permits.acquire()
                    if self._release.is_set():
                        return response
                await self._pace(timing.requested_at, i)
                await self._send(response, self._chunk(model, {"content": token}))
                if timing.first_token_at is None:
                    timing.first_token_at = time.monotonic()
            await response.write(self._chunk(model, {}, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                # As OpenAI does: one last chunk with no choices and the request's token counts
                # (here a prompt token per 4 characters, a completion token per token sent).
                prompt = sum(len(m["content"]) for m in body["messages"]) // 4
                completion = len(self.reply_tokens)
                self.usage_reported.append((prompt, completion))
                payload = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                           "model": model, "choices": [],
                           "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                     "total_tokens": prompt + completion}}
                await response.write(f"data: {json.dumps(payload)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            timing.disconnected = True
            return response
        timing.finished_at = time.monotonic()
        self.finished = True
        return response

    async def _pace(self, start: float, index: int) -> None:
        """The service's timing: the first token ``first_token_delay`` after the request, then
        ``tokens_per_second`` (paced against the request's start so it does not drift)."""
        if not self.first_token_delay and not self.tokens_per_second:
            return
        due = start + self.first_token_delay + (index / self.tokens_per_second if self.tokens_per_second else 0.0)
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the provider's own clock, not synchronisation
