"""Smoke test for bench/call_latency.py: one loopback phone call runs end to end and reports the wait.

No assertion on speed (speed is the benchmark's job).
"""

from __future__ import annotations

import json

from bench.call_latency import main, measure_call_waits


async def test_one_call_reports_the_wait_and_its_parts() -> None:
    result = await measure_call_waits(1, warmup=0)
    parsed = json.loads(json.dumps(result))
    assert parsed["benchmark"] == "call_latency" and parsed["turns"] == 1
    wait, detected = parsed["wait_ms"]["p50"], parsed["end_of_speech_detected_ms"]["p50"]
    assert wait is not None and detected is not None and 0 < detected < wait
    assert parsed["heard_ms"]["p50"] >= wait - 1
    assert set(parsed["stages_ms_p50"]) >= {"end_of_speech_to_final_transcript", "end_of_speech_to_first_frame"}


def test_json_flag_prints_one_line(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--turns", "1", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out)["turns"] == 1
