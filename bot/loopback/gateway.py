"""The loopback Discord's main gateway (v10, JSON, optional zlib-stream transport compression).

discord.py connects with ``?v=10&encoding=json&compress=zlib-stream`` (``zstd-stream`` when the
``zstandard`` package is importable), sends HEARTBEAT as soon as it sees HELLO, then IDENTIFY or
RESUME. Dispatches are numbered per session and kept for replay so RESUME works after a drop.

It shards as Discord does (docs/events/gateway.mdx, "Sharding" and "Identifying"): any number of
sessions live at once, each identified with a ``[shard_id, num_shards]`` pair (none means
``[0, 1]``); a guild's events go to every session whose shard owns it, ``(guild_id >> 22) %
num_shards``, and events without a guild (DMs) only to shard 0. Sessions with different
``num_shards`` may live side by side: Discord routes each by its own pair and says so. An IDENTIFY
is refused with close 4010 for a shard outside its count, 4011 when the shard would hold more
guilds than ``max_guilds_per_shard``, and op 9 (Invalid Session) when it comes within 5 s of the
last one in its bucket (``shard_id % max_concurrency``). Each accepted IDENTIFY spends one of the
day's session starts; one IDENTIFY past the last ends every session and resets the token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from bot.loopback.state import World, guild_create_payload, member_payload, user_payload

__all__ = ["MainGateway", "GatewaySession", "Intents", "Sharding", "SessionStarts", "guild_shard"]

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
    closed_by_server: bool = False

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

    async def close(self, code: int, message: bytes) -> None:
        self.closed_by_server = True
        await self.ws.close(code=code, message=message)

    @property
    def client_closed_cleanly(self) -> bool:
        """The bot closed with 1000 or 1001: Discord invalidates the session (no RESUME after)."""
        return not self.closed_by_server and self.ws.close_code in (1000, 1001)


def guild_shard(guild_id: int, shard_count: int) -> int:
    """The shard that receives a guild's events (Discord's sharding formula)."""
    return (guild_id >> 22) % shard_count


@dataclass
class Sharding:
    """How Discord limits sharded logins; every field is settable (low, for tests)."""

    max_concurrency: int = 1  # IDENTIFYs per 5 s, one per bucket shard_id % max_concurrency
    identify_interval: float = 5.0  # seconds between two IDENTIFYs of one bucket
    session_start_total: int = 1000  # session starts per window (Discord: 1000 a day)
    session_start_window: float = 86_400.0  # seconds from the window's first IDENTIFY to its reset
    max_guilds_per_shard: int = 2500  # Discord closes 4011 past this
    recommended_shards: int | None = None  # GET /gateway/bot's "shards"; None: one per 1000 guilds
    session_timeout: float = 180.0  # an unresumed, disconnected session is dropped after this


class SessionStarts:
    """The session start limit and the per-bucket IDENTIFY rate, in loop time."""

    def __init__(self, sharding: Sharding) -> None:
        self.sharding = sharding
        self.remaining = sharding.session_start_total
        self._window_end: float | None = None
        self._last_identify: dict[int, float] = {}  # bucket -> loop time of its last accepted IDENTIFY

    def _refresh(self, now: float) -> None:
        if self._window_end is not None and now >= self._window_end:
            self.remaining = self.sharding.session_start_total
            self._window_end = None

    def bucket(self, shard_id: int) -> int:
        return shard_id % max(1, self.sharding.max_concurrency)

    def limit(self, now: float) -> dict[str, int]:
        """The ``session_start_limit`` object of ``GET /gateway/bot``."""
        self._refresh(now)
        window = self.sharding.session_start_window
        reset_after = window if self._window_end is None else self._window_end - now
        return {
            "total": self.sharding.session_start_total,
            "remaining": self.remaining,
            "reset_after": int(reset_after * 1000),
            "max_concurrency": self.sharding.max_concurrency,
        }

    def used_up(self, now: float) -> bool:
        self._refresh(now)
        return self.remaining <= 0

    def too_soon(self, shard_id: int, now: float) -> float | None:
        """Seconds since this bucket's last IDENTIFY when that is under the interval, else None."""
        last = self._last_identify.get(self.bucket(shard_id))
        if last is not None and now - last < self.sharding.identify_interval:
            return now - last
        return None

    def start(self, shard_id: int, now: float) -> None:
        self._refresh(now)
        if self._window_end is None:
            self._window_end = now + self.sharding.session_start_window
        self.remaining -= 1
        self._last_identify[self.bucket(shard_id)] = now


