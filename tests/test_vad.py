"""VAD wrappers on real PCM: silence is not speech; a voiced-like tone is."""

from __future__ import annotations

import math
import struct

import pytest

from audio.vad import SileroVad, WebRtcVad, create_vad


def _tone(n_samples: int, rate: int = 16000) -> bytes:
    # a harmonic-rich 150 Hz buzz: voice-like enough for both detectors
    vals = []
    for n in range(n_samples):
        t = n / rate
        v = sum(math.sin(2 * math.pi * 150 * k * t) / k for k in range(1, 20))
        vals.append(int(8000 * v))
    return struct.pack(f"<{n_samples}h", *(max(-32768, min(32767, v)) for v in vals))


def test_webrtc_silence_and_tone() -> None:
    vad = WebRtcVad(16000)
    assert not vad.is_speech(bytes(640))
    tone = _tone(320 * 10)
    decisions = [vad.is_speech(tone[i : i + 640]) for i in range(0, len(tone), 640)]
    assert any(decisions)
    assert not vad.is_speech(b"\x00" * 7)  # odd-sized frames are not speech, not an error
    vad.reset()


def test_silero_windows_and_silence() -> None:
    vad = SileroVad(16000)
    assert not any(vad.is_speech(bytes(640)) for _ in range(10))
    vad.reset()
    assert not vad.is_speech(b"\x01")


def test_factory_and_bad_rates() -> None:
    assert isinstance(create_vad("webrtc"), WebRtcVad)
    assert isinstance(create_vad("silero"), SileroVad)
    with pytest.raises(ValueError):
        create_vad("nope")
    with pytest.raises(ValueError):
        WebRtcVad(44100)
    with pytest.raises(ValueError):
        SileroVad(48000)
