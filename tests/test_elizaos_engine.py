"""The ElizaOS engine against a loopback server speaking the v1 sessions API and v0."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from bot.agent.character import parse_character
from bot.agent.engines.base import AgentError, Conversation, Incoming
from bot.agent.engines.elizaos import (
    ElizaOSEngine,
    SSEEvent,
    SSEParser,
    agent_texts_from_messages,
    session_id_from,
    sync_reply_text,
    v0_reply_texts,
)
from bot.memory import Modality
from tests.fakes.elizaos_server import FakeElizaOS

GUARD = 10.0


@pytest.fixture
async def server() -> AsyncIterator[FakeElizaOS]:
    fake = FakeElizaOS()
    await fake.start()
    yield fake
    await fake.close()


def conversation(text: str = "hello", room: str = "discord:dm:7", name: str = "Alice") -> Conversation:
    incoming = Incoming(room=room, speaker_id="discord:7", speaker_name=name, text=text, modality=Modality.VOICE)
    return Conversation(character=parse_character({"name": "Ember"}), incoming=incoming, text=text)


def engine_for(fake: FakeElizaOS, **kw: object) -> ElizaOSEngine:
    options: dict[str, object] = {"url": fake.url, "agent_id": fake.agent_id, "timeout": GUARD}
    options.update(kw)
    return ElizaOSEngine(**options)  # type: ignore[arg-type]


async def collect(engine: ElizaOSEngine, conv: Conversation | None = None) -> list[str]:
    return [d async for d in engine.stream(conv or conversation())]


async def test_v1_sse_streams_chunks_and_keeps_one_session_per_room(server: FakeElizaOS) -> None:
    engine = engine_for(server)
    try:
        assert await collect(engine) == ["Hi", " there", "!"]
        assert await collect(engine) == ["Hi", " there", "!"]
        await collect(engine, conversation(room="sms:+15551234567"))
    finally:
        await engine.aclose()
    creates = [r for r in server.requests if r[1] == "/api/messaging/sessions"]
    assert len(creates) == 2  # one per room
    body = creates[0][2]
    assert body["agentId"] == server.agent_id
    uuid.UUID(body["userId"])  # ElizaOS insists on UUIDs
    sends = [r for r in server.requests if r[0] == "POST" and r[1].endswith("/messages")]
    assert sends[0][2]["content"] == "hello"  # a DM: no name prefix
    assert sends[0][2]["transport"] == "sse"
    assert sends[0][2]["metadata"]["speakerName"] == "Alice"


async def test_v1_sse_deltas_arrive_before_the_reply_is_done(server: FakeElizaOS) -> None:
    server.paced = True
    engine = engine_for(server)
    stream = engine.stream(conversation())
    try:
        server.allow(1)
        assert await asyncio.wait_for(anext(stream), GUARD) == "Hi"
        assert server.finished == 0 and server.chunks_sent == 1
        server.allow(10)
        assert [d async for d in stream] == [" there", "!"]
        assert server.finished == 1
    finally:
        await stream.aclose()
        await engine.aclose()


async def test_whole_message_is_one_delta(server: FakeElizaOS) -> None:
    server.sse_chunks = False
    engine = engine_for(server)
    try:
        assert await collect(engine) == ["Hi there!"]
    finally:
        await engine.aclose()


async def test_server_without_transport_support_is_polled(server: FakeElizaOS) -> None:
    server.understands_transport = False
    engine = engine_for(server)
    try:
        assert await collect(engine) == ["Hi there!"]
        server.reply_tokens = ["Second ", "answer"]
        assert await collect(engine) == ["Second answer"]  # earlier replies are not repeated
    finally:
        await engine.aclose()


async def test_group_channel_messages_carry_the_speaker_name(server: FakeElizaOS) -> None:
    engine = engine_for(server)
    try:
        await collect(engine, conversation(room="discord:10:20", name="Bob"))
    finally:
        await engine.aclose()
    send = [r for r in server.requests if r[0] == "POST" and r[1].endswith("/messages")][0]
    assert send[2]["content"] == "Bob: hello"


async def test_long_content_is_capped_at_the_api_limit(server: FakeElizaOS) -> None:
    engine = engine_for(server)
    try:
        assert "".join(await collect(engine, conversation(text="x" * 10_000))) == "Hi there!"
    finally:
        await engine.aclose()
    send = [r for r in server.requests if r[0] == "POST" and r[1].endswith("/messages")][0]
    assert len(send[2]["content"]) == 4000


async def test_expired_session_is_recreated(server: FakeElizaOS) -> None:
    engine = engine_for(server)
    try:
        await collect(engine)
        server.expire_all_sessions()
        assert "".join(await collect(engine)) == "Hi there!"
    finally:
        await engine.aclose()
    assert len([r for r in server.requests if r[1] == "/api/messaging/sessions"]) == 2


async def test_api_key_header_and_401() -> None:
    fake = FakeElizaOS(api_key="eliza-secret-token")
    await fake.start()
    good = engine_for(fake, api_key="eliza-secret-token")
    bad = engine_for(fake, api_key="wrong-SECRET")
    try:
        assert "".join(await collect(good)) == "Hi there!"
        with pytest.raises(AgentError) as info:
            await collect(bad)
        assert "(401)" in str(info.value) and "ELIZAOS_API_KEY" in str(info.value)
        assert "SECRET" not in str(info.value) and "SECRET" not in repr(bad)
        assert "v1" in await good.check()
        with pytest.raises(AgentError, match="401"):
            await bad.check()
    finally:
        await good.aclose()
        await bad.aclose()
        await fake.close()


async def test_unknown_agent_is_named(server: FakeElizaOS) -> None:
    engine = engine_for(server, agent_id=str(uuid.uuid4()), api="v1")
    try:
        with pytest.raises(AgentError, match="ELIZAOS_AGENT_ID"):
            await collect(engine)
        with pytest.raises(AgentError, match="404"):
            await engine.check()
    finally:
        await engine.aclose()


async def test_server_error_on_message(server: FakeElizaOS) -> None:
    server.fail_message_with = 500
    engine = engine_for(server)
    try:
        with pytest.raises(AgentError, match="HTTP 500") as info:
            await collect(engine)
    finally:
        await engine.aclose()
    assert info.value.retryable


async def test_auto_falls_back_to_v0() -> None:
    fake = FakeElizaOS(version="v0")
    await fake.start()
    engine = engine_for(fake, agent_id="ember")  # v0 accepts the agent's name
    try:
        assert await collect(engine) == ["Hi there!"]
        assert await collect(engine) == ["Hi there!"]
        assert "v0" in await engine.check()
    finally:
        await engine.aclose()
        await fake.close()
    paths = [r[1] for r in fake.requests]
    assert paths.count("/api/messaging/sessions") == 1  # tried once, then remembered
    v0 = [r for r in fake.requests if r[1] == "/ember/message"]
    assert len(v0) == 2 and v0[0][2]["text"] == "hello" and v0[0][2]["roomId"] == "discord:dm:7"


async def test_v1_only_does_not_fall_back() -> None:
    fake = FakeElizaOS(version="v0")
    await fake.start()
    engine = engine_for(fake, api="v1")
    try:
        with pytest.raises(AgentError, match="404"):
            await collect(engine)
    finally:
        await engine.aclose()
        await fake.close()


async def test_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = ElizaOSEngine(url=f"http://127.0.0.1:{port}", agent_id=str(uuid.uuid4()), timeout=GUARD)
    try:
        with pytest.raises(AgentError, match="cannot connect to ElizaOS") as info:
            await collect(engine)
        assert info.value.retryable
        with pytest.raises(AgentError, match="cannot connect"):
            await engine.check()
    finally:
        await engine.aclose()


# ---------------------------------------------------------------------------------------------
# Pure conversions


def test_sse_parser() -> None:
    parser = SSEParser()
    lines = [": keep-alive", "event: chunk", 'data: {"chunk": "a"}', "", "data: one", "data: two", "", ""]
    events = [e for e in (parser.feed(line) for line in lines) if e is not None]
    assert events == [SSEEvent("chunk", '{"chunk": "a"}'), SSEEvent("message", "one\ntwo")]


def test_json_conversions() -> None:
    assert session_id_from({"sessionId": "s1"}) == "s1"
    assert session_id_from({"success": True, "data": {"sessionId": "s2"}}) == "s2"
    assert session_id_from({"nope": 1}) is None and session_id_from([]) is None
    assert sync_reply_text({"agentResponse": {"text": "hey"}}) == "hey"
    assert sync_reply_text({"success": True, "userMessage": {}}) is None
    assert v0_reply_texts([{"text": "a"}, {"text": ""}, {"action": "X"}, {"text": "b"}]) == ["a", "b"]
    assert v0_reply_texts({"text": "solo"}) == ["solo"] and v0_reply_texts("junk") == []
    payload = {"messages": [
        {"id": "3", "content": "newest", "isAgent": True},
        {"id": "2", "content": "mine", "isAgent": False},
        {"id": "1", "content": "older", "isAgent": True},
    ]}
    assert agent_texts_from_messages(payload, set()) == [("1", "older"), ("3", "newest")]
    assert agent_texts_from_messages(payload, {"1"}) == [("3", "newest")]
    assert agent_texts_from_messages({"bad": True}, set()) == []
