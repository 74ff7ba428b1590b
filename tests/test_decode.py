"""Per-speaker decode: reorder, wrap, PLC/FEC, corrupt frames, end-of-speech, bounded memory."""

from __future__ import annotations

import math
import struct

import discord.opus
import pytest
from discord.opus import Decoder

from audio.decode import (
    ReceivePipeline,
    SpeakerDecoder,
    SpeechEvent,
    SpeechSegmenter,
    decoder_class,
)
from audio.receive import VoicePacket
from tests.dave_group import opus_frames

SILENCE = b"\xf8\xff\xfe"


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    return opus_frames(60)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A SpeechConsumer that records the event stream."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def on_speech_start(self, user_id: int) -> None:
        self.events.append(("start", user_id, 0))

    def on_audio(self, user_id: int, pcm: bytes) -> None:
        self.events.append(("audio", user_id, len(pcm)))

    def on_speech_end(self, user_id: int) -> None:
        self.events.append(("end", user_id, 0))

    def kinds(self) -> list[str]:
        out: list[str] = []
        for kind, _, _ in self.events:
            if not out or out[-1] != kind or kind != "audio":
                out.append(kind)
        return out


def test_decoder_class_overrides_every_derived_constant() -> None:
    cls = decoder_class(16000, 1)
    assert (cls.SAMPLING_RATE, cls.CHANNELS, cls.SAMPLE_SIZE, cls.SAMPLES_PER_FRAME, cls.FRAME_SIZE) == (
        16000, 1, 2, 320, 640)
    assert issubclass(cls, Decoder) and decoder_class(16000, 1) is cls
    assert decoder_class(48000, 2).FRAME_SIZE == 3840
    with pytest.raises(ValueError):
        decoder_class(44100, 1)


@pytest.mark.parametrize(("rate", "channels", "size"), [(16000, 1, 640), (48000, 1, 1920), (48000, 2, 3840)])
def test_decodes_at_requested_rate(frames: list[bytes], rate: int, channels: int, size: int) -> None:
    dec = SpeakerDecoder(sample_rate=rate, channels=channels)
    out = [pcm for i, f in enumerate(frames[:10]) for pcm in dec.push(i, f)]
    assert [len(p) for p in out] == [size] * 10


def test_decoded_sine_is_not_garbage(frames: list[bytes]) -> None:
    dec = SpeakerDecoder()
    out = b"".join(pcm for i, f in enumerate(frames[:20]) for pcm in dec.push(i, f))
    samples = struct.unpack(f"<{len(out) // 2}h", out)[3200:]
    rms = math.sqrt(sum(s * s for s in samples) / len(samples))
    assert 5000 < rms < 12000  # a 12000-amplitude sine has an RMS of ~8500


def test_reordering_within_depth(frames: list[bytes]) -> None:
    dec = SpeakerDecoder(reorder_depth=3)
    released = []
    for seq in (0, 2, 1, 3, 5, 4):
        released.append(len(dec.push(seq, frames[seq])))
    assert released == [1, 0, 2, 1, 0, 2]
    assert dec.stats.decoded == 6 and dec.stats.concealed == dec.stats.fec_recovered == 0


def test_sequence_wraps(frames: list[bytes]) -> None:
    dec = SpeakerDecoder()
    out = []
    for i, seq in enumerate((65533, 65534, 65535, 0, 1, 2)):
        out += dec.push(seq, frames[i])
    assert len(out) == 6 and dec.stats.late == 0
    dec.push(65535, frames[0])  # now old: late, not a new frame
    assert dec.stats.late == 1


def test_single_loss_uses_fec_and_longer_gap_plc(frames: list[bytes]) -> None:
    dec = SpeakerDecoder(reorder_depth=2)
    out = []
    for seq in [0, 1, 3, 4, 5, 9, 10, 11, 12]:
        out += dec.push(seq, frames[seq])
    out += dec.flush()
    stats = dec.stats
    assert stats.fec_recovered == 2  # seq 2 from 3's FEC; seq 8 from 9's FEC
    assert stats.concealed == 2  # seq 6, 7
    assert len(out) == 13


