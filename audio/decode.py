"""Per-speaker Opus decoding, loss concealment and end-of-speech detection.

A synchronous core the event loop drives (decode is a few µs per 20 ms frame):

- :class:`SpeakerDecoder`: one RTP stream's reorder buffer keyed by sequence (wraps at 65536), Opus →
  s16le PCM at 16 kHz mono by default (48 kHz available), PLC for losses and in-band FEC when the
  next packet is at hand, bounded gap concealment, corrupt frames counted and concealed. A stream
  that jumps (a run of consecutive packets far ahead of or behind the expected sequence) is
  restarted at its new position; a single stray packet never moves it.
- :class:`SpeechSegmenter`: speech start/end from a VAD plus packet gaps. Discord sends nothing
  while someone is quiet, so the end of speech is often *no packets*: the owner calls ``tick()``
  on a timer, with an injectable clock.
- :class:`ReceivePipeline`: the :class:`~audio.receive.ReceiveSink` owning one segmenter per speaker
  and one decoder per SSRC (a speaker's new SSRC starts a fresh decoder and retires the old one);
  it delivers PCM and speech events to a :class:`SpeechConsumer`.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import discord.opus

from audio.receive import VoicePacket
from audio.vad import Vad, WebRtcVad

__all__ = [
    "OpusPcmDecoder",
    "decoder_class",
    "SpeakerDecoder",
    "DecoderStats",
    "SpeechSegmenter",
    "SpeechEvent",
    "SpeechConsumer",
    "ReceivePipeline",
    "PipelineStats",
]

log = logging.getLogger(__name__)

_MAX_FRAME_MS = 120  # the longest Opus packet
_SEQ_MOD = 0x10000
_SEQ_HALF = 0x8000


class OpusPcmDecoder(discord.opus.Decoder):
    """discord.py's Opus decoder at a chosen rate/channel count, decoding into a reused buffer.

    discord.py computes SAMPLE_SIZE, SAMPLES_PER_FRAME and FRAME_SIZE once from SAMPLING_RATE and
    CHANNELS (opus.py ``_OpusStruct``), so a subclass must override all of them; use
    :func:`decoder_class`. ``decode`` keeps discord.py's semantics (``None`` = PLC, ``fec=True``
    rebuilds the *previous* frame from this packet) but skips its per-call ctypes allocation, and
    calls libopus through cffi when it can (the same library discord.py loaded; a cffi call costs
    about 0.7 µs less per frame than a ctypes one, 4 % of a decode), else through ctypes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._max_samples = self.SAMPLING_RATE * _MAX_FRAME_MS // 1000
        self._bytes_per_sample = 2 * self.CHANNELS
        self._last_samples = self.SAMPLES_PER_FRAME
        native = _cffi_decode()
        if native is not None:
            ffi, fn = native
            self._fn = fn
            self._st = ffi.cast("void *", ctypes.cast(self._state, ctypes.c_void_p).value)
            self._out = ffi.new("int16_t[]", self._max_samples * self.CHANNELS)
            # Slicing a cffi buffer returns bytes: one copy out of the reused buffer, nothing else.
            self._out_bytes: Any = ffi.buffer(self._out)
            self._null: Any = ffi.NULL
            self._cffi = True
        else:
            buf = (ctypes.c_int16 * (self._max_samples * self.CHANNELS))()
            self._fn = _opus_decode()
            self._st = self._state
            self._out = ctypes.cast(buf, discord.opus.c_int16_ptr)
            self._out_bytes = memoryview(buf).cast("B")  # tobytes() of a slice: a quarter of string_at's cost
            self._keep = buf
            self._null = None
            self._cffi = False

    def decode(self, data: bytes | None, *, fec: bool = False) -> bytes:  # type: ignore[override]
        if data is None:
            if fec:
                raise TypeError("Invalid arguments: FEC cannot be used with null data")
            # PLC must be asked for exactly the lost duration: assume it matched the last frame.
            n = self._fn(self._st, self._null, 0, self._out, self._last_samples, 0)
        elif fec:
            n = self._fn(self._st, data, len(data), self._out, self._last_samples, 1)
        else:
            n = self._fn(self._st, data, len(data), self._out, self._max_samples, 0)
            if n >= 0:
                self._last_samples = n
        if n < 0:
            raise discord.opus.OpusError(n)
        if self._cffi:
            return self._out_bytes[: n * self._bytes_per_sample]  # type: ignore[no-any-return]
        return self._out_bytes[: n * self._bytes_per_sample].tobytes()  # type: ignore[no-any-return]


