"""Replies from a running ElizaOS agent over HTTP (aiohttp).

ElizaOS v1 (the ``@elizaos/server`` sessions API):

- ``POST /api/messaging/sessions`` with ``{"agentId", "userId", "metadata"}`` (both ids UUIDs)
  answers 201 ``{"sessionId", "channelId", "agentId", "userId", "expiresAt", ...}``.
- ``POST /api/messaging/sessions/{sessionId}/messages`` with ``{"content", "metadata",
  "transport"}``; ``content`` is limited to 4,000 characters. ``transport`` (older servers: ``mode``)
  picks the answer: ``"sse"``/``"stream"`` streams ``event: chunk`` (``{"messageId", "chunk",
  "index"}``) then ``event: done`` (the final content, ``{"text", ...}``) or ``event: error``;
  ``"http"``/``"sync"`` answers ``{"success", "userMessage", "agentResponse": {"text"}}``; the
  default ``"websocket"`` answers at once with the stored user message and the reply must be read
  back with ``GET /api/messaging/sessions/{id}/messages`` (``{"messages": [{"id", "content",
  "isAgent", ...}]}``). Expired sessions answer 404/410 and are recreated.
- ``X-API-KEY`` carries ``ELIZA_SERVER_AUTH_TOKEN`` when the server requires one.

ElizaOS v0 (``client-direct``): ``POST /{agentId}/message`` with ``text``, ``userId``, ``roomId``
(form or JSON; the agent may be named instead of id'd) answers a JSON list of ``{"text", ...}``.

``auto`` tries v1 and falls back to v0 when the sessions route answers 404. One session is kept
per room. ElizaOS keeps its own memory, so only the new message is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.agent.engines.base import AgentError, Conversation, Incoming, ReplyEngine
from bot.agent.engines.openai_engine import safe_url

__all__ = [
    "ElizaOSEngine",
    "SSEEvent",
    "SSEParser",
    "agent_texts_from_messages",
    "session_id_from",
    "sync_reply_text",
    "v0_reply_texts",
]

log = logging.getLogger(__name__)

MAX_CONTENT_CHARS = 4000  # the sessions API rejects longer content
_NAMESPACE = uuid.UUID("6f1d3c55-2b9e-4c37-9a51-7c0e2f8d4b10")  # ours: stable user ids per room
_POLL_INTERVAL = 0.25


# ---------------------------------------------------------------------------------------------
# Pure conversions from ElizaOS JSON.


def _language_hint(incoming: Incoming) -> str:
    """ElizaOS has no language field of its own: the model reads the request in the text
    (v1's metadata.language carries it too, for plugins that look). English needs no hint."""
    if not incoming.language or incoming.language == "en":
        return ""
    from bot.i18n.languages import language_name

    return f"\n\n[Answer in {language_name(incoming.language, native=False)}.]"


def _unwrap(payload: Any) -> Any:
    """Some ElizaOS routes wrap answers as ``{"success": true, "data": ...}``."""
    if isinstance(payload, dict) and "data" in payload and isinstance(payload["data"], (dict, list)):
        return payload["data"]
    return payload


def session_id_from(payload: Any) -> str | None:
    """The ``sessionId`` of a create-session answer."""
    data = _unwrap(payload)
    value = data.get("sessionId") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def sync_reply_text(payload: Any) -> str | None:
    """The agent's text in a send-message answer (``agentResponse.text``), if it carries one."""
    data = _unwrap(payload)
    if not isinstance(data, dict):
        return None
    response = data.get("agentResponse")
    if isinstance(response, dict) and isinstance(response.get("text"), str):
        return response["text"]
    if isinstance(response, str):
        return response
    return None


def agent_texts_from_messages(payload: Any, seen: set[str]) -> list[tuple[str, str]]:
    """(id, text) of agent messages not in ``seen``, oldest first, from a GET messages answer."""
    data = _unwrap(payload)
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list):
        return []
    found: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict) or not message.get("isAgent"):
            continue
        message_id = str(message.get("id", ""))
        content = message.get("content")
        text = content.get("text") if isinstance(content, dict) else content
        if message_id and message_id not in seen and isinstance(text, str) and text.strip():
            found.append((message_id, text))
    found.reverse()  # the API lists newest first
    return found


