"""Scripted human participants in a loopback voice call.

Each participant is a real ``davey.DaveSession`` member of the call's MLS group (key package →
proposals → commit → welcome, through the voice server's coordinator), speaks WAV files as Opus
in 20 ms frames at real-time pacing (DAVE-encrypted, then transport-encrypted with the bot's
key), and decrypts and decodes everything the bot sends, one :class:`HeardUtterance` per
stretch of speech.

Like real clients, a participant switches to a new epoch's keys only when the voice gateway
executes the transition (op 22): davey applies a commit the moment it is processed, so staged
commits/welcomes are applied in :meth:`Participant.dave_execute`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import davey
import discord.opus
import numpy as np

from audio.native import load_libopus

if TYPE_CHECKING:
    from bot.loopback.voice import VoiceCall

__all__ = ["ParticipantOptions", "Participant", "HeardUtterance", "SpeakResult", "load_wav_48k_stereo",
           "encode_opus_frames"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
CHANNELS = 2
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
FRAME_BYTES = FRAME_SAMPLES * CHANNELS * 2
FRAME_SECONDS = 0.02
OPUS_SILENCE = b"\xf8\xff\xfe"
UTTERANCE_GAP = 0.3  # seconds without packets that end a heard utterance


@dataclass(frozen=True)
class ParticipantOptions:
    """How a participant's packets misbehave on the way to the bot (all off by default).

    ``padding``: fraction of packets carrying RTP padding (1..``max_padding`` bytes, inside the
    encryption); ``extension_words``: 0, 1 or 2 words of RTP header extension on every packet;
    ``loss``: fraction of packets never sent; ``reorder``: fraction of packets swapped with the
    next one; ``jitter``: maximum extra delay per packet in seconds; ``garbage_every``: send a
    packet of random bytes after every N real ones (0 = never); ``seed``: for reproducibility.
    """

    padding: float = 0.0
    max_padding: int = 8
    extension_words: int = 0
    loss: float = 0.0
    reorder: float = 0.0
    jitter: float = 0.0
    garbage_every: int = 0
    seed: int = 0


@dataclass
class HeardUtterance:
    """One stretch of the bot's speech as this participant received it."""

    user_id: int
    ssrc: int
    first_packet_at: float  # loop time of the first packet
    first_timestamp: int  # RTP timestamp of the first packet
    frames: list[tuple[int, bytes]] = field(default_factory=list)  # (extended seq, opus)
    last_packet_at: float = 0.0
    complete: bool = False
    _pcm: bytes | None = None

    @property
    def duration(self) -> float:
        """Seconds of audio received (20 ms per frame)."""
        return len(self.frames) * FRAME_SECONDS

    def decode(self) -> bytes:
        """48 kHz stereo s16le PCM, frames in sequence order (blocking: call in an executor)."""
        if self._pcm is None:
            load_libopus()
            decoder = discord.opus.Decoder()
            out = bytearray()
            for _, opus in sorted(self.frames, key=lambda f: f[0]):
                out += decoder.decode(opus)
            self._pcm = bytes(out)
        return self._pcm

    async def pcm(self) -> bytes:
        """Decoded PCM (48 kHz stereo s16le), decoding off the event loop."""
        if self._pcm is not None:
            return self._pcm
        return await asyncio.get_running_loop().run_in_executor(None, self.decode)


@dataclass(frozen=True)
class SpeakResult:
    frames: int  # 20 ms frames produced from the file
    sent: int  # packets that left for at least one receiver
    dropped: int  # lost on purpose (options.loss) or with nobody to receive them
    started_at: float  # loop time of the first packet
    ended_at: float  # loop time of the last packet


def load_wav_48k_stereo(path: Path) -> bytes:
    """Read a 16-bit PCM WAV of any rate/channel count and return 48 kHz stereo s16le (blocking)."""
    import soxr

    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported (got {8 * wav.getsampwidth()}-bit)")
        rate, channels = wav.getframerate(), wav.getnchannels()
        raw = wav.readframes(wav.getnframes())
    samples = np.frombuffer(raw, dtype="<i2").reshape(-1, channels).astype(np.float32) / 32768.0
    if channels == 1:
        samples = np.repeat(samples, 2, axis=1)
    elif channels > 2:
        samples = samples[:, :2]
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, rate, SAMPLE_RATE)
    pcm = np.clip(samples * 32768.0, -32768, 32767).astype("<i2")
    return pcm.tobytes()


