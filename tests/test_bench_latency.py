"""Smoke test for bench/latency.py: the machinery runs end to end and reports every figure.

No assertion on speed (speed is the benchmark's job): tiny provider timings, two turns.
"""

from __future__ import annotations

import json

import pytest

from bench.latency import BenchConfig, describe, main, run_benchmark
from bench.providers import Timings

TINY = Timings(stt_delay=0.05, llm_first_token=0.01, llm_tokens_per_second=1000.0, tts_first_byte=0.01,
               tts_speed=50.0)


async def test_two_tiny_turns_complete_and_report_every_key() -> None:
    # One frame of speech per turn: with several, a stalled machine could let the fake STT's short
    # delay pass between two frames and end the turn mid-speech.
    cfg = BenchConfig(turns=2, timings=TINY, speech_seconds=0.02, silence_wait=0.05, warmup=1,
                      batch_concurrency=2, settle=0.01, turn_timeout=20.0)
    result = await run_benchmark(cfg)
    line = json.dumps(result, separators=(",", ":"))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["bench"] == "latency"
    assert parsed["turns"] == 2
    assert parsed["config"]["batch_turns"] == 2
    for key in ("streaming_ms", "floor_ms", "overhead_ms", "batch_ms", "first_frame_available_ms"):
        assert set(parsed[key]) == {"p50", "p95"}
        assert all(isinstance(v, float) for v in parsed[key].values())
    assert parsed["ratio_batch_over_streaming"] is not None
    assert parsed["targets"] == {"overhead_p95_ms": 60.0, "ratio": 3.0}
    assert set(parsed["targets_met"]) == {"overhead_p95", "ratio"}
    assert all(isinstance(v, bool) for v in parsed["targets_met"].values())
    assert {"final_to_llm_request", "frame_available_to_handed"} <= set(parsed["overhead_breakdown_ms"])
    assert "streaming p50/p95" in describe(parsed)


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--turns" in capsys.readouterr().out