def v0_reply_texts(payload: Any) -> list[str]:
    """Texts of a v0 ``/{agentId}/message`` answer: a JSON list of content objects."""
    if isinstance(payload, dict):
        payload = [payload]
    if not isinstance(payload, list):
        return []
    texts: list[str] = []
    for item in payload:
        if isinstance(item, dict) and isinstance(item.get("text"), str) and item["text"].strip():
            texts.append(item["text"])
    return texts


@dataclass(frozen=True)
class SSEEvent:
    event: str
    data: str


class SSEParser:
    """Incremental Server-Sent Events parser (WHATWG rules, enough for ElizaOS)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SSEEvent | None:
        """Feed one line (without its newline); returns an event when a blank line ends one."""
        if line == "":
            if not self._data and not self._event:
                return None
            event = SSEEvent(self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None  # comment / keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


# ---------------------------------------------------------------------------------------------


class _Status(Exception):
    """An HTTP status we handle inside this module."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class ElizaOSEngine(ReplyEngine):
    """Talks to a running ElizaOS agent; one session per room."""

    name = "elizaos"

    def __init__(
        self,
        *,
        url: str,
        agent_id: str,
        api_key: str | None = None,
        api: str = "auto",
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if api not in ("auto", "v1", "v0"):
            raise ValueError(f"api must be auto, v1 or v0, got {api!r}")
        self.url = url.rstrip("/")
        self.agent_id = agent_id
        self.api = api
        self.timeout = timeout
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=timeout)
        self._http = session
        self._own_http = session is None
        self._sessions: dict[str, str] = {}
        self._seen: dict[str, set[str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._resolved: str | None = None if api == "auto" else api

    def __repr__(self) -> str:
        return f"ElizaOSEngine(url={safe_url(self.url)!r}, agent_id={self.agent_id!r}, api={self.api!r})"

    @property
    def where(self) -> str:
        return safe_url(self.url)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream"}
        if self._api_key:
            headers["X-API-KEY"] = self._api_key
        return headers

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
            self._own_http = True
        return self._http

    # ------------------------------------------------------------------------------ errors

    def _status_error(self, status: int, what: str) -> AgentError:
        if status == 401 or status == 403:
            return AgentError(
                f"ElizaOS at {self.where} rejected the API key ({status}) for {what}: check ELIZAOS_API_KEY",
                key="agent.brain_credentials",
            )
        if status == 404:
            return AgentError(
                f"ElizaOS at {self.where} answered 404 for {what}: is ELIZAOS_AGENT_ID {self.agent_id!r} right?",
                key="agent.brain_missing",
            )
        retryable = status >= 500 or status in (408, 429)
        return AgentError(
            f"ElizaOS at {self.where} answered HTTP {status} for {what}",
            key="agent.brain_trouble",
            retryable=retryable,
        )

    def _transport_error(self, exc: BaseException) -> AgentError:
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return AgentError(
                f"ElizaOS at {self.where} timed out (no data for {self.timeout:g}s)",
                key="agent.slow",
                retryable=True,
            )
        if isinstance(exc, aiohttp.ClientConnectionError):
            return AgentError(
                f"cannot connect to ElizaOS at {self.where}: is it running and is ELIZAOS_URL right?",
                key="agent.brain_unreachable",
                retryable=True,
            )
        return AgentError(f"ElizaOS request to {self.where} failed: {type(exc).__name__}",
                          retryable=True)

    # ------------------------------------------------------------------------------ HTTP

    async def _json(self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None) -> Any:
        async with self._client().request(method, self.url + path, json=body, params=params,
                                          headers=self._headers()) as response:
            text = await response.text()
            if response.status >= 400:
                raise _Status(response.status, text[:300])
            try:
                return json.loads(text) if text else None
            except json.JSONDecodeError:
                raise AgentError(f"ElizaOS at {self.where} sent something that is not JSON for {path}",
                                 retryable=True) from None

    # ------------------------------------------------------------------------------ v1

    def _user_id(self, room: str) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"voicebot:{room}"))

    async def _create_session(self, room: str) -> str:
        payload = await self._json("POST", "/api/messaging/sessions", body={
            "agentId": self.agent_id,
            "userId": self._user_id(room),
            "metadata": {"source": "voicebot", "room": room},
        })
        session_id = session_id_from(payload)
        if session_id is None:
            raise AgentError(f"ElizaOS at {self.where} created a session without a sessionId")
        self._sessions[room] = session_id
        self._seen[session_id] = set()
        if self._resolved is None:
            self._resolved = "v1"  # from now on a 404 means a lost session, not a v0 server
        log.info("ElizaOS session created (room=%s)", room)
        return session_id

    async def _session_for(self, room: str) -> str:
        lock = self._locks.setdefault(room, asyncio.Lock())
        async with lock:
            if room in self._sessions:
                return self._sessions[room]
            return await self._create_session(room)

    @staticmethod
    def _content(conversation: Conversation) -> str:
        incoming = conversation.incoming
        text = conversation.text
        # In a shared channel the agent sees one user per room; the name says who is talking.
        if incoming.room.startswith("discord:") and not incoming.room.startswith("discord:dm:"):
            text = f"{' '.join(incoming.speaker_name.split()) or 'Someone'}: {text}"
        return text[:MAX_CONTENT_CHARS] + _language_hint(incoming)

    async def _stream_v1(self, conversation: Conversation) -> AsyncIterator[str]:
        room = conversation.incoming.room
        body = {
            "content": self._content(conversation),
            "metadata": {
                "speakerName": conversation.incoming.speaker_name,
                "speakerId": conversation.incoming.speaker_id,
                "modality": str(conversation.incoming.modality),
                **({"language": conversation.incoming.language} if conversation.incoming.language else {}),
            },
            # `transport` on current servers, `mode` on the releases before it.
            "transport": "sse",
            "mode": "stream",
        }
        for attempt in range(2):
            session_id = await self._session_for(room)
            path = f"/api/messaging/sessions/{session_id}/messages"
            async with self._client().post(self.url + path, json=body, headers=self._headers()) as response:
                if response.status in (404, 410) and attempt == 0:
                    # The session expired (ElizaOS drops idle sessions): start a fresh one.
                    self._sessions.pop(room, None)
                    self._seen.pop(session_id, None)
                    log.info("ElizaOS session expired (room=%s); creating a new one", room)
                    continue
                if response.status >= 400:
                    raise self._status_error(response.status, "a session message")
                if response.content_type == "text/event-stream":
                    async for delta in self._read_sse(response):
                        yield delta
                    return
                text = await response.text()
            try:
                payload = json.loads(text) if text else None
            except json.JSONDecodeError:
                raise AgentError(f"ElizaOS at {self.where} sent a reply that is not JSON", retryable=True) from None
            reply = sync_reply_text(payload)
            if reply is not None:
                yield reply
                return
            # A server that only answers over WebSocket: read the reply back from the session.
            async for delta in self._poll_reply(session_id):
                yield delta
            return

    async def _read_sse(self, response: aiohttp.ClientResponse) -> AsyncIterator[str]:
        parser = SSEParser()
        streamed = False
        async for raw in response.content:
            event = parser.feed(raw.decode("utf-8", "replace").rstrip("\r\n"))
            if event is None:
                continue
            try:
                data = json.loads(event.data) if event.data else {}
            except json.JSONDecodeError:
                data = {}
            if event.event == "chunk":
                chunk = data.get("chunk") if isinstance(data, dict) else None
                if isinstance(chunk, str) and chunk:
                    streamed = True
                    yield chunk
            elif event.event == "done":
                text = data.get("text") if isinstance(data, dict) else None
                if not streamed and isinstance(text, str) and text:
                    yield text  # the server gave the whole message at once
                return
            elif event.event == "error":
                problem = data.get("error") if isinstance(data, dict) else None
                raise AgentError(f"ElizaOS agent failed mid-reply: {' '.join(str(problem).split())[:200]}",
                                 key="agent.lost_thread",
                                 retryable=True)
        if not streamed:
            raise AgentError(f"ElizaOS at {self.where} closed the stream without a reply", retryable=True)

    async def _poll_reply(self, session_id: str) -> AsyncIterator[str]:
        seen = self._seen.setdefault(session_id, set())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            payload = await self._json("GET", f"/api/messaging/sessions/{session_id}/messages",
                                       params={"limit": "20"})
            found = agent_texts_from_messages(payload, seen)
            if found:
                for i, (message_id, text) in enumerate(found):
                    seen.add(message_id)
                    yield text if i == len(found) - 1 else text + "\n\n"
                return
            if loop.time() >= deadline:
                raise AgentError(f"ElizaOS at {self.where} did not answer within {self.timeout:g}s",
                                 key="agent.slow",
                                 retryable=True)
            await asyncio.sleep(_POLL_INTERVAL)  # the reply arrives over WebSocket; we poll instead

    # ------------------------------------------------------------------------------ v0

    async def _stream_v0(self, conversation: Conversation) -> AsyncIterator[str]:
        incoming = conversation.incoming
        try:
            payload = await self._json("POST", f"/{self.agent_id}/message", body={
                "text": conversation.text + _language_hint(incoming),
                "userId": incoming.speaker_id,
                "userName": incoming.speaker_name,
                "name": incoming.speaker_name,
                "roomId": incoming.room,
            })
        except _Status as exc:
            raise self._status_error(exc.status, "a v0 message") from None
        texts = v0_reply_texts(payload)
        for i, text in enumerate(texts):
            yield text if i == len(texts) - 1 else text + "\n\n"

    # ------------------------------------------------------------------------------ interface

    async def stream(self, conversation: Conversation) -> AsyncIterator[str]:
        try:
            if self._resolved != "v0":
                try:
                    async for delta in self._stream_v1(conversation):
                        yield delta
                    return
                except _Status as exc:
                    if not (exc.status == 404 and self._resolved is None):
                        raise self._status_error(exc.status, "creating a session") from None
                    log.info("ElizaOS at %s has no sessions API; using the v0 API", self.where)
                    self._resolved = "v0"
            async for delta in self._stream_v0(conversation):
                yield delta
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._transport_error(exc) from None

    async def check(self) -> str:
        """Find the agent: v1 ``GET /api/agents/{id}``, v0 ``GET /agents``."""
        try:
            if self.api in ("auto", "v1"):
                try:
                    payload = _unwrap(await self._json("GET", f"/api/agents/{self.agent_id}"))
                    name = payload.get("name") if isinstance(payload, dict) else None
                    return f"ElizaOS v1 at {self.where}: agent {name or self.agent_id}"
                except _Status as exc:
                    if exc.status != 404 or self.api == "v1":
                        raise self._status_error(exc.status, "the agent lookup") from None
            try:
                payload = await self._json("GET", "/agents")
            except _Status as exc:
                raise self._status_error(exc.status, "the agent list") from None
            agents = payload.get("agents", []) if isinstance(payload, dict) else []
            for agent in agents if isinstance(agents, list) else []:
                # v0 finds an agent by id or, case-insensitively, by name
                if isinstance(agent, dict) and (agent.get("id") == self.agent_id
                                                or str(agent.get("name", "")).lower() == self.agent_id.lower()):
                    return f"ElizaOS v0 at {self.where}: agent {agent.get('name') or self.agent_id}"
            raise AgentError(f"ElizaOS at {self.where} has no agent {self.agent_id!r} (ELIZAOS_AGENT_ID)")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._transport_error(exc) from None

    async def aclose(self) -> None:
        self._sessions.clear()
        self._seen.clear()
        if self._own_http and self._http is not None and not self._http.closed:
            await self._http.close()

    @property
    def rooms(self) -> Iterable[str]:
        """Rooms with an open session (for tests and diagnostics)."""
        return tuple(self._sessions)
