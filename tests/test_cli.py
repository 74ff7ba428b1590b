from __future__ import annotations

import io
import os
import socket
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from aiohttp import web

from bot.cli import PERMISSIONS, application_id_from_token, main

TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAx.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB"  # id 100000000000000001


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))


def run(argv: list[str], stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--env-file", os.devnull, *argv], stdin=io.StringIO(stdin), out=out)
    return code, out.getvalue()


def test_without_a_token_it_says_what_to_set_and_serves_the_console(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:  # a free port for the console
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WEB_PORT": str(port), "LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "bot", "--env-file", os.devnull], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        lines = []
        url = f"http://127.0.0.1:{port}/"
        while url not in "".join(lines):  # waits on the process's output, bounded by the read below
            line = proc.stdout.readline()
            assert line, f"voicebot exited: {''.join(lines)}{proc.stderr.read() if proc.stderr else ''}"
            lines.append(line)
        text = "".join(lines)
        assert "DISCORD_TOKEN" in text and "Message Content Intent" in text and "voicebot chat" in text
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.status == 200 and b"playground" in resp.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_settings_are_all_reported(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_PORT", "nope")
    monkeypatch.setenv("VOICE_MODE", "loud")
    code, _ = run(["chat"])
    err = capsys.readouterr().err
    assert code == 2 and "WEB_PORT" in err and "VOICE_MODE" in err


def test_chat_answers_with_the_builtin_engine_and_remembers(tmp_path: Path) -> None:
    code, text = run(["chat"], "Hello there\nI am sad about my mother\n/quit\n")
    assert code == 0
    assert text.startswith("Talking with Wren (eliza)")
    replies = [line.split("Wren> ", 1)[1] for line in text.splitlines() if "Wren> " in line]
    assert len(replies) == 2 and all(r.strip() for r in replies)
    assert "family" in replies[1].lower() or "mother" in replies[1].lower()
    # Same memory on the next run: the database survives.
    import sqlite3

    rows = sqlite3.connect(tmp_path / "data" / "voicebot.sqlite3").execute("select count(*) from turns").fetchone()
    assert rows[0] == 4


def test_invite_url_has_scopes_and_exact_permissions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    code, text = run(["invite"])
    assert code == 0
    query = parse_qs(urlparse(text.strip()).query)
    assert query["client_id"] == ["100000000000000001"]
    assert query["scope"] == ["bot applications.commands"]
    assert int(query["permissions"][0]) == PERMISSIONS.value
    assert PERMISSIONS.connect and PERMISSIONS.speak and PERMISSIONS.use_voice_activation
    assert not PERMISSIONS.administrator
    assert application_id_from_token("garbage") is None


def test_invite_without_an_id_explains() -> None:
    code, text = run(["invite"])
    assert code == 2 and "DISCORD_APPLICATION_ID" in text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _rejecting_discord() -> tuple[web.AppRunner, int]:
    async def me(request: web.Request) -> web.Response:
        return web.json_response({"message": "401: Unauthorized", "code": 0}, status=401)

    app = web.Application()
    app.router.add_get("/api/v10/users/@me", me)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def test_check_names_each_misconfigured_service(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import threading

    loop = asyncio.new_event_loop()
    runner, port = loop.run_until_complete(_rejecting_discord())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
        monkeypatch.setenv("DISCORD_API_BASE", f"http://127.0.0.1:{port}/api/v10")
        monkeypatch.setenv("AGENT_ENGINE", "openai")
        monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{_closed_port()}/v1")
        monkeypatch.setenv("STT_ENGINE", "none")
        monkeypatch.setenv("TTS_ENGINE", "espeak")
        code, text = run(["check"])
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    lines = {line.split()[1]: line for line in text.splitlines()}
    assert code == 1
    assert lines["discord"].startswith("FAIL") and "rejected" in lines["discord"]
    assert lines["agent"].startswith("FAIL")
    assert lines["text-to-speech"].startswith("ok")
    assert TOKEN not in text


def test_each_run_says_which_settings_file_and_data_folder_it_uses(tmp_path: Path) -> None:
    """Both depend on the current directory: one line on stderr says which were used."""
    from tests.cli_runs import CliRun

    with_env = tmp_path / "with"
    with_env.mkdir()
    (with_env / ".env").write_text("OPENAI_MODEL=gpt-4o-mini\n")
    done = CliRun("chat", with_env, {}, stdin="/quit\n").start().finish()
    assert done.code == 0, done.output
    assert done.stderr.splitlines()[0] == (f"voicebot chat: settings from {with_env / '.env'} and the environment; "
                                           f"data in {with_env / 'data'}")
    without = CliRun("invite", tmp_path / "without", {"DISCORD_TOKEN": TOKEN}).start().finish()
    assert without.code == 0 and without.stdout.startswith("https://discord.com/")
    assert without.stderr.splitlines() == [f"voicebot invite: settings from the environment only "
                                           f"(no {tmp_path / 'without' / '.env'})"]