def test_long_gap_is_bounded(frames: list[bytes]) -> None:
    dec = SpeakerDecoder(reorder_depth=0, max_conceal_frames=3)
    out = dec.push(0, frames[0]) + dec.push(40, frames[1])  # inside the window: a gap, not a jump
    assert len(out) == 1 + 3 + 1
    assert dec.stats.skipped == 39 - 3 and dec.stats.lost == 39


# --- streams that jump (issue 11) ----------------------------------------------------------------


def test_one_frame_far_ahead_never_moves_the_stream(frames: list[bytes]) -> None:
    """A transport-valid silence frame 20,000 ahead, then the speaker goes quiet and carries on."""
    dec = SpeakerDecoder()
    out = [pcm for seq in range(100, 125) for pcm in dec.push(seq, frames[seq % 60])]
    assert dec.push(100 + 20_000, SILENCE) == [] and not dec.accepted
    out += dec.flush()  # the speaker paused: this is where the old decoder jumped by the whole gap
    after = [pcm for seq in range(125, 175) for pcm in dec.push(seq, frames[seq % 60])]
    assert len(after) == 50 and dec.accepted
    stats = dec.stats
    assert (stats.decoded, stats.late, stats.strays, stats.resyncs, stats.lost) == (75, 0, 1, 0, 0)


@pytest.mark.parametrize("offset", [20_000, -1_000, 40_000])
def test_a_run_outside_the_window_restarts_the_stream(frames: list[bytes], offset: int) -> None:
    dec = SpeakerDecoder()
    for seq in range(65_500, 65_530):  # wraps past 65535 on the way
        dec.push(seq % 65536, frames[seq % 60])
    start = (65_530 + offset) % 65536
    got = [len(dec.push((start + i) % 65536, frames[i % 60])) for i in range(10)]
    # the first two wait (they could be strays), the third proves a run: all three come out at once
    assert got == [0, 0, 3, 1, 1, 1, 1, 1, 1, 1]
    stats = dec.stats
    assert (stats.decoded, stats.resyncs, stats.strays, stats.late) == (40, 1, 0, 0)


def test_strays_interleaved_with_the_real_stream_are_not_a_run(frames: list[bytes]) -> None:
    """Consecutive forged frames never add up while the real stream keeps arriving between them."""
    dec = SpeakerDecoder()
    out = []
    for i in range(30):
        out += dec.push(i, frames[i])
        out += dec.push(30_000 + i, SILENCE)
    stats = dec.stats
    assert len(out) == 30 and stats.decoded == 30 and stats.resyncs == 0 and stats.strays == 30


def test_just_late_packets_are_late_and_a_short_step_back_catches_up(frames: list[bytes]) -> None:
    dec = SpeakerDecoder(late_window=10)
    for seq in range(50):
        dec.push(seq, frames[seq])
    assert dec.push(45, frames[45]) == [] and dec.stats.late == 1  # reordered far too late: dropped
    # a stream stepping back 5 (inside the late window) is late until it reaches where it was
    got = sum(len(dec.push(seq, frames[seq % 60])) for seq in range(45, 60))
    assert got == 10 and dec.stats.resyncs == 0


def test_a_duplicate_inside_a_run_does_not_break_it(frames: list[bytes]) -> None:
    dec = SpeakerDecoder()
    dec.push(0, frames[0])
    for seq in (5000, 5000, 5001, 5002):
        dec.push(seq, frames[seq % 60])
    assert dec.stats.resyncs == 1 and dec.stats.duplicates == 1 and dec.stats.decoded == 4


