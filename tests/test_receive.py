"""Receive: discord.py's own DAVE handling driven by a scripted voice gateway, packets sealed in the test."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import davey
import discord
import pytest

from bot.loopback.mls import ExternalSender, establish_group
from audio.receive import ReceiveStats, ReceiveVoiceClient, VoicePacket
from tests.dave_group import (
    ALICE,
    BOB,
    BOT_ID,
    BOT_SSRC,
    CAROL,
    TRANSPORT_KEY,
    VoiceGateway,
    attach_gateway,
    seal,
    voice_channel,
)

OPUS = b"\xfc" + bytes(range(1, 60))
OPUS2 = b"\xfc" + bytes(range(100, 160))
SILENCE = b"\xf8\xff\xfe"
ALICE_SSRC, BOB_SSRC, CAROL_SSRC = 11, 12, 13


class RecordingSink:
    """A ReceiveSink that records and lets a test await a number of packets (no sleeps)."""

    def __init__(self) -> None:
        self.packets: list[VoicePacket] = []
        self.left: list[int] = []
        self._waiter: tuple[int, asyncio.Future[None]] | None = None

    def on_packet(self, packet: VoicePacket) -> None:
        self.packets.append(packet)
        self._check()

    def on_speaker_left(self, user_id: int) -> None:
        self.left.append(user_id)

    def _check(self) -> None:
        if self._waiter and len(self.packets) >= self._waiter[0] and not self._waiter[1].done():
            self._waiter[1].set_result(None)

    async def wait_for(self, n: int) -> list[VoicePacket]:
        fut = asyncio.get_running_loop().create_future()
        self._waiter = (n, fut)
        self._check()
        await asyncio.wait_for(fut, timeout=30)  # failure guard only (generous: loaded machines)
        return self.packets


@dataclasses.dataclass
class Rig:
    vc: ReceiveVoiceClient
    gw: VoiceGateway
    sink: RecordingSink
    sock: socket.socket
    counter: int = 0

    def send(self, user: int, ssrc: int, seq: int, opus: bytes = OPUS, *, raw: bool = False, **kw: Any) -> bytes:
        frame = opus if raw else self.gw.encrypt(user, opus)
        self.counter += 1
        packet = seal(frame, seq=seq, ts=seq * 960, ssrc=ssrc, counter=self.counter, **kw)
        self.vc.receiver.on_datagram(packet)
        return packet

    @property
    def stats(self) -> ReceiveStats:
        return self.vc.stats

    async def speaking(self, user: int, ssrc: int, flag: int = 1) -> None:
        await self.gw.json(5, {"user_id": str(user), "ssrc": ssrc, "speaking": flag})


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with discord.Client(intents=discord.Intents.default()) as client:
        channel = voice_channel(client)
        sink = RecordingSink()
        vc = ReceiveVoiceClient(client, channel, sink=sink)
        gw, sock = attach_gateway(vc)
        try:
            yield Rig(vc, gw, sink, sock)
        finally:
            await vc._connection.disconnect(force=True)  # stops discord.py's socket-reader thread
            sock.close()


async def _dave_rig(rig: Rig) -> Rig:
    await rig.gw.session_description()
    await rig.gw.establish(ALICE)
    return rig


async def test_op4_makes_discordpy_send_key_package_and_registers_listener(rig: Rig) -> None:
    await rig.gw.session_description()
    ops = [op for op, _ in rig.gw.ws.sent_binary]
    assert ops == [26]
    assert rig.gw.ws.sent_json[0]["op"] == 5 and rig.gw.ws.sent_json[0]["d"]["ssrc"] == BOT_SSRC
    await rig.gw.establish(ALICE)
    conn = rig.vc._connection
    assert conn.dave_session is not None and conn.dave_session.ready and conn.dave_protocol_version == 1
    assert [m["op"] for m in rig.gw.ws.sent_json] == [5, 23]
    await rig.speaking(ALICE, ALICE_SSRC)
    # end to end through discord.py's SocketReader thread: a real datagram on the real socket
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(seal(rig.gw.encrypt(ALICE, OPUS), ssrc=ALICE_SSRC), rig.sock.getsockname())
        packets = await rig.sink.wait_for(1)
    finally:
        sender.close()
    assert packets[0] == VoicePacket(ALICE, ALICE_SSRC, 1, 960, OPUS)


async def test_listener_registered_once_across_repeated_op4(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.gw.session_description()  # a reconnect: discord.py reinits DAVE, we re-register
    reader = rig.vc._connection._socket_reader
    assert reader._callbacks.count(rig.vc._on_datagram) == 1


async def test_op4_enlarges_the_voice_socket_receive_buffer(rig: Rig) -> None:
    # The default buffer (net.core.rmem_default, ~208 KiB) holds ~10 ms of 500 speakers; discord.py
    # makes the socket, op 4 is where we start listening on it, so that is where it grows.
    default = rig.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    await rig.gw.session_description()
    effective = rig.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    assert rig.vc.receive_buffer_bytes == effective > default
    await rig.gw.session_description()  # a reconnect's op 4: still the enlarged buffer, no error
    assert rig.vc.receive_buffer_bytes == rig.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == effective


async def test_reader_thread_pauses_for_a_loop_that_is_behind(rig: Rig) -> None:
    # On one busy core discord.py's reader (GIL dropped and retaken on every recv) can starve the
    # event loop; at the high-water mark the reader waits for a drain, the socket buffer holding the rest.
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    vc = rig.vc
    vc._backpressure = 2
    vc._batch_s = 3600.0  # a batch timer that never fires here: the high-water mark must drain by itself
    rig.send(ALICE, ALICE_SSRC, 1)
    assert vc._caught_up.is_set()
    rig.send(ALICE, ALICE_SSRC, 2)
    assert not vc._caught_up.is_set()  # the reader's next datagram would wait for the loop
    assert [p.sequence for p in await rig.sink.wait_for(2)] == [1, 2]
    assert vc._caught_up.is_set()
    # The wait is bounded: called on the loop itself (which cannot drain meanwhile) it still returns.
    rig.send(ALICE, ALICE_SSRC, 3)
    rig.send(ALICE, ALICE_SSRC, 4)
    rig.counter += 1
    vc._on_datagram(seal(rig.gw.encrypt(ALICE, OPUS), seq=5, ts=5 * 960, ssrc=ALICE_SSRC, counter=rig.counter))
    packets = await rig.sink.wait_for(5)
    assert [p.sequence for p in packets] == [1, 2, 3, 4, 5]
    assert rig.stats.lost == 0


@pytest.mark.parametrize("ext_words", [None, 0, 1, 2])
@pytest.mark.parametrize("padding", [0, 1, 7])
async def test_dave_frames_with_extensions_and_padding(rig: Rig, ext_words: int | None, padding: int) -> None:
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    rig.send(ALICE, ALICE_SSRC, 1, ext_words=ext_words, padding=padding)
    packets = await rig.sink.wait_for(1)
    assert packets[0].opus == OPUS and packets[0].user_id == ALICE
    assert rig.stats.dave_decrypted == 1 and rig.stats.lost == 0


async def test_all_padding_and_silence(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    rig.vc.receiver.on_datagram(seal(b"", ssrc=ALICE_SSRC, padding=5, counter=99))
    rig.send(ALICE, ALICE_SSRC, 2, SILENCE)
    packets = await rig.sink.wait_for(1)
    assert packets[0].opus == SILENCE
    assert rig.stats.dropped["empty"] == 1


async def test_duplicates_are_not_decrypted_twice(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    packet = rig.send(ALICE, ALICE_SSRC, 5)
    for _ in range(3):
        rig.vc.receiver.on_datagram(packet)
    await rig.sink.wait_for(1)
    stats = rig.stats
    assert stats.delivered == 1 and stats.dropped["duplicate"] == 3 and stats.lost == 0
    dave_stats = rig.vc._connection.dave_session.get_decryption_stats(ALICE)
    assert dave_stats.attempts == 1 and dave_stats.failures == 0


async def test_reordered_and_wrapping_sequences_are_all_delivered(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    for seq in (65534, 0, 65535, 1):
        rig.send(ALICE, ALICE_SSRC, seq)
    packets = await rig.sink.wait_for(4)
    assert [p.sequence for p in packets] == [65534, 0, 65535, 1]


@pytest.mark.parametrize("pt", [101, 103])
async def test_video_rtcp_and_own_ssrc_are_filtered(rig: Rig, pt: int) -> None:
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    rig.send(ALICE, ALICE_SSRC + 1, 1, pt=pt)
    rig.vc.receiver.on_datagram(bytes([0x81, 200]) + bytes(30))
    rig.send(ALICE, BOT_SSRC, 1)
    stats = rig.stats
    assert stats.dropped == {"payload_type": 1, "rtcp": 1, "own_ssrc": 1}
    assert stats.delivered == 0 and stats.audio_packets == 0


async def test_unknown_ssrc_is_attributed_by_trial_decryption(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.gw.add_member(BOB)
    rig.send(BOB, BOB_SSRC, 1, SILENCE)  # silence proves nothing: held, not attributed
    assert rig.stats.held == 1 and rig.vc.user_for_ssrc(BOB_SSRC) is None
    rig.send(BOB, BOB_SSRC, 2, OPUS)
    packets = await rig.sink.wait_for(2)
    assert {(p.user_id, p.sequence) for p in packets} == {(BOB, 1), (BOB, 2)}
    assert rig.vc.user_for_ssrc(BOB_SSRC) == BOB
    stats = rig.stats
    assert stats.trial_attributed == 1 and stats.held == 0 and stats.lost == 0
    assert next(p for p in packets if p.sequence == 2).opus == OPUS  # the trial's plaintext was kept


async def test_unknown_ssrc_held_until_op5_then_replayed(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.gw.add_member(CAROL)
    # a frame from a key nobody in our group has (another group entirely): trial cannot match
    outsider_a, outsider_b = davey.DaveSession(1, 5, 1), davey.DaveSession(1, 6, 1)
    establish_group(ExternalSender(), outsider_a, outsider_b, 1)
    rig.send(CAROL, CAROL_SSRC, 1, SILENCE)
    rig.send(CAROL, CAROL_SSRC, 2, outsider_a.encrypt_opus(OPUS), raw=True)
    rig.send(CAROL, CAROL_SSRC, 3, SILENCE)
    assert rig.stats.held == 3 and not rig.sink.packets and rig.stats.trial_attributed == 0
    await rig.speaking(CAROL, CAROL_SSRC)
    packets = await rig.sink.wait_for(2)
    assert [p.sequence for p in packets] == [1, 3] and all(p.user_id == CAROL for p in packets)
    assert rig.stats.held == 0 and rig.stats.dropped == {"dave_decrypt": 1}


async def test_hold_buffer_is_bounded(rig: Rig) -> None:
    await rig.gw.session_description(dave_version=0)  # no DAVE: unknown SSRCs can only be held
    for seq in range(60):
        rig.send(ALICE, ALICE_SSRC, seq, OPUS, raw=True)
    assert rig.stats.held == 50 and rig.stats.dropped["hold_overflow"] == 10
    for ssrc in range(100, 120):
        rig.send(ALICE, ssrc, 1, OPUS, raw=True)
    assert rig.stats.held <= 16 * 50
    assert len(rig.vc.receiver._held) == 16
    await rig.speaking(ALICE, 119)
    packets = await rig.sink.wait_for(1)
    assert packets[0].ssrc == 119


async def test_epoch_change_mid_stream(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    rig.send(ALICE, ALICE_SSRC, 1)
    old_epoch_frame = rig.gw.encrypt(ALICE, OPUS2)
    await rig.gw.add_member(CAROL)  # op 27 → discord.py sends op 28; op 29 + op 22
    assert [op for op, _ in rig.gw.ws.sent_binary] == [26, 28]
    assert rig.vc._connection.dave_session.epoch == 2
    await rig.speaking(CAROL, CAROL_SSRC)
    rig.send(ALICE, ALICE_SSRC, 2)
    rig.send(CAROL, CAROL_SSRC, 1, OPUS2)
    rig.send(ALICE, ALICE_SSRC, 3, old_epoch_frame, raw=True)  # sent before the switch, arriving after
    packets = await rig.sink.wait_for(4)
    assert [(p.user_id, p.opus) for p in packets] == [(ALICE, OPUS), (ALICE, OPUS), (CAROL, OPUS2), (ALICE, OPUS2)]
    assert rig.stats.lost == 0


async def test_downgrade_to_version_zero(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    rig.send(ALICE, ALICE_SSRC, 1)
    await rig.gw.downgrade()
    assert rig.vc._connection.dave_protocol_version == 0
    rig.send(ALICE, ALICE_SSRC, 2, OPUS2, raw=True)
    rig.send(ALICE, ALICE_SSRC, 3)  # a sender that has not switched yet: still DAVE
    packets = await rig.sink.wait_for(3)
    assert [p.opus for p in packets] == [OPUS, OPUS2, OPUS]


async def test_member_leaving_drops_state(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    rig.send(ALICE, ALICE_SSRC, 1)
    await rig.gw.json(11, {"user_ids": [str(ALICE), str(BOB)]})
    assert rig.vc.receiver.members == {ALICE, BOB}
    await rig.gw.json(13, {"user_id": str(ALICE)})
    assert rig.sink.left == [ALICE]
    assert [p.sequence for p in rig.sink.packets] == [1]  # drained before the leave event
    assert rig.vc.user_for_ssrc(ALICE_SSRC) is None and ALICE not in rig.vc.receiver.members
    assert ALICE_SSRC not in rig.vc.receiver._windows


async def test_op12_audio_ssrc_maps(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.gw.json(12, {"user_id": str(ALICE), "audio_ssrc": ALICE_SSRC, "video_ssrc": 0})
    assert rig.vc.user_for_ssrc(ALICE_SSRC) == ALICE
    await rig.gw.json(12, {"user_id": str(BOB), "audio_ssrc": 0})
    assert rig.vc.user_for_ssrc(0) is None


async def test_dave_active_but_not_ready_drops(rig: Rig) -> None:
    await rig.gw.session_description()  # version 1, no welcome yet
    await rig.speaking(ALICE, ALICE_SSRC)
    rig.send(ALICE, ALICE_SSRC, 1, OPUS, raw=True)
    assert rig.stats.dropped == {"dave_not_ready": 1}


async def test_bad_packets_are_counted_and_dropped(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    recv = rig.vc.receiver.on_datagram
    recv(seal(rig.gw.encrypt(ALICE, OPUS), ssrc=ALICE_SSRC, seq=1, counter=1)[:20])  # truncated
    recv(seal(OPUS * 40, bytes(32), ssrc=ALICE_SSRC, seq=2))  # oversized and wrongly keyed
    recv(seal(b"\x01" * 4000, ssrc=ALICE_SSRC, seq=3))  # oversized plaintext that is not DAVE
    recv(b"\x80\x78" + bytes(100))  # garbage with a plausible header
    recv(seal(rig.gw.encrypt(ALICE, OPUS)[:-3] + b"\xfa\xfa", ssrc=ALICE_SSRC, seq=4))  # mangled DAVE frame
    recv(seal(rig.gw.encrypt(ALICE, b"\x01" * 4000)[:-1], ssrc=ALICE_SSRC, seq=5))  # truncated DAVE frame
    recv(seal(rig.gw.encrypt(ALICE, OPUS), ssrc=ALICE_SSRC, seq=6))
    recv(seal(rig.gw.encrypt(ALICE, OPUS2), ssrc=ALICE_SSRC, seq=7))
    await rig.sink.wait_for(2)
    stats = rig.stats
    assert stats.dropped["too_short"] == 1
    assert stats.dropped["transport_decrypt"] == 2
    assert stats.dropped.get("dave_unencrypted", 0) + stats.dropped.get("dave_decrypt", 0) == 3
    # none of it was audio anyone in the call sent: rejected, not lost (no real stream had a gap)
    assert stats.delivered == 2 and stats.rejected == 6 and stats.lost == 0 and stats.ignored == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.delivered = 0  # type: ignore[misc]


async def test_opted_out_user_is_never_decrypted(rig: Rig) -> None:
    await _dave_rig(rig)
    rig.vc.accept_user = lambda user_id: user_id != ALICE
    await rig.speaking(ALICE, ALICE_SSRC)
    rig.send(ALICE, ALICE_SSRC, 1)
    assert rig.stats.dropped == {"opted_out": 1} and rig.stats.lost == 0
    assert rig.vc._connection.dave_session.get_decryption_stats(ALICE).attempts == 0


async def test_sink_errors_do_not_escape(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)

    class Broken(RecordingSink):
        def on_packet(self, packet: VoicePacket) -> None:
            super().on_packet(packet)
            raise RuntimeError("boom")

    broken = Broken()
    rig.vc.set_sink(broken)
    rig.send(ALICE, ALICE_SSRC, 1)
    rig.send(ALICE, ALICE_SSRC, 2)
    assert len(await broken.wait_for(2)) == 2
    assert "sink failed" in caplog.text


async def test_speaking_events_are_counted_but_not_for_ourselves(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC, 1)
    await rig.speaking(ALICE, ALICE_SSRC, 0)
    await rig.speaking(BOT_ID, BOT_SSRC, 1)
    assert rig.stats.speaking_events == 1
    assert rig.vc.user_for_ssrc(BOT_SSRC) is None


# --- a user's stream moving to a new SSRC; other bots (issue 11) ---------------------------------


async def test_new_ssrc_from_op5_retires_the_old_mapping(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    rig.send(ALICE, ALICE_SSRC, 5000)
    await rig.speaking(ALICE, 21)  # the same user restarts on a new SSRC; no op 13
    rig.send(ALICE, 21, 4000)  # sequence numbers 1,000 behind: a new stream, not a late one
    rig.send(ALICE, ALICE_SSRC, 5001)  # a late packet of the old stream
    packets = await rig.sink.wait_for(2)
    assert [(p.ssrc, p.sequence) for p in packets] == [(ALICE_SSRC, 5000), (21, 4000)]
    assert rig.vc.receiver.ssrc_to_user == {21: ALICE}
    stats = rig.stats
    assert stats.dropped == {"retired_ssrc": 1} and stats.ignored == 1 and stats.rejected == 0
    assert stats.packets_by_user == {ALICE: 1}


async def test_new_ssrc_found_by_trial_decryption_retires_the_old_one(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    rig.send(ALICE, ALICE_SSRC, 10)
    rig.send(ALICE, 21, 9000)  # no op 5 for it: DAVE trial decryption says it is Alice
    rig.send(ALICE, ALICE_SSRC, 11)  # the old stream's late packet must not map it back
    rig.send(ALICE, 21, 9001)
    packets = await rig.sink.wait_for(3)
    assert [(p.ssrc, p.sequence) for p in packets] == [(ALICE_SSRC, 10), (21, 9000), (21, 9001)]
    assert rig.vc.receiver.ssrc_to_user == {21: ALICE}
    assert rig.stats.trial_attributed == 1 and rig.stats.dropped == {"retired_ssrc": 1}
    # the gateway is the authority: op 5 for the old SSRC makes it live again
    await rig.speaking(ALICE, ALICE_SSRC)
    rig.send(ALICE, ALICE_SSRC, 12)
    assert (await rig.sink.wait_for(4))[-1].ssrc == ALICE_SSRC
    assert rig.vc.receiver.ssrc_to_user == {ALICE_SSRC: ALICE}


async def test_other_bots_are_dropped_before_decryption(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.gw.add_member(BOB)
    rig.vc.ignore_users = frozenset({BOB})
    rig.vc.accept_user = lambda user_id: user_id != CAROL
    await rig.speaking(BOB, BOB_SSRC)
    await rig.speaking(ALICE, ALICE_SSRC)
    rig.send(BOB, BOB_SSRC, 1)
    rig.send(BOB, 31, 1)  # an unknown SSRC: trial decryption finds Bob, who is then ignored
    rig.send(ALICE, ALICE_SSRC, 1)
    await rig.sink.wait_for(1)
    stats = rig.stats
    assert [p.user_id for p in rig.sink.packets] == [ALICE]
    assert stats.dropped == {"bot": 2} and stats.ignored == 2 and stats.rejected == 0
    assert rig.vc._connection.dave_session.get_decryption_stats(BOB).attempts == 1  # only the trial
    # the watchdog's per-person counters leave out ignored bots
    assert stats.packets_by_user == {ALICE: 1} and stats.speaking_by_user == {ALICE: 1}
    rig.vc.ignore_users = frozenset()
    rig.send(BOB, 31, 2)  # Bob's stream is on SSRC 31 now (the trial retired BOB_SSRC)
    assert (await rig.sink.wait_for(2))[-1].user_id == BOB


# --- reading queued datagrams in bursts (the reader thread's fast path) -----------------------------


class _HeldReader:
    """Holds discord.py's reader thread inside our callback (on a sentinel datagram) until
    :meth:`resume`, so what is sent meanwhile queues on the socket: the next select() finds it all.
    (Pausing the reader itself is racy: it parks before or after its next select().)"""

    def __init__(self, rig: Rig) -> None:
        self.entered = threading.Event()
        self._release = threading.Event()
        receiver = rig.vc.receiver
        original = receiver.on_datagrams

        def held(datagrams: list[bytes], deliver: Any) -> None:
            if not self.entered.is_set():
                self.entered.set()
                self._release.wait(60)  # failure guard only: the test releases it
            original(datagrams, deliver)

        receiver.on_datagrams = held  # type: ignore[method-assign]
        self._rig = rig

    async def hold(self) -> None:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sender.sendto(b"\x00", self._rig.sock.getsockname())  # too short: counted, never delivered
        finally:
            sender.close()
        assert await asyncio.to_thread(self.entered.wait, 60)  # failure guard only

    def resume(self) -> None:
        self._release.set()


async def _park_reader(rig: Rig) -> _HeldReader:
    reader = _HeldReader(rig)
    await reader.hold()
    return reader


def _queue(rig: Rig, user: int, ssrc: int, seqs: range) -> None:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for seq in seqs:
            rig.counter += 1
            packet = seal(rig.gw.encrypt(user, OPUS), seq=seq, ts=seq * 960, ssrc=ssrc, counter=rig.counter)
            sender.sendto(packet, rig.sock.getsockname())  # loopback UDP: queued before sendto returns
    finally:
        sender.close()


async def _queued_then_released(rig: Rig, count: int) -> None:
    """Queue Alice's packets 1..``count`` on the socket while discord.py's reader is parked, let it go,
    and check that every one reached the sink in order."""
    reader = await _park_reader(rig)
    _queue(rig, ALICE, ALICE_SSRC, range(1, count + 1))
    reader.resume()
    packets = await rig.sink.wait_for(count)
    assert [p.sequence for p in packets] == list(range(1, count + 1))


async def test_queued_datagrams_are_read_in_one_burst_and_all_delivered_in_order(rig: Rig) -> None:
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    await _queued_then_released(rig, 40)
    # discord.py's select()/recv() took the first; our callback read the other 39 at once.
    assert rig.vc.burst_datagrams == 39
    assert rig.stats.delivered == 40 and rig.stats.rejected == 1  # the sentinel


async def test_bursts_longer_than_the_limit_are_split_and_nothing_is_lost(rig: Rig) -> None:
    from audio.receive import READ_BURST

    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    count = 2 * READ_BURST + 5
    await _queued_then_released(rig, count)
    assert rig.vc.burst_datagrams == count - 3  # three callbacks: 64 + 64 + 5, each after discord.py's recv


async def test_another_socket_listener_still_sees_every_datagram(rig: Rig) -> None:
    # Reading ahead would steal datagrams from a second listener: with one, discord.py reads them all.
    await _dave_rig(rig)
    await rig.speaking(ALICE, ALICE_SSRC)
    seen: list[bytes] = []
    rig.vc._connection.add_socket_listener(seen.append)
    await _queued_then_released(rig, 20)
    assert len(seen) == 21 and rig.vc.burst_datagrams == 0


async def test_unverified_discord_versions_read_one_datagram_per_callback(rig: Rig,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import audio.receive

    monkeypatch.setattr(audio.receive, "BURST_VERIFIED_DISCORD", ())
    await _dave_rig(rig)  # op 4: listening starts, bursts decided here
    await rig.speaking(ALICE, ALICE_SSRC)
    await _queued_then_released(rig, 20)
    assert rig.vc.burst_datagrams == 0
