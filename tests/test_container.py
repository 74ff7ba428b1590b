"""The Dockerfile and compose.yaml without a Docker daemon (none runs on the project's machines).

Both files are read and held to the README's "Containers" section (services, health checks, shard
ranges, user, ports); the image's offline model check, entry command and health check run here as
plain commands with the image's environment, this checkout's virtualenv standing in for the image's.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from bot.shards import parse_shard_ids
from tests.cli_runs import ROOT, free_port

BIN = Path(sys.executable).parent  # the virtualenv's bin: `voicebot` and `python`, as on the image's PATH
DEADLINE = 90.0


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        name, _, args = whole.partition(" ")
        out.append((name.upper(), args.strip()))
    return out


def only(name: str) -> str:
    found = [args for instruction, args in instructions() if instruction == name]
    assert len(found) == 1, f"expected one {name}, found {found}"
    return found[0]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in instructions():
        if instruction == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def health_command() -> list[str]:
    """HEALTHCHECK's exec-form command (its options before CMD)."""
    options, _, command = only("HEALTHCHECK").partition(" CMD ")
    assert all(o.startswith("--") for o in options.split()), options
    return json.loads(command)


def entry_command() -> list[str]:
    return json.loads(only("ENTRYPOINT")) + json.loads(only("CMD"))


def run_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The image's environment here: its PATH is this virtualenv, its data a temporary directory."""
    env = {k: v for k, v in image_env().items() if k not in ("PATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{BIN}:/usr/bin:/bin", HOME=str(tmp_path), PYTHONPATH=str(ROOT), DATA_DIR=str(tmp_path / "data"))
    env.update(extra)
    return env


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Containers\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def readme_services() -> dict[str, dict[str, str]]:
    """The section's table: service -> its cells (what, shards, port)."""
    rows: dict[str, dict[str, str]] = {}
    for line in readme_section().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = {"what": cells[1], "shards": cells[2], "port": cells[3]}
    return rows


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def workers() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if s.get("build")}


# --- the files, against the README ------------------------------------------------------------------


def test_the_image_is_slim_python_running_as_a_user_with_its_models_inside() -> None:
    section = readme_section()
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", only("FROM"))
    user = only("USER")
    runs = " ".join(a for i, a in instructions() if i == "RUN")
    uid = re.search(rf"useradd .*--uid (\d+) .*\b{user}\b", runs)
    assert user not in ("root", "0") and uid is not None and int(uid.group(1)) != 0
    assert f"user `{user}` (uid {uid.group(1)})" in section
    env = image_env()
    assert env["HF_HUB_OFFLINE"] == "1" and "`HF_HUB_OFFLINE=1`" in section
    assert only("EXPOSE") == env["WEB_PORT"] and f"`WEB_PORT={env['WEB_PORT']}`" in section
    assert json.loads(only("VOLUME")) == [env["DATA_DIR"]] and f"`{env['DATA_DIR']}`" in section
    assert "/healthz" in " ".join(health_command()) and "`/healthz`" in section
    assert entry_command() == ["voicebot", "run"] and "`voicebot run`" in section
    copied = [a.split()[0] for i, a in instructions() if i == "COPY"]
    assert {"bot", "cogs", "audio", "pyproject.toml"} <= set(copied)


def test_compose_runs_the_readme_services_with_shards_that_cover_the_count_once() -> None:
    spec = compose()
    rows = readme_services()
    assert set(spec["services"]) == set(rows)
    env = image_env()

    postgres = spec["services"]["postgres"]
    check = postgres["healthcheck"]["test"]
    assert check[0] == "CMD" and check[1] == "pg_isready" and check[check.index("-h") + 1] == "127.0.0.1"
    assert "`pg_isready -h 127.0.0.1`" in rows["postgres"]["what"]
    assert "ports" not in postgres and rows["postgres"]["port"] == "–"

    found = workers()
    assert found and set(found) == set(rows) - {"postgres"}
    urls = {w["environment"]["DATABASE_URL"] for w in found.values()}
    counts = {int(w["environment"]["SHARD_COUNT"]) for w in found.values()}
    assert len(urls) == 1 and len(counts) == 1, "one DATABASE_URL and one SHARD_COUNT for every worker"
    url, count = urls.pop(), counts.pop()
    pg_env = postgres["environment"]
    assert re.fullmatch(rf"postgresql://{pg_env['POSTGRES_USER']}:\$\{{POSTGRES_PASSWORD[^}}]*\}}@postgres:5432/"
                        rf"{pg_env['POSTGRES_DB']}", url), url

    owners: dict[int, str] = {}
    host_ports: set[str] = set()
    for name, worker in found.items():
        ids = parse_shard_ids(str(worker["environment"]["SHARD_IDS"]))
        for shard_id in ids:
            assert shard_id not in owners, f"shard {shard_id} in {owners.get(shard_id)} and {name}"
            owners[shard_id] = name
        assert rows[name]["shards"] == f"{worker['environment']['SHARD_IDS']} of {count}"
        assert ("DMs" in rows[name]["what"]) == (0 in ids)
        (mapping,) = worker["ports"]
        host, container = mapping.split(":")
        assert container == env["WEB_PORT"] and rows[name]["port"] == host and host not in host_ports
        host_ports.add(host)
        assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
        volume = next(v for v in worker["volumes"] if v.endswith(f":{env['DATA_DIR']}"))
        assert Path(worker["environment"]["PRIVACY_KEY_FILE"]).parent == Path(env["DATA_DIR"]), volume
    assert sorted(owners) == list(range(count)), "the workers' SHARD_IDS must cover every shard once"


# --- the image's commands, run here -----------------------------------------------------------------


def test_the_image_model_check_passes_offline(tmp_path: Path) -> None:
    """The Dockerfile's build step that loads the local engines with HF_HUB_OFFLINE=1."""
    (step,) = [a for i, a in instructions() if i == "RUN" and "voicebot" in a and " check" in a]
    done = subprocess.run(["sh", "-c", step], env=run_env(tmp_path), cwd=tmp_path, capture_output=True,
                          text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok   speech-to-text (local)" in done.stdout and "ok   text-to-speech (espeak)" in done.stdout


def test_the_entry_command_becomes_healthy_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = run_env(tmp_path, WEB_PORT=str(port))
    health = health_command()
    before = subprocess.run(health, env=env, capture_output=True, timeout=DEADLINE)
    assert before.returncode != 0, "healthy with nothing listening"
    entry = subprocess.Popen(entry_command(), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + DEADLINE
        while subprocess.run(health, env=env, capture_output=True, timeout=DEADLINE).returncode != 0:
            assert entry.poll() is None, f"the entry command exited: {entry.communicate()[0]}"
            assert time.monotonic() < deadline, "the health check never passed"
            time.sleep(0.2)  # between two health checks, as Docker runs them on an interval
        entry.send_signal(signal.SIGTERM)  # `docker stop`
        assert entry.wait(timeout=DEADLINE) == 0
    finally:
        if entry.poll() is None:
            entry.kill()
            entry.wait()


async def test_the_health_check_fails_while_the_bot_reports_a_part_down(tmp_path: Path) -> None:
    async def down(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "parts": {"web": True, "discord": False}}, status=503)

    app = web.Application()
    app.router.add_get("/healthz", down)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        proc = await asyncio.create_subprocess_exec(*health_command(), env=run_env(tmp_path, WEB_PORT=str(port)),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
        assert proc.returncode != 0 and b"503" in err
    finally:
        await runner.cleanup()