def test_duplicates_and_corrupt_opus_never_stall(frames: list[bytes]) -> None:
    dec = SpeakerDecoder()
    out = dec.push(0, frames[0]) + dec.push(0, frames[0])  # already released: late
    out += dec.push(2, frames[2]) + dec.push(2, frames[2])  # still buffered behind seq 1: duplicate
    out += dec.push(1, b"\xff\xff\xff\xff\xff\xff")  # invalid: code 3 with a bad frame count
    out += dec.push(3, frames[3])
    assert len(out) == 4  # the corrupt frame was concealed, nothing waits
    stats = dec.stats
    assert (stats.late, stats.duplicates, stats.corrupt, stats.decoded, stats.concealed) == (1, 1, 1, 3, 1)


def test_silence_frames_decode_to_silence() -> None:
    dec = SpeakerDecoder()
    (pcm,) = dec.push(0, SILENCE)
    assert pcm == bytes(640)


class ScriptedVad:
    sample_rate = 16000

    def __init__(self) -> None:
        self.voiced = True

    def is_speech(self, pcm: bytes) -> bool:
        return self.voiced

    def reset(self) -> None:
        pass


def test_segmenter_vad_silence_and_packet_gap() -> None:
    clock = FakeClock()
    vad = ScriptedVad()
    seg = SpeechSegmenter(vad, start_frames=2, end_silence_ms=100, clock=clock)
    assert seg.feed(b"") is None
    assert seg.feed(b"") == SpeechEvent.START
    vad.voiced = False
    assert [seg.feed(b"") for _ in range(5)] == [None, None, None, None, SpeechEvent.END]
    vad.voiced = True
    seg.feed(b"")
    assert seg.feed(b"") == SpeechEvent.START
    clock.now += 0.099
    assert seg.tick() is None
    clock.now += 0.002
    assert seg.tick() == SpeechEvent.END
    assert seg.tick() is None


def _packets(user: int, frames: list[bytes], start: int = 0) -> list[VoicePacket]:
    return [VoicePacket(user, 1, (start + i) % 65536, i * 960, f) for i, f in enumerate(frames)]


def test_pipeline_start_audio_end_on_packet_gap(frames: list[bytes]) -> None:
    clock = FakeClock()
    rec = Recorder()
    pipe = ReceivePipeline(rec, clock=clock, end_silence_ms=300)
    for p in _packets(7, frames[:20]):
        pipe.on_packet(p)
        clock.now += 0.02
    assert rec.kinds() == ["start", "audio"]
    assert all(n == 640 for kind, _, n in rec.events if kind == "audio")
    clock.now += 0.2
    pipe.tick()
    assert rec.kinds() == ["start", "audio"]
    clock.now += 0.2
    pipe.tick()
    assert rec.kinds() == ["start", "audio", "end"]
    # the sine is voiced from the first frame: start after 2 frames, pre-roll replays frame 1
    assert sum(1 for kind, _, _ in rec.events if kind == "audio") == 20


def test_pipeline_end_on_vad_silence(frames: list[bytes]) -> None:
    rec = Recorder()
    pipe = ReceivePipeline(rec, clock=FakeClock(), end_silence_ms=200)
    for p in _packets(7, frames[:10] + [SILENCE] * 25):
        pipe.on_packet(p)
    assert rec.kinds() == ["start", "audio", "end"]


def test_pipeline_flushes_reorder_buffer_on_tick(frames: list[bytes]) -> None:
    clock = FakeClock()
    rec = Recorder()
    pipe = ReceivePipeline(rec, clock=clock, vad_factory=None, start_frames=1)
    for p in _packets(7, frames[:5]):
        if p.sequence != 3:
            pipe.on_packet(p)
    audio = sum(1 for e in rec.events if e[0] == "audio")
    assert audio == 3  # 4 is waiting behind the hole at 3
    clock.now += 0.2
    pipe.tick()
    assert sum(1 for e in rec.events if e[0] == "audio") == 5
    assert pipe.stats().fec_recovered == 1