_decode_fn: Any = None
_cffi_fn: Any = None
_cffi_lib: Any = None


def _opus_decode() -> Any:
    """libopus ``opus_decode`` with discord.py's argument types but without its per-call errcheck
    (a Python function on every frame); :meth:`OpusPcmDecoder.decode` checks the result itself."""
    global _decode_fn
    lib = discord.opus._lib
    if _decode_fn is None or _decode_fn[0] is not lib:
        fn = lib["opus_decode"]  # a new function pointer: discord.py's own keeps its errcheck
        fn.argtypes = lib.opus_decode.argtypes
        fn.restype = ctypes.c_int
        _decode_fn = (lib, fn)
    return _decode_fn[1]


def _cffi_decode() -> tuple[Any, Any] | None:
    """``(ffi, opus_decode)`` through cffi (installed with PyNaCl) on the library discord.py loaded,
    or None when cffi or the library's path is unavailable (the ctypes path is used then)."""
    global _cffi_fn, _cffi_lib
    lib = discord.opus._lib
    if _cffi_fn is not None and _cffi_fn[0] is lib:
        return _cffi_fn[1]
    native: tuple[Any, Any] | None = None
    path = getattr(lib, "_name", None)
    if isinstance(path, str) and path:
        try:
            import cffi

            ffi = cffi.FFI()
            ffi.cdef("int opus_decode(void *st, const unsigned char *data, int32_t len, int16_t *pcm,"
                     " int frame_size, int decode_fec);")
            _cffi_lib = ffi.dlopen(path)  # the library discord.py loaded: dlopen shares it; kept open
            native = (ffi, _cffi_lib.opus_decode)
        except Exception as exc:  # ImportError, OSError, cffi's own errors: ctypes works everywhere
            log.debug("libopus through ctypes (cffi unavailable: %s)", exc)
    _cffi_fn = (lib, native)
    return native


_classes: dict[tuple[int, int], type[OpusPcmDecoder]] = {}


def decoder_class(sample_rate: int = 16000, channels: int = 1) -> type[OpusPcmDecoder]:
    """An :class:`OpusPcmDecoder` subclass for ``sample_rate`` (8/12/16/24/48 kHz) and ``channels``."""
    if sample_rate not in (8000, 12000, 16000, 24000, 48000) or channels not in (1, 2):
        raise ValueError(f"Opus cannot decode to {sample_rate} Hz x {channels}")
    key = (sample_rate, channels)
    cls = _classes.get(key)
    if cls is None:
        sample_size = 2 * channels
        spf = sample_rate * OpusPcmDecoder.FRAME_LENGTH // 1000
        cls = type(
            f"OpusPcmDecoder{sample_rate // 1000}k{channels}ch",
            (OpusPcmDecoder,),
            {
                "SAMPLING_RATE": sample_rate,
                "CHANNELS": channels,
                "SAMPLE_SIZE": sample_size,
                "SAMPLES_PER_FRAME": spf,
                "FRAME_SIZE": spf * sample_size,
            },
        )
        _classes[key] = cls
    return cls


@dataclass(frozen=True, slots=True)
class DecoderStats:
    """Counters of one speaker's decoder."""

    decoded: int = 0  # frames decoded from packets
    concealed: int = 0  # lost frames filled by PLC
    fec_recovered: int = 0  # lost frames rebuilt from the next packet's in-band FEC
    skipped: int = 0  # lost frames beyond the concealment bound (not filled)
    late: int = 0  # packets that arrived after their slot was released
    duplicates: int = 0
    corrupt: int = 0  # packets libopus rejected
    strays: int = 0  # packets far outside the stream's window that did not start a run (never decoded)
    resyncs: int = 0  # times the stream restarted at a new position after a run of packets

    @property
    def lost(self) -> int:
        """Frames missing from the stream after reordering and FEC (concealed or skipped)."""
        return self.concealed + self.skipped


