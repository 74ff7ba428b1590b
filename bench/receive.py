"""Benchmark: N simulated speakers through receive + decode on one core.

Each speaker sends 50 packets/s, DAVE-encrypted by its own davey session in a real MLS group (built
with the loopback external sender) and transport-sealed (aead_xchacha20_poly1305_rtpsize). Packets
are fed to the receive core's socket callback directly, handed off in 20 ms batches (as the event
loop drains them) into the ReceivePipeline (reorder, Opus → 16 kHz mono, webrtcvad, segmenter).
CPU is time.process_time(). The same run also measures bare libopus decoding of the same frames
into a reused buffer (the floor), and reports the ratio.

Usage: python -m bench.receive [--speakers 1,10,100] [--seconds 4]
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import math
import random
import struct
import sys
import time
import types
from collections.abc import Sequence

import davey
import discord.opus

from audio.decode import ReceivePipeline, decoder_class
from audio.native import load_libopus
from audio.receive import VoicePacket, VoiceReceiver
from audio.rtp import SUPPORTED_MODE, build_packet
from bot.loopback.mls import ExternalSender, commit_pending_proposals

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


def _bare_decode_ms(frames: Sequence[bytes], speakers: int, rounds: int) -> float:
    """CPU ms to decode the same frames with libopus alone (one decoder per speaker, reused buffer)."""
    cls = decoder_class(16000, 1)
    decoders = [cls() for _ in range(speakers)]
    lib = discord.opus._lib
    buf = (ctypes.c_int16 * 1920)()
    ptr = ctypes.cast(buf, discord.opus.c_int16_ptr)
    start = time.process_time()
    for r in range(rounds):
        frame = frames[r % len(frames)]
        n = len(frame)
        for dec in decoders:
            lib.opus_decode(dec._state, frame, n, ptr, 1920, 0)
    return (time.process_time() - start) * 1000


def run(speakers: int, seconds: float, frames: Sequence[bytes]) -> dict[str, float | int]:
    bot, members = _group(speakers)
    rounds = int(seconds / FRAME_S)
    # Prepare every datagram up front: the senders' cost is not ours.
    packets: list[bytes] = []
    counter = 0
    for r in range(rounds):
        frame = frames[r % len(frames)]
        for i, member in enumerate(members):
            counter += 1
            packets.append(build_packet(member.encrypt_opus(frame), KEY, sequence=(60000 + r) & 0xFFFF,
                                        timestamp=r * 960, ssrc=10 + i, counter=counter,
                                        extension_body=b"\x10\xaa\x00\x00", padding=0))
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

    start = time.process_time()
    idx = 0
    next_tick = TICK_S
    for _ in range(rounds):
        for _ in range(speakers):
            on_datagram(packets[idx])
            idx += 1
        while pending:  # the event loop draining one batch
            on_packet(pending.popleft())
        now[0] += FRAME_S
        if now[0] >= next_tick:  # ReceivePipeline.run()'s default interval
            pipeline.tick()
            next_tick += TICK_S
    cpu_ms = (time.process_time() - start) * 1000
    bare_ms = _bare_decode_ms(frames, speakers, rounds)

    rstats = receiver.stats()
    pstats = pipeline.stats()
    sent = len(packets)
    speaker_seconds = speakers * rounds * FRAME_S
    per = cpu_ms / speaker_seconds
    bare_per = bare_ms / speaker_seconds
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
        "core_fraction_at_real_time": round(cpu_ms / 1000 / (rounds * FRAME_S), 4),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", default="1,10,100", help="comma-separated sweep")
    parser.add_argument("--seconds", type=float, default=4.0, help="simulated seconds per speaker")
    args = parser.parse_args(argv)
    load_libopus()
    frames = _speech_like_frames(100)
    results = [run(int(n), args.seconds, frames) for n in args.speakers.split(",")]
    top = results[-1]
    line = {
        "bench": "receive",
        "speakers": top["speakers"],
        "cpu_ms_per_speaker_second": top["cpu_ms_per_speaker_second"],
        "bare_decode_ms_per_speaker_second": top["bare_decode_ms_per_speaker_second"],
        "ratio": top["ratio"],
        "packets_lost": top["packets_lost"],
        "target_met": top["ratio"] <= 2.0 and top["packets_lost"] == 0,
        "sweep": results,
    }
    sys.stdout.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
