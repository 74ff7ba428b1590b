"""A loopback ElizaOS server speaking the v1 sessions API and the v0 direct-client API.

v1 (``@elizaos/server``): ``POST /api/messaging/sessions`` -> 201 ``{sessionId, channelId, agentId,
userId, createdAt, metadata, expiresAt, timeoutConfig}``; ``POST
/api/messaging/sessions/{id}/messages`` answering by ``transport`` (or the older ``mode``): ``sse``
streams ``event: user_message`` / ``chunk`` / ``done``; ``http`` returns ``{success, userMessage,
agentResponse, sessionStatus}``; ``websocket`` (the default, and what a server that predates
``transport`` does) returns the stored user message, the reply being readable from ``GET
/api/messaging/sessions/{id}/messages``. ``GET /api/agents/{id}`` -> ``{success, data}``. Errors are
``{success: false, error: {code, message}}``; a wrong ``X-API-KEY`` gets 401.

v0 (``client-direct``): ``POST /{agentId}/message`` (JSON or form; id or name) -> JSON list of
``{user, text, action}``; ``GET /agents`` -> ``{agents: [...]}``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.loopback_http import serve_on_loopback

__all__ = ["FakeElizaOS"]


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


@dataclass
class FakeElizaOS:
    version: str = "v1"                       # "v1" or "v0" (v0 has no /api routes)
    agent_id: str = "8b0a7d52-6a3c-4f0e-9a63-0d2f4f3c1e11"
    agent_name: str = "Ember"
    api_key: str | None = None
    reply_tokens: list[str] = field(default_factory=lambda: ["Hi", " there", "!"])
    understands_transport: bool = True        # False: an older server, always "websocket"
    sse_chunks: bool = True                   # False: SSE with only the final `done` event
    paced: bool = False                       # SSE chunks wait for allow()
    fail_message_with: int | None = None

    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    chunks_sent: int = 0
    finished: int = 0

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._permits: asyncio.Semaphore | None = None
        self._released = False
        self.url = ""

    async def start(self) -> str:
        self._permits = asyncio.Semaphore(0)
        app = web.Application()
        if self.version == "v1":
            app.router.add_post("/api/messaging/sessions", self._create_session)
            app.router.add_post("/api/messaging/sessions/{sid}/messages", self._send)
            app.router.add_get("/api/messaging/sessions/{sid}/messages", self._messages)
            app.router.add_get("/api/agents/{aid}", self._agent)
        else:
            app.router.add_route("*", "/api/{tail:.*}", self._express_404)
        app.router.add_post("/{aid}/message", self._v0_message)
        app.router.add_get("/agents", self._v0_agents)
        self._runner, self.url = await serve_on_loopback(app, shutdown_timeout=0.5)
        return self.url

    async def close(self) -> None:
        self._released = True
        if self._permits is not None:
            for _ in range(1000):
                self._permits.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def allow(self, n: int = 1) -> None:
        assert self._permits is not None
        for _ in range(n):
            self._permits.release()

    def expire_all_sessions(self) -> None:
        self.sessions.clear()

    @property
    def reply(self) -> str:
        return "".join(self.reply_tokens)

    # ------------------------------------------------------------------------------ helpers

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"success": False, "error": {"code": code, "message": message}}, status=status)

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key is not None and request.headers.get("X-API-KEY") != self.api_key:
            return web.json_response({"error": "Unauthorized: Invalid or missing X-API-KEY"}, status=401)
        return None

    async def _body(self, request: web.Request) -> Any:
        if not request.can_read_body:
            body: Any = None
        elif request.content_type == "application/json":
            body = await request.json()
        else:
            body = dict(await request.post())
        self.requests.append((request.method, request.path, body))
        return body

    # ------------------------------------------------------------------------------ v1

    async def _agent(self, request: web.Request) -> web.StreamResponse:
        await self._body(request)
        if (err := self._unauthorized(request)) is not None:
            return err
        if request.match_info["aid"] != self.agent_id:
            return self._error(404, "AGENT_NOT_FOUND", "Agent not found")
        return web.json_response({"success": True, "data": {"id": self.agent_id, "name": self.agent_name,
                                                            "status": "active"}})

    async def _create_session(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if (err := self._unauthorized(request)) is not None:
            return err
        if not isinstance(body, dict) or not isinstance(body.get("agentId"), str) or not isinstance(body.get("userId"), str):
            return self._error(400, "MISSING_FIELDS", "Missing required fields: agentId, userId")
        for name in ("agentId", "userId"):
            if not _is_uuid(body[name]):
                return self._error(400, "INVALID_UUID", f"Invalid {name} format")
        if body["agentId"] != self.agent_id:
            return self._error(404, "AGENT_NOT_FOUND", f"Agent not found: {body['agentId']}")
        session_id = str(uuid.uuid4())
        now = time.time()
        session = {"sessionId": session_id, "channelId": str(uuid.uuid4()), "agentId": body["agentId"],
                   "userId": body["userId"], "metadata": body.get("metadata") or {}, "messages": []}
        self.sessions[session_id] = session
        return web.json_response({
            "sessionId": session_id, "channelId": session["channelId"], "agentId": body["agentId"],
            "userId": body["userId"], "createdAt": _iso(now), "metadata": session["metadata"],
            "expiresAt": _iso(now + 1800),
            "timeoutConfig": {"timeoutMinutes": 30, "autoRenew": True, "maxDurationMinutes": 720,
                              "warningThresholdMinutes": 5},
        }, status=201)

    def _store(self, session: dict[str, Any], content: str, *, agent: bool) -> dict[str, Any]:
        message = {"id": str(uuid.uuid4()), "content": content,
                   "authorId": self.agent_id if agent else session["userId"], "isAgent": agent,
                   "createdAt": _iso(time.time()), "metadata": {}}
        session["messages"].append(message)
        return message

    async def _send(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if (err := self._unauthorized(request)) is not None:
            return err
        session = self.sessions.get(request.match_info["sid"])
        if session is None:
            return self._error(404, "SESSION_NOT_FOUND", f"Session not found: {request.match_info['sid']}")
        if not isinstance(body, dict) or not isinstance(body.get("content"), str):
            return self._error(400, "INVALID_CONTENT", "Invalid message request format")
        content = body["content"]
        if not content:
            return self._error(400, "INVALID_CONTENT", "Content cannot be empty")
        if len(content) > 4000:
            return self._error(400, "INVALID_CONTENT", "Content exceeds maximum length of 4000 characters")
        if self.fail_message_with is not None:
            return self._error(self.fail_message_with, "MESSAGE_SEND_FAILED", "Failed to process message")
        user_message = self._store(session, content, agent=False)
        status = {"sessionStatus": {"expiresAt": _iso(time.time() + 1800), "renewalCount": 1,
                                    "wasRenewed": True, "isNearExpiration": False}}
        transport = (body.get("transport") or {"stream": "sse", "sync": "http"}.get(body.get("mode"), body.get("mode"))
                     if self.understands_transport else "websocket")
        if transport == "sse":
            return await self._sse(request, session, user_message)
        if transport == "http":
            self._store(session, self.reply, agent=True)
            self.finished += 1
            return web.json_response({"success": True, "userMessage": user_message,
                                      "agentResponse": {"text": self.reply, "thought": "be nice",
                                                        "actions": ["REPLY"]}, **status}, status=201)
        # websocket: the reply would be pushed over Socket.IO; it is readable from the history
        self._store(session, self.reply, agent=True)
        self.finished += 1
        return web.json_response({"success": True, "userMessage": user_message, **status}, status=201)

    async def _sse(self, request: web.Request, session: dict[str, Any], user_message: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def event(name: str, data: Any) -> None:
            await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        await event("user_message", user_message)
        message_id = str(uuid.uuid4())
        if self.sse_chunks:
            for index, token in enumerate(self.reply_tokens):
                if self.paced:
                    assert self._permits is not None
                    await self._permits.acquire()
                    if self._released:
                        return response
                await event("chunk", {"messageId": message_id, "chunk": token, "index": index})
                self.chunks_sent += 1
        self._store(session, self.reply, agent=True)
        await event("done", {"text": self.reply, "thought": "be nice", "actions": ["REPLY"]})
        await response.write_eof()
        self.finished += 1
        return response

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        await self._body(request)
        if (err := self._unauthorized(request)) is not None:
            return err
        session = self.sessions.get(request.match_info["sid"])
        if session is None:
            return self._error(404, "SESSION_NOT_FOUND", "Session not found")
        limit = int(request.query.get("limit", "50"))
        newest_first = list(reversed(session["messages"]))[:limit]
        return web.json_response({"messages": newest_first, "hasMore": len(session["messages"]) > limit})

    # ------------------------------------------------------------------------------ v0

    async def _express_404(self, request: web.Request) -> web.StreamResponse:
        """What Express answers for a route a v0 server does not have."""
        await self._body(request)
        return web.Response(status=404, content_type="text/html",
                            text=f"<pre>Cannot {request.method} {request.path}</pre>")

    def _v0_agent_matches(self, key: str) -> bool:
        return key == self.agent_id or key.lower() == self.agent_name.lower()

    async def _v0_message(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if not self._v0_agent_matches(request.match_info["aid"]):
            return web.Response(status=404, text="Agent not found")
        text = body.get("text") if isinstance(body, dict) else None
        if not text:
            return web.json_response([])
        self.finished += 1
        return web.json_response([{"user": self.agent_name, "text": self.reply, "action": "NONE"}])

    async def _v0_agents(self, request: web.Request) -> web.StreamResponse:
        await self._body(request)
        return web.json_response({"agents": [{"id": self.agent_id, "name": self.agent_name, "clients": []}]})


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"
