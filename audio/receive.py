"""Per-speaker voice receive on discord.py 2.7, DAVE-aware.

discord.py encrypts what it sends but has no receive API. This module adds a thin layer on its own
hooks (research/discord-voice-receive.md §3):

- ``VoiceConnectionState(hook=...)`` gives us every JSON voice-gateway op *after* discord.py handled
  it: op 5 SPEAKING maps SSRC → user, op 11/12/13 track who is present;
- ``add_socket_listener`` gives us every UDP datagram on discord.py's socket-reader thread.

Per datagram, on that thread (:class:`VoiceReceiver`): RTP parse → filters → transport decrypt →
drop extension body → strip padding → duplicate check → DAVE decrypt with discord.py's own
``dave_session`` → hand ``VoicePacket`` to the event loop. Nothing raises out of the callback and
nothing blocks: every failure is a counted drop (see :class:`ReceiveStats`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import davey
import discord
from discord.voice_state import VoiceConnectionState

from audio.rtp import OPUS_SILENCE, SUPPORTED_MODE, Drop, TransportCipher, parse_fields

if TYPE_CHECKING:
    from discord.gateway import DiscordVoiceWebSocket

__all__ = [
    "VoicePacket",
    "ReceiveSink",
    "ReceiveStats",
    "VoiceReceiver",
    "ReceiveVoiceClient",
]

log = logging.getLogger(__name__)

_DAVE_MARKER = b"\xfa\xfa"  # every DAVE frame ends with this magic (daveprotocol.com, frame trailer)
_AUDIO = davey.MediaType.audio

# Voice gateway opcodes (discord.py's DiscordVoiceWebSocket constants; 11/12 are not named there for receive)
OP_SESSION_DESCRIPTION = 4
OP_SPEAKING = 5
OP_CLIENTS_CONNECT = 11
OP_CLIENT_CONNECT = 12
OP_CLIENT_DISCONNECT = 13

# Drop reasons beyond the transport-level ones in audio.rtp.Drop; values are counter names.
DUPLICATE = "duplicate"
DAVE_NOT_READY = "dave_not_ready"
DAVE_NO_DECRYPTOR = "dave_no_decryptor"
DAVE_UNENCRYPTED = "dave_unencrypted"
DAVE_DECRYPT = "dave_decrypt"
HOLD_OVERFLOW = "hold_overflow"
HOLD_DISCARDED = "hold_discarded"
OPTED_OUT = "opted_out"
BOT = "bot"  # another bot's audio, ignored unless the guild includes bots
RETIRED_SSRC = "retired_ssrc"  # late packets of a stream its user has replaced with a new SSRC
BACKLOG = "backlog"
LOOP_CLOSED = "loop_closed"
INTERNAL_ERROR = "internal_error"

# The voice socket's receive buffer. Linux's default (net.core.rmem_default, 208 KiB) holds only a
# few hundred small datagrams, about 10 ms of 500 speakers: one garbage-collection pause on the event
# loop overflowed it in the real-time benchmark (bench/receive.py). 4 MiB holds a quarter second or
# more; the kernel doubles the request for its bookkeeping and caps it at net.core.rmem_max.
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
# Frames waiting for the event loop at which discord.py's reader thread pauses (up to BACKPRESSURE_WAIT_S)
# until the loop has taken them. The reader drops the GIL in every select()/recv() and takes it straight
# back, so on one busy core the loop's GIL request can lose for seconds (the real-time benchmark saw
# 8 s stalls and its backlog overflow); pausing hands the GIL over, and the socket buffer holds the
# datagrams meanwhile. 256 frames is about 10 ms of 500 speakers.
BACKPRESSURE_FRAMES = 256
BACKPRESSURE_WAIT_S = 0.05
# How long a batch collects after its first frame before the loop takes it. Waking the loop for
# every frame cost more CPU than the frame itself (2.6-7.7x at 1-10 speakers, issue 11); 10 ms is
# half a frame, nothing next to the 600 ms end-of-speech silence, and cuts the wake-ups to 100/s.
HANDOFF_BATCH_S = 0.01
# Reading the socket in bursts. discord.py's reader thread runs select() and then one recv() per
# datagram and calls its listeners with it: at 500 speakers that is 25,000 select() calls, GIL
# hand-overs and lock round trips a second. When ours is the only listener, our callback reads what
# the socket already holds itself (non-blocking recv() until it would block, at most READ_BURST
# datagrams) and handles the burst under one lock with one hand-off. This reads discord.py's private
# SocketReader._callbacks (to know nobody else listens) and relies on its socket being
# non-blocking, so it is enabled only on the discord.py versions it was verified against; on any
# other, or with a second listener, each callback handles its one datagram as before.
READ_BURST = 64
BURST_VERIFIED_DISCORD = ("2.7.1",)
# After a burst that emptied the socket, the reader waits this long before discord.py's next
# select(): the datagrams arriving meanwhile are read as one burst instead of waking the thread one
# by one (each wake-up is two context switches and a GIL hand-over: 16 % of the CPU at 100 speakers
# on one core). Nothing next to the hand-off's own 10 ms batch; only while bursts are read.
COALESCE_S = 0.002


class VoicePacket(NamedTuple):
    """One Opus frame from one speaker, fully decrypted, in arrival order (not yet reordered).

    Immutable like our dataclasses, but a NamedTuple: one is built per packet on the socket thread.
    """

    user_id: int
    ssrc: int
    sequence: int  # RTP sequence number, wraps at 65536
    timestamp: int  # RTP timestamp, 48 kHz units
    opus: bytes


_new_tuple = tuple.__new__
_RECV_SIZE = 2048  # what discord.py's SocketReader reads per datagram


class ReceiveSink(Protocol):
    """What receives decrypted frames; called on the event loop, in arrival order per SSRC."""

    def on_packet(self, packet: VoicePacket) -> None:
        """A frame arrived from ``packet.user_id``."""

    def on_speaker_left(self, user_id: int) -> None:
        """The member left the voice channel (op 13): drop every bit of state kept for them."""


@dataclass(frozen=True, slots=True)
class ReceiveStats:
    """A snapshot of the receive counters (monotonic since the receiver was created).

    Drops fall in three kinds: :attr:`rejected` (not audio anyone in the call sent: bad RTP, no or
    wrong key, failed transport or DAVE authentication, forged frames no stream accepted),
    :attr:`ignored` (real traffic deliberately not heard: RTCP, video, our own, duplicates, people
    who opted out, other bots) and the rest of ``dropped`` (real audio that arrived but could not
    be used, e.g. DAVE not ready yet). :attr:`lost` is different in kind: frames missing from real
    streams after reordering and FEC, as the decoders saw them (0 without a decoding sink).
    """

    datagrams: int  # every datagram the socket listener saw
    audio_packets: int  # RTP v2 Opus from someone else: what should turn into frames
    delivered: int  # frames handed to the sink
    dave_decrypted: int  # of those, how many went through DAVE decryption
    trial_attributed: int  # SSRCs attributed to a user by trial DAVE decryption (before op 5)
    speaking_events: int  # op 5 with a non-zero speaking flag from someone else
    held: int  # frames currently waiting for their SSRC's op 5
    dropped: Mapping[str, int]  # reason -> count
    lost: int = 0  # frames missing from real streams after reordering and FEC (from the decoding sink)
    strays: int = 0  # delivered frames no stream accepted (a forged or stray packet far out of sequence)
    # For the deaf watchdog, only people whose audio is meant to be heard (not opted out, not ignored bots):
    packets_by_user: Mapping[int, int] = field(default_factory=dict)  # authenticated packets on their SSRC
    speaking_by_user: Mapping[int, int] = field(default_factory=dict)  # op 5 "speaking" events

    @property
    def rejected(self) -> int:
        """Datagrams that were not audio anyone in the call sent (see the class docstring)."""
        return self.strays + sum(n for reason, n in self.dropped.items() if reason in REJECTED_REASONS)

    @property
    def ignored(self) -> int:
        """Real traffic deliberately not heard."""
        return sum(n for reason, n in self.dropped.items() if reason in IGNORED_REASONS)


# Not audio anyone in the call sent. A DAVE failure on an authenticated transport packet is a frame
# that does not authenticate end to end (forged, replayed or mangled), so it is rejected too.
REJECTED_REASONS = frozenset(
    {Drop.TOO_SHORT.value, Drop.NOT_RTP.value, Drop.NO_KEY.value, Drop.UNSUPPORTED_MODE.value,
     Drop.TRANSPORT_DECRYPT.value, Drop.BAD_EXTENSION.value, Drop.BAD_PADDING.value,
     DAVE_NO_DECRYPTOR, DAVE_UNENCRYPTED, DAVE_DECRYPT}
)
IGNORED_REASONS = frozenset(
    {DUPLICATE, OPTED_OUT, BOT, RETIRED_SSRC, Drop.RTCP.value, Drop.PAYLOAD_TYPE.value, Drop.OWN_SSRC.value,
     Drop.EMPTY.value}
)


class _SeqWindow:
    """The last ``size`` sequence numbers seen on one SSRC (a bounded replay window)."""

    __slots__ = ("_seen", "_order", "_size", "packets")

    def __init__(self, size: int) -> None:
        self._seen: set[int] = set()
        self._order: collections.deque[int] = collections.deque()
        self._size = max(1, size)
        self.packets = 0  # authenticated packets on this SSRC (the watchdog's "someone is talking")

    def __contains__(self, seq: int) -> bool:
        return seq in self._seen

    def add(self, seq: int) -> None:
        """Remember ``seq`` (authenticated) and count the packet."""
        order = self._order
        if len(order) >= self._size:
            self._seen.discard(order.popleft())
        order.append(seq)
        self._seen.add(seq)
        self.packets += 1


class VoiceReceiver:
    """The synchronous receive core for one voice connection.

    ``conn`` is discord.py's ``VoiceConnectionState`` (anything with ``secret_key``, ``mode``,
    ``ssrc``, ``dave_session`` and ``dave_protocol_version``); all five are read afresh per packet
    because op 4 and DAVE transitions replace them. ``own_user_id`` returns the bot's user id.
    ``deliver`` receives the frames ready for the event loop (see :class:`ReceiveVoiceClient` for
    the thread hand-off). ``accept_user(user_id)`` is consulted before DAVE decryption: users who
    opted out are dropped here, before any of their audio is decrypted or decoded; so are the users
    in ``ignore_users`` (other bots), counted apart.

    One SSRC per user: when a user is mapped to a new SSRC (their client restarted its stream, with
    or without op 13), the old SSRC's mapping, replay window and held frames are retired, and late
    packets still arriving on it are dropped (``retired_ssrc``) rather than attributed again.
    """

    def __init__(
        self,
        conn: Any,
        own_user_id: Callable[[], int | None],
        deliver: Callable[[VoicePacket], None],
        *,
        accept_user: Callable[[int], bool] | None = None,
        hold_frames: int = 50,
        max_held_ssrcs: int = 16,
        replay_window: int = 128,
        max_ssrcs: int = 1024,
        max_retired: int = 64,
    ) -> None:
        self._conn = conn
        self._own_user_id = own_user_id
        self._deliver = deliver
        self.accept_user = accept_user
        self.ignore_users: frozenset[int] = frozenset()  # replaced whole (atomic for the socket thread)
        self._max_retired = max_retired
        self._hold_frames = hold_frames
        self._max_held_ssrcs = max_held_ssrcs
        self._replay_window = replay_window
        self._max_ssrcs = max_ssrcs
        self._lock = threading.Lock()
        self._ssrc_to_user: dict[int, int] = {}
        self._user_ssrc: dict[int, int] = {}  # each user's current audio SSRC
        self._retired: collections.OrderedDict[int, int] = collections.OrderedDict()  # ssrc -> former user
        self._speaking_by_user: collections.Counter[int] = collections.Counter()
        self._members: set[int] = set()
        self._windows: collections.OrderedDict[int, _SeqWindow] = collections.OrderedDict()
        self._held: collections.OrderedDict[int, collections.deque[tuple[int, int, bytes]]] = collections.OrderedDict()
        self._key_source: object = None
        self._cipher: TransportCipher | None = None
        self._dropped: collections.Counter[str] = collections.Counter()
        self._datagrams = 0
        self._audio = 0
        self._delivered = 0
        self._dave_decrypted = 0
        self._trial = 0
        self._speaking = 0

    # --- state fed from the voice gateway (event loop) ---------------------------------------------

    @property
    def ssrc_to_user(self) -> dict[int, int]:
        """A copy of the current SSRC → user id map."""
        with self._lock:
            return dict(self._ssrc_to_user)

    @property
    def members(self) -> frozenset[int]:
        """User ids the voice gateway says are connected (ops 11/12/5, minus op 13)."""
        with self._lock:
            return frozenset(self._members)

    def map_ssrc(self, ssrc: int, user_id: int, *, speaking: bool = False) -> None:
        """Record that ``ssrc`` belongs to ``user_id`` (op 5/12) and replay frames held for it."""
        with self._lock:
            if user_id == self._own_user_id():
                return
            if speaking:
                self._speaking += 1
                self._speaking_by_user[user_id] += 1
            self._retired.pop(ssrc, None)  # the gateway says so: the SSRC is live again
            self._attribute(ssrc, user_id)

    def add_members(self, user_ids: list[int]) -> None:
        """Op 11: these users are present (no SSRC yet)."""
        with self._lock:
            self._members.update(user_ids)

    def forget_user(self, user_id: int) -> list[int]:
        """Op 13: drop the user's SSRCs, replay windows and held frames; return the SSRCs dropped."""
        with self._lock:
            self._members.discard(user_id)
            self._user_ssrc.pop(user_id, None)
            self._speaking_by_user.pop(user_id, None)
            gone = [s for s, u in self._ssrc_to_user.items() if u == user_id]
            for ssrc in gone:
                self._release_ssrc(ssrc)
            return gone

    def _release_ssrc(self, ssrc: int) -> None:
        """Forget an SSRC's mapping, replay window and held frames (lock held)."""
        self._ssrc_to_user.pop(ssrc, None)
        self._windows.pop(ssrc, None)
        held = self._held.pop(ssrc, None)
        if held:
            self._dropped[HOLD_DISCARDED] += len(held)

    def note_speaking(self) -> None:
        """Count a speaking event that carried no new mapping (for the deaf watchdog)."""
        with self._lock:
            self._speaking += 1

    def count(self, reason: str, n: int = 1) -> None:
        """Count ``n`` drops for ``reason`` (used by the thread hand-off)."""
        with self._lock:
            self._dropped[reason] += n

    def stats(self, *, lost: int = 0, strays: int = 0) -> ReceiveStats:
        """A consistent snapshot of the counters; ``lost``/``strays`` come from the decoding sink."""
        with self._lock:
            heard = self._heard_users
            packets: dict[int, int] = {}
            for ssrc, user_id in self._ssrc_to_user.items():
                window = self._windows.get(ssrc)
                if window is not None and heard(user_id):
                    packets[user_id] = packets.get(user_id, 0) + window.packets
            speaking = {u: n for u, n in self._speaking_by_user.items() if heard(u)}
            return ReceiveStats(
                datagrams=self._datagrams,
                audio_packets=self._audio,
                delivered=self._delivered,
                dave_decrypted=self._dave_decrypted,
                trial_attributed=self._trial,
                speaking_events=self._speaking,
                held=sum(len(q) for q in self._held.values()),
                dropped=types.MappingProxyType(dict(self._dropped)),
                lost=lost,
                strays=strays,
                packets_by_user=types.MappingProxyType(packets),
                speaking_by_user=types.MappingProxyType(speaking),
            )

    def _heard_users(self, user_id: int) -> bool:
        """Whether this user's audio is meant to be heard (not an ignored bot, not opted out)."""
        if user_id in self.ignore_users:
            return False
        accept = self.accept_user
        return accept is None or accept(user_id)

    # --- the socket-thread path --------------------------------------------------------------------

    def on_datagram(self, data: bytes) -> None:
        """The socket listener: never raises, never blocks beyond a short lock."""
        try:
            with self._lock:
                self._datagrams += 1
                self._handle(data)
        except Exception:  # a bug here must not kill discord.py's reader loop or flood its log
            with self._lock:
                self._internal_error()

    def on_datagrams(self, datagrams: list[bytes], deliver: Callable[[list[VoicePacket]], None]) -> None:
        """:meth:`on_datagram` for a burst read off the socket at once: one lock for all of them, and
        the frames they yield go to ``deliver`` as one list (instead of one by one to the receiver's
        ``deliver``). Frames other paths release meanwhile (op 5 replaying held ones) are unaffected:
        they take the lock, which the burst holds throughout."""
        batch: list[VoicePacket] = []
        with self._lock:
            own = self._deliver
            self._deliver = batch.append  # only ever called with the lock held
            try:
                for data in datagrams:
                    self._datagrams += 1
                    try:
                        self._handle(data)
                    except Exception:  # as in on_datagram: counted, logged once, the burst goes on
                        self._internal_error()
            finally:
                self._deliver = own
        if batch:
            deliver(batch)

    def _internal_error(self) -> None:
        """Count an unexpected error on the socket path and log the first one (lock held)."""
        self._dropped[INTERNAL_ERROR] += 1
        if self._dropped[INTERNAL_ERROR] == 1:
            log.exception("voice receive: unexpected error handling a datagram (counted as dropped)")

    def _drop(self, reason: str, n: int = 1) -> None:
        """Count a drop (lock held)."""
        self._dropped[reason] += n

    def _handle(self, data: bytes) -> None:
        conn = self._conn
        own_ssrc = conn.ssrc
        fields = parse_fields(data, own_ssrc if isinstance(own_ssrc, int) else None)
        if type(fields) is Drop:
            self._dropped[fields.value] += 1  # type: ignore[union-attr]
            return
        seq, ts, ssrc, hlen, ext_words, padding = fields  # type: ignore[misc]
        self._audio += 1
        window = self._windows.get(ssrc)
        if window is not None and seq in window._seen:
            self._dropped[DUPLICATE] += 1
            return
        if conn.mode != SUPPORTED_MODE:
            self._dropped[Drop.UNSUPPORTED_MODE.value] += 1
            return
        key = conn.secret_key
        if key is not self._key_source:
            try:
                self._cipher = TransportCipher(bytes(key))
            except (TypeError, ValueError):
                self._cipher = None
            self._key_source = key
        cipher = self._cipher
        if cipher is None:
            self._dropped[Drop.NO_KEY.value] += 1
            return
        frame = cipher.open_parts(data, hlen, ext_words, padding)
        if type(frame) is Drop:
            self._dropped[frame.value] += 1  # type: ignore[union-attr]
            return
        # Authenticated: only now may the sequence number count as seen (forged copies cannot mark it).
        if window is None:
            window = self._windows[ssrc] = _SeqWindow(self._replay_window)
            if len(self._windows) > self._max_ssrcs:
                self._windows.popitem(last=False)
        window.add(seq)
        user_id = self._ssrc_to_user.get(ssrc)
        if user_id is None:
            self._unknown_ssrc(ssrc, seq, ts, frame)  # type: ignore[arg-type]
            return
        self._finish(ssrc, user_id, seq, ts, frame)  # type: ignore[arg-type]

    def _attribute(self, ssrc: int, user_id: int) -> None:
        """Map ``ssrc`` to ``user_id``, retire the user's previous SSRC, replay held frames (lock held)."""
        previous = self._user_ssrc.get(user_id)
        if previous is not None and previous != ssrc and self._ssrc_to_user.get(previous) == user_id:
            # The user's stream restarted on a new SSRC: the old stream's state means nothing now.
            self._release_ssrc(previous)
            self._retired[previous] = user_id
            if len(self._retired) > self._max_retired:
                self._retired.popitem(last=False)
            log.debug("voice receive: user %s moved from SSRC %s to %s", user_id, previous, ssrc)
        former = self._ssrc_to_user.get(ssrc)
        if former is not None and former != user_id and self._user_ssrc.get(former) == ssrc:
            del self._user_ssrc[former]  # the SSRC now belongs to someone else
        self._user_ssrc[user_id] = ssrc
        self._ssrc_to_user[ssrc] = user_id
        self._members.add(user_id)
        held = self._held.pop(ssrc, None)
        if held:
            for seq, ts, frame in held:
                self._finish(ssrc, user_id, seq, ts, frame)

    def _finish(self, ssrc: int, user_id: int, seq: int, ts: int, frame: bytes) -> None:
        """Opt-out check, DAVE decrypt and deliver (lock held)."""
        if user_id in self.ignore_users:
            self._dropped[BOT] += 1
            return
        accept = self.accept_user
        if accept is not None and not accept(user_id):
            self._dropped[OPTED_OUT] += 1
            return
        conn = self._conn
        session = conn.dave_session
        if conn.dave_protocol_version != 0:
            if session is None or not session.ready:
                self._dropped[DAVE_NOT_READY] += 1
                return
            try:
                opus = session.decrypt(user_id, _AUDIO, frame)
            except ValueError as exc:
                self._dave_failed(exc)
                return
            self._dave_decrypted += 1
        elif session is not None and session.ready and frame.endswith(_DAVE_MARKER) and frame != OPUS_SILENCE:
            # Downgraded to version 0, but a sender may not have switched yet (discord.py keeps
            # passthrough on for 120 s): decrypt what still looks like DAVE, else treat it as plain Opus.
            try:
                opus = session.decrypt(user_id, _AUDIO, frame)
                self._dave_decrypted += 1
            except ValueError:
                opus = frame
        else:
            opus = frame
        if not opus:
            self._dropped[Drop.EMPTY.value] += 1
            return
        self._delivered += 1
        # tuple.__new__ directly: the NamedTuple's own __new__ is a Python function around it.
        self._deliver(_new_tuple(VoicePacket, (user_id, ssrc, seq, ts, opus)))

    def _dave_failed(self, exc: ValueError) -> None:
        # davey 0.1.7 raises ValueError("Failed to decrypt: <reason>") for every failure
        msg = str(exc)
        if "NoDecryptorForUser" in msg:
            self._dropped[DAVE_NO_DECRYPTOR] += 1
        elif "UnencryptedWhenPassthroughDisabled" in msg:
            self._dropped[DAVE_UNENCRYPTED] += 1
        else:
            self._dropped[DAVE_DECRYPT] += 1

    def _unknown_ssrc(self, ssrc: int, seq: int, ts: int, frame: bytes) -> None:
        """No op 5 yet: attribute by trial DAVE decryption, else hold the frame (lock held)."""
        if ssrc in self._retired:
            # A stream its user replaced: its late packets would decrypt and map it back to them.
            self._dropped[RETIRED_SSRC] += 1
            return
        conn = self._conn
        session = conn.dave_session
        if (
            conn.dave_protocol_version != 0
            and session is not None
            and session.ready
            and frame != OPUS_SILENCE  # silence passes DAVE for anyone: it proves nothing
        ):
            own = self._own_user_id()
            for uid_str in session.get_user_ids():
                uid = int(uid_str)
                if uid == own:
                    continue
                try:
                    opus = session.decrypt(uid, _AUDIO, frame)
                except ValueError:
                    continue
                # The GCM tag makes the first success the true sender; keep this plaintext, since a
                # second decryption of the same frame would fail as a replay.
                self._trial += 1
                log.debug("voice receive: SSRC %s attributed to user %s by trial decryption", ssrc, uid)
                self._attribute(ssrc, uid)
                if uid in self.ignore_users:
                    self._dropped[BOT] += 1
                    return
                accept = self.accept_user
                if accept is not None and not accept(uid):
                    self._dropped[OPTED_OUT] += 1
                    return
                self._dave_decrypted += 1
                self._delivered += 1
                self._deliver(VoicePacket(uid, ssrc, seq, ts, opus))
                return
        queue = self._held.get(ssrc)
        if queue is None:
            if len(self._held) >= self._max_held_ssrcs:
                _, evicted = self._held.popitem(last=False)
                self._dropped[HOLD_OVERFLOW] += len(evicted)
            queue = self._held[ssrc] = collections.deque()
        if len(queue) >= self._hold_frames:
            queue.popleft()
            self._dropped[HOLD_OVERFLOW] += 1
        queue.append((seq, ts, frame))