def test_pipeline_speaker_left_drops_state_and_ends_speech(frames: list[bytes]) -> None:
    rec = Recorder()
    pipe = ReceivePipeline(rec, clock=FakeClock())
    for p in _packets(7, frames[:5]) + _packets(8, frames[:5]):
        pipe.on_packet(p)
    assert pipe.speakers == {7, 8}
    pipe.on_speaker_left(7)
    assert pipe.speakers == {8} and rec.events[-1] == ("end", 7, 0)
    assert pipe.stats().decoded == 10  # the departed speaker's counts are kept in the totals
    pipe.close()
    assert pipe.speakers == frozenset()


def test_pipeline_drops_idle_speakers(frames: list[bytes]) -> None:
    clock = FakeClock()
    pipe = ReceivePipeline(Recorder(), clock=clock, idle_drop_s=30)
    pipe.on_packet(_packets(7, frames[:1])[0])
    clock.now += 31
    pipe.tick()
    assert pipe.speakers == frozenset()


def test_pipeline_corrupt_opus_does_not_stall(frames: list[bytes]) -> None:
    rec = Recorder()
    pipe = ReceivePipeline(rec, clock=FakeClock(), vad_factory=None, start_frames=1)
    bad = [b"\xff" * 7, b"\x00", frames[2]]
    for p in _packets(7, bad):
        pipe.on_packet(p)
    assert sum(1 for e in rec.events if e[0] == "audio") == 3
    assert pipe.stats().corrupt == 1  # b"\x00" is a valid (empty) TOC-only packet for libopus


def _stream_time_to_audio(pipe: ReceivePipeline, rec: Recorder, clock: FakeClock,
                          packets: list[VoicePacket], user: int) -> float | None:
    """Feed packets at 20 ms, ticking like the pipeline's timer; stream seconds until ``user`` is heard."""
    before = sum(1 for e in rec.events if e[0] == "audio" and e[1] == user)
    first: float | None = None
    for i, packet in enumerate(packets):
        pipe.on_packet(packet)
        clock.now += 0.02
        pipe.tick()
        if first is None and sum(1 for e in rec.events if e[0] == "audio" and e[1] == user) > before:
            first = (i + 1) * 0.02
    return first


def test_pipeline_hears_again_after_a_stray_frame_far_ahead(frames: list[bytes]) -> None:
    """Issue 11, first sequence: one frame 20,000 ahead on a speaker's SSRC, then they go on talking."""
    clock, rec = FakeClock(), Recorder()
    pipe = ReceivePipeline(rec, clock=clock, vad_factory=None, start_frames=1, end_silence_ms=300)
    talk = [VoicePacket(7, 1, 1000 + i, i * 960, frames[i % 60]) for i in range(60)]
    assert _stream_time_to_audio(pipe, rec, clock, talk[:30], 7) is not None
    pipe.on_packet(VoicePacket(7, 1, 21_030, 0, SILENCE))
    for _ in range(40):  # a pause long enough for flush and end of speech
        clock.now += 0.02
        pipe.tick()
    assert rec.events[-1] == ("end", 7, 0)
    waited = _stream_time_to_audio(pipe, rec, clock, talk[30:], 7)
    assert waited is not None and waited <= 1.0
    assert pipe.stats().strays == 1 and pipe.stats().late == 0 and pipe.heard()[7] == 60


