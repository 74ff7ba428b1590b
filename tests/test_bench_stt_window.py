"""Smoke test for bench/stt_window.py: both windows transcribe, the JSON has every figure.

No assertion on speed (that is the benchmark's job); the error figures must add up and show the
sentences were heard.
"""

from __future__ import annotations

import json

import pytest

from bench.latency import word_errors
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
    said = sentences()[:2]
    differences = result["differences"]
    # Where the windows heard different words, each difference is shown with what was said.
    assert len(differences) == 2 - result["same_words"]
    assert all(d["said"] in said and d["full"] != d["short"] for d in differences)
    for window in ("full", "short"):
        figures = result[window]
        assert figures["words"] == sum(len(t.split()) for t in said)
        assert set(figures["ms"]) == {"p50", "p95"}
        assert figures["word_error_rate"] == round(figures["errors"] / figures["words"], 4)
        # The errors cover at least the differences shown, and the recognizer heard the sentences
        # (espeak's clear voice: tiny.en gets most words; noise or silence would get none).
        assert figures["errors"] >= sum(word_errors(d["said"], d[window])[0] for d in differences)
        assert figures["errors"] < figures["words"] / 2