class SpeakerDecoder:
    """One RTP stream's reorder buffer and decoder; synchronous.

    ``push`` returns the PCM frames released in order (decoded, FEC-rebuilt or concealed). A missing
    packet is waited for until ``reorder_depth`` later packets have arrived, then concealed; gaps of
    more than ``max_conceal_frames`` are concealed that far and skipped beyond.

    The window: a packet up to ``resync_window`` ahead of the next expected sequence is buffered;
    one up to ``late_window`` behind is late (dropped). Anything further away is either a stray
    (one forged or misrouted frame: Opus silence passes DAVE for anyone) or the first packet of
    the stream at a new position (an encoder restart). The usual jitter-buffer rule tells them
    apart: ``resync_packets`` packets in sequence with each other outside the window, with no
    in-window packet between them, restart the stream at the first of them (nothing of the run is
    lost). A single stray is counted and forgotten. :attr:`accepted` says whether the last pushed
    packet became part of the stream (the pipeline's idle timer only counts those).
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        channels: int = 1,
        reorder_depth: int = 3,
        max_conceal_frames: int = 5,
        resync_window: int = 50,
        late_window: int = 10,
        resync_packets: int = 3,
    ) -> None:
        self._decoder = decoder_class(sample_rate, channels)()
        self._depth = max(0, reorder_depth)
        self._max_conceal = max(0, max_conceal_frames)
        # The window must hold the reorder buffer, and a run needs at least two packets to be a run.
        self._ahead = max(resync_window, self._depth + 2)
        self._behind = max(0, min(late_window, _SEQ_HALF - 1))
        self._run_needed = max(2, resync_packets)
        self._buffer: dict[int, bytes] = {}
        self._next: int | None = None
        self._run: list[tuple[int, bytes]] = []  # consecutive packets outside the window, oldest first
        self._c = collections.Counter[str]()  # every counter but ``decoded`` (rare events)
        self._decoded = 0  # an int, not a Counter entry: it moves on every packet
        self._decode = self._decoder.decode
        self.accepted = False

    @property
    def stats(self) -> DecoderStats:
        return DecoderStats(**self.counts())

    def counts(self) -> dict[str, int]:
        """Every counter of :class:`DecoderStats` by name (no snapshot object)."""
        out = dict(self._c)
        out["decoded"] = self._decoded
        return out

    @property
    def decoded(self) -> int:
        """Frames decoded from packets so far (cheap: no snapshot)."""
        return self._decoded

    @property
    def buffered(self) -> int:
        """Packets waiting in the reorder buffer (a pending run outside the window not included)."""
        return len(self._buffer)

    def push(self, seq: int, opus: bytes) -> list[bytes]:
        """Add one packet; return the PCM frames now ready, in order."""
        if seq == self._next and not self._buffer:
            # The usual case: the very packet expected, nothing waiting. Exactly what the general
            # path below does for it (buffer it, release it at once), without the buffer.
            if self._run:
                self._run.clear()
            self.accepted = True
            self._next = (seq + 1) % _SEQ_MOD
            try:
                pcm = self._decode(opus)
            except discord.opus.OpusError:
                lost: list[bytes] = []
                self._c["corrupt"] += 1
                self._conceal_into(lost, None)  # as _decode_into does: keep the speaker's timeline going
                return lost
            self._decoded += 1
            return [pcm]
        return self._push(seq, opus)

    def _push(self, seq: int, opus: bytes) -> list[bytes]:
        """:meth:`push` for every case: the reorder window, late packets, strays and runs."""
        out: list[bytes] = []
        nxt = self._next
        if nxt is None:
            self._next = nxt = seq
        ahead = (seq - nxt) % _SEQ_MOD
        if ahead < self._ahead:
            if self._run:  # the stream is still where it was: whatever ran outside was stray
                self._run.clear()
            if seq in self._buffer:
                self._c["duplicates"] += 1
                self.accepted = False
                return out
            self._buffer[seq] = opus
            self.accepted = True
            self._release(out, force=False)
            return out
        if _SEQ_MOD - ahead <= self._behind:
            self._c["late"] += 1
            self.accepted = False
            return out
        self._outside(seq, opus, out)
        return out

    def _outside(self, seq: int, opus: bytes, out: list[bytes]) -> None:
        """A packet far from the stream: a stray, or part of a run that restarts the stream."""
        run = self._run
        if run:
            last = run[-1][0]
            if seq == last:
                self._c["duplicates"] += 1
                self.accepted = False
                return
            if seq != (last + 1) % _SEQ_MOD:
                run.clear()
        run.append((seq, opus))
        self._c["strays"] += 1  # until a run proves otherwise
        if len(run) < self._run_needed:
            self.accepted = False
            return
        # A run: the stream continues from its first packet. Release what the old position still
        # held (its audio is real), then start over there; the decoder keeps its state.
        self._release(out, force=True)
        self._c["resyncs"] += 1
        self._c["strays"] -= len(run)
        self._next = run[0][0]
        for s, o in run:
            self._buffer[s] = o
        run.clear()
        self.accepted = True
        self._release(out, force=False)

    def flush(self) -> list[bytes]:
        """Release everything buffered now (the speaker went quiet): conceal holes, decode the rest."""
        out: list[bytes] = []
        self._release(out, force=True)
        return out

    def reset(self) -> None:
        """Forget sequence state (e.g. after a long pause); the decoder keeps its state."""
        self._buffer.clear()
        self._run.clear()
        self._next = None

    def _release(self, out: list[bytes], *, force: bool) -> None:
        buf = self._buffer
        while buf:
            nxt = self._next
            assert nxt is not None
            opus = buf.pop(nxt, None)
            if opus is not None:
                self._decode_into(out, opus)
                self._next = (nxt + 1) % _SEQ_MOD
                continue
            if not force and len(buf) <= self._depth:
                return  # still waiting for the missing packet
            # The packet at ``nxt`` is lost: conceal up to the bound, skip beyond it.
            gap = min((s - nxt) % _SEQ_MOD for s in buf)
            conceal = min(gap, self._max_conceal)
            for i in range(conceal):
                last = i == gap - 1
                following = buf.get((nxt + i + 1) % _SEQ_MOD) if last else None
                self._conceal_into(out, following)
            if gap > conceal:
                self._c["skipped"] += gap - conceal
            self._next = (nxt + gap) % _SEQ_MOD

    def _decode_into(self, out: list[bytes], opus: bytes) -> None:
        try:
            pcm = self._decoder.decode(opus)
        except discord.opus.OpusError:
            self._c["corrupt"] += 1
            self._conceal_into(out, None)  # keep the speaker's timeline going
            return
        self._decoded += 1
        out.append(pcm)

    def _conceal_into(self, out: list[bytes], following: bytes | None) -> None:
        if following is not None:
            try:
                # In-band FEC: the next packet carries a low-bitrate copy of the lost one.
                out.append(self._decoder.decode(following, fec=True))
                self._c["fec_recovered"] += 1
                return
            except discord.opus.OpusError:
                pass
        try:
            out.append(self._decoder.decode(None))
            self._c["concealed"] += 1
        except discord.opus.OpusError:
            self._c["skipped"] += 1


class SpeechEvent:
    """Speech events a :class:`SpeechSegmenter` reports."""

    START = "start"
    END = "end"


class SpeechSegmenter:
    """Start/end of speech for one speaker from VAD decisions and packet gaps.

    Start: ``start_frames`` voiced frames in a row. End: ``end_silence_ms`` of unvoiced audio, or no
    voiced frame for ``end_silence_ms`` of wall-clock time (Discord stops sending when someone is
    quiet, so no audio arrives to be unvoiced; ``tick`` catches that). ``clock`` is injectable.
    Without a VAD every frame counts as voiced, so only packet gaps end speech.
    """

    def __init__(
        self,
        vad: Vad | None,
        *,
        frame_ms: int = 20,
        start_frames: int = 2,
        end_silence_ms: int = 600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._vad = vad
        self._frame_ms = frame_ms
        self._start_frames = start_frames
        self._end_silence_ms = end_silence_ms
        self._clock = clock
        self.speaking = False
        self._voiced_run = 0
        self._unvoiced_ms = 0
        self._last_voice_at = 0.0

    def feed(self, pcm: bytes, now: float | None = None) -> str | None:
        """Classify one frame; return ``SpeechEvent.START``/``END`` when the state changes.

        ``now`` is the clock's reading for this frame when the caller already has one.
        """
        voiced = True if self._vad is None else self._vad.is_speech(pcm)
        if voiced:
            self._voiced_run += 1
            self._unvoiced_ms = 0
            self._last_voice_at = self._clock() if now is None else now
            if not self.speaking and self._voiced_run >= self._start_frames:
                self.speaking = True
                return SpeechEvent.START
            return None
        self._voiced_run = 0
        if self.speaking:
            self._unvoiced_ms += self._frame_ms
            if self._unvoiced_ms >= self._end_silence_ms:
                return self._end()
        return None

    def tick(self, now: float | None = None) -> str | None:
        """Timer check: end speech if no voiced frame arrived for ``end_silence_ms``.

        ``now`` is the clock's reading when the caller already has one.
        """
        if not self.speaking:
            return None
        if ((self._clock() if now is None else now) - self._last_voice_at) * 1000 >= self._end_silence_ms:
            return self._end()
        return None

    def end(self) -> str:
        """End speech now (the owner saw the packets stop)."""
        return self._end()

    def _end(self) -> str:
        self.speaking = False
        self._voiced_run = 0
        self._unvoiced_ms = 0
        return SpeechEvent.END


class SpeechConsumer(Protocol):
    """What the STT glue implements; called on the event loop."""

    def on_speech_start(self, user_id: int) -> None:
        """The speaker started talking; PCM follows (including a short pre-roll)."""

    def on_audio(self, user_id: int, pcm: bytes) -> None:
        """One frame of s16le PCM at the pipeline's rate, only between start and end."""

    def on_speech_end(self, user_id: int) -> None:
        """The speaker stopped (silence or no packets for the configured time, or they left)."""


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """Totals over every speaker the pipeline has seen (including ones already dropped)."""

    speakers: int
    packets: int
    frames_out: int
    decoded: int
    concealed: int
    fec_recovered: int
    skipped: int
    late: int
    duplicates: int
    corrupt: int
    strays: int = 0
    resyncs: int = 0
    ssrc_changes: int = 0  # a speaker's audio moved to a new SSRC (fresh decoder, old one retired)

    @property
    def lost(self) -> int:
        """Frames missing from real streams after reordering and FEC (concealed or skipped)."""
        return self.concealed + self.skipped


