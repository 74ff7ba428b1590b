"""Smoke test for bench/stt_window.py: both windows transcribe, the JSON has every figure.

No assertion on speed or on the error rate's value (that is the benchmark's job).
"""

from __future__ import annotations

import json

import pytest

from bench.stt_window import main, sentences
from bot.providers import local_stt_available

pytestmark = pytest.mark.skipif(not local_stt_available(), reason="faster-whisper is not installed")


def test_the_sentences_are_fixed_and_unique() -> None:
    texts = sentences()
    assert len(texts) == len(set(texts)) == 53
    assert "Good morning, can you hear me?" in texts and "I was thinking about" in texts


def test_two_sentences_through_both_windows(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", "--sentences", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bench"] == "stt_window" and result["sentences"] == 2
    for window in ("full", "short"):
        figures = result[window]
        assert figures["words"] == sum(len(t.split()) for t in sentences()[:2])
        assert 0 <= figures["errors"] and set(figures["ms"]) == {"p50", "p95"}
    assert 0 <= result["same_words"] <= 2 and len(result["differences"]) == 2 - result["same_words"]