def test_pipeline_hears_a_speaker_restarting_on_a_new_ssrc_behind(frames: list[bytes]) -> None:
    """Issue 11, second sequence: the same user on a new SSRC, sequence numbers 1,000 behind, no op 13."""
    clock, rec = FakeClock(), Recorder()
    pipe = ReceivePipeline(rec, clock=clock, vad_factory=None, start_frames=1, end_silence_ms=300)
    old = [VoicePacket(7, 1, 5000 + i, i * 960, frames[i % 60]) for i in range(30)]
    new = [VoicePacket(7, 2, 4030 + i, i * 960, frames[i % 60]) for i in range(30)]
    _stream_time_to_audio(pipe, rec, clock, old, 7)
    for _ in range(40):
        clock.now += 0.02
        pipe.tick()
    waited = _stream_time_to_audio(pipe, rec, clock, new, 7)
    assert waited is not None and waited <= 1.0
    stats = pipe.stats()
    assert stats.ssrc_changes == 1 and stats.late == 0 and stats.decoded == 60 and pipe.heard() == {7: 60}
    # the same restart on the *same* SSRC resyncs instead
    same = [VoicePacket(7, 2, 3030 + i, i * 960, frames[i % 60]) for i in range(30)]
    waited = _stream_time_to_audio(pipe, rec, clock, same, 7)
    assert waited is not None and waited <= 1.0 and pipe.stats().resyncs == 1


def test_strays_do_not_keep_an_idle_speaker_alive(frames: list[bytes]) -> None:
    clock = FakeClock()
    pipe = ReceivePipeline(Recorder(), clock=clock, idle_drop_s=30)
    pipe.on_packet(VoicePacket(7, 1, 100, 0, frames[0]))
    for i in range(30):
        clock.now += 1
        pipe.on_packet(VoicePacket(7, 1, 100 + 20_000 + 7 * i, 0, SILENCE))  # never a run
        pipe.tick()
    assert pipe.speakers == frozenset() and pipe.heard() == {7: 1}
    pipe.on_speaker_left(7)
    assert pipe.heard() == {}


def test_ten_minute_talker_has_bounded_state(frames: list[bytes]) -> None:
    clock = FakeClock()
    pipe = ReceivePipeline(Recorder(), clock=clock)
    n = 30_000  # ten minutes of 20 ms frames, sequence wrapping past 65535 is covered by start offset
    for i in range(n):
        pipe.on_packet(VoicePacket(7, 1, (60_000 + i) % 65536, i * 960, frames[i % len(frames)]))
        clock.now += 0.02
        if i % 1000 == 0:
            sp = pipe._speakers[7]
            assert sp.decoder.buffered <= 3 and len(sp.pre_roll) <= 10
    stats = pipe.stats()
    assert stats.decoded == n and stats.late == 0 and stats.frames_out == n


# --- the fast paths hear exactly what the general ones do (issue 11, item 3) -----------------------


class _GeneralPathDecoder(SpeakerDecoder):
    """The decoder without its in-order fast path: every packet through the reorder buffer."""

    def push(self, seq: int, opus: bytes) -> list[bytes]:
        return self._push(seq, opus)


def _hostile_sequence(frames: list[bytes], seed: int) -> list[tuple[int, bytes] | None]:
    """A stream with every case at once: in order, reordered, lost, duplicated, late, corrupt,
    runs far ahead and behind (resyncs), single strays, and the wrap at 65536; None = flush."""
    import random

    rng = random.Random(seed)
    out: list[tuple[int, bytes] | None] = []
    seq = 65500
    n = 0
    while len(out) < 600:
        n += 1
        frame = frames[n % len(frames)]
        roll = rng.random()
        if roll < 0.05:
            seq = (seq + 1) % 65536  # lost
            continue
        if roll < 0.10 and out and out[-1] is not None:
            out.append(out[-1])  # duplicate of a released packet (late by then)
        elif roll < 0.12:
            early = ((seq + 1) % 65536, frame)
            out += [early, early, (seq, frames[(n + 1) % len(frames)])]  # a duplicate still buffered
            seq = (seq + 2) % 65536
            continue
        elif roll < 0.15:
            out.append(((seq + 1) % 65536, frame))  # reordered pair
            out.append((seq, frames[(n + 1) % len(frames)]))
            seq = (seq + 2) % 65536
            continue
        elif roll < 0.17:
            out.append(((seq - 4) % 65536, frame))  # late
        elif roll < 0.19:
            out.append(((seq + 20000) % 65536, frame))  # a single stray far ahead
        elif roll < 0.21:
            jump = rng.choice([3000, -700])  # the encoder restarted elsewhere: a run of three
            seq = (seq + jump) % 65536
            for k in range(3):
                out.append(((seq + k) % 65536, frames[(n + k) % len(frames)]))
            seq = (seq + 3) % 65536
            continue
        elif roll < 0.22:
            out.append((seq, b"\xff\xff\xff\xff"))  # corrupt Opus
            seq = (seq + 1) % 65536
            continue
        elif roll < 0.23:
            out.append(None)  # the speaker paused: the pipeline flushes
            continue
        out.append((seq, frame))
        seq = (seq + 1) % 65536
    return out


