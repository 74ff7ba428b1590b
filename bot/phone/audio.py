"""μ-law (G.711 PCMU) 8 kHz, the phone network's audio, to and from our s16le PCM — in process.

Twilio Media Streams carry μ-law at 8000 Hz mono both ways. Decoding is a 256-entry table; encoding
is a 65,536-entry table indexed by the 16-bit sample, both built once with numpy (the standard
library's ``audioop`` is deprecated and gone in Python 3.13). Resampling uses soxr's streaming
resampler so a sentence synthesized in pieces resamples without clicks at the piece boundaries.
No FFmpeg anywhere on this path.
"""

from __future__ import annotations

import numpy as np
import soxr

from audio.tts.base import AudioFormat

__all__ = [
    "MULAW_RATE",
    "MULAW_SILENCE",
    "FRAME_BYTES",
    "MulawEncoder",
    "UnsupportedFormat",
    "mulaw_decode",
    "mulaw_encode",
]

MULAW_RATE = 8000
FRAME_BYTES = 160  # 20 ms of μ-law at 8 kHz: the size of every frame Twilio sends
MULAW_SILENCE = 0xFF  # the code for 0 (positive zero)

_BIAS = 0x84
_CLIP = 32635


def _decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype("<i2")


def _encode_table() -> np.ndarray:
    samples = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(samples < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(samples), _CLIP) + _BIAS
    # The segment is the position of the highest set bit above bit 7 (magnitude is 132..32767).
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


_DECODE = _decode_table()
_ENCODE = _encode_table()  # indexed by sample + 32768


def mulaw_decode(data: bytes) -> bytes:
    """μ-law bytes → s16le PCM (same sample rate, twice the bytes)."""
    return _DECODE[np.frombuffer(data, dtype=np.uint8)].tobytes()


def mulaw_encode(pcm: bytes) -> bytes:
    """s16le PCM (an even number of bytes) → μ-law bytes."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    return _ENCODE[samples + 32768].tobytes()


class UnsupportedFormat(ValueError):
    """Audio the phone path cannot convert without a decoder (e.g. MP3)."""


class MulawEncoder:
    """Turns one utterance's TTS chunks (any :class:`AudioFormat` but MP3) into μ-law 8 kHz, streaming.

    ``feed`` returns what is ready now; ``flush`` the resampler's tail at the end of the utterance.
    Odd trailing bytes of s16le are carried over to the next chunk.
    """

    def __init__(self, fmt: AudioFormat) -> None:
        if fmt.encoding not in ("s16le", "ulaw"):
            raise UnsupportedFormat(f"cannot send {fmt.encoding} audio to a phone without a decoder")
        if fmt.encoding == "ulaw" and (fmt.sample_rate != MULAW_RATE or fmt.channels != 1):
            raise UnsupportedFormat(f"μ-law at {fmt.sample_rate} Hz x{fmt.channels}: the phone takes 8000 Hz mono")
        self.fmt = fmt
        self._carry = b""
        self._resampler: soxr.ResampleStream | None = None
        if fmt.encoding == "s16le" and (fmt.sample_rate != MULAW_RATE or fmt.channels != 1):
            self._resampler = soxr.ResampleStream(fmt.sample_rate, MULAW_RATE, 1, dtype="int16")

    def feed(self, chunk: bytes) -> bytes:
        if self.fmt.encoding == "ulaw":
            return chunk
        data = self._carry + chunk
        frame = 2 * self.fmt.channels
        usable = len(data) - len(data) % frame
        self._carry = data[usable:]
        if not usable:
            return b""
        return self._encode(data[:usable], last=False)

    def flush(self) -> bytes:
        if self.fmt.encoding == "ulaw" or self._resampler is None:
            self._carry = b""
            return b""
        return self._encode(b"", last=True)

    def _encode(self, pcm: bytes, *, last: bool) -> bytes:
        samples = np.frombuffer(pcm, dtype="<i2")
        if self.fmt.channels > 1 and samples.size:
            samples = samples.reshape(-1, self.fmt.channels).mean(axis=1).astype("<i2")
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
        if not samples.size:
            return b""
        return _ENCODE[samples.astype(np.int32) + 32768].tobytes()
