"""The loopback Discord's main gateway (v10, JSON, optional zlib-stream transport compression).

discord.py connects with ``?v=10&encoding=json&compress=zlib-stream`` (``zstd-stream`` when the
``zstandard`` package is importable), sends HEARTBEAT as soon as it sees HELLO, then IDENTIFY or
RESUME. Dispatches are numbered per session and kept for replay so RESUME works after a drop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from bot.loopback.state import World, guild_create_payload, member_payload, user_payload

__all__ = ["MainGateway", "GatewaySession", "Intents"]

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_MS = 41250
REPLAY_LIMIT = 1000  # dispatches kept per session for RESUME


class Intents:
    """Gateway intent bits (Discord's numbering)."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_VOICE_STATES = 1 << 7
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_TYPING = 1 << 11
    DIRECT_MESSAGES = 1 << 12
    MESSAGE_CONTENT = 1 << 15


# Which intent an event needs; events not listed are always sent.
_EVENT_INTENTS: dict[str, int] = {
    "GUILD_CREATE": Intents.GUILDS,
    "CHANNEL_CREATE": Intents.GUILDS,
    "CHANNEL_UPDATE": Intents.GUILDS,
    "GUILD_MEMBER_ADD": Intents.GUILD_MEMBERS,
    "GUILD_MEMBER_REMOVE": Intents.GUILD_MEMBERS,
    "VOICE_STATE_UPDATE": Intents.GUILD_VOICE_STATES,
    "TYPING_START": Intents.GUILD_MESSAGE_TYPING,
}


class _Compressor:
    """Per-connection transport compression: one zlib stream, each message ending in a sync flush."""

    def __init__(self, kind: str | None) -> None:
        self.kind = kind
        self._zlib = zlib.compressobj() if kind == "zlib-stream" else None
        self._zstd: Any = None
        if kind == "zstd-stream":
            import zstandard  # only reachable when discord.py itself found zstandard

            self._zstd = zstandard.ZstdCompressor().compressobj()

    def encode(self, text: str) -> str | bytes:
        if self._zlib is not None:
            return self._zlib.compress(text.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
        if self._zstd is not None:
            import zstandard

            return self._zstd.compress(text.encode()) + self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return text


@dataclass(eq=False)
class _Conn:
    """One gateway socket: sends are serialised because the zlib stream must stay in send order."""

    ws: web.WebSocketResponse
    compressor: _Compressor | None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    last_sent: int | None = None  # highest dispatch seq written; None until IDENTIFY/RESUME

    async def send(self, payload: dict[str, Any]) -> None:
        text = json.dumps(payload, separators=(",", ":"))
        async with self.lock:
            if self.ws.closed:
                return
            data = self.compressor.encode(text) if self.compressor is not None else text
            try:
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(data)
            except ConnectionError:
                log.debug("gateway send on a closing socket dropped")


@dataclass(eq=False)
class GatewaySession:
    """The bot's gateway session: survives a dropped socket until RESUME or a new IDENTIFY."""

    session_id: str
    intents: int
    user_id: int
    seq: int = 0
    replay: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    conn: _Conn | None = None


class MainGateway:
    """Serves ``/gateway``; ``dispatch`` sends an event to the bot's session (buffered when offline)."""

    def __init__(
        self,
        world: World,
        *,
        resume_url: Callable[[], str],
        on_voice_state: Callable[[GatewaySession, dict[str, Any]], Awaitable[None]],
    ) -> None:
        self.world = world
        self._resume_url = resume_url
        self._on_voice_state = on_voice_state
        self.sessions: dict[str, GatewaySession] = {}
        self.current: GatewaySession | None = None
        self._conns: set[_Conn] = set()
        self._ready = asyncio.Event()
        self._timers: set[asyncio.TimerHandle] = set()

    def register(self, app: web.Application) -> None:
        app.router.add_get("/gateway", self._handle)
        app.router.add_get("/gateway/", self._handle)

    @property
    def identified(self) -> asyncio.Event:
        """Set once the bot has a session (after READY was queued)."""
        return self._ready

    # --- sending ----------------------------------------------------------------------------------

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Queue a DISPATCH for the bot; numbered and kept for replay even if the socket is down."""
        session = self.current
        if session is None:
            log.debug("gateway dispatch %s with no session: dropped", event)
            return
        needed = _EVENT_INTENTS.get(event)
        if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE"):
            needed = Intents.GUILD_MESSAGES if data.get("guild_id") else Intents.DIRECT_MESSAGES
        if needed is not None and not session.intents & needed:
            return
        if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE") and not session.intents & Intents.MESSAGE_CONTENT:
            # Without the message content intent Discord blanks content except for mentions and DMs.
            mentioned = any(int(m["id"]) == session.user_id for m in data.get("mentions", []))
            if data.get("guild_id") and not mentioned and int(data["author"]["id"]) != session.user_id:
                data = {**data, "content": "", "embeds": [], "attachments": []}
        session.seq += 1
        session.replay.append((session.seq, event, data))
        del session.replay[:-REPLAY_LIMIT]
        self.world.events.append("dispatch", event=event, seq=session.seq)
        if session.conn is not None:
            session.conn.wake.set()

    def dispatch_later(self, delay: float, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Dispatch ``events`` in order after ``delay`` seconds, as a network hop would deliver them."""
        def fire() -> None:
            self._timers.discard(handle)
            for event, data in events:
                self.dispatch(event, data)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    async def close_socket(self, code: int = 4000, message: str = "") -> None:
        """Close the bot's gateway socket (the session stays resumable unless the code forbids it)."""
        session = self.current
        if session is not None and session.conn is not None and not session.conn.ws.closed:
            await session.conn.ws.close(code=code, message=message.encode())

    async def send_op(self, op: int, d: Any) -> None:
        """Send a non-dispatch op (7 RECONNECT, 9 INVALID_SESSION) to the bot's current socket."""
        session = self.current
        if session is not None and session.conn is not None:
            await session.conn.send({"op": op, "d": d, "s": None, "t": None})

    async def shutdown(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for conn in list(self._conns):
            await conn.ws.close(code=1001, message=b"loopback Discord shutting down")

    async def _writer(self, conn: _Conn) -> None:
        """Write the session's dispatches in sequence order, from ``conn.last_sent`` on."""
        while True:
            await conn.wake.wait()
            conn.wake.clear()
            session = self.current
            if session is None or session.conn is not conn or conn.last_sent is None:
                continue
            for number, event, data in list(session.replay):
                if number > conn.last_sent:
                    await conn.send({"op": 0, "t": event, "s": number, "d": data})
                    conn.last_sent = number

    # --- receiving --------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        query = request.query
        if query.get("v") not in ("9", "10"):
            self.world.problem(f"the bot opened the gateway with v={query.get('v')!r}; Discord serves v10")
            await ws.close(code=4012, message=b"Invalid API version")
            return ws
        if query.get("encoding", "json") != "json":
            self.world.problem(f"the bot asked for gateway encoding {query.get('encoding')!r}; only json is served")
            await ws.close(code=4002, message=b"Decode error")
            return ws
        kind = query.get("compress")
        if kind not in (None, "zlib-stream", "zstd-stream"):
            await ws.close(code=4000, message=b"Unknown compression")
            return ws
        try:
            compressor = _Compressor(kind) if kind else None
        except ImportError:
            self.world.problem(f"the bot asked for {kind} compression, which this loopback cannot produce")
            await ws.close(code=4000, message=b"Unsupported compression")
            return ws
        conn = _Conn(ws, compressor)
        self._conns.add(conn)
        writer = asyncio.get_running_loop().create_task(self._writer(conn), name="loopback-gateway-writer")
        try:
            await conn.send({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}, "s": None, "t": None})
            await self._serve(conn)
        finally:
            writer.cancel()
            try:
                await writer
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
            self._conns.discard(conn)
            for session in self.sessions.values():
                if session.conn is conn:
                    session.conn = None
        return ws

    async def _serve(self, conn: _Conn) -> None:
        ws = conn.ws
        session: GatewaySession | None = None
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.BINARY:
                    self.world.problem("the bot sent a binary frame on the main gateway (payloads must be JSON text)")
                    await ws.close(code=4002, message=b"Decode error")
                continue
            try:
                payload = json.loads(msg.data)
                op = payload["op"]
                d = payload.get("d")
            except (ValueError, KeyError, TypeError):
                self.world.problem("the bot sent an undecodable gateway payload")
                await ws.close(code=4002, message=b"Decode error")
                return
            if op == 1:
                await conn.send({"op": 11, "d": None, "s": None, "t": None})
                continue
            if op == 2:
                if session is not None:
                    self.world.problem("the bot sent IDENTIFY twice on one connection")
                    await ws.close(code=4005, message=b"Already authenticated.")
                    return
                session = await self._identify(conn, d or {})
                if session is None:
                    return
                continue
            if op == 6:
                session = await self._resume(conn, d or {})
                continue
            if session is None:
                self.world.problem(f"the bot sent op {op} before IDENTIFY")
                await ws.close(code=4003, message=b"Not authenticated.")
                return
            if op == 4:
                self.world.events.append("voice_state_request", **(d or {}))
                await self._on_voice_state(session, d or {})
            elif op == 3:
                self.world.events.append("presence", **(d or {}))
            elif op == 8:
                await self._request_members(session, d or {})
            else:
                self.world.problem(f"the bot sent unknown gateway opcode {op}")
                await ws.close(code=4001, message=b"Unknown opcode.")
                return

    async def _identify(self, conn: _Conn, d: dict[str, Any]) -> GatewaySession | None:
        ws = conn.ws
        if d.get("token") != self.world.token:
            self.world.problem("IDENTIFY with a wrong token")
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        intents = d.get("intents")
        if not isinstance(intents, int):
            self.world.problem("IDENTIFY without intents (required on gateway v10)")
            await ws.close(code=4013, message=b"Invalid intent(s).")
            return None
        previous = self.current
        session = GatewaySession(session_id=secrets.token_hex(16), intents=intents, user_id=self.world.bot.id)
        if previous is not None and previous.conn is not None and previous.conn is not conn:
            await previous.conn.ws.close(code=4000, message=b"Session replaced")
        self.sessions[session.session_id] = session
        self.current = session
        self.world.events.append("identify", session_id=session.session_id, intents=intents,
                                 shard=d.get("shard"), compress=conn.compressor.kind if conn.compressor else None)
        world = self.world
        ready: dict[str, Any] = {
            "v": 10,
            "user": {**user_payload(world.bot), "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g), "unavailable": True} for g in world.guilds],
            "session_id": session.session_id,
            "resume_gateway_url": self._resume_url(),
            "application": {"id": str(world.application_id), "flags": (1 << 15) | (1 << 19)},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "user_settings": {},
            "geo_ordered_rtc_regions": ["loopback"],
            "_trace": ["loopback-discord"],
        }
        if d.get("shard") is not None:
            ready["shard"] = d["shard"]
        conn.last_sent = 0
        session.conn = conn
        self.dispatch("READY", ready)
        for guild in world.guilds.values():
            self.dispatch("GUILD_CREATE", guild_create_payload(guild))
        self._ready.set()
        return session

    async def _resume(self, conn: _Conn, d: dict[str, Any]) -> GatewaySession | None:
        ws = conn.ws
        session = self.sessions.get(str(d.get("session_id")))
        if d.get("token") != self.world.token:
            self.world.problem("RESUME with a wrong token")
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        seq = int(d.get("seq") or 0)
        if session is None or session is not self.current or (session.replay and session.replay[0][0] > seq + 1):
            # Unknown session, or older than the replay buffer: INVALID_SESSION, not resumable.
            self.world.events.append("resume_rejected", session_id=d.get("session_id"))
            await conn.send({"op": 9, "d": False, "s": None, "t": None})
            return None
        old = session.conn
        if old is not None and old is not conn and not old.ws.closed:
            await old.ws.close(code=4000, message=b"Resumed elsewhere")
        conn.last_sent = seq
        session.conn = conn
        self.world.events.append("resume", session_id=session.session_id, seq=seq)
        # Missed dispatches are replayed first (the writer sends everything after ``seq``), then RESUMED.
        self.dispatch("RESUMED", {"_trace": ["loopback-discord"]})
        return session

    async def _request_members(self, session: GatewaySession, d: dict[str, Any]) -> None:
        guild = self.world.guilds.get(int(d.get("guild_id", 0)))
        if guild is None:
            return
        if not session.intents & Intents.GUILD_MEMBERS:
            self.world.problem("REQUEST_GUILD_MEMBERS without the GUILD_MEMBERS intent")
            await self.close_socket(4013, "Invalid intent(s).")
            return
        members = list(guild.members.values())
        if d.get("user_ids"):
            wanted = {int(u) for u in d["user_ids"]}
            members = [m for m in members if m.user.id in wanted]
        elif d.get("query"):
            members = [m for m in members if m.user.username.lower().startswith(str(d["query"]).lower())]
        limit = int(d.get("limit") or 0)
        if limit:
            members = members[:limit]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [member_payload(m) for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if d.get("nonce"):
            chunk["nonce"] = d["nonce"]
        self.dispatch("GUILD_MEMBERS_CHUNK", chunk)
