"""Benchmark: voice receive for N speakers, synthetic (CPU per packet) and in real time (loss).

Synthetic mode: each speaker sends 50 packets/s, DAVE-encrypted by its own davey session in a real
MLS group (built with the loopback external sender) and transport-sealed (aead_xchacha20_poly1305_rtpsize). Packets
are fed to the receive core's socket callback directly, handed off in 20 ms batches (as the event
loop drains them) into the ReceivePipeline (reorder, Opus → 16 kHz mono, webrtcvad, segmenter).
CPU is time.process_time(). The same run also measures bare libopus decoding of the same frames
into a reused buffer through discord.py's binding, interleaved round by round with the pipeline,
and reports the ratio. Round 0 (every speaker's decoder and VAD being built) is not timed. Two more
passes, each raced against the bare decode the same way, say how low the ratio can go in Python
on this machine: ``minimal_path_ratio``, a path cut down to parse + transport decryption + DAVE +
decode + VAD inlined in one function (no reorder, replay window, segmentation, counters or
hand-off: a lower bound, not a receive path), and ``native_floor_ratio``, those native calls alone.

Real-time mode (``--realtime``): one fresh process per speaker count, pinned to one core with
``taskset`` when there are at least two (else unpinned; the JSON says which). It builds the real
``ReceiveVoiceClient`` on a real ``discord.Client`` and ``VoiceChannel``, drives discord.py's own voice
gateway handlers (op 4, DAVE ops 25/27/29/30/22, op 5 per speaker; tests/dave_group.py), so the UDP
socket, its ``SO_RCVBUF`` and discord.py's ``SocketReader`` thread are the product's. N speakers join
one MLS group in a sender process on the other core; each sends a DAVE- and transport-encrypted
frame every 20 ms (phases spread over the 20 ms, as independent clients would be; the frames are
sealed before the clock starts, since encrypting is the senders' cost, not ours) to 127.0.0.1 for
``--realtime-seconds``. In the process under test: reader thread → hand-off → event loop →
``ReceivePipeline`` (reorder, decode, webrtcvad, segmentation, its 50 ms tick). Reported per count:
``lost`` (sent but never decoded: socket overflow, backlog, late), ``rejected`` (the receiver's
drops: none of this traffic should be), the largest event-loop stall (a 5 ms ticker's lateness)
and the longest garbage-collection pause, CPU ms per speaker-second (process CPU, all threads,
over the send window plus the drain), and the run-queue wait: time our threads were runnable but
another process had the core. On a shared host that last figure says how much of a loss was ours.

Beside each real-time count, ``realtime_minimal``: the stripped-down path in real time (one thread
reading the socket itself in bursts, the same pinning, a forked sender): what any receive path in
Python costs here at the least, with nothing but the necessary calls on each datagram.

Before/after (``--baseline GIT_REF``): the same runs for another commit's code (extracted with
``git archive``), alternating run by run with the current code so both see the same load; every run
is labelled ``code: current|baseline`` and carries its own loss. The synthetic target (ratio ≤ 1.3,
nothing lost) is judged on every current run, never the best: the worst run's figures, the loss of
all runs added up. Real-time runs also report CPU µs per decoded packet and
where the CPU went (``cpu_split``: the event loop's thread, discord.py's socket reader, user/kernel).

DAVE memory (``--dave-memory``): RSS growth of a fresh process that builds an MLS group of N members
plus the bot (every member's davey session lives there, as in the sender process), per session.

Usage: python -m bench.receive [--json] [--speakers 1,10,100] [--seconds 4]
           [--realtime 100,300,500] [--realtime-seconds 10] [--repeat 1] [--dave-memory 100,200]
           [--baseline GIT_REF]
Prints one JSON line (``--json`` is accepted for symmetry with bench.latency; output is always JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import gc
import json
import logging
import math
import multiprocessing
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import davey
import discord
import discord.opus

from audio.decode import ReceivePipeline, decoder_class
from audio.native import load_libopus
from audio.receive import VoicePacket, VoiceReceiver
from audio.rtp import _MAX_DATAGRAM, SUPPORTED_MODE, build_packet
from audio.vad import WebRtcVad
from bot.loopback.mls import ExternalSender, commit_pending_proposals, proposals_op_payload, split_commit_welcome

CHANNEL = 4242
BOT = 1
KEY = bytes(range(32))
FRAME_S = 0.02
TICK_S = 0.05


class _NullConsumer:
    """Counts what the STT glue would receive."""

    def __init__(self) -> None:
        self.frames = 0
        self.starts = 0
        self.ends = 0

    def on_speech_start(self, user_id: int) -> None:
        self.starts += 1

    def on_audio(self, user_id: int, pcm: bytes) -> None:
        self.frames += 1

    def on_speech_end(self, user_id: int) -> None:
        self.ends += 1


def _speech_like_frames(count: int) -> list[bytes]:
    """20 ms Opus frames (48 kHz stereo, as Discord clients send) of a varying voiced buzz plus noise."""
    enc = discord.opus.Encoder(application="voip", bitrate=64, fec=True, expected_packet_loss=0.1)
    spf = enc.SAMPLES_PER_FRAME
    rng = random.Random(1)
    frames = []
    for i in range(count):
        f0 = 110 + 40 * math.sin(i / 7)
        samples = []
        for n in range(spf):
            t = (i * spf + n) / 48000
            v = sum(math.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 8)) * 6000 + rng.gauss(0, 600)
            v = int(max(-32768, min(32767, v)))
            samples += (v, v)
        frames.append(enc.encode(struct.pack(f"<{len(samples)}h", *samples), spf))
    return frames


def _group(speakers: int) -> tuple[davey.DaveSession, list[davey.DaveSession]]:
    """The bot plus ``speakers`` members in one MLS group (one commit adding everyone)."""
    sender = ExternalSender()
    bot = davey.DaveSession(1, BOT, CHANNEL)
    bot.set_external_sender(sender.payload())
    members = []
    proposals = []
    for i in range(speakers):
        member = davey.DaveSession(1, 1000 + i, CHANNEL)
        member.set_external_sender(sender.payload())
        proposals.append(sender.add_proposal(member.get_serialized_key_package(), CHANNEL, bot.epoch or 0))
        members.append(member)
    result = commit_pending_proposals(bot, [], proposals)
    assert result.welcome is not None
    for member in members:
        member.process_welcome(result.welcome)
    return bot, members


_EXTENSION = b"\x10\xaa\x00\x00"  # a one-word header extension body, as Discord clients send
_HEADER = 16  # the synthetic datagrams' clear header: fixed part + extension preamble


def _synthetic_packet(dave: bytes, r: int, i: int, counter: int) -> bytes:
    """Speaker ``i``'s round-``r`` datagram in synthetic mode: SSRC 10 + i, transport-sealed."""
    return build_packet(dave, KEY, sequence=(60000 + r) & 0xFFFF, timestamp=r * 960, ssrc=10 + i,
                        counter=counter, extension_body=_EXTENSION, padding=0)


