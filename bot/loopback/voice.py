"""The loopback Discord's voice gateway (``wss://{endpoint}/?v=8``), its UDP media server and DAVE.

Acting as Discord's voice server for the bot:

- voice websocket: HELLO (op 8), IDENTIFY (op 0) checks, READY (op 2), SELECT_PROTOCOL (op 1),
  SESSION_DESCRIPTION (op 4) with a fresh key, heartbeats (3 → 6), SPEAKING (op 5) both ways,
  RESUME (op 7 → 9, then a fresh op 4: discord.py 2.7.1 waits for a key after resuming),
  CLIENTS_CONNECT (op 11) / CLIENT_DISCONNECT (op 13);
- DAVE as the voice gateway: op 25 external sender, op 26 key packages in, op 27 proposals out,
  op 28 commit/welcome in, op 29 announce commit and op 30 welcome out, op 23 transition ready in,
  op 22 execute transition out, op 31 invalid commit in. Server JSON carries ``seq``; server binary
  frames are ``u16 seq | u8 op | payload``;
- UDP: 74-byte IP discovery, the bot's RTP (transport decrypt, extension + padding strip) handed
  to scripted participants, and participants' packets sent to the bot from the server's socket
  (the bot's UDP socket is connected to it, so media must come from that address).

Scripted participants (``bot.loopback.participant``) are local DAVE members: the group
coordinator sends them the same ops as the bot, by method call instead of websocket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import nacl.exceptions
import nacl.secret
from aiohttp import WSMsgType, web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bot.loopback.mls import ExternalSender, proposals_op_payload, split_commit_welcome
from bot.loopback.state import ChannelType, VoiceState, World, voice_state_payload

__all__ = [
    "VoiceService",
    "VoiceConnection",
    "VoiceCall",
    "BotVoice",
    "LocalMember",
    "MODES",
    "seal_rtp",
    "open_rtp",
    "OpenedPacket",
]

log = logging.getLogger(__name__)

XCHACHA = "aead_xchacha20_poly1305_rtpsize"
AES_GCM = "aead_aes256_gcm_rtpsize"
# Discord lists AES-GCM first; discord.py takes the first mode it supports (xchacha20).
MODES = [AES_GCM, XCHACHA]
VOICE_HEARTBEAT_MS = 13750
DAVE_TIMEOUT = 10.0  # how long the coordinator waits for op 28 / op 23 before giving up on a member

# Voice op codes.
OP_IDENTIFY, OP_SELECT, OP_READY, OP_HEARTBEAT, OP_SESSION, OP_SPEAKING = 0, 1, 2, 3, 4, 5
OP_HEARTBEAT_ACK, OP_RESUME, OP_HELLO, OP_RESUMED = 6, 7, 8, 9
OP_CLIENTS_CONNECT, OP_CLIENT_CONNECT, OP_CLIENT_DISCONNECT = 11, 12, 13
OP_PREPARE_TRANSITION, OP_EXECUTE_TRANSITION, OP_TRANSITION_READY, OP_PREPARE_EPOCH = 21, 22, 23, 24
OP_EXTERNAL_SENDER, OP_KEY_PACKAGE, OP_PROPOSALS, OP_COMMIT_WELCOME = 25, 26, 27, 28
OP_ANNOUNCE_COMMIT, OP_WELCOME, OP_INVALID_COMMIT = 29, 30, 31


# --- RTP transport (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class OpenedPacket:
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes  # after transport decrypt, extension body and padding removed
    padded: bool
    extension_words: int


def seal_rtp(
    mode: str, key: bytes, *, seq: int, timestamp: int, ssrc: int, payload: bytes, counter: int,
    extension_words: int = 0, padding: int = 0, marker: bool = False,
) -> bytes:
    """Build one ``*_rtpsize`` packet: header | ciphertext(ext body | payload | padding) + tag | u32 nonce.

    The AAD is the unencrypted header including the 4-byte extension preamble; the extension
    body and the RTP padding are inside the encryption, as Discord clients send them.
    """
    b0 = 0x80 | (0x10 if extension_words else 0) | (0x20 if padding else 0)
    header = struct.pack(">BBHII", b0, 0x78 | (0x80 if marker else 0), seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
    body = payload
    if extension_words:
        header += struct.pack(">HH", 0xBEDE, extension_words)
        # One-byte header extension elements (id 1..) padded with zeros, like audio-level extensions.
        ext = bytearray(4 * extension_words)
        ext[0] = 0x10  # id 1, length 1
        ext[1] = 0x7F
        body = bytes(ext) + body
    if padding:
        body = body + bytes(padding - 1) + bytes([padding])
    nonce4 = struct.pack(">I", counter & 0xFFFFFFFF)
    if mode == XCHACHA:
        sealed = nacl.secret.Aead(key).encrypt(body, header, nonce4 + bytes(20)).ciphertext
    elif mode == AES_GCM:
        sealed = AESGCM(key).encrypt(nonce4 + bytes(8), body, header)
    else:
        raise ValueError(f"unsupported mode {mode}")
    return header + sealed + nonce4


def open_rtp(mode: str, key: bytes, packet: bytes) -> OpenedPacket:
    """Inverse of :func:`seal_rtp`; raises ``ValueError`` on anything malformed or unauthentic."""
    if len(packet) < 12 + 16 + 4 or packet[0] >> 6 != 2:
        raise ValueError("not an RTP packet")
    b0 = packet[0]
    seq, ts, ssrc = struct.unpack_from(">HII", packet, 2)
    hlen = 12 + 4 * (b0 & 0x0F) + (4 if b0 & 0x10 else 0)
    if len(packet) < hlen + 16 + 4:
        raise ValueError("truncated RTP packet")
    header, sealed, nonce4 = packet[:hlen], packet[hlen:-4], packet[-4:]
    try:
        if mode == XCHACHA:
            body = nacl.secret.Aead(key).decrypt(sealed, header, nonce4 + bytes(20))
        elif mode == AES_GCM:
            body = AESGCM(key).decrypt(nonce4 + bytes(8), sealed, header)
        else:
            raise ValueError(f"unsupported mode {mode}")
    except (nacl.exceptions.CryptoError, InvalidTag) as exc:
        raise ValueError("transport decryption failed") from exc
    words = 0
    if b0 & 0x10:
        words = struct.unpack_from(">H", packet, hlen - 2)[0]
        body = body[4 * words:]
    if b0 & 0x20:
        count = body[-1] if body else 0
        if not 0 < count <= len(body):
            raise ValueError("bad RTP padding")
        body = body[:-count]
    return OpenedPacket(seq, ts, ssrc, body, bool(b0 & 0x20), words)


# --- participants as seen by the voice server --------------------------------------------------


class LocalMember(Protocol):
    """What the voice server needs from a scripted participant (see bot.loopback.participant)."""

    user_id: int
    ssrc: int

    def dave_key_package(self, external_sender: bytes) -> bytes: ...
    def dave_proposals(self, payload: bytes) -> bytes | None: ...  # op 27 body → op 28 body (or None)
    def dave_stage(self, transition_id: int, commit: bytes | None, welcome: bytes | None) -> None: ...
    def dave_execute(self, transition_id: int) -> None: ...
    def dave_reset(self) -> None: ...
    def on_media(self, user_id: int, ssrc: int, seq: int, timestamp: int, frame: bytes, at: float) -> None: ...
    def on_speaking(self, user_id: int, ssrc: int, speaking: int) -> None: ...


@dataclass
class BotVoice:
    """The bot's voice state in one guild as the main gateway granted it."""

    guild_id: int
    channel_id: int | None
    session_id: str
    token: str
    endpoint: str  # "127.0.0.1:PORT" or "127.0.0.1:PORT/region"
    connection: VoiceConnection | None = None


