"""bench.memory and its data generator: the format, the figures, the baseline in the same run, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import memory, memory_data


def test_the_generator_is_seeded_split_and_its_evidence_exists() -> None:
    a, b = memory_data.generate(4, seed=5), memory_data.generate(4, seed=5)
    assert a == b and a != memory_data.generate(4, seed=6)
    assert {c["split"] for c in a["conversations"]} == {"dev", "heldout"}
    for conv in a["conversations"]:
        ids = [t["id"] for s in conv["sessions"] for t in s["turns"]]
        assert len(ids) == len(set(ids))
        dates = [s["date"] for s in conv["sessions"]]
        assert dates == sorted(dates) and len(conv["speakers"]) >= 3
        for q in conv["questions"]:
            assert q["evidence"] and set(q["evidence"]) <= set(ids)
            assert any(name in q["question"] for name in conv["speakers"])  # asked about someone, by someone else


def test_the_shipped_sample_is_the_generators_output() -> None:
    shipped = json.loads(Path("bench/data/memory_sample.json").read_text(encoding="utf-8"))
    assert shipped == memory_data.generate(20, seed=23)


def test_bench_memory_reports_the_ranker_against_bm25_and_the_scale(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.json"
    data.write_text(json.dumps(memory_data.generate(4, seed=23)), encoding="utf-8")
    assert memory.main(["--data", str(data), "--json", "--scale", "3000"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("recall_at_5", "recall_at_10", "hit_at_5", "questions", "query_ms", "ingest_turns_per_s"):
        assert out[key] is not None, key
    assert out["questions"] > 20 and set(out["query_ms"]) == {"p50", "p95"}
    sqlite = out["backends"]["sqlite"]
    assert sqlite["ranker"]["recall_at_5"] > sqlite["bm25_single_turn"]["recall_at_5"]
    assert sqlite["ranker"]["by_type"]["context"]["recall_at_5"] > 0.5 == sqlite["bm25_single_turn"]["by_type"][
        "context"]["recall_at_5"] + 0.5
    at = out["scale"]["sqlite"]["3000"]
    assert at["reached"] == 3000 and at["recall_at_5"] > sqlite["bm25_single_turn"]["recall_at_5"]
    assert sqlite["ranker"]["outside_audience_hits"] == at["outside_audience_hits"] == 0  # others' rooms never


def test_bench_memory_refuses_bad_data_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2", encoding="utf-8")
    assert memory.main(["--data", str(bad)]) == 2
    assert memory.main(["--data", str(tmp_path / "missing.json")]) == 2
    assert memory.main(["--data", str(bad), "--backends", "mysql"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("bench.memory: ") for line in err)