@pytest.mark.parametrize("seed", range(6))
def test_in_order_fast_path_releases_exactly_what_the_reorder_buffer_does(frames: list[bytes], seed: int) -> None:
    fast, general = SpeakerDecoder(), _GeneralPathDecoder()
    fast_out: list[bytes] = []
    general_out: list[bytes] = []
    for item in _hostile_sequence(frames, seed):
        if item is None:
            fast_out += fast.flush()
            general_out += general.flush()
            continue
        fast_out += fast.push(*item)
        general_out += general.push(*item)
        assert fast.accepted == general.accepted
    fast_out += fast.flush()
    general_out += general.flush()
    assert fast_out == general_out  # the same PCM, byte for byte (FEC and PLC included)
    assert fast.stats == general.stats
    stats = fast.stats
    # The sequence really exercised every path the fast one must not change.
    assert stats.fec_recovered and stats.concealed and stats.duplicates and stats.late
    assert stats.resyncs and stats.strays and stats.corrupt and stats.decoded > 400


def test_pipeline_hears_the_same_with_and_without_the_fast_path(frames: list[bytes]) -> None:
    class GeneralPipeline(ReceivePipeline):
        def _new_decoder(self) -> SpeakerDecoder:
            return _GeneralPathDecoder(sample_rate=self.sample_rate, channels=self.channels)

    class PcmRecorder(Recorder):
        def on_audio(self, user_id: int, pcm: bytes) -> None:
            self.events.append(("audio", user_id, hash(pcm)))

    heard = []
    for cls in (ReceivePipeline, GeneralPipeline):
        clock = FakeClock()
        rec = PcmRecorder()
        pipe = cls(rec, clock=clock)
        for item in _hostile_sequence(frames, 7):
            clock.now += 0.02
            if item is None:
                clock.now += 0.2  # a pause: the tick flushes and may end speech
                pipe.tick()
                continue
            pipe.on_packet(VoicePacket(1, 10, item[0], 0, item[1]))
        pipe.tick()
        heard.append((rec.events, pipe.stats()))
    assert heard[0] == heard[1]
    assert any(kind == "start" for kind, _, _ in heard[0][0])


@pytest.mark.parametrize("native", ["cffi", "ctypes"])
def test_decoder_bindings_decode_plc_and_fec_identically(frames: list[bytes], native: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import audio.decode

    reference = audio.decode.decoder_class(16000, 1)()
    if native == "ctypes":
        monkeypatch.setattr(audio.decode, "_cffi_decode", lambda: None)
    dec = audio.decode.decoder_class(16000, 1)()
    assert dec._cffi == (native == "cffi")
    for i, frame in enumerate(frames[:20]):
        if i % 7 == 3:
            assert dec.decode(None) == reference.decode(None)  # PLC
        elif i % 7 == 5:
            assert dec.decode(frame, fec=True) == reference.decode(frame, fec=True)
        assert dec.decode(frame) == reference.decode(frame)
    with pytest.raises(discord.opus.OpusError):
        dec.decode(b"\xff\xff\xff\xff")
    with pytest.raises(TypeError):
        dec.decode(None, fec=True)
