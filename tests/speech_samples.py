"""Test speech that is the same on every run.

espeak-ng's output for a phrase differs by a few samples from one call to the next within a process
(state carries over between syntheses), and a small recognizer can hear a word differently because
of it. The first synthesis in a fresh process is always the same, so test phrases are made in a
child process.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import wave
from pathlib import Path

_CHILD = (
    "import sys; from audio.tts.espeak import synthesize_pcm; "
    "pcm, rate = synthesize_pcm(sys.argv[1]); sys.stdout.buffer.write(rate.to_bytes(4, 'little') + pcm)"
)


@functools.lru_cache(maxsize=32)
def espeak_pcm(text: str) -> tuple[bytes, int]:
    """``text`` spoken by espeak-ng in a fresh process: (s16le mono PCM, sample rate)."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", _CHILD, text], capture_output=True, check=True, cwd=root,
                         timeout=60).stdout
    return out[4:], int.from_bytes(out[:4], "little")


def espeak_wav(text: str, path: Path) -> Path:
    """Write ``text`` as a mono 16-bit WAV file and return its path."""
    pcm, rate = espeak_pcm(text)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path