def _sodium_bindings() -> tuple[Any, Any]:
    """PyNaCl's cffi ``(ffi, lib)``, as the receive path's transport cipher uses them."""
    from audio.rtp import _ffi, _sodium

    if _ffi is None or _sodium is None:
        raise RuntimeError("PyNaCl's libsodium bindings are unavailable")
    return _ffi, _sodium


class _BareDecode:
    """libopus alone on the same frames (one decoder per speaker, reused buffer): the floor."""

    def __init__(self, speakers: int) -> None:
        cls = decoder_class(16000, 1)
        self._decoders = [cls() for _ in range(speakers)]
        self._buf = (ctypes.c_int16 * 1920)()
        self._ptr = ctypes.cast(self._buf, discord.opus.c_int16_ptr)

    def round(self, frame: bytes) -> None:
        """Decode ``frame`` once per speaker."""
        decode = discord.opus._lib.opus_decode
        ptr, n = self._ptr, len(frame)
        for dec in self._decoders:
            decode(dec._state, frame, n, ptr, 1920, 0)


class _NativeFloor:
    """The other native calls every packet needs, each alone in a tight loop: transport decryption
    (libsodium), DAVE decryption (davey) and the VAD (webrtcvad) on what libopus decoded. With the
    bare decode they are what a receive path would cost with no Python at all around the calls
    (each still pays one loop iteration and its call overhead, so the floor is slightly high).

    Its packets are its own copy of the pipeline's (fresh nonces): a DAVE frame cannot be decrypted
    twice.
    """

    def __init__(self, bot: davey.DaveSession, members: list[davey.DaveSession]) -> None:
        _ffi, _sodium = _sodium_bindings()
        self._ffi, self._sodium = _ffi, _sodium
        self._bot = bot
        self._users = [m.user_id for m in members]
        self._out = _ffi.new("unsigned char[]", 2048)
        self._outlen = _ffi.new("unsigned long long *")
        cls = decoder_class(16000, 1)
        self._decoders = [cls() for _ in members]  # decoding as the pipeline does (cffi when it can)
        import _webrtcvad  # webrtcvad's C module: WebRtcVad calls the same function

        self._process = _webrtcvad.process
        self._vads = [WebRtcVad(16000) for _ in members]
        self.sealed: list[list[tuple[bytes, int, bytes, bytes]]] = []  # per round: (ct, clen, aad, nonce)
        self.dave: list[list[bytes]] = []  # per round: each member's DAVE frame
        self.cpu = {"transport_decrypt": 0.0, "dave_decrypt": 0.0, "decode": 0.0, "vad": 0.0}

    def seal(self, member: davey.DaveSession, frame: bytes, r: int, i: int, counter: int) -> None:
        """Encrypt member ``i``'s round-``r`` copy (rounds in order, members in order within each)."""
        if len(self.dave) <= r:
            self.dave.append([])
            self.sealed.append([])
        dave = member.encrypt_opus(frame)
        packet = _synthetic_packet(dave, r, i, counter)
        hlen = _HEADER  # the extension body is encrypted
        self.dave[r].append(dave)
        self.sealed[r].append((packet[hlen:-4], len(packet) - hlen - 4, packet[:hlen], packet[-4:] + bytes(20)))

    def round(self, r: int, frame: bytes, timed: bool) -> None:
        clock = time.process_time
        t0 = clock()
        open_ = self._sodium.crypto_aead_xchacha20poly1305_ietf_decrypt
        out, outlen, null = self._out, self._outlen, self._ffi.NULL
        for ct, clen, aad, nonce in self.sealed[r]:
            if open_(out, outlen, null, ct, clen, aad, _HEADER, nonce, KEY):
                raise RuntimeError("floor: transport decryption failed")
        t1 = clock()
        decrypt, audio = self._bot.decrypt, davey.MediaType.audio
        for uid, dave in zip(self._users, self.dave[r]):
            decrypt(uid, audio, dave)
        t2 = clock()
        n = len(frame)
        for dec in self._decoders:
            dec._fn(dec._st, frame, n, dec._out, 1920, 0)
        t3 = clock()
        process = self._process
        for vad, dec in zip(self._vads, self._decoders):
            process(vad._handle, 16000, dec._out_bytes, 320)  # the 20 ms just decoded into the buffer
        t4 = clock()
        if timed:
            cpu = self.cpu
            cpu["transport_decrypt"] += t1 - t0
            cpu["dave_decrypt"] += t2 - t1
            cpu["decode"] += t3 - t2
            cpu["vad"] += t4 - t3


