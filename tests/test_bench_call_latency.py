"""Smoke test for bench/call_latency.py: a loopback phone call runs end to end and reports the wait,
with the old rule as a baseline in the same run.

No assertion on speed (speed is the benchmark's job).
"""

from __future__ import annotations

import json

from bench.call_latency import main, measure_call_waits
from bench.latency import UTTERANCES


async def test_one_call_reports_the_wait_and_its_parts() -> None:
    result = await measure_call_waits(1, warmup=0, compare=False)
    parsed = json.loads(json.dumps(result))
    assert parsed["benchmark"] == "call_latency" and parsed["turns"] == 1 and "baseline" not in parsed
    wait, detected = parsed["wait_ms"]["p50"], parsed["end_of_speech_detected_ms"]["p50"]
    assert wait is not None and detected is not None and 0 < detected < wait
    assert parsed["heard_ms"]["p50"] >= wait - 1
    assert set(parsed["stages_ms_p50"]) >= {"end_of_speech_to_final_transcript", "end_of_speech_to_first_frame"}
    assert set(parsed["breakdown_ms"]) >= {"end_of_speech", "stt", "agent", "tts", "turn_end", "playback"}
    assert parsed["settings"]["turn_detection"] == "smart" and parsed["settings"]["speculative_reply"] is True
    assert parsed["machine"]["loadavg"]


async def test_a_paused_utterance_is_counted_with_the_old_rule_beside_it() -> None:
    paused = next(u for u in UTTERANCES if len(u[0]) > 1)
    result = await measure_call_waits(1, warmup=0, utterances=[paused])
    for figures in (result, result["baseline"]):
        assert figures["false_cutoffs"]["of"] == 1 and figures["wasted_llm_calls"]["of"] >= 1
        assert figures["turns"] == 1 and figures["heard"][0]
    assert result["baseline"]["settings"] == {"turn_detection": "fixed", "end_silence_ms": 600,
                                              "speculative_reply": False}


def test_json_flag_prints_one_line(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--turns", "1", "--no-compare", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out)["turns"] == 1
