"""Test helpers: RTP datagrams sealed with PyNaCl, Opus frames from real PCM, and DAVE groups.

The DAVE helpers drive discord.py's *own* voice-gateway handling (ops 4/25/27/29/30/22) through a
real ``DiscordVoiceWebSocket`` whose sends are recorded, with our loopback external sender standing
in for Discord's voice gateway.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import davey
import nacl.secret
from discord.gateway import DiscordVoiceWebSocket
from discord.opus import Encoder

from audio.native import load_libopus
from bot.loopback.mls import ExternalSender, proposals_op_payload

OPUS_PT = 120
BOT_ID = 1000
CHANNEL_ID = 777000
ALICE, BOB, CAROL = 2001, 2002, 2003
TRANSPORT_KEY = bytes(range(32))


def seal(
    payload: bytes,
    key: bytes = TRANSPORT_KEY,
    *,
    seq: int = 1,
    ts: int = 960,
    ssrc: int = 5,
    counter: int = 0,
    pt: int = OPUS_PT,
    csrcs: Sequence[int] = (),
    ext_words: int | None = None,
    padding: int = 0,
) -> bytes:
    """An ``aead_xchacha20_poly1305_rtpsize`` datagram built independently of audio.rtp, with PyNaCl."""
    b0 = 0x80 | len(csrcs) | (0x10 if ext_words is not None else 0) | (0x20 if padding else 0)
    header = struct.pack(">BBHII", b0, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    header += b"".join(struct.pack(">I", c) for c in csrcs)
    body = payload
    if ext_words is not None:
        header += struct.pack(">HH", 0xBEDE, ext_words)
        # one-byte-header elements (id 1, len 1) then zero padding to whole words
        ext = (b"\x10\xaa" * (2 * ext_words))[: 4 * ext_words]
        body = ext + body
    if padding:
        body += bytes(padding - 1) + bytes([padding])
    tail = struct.pack(">I", counter)
    sealed = nacl.secret.Aead(key).encrypt(body, header, tail + bytes(20)).ciphertext
    return header + sealed + tail


def opus_frames(count: int, freq: float = 440.0, rate: int = 48000) -> list[bytes]:
    """``count`` 20 ms Opus frames of a sine tone, encoded by discord.py's Encoder (48 kHz stereo)."""
    load_libopus()
    enc = Encoder(application="voip", fec=True, expected_packet_loss=0.1)
    spf = Encoder.SAMPLES_PER_FRAME
    frames = []
    for i in range(count):
        samples = []
        for n in range(spf):
            v = int(12000 * math.sin(2 * math.pi * freq * (i * spf + n) / rate))
            samples += (v, v)
        frames.append(enc.encode(struct.pack(f"<{len(samples)}h", *samples), spf))
    return frames


