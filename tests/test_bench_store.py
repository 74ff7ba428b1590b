"""bench/store runs end to end on a few hundred turns and reports every figure the issue names (the
million-turn run is `python -m bench.store --json`, off the test suite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.cli_runs import ROOT
from tests.pg import ADMIN_URL


def test_store_bench_smoke() -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-m", "bench.store", "--turns", "300", "--batch", "100", "--reads", "10",
                             "--json", "--pg", ADMIN_URL], env=env, cwd=ROOT, text=True, capture_output=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["turns"] == 300 and figures["schema"]
    for backend in ("sqlite", "postgresql"):
        b = figures[backend]
        assert b["turns_per_s"] > 0 and b["bytes_per_turn"] > 0 and b["database_bytes"] > 0
        assert b["people"] == 3 and b["identities"] == 6 and b["sms_messages"] == 15
        assert set(b["recent20"]) == {"300"} and 0 < b["recent20"]["300"]["p50_ms"] <= b["recent20"]["300"]["p95_ms"]
        assert 0 < b["sms_state_move"]["p50_ms"] <= b["sms_state_move"]["p95_ms"]
        assert b["startup_ms"]["empty"] > 0 and b["startup_ms"]["full"] > 0
    rows = 300 + 3 + 6 + 15
    for way in ("sqlite_to_postgresql", "postgresql_to_sqlite"):
        assert figures["db_copy"][way]["rows"] == rows and figures["db_copy"][way]["seconds"] >= 0
