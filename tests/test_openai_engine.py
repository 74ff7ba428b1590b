"""The OpenAI-compatible engine against a loopback server speaking the real SSE protocol."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from bot.agent.character import parse_character
from bot.agent.engines.base import AgentError, Conversation, Incoming
from bot.agent.engines.openai_engine import OpenAIEngine, safe_url, translate_error
from bot.memory import Modality
from tests.fakes.openai_server import FakeOpenAI

GUARD = 10.0  # failure guard only: every wait below ends on an event long before this


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.close()


def conversation(text: str = "hi") -> Conversation:
    incoming = Incoming(room="discord:1:2", speaker_id="discord:7", speaker_name="Alice", text=text,
                        modality=Modality.TEXT)
    messages = (
        {"role": "system", "content": "You are Wren."},
        {"role": "user", "content": f"Alice: {text}"},
    )
    return Conversation(character=parse_character({"name": "Wren"}), incoming=incoming, text=text, messages=messages)


def engine_for(fake: FakeOpenAI, *, key: str | None = None, model: str = "gpt-test", timeout: float = GUARD,
               max_retries: int = 0) -> OpenAIEngine:
    return OpenAIEngine(api_key=fake.api_key if key is None else key, base_url=fake.base_url, model=model,
                        max_tokens=64, temperature=0.5, timeout=timeout, max_retries=max_retries)


async def collect(engine: OpenAIEngine, text: str = "hi") -> str:
    return "".join([d async for d in engine.stream(conversation(text))])


async def test_streams_reply_and_sends_a_proper_request(server: FakeOpenAI) -> None:
    engine = engine_for(server)
    try:
        assert await collect(engine) == "Hello there, friend."
    finally:
        await engine.aclose()
    [request] = server.completion_requests
    assert request.headers["Authorization"] == f"Bearer {server.api_key}"
    assert request.body is not None
    assert request.body["model"] == "gpt-test"
    assert request.body["stream"] is True
    assert request.body["max_tokens"] == 64 and request.body["temperature"] == 0.5
    assert request.body["messages"] == [
        {"role": "system", "content": "You are Wren."},
        {"role": "user", "content": "Alice: hi"},
    ]


async def test_deltas_arrive_before_the_server_finishes(server: FakeOpenAI) -> None:
    server.paced = True
    engine = engine_for(server)
    stream = engine.stream(conversation())
    try:
        server.allow(1)
        first = await asyncio.wait_for(anext(stream), GUARD)
        assert first == "Hello"
        assert not server.finished and server.chunks_sent == 1  # the rest is still held back
        server.allow(1)
        assert await asyncio.wait_for(anext(stream), GUARD) == " there"
        assert not server.finished
        server.allow(len(server.reply_tokens))
        rest = [d async for d in stream]
        assert "".join(rest) == ", friend."
        assert server.finished
    finally:
        await stream.aclose()
        await engine.aclose()


async def test_local_server_without_key_gets_placeholder(server: FakeOpenAI) -> None:
    server.require_key = False
    engine = OpenAIEngine(api_key=None, base_url=server.base_url, model="llama3.2", timeout=GUARD, max_retries=0)
    try:
        assert await collect(engine) == "Hello there, friend."
    finally:
        await engine.aclose()
    assert server.completion_requests[0].headers["Authorization"] == "Bearer not-needed"


async def test_401_is_translated_without_leaking_the_key(server: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    wrong = "sk-wrong-SECRETSECRET"
    engine = engine_for(server, key=wrong)
    try:
        with pytest.raises(AgentError) as info:
            await collect(engine)
    finally:
        await engine.aclose()
    error = info.value
    assert "rejected the API key (401)" in str(error) and "OPENAI_API_KEY" in str(error)
    assert "SECRET" not in str(error) and "SECRET" not in error.user_message and "SECRET" not in repr(engine)
    assert "SECRET" not in caplog.text
    assert not error.retryable
    assert len(server.completion_requests) == 1  # 401 is never retried


async def test_unknown_model_is_named(server: FakeOpenAI) -> None:
    engine = engine_for(server, model="gpt-nope")
    try:
        with pytest.raises(AgentError, match=r"no model 'gpt-nope' \(404\)"):
            await collect(engine)
    finally:
        await engine.aclose()


async def test_server_error_is_retried_a_bounded_number_of_times(server: FakeOpenAI) -> None:
    server.fail_with = 500
    engine = engine_for(server, max_retries=2)
    try:
        with pytest.raises(AgentError) as info:
            await collect(engine)
    finally:
        await engine.aclose()
    assert "HTTP 500" in str(info.value) and info.value.retryable
    assert len(server.completion_requests) == 3


async def test_rate_limit(server: FakeOpenAI) -> None:
    server.fail_with = 429
    engine = engine_for(server, max_retries=1)
    try:
        with pytest.raises(AgentError, match=r"\(429\)") as info:
            await collect(engine)
    finally:
        await engine.aclose()
    assert info.value.retryable and "minute" in info.value.user_message


async def test_stalled_stream_times_out(server: FakeOpenAI) -> None:
    server.stall, server.stall_after = True, 1
    # The stall is endless, so it always times out; the timeout only has to be long enough that the
    # first chunk beats it on a loaded machine (0.3 s did not always).
    engine = engine_for(server, timeout=2.0)
    deltas: list[str] = []
    try:
        with pytest.raises(AgentError, match="timed out") as info:
            async for delta in engine.stream(conversation()):
                deltas.append(delta)
    finally:
        await engine.aclose()
    assert deltas == ["Hello"]  # what arrived before the stall was delivered
    assert info.value.retryable


async def test_unreachable_endpoint() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = OpenAIEngine(api_key="sk-x", base_url=f"http://user:pw@127.0.0.1:{port}/v1", model="m",
                          timeout=GUARD, max_retries=0)
    try:
        with pytest.raises(AgentError) as info:
            await collect(engine)
    finally:
        await engine.aclose()
    assert "cannot connect" in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    assert "pw" not in str(info.value)
    assert "reach" in info.value.user_message


async def test_check_lists_models(server: FakeOpenAI) -> None:
    engine = engine_for(server)
    try:
        assert "offers model gpt-test" in await engine.check()
    finally:
        await engine.aclose()
    missing = engine_for(server, model="gpt-missing")
    try:
        with pytest.raises(AgentError, match=r"'gpt-missing' is not offered .*available: gpt-test, llama3.2"):
            await missing.check()
    finally:
        await missing.aclose()
    bad_key = engine_for(server, key="sk-bad")
    try:
        with pytest.raises(AgentError, match="401"):
            await bad_key.check()
    finally:
        await bad_key.aclose()


async def test_check_without_models_endpoint_falls_back_to_a_tiny_completion(server: FakeOpenAI) -> None:
    server.models_endpoint = False
    engine = engine_for(server)
    try:
        assert "answered with model gpt-test" in await engine.check()
    finally:
        await engine.aclose()
    assert server.completion_requests[-1].body is not None
    assert server.completion_requests[-1].body.get("max_tokens") == 1


def test_needs_a_key_or_a_base_url() -> None:
    with pytest.raises(AgentError):
        OpenAIEngine(api_key=None, base_url=None)


def test_translate_unknown_error_and_safe_url() -> None:
    error = translate_error(RuntimeError("x"), model="m", base_url="https://a:b@h/v1", timeout=1)
    assert isinstance(error, AgentError) and "b@" not in str(error)
    assert safe_url("https://user:secret@example.com:8443/v1") == "https://example.com:8443/v1"
    assert safe_url("http://127.0.0.1:1/v1") == "http://127.0.0.1:1/v1"