@dataclass(eq=False)
class GatewaySession:
    """One identified session: survives a dropped socket until RESUME, a clean close or its timeout."""

    session_id: str
    intents: int
    user_id: int
    shard: tuple[int, int] = (0, 1)
    sharded: bool = False  # IDENTIFY carried a shard pair (READY then echoes it)
    seq: int = 0
    replay: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    conn: _Conn | None = None
    expiry: asyncio.TimerHandle | None = None

    def owns(self, guild_id: int) -> bool:
        return guild_shard(guild_id, self.shard[1]) == self.shard[0]


def _routing_guild(event: str, data: dict[str, Any]) -> int | None:
    """The guild an event is about (routes it to a shard), or None for events outside guilds."""
    raw = data.get("id") if event in ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE") else data.get("guild_id")
    return int(raw) if raw is not None else None


class MainGateway:
    """Serves ``/gateway``; ``dispatch`` sends an event to the sessions of the shard that owns it."""

    def __init__(
        self,
        world: World,
        *,
        resume_url: Callable[[], str],
        on_voice_state: Callable[[GatewaySession, dict[str, Any]], Awaitable[None]],
        sharding: Sharding | None = None,
    ) -> None:
        self.world = world
        self._resume_url = resume_url
        self._on_voice_state = on_voice_state
        self.sharding = sharding if sharding is not None else Sharding()
        self.starts = SessionStarts(self.sharding)
        self.sessions: dict[str, GatewaySession] = {}  # live (connected or resumable) sessions
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

    def live_shards(self) -> set[int]:
        """Shard ids that have a live session."""
        return {s.shard[0] for s in self.sessions.values()}

    def sessions_of(self, shard_id: int | None = None) -> list[GatewaySession]:
        return [s for s in self.sessions.values() if shard_id is None or s.shard[0] == shard_id]

    def recommended_shards(self) -> int:
        """``GET /gateway/bot``'s ``shards``: as set, else one shard per 1000 guilds as Discord advises."""
        if self.sharding.recommended_shards is not None:
            return self.sharding.recommended_shards
        return max(1, math.ceil(len(self.world.guilds) / 1000))

    def session_start_limit(self) -> dict[str, int]:
        return self.starts.limit(asyncio.get_running_loop().time())

    # --- sending ----------------------------------------------------------------------------------

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Queue a DISPATCH for every session of the owning shard (shard 0 for events outside guilds);
        numbered and kept for replay even while a session's socket is down."""
        guild_id = _routing_guild(event, data)
        targets = [s for s in self.sessions.values()
                   if (s.shard[0] == 0 if guild_id is None else s.owns(guild_id))]
        if not targets:
            log.debug("gateway dispatch %s with no session for its shard: dropped", event)
            return
        for session in targets:
            self._queue(session, event, data)

    def _queue(self, session: GatewaySession, event: str, data: dict[str, Any]) -> None:
        """Number ``event`` in ``session`` and wake its writer, if its intents let it through."""
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
        self.world.events.append("dispatch", event=event, seq=session.seq, session_id=session.session_id,
                                 shard=session.shard[0])
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

    async def close_socket(self, code: int = 4000, message: str = "", *, shard_id: int | None = None) -> None:
        """Close the bot's gateway sockets (those of ``shard_id`` only, when given); the sessions stay
        resumable unless the code forbids it."""
        for session in self.sessions_of(shard_id):
            if session.conn is not None and not session.conn.ws.closed:
                await session.conn.close(code, message.encode())

    async def send_op(self, op: int, d: Any, *, shard_id: int | None = None) -> None:
        """Send a non-dispatch op (7 RECONNECT, 9 INVALID_SESSION) to the bot's sockets (or one shard's)."""
        for session in self.sessions_of(shard_id):
            if session.conn is not None:
                await session.conn.send({"op": op, "d": d, "s": None, "t": None})

    async def shutdown(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for session in self.sessions.values():
            if session.expiry is not None:
                session.expiry.cancel()
        for conn in list(self._conns):
            await conn.close(1001, b"loopback Discord shutting down")

    async def _writer(self, conn: _Conn) -> None:
        """Write the connection's session's dispatches in sequence order, from ``conn.last_sent`` on."""
        while True:
            await conn.wake.wait()
            conn.wake.clear()
            session = next((s for s in self.sessions.values() if s.conn is conn), None)
            if session is None or conn.last_sent is None:
                continue
            for number, event, data in list(session.replay):
                if number > conn.last_sent:
                    await conn.send({"op": 0, "t": event, "s": number, "d": data})
                    conn.last_sent = number

    # --- session lifetime -------------------------------------------------------------------------

    def _drop(self, session: GatewaySession, reason: str) -> None:
        if self.sessions.pop(session.session_id, None) is None:
            return
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        self.world.events.append("session_end", session_id=session.session_id, shard=list(session.shard),
                                 reason=reason)

    def _disconnected(self, session: GatewaySession, conn: _Conn) -> None:
        session.conn = None
        if conn.client_closed_cleanly:
            self._drop(session, "closed by the bot")  # Discord: 1000/1001 invalidate the session
            return

        def expire() -> None:
            session.expiry = None
            if session.conn is None:
                self._drop(session, "timed out")

        session.expiry = asyncio.get_running_loop().call_later(self.sharding.session_timeout, expire)

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
            for session in list(self.sessions.values()):
                if session.conn is conn:
                    self._disconnected(session, conn)
        return ws

    async def _serve(self, conn: _Conn) -> None:
        ws = conn.ws
        session: GatewaySession | None = None
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.BINARY:
                    self.world.problem("the bot sent a binary frame on the main gateway (payloads must be JSON text)")
                    await conn.close(4002, b"Decode error")
                continue
            try:
                payload = json.loads(msg.data)
                op = payload["op"]
                d = payload.get("d")
            except (ValueError, KeyError, TypeError):
                self.world.problem("the bot sent an undecodable gateway payload")
                await conn.close(4002, b"Decode error")
                return
            if op == 1:
                await conn.send({"op": 11, "d": None, "s": None, "t": None})
                continue
            if op == 2:
                if session is not None:
                    self.world.problem("the bot sent IDENTIFY twice on one connection")
                    await conn.close(4005, b"Already authenticated.")
                    return
                session = await self._identify(conn, d or {})
                if session is None and ws.closed:
                    return
                continue  # refused with op 9: the bot closes and connects again
            if op == 6:
                session = await self._resume(conn, d or {})
                continue
            if session is None:
                self.world.problem(f"the bot sent op {op} before IDENTIFY")
                await conn.close(4003, b"Not authenticated.")
                return
            if op == 4:
                self.world.events.append("voice_state_request", **(d or {}))
                if self._voice_on_right_shard(session, d or {}):
                    await self._on_voice_state(session, d or {})
            elif op == 3:
                self.world.events.append("presence", **(d or {}))
            elif op == 8:
                await self._request_members(session, d or {})
            else:
                self.world.problem(f"the bot sent unknown gateway opcode {op}")
                await conn.close(4001, b"Unknown opcode.")
                return

    def _voice_on_right_shard(self, session: GatewaySession, d: dict[str, Any]) -> bool:
        """A guild's op 4 goes on the session of the shard that owns it; Discord ignores it elsewhere."""
        try:
            guild_id = int(d["guild_id"])
        except (KeyError, TypeError, ValueError):
            return True  # the voice service names that problem
        if session.owns(guild_id):
            return True
        self.world.problem(f"voice state update (op 4) for guild {guild_id} sent on shard {list(session.shard)}, "
                           f"which does not own it (shard {guild_shard(guild_id, session.shard[1])} does)")
        return False

    def _shard_pair(self, raw: Any) -> tuple[int, int] | None:
        """IDENTIFY's ``shard``: ``[shard_id, num_shards]`` with 0 <= shard_id < num_shards, else None."""
        if not isinstance(raw, (list, tuple)) or len(raw) != 2:
            return None
        shard_id, count = raw
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (shard_id, count)):
            return None
        return (shard_id, count) if 0 <= shard_id < count else None

    async def _identify(self, conn: _Conn, d: dict[str, Any]) -> GatewaySession | None:
        """Start a session, or refuse the IDENTIFY as Discord would (close, or op 9 and None)."""
        world = self.world
        if d.get("token") != world.token:
            world.problem("IDENTIFY with a wrong token")
            await conn.close(4004, b"Authentication failed.")
            return None
        intents = d.get("intents")
        if not isinstance(intents, int):
            world.problem("IDENTIFY without intents (required on gateway v10)")
            await conn.close(4013, b"Invalid intent(s).")
            return None
        shard = (0, 1) if d.get("shard") is None else self._shard_pair(d.get("shard"))
        if shard is None:
            world.problem(f"IDENTIFY with an invalid shard {d.get('shard')!r} (needs [shard_id, num_shards], "
                          "0 <= shard_id < num_shards)")
            await conn.close(4010, b"Invalid shard.")
            return None
        held = [g for g in world.guilds if guild_shard(g, shard[1]) == shard[0]]
        if len(held) > self.sharding.max_guilds_per_shard:
            world.problem(f"IDENTIFY as shard {list(shard)} would hold {len(held)} guilds, over the "
                          f"{self.sharding.max_guilds_per_shard} per shard Discord allows: sharding required")
            await conn.close(4011, b"Sharding required.")
            return None
        now = asyncio.get_running_loop().time()
        if self.starts.used_up(now):
            await self._exhausted()
            await conn.close(4004, b"Authentication failed.")
            return None
        since = self.starts.too_soon(shard[0], now)
        if since is not None:
            bucket = self.starts.bucket(shard[0])
            world.problem(f"IDENTIFY for shard {list(shard)} {since:.2f} s after the last one in its bucket "
                          f"{bucket} (Discord allows one per {self.sharding.identify_interval:g} s per bucket "
                          f"shard_id % max_concurrency): Discord answered op 9 Invalid Session",
                          shard=list(shard), bucket=bucket)
            world.events.append("identify_refused", shard=list(shard), bucket=bucket, since=since)
            await conn.send({"op": 9, "d": False, "s": None, "t": None})
            return None
        self.starts.start(shard[0], now)
        session = GatewaySession(session_id=secrets.token_hex(16), intents=intents, user_id=world.bot.id,
                                 shard=shard, sharded=d.get("shard") is not None)
        self.sessions[session.session_id] = session
        world.events.append("identify", session_id=session.session_id, intents=intents,
                            shard=d.get("shard"), compress=conn.compressor.kind if conn.compressor else None)
        ready: dict[str, Any] = {
            "v": 10,
            "user": {**user_payload(world.bot), "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g), "unavailable": True} for g in held],
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
        if session.sharded:
            ready["shard"] = list(shard)
        conn.last_sent = 0
        session.conn = conn
        self._queue(session, "READY", ready)
        for guild_id in held:
            self._queue(session, "GUILD_CREATE", guild_create_payload(world.guilds[guild_id]))
        self._ready.set()
        return session

    async def _exhausted(self) -> None:
        """An IDENTIFY past the session start limit: Discord ends every session and resets the token."""
        world = self.world
        world.problem(f"IDENTIFY with the session start limit used up ({self.sharding.session_start_total} "
                      "per window): Discord terminates every session and resets the bot token")
        world.token = f"loopback.{secrets.token_urlsafe(24)}"
        world.events.append("token_reset")
        for session in list(self.sessions.values()):
            conn = session.conn
            self._drop(session, "session start limit")
            if conn is not None and not conn.ws.closed:
                await conn.close(4004, b"Authentication failed.")

    async def _resume(self, conn: _Conn, d: dict[str, Any]) -> GatewaySession | None:
        session = self.sessions.get(str(d.get("session_id")))
        if d.get("token") != self.world.token:
            self.world.problem("RESUME with a wrong token")
            await conn.close(4004, b"Authentication failed.")
            return None
        seq = int(d.get("seq") or 0)
        if session is None or (session.replay and session.replay[0][0] > seq + 1):
            # Unknown, invalidated or expired session, or older than the replay buffer: not resumable.
            self.world.events.append("resume_rejected", session_id=d.get("session_id"))
            await conn.send({"op": 9, "d": False, "s": None, "t": None})
            return None
        old = session.conn
        if old is not None and old is not conn and not old.ws.closed:
            await old.close(4000, b"Resumed elsewhere")
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        conn.last_sent = seq
        session.conn = conn
        self.world.events.append("resume", session_id=session.session_id, seq=seq)
        # Missed dispatches are replayed first (the writer sends everything after ``seq``), then RESUMED.
        self._queue(session, "RESUMED", {"_trace": ["loopback-discord"]})
        return session

    async def _request_members(self, session: GatewaySession, d: dict[str, Any]) -> None:
        guild = self.world.guilds.get(int(d.get("guild_id", 0)))
        if guild is None:
            return
        if not session.intents & Intents.GUILD_MEMBERS:
            self.world.problem("REQUEST_GUILD_MEMBERS without the GUILD_MEMBERS intent")
            if session.conn is not None:
                await session.conn.close(4013, b"Invalid intent(s).")
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
        self._queue(session, "GUILD_MEMBERS_CHUNK", chunk)
