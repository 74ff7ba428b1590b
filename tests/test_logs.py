"""The one redactor (issue 10 item 3): pieces of secrets, URL userinfo, streams split mid-secret,
log records with tracebacks, and every logger (the OpenAI SDK logs through ``httpx2``)."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.logs import REDACTED, WINDOW, RedactingFilter, RedactingStream, Redactor, setup_logging
from bot.settings import load_settings, secret_values

KEY = "sk-proj-Zq8xV3mK9pL2wR7tY4uN6bH1cD5eF0gA"
TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAx.GaBcDe.Qw3rTy7uI9oP1aS5dF8gH2jK4lZ6xC0vB"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """setup_logging configures the process; give the next test the logging it had."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def windows(secret: str) -> list[str]:
    return [secret[i:i + WINDOW] for i in range(len(secret) - WINDOW + 1)]


def leaks(text: str, secrets: list[str]) -> list[str]:
    return [w for s in secrets for w in windows(s) if w in text]


def test_every_piece_of_eight_or_more_characters_is_redacted() -> None:
    scrub = Redactor([KEY, TOKEN])
    masked = f"Incorrect API key provided: {KEY[:16]}...{KEY[-4:]}; token {TOKEN[10:30]}; whole {KEY}"
    out = scrub(masked)
    assert not leaks(out, [KEY, TOKEN])
    assert out.startswith("Incorrect API key provided: ") and REDACTED in out
    assert scrub("nothing secret here, ids 1234 and words") == "nothing secret here, ids 1234 and words"


def test_url_userinfo_is_redacted_in_any_url_and_short_passwords_whole() -> None:
    scrub = Redactor(["pw4u"])
    out = scrub("POST http://alice:pw4u@llm.local:8000/v1/chat and wss://tok@x.example/ws; pw4u again")
    assert "alice" not in out and "pw4u" not in out and "tok@" not in out
    assert "http://********@llm.local:8000/v1/chat" in out


def test_settings_list_every_secret_setting_and_url_userinfo() -> None:
    settings = load_settings({
        "DISCORD_TOKEN": TOKEN, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://bob:Hunter2Hunter2@h/v1",
        "ELIZAOS_URL": "http://u:p@e", "ELIZAOS_AGENT_ID": "a", "ELIZAOS_API_KEY": "eliza-key-123456",
        "DEEPGRAM_API_KEY": "dg-key-1234567890", "ELEVENLABS_API_KEY": "el-key-1234567890",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "tw-token-1234567890",
        "TWILIO_PHONE_NUMBER": "+15550001111", "PUBLIC_URL": "https://bot.example",
    }, env_file=None)
    values = set(secret_values(settings))
    assert {TOKEN, KEY, "Hunter2Hunter2", "bob:Hunter2Hunter2", "eliza-key-123456", "dg-key-1234567890",
            "el-key-1234567890", "tw-token-1234567890", "p"} <= values
    assert "bob" not in values and "u" not in values  # short user names are not secrets


def test_a_secret_written_a_few_characters_at_a_time_is_caught() -> None:
    sink = io.StringIO()
    stream = RedactingStream(sink, Redactor([KEY]))
    text = f"Wren> the key is {KEY}, keep it.\nyou> "
    for i in range(0, len(text), 3):  # like a streamed reply, flushed after every delta
        stream.write(text[i:i + 3])
        stream.flush()
    assert sink.getvalue().endswith("you> ")  # nothing secret-like is held back at a prompt
    stream.release()
    assert not leaks(sink.getvalue(), [KEY])
    assert sink.getvalue() == f"Wren> the key is {REDACTED}, keep it.\nyou> "


def test_log_records_and_tracebacks_are_redacted_for_every_logger() -> None:
    sink = io.StringIO()
    setup_logging("DEBUG", secrets=[KEY], stream=sink)
    try:
        logging.getLogger("httpx2").info("HTTP Request: POST http://u:pass@h/v1 %s", KEY)
        logging.getLogger("openai._base_client").debug("Request options: %r", {"headers": {"Authorization": KEY[:20]}})
        try:
            raise RuntimeError(f"server said {KEY[4:24]}")
        except RuntimeError:
            logging.getLogger("discord.client").exception("failed")
        logging.getLogger("x").info("stack", stack_info=True, extra={"k": KEY})
    finally:
        setup_logging("WARNING", secrets=[])
    text = sink.getvalue()
    assert "HTTP Request" in text and "Traceback" in text and "server said" in text
    assert not leaks(text, [KEY]) and "u:pass" not in text