class _MinimalPath:
    """A receive path cut down to the calls every packet needs, inlined in one function: RTP parse,
    transport decryption, DAVE decryption, decode, VAD. No reorder buffer, replay window, speech
    segmentation, counters, lock or thread hand-off, so it is *not* a receive path; it is the lower
    bound any complete one written in Python pays on this machine. Its own copy of the packets,
    like :class:`_NativeFloor`'s.
    """

    def __init__(self, bot: davey.DaveSession, members: list[davey.DaveSession]) -> None:
        _ffi, _sodium = _sodium_bindings()
        import _webrtcvad

        self.packets: list[bytes] = []
        self.voiced: list[bytes] = []
        self.unvoiced: list[bytes] = []
        self._keep = [(decoder_class(16000, 1)(), WebRtcVad(16000)) for _ in members]
        streams = {10 + i: (m.user_id, dec, vad._handle) for i, (m, (dec, vad)) in enumerate(zip(members, self._keep))}
        out = _ffi.new("unsigned char[]", 2048)
        outlen = _ffi.new("unsigned long long *")
        plain = _ffi.buffer(out)
        unpack = struct.Struct(">BBHII").unpack_from
        open_, null = _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt, _ffi.NULL
        decrypt, audio, process, pad = bot.decrypt, davey.MediaType.audio, _webrtcvad.process, bytes(20)

        def handle(data: bytes, voiced: Any = self.voiced.append, unvoiced: Any = self.unvoiced.append) -> None:
            b0, b1, _seq, _ts, ssrc = unpack(data)
            if b0 >> 6 != 2 or b1 & 0x7F != 120:
                return
            hlen = 12 + 4 * (b0 & 15) + (4 if b0 & 0x10 else 0)
            ct = data[hlen:-4]
            if open_(out, outlen, null, ct, len(ct), data[:hlen], hlen, data[-4:] + pad, KEY):
                return
            uid, dec, vad = streams[ssrc]
            opus = decrypt(uid, audio, plain[4:outlen[0]])  # the 4-byte extension body skipped
            n = dec._fn(dec._st, opus, len(opus), dec._out, 1920, 0)
            pcm = dec._out_bytes[: 2 * n]
            (voiced if process(vad, 16000, pcm, n) else unvoiced)(pcm)

        self.handle = handle

    def seal(self, member: davey.DaveSession, frame: bytes, r: int, i: int, counter: int) -> None:
        self.packets.append(_synthetic_packet(member.encrypt_opus(frame), r, i, counter))


def _race(rounds: int, frames: Sequence[bytes], bare: _BareDecode, step: Callable[[int], None]) -> tuple[float, float]:
    """``step(r)`` for every round, each followed by the bare decode of the round's frame, so both see
    the same machine (other people's load on a shared host moves either one by 10-20 % from run to
    run). Returns the CPU seconds of both, round 0 left out (every speaker's decoder and VAD being
    built: once per speaker, not per packet)."""
    clock = time.process_time
    cpu = bare_cpu = 0.0
    for r in range(rounds):
        start = clock()
        step(r)
        middle = clock()
        bare.round(frames[r % len(frames)])
        if r:
            cpu += middle - start
            bare_cpu += clock() - middle
    return cpu, bare_cpu


