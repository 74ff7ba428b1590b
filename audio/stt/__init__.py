"""Speech-to-text: one small interface (``audio.stt.base``) and its engines.

Engines live in their own modules so that importing the interface pulls in no provider SDK:
``audio.stt.deepgram.DeepgramSTT`` (Deepgram live, nova-3 or Flux) and
``audio.stt.local.LocalWhisperSTT`` (faster-whisper behind a VAD, no key needed).
"""

from __future__ import annotations

from audio.stt.base import STTEngine, STTError, STTStream, Transcript, TranscriptQueue, Word

__all__ = ["STTEngine", "STTError", "STTStream", "Transcript", "TranscriptQueue", "Word"]