class ReceiveVoiceClient(discord.VoiceClient):
    """discord.py's ``VoiceClient`` plus per-speaker receive; use it for every connection.

    ``channel.connect(cls=ReceiveVoiceClient)`` works as is (attach a sink later with
    :meth:`set_sink`), or pass ``functools.partial(ReceiveVoiceClient, sink=..., accept_user=...)``.
    Playback (``play``) and discord.py's DAVE handling are unchanged.

    The sink is called on the event loop; frames reach it in batches handed over from the
    socket thread with ``call_soon_threadsafe`` (one wake-up per batch, which collects for
    ``handoff_batch_s`` after its first frame). With ``backpressure_frames``
    waiting, the socket thread pauses (briefly, bounded) until the loop takes them, so the socket's
    enlarged buffer (``receive_buffer``) absorbs a slow loop. If the loop still falls behind by more
    than ``max_backlog`` frames, new frames are dropped (counted as ``backlog``). When datagrams
    queue up faster than discord.py's reader hands them over one by one, our callback reads the
    queued ones itself (see ``READ_BURST``; ``burst_datagrams`` counts them).
    """

    receiver: VoiceReceiver

    def __init__(
        self,
        client: discord.Client,
        channel: discord.abc.Connectable,
        *,
        sink: ReceiveSink | None = None,
        accept_user: Callable[[int], bool] | None = None,
        hold_frames: int = 50,
        max_held_ssrcs: int = 16,
        max_backlog: int = 10_000,
        receive_buffer: int = RECEIVE_BUFFER_BYTES,
        backpressure_frames: int = BACKPRESSURE_FRAMES,
        handoff_batch_s: float = HANDOFF_BATCH_S,
    ) -> None:
        # The receiver must exist before super().__init__ calls create_connection_state().
        self._receive_buffer = receive_buffer
        self.receive_buffer_bytes: int | None = None  # the socket's effective SO_RCVBUF, once listening
        self._sink: ReceiveSink | None = sink
        self._pending: collections.deque[VoicePacket] = collections.deque()
        self._pending_lock = threading.Lock()
        self._drain_scheduled = False
        self._max_backlog = max_backlog
        self._backpressure = max(1, backpressure_frames)
        self._batch_s = max(0.0, handoff_batch_s)
        self._drain_timer: asyncio.TimerHandle | None = None
        self._caught_up = threading.Event()  # cleared while the hand-off queue is at the high-water mark
        self._caught_up.set()
        self._listening = False
        self._burst_enabled = False  # decided when listening starts (op 4)
        self._coalesce_s = COALESCE_S
        self.burst_datagrams = 0  # datagrams our callback read off the socket itself (after discord.py's one)
        self._burst_checked: object = None
        self._burst_sock: socket.socket | None = None
        self._receiver_opts = {"accept_user": accept_user, "hold_frames": hold_frames, "max_held_ssrcs": max_held_ssrcs}
        super().__init__(client, channel)

    def create_connection_state(self) -> VoiceConnectionState:
        """discord.py's override point: the same state, with our websocket hook on every voice socket."""
        conn = VoiceConnectionState(self, hook=self._on_voice_op)
        self.receiver = VoiceReceiver(conn, self._own_id, self._hand_off, **self._receiver_opts)  # type: ignore[arg-type]
        return conn

    def _own_id(self) -> int | None:
        user = self._state.user
        return user.id if user is not None else None

    # --- public API --------------------------------------------------------------------------------

    @property
    def stats(self) -> ReceiveStats:
        """A frozen snapshot of the receive counters, with the sink's stream losses when it reports them."""
        loss = getattr(self._sink, "loss", None)
        if loss is None:
            return self.receiver.stats()
        lost, strays = loss()
        return self.receiver.stats(lost=lost, strays=strays)

    @property
    def accept_user(self) -> Callable[[int], bool] | None:
        """The opt-out filter consulted before any of a user's audio is decrypted."""
        return self.receiver.accept_user

    @accept_user.setter
    def accept_user(self, fn: Callable[[int], bool] | None) -> None:
        self.receiver.accept_user = fn

    @property
    def ignore_users(self) -> frozenset[int]:
        """Users (other bots) whose audio is dropped before decryption, counted as ``bot``."""
        return self.receiver.ignore_users

    @ignore_users.setter
    def ignore_users(self, user_ids: frozenset[int]) -> None:
        self.receiver.ignore_users = frozenset(user_ids)

    def set_sink(self, sink: ReceiveSink | None) -> None:
        """Attach (or detach, with None) the consumer of frames and leave events."""
        self._sink = sink

    def deliver_pending(self) -> None:
        """Hand frames waiting for the next batch to the sink now (on the event loop), e.g. to know
        that everything received so far has been heard."""
        self._drain()

    def user_for_ssrc(self, ssrc: int) -> int | None:
        """The user an SSRC is mapped to, if known."""
        return self.receiver.ssrc_to_user.get(ssrc)

    async def connect(self, *, reconnect: bool, timeout: float, self_deaf: bool = False, self_mute: bool = False) -> None:
        await super().connect(reconnect=reconnect, timeout=timeout, self_deaf=self_deaf, self_mute=self_mute)
        self._listen()

    async def disconnect(self, *, force: bool = False) -> None:
        self._unlisten()
        self._drain()  # what was handed over goes now, not on a batch timer after the disconnect
        await super().disconnect(force=force)

    # --- wiring ------------------------------------------------------------------------------------

    def _listen(self) -> None:
        # Idempotent: remove first so the callback is never registered twice. A full disconnect
        # stops discord.py's reader and clears its callbacks, so this runs again on every op 4.
        conn = self._connection
        self._grow_receive_buffer(conn.socket)
        conn.remove_socket_listener(self._on_datagram)
        conn.add_socket_listener(self._on_datagram)
        self._listening = True
        self._burst_enabled = discord.__version__ in BURST_VERIFIED_DISCORD

    def _grow_receive_buffer(self, sock: socket.socket | Any) -> None:
        # discord.py makes a new UDP socket on every (re)connect and move; op 4 follows each one, so
        # setting it here covers them all. Idempotent.
        if not isinstance(sock, socket.socket) or self._receive_buffer <= 0:
            return
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < self._receive_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)
            effective = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            force = getattr(socket, "SO_RCVBUFFORCE", None)
            if effective < self._receive_buffer and force is not None:
                try:  # past net.core.rmem_max: allowed only with CAP_NET_ADMIN
                    sock.setsockopt(socket.SOL_SOCKET, force, self._receive_buffer)
                    effective = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                except OSError:
                    pass
        except OSError as exc:
            log.warning("voice receive: could not enlarge the UDP receive buffer: %s", exc)
            return
        if effective != self.receive_buffer_bytes:
            # Linux reports twice what it granted; less than asked means net.core.rmem_max caps it.
            if effective < self._receive_buffer:
                log.info("voice receive: UDP receive buffer %d bytes, asked for %d (capped by net.core.rmem_max; "
                         "raise it for large calls)", effective, self._receive_buffer)
            else:
                log.debug("voice receive: UDP receive buffer %d bytes", effective)
        self.receive_buffer_bytes = effective

    def _unlisten(self) -> None:
        if self._listening:
            self._connection.remove_socket_listener(self._on_datagram)
            self._listening = False

    async def _on_voice_op(self, ws: DiscordVoiceWebSocket, msg: dict[str, Any]) -> None:
        """Runs on the event loop after discord.py handled each JSON voice op; never raises."""
        try:
            op = msg.get("op")
            d = msg.get("d") or {}
            if op == OP_SESSION_DESCRIPTION:
                # A (re)connected session: a fresh key and maybe a fresh DAVE group; start listening.
                self._listen()
            elif op == OP_SPEAKING:
                self.receiver.map_ssrc(int(d["ssrc"]), int(d["user_id"]), speaking=bool(int(d.get("speaking") or 0)))
            elif op == OP_CLIENT_CONNECT:
                # undocumented: carries user_id and audio_ssrc (0 when the user has no audio stream)
                ssrc = int(d.get("audio_ssrc") or 0)
                if ssrc and "user_id" in d:
                    self.receiver.map_ssrc(ssrc, int(d["user_id"]))
            elif op == OP_CLIENTS_CONNECT:
                self.receiver.add_members([int(u) for u in d.get("user_ids", ())])
            elif op == OP_CLIENT_DISCONNECT:
                user_id = int(d["user_id"])
                self.receiver.forget_user(user_id)
                self._drain()  # frames already handed over go first, so the sink's cleanup is final
                sink = self._sink
                if sink is not None:
                    sink.on_speaker_left(user_id)
        except Exception:
            log.exception("voice receive: could not handle voice op %s", msg.get("op"))

    def _on_datagram(self, data: bytes) -> None:
        """discord.py's reader thread: receive (with what else is queued), then let the loop catch up."""
        datagrams = [data]
        sock = self._burst_socket()
        if sock is not None:
            recv = sock.recv
            try:
                while len(datagrams) < READ_BURST:
                    datagrams.append(recv(_RECV_SIZE))
            except OSError:  # BlockingIOError: nothing more queued; anything else: discord.py sees it next
                pass
            self.burst_datagrams += len(datagrams) - 1
        self.receiver.on_datagrams(datagrams, self._hand_off_batch)
        if not self._caught_up.is_set():
            self._caught_up.wait(BACKPRESSURE_WAIT_S)  # bounded: a stopped loop cannot hold the reader
        elif sock is not None and len(datagrams) < READ_BURST and self._coalesce_s:
            time.sleep(self._coalesce_s)  # let the next datagrams queue up (see COALESCE_S)

    def _burst_socket(self) -> socket.socket | None:
        """The voice socket when this callback may read queued datagrams itself, else None."""
        if not self._burst_enabled:
            return None
        conn = self._connection
        callbacks = getattr(getattr(conn, "_socket_reader", None), "_callbacks", None)
        if type(callbacks) is not list or len(callbacks) != 1:
            return None  # another listener must see every datagram too: leave reading to discord.py
        sock = conn.socket
        if sock is not self._burst_checked:
            # A recv() on a blocking socket would hang the reader thread: check each new socket once.
            self._burst_checked = sock
            self._burst_sock = sock if isinstance(sock, socket.socket) and sock.gettimeout() == 0.0 else None
        return self._burst_sock

    def _hand_off(self, packet: VoicePacket) -> None:
        """The receiver's ``deliver``: one frame, always with the receiver's lock held (a lone
        datagram, or held frames replayed at op 5 on the loop)."""
        self._hand_off_batch([packet], locked=True)

    def _hand_off_batch(self, packets: list[VoicePacket], *, locked: bool = False) -> None:
        """Socket thread → event loop: append to a bounded batch; wake the loop once per batch.

        ``locked``: the caller holds the receiver's lock (its counters are then updated directly).
        """
        with self._pending_lock:
            pending = self._pending
            room = self._max_backlog - len(pending)
            overflow = len(packets) - room if len(packets) > room else 0
            if overflow:
                packets = packets[: max(0, room)]
            if not packets:
                wake = urgent = False
            else:
                pending.extend(packets)
                urgent = False
                if len(pending) >= self._backpressure and self._caught_up.is_set():
                    # The reader is about to wait for the loop: drain now, not when the batch timer
                    # fires (both threads sat idle until it did while the socket buffer overflowed).
                    self._caught_up.clear()
                    urgent = True
                wake = not self._drain_scheduled
                self._drain_scheduled = True
        if overflow:
            self._count(BACKLOG, overflow, locked)
        if wake or urgent:
            try:
                self.loop.call_soon_threadsafe(self._drain if urgent else self._drain_later)
            except RuntimeError:  # loop closed during shutdown
                with self._pending_lock:
                    lost = len(self._pending)
                    self._pending.clear()
                    self._drain_scheduled = False
                    self._caught_up.set()
                self._count(LOOP_CLOSED, lost, locked)

    def _count(self, reason: str, n: int, locked: bool) -> None:
        if locked:
            self.receiver._drop(reason, n)
        else:
            self.receiver.count(reason, n)

    def _drain_later(self) -> None:
        # On the loop: let the batch collect a little longer (one timer, not a wake-up per frame).
        if self._batch_s:
            self._drain_timer = self.loop.call_later(self._batch_s, self._drain)
        else:
            self._drain()

    def _drain(self) -> None:
        timer, self._drain_timer = self._drain_timer, None
        if timer is not None:
            timer.cancel()  # an early drain (op 13, disconnect) takes the batch the timer was for
        with self._pending_lock:
            batch = self._pending
            self._pending = collections.deque()
            self._drain_scheduled = False
            self._caught_up.set()
        sink = self._sink
        if sink is None:
            return
        for packet in batch:
            try:
                sink.on_packet(packet)
            except Exception:
                log.exception("voice receive: sink failed on a packet from user %s", packet.user_id)
