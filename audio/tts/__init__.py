"""Text-to-speech: one interface (``TTSEngine``), several engines (espeak-ng, ElevenLabs, Piper)."""

from __future__ import annotations

from audio.tts.base import AudioFormat, TTSEngine, TTSError, VoiceInfo, VoiceSpec

__all__ = ["AudioFormat", "TTSEngine", "TTSError", "VoiceInfo", "VoiceSpec"]
