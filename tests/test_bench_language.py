from __future__ import annotations

from bench.language import LINES, SENTENCES, TEXTS, run


def test_language_bench_reports_every_key() -> None:
    result = run(5)
    assert set(result) == {"detector_load_ms", "detected", "detect_us", "split_chars_per_s", "normalise_us", "rounds"}
    assert result["detected"] == {code: code for code in LINES}
    assert set(result["split_chars_per_s"]) == set(TEXTS)  # type: ignore[arg-type]
    assert set(result["normalise_us"]) == set(SENTENCES)  # type: ignore[arg-type]