def encode_opus_frames(pcm: bytes) -> list[bytes]:
    """Opus-encode 48 kHz stereo s16le in 20 ms frames, zero-padding the last one (blocking)."""
    load_libopus()
    encoder = discord.opus.Encoder()
    frames: list[bytes] = []
    for offset in range(0, len(pcm), FRAME_BYTES):
        chunk = pcm[offset:offset + FRAME_BYTES]
        if len(chunk) < FRAME_BYTES:
            chunk = chunk + bytes(FRAME_BYTES - len(chunk))
        frames.append(encoder.encode(chunk, FRAME_SAMPLES))
    return frames


class Participant:
    """A scripted human in a voice channel. Created by ``MemberHandle.join_voice``."""

    def __init__(self, *, user_id: int, name: str, ssrc: int, channel_id: int,
                 options: ParticipantOptions | None = None, dave_version: int = 1) -> None:
        self.user_id = user_id
        self.name = name
        self.ssrc = ssrc
        self.channel_id = channel_id
        self.options = options or ParticipantOptions()
        self.dave_version = dave_version
        self.dave: davey.DaveSession | None = None
        self.call: VoiceCall | None = None
        self.speaking_state = 0
        self.heard: list[HeardUtterance] = []  # completed utterances, oldest first
        self.frames_received = 0
        self.decrypt_failures = 0
        self.epochs_applied = 0
        self._current: dict[int, HeardUtterance] = {}
        self._gap_timers: dict[int, asyncio.TimerHandle] = {}
        self._seq_ext: dict[int, tuple[int, int]] = {}  # ssrc → (last raw seq, rollover count)
        self._staged: dict[int, tuple[bytes | None, bytes | None]] = {}
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._rng = random.Random(self.options.seed or user_id)
        self._seq = self._rng.randrange(0, 65536)
        self._timestamp = self._rng.randrange(0, 1 << 32)
        self._speak_lock = asyncio.Lock()
        self._pending_sends: set[asyncio.TimerHandle] = set()
        self._echo: _Echo | None = None

    def __repr__(self) -> str:
        return f"<Participant {self.name!r} user_id={self.user_id} ssrc={self.ssrc}>"

    # --- DAVE membership (called by the voice server's coordinator) -------------------------------

    def dave_key_package(self, external_sender: bytes) -> bytes:
        self.dave = davey.DaveSession(self.dave_version, self.user_id, self.channel_id)
        self.dave.set_external_sender(external_sender)
        return self.dave.get_serialized_key_package()

    def dave_proposals(self, payload: bytes) -> bytes | None:
        """op 27 → op 28: store the proposals and produce this member's commit (and welcome)."""
        if self.dave is None:
            return None
        operation = davey.ProposalsOperationType.append if payload[0] == 0 else davey.ProposalsOperationType.revoke
        result = self.dave.process_proposals(operation, payload[1:])
        if result is None:
            return None
        return result.commit + (result.welcome or b"")

    def dave_stage(self, transition_id: int, commit: bytes | None, welcome: bytes | None) -> None:
        """op 29/30: keep the commit/welcome until the transition executes (op 22)."""
        self._staged[transition_id] = (commit, welcome)

    def dave_execute(self, transition_id: int) -> None:
        """op 22: apply the staged commit/welcome; new-epoch keys are used from now on."""
        commit, welcome = self._staged.pop(transition_id, (None, None))
        if self.dave is None:
            return
        try:
            if commit is not None:
                self.dave.process_commit(commit)
            if welcome is not None:
                self.dave.process_welcome(welcome)
        except ValueError:
            log.exception("participant %s could not apply DAVE transition %s", self.name, transition_id)
            return
        self.epochs_applied += 1
        self._notify()

    def dave_reset(self) -> None:
        self.dave = None
        self._staged.clear()

    @property
    def dave_ready(self) -> bool:
        return self.dave is not None and self.dave.ready

    async def wait_dave_ready(self, timeout: float = 15.0) -> None:
        """Wait until this participant's DAVE session can encrypt and decrypt."""
        await self._wait(lambda: self.dave_ready or not self.dave_version, timeout)

    async def wait_epochs(self, count: int, timeout: float = 15.0) -> None:
        """Wait until ``count`` DAVE transitions have been applied by this participant."""
        await self._wait(lambda: self.epochs_applied >= count, timeout)

    # --- receiving the bot ------------------------------------------------------------------------

    def _notify(self) -> None:
        """Wake waiters whose condition now holds (called synchronously on every state change)."""
        still: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        for predicate, future in self._waiters:
            if future.done():
                continue
            if predicate():
                future.set_result(None)
            else:
                still.append((predicate, future))
        self._waiters = still

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        try:
            async with asyncio.timeout(timeout):
                await future
        finally:
            if not future.done():
                future.cancel()

    def _extend_seq(self, ssrc: int, seq: int) -> int:
        last, rollovers = self._seq_ext.get(ssrc, (seq, 0))
        if seq < last and last - seq > 0x8000:
            rollovers += 1
        self._seq_ext[ssrc] = (seq, rollovers)
        return rollovers * 0x10000 + seq

    def on_media(self, user_id: int, ssrc: int, seq: int, timestamp: int, frame: bytes, at: float) -> None:
        if frame == OPUS_SILENCE:
            opus = frame
        elif self.dave_version and self.dave is not None and self.dave.ready:
            try:
                opus = self.dave.decrypt(user_id, davey.MediaType.audio, frame)
            except ValueError:
                self.decrypt_failures += 1
                return
        elif self.dave_version and self.dave is not None and frame[-2:] == b"\xfa\xfa":
            self.decrypt_failures += 1  # DAVE frame before this participant has the group's keys
            return
        else:
            opus = frame
        self.frames_received += 1
        utterance = self._current.get(user_id)
        if utterance is None:
            utterance = self._current[user_id] = HeardUtterance(user_id, ssrc, at, timestamp)
        utterance.frames.append((self._extend_seq(ssrc, seq), opus))
        utterance.last_packet_at = at
        if self._echo is not None and self._echo.source == user_id and opus != OPUS_SILENCE:
            self._echo.heard(opus)
        old = self._gap_timers.pop(user_id, None)
        if old is not None:
            old.cancel()
        self._gap_timers[user_id] = asyncio.get_running_loop().call_later(UTTERANCE_GAP, self._finish, user_id)

    def on_speaking(self, user_id: int, ssrc: int, speaking: int) -> None:
        if not speaking:
            self._finish(user_id)

    def _finish(self, user_id: int) -> None:
        timer = self._gap_timers.pop(user_id, None)
        if timer is not None:
            timer.cancel()
        utterance = self._current.pop(user_id, None)
        if utterance is None:
            return
        # discord.py ends each playback with five silence frames; they are not speech.
        while utterance.frames and utterance.frames[-1][1] == OPUS_SILENCE:
            utterance.frames.pop()
        if utterance.frames:
            utterance.complete = True
            self.heard.append(utterance)
        self._notify()  # also when nothing was kept: waiters on "nothing arriving" need to know

    @property
    def hearing(self) -> bool:
        """Someone's utterance is still arriving (not yet ended by a packet gap or op 5 off)."""
        return bool(self._current)

    async def wait_quiet(self, timeout: float = 20.0) -> None:
        """Wait until every utterance heard so far is complete (nothing is arriving)."""
        await self._wait(lambda: not self._current, timeout)

    async def wait_heard(self, count: int = 1, timeout: float = 20.0) -> HeardUtterance:
        """Wait until ``count`` complete utterances have been heard; return the ``count``-th."""
        await self._wait(lambda: len(self.heard) >= count, timeout)
        return self.heard[count - 1]

    # --- echo: a listener whose microphone hears their speakers -----------------------------------

    def echo(self, source_user_id: int, *, delay: float = 0.4, gain: float = 0.5) -> None:
        """Play what ``source_user_id`` says back into the call, ``delay`` seconds late and scaled by
        ``gain``, as a person listening on speakers does; :meth:`stop_echo` ends it."""
        self._echo = _Echo(self, source_user_id, delay, gain)

    def stop_echo(self) -> None:
        if self._echo is not None:
            self._echo.close()
        self._echo = None

    @property
    def echoed_frames(self) -> int:
        return self._echo.sent if self._echo is not None else 0

    def _send_now(self, opus: bytes) -> bool:
        """Send one frame with the next sequence number and timestamp (echo path)."""
        call = self.call
        if call is None:
            return False
        seq, ts = self._seq, self._timestamp
        self._seq = (self._seq + 1) & 0xFFFF
        self._timestamp = (self._timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        frame = self._protect(opus)
        if frame is None:
            return False
        return self._send(call, seq, ts, frame) > 0

    # --- speaking ---------------------------------------------------------------------------------

    async def speak_wav(self, path: Path | str) -> SpeakResult:
        """Speak a WAV file (any rate/channels, 16-bit) in real time."""
        loop = asyncio.get_running_loop()
        pcm = await loop.run_in_executor(None, load_wav_48k_stereo, Path(path))
        return await self.speak_pcm(pcm)

    async def speak_pcm(self, pcm: bytes) -> SpeakResult:
        """Speak 48 kHz stereo s16le PCM in real time (20 ms Opus frames, paced, drift-corrected)."""
        loop = asyncio.get_running_loop()
        frames = await loop.run_in_executor(None, encode_opus_frames, pcm)
        return await self.speak_opus(frames)

    async def speak_opus(self, frames: list[bytes], *, announce: bool = True) -> SpeakResult:
        """Send prepared Opus frames at 20 ms pacing; SPEAKING (op 5) goes out first unless not ``announce``."""
        call = self.call
        if call is None:
            raise RuntimeError(f"{self.name} is not in a voice channel")
        async with self._speak_lock:
            if self.dave_version:
                await self.wait_dave_ready()
            loop = asyncio.get_running_loop()
            self.speaking_state = 1
            if announce:
                await call.speaking(self, 1)
            opts = self.options
            sent = dropped = 0
            held: tuple[int, int, bytes] | None = None
            start = loop.time()
            first = last = start
            try:
                for index, opus in enumerate(frames):
                    target = start + index * FRAME_SECONDS
                    delay = target - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)  # pacing to real time, not synchronisation
                    if self.call is not call:
                        break  # left the channel mid-sentence
                    seq, ts = self._seq, self._timestamp
                    self._seq = (self._seq + 1) & 0xFFFF
                    self._timestamp = (self._timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
                    frame = self._protect(opus)
                    if frame is None:
                        dropped += 1
                        continue
                    if index == 0:
                        first = loop.time()
                    last = loop.time()
                    if self._rng.random() < opts.loss:
                        dropped += 1
                        continue
                    if held is None and self._rng.random() < opts.reorder:
                        held = (seq, ts, frame)
                        continue
                    sent += self._send(call, seq, ts, frame)
                    if held is not None:
                        sent += self._send(call, *held)
                        held = None
                    if opts.garbage_every and (index + 1) % opts.garbage_every == 0:
                        self._send_garbage(call)
                if held is not None:
                    sent += self._send(call, *held)
            finally:
                self.speaking_state = 0
                if self.call is call and announce:
                    await call.speaking(self, 0)
            return SpeakResult(frames=len(frames), sent=sent, dropped=dropped, started_at=first, ended_at=last)

    def restart_stream(self, *, ssrc: int | None = None, seq_step: int = 0) -> None:
        """Restart the outgoing stream as a client restarting its encoder might: a new SSRC (when
        given) and sequence numbers moved by ``seq_step``. No op 13 is sent."""
        if ssrc is not None:
            self.ssrc = ssrc
        self._seq = (self._seq + seq_step) & 0xFFFF

    def send_stray(self, seq_step: int, opus: bytes = OPUS_SILENCE) -> int:
        """One frame ``seq_step`` away from the stream's next sequence number, authenticated like any
        other (Opus silence passes DAVE for anyone); returns how many receivers it was sent to."""
        call = self.call
        frame = self._protect(opus)
        if call is None or frame is None:
            return 0
        return call.send_media(self, seq=(self._seq + seq_step) & 0xFFFF, timestamp=self._timestamp, payload=frame)

    def _protect(self, opus: bytes) -> bytes | None:
        if not self.dave_version or opus == OPUS_SILENCE:
            return opus
        if self.dave is None or not self.dave.ready:
            return None
        return self.dave.encrypt_opus(opus)

    def _send(self, call: VoiceCall, seq: int, ts: int, frame: bytes) -> int:
        opts = self.options
        padding = self._rng.randint(1, opts.max_padding) if self._rng.random() < opts.padding else 0
        if opts.jitter > 0:
            delay = self._rng.uniform(0, opts.jitter)
            loop = asyncio.get_running_loop()

            def later() -> None:
                self._pending_sends.discard(handle)
                call.send_media(self, seq=seq, timestamp=ts, payload=frame,
                                extension_words=opts.extension_words, padding=padding)

            handle = loop.call_later(delay, later)
            self._pending_sends.add(handle)
            return 1 if call.remotes else 0
        return 1 if call.send_media(self, seq=seq, timestamp=ts, payload=frame,
                                    extension_words=opts.extension_words, padding=padding) else 0

    def _send_garbage(self, call: VoiceCall) -> None:
        size = self._rng.randint(1, 200)
        body = bytes(self._rng.getrandbits(8) for _ in range(size))
        if self._rng.random() < 0.5 and size >= 12:
            # RTP-shaped garbage: a plausible header with our SSRC and a random "ciphertext".
            body = struct.pack(">BBHII", 0x80, 0x78, self._rng.randrange(65536), 0, self.ssrc) + body[12:]
        call.send_media(self, seq=0, timestamp=0, payload=b"", raw=body)

    def detach(self) -> None:
        """Stop everything tied to the current call (leaving the channel)."""
        self.stop_echo()
        self.call = None
        for handle in self._pending_sends:
            handle.cancel()
        self._pending_sends.clear()
        for user_id in list(self._current):
            self._finish(user_id)
        self.dave_reset()


class _Echo:
    """Decodes what one member says, scales it, and sends it back on a delay from ``owner``.

    Frames are re-encoded one by one on the event loop (about half a millisecond each) and sent
    by timers, so the echo keeps the source's 20 ms pacing; SPEAKING goes on with the first echoed
    frame and off once the echo has been quiet for :data:`UTTERANCE_GAP`.
    """

    def __init__(self, owner: Participant, source: int, delay: float, gain: float) -> None:
        load_libopus()
        self.owner = owner
        self.source = source
        self.delay = delay
        self.gain = gain
        self.sent = 0
        self._decoder = discord.opus.Decoder()
        self._encoder = discord.opus.Encoder()
        self._timers: set[asyncio.TimerHandle] = set()
        self._quiet: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._speaking = False

    def heard(self, opus: bytes) -> None:
        pcm = np.frombuffer(self._decoder.decode(opus), dtype="<i2").astype(np.float32) * self.gain
        frame = self._encoder.encode(np.clip(pcm, -32768, 32767).astype("<i2").tobytes(), FRAME_SAMPLES)
        loop = asyncio.get_running_loop()

        def send() -> None:
            self._timers.discard(handle)
            self._send(frame)

        handle = loop.call_later(self.delay, send)
        self._timers.add(handle)

    def _send(self, frame: bytes) -> None:
        call = self.owner.call
        if call is None:
            return
        loop = asyncio.get_running_loop()
        if not self._speaking:
            self._speaking = True
            self._spawn(call.speaking(self.owner, 1))
        if self.owner._send_now(frame):
            self.sent += 1
        if self._quiet is not None:
            self._quiet.cancel()
        self._quiet = loop.call_later(UTTERANCE_GAP, self._silent)

    def _silent(self) -> None:
        self._quiet = None
        call = self.owner.call
        if self._speaking and call is not None:
            self._spawn(call.speaking(self.owner, 0))
        self._speaking = False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="loopback-echo-speaking")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        if self._quiet is not None:
            self._quiet.cancel()
            self._quiet = None
