from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from audio.tts.base import AudioFormat, TTSError, VoiceSpec
from audio.tts.espeak import EspeakEngine, list_espeak_voices, synthesize_pcm


def test_synthesize_pcm_returns_mono_s16le_at_22050() -> None:
    pcm, rate = synthesize_pcm("Hello there, how are you today?")
    assert rate == 22050
    assert len(pcm) % 2 == 0
    seconds = len(pcm) / 2 / rate
    assert 0.5 < seconds < 5.0
    assert any(pcm)  # not silence


def test_synthesize_pcm_empty_text_is_empty() -> None:
    assert synthesize_pcm("   \n ")[0] == b""


def test_unknown_voice_is_a_tts_error() -> None:
    with pytest.raises(TTSError) as info:
        synthesize_pcm("hello", voice="no-such-voice-xx")
    assert info.value.kind == "voice_not_found"
    assert not info.value.retryable
    # The engine still works afterwards with a real voice.
    assert synthesize_pcm("hello", voice="en-us")[0]


def test_list_voices_includes_english() -> None:
    ids = {v.id for v in list_espeak_voices()}
    assert "en-us" in ids


async def test_engine_streams_the_same_audio_as_the_sync_call() -> None:
    engine = EspeakEngine()
    assert engine.format == AudioFormat("s16le", 48000, 1)  # resampled in-process: no FFmpeg to play it
    text = "The quick brown fox jumps over the lazy dog."
    chunks = [c async for c in engine.synthesize(text)]
    assert len(chunks) > 1  # streamed, not one blob
    # espeak-ng varies a few samples between runs, so compare durations.
    # The engine streams 48 kHz, synthesize_pcm gives espeak's 22.05 kHz: compare seconds.
    streamed = len(b"".join(chunks)) / 2 / 48000
    assert abs(streamed - len(synthesize_pcm(text)[0]) / 2 / 22050) < 0.1


async def test_engine_voice_spec_and_errors() -> None:
    engine = EspeakEngine()
    assert [c async for c in engine.synthesize("   ")] == []
    gb = b"".join([c async for c in engine.synthesize("hello", VoiceSpec(voice_id="en-gb"))])
    assert gb
    # Language codes, voice names and file names all resolve.
    assert synthesize_pcm("hello", "English (Great Britain)")[0]
    assert synthesize_pcm("hello", "EN-US")[0]
    with pytest.raises(TTSError):
        async for _ in engine.synthesize("hello", VoiceSpec(voice_id="no-such-voice-xx")):
            pass


async def test_closing_early_stops_synthesis_and_releases_the_engine() -> None:
    engine = EspeakEngine()
    long_text = "This is a long sentence that keeps going. " * 40
    async with aclosing(engine.synthesize(long_text)) as stream:
        async for _chunk in stream:
            break
    # The lock was released: another synthesis completes.
    assert await asyncio.wait_for(engine.check(), timeout=30)


async def test_5000_character_text() -> None:
    engine = EspeakEngine()
    text = ("Sentence number one is here. " * 200)[:5000]
    total = 0
    async for chunk in engine.synthesize(text):
        total += len(chunk)
    assert total / 2 / 48000 > 60  # minutes of speech, streamed in chunks


async def test_list_voices_and_check() -> None:
    engine = EspeakEngine()
    voices = await engine.list_voices()
    assert any(v.id == "en-us" for v in voices)
    assert "22050" in await engine.check()
    await engine.aclose()