def run(speakers: int, seconds: float, frames: Sequence[bytes]) -> dict[str, Any]:
    """The pipeline against bare decoding; then, each in its own pass against bare decoding too, the
    stripped-down path (:class:`_MinimalPath`) and the native calls alone (:class:`_NativeFloor`).
    The passes run one after another (not round by round together: each one's caches would be the
    previous one's leftovers), and the headline ``ratio`` is the pipeline's, measured as before."""
    bot, members = _group(speakers)
    rounds = int(seconds / FRAME_S)
    # Prepare every datagram up front: the senders' cost is not ours. Each pass has its own copy,
    # encrypted in the order the passes decrypt them (DAVE rejects a frame it has seen, and old ones).
    packets: list[bytes] = []
    counter = 0
    for r in range(rounds):
        frame = frames[r % len(frames)]
        for i, member in enumerate(members):
            counter += 1
            packets.append(_synthetic_packet(member.encrypt_opus(frame), r, i, counter))
    minimal = _MinimalPath(bot, members)
    floor = _NativeFloor(bot, members)
    for copy in (minimal, floor):
        for r in range(rounds):
            for i, member in enumerate(members):
                counter += 1
                copy.seal(member, frames[r % len(frames)], r, i, counter)
    # The receive core reads these five attributes of discord.py's VoiceConnectionState per packet.
    conn = types.SimpleNamespace(secret_key=list(KEY), mode=SUPPORTED_MODE, ssrc=9,
                                 dave_session=bot, dave_protocol_version=1)
    pending: collections.deque[VoicePacket] = collections.deque()
    receiver = VoiceReceiver(conn, lambda: BOT, pending.append)
    for i, member in enumerate(members):
        receiver.map_ssrc(10 + i, member.user_id)
    now = [0.0]
    consumer = _NullConsumer()
    pipeline = ReceivePipeline(consumer, clock=lambda: now[0])
    on_datagram = receiver.on_datagram
    on_packet = pipeline.on_packet
    next_tick = [TICK_S]

    def pipeline_round(r: int) -> None:
        for data in packets[r * speakers:(r + 1) * speakers]:
            on_datagram(data)
        while pending:  # the event loop draining one batch
            on_packet(pending.popleft())
        now[0] += FRAME_S
        if now[0] >= next_tick[0]:  # ReceivePipeline.run()'s default interval
            pipeline.tick()
            next_tick[0] += TICK_S

    def minimal_round(r: int) -> None:
        for data in minimal.packets[r * speakers:(r + 1) * speakers]:
            minimal.handle(data)

    bare = _BareDecode(speakers)
    cpu, bare_cpu = _race(rounds, frames, bare, pipeline_round)
    minimal_cpu, minimal_bare_cpu = _race(rounds, frames, bare, minimal_round)
    _, floor_bare_cpu = _race(rounds, frames, bare, lambda r: floor.round(r, frames[r % len(frames)], timed=r > 0))

    rstats = receiver.stats()
    pstats = pipeline.stats()
    sent = len(packets)
    timed = speakers * (rounds - 1)  # packets in the timed rounds
    per = cpu * 1000 / (timed * FRAME_S)  # ms per speaker-second
    bare_per = bare_cpu * 1000 / (timed * FRAME_S)
    floor_us = {name: round(t * 1e6 / timed, 2) for name, t in floor.cpu.items()}
    floor_total = sum(floor.cpu.values())
    return {
        "speakers": speakers,
        "seconds": rounds * FRAME_S,
        "packets": sent,
        "cpu_ms_per_speaker_second": round(per, 3),
        "bare_decode_ms_per_speaker_second": round(bare_per, 3),
        "ratio": round(per / bare_per, 3) if bare_per else float("inf"),
        "packets_lost": sent - pstats.decoded,
        "receive_lost": rstats.lost,
        "frames_to_consumer": consumer.frames,
        "core_fraction_at_real_time": round(cpu / ((rounds - 1) * FRAME_S), 4),
        # What a ratio can come down to in Python here: the stripped-down path (no reorder, replay
        # window, segmentation, counters, lock or hand-off) and the native calls with no Python
        # around them, each against the bare decode of its own pass.
        "minimal_path_ratio": round(minimal_cpu / minimal_bare_cpu, 3) if minimal_bare_cpu else None,
        "minimal_path_frames": len(minimal.voiced) + len(minimal.unvoiced),
        "native_floor_us_per_packet": floor_us,
        "native_floor_ratio": round(floor_total / floor_bare_cpu, 3) if floor_bare_cpu else None,
    }


# ------------------------------------------------------------------------------------------------ real time

RT_FIRST_USER = 100_000  # speakers' user ids; far from tests.dave_group's bot/Alice ids
RT_FIRST_SSRC = 20_000
STALL_TICK_S = 0.005


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _runqueue_wait_s() -> float | None:
    """Seconds this process's threads spent runnable but waiting for a CPU (others' load on a shared host)."""
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def _context_switches() -> int | None:
    """Context switches (voluntary + involuntary) summed over this process's threads, from /proc."""
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if "ctxt_switches:" in line:
                        total += int(line.split()[1])
    except (OSError, ValueError):
        return None
    return total


def _thread_cpu_s() -> dict[int, float]:
    """CPU seconds (user + system) per native thread id of this process, from /proc."""
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    except (OSError, ValueError, IndexError):
        return {}
    return out