class VoiceConnection:
    """One voice websocket from the bot (a new one after every reconnect)."""

    def __init__(self, service: VoiceService, ws: web.WebSocketResponse, region: str) -> None:
        self.service = service
        self.ws = ws
        self.region = region
        self.seq = 0
        self.seq_ack = -1
        self.user_id: int | None = None
        self.guild_id: int | None = None
        self.ssrc = 0
        self.mode: str | None = None
        self.key: bytes | None = None
        self.addr: tuple[str, int] | None = None
        self.dave_version = 0
        self.call: VoiceCall | None = None
        self.session_ready = asyncio.Event()  # op 4 sent
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.sent_close_code: int | None = None  # what the server closed with (close_code is the reply)
        self.speaking = 0
        self.packets_in = 0
        self.bad_packets = 0
        self._counters: dict[int, int] = {}
        self._lock = asyncio.Lock()
        self.pending: dict[tuple[int, int], asyncio.Future[Any]] = {}  # (op, transition_id or 0)

    def __repr__(self) -> str:
        return f"<VoiceConnection user={self.user_id} ssrc={self.ssrc} region={self.region!r}>"

    async def send_json(self, op: int, d: Any) -> None:
        payload: dict[str, Any] = {"op": op, "d": d}
        async with self._lock:
            if op not in (OP_HEARTBEAT_ACK, OP_HELLO, OP_RESUMED):
                self.seq += 1
                payload["seq"] = self.seq
            if self.ws.closed:
                return
            try:
                await self.ws.send_str(json.dumps(payload, separators=(",", ":")))
            except ConnectionError:
                log.debug("voice send on a closing socket dropped")

    async def send_binary(self, op: int, payload: bytes) -> None:
        async with self._lock:
            self.seq += 1
            if self.ws.closed:
                return
            try:
                await self.ws.send_bytes(struct.pack(">HB", self.seq & 0xFFFF, op) + payload)
            except ConnectionError:
                log.debug("voice send on a closing socket dropped")

    def expect(self, op: int, transition_id: int = 0) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[(op, transition_id)] = future
        return future

    def resolve(self, op: int, transition_id: int, value: Any) -> bool:
        future = self.pending.pop((op, transition_id), None)
        if future is None or future.done():
            return False
        future.set_result(value)
        return True

    def next_counter(self, sender_ssrc: int) -> int:
        value = self._counters.get(sender_ssrc, 0)
        self._counters[sender_ssrc] = value + 1
        return value

    async def close(self, code: int, message: str = "") -> None:
        """Close the bot's voice socket with ``code`` (e.g. 4006, 4014, 4015)."""
        self.service.world.events.append("voice_close", code=code, user_id=self.user_id, by="server")
        self.sent_close_code = code
        await self.ws.close(code=code, message=message.encode())