_DECODER_COUNTERS = tuple(f for f in DecoderStats.__slots__)


class _Speaker:
    __slots__ = ("ssrc", "decoder", "segmenter", "pre_roll", "last_packet_at", "heard_before")

    def __init__(self, ssrc: int, decoder: SpeakerDecoder, segmenter: SpeechSegmenter, pre_roll: int,
                 now: float) -> None:
        self.ssrc = ssrc  # the SSRC this decoder follows; another SSRC means another stream
        self.decoder = decoder
        self.segmenter = segmenter
        self.pre_roll: collections.deque[bytes] = collections.deque(maxlen=max(1, pre_roll))
        self.last_packet_at = now
        self.heard_before = 0  # frames decoded by this speaker's retired decoders


class ReceivePipeline:
    """A :class:`~audio.receive.ReceiveSink` that decodes each speaker and segments their speech.

    PCM between speech start and end goes to ``consumer.on_audio``; the last ``pre_roll_ms`` of audio
    before a start is replayed after ``on_speech_start`` so onsets are not clipped. Call
    :meth:`tick` every 20–100 ms (or run :meth:`run`): it releases reorder buffers of speakers who
    went quiet, fires end-of-speech on packet gaps and drops speakers idle for ``idle_drop_s``.
    Memory per speaker is bounded (reorder buffer, pre-roll, VAD state), however long they talk.

    Decoder and reorder state belong to one SSRC: when a speaker's packets arrive on a new SSRC
    (their client restarted its stream), what the old decoder still held is released and a fresh
    decoder follows the new stream. Only packets that join a stream count as activity for the idle
    timer, so strays cannot keep a stuck speaker alive. :meth:`heard` is what the deaf watchdog
    reads: frames decoded from each speaker's packets.
    """

    def __init__(
        self,
        consumer: SpeechConsumer,
        *,
        sample_rate: int = 16000,
        channels: int = 1,
        vad_factory: Callable[[int], Vad | None] | None = WebRtcVad,
        end_silence_ms: int = 600,
        end_gap_ms: int | None = None,
        start_frames: int = 2,
        pre_roll_ms: int = 200,
        reorder_depth: int = 3,
        max_conceal_frames: int = 5,
        resync_packets: int = 3,
        flush_after_ms: int = 100,
        idle_drop_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if vad_factory is not None and channels != 1:
            raise ValueError("the VAD needs mono PCM: use channels=1 or vad_factory=None")
        self._consumer = consumer
        self.sample_rate = sample_rate
        self.channels = channels
        self._vad_factory = vad_factory
        self._end_silence_ms = end_silence_ms
        # No packets at all for this long also ends speech: Discord clients stop sending when the
        # person stops, so a short gap is a surer sign than the same length of quiet audio.
        self._end_gap = (end_silence_ms if end_gap_ms is None else end_gap_ms) / 1000
        self._start_frames = start_frames
        self._pre_roll = pre_roll_ms // 20
        self._reorder_depth = reorder_depth
        self._max_conceal = max_conceal_frames
        self._resync_packets = resync_packets
        self._flush_after = flush_after_ms / 1000
        self._idle_drop = idle_drop_s
        self._clock = clock
        self._speakers: dict[int, _Speaker] = {}
        self._heard: dict[int, int] = {}  # frames decoded for speakers dropped while idle (they may return)
        self._packets = 0
        self._frames_out = 0
        self._seen = 0
        self._ssrc_changes = 0
        self._retired = collections.Counter[str]()

    @property
    def speakers(self) -> frozenset[int]:
        """User ids with decoder state."""
        return frozenset(self._speakers)

    def stats(self) -> PipelineStats:
        total = collections.Counter(self._retired)
        for sp in self._speakers.values():
            total.update(sp.decoder.counts())
        return PipelineStats(speakers=self._seen, packets=self._packets, frames_out=self._frames_out,
                             ssrc_changes=self._ssrc_changes,
                             **{name: total[name] for name in _DECODER_COUNTERS})

    def loss(self) -> tuple[int, int]:
        """``(lost, strays)``: frames missing from real streams, and packets no stream accepted."""
        s = self.stats()
        return s.lost, s.strays

    def heard(self) -> dict[int, int]:
        """Per speaker: frames decoded from their packets so far (what the deaf watchdog measures)."""
        out = dict(self._heard)
        for user_id, sp in self._speakers.items():
            out[user_id] = out.get(user_id, 0) + sp.heard_before + sp.decoder.decoded
        return out

    # --- ReceiveSink -------------------------------------------------------------------------------

    def on_packet(self, packet: VoicePacket) -> None:
        self._packets += 1
        user_id, ssrc, sequence, _, opus = packet
        sp = self._speakers.get(user_id)
        if sp is None:
            sp = self._speakers[user_id] = self._new_speaker(ssrc, self._clock())
        elif sp.ssrc != ssrc:
            self._new_stream(user_id, sp, ssrc)
        decoder = sp.decoder
        frames = decoder.push(sequence, opus)
        if decoder.accepted:
            # One clock reading per packet serves the idle timer and the segmenter's voice clock.
            now: float | None = self._clock()
            sp.last_packet_at = now  # type: ignore[assignment]
        else:
            now = None
        for pcm in frames:
            self._frame(user_id, sp, pcm, now)

    def on_speaker_left(self, user_id: int) -> None:
        self._drop(user_id)
        self._heard.pop(user_id, None)

    # --- timer -------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Release quiet speakers' buffers, end speech on packet gaps, drop long-idle speakers."""
        now = self._clock()
        # Runs 20 times a second over every speaker (500 in a large call): a speaker who is neither
        # speaking nor quiet long enough for a flush or a drop has nothing to do here.
        nothing_before = min(self._flush_after, self._idle_drop)
        for user_id, sp in list(self._speakers.items()):
            idle = now - sp.last_packet_at
            segmenter = sp.segmenter
            if idle < nothing_before and not segmenter.speaking:
                continue
            if idle >= self._flush_after and sp.decoder._buffer:
                for pcm in sp.decoder.flush():
                    self._frame(user_id, sp, pcm)
            if segmenter.tick(now) == SpeechEvent.END or (segmenter.speaking and idle >= self._end_gap
                                                          and segmenter.end() == SpeechEvent.END):
                self._consumer.on_speech_end(user_id)
            if idle >= self._idle_drop:
                self._drop(user_id)

    async def run(self, interval: float = 0.05) -> None:
        """Call :meth:`tick` every ``interval`` seconds until cancelled (the owner names and awaits the task)."""
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("receive pipeline tick failed")
            await asyncio.sleep(interval)

    def close(self) -> None:
        """End every open speech segment and drop all state."""
        for user_id in list(self._speakers):
            self._drop(user_id)

    # --- internals ---------------------------------------------------------------------------------

    def _new_decoder(self) -> SpeakerDecoder:
        return SpeakerDecoder(sample_rate=self.sample_rate, channels=self.channels,
                              reorder_depth=self._reorder_depth, max_conceal_frames=self._max_conceal,
                              resync_packets=self._resync_packets)

    def _new_speaker(self, ssrc: int, now: float) -> _Speaker:
        self._seen += 1
        vad = self._vad_factory(self.sample_rate) if self._vad_factory is not None else None
        segmenter = SpeechSegmenter(vad, start_frames=self._start_frames, end_silence_ms=self._end_silence_ms,
                                    clock=self._clock)
        return _Speaker(ssrc, self._new_decoder(), segmenter, self._pre_roll, now)

    def _new_stream(self, user_id: int, sp: _Speaker, ssrc: int) -> None:
        """The speaker's audio moved to ``ssrc``: finish the old stream, follow the new one afresh."""
        old = sp.decoder
        for pcm in old.flush():
            self._frame(user_id, sp, pcm)
        self._retire(old)
        sp.heard_before += old.decoded
        sp.decoder = self._new_decoder()
        log.debug("voice receive: user %s moved from SSRC %s to %s", user_id, sp.ssrc, ssrc)
        sp.ssrc = ssrc
        self._ssrc_changes += 1

    def _retire(self, decoder: SpeakerDecoder) -> None:
        self._retired.update(decoder.counts())

    def _frame(self, user_id: int, sp: _Speaker, pcm: bytes, now: float | None = None) -> None:
        segmenter = sp.segmenter
        event = segmenter.feed(pcm, now)
        consumer = self._consumer
        if event is None and segmenter.speaking:  # most frames of someone talking
            consumer.on_audio(user_id, pcm)
            self._frames_out += 1
            return
        if event == SpeechEvent.START:
            consumer.on_speech_start(user_id)
            for earlier in sp.pre_roll:
                consumer.on_audio(user_id, earlier)
                self._frames_out += 1
            sp.pre_roll.clear()
            consumer.on_audio(user_id, pcm)
            self._frames_out += 1
        elif sp.segmenter.speaking:
            consumer.on_audio(user_id, pcm)
            self._frames_out += 1
        else:
            if event == SpeechEvent.END:
                consumer.on_speech_end(user_id)
            sp.pre_roll.append(pcm)

    def _drop(self, user_id: int) -> None:
        sp = self._speakers.pop(user_id, None)
        if sp is None:
            return
        self._retire(sp.decoder)
        self._heard[user_id] = self._heard.get(user_id, 0) + sp.heard_before + sp.decoder.decoded
        if sp.segmenter.speaking:
            self._consumer.on_speech_end(user_id)