def _cpu_split(before: dict[int, float], after: dict[int, float], times0: os.times_result,
               times1: os.times_result) -> dict[str, float]:
    """Where the process's CPU went: the event loop's thread, discord.py's socket reader, the rest;
    user vs kernel time."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    split = {"loop_s": 0.0, "socket_reader_s": 0.0, "other_threads_s": 0.0}
    main = threading.main_thread().native_id
    for tid, cpu in after.items():
        used = cpu - before.get(tid, 0.0)
        name = names.get(tid, "")
        reader = name.startswith("voice-socket-reader")
        key = "loop_s" if tid == main else "socket_reader_s" if reader else "other_threads_s"
        split[key] += used
    split = {k: round(v, 2) for k, v in split.items()}
    split["user_s"] = round(times1.user - times0.user, 2)
    split["system_s"] = round(times1.system - times0.system, 2)
    return split


def _core_busy_s() -> float | None:
    """Seconds the one core this process is pinned to has been busy (anyone's work), from /proc/stat."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if len(cpus) != 1:
        return None
    name = f"cpu{next(iter(cpus))}"
    try:
        with open("/proc/stat") as f:
            for line in f:
                fields = line.split()
                if fields[0] == name:
                    ticks = [int(x) for x in fields[1:8]]  # user nice system idle iowait irq softirq
                    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return None


def _udp_rcvbuf_errors() -> int | None:
    """System-wide UDP RcvbufErrors (datagrams the kernel dropped for a full socket buffer)."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return None


def _sender_main(conn: Connection, user_ids: list[int], ssrcs: list[int], phases: list[float], seconds: float,
                 external_sender: bytes, channel_id: int, key: bytes, cpu: int | None) -> None:
    """One sender process: MLS members for ``user_ids``, then paced UDP (runs in a spawned process)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))  # MLS setup may use every core; pinned at "go"
    load_libopus()
    sessions = []
    for uid in user_ids:
        member = davey.DaveSession(1, uid, channel_id)
        member.set_external_sender(external_sender)
        sessions.append(member)
    conn.send([m.get_serialized_key_package() for m in sessions])
    welcome = conn.recv()
    for member in sessions:
        member.process_welcome(welcome)
    frames = _speech_like_frames(100)
    packets: list[bytes] = []
    schedule: list[float] = []
    for counter, (r, i, at) in enumerate(_send_order(phases, seconds), 1):
        opus = sessions[i].encrypt_opus(frames[(r + i) % len(frames)])
        packets.append(build_packet(opus, key, sequence=(1000 + r) & 0xFFFF, timestamp=r * 960, ssrc=ssrcs[i],
                                    counter=counter, extension_body=_EXTENSION))
        schedule.append(at)
    conn.send("ready")
    command, addr, start_at = conn.recv()
    assert command == "go"
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    conn.send(_paced_send(packets, schedule, addr, start_at))


def _send_order(phases: list[float], seconds: float) -> list[tuple[int, int, float]]:
    """``(round, speaker index, send time)`` in sending order: every speaker once per 20 ms round at
    its own phase, as independent clients would send."""
    order = sorted(range(len(phases)), key=phases.__getitem__)
    return [(r, i, r * FRAME_S + phases[i]) for r in range(int(seconds / FRAME_S)) for i in order]