@dataclass(eq=False)
class _GroupMember:
    user_id: int
    remote: VoiceConnection | None = None
    local: LocalMember | None = None
    key_package: bytes | None = None  # a fresh key package waiting to be added
    in_group: bool = False
    leaf: int | None = None
    stale_leaf: int | None = None  # an old leaf of this user to remove (rejoin, invalid commit)


class VoiceCall:
    """One voice channel's call: who is in it, media forwarding and the DAVE group."""

    def __init__(self, service: VoiceService, guild_id: int, channel_id: int) -> None:
        self.service = service
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.remotes: dict[int, VoiceConnection] = {}  # user id → current connection
        self.locals: dict[int, LocalMember] = {}
        self.members: dict[int, _GroupMember] = {}
        self.leaves: list[int | None] = []
        self.established = False
        self.epoch = 0
        self.transitions = 0
        self.prefer_remote_commit = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.group_changed = asyncio.Condition()

    # --- membership ------------------------------------------------------------------------------

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._coordinator(), name=f"loopback-dave-{self.channel_id}"
            )

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
            self._task = None

    def user_ids(self) -> list[int]:
        return list(self.remotes) + list(self.locals)

    async def add_remote(self, conn: VoiceConnection) -> None:
        assert conn.user_id is not None
        old = self.remotes.get(conn.user_id)
        self.remotes[conn.user_id] = conn
        conn.call = self
        if old is None:
            for other in self.remotes.values():
                if other is not conn:
                    await other.send_json(OP_CLIENTS_CONNECT, {"user_ids": [str(conn.user_id)]})
            for local in self.locals.values():
                local.on_speaking(conn.user_id, conn.ssrc, 0)

    async def add_local(self, member: LocalMember) -> None:
        self.locals[member.user_id] = member
        for conn in self.remotes.values():
            await conn.send_json(OP_CLIENTS_CONNECT, {"user_ids": [str(member.user_id)]})
        if self.service.dave_version:
            kp = member.dave_key_package(self.service.external_sender.payload())
            self._key_package(member.user_id, kp, local=member)

    async def remove(self, user_id: int, *, conn: VoiceConnection | None = None) -> None:
        """A member left the call (or the bot's connection went away for good)."""
        if conn is not None and self.remotes.get(user_id) is not conn:
            return  # an old connection of a member who already reconnected
        self.remotes.pop(user_id, None)
        local = self.locals.pop(user_id, None)
        if local is not None:
            local.dave_reset()
        for other in self.remotes.values():
            await other.send_json(OP_CLIENT_DISCONNECT, {"user_id": str(user_id)})
        member = self.members.pop(user_id, None)
        if member is not None and member.in_group and member.leaf is not None:
            # Keep a placeholder so the coordinator proposes the Remove of its leaf.
            self.members[-user_id] = _GroupMember(user_id=user_id, stale_leaf=member.leaf)
        self._wake.set()
        if self.members:
            self._ensure_task()

    def _key_package(self, user_id: int, kp: bytes, *, remote: VoiceConnection | None = None,
                     local: LocalMember | None = None) -> None:
        member = self.members.get(user_id)
        if member is None:
            member = self.members[user_id] = _GroupMember(user_id=user_id)
        if remote is not None:
            member.remote = remote
        if local is not None:
            member.local = local
        if member.in_group and member.leaf is not None:
            # A member that re-initialised (reconnect, invalid commit): its old leaf must go.
            member.stale_leaf = member.leaf
            member.in_group = False
            member.leaf = None
        member.key_package = kp
        self._wake.set()
        self._ensure_task()

    def on_remote_key_package(self, conn: VoiceConnection, kp: bytes) -> None:
        assert conn.user_id is not None
        self.service.world.events.append("dave_key_package", user_id=conn.user_id)
        self._key_package(conn.user_id, kp, remote=conn)

    # --- the DAVE coordinator ---------------------------------------------------------------------

    async def _coordinator(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while await self._round():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("loopback DAVE coordinator failed in channel %s", self.channel_id)
                self.service.world.problem(f"DAVE group handling failed in channel {self.channel_id} (see log)")

    def _add_leaf(self, user_id: int) -> int:
        for index, occupant in enumerate(self.leaves):
            if occupant is None:
                self.leaves[index] = user_id
                return index
        self.leaves.append(user_id)
        return len(self.leaves) - 1

    def _remove_leaf(self, index: int) -> None:
        if 0 <= index < len(self.leaves):
            self.leaves[index] = None
        while self.leaves and self.leaves[-1] is None:
            self.leaves.pop()

    async def _round(self) -> bool:
        """Run one proposals → commit → transition cycle if membership needs one; False if idle."""
        service = self.service
        sender = service.external_sender
        joiners = [m for m in self.members.values() if m.key_package is not None and (m.remote or m.local)]
        stale = [m for m in self.members.values() if m.stale_leaf is not None]
        stable = [m for m in self.members.values() if m.in_group and m.key_package is None]
        if self.established and not stable:
            # Everybody left or re-initialised: the group is gone; start over.
            self.established = False
            self.leaves = []
            self.epoch = 0
            for m in stale:
                m.stale_leaf = None
            self.members = {k: v for k, v in self.members.items() if k > 0}
            stale = []
        if not self.established:
            if len(joiners) < 2:
                return False
            # The group's first commit: one joiner creates it by committing Adds of the others.
            locals_ = [m for m in joiners if m.local is not None]
            remotes = [m for m in joiners if m.remote is not None]
            creator = (remotes[0] if self.prefer_remote_commit and remotes else (locals_ or remotes)[0])
            committers = [creator]
            adds = [m for m in joiners if m is not creator]
            epoch = 0
        else:
            if not joiners and not stale:
                return False
            committers = stable
            adds = joiners
            epoch = self.epoch
        captured = {m.user_id: m.key_package for m in adds}
        proposals = [sender.remove_proposal(m.stale_leaf, self.channel_id, epoch) for m in stale  # type: ignore[arg-type]
                     if m.stale_leaf is not None]
        proposals += [sender.add_proposal(captured[m.user_id], self.channel_id, epoch) for m in adds]  # type: ignore[arg-type]
        body = proposals_op_payload(proposals)
        self.transitions += 1
        transition_id = self.transitions
        service.world.events.append("dave_proposals", channel_id=self.channel_id, epoch=epoch,
                                    adds=[m.user_id for m in adds], removes=[m.stale_leaf for m in stale],
                                    transition_id=transition_id)

        # op 27 to every committer-eligible member; locals answer at once, remotes with op 28.
        local_results: list[bytes] = []
        remote_waits: list[tuple[_GroupMember, asyncio.Future[Any]]] = []
        for m in committers:
            if m.remote is not None:
                remote_waits.append((m, m.remote.expect(OP_COMMIT_WELCOME)))
                await m.remote.send_binary(OP_PROPOSALS, body)
            elif m.local is not None:
                result = m.local.dave_proposals(body)
                if result is not None:
                    local_results.append(result)
        winner: bytes | None = None
        if remote_waits and (self.prefer_remote_commit or not local_results):
            m, future = remote_waits[0]
            try:
                async with asyncio.timeout(DAVE_TIMEOUT):
                    winner = await asyncio.shield(future)
            except asyncio.TimeoutError:
                if m.remote is not None and not m.remote.closed.is_set():
                    service.world.problem(f"user {m.user_id} did not answer MLS proposals (op 27) with a commit "
                                          f"(op 28) within {DAVE_TIMEOUT:g} s")
        for m, future in remote_waits:
            if m.remote is not None:
                m.remote.pending.pop((OP_COMMIT_WELCOME, 0), None)
            future.cancel()
        if winner is None and local_results:
            winner = local_results[0]
        if winner is None:
            # The committer went away (its connection closed); the next change (its op 26 on
            # reconnect, or its removal) starts a new round.
            service.world.events.append("dave_round_abandoned", channel_id=self.channel_id,
                                        transition_id=transition_id)
            return False
        commit, welcome = split_commit_welcome(winner)
        if adds and welcome is None:
            service.world.problem(f"DAVE commit for transition {transition_id} adds members but has no welcome")
            return False

        # op 29 to committers (everyone in the group, the winner included), op 30 to joiners.
        waits: list[tuple[_GroupMember, asyncio.Future[Any]]] = []
        prefix = struct.pack(">H", transition_id)
        for m in committers:
            if m.remote is not None:
                waits.append((m, m.remote.expect(OP_TRANSITION_READY, transition_id)))
                await m.remote.send_binary(OP_ANNOUNCE_COMMIT, prefix + commit)
            elif m.local is not None:
                m.local.dave_stage(transition_id, commit, None)
        for m in adds:
            if m.remote is not None:
                waits.append((m, m.remote.expect(OP_TRANSITION_READY, transition_id)))
                await m.remote.send_binary(OP_WELCOME, prefix + (welcome or b""))
            elif m.local is not None:
                m.local.dave_stage(transition_id, None, welcome)
        failed: list[_GroupMember] = []
        for m, future in waits:
            try:
                async with asyncio.timeout(DAVE_TIMEOUT):
                    ok = await future
            except asyncio.TimeoutError:
                ok = False
                if m.remote is not None and m.remote.closed.is_set():
                    failed.append(m)
                    continue
                service.world.problem(f"user {m.user_id} did not send DAVE transition ready (op 23) for "
                                      f"transition {transition_id} within {DAVE_TIMEOUT:g} s")
            if not ok:
                failed.append(m)

        # op 22: everyone switches to the new epoch's keys now.
        for m in committers + adds:
            if m.remote is not None and m not in failed:
                await m.remote.send_json(OP_EXECUTE_TRANSITION, {"transition_id": transition_id})
            elif m.local is not None:
                m.local.dave_execute(transition_id)
        for m in stale:
            if m.stale_leaf is not None:
                self._remove_leaf(m.stale_leaf)
            m.stale_leaf = None
        self.members = {k: v for k, v in self.members.items() if k > 0}
        if not self.established:
            creator = committers[0]
            creator.in_group = True
            creator.key_package = None
            creator.leaf = self._add_leaf(creator.user_id)
            self.established = True
            self.epoch = 1
        else:
            self.epoch += 1
        for m in adds:
            m.leaf = self._add_leaf(m.user_id)
            m.in_group = m not in failed
            if m.key_package == captured[m.user_id]:
                m.key_package = None
        for m in committers:
            if m in failed:
                m.in_group = False
        service.world.events.append("dave_transition", channel_id=self.channel_id, transition_id=transition_id,
                                    epoch=self.epoch, members=sorted(m.user_id for m in self.members.values()
                                                                      if m.in_group))
        async with self.group_changed:
            self.group_changed.notify_all()
        return True

    def on_invalid_commit(self, conn: VoiceConnection, transition_id: int) -> None:
        """op 31: the bot could not apply a commit/welcome; it re-initialises and sends a new op 26."""
        assert conn.user_id is not None
        self.service.world.events.append("dave_invalid_commit", user_id=conn.user_id, transition_id=transition_id)
        conn.resolve(OP_TRANSITION_READY, transition_id, False)

    # --- media ------------------------------------------------------------------------------------

    def forward_from_remote(self, conn: VoiceConnection, packet: OpenedPacket, at: float) -> None:
        assert conn.user_id is not None
        for local in list(self.locals.values()):
            local.on_media(conn.user_id, conn.ssrc, packet.seq, packet.timestamp, packet.payload, at)

    async def speaking(self, member: LocalMember, speaking: int) -> None:
        for conn in self.remotes.values():
            await conn.send_json(OP_SPEAKING, {"user_id": str(member.user_id), "ssrc": member.ssrc,
                                               "speaking": speaking})

    def send_media(self, member: LocalMember, *, seq: int, timestamp: int, payload: bytes,
                   extension_words: int = 0, padding: int = 0, raw: bytes | None = None) -> int:
        """Send one participant packet to every remote member with media set up; returns how many."""
        sent = 0
        for conn in self.remotes.values():
            if conn.addr is None or conn.key is None or conn.mode is None:
                continue
            packet = raw if raw is not None else seal_rtp(
                conn.mode, conn.key, seq=seq, timestamp=timestamp, ssrc=member.ssrc, payload=payload,
                counter=conn.next_counter(member.ssrc), extension_words=extension_words, padding=padding,
            )
            self.service.sendto(packet, conn.addr)
            sent += 1
        return sent


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, service: VoiceService) -> None:
        self.service = service

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.service.datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("loopback voice UDP error: %s", exc)