class RecordingVoiceWebSocket(DiscordVoiceWebSocket):
    """discord.py's real voice websocket class with its two send methods recorded instead of sent."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hook: Any = None) -> None:
        super().__init__(None, loop, hook=hook)  # type: ignore[arg-type]  # no aiohttp socket: sends recorded
        self.sent_json: list[dict[str, Any]] = []
        self.sent_binary: list[tuple[int, bytes]] = []

    async def send_as_json(self, data: Any) -> None:
        self.sent_json.append(json.loads(json.dumps(data)))

    async def send_binary(self, opcode: int, data: bytes) -> None:
        self.sent_binary.append((opcode, bytes(data)))

    def last_binary(self, opcode: int) -> bytes:
        return next(d for op, d in reversed(self.sent_binary) if op == opcode)


@dataclass
class VoiceGateway:
    """A scripted DAVE voice gateway: an external sender plus the participants' davey sessions.

    It feeds discord.py's handlers exactly what Discord's gateway would send and plays the other
    participants' side of MLS.
    """

    ws: RecordingVoiceWebSocket
    channel_id: int = CHANNEL_ID
    sender: ExternalSender = field(default_factory=ExternalSender)
    members: dict[int, davey.DaveSession] = field(default_factory=dict)
    _seq: int = 0
    _transition: int = 0

    def _binary(self, op: int, payload: bytes) -> bytes:
        self._seq += 1
        return struct.pack(">HB", self._seq, op) + payload

    async def json(self, op: int, d: dict[str, Any]) -> None:
        self._seq += 1
        await self.ws.received_message({"op": op, "d": d, "seq": self._seq})

    async def session_description(self, *, key: bytes = TRANSPORT_KEY, dave_version: int = 1) -> None:
        """op 4: mode, key and DAVE version; discord.py answers op 5 and (if DAVE) op 26."""
        await self.json(4, {"mode": "aead_xchacha20_poly1305_rtpsize", "secret_key": list(key),
                            "dave_protocol_version": dave_version})

    async def establish(self, first: int = ALICE) -> None:
        """After op 4: op 25, then ``first`` commits the bot's key package and the bot gets op 30 + op 22."""
        bot_kp = self.ws.last_binary(DiscordVoiceWebSocket.MLS_KEY_PACKAGE)
        await self.ws.received_binary_message(self._binary(25, self.sender.payload()))
        alice = davey.DaveSession(1, first, self.channel_id)
        alice.set_external_sender(self.sender.payload())
        proposal = self.sender.add_proposal(bot_kp, self.channel_id, alice.epoch or 0)
        result = alice.process_proposals(davey.ProposalsOperationType.append, proposals_op_payload([proposal])[1:])
        assert result is not None and result.welcome is not None
        alice.process_commit(result.commit)
        self.members[first] = alice
        self._transition += 1
        await self.ws.received_binary_message(self._binary(30, struct.pack(">H", self._transition) + result.welcome))
        await self.json(22, {"transition_id": self._transition})

    async def add_member(self, user_id: int) -> davey.DaveSession:
        """A participant joins: op 27 to everyone, the bot's own commit wins (op 29), then op 22."""
        joiner = davey.DaveSession(1, user_id, self.channel_id)
        joiner.set_external_sender(self.sender.payload())
        committer = next(iter(self.members.values()))
        proposal = self.sender.add_proposal(joiner.get_serialized_key_package(), self.channel_id, committer.epoch)
        payload = proposals_op_payload([proposal])
        sent_before = len(self.ws.sent_binary)
        await self.ws.received_binary_message(self._binary(27, payload))
        # discord.py answered op 28 (commit | welcome); use the bot's commit as the winner, as Discord may
        assert self.ws.sent_binary[sent_before:][-1][0] == DiscordVoiceWebSocket.MLS_COMMIT_WELCOME
        from bot.loopback.mls import split_commit_welcome

        commit, welcome = split_commit_welcome(self.ws.sent_binary[-1][1])
        assert welcome is not None
        for member in self.members.values():
            member.process_proposals(davey.ProposalsOperationType.append, payload[1:])
            member.process_commit(commit)
        joiner.process_welcome(welcome)
        self.members[user_id] = joiner
        self._transition += 1
        await self.ws.received_binary_message(self._binary(29, struct.pack(">H", self._transition) + commit))
        await self.json(22, {"transition_id": self._transition})
        return joiner

    async def downgrade(self) -> None:
        """op 21 to protocol version 0 then op 22: frames are plain Opus afterwards."""
        self._transition += 1
        await self.json(21, {"transition_id": self._transition, "protocol_version": 0})
        await self.json(22, {"transition_id": self._transition})

    def encrypt(self, user_id: int, opus: bytes) -> bytes:
        return self.members[user_id].encrypt_opus(opus)


# --- real discord.py objects around a ReceiveVoiceClient ------------------------------------------

GUILD_ID = 888000
BOT_SSRC = 9999


def _user(user_id: int, name: str) -> dict[str, Any]:
    return {"id": str(user_id), "username": name, "discriminator": "0", "global_name": name, "avatar": None,
            "bot": user_id == BOT_ID}


def voice_channel(client: Any) -> Any:
    """A real discord.VoiceChannel in a real Guild, built from gateway payloads; the bot is the client user."""
    import discord

    state = client._connection
    state.user = discord.ClientUser(state=state, data=_user(BOT_ID, "bot"))
    guild = discord.Guild(
        data={
            "id": str(GUILD_ID), "name": "g", "owner_id": str(ALICE), "member_count": 1, "emojis": [],
            "stickers": [], "features": [], "voice_states": [], "members": [],
            "roles": [{"id": str(GUILD_ID), "name": "@everyone", "permissions": "0", "position": 0, "color": 0,
                       "hoist": False, "managed": False, "mentionable": False}],
            "channels": [{"id": str(CHANNEL_ID), "type": 2, "name": "voice", "position": 0,
                          "guild_id": str(GUILD_ID), "bitrate": 64000, "user_limit": 0}],
        },
        state=state,
    )
    state._add_guild(guild)
    return guild.get_channel(CHANNEL_ID)


def attach_gateway(vc: Any) -> tuple[VoiceGateway, Any]:
    """Wire a recorded DiscordVoiceWebSocket to ``vc``'s connection state as discord.py's own
    ``from_connection_state`` would, minus the network; returns the scripted gateway and a bound
    127.0.0.1 UDP socket standing in for the voice server's socket (op 2 READY would create it)."""
    conn = vc._connection
    ws = RecordingVoiceWebSocket(vc.loop, hook=conn.hook)
    ws._connection = conn
    conn.ws = ws
    # What op 2 READY + IP discovery would have set: our SSRC and a connected UDP socket. A real
    # socket keeps discord.py's reader thread blocked in select() instead of spinning on MISSING.
    # discord.py's own VOICE_SERVER_UPDATE step creates the UDP socket and un-pauses its reader.
    conn.ssrc = BOT_SSRC
    conn._create_socket()
    sock = conn.socket
    sock.bind(("127.0.0.1", 0))
    return VoiceGateway(ws), sock
