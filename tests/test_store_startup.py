"""Issue 22 item 6: a DATABASE_URL that cannot be used is one line (no password) and exit status 2, in a real
``voicebot serve`` process: a server that refuses connections, a wrong password, a missing database, a URL
that is not PostgreSQL's."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.cli_runs import CliRun, free_port
from tests.fakes.pg_auth_server import RefusingPostgres

PASSWORD = "pw-hunter2-sekrit-77"


def _serve(home: Path, url: str) -> CliRun:
    (home / "empty.env").parent.mkdir(parents=True, exist_ok=True)
    (home / "empty.env").write_text("")
    return CliRun("serve", home, {"DATABASE_URL": url, "PRIVACY_KEY": "ab" * 32, "WEB_PORT": str(free_port())},
                  options=("--env-file", str(home / "empty.env"))).start()


def _one_line(finished: object) -> str:
    out = finished.output  # type: ignore[attr-defined]
    assert PASSWORD not in out and "Traceback" not in out, out
    problems = [line for line in out.splitlines() if "DATABASE_URL" in line]
    assert len(problems) == 1, out
    return problems[0]


async def test_an_unusable_database_url_is_one_line_and_exit_2(tmp_path: Path) -> None:
    async with RefusingPostgres() as refusing:
        runs = {
            "refused": _serve(tmp_path / "refused", f"postgresql://bot:{PASSWORD}@127.0.0.1:{free_port()}/voicebot"),
            "password": _serve(tmp_path / "password", f"postgresql://bot:{PASSWORD}@127.0.0.1:{refusing.port}/voicebot"),
            "missing": _serve(tmp_path / "missing", f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/vb_no_such_db_22"),
            "not-postgres": _serve(tmp_path / "mysql", f"mysql://bot:{PASSWORD}@127.0.0.1/voicebot"),
        }
        loop = asyncio.get_running_loop()
        finished = {name: await loop.run_in_executor(None, run.finish) for name, run in runs.items()}
        assert refusing.attempts >= 1  # the password was really offered and refused
    says = {
        "refused": "cannot reach PostgreSQL at 127.0.0.1:",
        "password": "refused the password",
        "missing": "that database does not exist",
        "not-postgres": "must be a PostgreSQL URL",
    }
    for name, done in finished.items():
        assert done.code == 2, (name, done.output)
        line = _one_line(done)
        assert says[name] in line, (name, line)
