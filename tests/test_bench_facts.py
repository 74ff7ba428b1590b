"""bench.facts' cost part runs, holds the budget and the bound, and reports the baseline beside them."""

from __future__ import annotations

import json

from bench.facts import main, measure_cost


async def test_an_hour_of_talk_stays_within_the_budget_and_the_bound() -> None:
    out = await measure_cost(rooms=2, every=60.0, budget=3000, per_person=5, debounce=30.0, max_delay=300.0)
    bounded, bound_only, baseline = out["bounded"], out["per_person_bound_only"], out["baseline_unbounded"]
    assert out["within_budget"] and 0 < bounded["spent_in_the_hour"] <= 3000
    assert bounded["over_budget"] > 0 and bounded["requests"] < baseline["requests"]
    assert baseline["spent_in_the_hour"] > 3000  # the same talk without the budget costs more
    assert bound_only["most_for_one_person"] == 5 < baseline["most_for_one_person"]
    assert bounded["tokens"] == bounded["spent_in_the_hour"] + bounded["spent_after_it"]


def test_the_cli_prints_one_json_line(capsys: object) -> None:
    assert main(["--parts", "cost", "--rooms", "1", "--every", "120", "--budget", "2000", "--json"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]  # type: ignore[attr-defined]
    data = json.loads(line)
    assert data["bench"] == "facts" and data["cost"]["within_budget"] and "leaves_out" in data