def _paced_send(packets: list[bytes], schedule: list[float], addr: Any, start_at: float) -> dict[str, Any]:
    """Send each datagram at its ``schedule`` time (seconds after ``start_at``, perf_counter) to ``addr``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    cpu0 = time.process_time()
    sent = errors = 0
    worst_late = 0.0
    total = len(packets)
    sendto = sock.sendto
    perf = time.perf_counter
    while sent < total:
        now = perf() - start_at
        if schedule[sent] > now:
            wait = schedule[sent] - now
            if wait > 0.0003:
                time.sleep(wait - 0.0002)
            continue
        worst_late = max(worst_late, now - schedule[sent])
        while sent < total and schedule[sent] <= now:
            try:
                sendto(packets[sent], addr)
            except OSError:
                errors += 1
            sent += 1
    sock.close()
    return {"sent": sent, "send_errors": errors, "worst_late_ms": round(worst_late * 1000, 2),
            "cpu_s": round(time.process_time() - cpu0, 3)}


def _realtime_minimal(speakers: int, seconds: float, sender_cpu: int | None) -> dict[str, Any]:
    """The stripped-down path (:class:`_MinimalPath`) in real time: one thread reads the UDP socket
    itself (bursts until it is empty, then the product's ``COALESCE_S`` pause) and handles each
    datagram; one forked process on the other core sends N paced speakers. No discord.py, event
    loop, reorder, replay window or segmentation: what the real-time path costs at the least here."""
    from audio.receive import COALESCE_S

    bot, members = _group(speakers)
    minimal = _MinimalPath(bot, members)
    frames = _speech_like_frames(100)
    rng = random.Random(speakers)
    phases = [rng.random() * FRAME_S for _ in members]
    schedule: list[float] = []
    for counter, (r, i, at) in enumerate(_send_order(phases, seconds), 1):
        minimal.seal(members[i], frames[(r + i) % len(frames)], r, i, counter)
        schedule.append(at)
    packets, minimal.packets = minimal.packets, []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    start_at = time.perf_counter() + 0.3
    pid = os.fork()
    if pid == 0:  # the sender: nothing but pre-built datagrams on its own core
        try:
            if sender_cpu is not None:
                os.sched_setaffinity(0, {sender_cpu})
            _paced_send(packets, schedule, sock.getsockname(), start_at)
        finally:
            os._exit(0)
    recv, handle = sock.recv, minimal.handle
    received = 0
    sender_done = False
    gc.collect()
    cpu0 = time.process_time()
    while True:
        try:
            data = recv(_MAX_DATAGRAM)
        except BlockingIOError:
            if received >= len(packets) or sender_done:
                break  # everything arrived, or the sender had finished before the socket ran empty
            # Loopback datagrams are in the socket when sendto returns: once the sender has exited,
            # an empty socket means the rest was lost (a slow sender is waited for, however slow).
            sender_done = os.waitpid(pid, os.WNOHANG)[0] == pid
            time.sleep(COALESCE_S)
            continue
        handle(data)
        received += 1
    cpu_s = time.process_time() - cpu0
    if not sender_done:
        os.waitpid(pid, 0)
    sock.close()
    frames_out = len(minimal.voiced) + len(minimal.unvoiced)
    return {"speakers": speakers, "seconds": seconds, "sent": len(packets), "received": received,
            "lost": len(packets) - frames_out,
            "cpu_us_per_decoded_packet": round(cpu_s * 1e6 / max(1, frames_out), 1),
            "core_fraction": round(cpu_s / seconds, 3)}


class _LoopWatch:
    """The event loop's largest stall (lateness of a short ticker) and the longest GC pause."""

    def __init__(self) -> None:
        self.worst_stall = 0.0
        self.worst_gc = 0.0
        self.collections = [0, 0, 0]
        self._gc_started = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.worst_gc = max(self.worst_gc, time.perf_counter() - self._gc_started)
            self.collections[info["generation"]] += 1

    async def run(self) -> None:
        gc.callbacks.append(self._on_gc)
        try:
            loop = asyncio.get_running_loop()
            while True:
                due = loop.time() + STALL_TICK_S
                await asyncio.sleep(STALL_TICK_S)
                self.worst_stall = max(self.worst_stall, loop.time() - due)
        finally:
            gc.callbacks.remove(self._on_gc)


async def _wait_until(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (a failure guard, never the expected path)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(step)
    return True


async def _realtime(speakers: int, seconds: float, sender_cpu: int | None, sender_procs: int,
                    receive_buffer: int | None) -> dict[str, Any]:
    from audio.receive import ReceiveVoiceClient
    from tests.dave_group import ALICE, CHANNEL_ID, TRANSPORT_KEY, attach_gateway, voice_channel

    load_libopus()
    loop = asyncio.get_running_loop()
    async with discord.Client(intents=discord.Intents.none()) as client:
        consumer = _NullConsumer()
        pipeline = ReceivePipeline(consumer)
        extra = {} if receive_buffer is None else {"receive_buffer": receive_buffer}
        vc = ReceiveVoiceClient(client, voice_channel(client), sink=pipeline, **extra)
        gw, sock = attach_gateway(vc)
        ctx = multiprocessing.get_context("spawn")
        procs: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            await gw.session_description()  # op 4: the key, DAVE v1; we start listening here
            await gw.establish(ALICE)  # a silent member who founds the group and welcomes the bot
            rng = random.Random(speakers)
            users = [RT_FIRST_USER + i for i in range(speakers)]
            phases = [rng.random() * FRAME_S for _ in users]
            for k in range(sender_procs):
                mine = list(range(k, speakers, sender_procs))
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_sender_main, name=f"bench-receive-sender-{k}", daemon=True, args=(
                    child, [users[i] for i in mine], [RT_FIRST_SSRC + i for i in mine], [phases[i] for i in mine],
                    seconds, gw.sender.payload(), CHANNEL_ID, TRANSPORT_KEY, sender_cpu))
                proc.start()
                procs.append((proc, parent))
            key_packages = [kp for _, parent in procs for kp in await loop.run_in_executor(None, parent.recv)]
            # Everyone joins in one op 27; discord.py's bot commits it (op 28), as Discord may pick.
            committer = gw.members[ALICE]
            payload = proposals_op_payload(
                [gw.sender.add_proposal(kp, CHANNEL_ID, committer.epoch) for kp in key_packages])
            await gw.ws.received_binary_message(gw._binary(27, payload))
            commit, welcome = split_commit_welcome(gw.ws.sent_binary[-1][1])
            assert welcome is not None
            committer.process_proposals(davey.ProposalsOperationType.append, payload[1:])
            committer.process_commit(commit)
            gw._transition += 1
            await gw.ws.received_binary_message(gw._binary(29, struct.pack(">H", gw._transition) + commit))
            await gw.json(22, {"transition_id": gw._transition})
            for _, parent in procs:
                parent.send(welcome)
            for i, uid in enumerate(users):
                await gw.json(5, {"user_id": str(uid), "ssrc": RT_FIRST_SSRC + i, "speaking": 1})
            for _, parent in procs:
                assert await loop.run_in_executor(None, parent.recv) == "ready"
            conn = vc._connection
            assert conn.dave_session is not None and conn.dave_session.ready

            watch = _LoopWatch()
            tasks.append(loop.create_task(pipeline.run(), name="bench-receive-pipeline"))
            tasks.append(loop.create_task(watch.run(), name="bench-receive-loopwatch"))
            gc.collect()
            await asyncio.sleep(0.2)  # the ticker's first lateness is the task start, not a stall
            watch.worst_stall = watch.worst_gc = 0.0
            watch.collections = [0, 0, 0]
            before = vc.stats
            rcvbuf_errors = _udp_rcvbuf_errors()
            waited0 = _runqueue_wait_s()
            switches0 = _context_switches()
            threads0, times0 = _thread_cpu_s(), os.times()
            busy0 = _core_busy_s()
            cpu0 = time.process_time()
            start_at = time.perf_counter() + 0.1
            for _, parent in procs:
                parent.send(("go", sock.getsockname(), start_at))
            reports = [await loop.run_in_executor(None, parent.recv) for _, parent in procs]
            sent = sum(r["sent"] for r in reports)
            # Drain: everything the socket took is read and handed over (guard: a few seconds).
            last = [-1]

            def settled() -> bool:
                seen = vc.stats.datagrams - before.datagrams
                done = seen >= sent or seen == last[0]
                last[0] = seen
                return done and not vc._pending

            await _wait_until(settled, timeout=10.0, step=0.25)
            pipeline.tick()
            cpu_s = time.process_time() - cpu0
            threads1, times1 = _thread_cpu_s(), os.times()
            busy1 = _core_busy_s()
            waited1 = _runqueue_wait_s()
            switches1 = _context_switches()
            after = vc.stats
            rcvbuf_after = _udp_rcvbuf_errors()
            pstats = pipeline.stats()
            datagrams = after.datagrams - before.datagrams
            dropped = {k: v - before.dropped.get(k, 0) for k, v in after.dropped.items() if v - before.dropped.get(k, 0)}
            # Backlog and a closed loop are losses of real audio; every other drop rejected a datagram.
            rejected = sum(n for reason, n in dropped.items() if reason not in ("backlog", "loop_closed"))
            return {
                "speakers": speakers,
                "seconds": seconds,
                "sent": sent,
                "lost": sent - pstats.decoded,
                "rejected": rejected,
                "socket_overflow": sent - datagrams,
                "udp_rcvbuf_errors_system": (rcvbuf_after - rcvbuf_errors
                                             if rcvbuf_errors is not None and rcvbuf_after is not None else None),
                "receiver_dropped": dropped,
                "concealed": pstats.concealed + pstats.fec_recovered,
                "largest_loop_stall_ms": round(watch.worst_stall * 1000, 1),
                "longest_gc_pause_ms": round(watch.worst_gc * 1000, 1),
                "gc_collections": watch.collections,
                "cpu_ms_per_speaker_second": round(cpu_s * 1000 / (speakers * seconds), 3),
                "cpu_us_per_decoded_packet": round(cpu_s * 1e6 / max(1, pstats.decoded), 1),
                "core_fraction": round(cpu_s / seconds, 3),
                "cpu_split": _cpu_split(threads0, threads1, times0, times1),
                # Runnable but not running, summed over our threads (the core was someone else's, or
                # our other thread's: the reader and the loop share it); exited threads not counted.
                "context_switches": (switches1 - switches0 if switches0 is not None and switches1 is not None
                                     else None),
                "runqueue_wait_s": (round(waited1 - waited0, 2) if waited0 is not None and waited1 is not None
                                    else None),
                # The pinned core's time spent on other processes over the window: what was stolen.
                "core_used_by_others_s": (round(busy1 - busy0 - cpu_s, 2) if busy0 is not None and busy1 is not None
                                          else None),
                "window_s": round(time.perf_counter() - start_at, 2),
                "so_rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),  # effective (Linux: 2x granted)
                "speech_starts": consumer.starts,
                "sender_worst_late_ms": max(r["worst_late_ms"] for r in reports),
                "sender_processes": sender_procs,
            }
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            for proc, parent in procs:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.terminate()
                parent.close()
            await vc._connection.disconnect(force=True)  # stops discord.py's socket-reader thread
            sock.close()


def _dave_memory(members: int) -> dict[str, Any]:
    """RSS growth of one MLS group of ``members`` + the bot in this (fresh) process."""
    gc.collect()
    before = _rss_bytes()
    bot, sessions = _group(members)
    grown = _rss_bytes() - before
    assert bot.ready and len(sessions) == members
    return {"members": members, "sessions": members + 1, "rss_mib": round(grown / 2**20, 1),
            "kib_per_session": round(grown / 1024 / (members + 1), 1)}


def _cores() -> tuple[int | None, int | None]:
    """(core for the process under test, core for the senders), or Nones when not pinning."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    return cpus[0], cpus[1]


def _child(args: list[str], cpu: int | None, tree: str | None = None) -> dict[str, Any]:
    """Run ``python -m bench.receive ARGS`` in a fresh process (pinned with taskset) and parse its line.

    ``tree``: a checkout of other code (``--baseline``) to run instead of this one.
    """
    cmd = [sys.executable, "-m", "bench.receive", *args]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    env = None
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if tree is not None:
        env = dict(os.environ, PYTHONPATH=tree + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tree or repo, env=env)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1], "args": args}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _checkout(ref: str, into: str) -> str:
    """Extract commit ``ref`` of this repository into ``into``; return the commit's hash."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = subprocess.run(["git", "-C", repo, "rev-parse", "--verify", ref + "^{commit}"], capture_output=True,
                            text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "-C", repo, "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return commit


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _synthetic_child(args: argparse.Namespace, tree: str | None) -> dict[str, Any]:
    return _child(["--speakers", args.speakers, "--seconds", str(args.seconds), "--realtime", "", "--dave-memory", ""],
                  None, tree)


def judge_synthetic(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The synthetic figures and target over repeated runs of the top count: the worst run's
    figures, every run's loss added up, and the target met only when every run met it (a run that
    failed fails it). Pure."""
    done = [r for r in runs if "error" not in r]
    worst = max(done, key=lambda r: r["ratio"], default=None)
    lost = sum(int(r["packets_lost"]) for r in done)
    return {
        "speakers": worst["speakers"] if worst else None,
        "cpu_ms_per_speaker_second": worst["cpu_ms_per_speaker_second"] if worst else None,
        "bare_decode_ms_per_speaker_second": worst["bare_decode_ms_per_speaker_second"] if worst else None,
        "ratio": worst["ratio"] if worst else None,
        "packets_lost": lost,
        "synthetic_runs": {"judged": len(runs), "failed": len(runs) - len(done)},
        "synthetic_target_met": bool(runs) and len(done) == len(runs) and lost == 0
                                and all(r["ratio"] <= 1.3 for r in done),
    }


def _measure(args: argparse.Namespace, line: dict[str, Any], trees: list[tuple[str, str | None]]) -> None:
    """The synthetic sweep and the real-time runs; with a baseline, each run alternates between the
    current code and the baseline's, back to back, so both see the same machine."""
    ab = len(trees) > 1
    if args.speakers:
        if not ab:
            load_libopus()
            frames = _speech_like_frames(100)
            results = [run(int(n), args.seconds, frames) for n in args.speakers.split(",")]
            line["sweep"] = results
            line.update(judge_synthetic([results[-1]]))
        else:
            pairs: list[dict[str, Any]] = []
            for _ in range(max(1, args.repeat)):
                for name, tree in trees:
                    child = _synthetic_child(args, tree)
                    keep = ("speakers", "ratio", "cpu_ms_per_speaker_second", "bare_decode_ms_per_speaker_second",
                            "packets_lost", "loadavg_before", "error")
                    pairs.append({"code": name, **{k: child[k] for k in keep if k in child}})
            line["synthetic_ab"] = pairs
            line.update(judge_synthetic([p for p in pairs if p["code"] == "current"]))
    if args.realtime:
        core, sender_core = _cores()
        line["pinned"] = {"process_under_test": core, "senders": sender_core, "tool": "taskset" if core is not None else None}
        runs = []
        for n in (int(x) for x in args.realtime.split(",")):
            for _ in range(max(1, args.repeat)):
                for name, tree in trees:
                    child = ["--child-realtime", str(n), "--realtime-seconds", str(args.realtime_seconds),
                             "--sender-processes", str(args.sender_processes)]
                    if args.receive_buffer is not None:
                        child += ["--receive-buffer", str(args.receive_buffer)]
                    if sender_core is not None:
                        child += ["--child-sender-cpu", str(sender_core)]
                    result = _child(child, core, tree)
                    if ab:
                        result = {"code": name, **result}
                    result["loadavg"] = _loadavg()
                    runs.append(result)
        line["realtime"] = runs
        # The lower bound beside them: the stripped-down path in real time, the same counts and cores.
        line["realtime_minimal"] = [
            _child(["--child-realtime-minimal", n, "--realtime-seconds", str(args.realtime_seconds)]
                   + (["--child-sender-cpu", str(sender_core)] if sender_core is not None else []), core)
            for n in args.realtime.split(",")]
        mine = [r for r in runs if r.get("code", "current") == "current"]
        biggest = max((r for r in mine if "error" not in r), key=lambda r: r["speakers"], default=None)
        line["realtime_target_met"] = bool(
            biggest is not None and biggest["speakers"] >= 500
            and all(r.get("lost") == 0 for r in mine if r.get("speakers") == biggest["speakers"]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="accepted for symmetry; the output is always JSON")
    parser.add_argument("--speakers", default="1,10,100", help="synthetic sweep, comma-separated ('' to skip)")
    parser.add_argument("--seconds", type=float, default=4.0, help="simulated seconds per synthetic speaker")
    parser.add_argument("--realtime", default="100,300,500", help="real-time speaker counts ('' to skip)")
    parser.add_argument("--realtime-seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1, help="real-time runs per speaker count")
    parser.add_argument("--dave-memory", default="100,200", help="group sizes to measure ('' to skip)")
    parser.add_argument("--sender-processes", type=int, default=0, help="0: one per 150 speakers, at most 4")
    parser.add_argument("--receive-buffer", type=int, help="SO_RCVBUF to ask for (0: the OS default)")
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="also measure this commit's code (git archive), alternating run by run with the "
                             "current code; the synthetic mode then runs --repeat times per side in fresh processes")
    parser.add_argument("--child-realtime", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-sender-cpu", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--child-dave-memory", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-realtime-minimal", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if args.child_realtime is not None:
        cpu = args.child_sender_cpu if args.child_sender_cpu >= 0 else None
        procs = args.sender_processes or min(4, 1 + args.child_realtime // 150)
        result = asyncio.run(_realtime(args.child_realtime, args.realtime_seconds, cpu, procs, args.receive_buffer))
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    if args.child_realtime_minimal is not None:
        cpu = args.child_sender_cpu if args.child_sender_cpu >= 0 else None
        load_libopus()
        result = _realtime_minimal(args.child_realtime_minimal, args.realtime_seconds, cpu)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    if args.child_dave_memory is not None:
        sys.stdout.write(json.dumps(_dave_memory(args.child_dave_memory)) + "\n")
        return 0

    line: dict[str, Any] = {"bench": "receive", "cpus": os.cpu_count(), "loadavg_before": _loadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-receive-baseline-") as scratch:
        trees: list[tuple[str, str | None]] = [("current", None)]
        if args.baseline:
            line["baseline"] = {"ref": args.baseline, "commit": _checkout(args.baseline, scratch)}
            trees.append(("baseline", scratch))
        _measure(args, line, trees)
    if args.dave_memory:
        line["dave_memory"] = [_child(["--child-dave-memory", n], None) for n in args.dave_memory.split(",")]
    line["loadavg_after"] = _loadavg()
    sys.stdout.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
