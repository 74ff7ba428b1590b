"""Smoke test for bench/latency.py: the machinery runs end to end and reports every figure.

No assertion on speed (speed is the benchmark's job): the cloud configuration on the timed fakes,
one plain and one paused utterance, through the real bot on the loopback Discord.
"""

from __future__ import annotations

import json

import pytest

from bench.latency import MEASURES, UTTERANCES, BenchConfig, describe, main, run_benchmark, word_errors


async def test_cloud_run_reports_every_key() -> None:
    cfg = BenchConfig(configs=("cloud",), utterances=UTTERANCES[:2], warmup=False, gap=0.1)
    result = await run_benchmark(cfg)
    line = json.dumps(result, separators=(",", ":"))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["bench"] == "latency"
    cloud = parsed["cloud"]
    assert cloud["turns"] == 2
    for key in ("wait_ms", "floor_ms"):
        assert set(cloud[key]) == {"p50", "p95"}
        assert all(isinstance(v, float) for v in cloud[key].values())
    assert {"end_of_speech", "stt", "agent", "tts", "turn_end", "playback", "send"} <= set(cloud["breakdown_ms"])
    assert parsed["false_cutoffs"]["of"] == 1
    assert set(parsed["wasted_llm_calls"]) == {"count", "of"}
    assert parsed["wasted_llm_calls"]["of"] >= 2  # at least one LLM call per answered utterance
    assert "cloud: wait p50/p95" in describe(parsed)
    # What the bot heard is scored against what was said, and the JSON says what each figure covers.
    wer = cloud["word_error_rate"]
    assert wer["words"] == sum(len(" ".join(parts).split()) for parts, _ in UTTERANCES[:2])
    # The fake recognizer hears every scripted word (a pause may cut an utterance in two, never lose a word).
    assert (wer["errors"], wer["rate"]) == (0, 0.0), cloud["heard"]
    assert len(cloud["stt_ms"]) == 2
    # Per turn: what the CPU did (other processes' share shows as run-queue wait).
    assert len(cloud["runq_wait_ms"]) == len(cloud["cpu_ms"]) == len(cloud["cpu_pressure"]) == 2
    assert all(v is not None for v in cloud["runq_wait_ms"]) and all(v > 0 for v in cloud["cpu_ms"])
    assert set(MEASURES) <= set(parsed["measures"]) and "Leaves out" in parsed["measures"]["wait_ms"]


def test_word_errors_count_substitutions_insertions_and_deletions() -> None:
    assert word_errors("What is the weather like?", "what is the weather like") == (0, 5)
    assert word_errors("call my mother and buy bread", "call my mother in | by bread") == (2, 6)
    assert word_errors("the history of Rome", "history of Rome today") == (2, 4)
    assert word_errors("", "") == (0, 0)


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--compare" in capsys.readouterr().out


async def test_the_call_figure_sits_beside_the_discord_ones() -> None:
    from bench.latency import run_benchmark

    cfg = BenchConfig(configs=("call",), warmup=False, call_turns=1)
    result = await run_benchmark(cfg)
    call = json.loads(json.dumps(result))["call"]
    assert call["benchmark"] == "call_latency" and call["turns"] == 1
    assert call["wait_ms"]["p50"] is not None and "phone call" in describe(result)