class VoiceService:
    """The voice side of the loopback Discord: websocket endpoint(s), UDP server, calls."""

    def __init__(
        self,
        world: World,
        *,
        endpoint_host: Callable[[], str],
        dispatch_later: Callable[[float, list[tuple[str, dict[str, Any]]]], None],
        event_delay: float = 0.005,
        dave_version: int = 1,
    ) -> None:
        self.world = world
        self._endpoint_host = endpoint_host
        self._dispatch_later = dispatch_later
        self.event_delay = event_delay
        self.dave_version = dave_version
        self.external_sender = ExternalSender()
        self.bot_voice: dict[int, BotVoice] = {}  # guild id → the bot's voice grant
        self.calls: dict[int, VoiceCall] = {}
        self.connections: set[VoiceConnection] = set()
        self.by_ssrc: dict[int, VoiceConnection] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self.udp_port = 0
        self._region_counter = 0
        self._used_ssrcs: set[int] = set()
        self.connection_changed = asyncio.Condition()

    def register(self, app: web.Application) -> None:
        app.router.add_get("/", self._handle)
        app.router.add_get("/{region}/", self._handle)
        app.router.add_get("/{region}", self._handle)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(self), local_addr=("127.0.0.1", 0))
        self._transport = transport  # type: ignore[assignment]
        self.udp_port = transport.get_extra_info("sockname")[1]

    async def stop(self) -> None:
        for conn in list(self.connections):
            await conn.ws.close(code=1001, message=b"loopback Discord shutting down")
        for call in self.calls.values():
            await call.aclose()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def new_ssrc(self) -> int:
        while True:
            ssrc = secrets.randbelow(0xFFFFFFF0) + 1
            if ssrc not in self._used_ssrcs:
                self._used_ssrcs.add(ssrc)
                return ssrc

    def call(self, guild_id: int, channel_id: int) -> VoiceCall:
        call = self.calls.get(channel_id)
        if call is None:
            call = self.calls[channel_id] = VoiceCall(self, guild_id, channel_id)
        return call

    def sendto(self, packet: bytes, addr: tuple[str, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(packet, addr)

    async def _notify(self) -> None:
        async with self.connection_changed:
            self.connection_changed.notify_all()

    # --- main gateway op 4 ------------------------------------------------------------------------

    def _endpoint(self, region: str) -> str:
        host = self._endpoint_host()
        return f"{host}/{region}" if region else host

    async def on_gateway_voice_state(self, session_id: str, d: dict[str, Any]) -> None:
        """The bot's op 4: join, move or leave; answer with VOICE_SERVER_UPDATE then VOICE_STATE_UPDATE."""
        world = self.world
        try:
            guild_id = int(d["guild_id"])
        except (KeyError, TypeError, ValueError):
            world.problem("voice state update (op 4) without a guild_id")
            return
        guild = world.guilds.get(guild_id)
        if guild is None:
            world.problem(f"voice state update for guild {guild_id}, which the bot is not in")
            return
        raw_channel = d.get("channel_id")
        channel_id = int(raw_channel) if raw_channel is not None else None
        previous = self.bot_voice.get(guild_id)
        bot_id = world.bot.id
        if channel_id is not None:
            channel = guild.channels.get(channel_id)
            if channel is None or channel.type not in (ChannelType.VOICE, ChannelType.STAGE):
                world.problem(f"the bot asked to join channel {channel_id}, which is not a voice channel of guild {guild_id}")
                return
        state = VoiceState(user_id=bot_id, guild_id=guild_id, channel_id=channel_id, session_id=session_id,
                           self_mute=bool(d.get("self_mute")), self_deaf=bool(d.get("self_deaf")))
        guild.voice_states[bot_id] = state
        vs_payload = voice_state_payload(state, guild.members.get(bot_id))
        if channel_id is None:
            self.bot_voice.pop(guild_id, None)
            if previous is not None and previous.channel_id in self.calls:
                await self.calls[previous.channel_id].remove(bot_id)
            world.events.append("bot_voice_leave", guild_id=guild_id)
            self._dispatch_later(self.event_delay, [("VOICE_STATE_UPDATE", vs_payload)])
            return
        region = previous.endpoint.partition("/")[2] if previous is not None else ""
        grant = BotVoice(guild_id=guild_id, channel_id=channel_id, session_id=session_id,
                         token=secrets.token_hex(8), endpoint=self._endpoint(region),
                         connection=previous.connection if previous else None)
        if previous is not None and previous.channel_id != channel_id and previous.channel_id in self.calls:
            await self.calls[previous.channel_id].remove(bot_id)
        self.bot_voice[guild_id] = grant
        world.events.append("bot_voice_join", guild_id=guild_id, channel_id=channel_id)
        server = {"token": grant.token, "guild_id": str(guild_id), "endpoint": grant.endpoint}
        # discord.py registers its waits one loop iteration after sending op 4, and completes a
        # resume only if VOICE_SERVER_UPDATE comes first: deliver both a moment later, in that order.
        self._dispatch_later(self.event_delay, [("VOICE_SERVER_UPDATE", server), ("VOICE_STATE_UPDATE", vs_payload)])

    async def change_server(self, guild_id: int) -> str:
        """Move the bot's voice session to a new endpoint (a voice server change); returns it."""
        grant = self.bot_voice[guild_id]
        self._region_counter += 1
        grant.endpoint = self._endpoint(f"region{self._region_counter}")
        grant.token = secrets.token_hex(8)
        self.world.events.append("voice_server_change", guild_id=guild_id, endpoint=grant.endpoint)
        self._dispatch_later(self.event_delay, [("VOICE_SERVER_UPDATE", {
            "token": grant.token, "guild_id": str(guild_id), "endpoint": grant.endpoint})])
        return grant.endpoint

    # --- voice websocket --------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(status=404, text="loopback Discord voice endpoint")
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        region = request.match_info.get("region", "")
        conn = VoiceConnection(self, ws, region)
        if request.query.get("v") != "8":
            self.world.problem(f"the bot opened the voice gateway with v={request.query.get('v')!r}; expected v=8")
        self.connections.add(conn)
        try:
            await conn.send_json(OP_HELLO, {"heartbeat_interval": VOICE_HEARTBEAT_MS, "v": 8})
            await self._serve(conn)
        finally:
            self.connections.discard(conn)
            conn.close_code = conn.sent_close_code or ws.close_code
            conn.closed.set()
            for future in conn.pending.values():
                if not future.done():
                    future.set_result(None)  # the member is gone: no commit, not ready
            conn.pending.clear()
            self.world.events.append("voice_disconnect", user_id=conn.user_id, code=conn.close_code)
            await self._connection_gone(conn)
            await self._notify()
        return ws

    async def _connection_gone(self, conn: VoiceConnection) -> None:
        if conn.user_id is None or conn.call is None or conn.guild_id is None:
            return
        grant = self.bot_voice.get(conn.guild_id)
        if grant is not None and grant.channel_id == conn.call.channel_id:
            # Still granted a channel: the bot will reconnect or resume; keep its group membership.
            return
        await conn.call.remove(conn.user_id, conn=conn)

    async def _serve(self, conn: VoiceConnection) -> None:
        async for msg in conn.ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    payload = json.loads(msg.data)
                    op = int(payload["op"])
                    d = payload.get("d")
                except (ValueError, KeyError, TypeError):
                    self.world.problem("the bot sent an undecodable voice gateway payload")
                    await conn.ws.close(code=4002, message=b"Failed to decode payload")
                    return
                if not await self._json_op(conn, op, d if isinstance(d, dict) else {}):
                    return
            elif msg.type == WSMsgType.BINARY:
                data: bytes = msg.data
                if not data:
                    continue
                if not await self._binary_op(conn, data[0], data[1:]):
                    return

    async def _json_op(self, conn: VoiceConnection, op: int, d: dict[str, Any]) -> bool:
        world = self.world
        if op == OP_HEARTBEAT:
            conn.seq_ack = int(d.get("seq_ack", -1)) if isinstance(d, dict) else -1
            await conn.send_json(OP_HEARTBEAT_ACK, {"t": d.get("t")})
            return True
        if op == OP_IDENTIFY:
            return await self._identify(conn, d)
        if op == OP_RESUME:
            return await self._resume(conn, d)
        if conn.user_id is None:
            world.problem(f"the bot sent voice op {op} before IDENTIFY")
            await conn.ws.close(code=4003, message=b"Not authenticated")
            return False
        if op == OP_SELECT:
            return await self._select_protocol(conn, d)
        if op == OP_SPEAKING:
            ssrc = int(d.get("ssrc", 0))
            if ssrc != conn.ssrc:
                world.problem(f"the bot's SPEAKING carried SSRC {ssrc}, not its own {conn.ssrc}")
            conn.speaking = int(d.get("speaking", 0))
            world.events.append("bot_speaking", speaking=conn.speaking)
            if conn.call is not None:
                for local in list(conn.call.locals.values()):
                    local.on_speaking(conn.user_id, conn.ssrc, conn.speaking)
            return True
        if op == OP_TRANSITION_READY:
            tid = int(d.get("transition_id", 0))
            world.events.append("dave_transition_ready", user_id=conn.user_id, transition_id=tid)
            if not conn.resolve(OP_TRANSITION_READY, tid, True):
                log.debug("unexpected transition ready %s from %s", tid, conn)
            return True
        if op == OP_INVALID_COMMIT:
            tid = int(d.get("transition_id", 0))
            if conn.call is not None:
                conn.call.on_invalid_commit(conn, tid)
            return True
        if op == OP_CLIENT_CONNECT:
            return True
        world.problem(f"the bot sent unknown voice op {op}")
        await conn.ws.close(code=4001, message=b"Unknown opcode")
        return False

    def _grant_for(self, d: dict[str, Any]) -> BotVoice | None:
        try:
            return self.bot_voice.get(int(d.get("server_id", 0)))
        except (TypeError, ValueError):
            return None

    async def _identify(self, conn: VoiceConnection, d: dict[str, Any]) -> bool:
        world = self.world
        grant = self._grant_for(d)
        if grant is None or str(d.get("token")) != grant.token or str(d.get("user_id")) != str(world.bot.id) \
                or grant.endpoint.partition("/")[2] != conn.region:
            world.problem("voice IDENTIFY with a wrong server_id, user_id, token or endpoint")
            await conn.ws.close(code=4004, message=b"Authentication failed")
            return False
        if d.get("session_id") != grant.session_id:
            world.problem("voice IDENTIFY with a session_id that is not the bot's voice session")
            await conn.ws.close(code=4006, message=b"Session no longer valid")
            return False
        channel = world.channels.get(grant.channel_id or 0)
        max_dave = d.get("max_dave_protocol_version")
        if self.dave_version and channel is not None and channel.type != ChannelType.STAGE \
                and not (isinstance(max_dave, int) and max_dave >= 1):
            world.problem("voice IDENTIFY without DAVE support (max_dave_protocol_version); "
                          "Discord requires end-to-end encryption in voice channels")
            await conn.ws.close(code=4017, message=b"E2EE/DAVE protocol required")
            return False
        conn.user_id = world.bot.id
        conn.guild_id = grant.guild_id
        conn.ssrc = self.new_ssrc()
        conn.dave_version = self.dave_version if isinstance(max_dave, int) and max_dave >= 1 else 0
        self.by_ssrc[conn.ssrc] = conn
        grant.connection = conn
        world.events.append("voice_identify", user_id=conn.user_id, ssrc=conn.ssrc, region=conn.region)
        await conn.send_json(OP_READY, {"ssrc": conn.ssrc, "ip": "127.0.0.1", "port": self.udp_port,
                                        "modes": MODES, "heartbeat_interval": VOICE_HEARTBEAT_MS, "experiments": []})
        return True

    async def _resume(self, conn: VoiceConnection, d: dict[str, Any]) -> bool:
        world = self.world
        grant = self._grant_for(d)
        old = grant.connection if grant is not None else None
        if grant is None or str(d.get("token")) != grant.token or d.get("session_id") != grant.session_id \
                or old is None or old.key is None:
            world.problem("voice RESUME for a session the voice server does not know")
            await conn.ws.close(code=4006, message=b"Session no longer valid")
            return False
        conn.user_id, conn.guild_id, conn.ssrc = old.user_id, old.guild_id, old.ssrc
        conn.mode, conn.key, conn.addr, conn.dave_version = old.mode, old.key, old.addr, old.dave_version
        conn._counters = old._counters
        self.by_ssrc[conn.ssrc] = conn
        grant.connection = conn
        world.events.append("voice_resume", user_id=conn.user_id, seq_ack=d.get("seq_ack"))
        await conn.send_json(OP_RESUMED, None)
        await self._session_description(conn, grant)
        return True

    async def _select_protocol(self, conn: VoiceConnection, d: dict[str, Any]) -> bool:
        world = self.world
        data = d.get("data") or {}
        mode = data.get("mode")
        if d.get("protocol") != "udp" or mode not in MODES:
            world.problem(f"the bot selected voice protocol {d.get('protocol')!r} mode {mode!r}; "
                          f"the server offered {MODES}")
            await conn.ws.close(code=4016, message=b"Unknown encryption mode")
            return False
        if conn.addr is None:
            world.problem("the bot selected a protocol before UDP IP discovery")
        elif (data.get("address"), data.get("port")) != conn.addr:
            world.problem(f"the bot's SELECT_PROTOCOL address {data.get('address')}:{data.get('port')} "
                          f"differs from what IP discovery saw ({conn.addr[0]}:{conn.addr[1]})")
        conn.mode = mode
        conn.key = os.urandom(32)
        grant = self.bot_voice.get(conn.guild_id or 0)
        if grant is None:
            await conn.ws.close(code=4006, message=b"Session no longer valid")
            return False
        world.events.append("voice_select_protocol", user_id=conn.user_id, mode=mode)
        await self._session_description(conn, grant)
        return True

    async def _session_description(self, conn: VoiceConnection, grant: BotVoice) -> None:
        assert conn.key is not None and grant.channel_id is not None
        await conn.send_json(OP_SESSION, {
            "mode": conn.mode,
            "secret_key": list(conn.key),
            "dave_protocol_version": conn.dave_version,
            "audio_codec": "opus",
            "video_codec": "H264",
            "media_session_id": secrets.token_hex(16),
        })
        call = self.call(grant.guild_id, grant.channel_id)
        if conn.dave_version:
            await conn.send_binary(OP_EXTERNAL_SENDER, self.external_sender.payload())
        others = [str(u) for u in call.user_ids() if u != conn.user_id]
        await call.add_remote(conn)
        if others:
            await conn.send_json(OP_CLIENTS_CONNECT, {"user_ids": others})
        for local in call.locals.values():
            speaking = getattr(local, "speaking_state", 0)
            if speaking:
                await conn.send_json(OP_SPEAKING, {"user_id": str(local.user_id), "ssrc": local.ssrc,
                                                   "speaking": speaking})
        conn.session_ready.set()
        self.world.events.append("voice_session", user_id=conn.user_id, channel_id=grant.channel_id,
                                 dave=conn.dave_version)
        await self._notify()

    async def _binary_op(self, conn: VoiceConnection, op: int, payload: bytes) -> bool:
        world = self.world
        if conn.user_id is None:
            world.problem(f"the bot sent binary voice op {op} before IDENTIFY")
            await conn.ws.close(code=4003, message=b"Not authenticated")
            return False
        if op == OP_KEY_PACKAGE:
            if conn.call is None or not conn.dave_version:
                world.problem("the bot sent an MLS key package (op 26) outside a DAVE session")
                return True
            conn.call.on_remote_key_package(conn, payload)
            return True
        if op == OP_COMMIT_WELCOME:
            world.events.append("dave_commit", user_id=conn.user_id, size=len(payload))
            if not conn.resolve(OP_COMMIT_WELCOME, 0, payload):
                log.debug("late or unexpected commit from %s", conn)
            return True
        world.problem(f"the bot sent unknown binary voice op {op}")
        await conn.ws.close(code=4001, message=b"Unknown opcode")
        return False

    # --- UDP --------------------------------------------------------------------------------------

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) == 74 and data[0:2] == b"\x00\x01":
            ssrc = struct.unpack_from(">I", data, 4)[0]
            conn = self.by_ssrc.get(ssrc)
            if conn is None:
                self.world.problem(f"UDP IP discovery for unknown SSRC {ssrc}")
                return
            conn.addr = addr
            reply = bytearray(74)
            struct.pack_into(">HHI", reply, 0, 2, 70, ssrc)
            host = addr[0].encode("ascii")
            reply[8:8 + len(host)] = host
            struct.pack_into(">H", reply, 72, addr[1])
            self.sendto(bytes(reply), addr)
            self.world.events.append("ip_discovery", ssrc=ssrc, addr=list(addr))
            return
        if len(data) < 12 or data[0] >> 6 != 2:
            return  # keepalives and other non-RTP traffic
        if 200 <= data[1] <= 204:
            return  # RTCP
        ssrc = struct.unpack_from(">I", data, 8)[0]
        conn = self.by_ssrc.get(ssrc)
        if conn is None or conn.key is None or conn.mode is None:
            return
        if data[1] & 0x7F != 120:
            self.world.problem(f"the bot sent RTP payload type {data[1] & 0x7F}; Discord voice uses 120 (Opus)")
            return
        try:
            packet = open_rtp(conn.mode, conn.key, data)
        except ValueError as exc:
            conn.bad_packets += 1
            self.world.problem(f"the bot sent a voice packet that fails transport decryption ({exc})")
            return
        conn.packets_in += 1
        if conn.call is not None:
            conn.call.forward_from_remote(conn, packet, asyncio.get_running_loop().time())