def test_request_lines_of_the_openai_sdk_are_quiet_at_info() -> None:
    sink = io.StringIO()
    setup_logging("INFO", secrets=[], stream=sink)
    try:
        # The OpenAI SDK's HTTP client is httpx2: one INFO line per request, with the URL.
        logging.getLogger("httpx2").info("HTTP Request: POST http://u:pw@h/v1/chat/completions")
        logging.getLogger("httpcore2.http11").debug("send_request_headers.started")
    finally:
        setup_logging("WARNING", secrets=[])
    assert sink.getvalue() == ""


def test_filter_with_its_own_secrets() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "k=%s", (KEY,), None)
    assert RedactingFilter([KEY]).filter(record)
    assert record.getMessage() == f"k={REDACTED}"


def test_chat_does_not_import_discord(tmp_path: Path) -> None:
    probe = (
        "import io, os, sys\n"
        "from bot.cli import main\n"
        "out = io.StringIO()\n"
        "code = main(['--env-file', os.devnull, 'chat'], stdin=io.StringIO('hello\\n'), out=out)\n"
        "assert code == 0 and 'Wren> ' in out.getvalue(), out.getvalue()\n"
        "print('discord' in sys.modules, sorted(m for m in sys.modules if m.split('.')[0] == 'discord')[:3])\n"
    )
    env = {"PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False []"


@pytest.mark.parametrize("piece", [KEY, KEY[:8], KEY[10:26], KEY[-8:]])
def test_pieces(piece: str) -> None:
    assert piece not in Redactor([KEY])(f"x{piece}y")


def test_a_configuration_that_does_not_load_is_reported_without_its_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli import main

    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://bob:Sup3rSecretPassw0rd@[::1")
    monkeypatch.setenv("OPENAI_API_KEY", f"{KEY} trailing")  # whitespace: a pasting mistake
    code = main(["--env-file", os.devnull, "chat"], stdin=io.StringIO(""), out=io.StringIO())
    err = capsys.readouterr().err
    assert code == 2 and "OPENAI_BASE_URL" in err and "OPENAI_API_KEY" in err
    assert not leaks(err, [KEY, "Sup3rSecretPassw0rd"]) and "bob:" not in err


def test_uncaught_exceptions_in_any_thread_are_redacted(tmp_path: Path) -> None:
    probe = (
        "import sys, threading\n"
        "from bot.logs import install_excepthooks, install_redactor\n"
        f"KEY = {KEY!r}\n"
        "install_redactor([KEY])\n"
        "install_excepthooks()\n"
        "t = threading.Thread(target=lambda: (_ for _ in ()).throw(ValueError('thread saw ' + KEY[3:20])))\n"
        "t.start(); t.join()\n"
        "raise RuntimeError('main saw ' + KEY)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "thread saw ********" in done.stderr and "main saw ********" in done.stderr
    assert "Traceback" in done.stderr and not leaks(done.stderr, [KEY])


def test_peoples_numbers_and_discord_ids_are_masked_in_every_log_record() -> None:
    """Issue 21 item 15: the agent's DEBUG line names the room (a DM's is the person's Discord id, an
    SMS thread's their number) and Twilio's client logs its request URLs at INFO."""
    import asyncio

    from bot.agent import Agent, Incoming
    from bot.agent.character import default_character
    from bot.agent.engines.eliza import ElizaEngine
    from bot.store import SqliteDatabase as Database
    from bot.memory import Memory, Modality

    out = io.StringIO()
    setup_logging("DEBUG", stream=out)
    memory = Memory(Database.in_memory())
    agent = Agent(default_character(), ElizaEngine(), memory)
    for room, speaker, modality in (("discord:dm:123456789012345678", "discord:123456789012345678", Modality.TEXT),
                                    ("sms:+15557654321", "phone:+15557654321", Modality.SMS)):
        reply = agent.reply(Incoming(room=room, speaker_id=speaker, speaker_name="Ann", text="hello",
                                     modality=modality))
        asyncio.run(reply.collect())
    logging.getLogger("twilio.http_client").info(
        "GET Request: https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json?To=%2B15557654321&PageSize=20")
    logging.getLogger("bot.voice.session").warning("barge-in by %s", 123456789012345678)
    text = out.getvalue()
    assert "room=discord:dm:" in text and "room=sms:" in text and "Messages.json" in text  # the lines were logged
    assert "123456789012345678" not in text and "15557654321" not in text
    assert "**************5678" in text and "+1******4321" in text and "%2B1******4321" in text
