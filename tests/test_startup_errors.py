"""Issue 10 item 4: every start-up problem is one clear line, not a traceback.

Each case runs every command it applies to as a real process: the problem must
be reported as one line that names the setting or file, says what is wrong and what to do, with exit
status 2 for a configuration problem and 1 for a runtime one, and no traceback unless LOG_LEVEL=DEBUG.
The slowest, discord.py's five retries of a 500 at login (25 s of its own sleeps), starts first; the
others start once its first login request has reached the echoing service, so they run during those
sleeps instead of delaying its start (the module took the others' start-ups plus the 25 s), four at a
time (65 at once crowded the two cores: more CPU time for the same work).

"DATA_DIR not writable": tests run as root, whom no file mode stops, so that case starts the command
without root's CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH capabilities (everything else unchanged),
against a directory of mode 0555: the kernel then refuses the write as it would for any user, a
real permission error rather than a simulated one. (Running it as ``nobody`` is not possible here:
the interpreter lives under /root, mode 0700.)
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli_runs import CliRun, Finished, free_port
from tests.fakes.echo_server import EchoServer

TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAx.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB"
SMS = {"TWILIO_ACCOUNT_SID": "AC" + "1" * 32, "TWILIO_AUTH_TOKEN": "0123456789abcdef0123456789abcdef",
       "TWILIO_PHONE_NUMBER": "+15550001111", "PUBLIC_URL": "https://bot.example.com"}


@dataclass
class Case:
    """One bad start-up, for the commands it applies to."""

    name: str
    commands: tuple[str, ...]
    status: int  # 2: configuration, 1: runtime
    says: tuple[str, ...]  # in the problem line: the setting or file, what is wrong, what to do
    prepare: Callable[[Path, Context], dict[str, str]]  # writes files, returns settings
    read_only: bool = False  # the command must meet file modes (see the module docstring)
    options: tuple[str, ...] = ()  # voicebot's own, before the command


@dataclass
class Context:
    echo_url: str
    busy_port: int
    closed_port: int
    wav: Path


def _bad_character(home: Path, ctx: Context) -> dict[str, str]:
    (home / "wren.json").write_text('{"name": "Wren", "bio": ["kind", 5]}')
    return {"CHARACTER_FILE": str(home / "wren.json")}


def _deep_character(home: Path, ctx: Context) -> dict[str, str]:
    (home / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    return {"CHARACTER_FILE": str(home / "deep.json")}


def _port_in_use(home: Path, ctx: Context) -> dict[str, str]:
    return {**SMS, "WEB_HOST": "127.0.0.1", "WEB_PORT": str(ctx.busy_port)}


def _unresolvable_host(home: Path, ctx: Context) -> dict[str, str]:
    return {**SMS, "WEB_HOST": "no-such-host.invalid", "WEB_PORT": str(free_port())}


def _data_dir_is_a_file(home: Path, ctx: Context) -> dict[str, str]:
    (home / "datafile").write_text("not a directory")
    return {"DATA_DIR": str(home / "datafile")}


def _data_dir_not_writable(home: Path, ctx: Context) -> dict[str, str]:
    data = home / "readonly"
    data.mkdir()
    data.chmod(0o555)
    return {"DATA_DIR": str(data)}


def _not_sqlite(home: Path, ctx: Context) -> dict[str, str]:
    data = home / "data"
    data.mkdir()
    (data / "voicebot.sqlite3").write_bytes(b"these are my notes, not a database\n" * 200)
    return {"DATA_DIR": str(data)}


def _latin1_env(home: Path, ctx: Context) -> dict[str, str]:
    (home / ".env").write_bytes("# caf\xe9 settings\nOPENAI_MODEL=caf\xe9\n".encode("latin-1"))
    return {}


def _env_is_a_directory(home: Path, ctx: Context) -> dict[str, str]:
    (home / ".env").mkdir()
    return {}


def _env_unclosed_quote(home: Path, ctx: Context) -> dict[str, str]:
    # python-dotenv skipped this line with a warning naming no file; the token after it looked unset.
    (home / ".env").write_text(f'OPENAI_MODEL=gpt-4o-mini\nDISCORD_TOKEN="{TOKEN}\nLOG_LEVEL=INFO\n')
    return {}


def _no_env_file_at_all(home: Path, ctx: Context) -> dict[str, str]:
    return {}


def _character_name_with_nul(home: Path, ctx: Context) -> dict[str, str]:
    (home / "nul.json").write_text('{"name": "Wr\\u0000en", "bio": "kind"}')
    return {"CHARACTER_FILE": str(home / "nul.json")}


def _openai_url_with_a_space(home: Path, ctx: Context) -> dict[str, str]:
    return {"OPENAI_BASE_URL": "http://exa mple.com/v1"}


def _ca_not_pem(home: Path, ctx: Context) -> dict[str, str]:
    (home / "ca.pem").write_text("this is not a certificate\n")
    return {"DISCORD_CA_FILE": str(home / "ca.pem")}


def _bad_openai_url(home: Path, ctx: Context) -> dict[str, str]:
    return {"OPENAI_BASE_URL": "http://[::1"}


def _discord_unreachable(home: Path, ctx: Context) -> dict[str, str]:
    return {"DISCORD_API_BASE": f"http://127.0.0.1:{ctx.closed_port}/api/v10"}


def _discord_500(home: Path, ctx: Context) -> dict[str, str]:
    return {"DISCORD_API_BASE": f"{ctx.echo_url}/login/500/api/v10"}


ALL = ("run", "chat", "check", "serve", "simulate")
SLOWEST = "discord-500-at-login"  # started first (see the module docstring)
CASES = [
    Case("discord-500-at-login", ("run",), 1, ("Discord", "HTTP 500", "try again"), _discord_500),
    Case("malformed-character", ("run", "chat", "serve", "simulate", "check"), 2,
         ("CHARACTER_FILE", "wren.json", "bio[1]", "fix the file"), _bad_character),
    Case("character-nested-100000-deep", ("run", "chat", "serve", "simulate", "check"), 2,
         ("CHARACTER_FILE", "deep.json", "nested too deeply", "fix the file"), _deep_character),
    Case("web-port-in-use", ("run", "serve"), 2, ("WEB_PORT", "already in use", "choose another WEB_PORT"),
         _port_in_use),
    Case("web-host-unresolvable", ("run", "serve"), 2, ("WEB_HOST", "no-such-host.invalid", "cannot be resolved",
                                                        "use an address"), _unresolvable_host),
    Case("data-dir-is-a-file", ("run", "chat", "serve"), 2, ("DATA_DIR", "datafile", "not a directory",
                                                             "point DATA_DIR"), _data_dir_is_a_file),
    Case("data-dir-not-writable", ("run", "chat", "serve"), 2, ("DATA_DIR", "readonly", "cannot write",
                                                                "make the directory writable"),
         _data_dir_not_writable, read_only=True),
    Case("data-dir-holds-not-sqlite", ("run", "chat", "serve"), 2,
         ("DATA_DIR", "voicebot.sqlite3", "not a SQLite database", "move that file away"), _not_sqlite),
    Case("dotenv-latin-1", ALL, 2, (".env", "not UTF-8", "save it as UTF-8"), _latin1_env),
    Case("discord-ca-not-pem", ALL, 2, ("DISCORD_CA_FILE", "ca.pem", "not a PEM certificate", "give the CA"),
         _ca_not_pem),
    Case("openai-base-url-unclosed-ipv6", ALL, 2, ("OPENAI_BASE_URL", "not a valid URL", "write it as"),
         _bad_openai_url),
    Case("discord-unreachable", ("run",), 1, ("cannot reach Discord", f"127.0.0.1", "check the network"),
         _discord_unreachable),
    Case("dotenv-is-a-directory", ALL, 2, (".env", "is a directory", "remove or rename it"), _env_is_a_directory),
    Case("dotenv-unclosed-quote", ALL, 2, (".env", "line 2", "DISCORD_TOKEN", "never closed", "close it"),
         _env_unclosed_quote),
    Case("env-file-missing", ALL, 2, ("--env-file", "missing.env", "no such file", "check the name"),
         _no_env_file_at_all, options=("--env-file", "missing.env")),
    Case("character-name-with-nul", ("run", "chat", "serve", "simulate", "check"), 2,
         ("CHARACTER_FILE", "nul.json", "name", "U+0000", "fix the file"), _character_name_with_nul),
    Case("openai-base-url-with-a-space", ALL, 2, ("OPENAI_BASE_URL", "exa mple.com", "contains a space",
                                                  "write the URL without it"), _openai_url_with_a_space),
]
MATRIX = [(case, command) for case in CASES for command in case.commands]


def _check_expectations(case: Case) -> tuple[int, tuple[str, ...]]:
    # `voicebot check` lists every service; a broken character is its agent line (exit 1: a check failed).
    if case.name in ("malformed-character", "character-nested-100000-deep", "character-name-with-nul"):
        return 1, case.says[1:3]
    return case.status, case.says


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Finished]]:
    echo = EchoServer()
    echo_url = echo.start()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    root = tmp_path_factory.mktemp("startup")
    wav = root / "hello.wav"
    _write_wav(wav)
    ctx = Context(echo_url, busy.getsockname()[1], free_port(), wav)
    runs: dict[tuple[str, str], CliRun] = {}
    try:
        for case, command in MATRIX:
            home = root / f"{case.name}-{command}"
            home.mkdir()
            settings = {"DISCORD_TOKEN": TOKEN, "DISCORD_API_BASE": f"http://127.0.0.1:{ctx.closed_port}/api/v10",
                        "STT_ENGINE": "none" if command != "simulate" else "auto", "TTS_ENGINE": "espeak",
                        "DATA_DIR": str(home / "data"), "WEB_HOST": "127.0.0.1", "WEB_PORT": str(free_port()),
                        **case.prepare(home, ctx)}
            if command == "simulate":
                settings["STT_ENGINE"] = "deepgram"
                settings.update(DEEPGRAM_API_KEY="dg0123456789abcdef", DEEPGRAM_URL=f"ws://127.0.0.1:{ctx.closed_port}")
            args = ("--speak", f"Alice={wav}") if command == "simulate" else ()
            runs[(case.name, command)] = CliRun(command, home, settings, args=args, stdin="hello\n",
                                                options=case.options,
                                                no_file_override=case.read_only and os.geteuid() == 0)
        slowest = runs[(SLOWEST, "run")].start()  # its retries begin with its first request (the module docstring)
        echo.wait_for_request("login", gone=lambda: slowest.proc is not None and slowest.proc.poll() is not None)
        slots = threading.Semaphore(4)  # processes running besides the slowest

        def finish(run: CliRun) -> Finished:
            try:
                return run.finish(timeout=180)
            finally:
                slots.release()

        with concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="startup-runs") as pool:
            others = {}
            for key, run in runs.items():
                if run is not slowest:
                    slots.acquire()
                    others[key] = pool.submit(finish, run.start())  # started here: a fork from one thread only
            finished = {key: future.result() for key, future in others.items()}
        yield {(SLOWEST, "run"): slowest.finish(timeout=180), **finished}
    finally:
        for run in runs.values():
            if run.proc is not None and run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
        busy.close()
        echo.stop()


def _write_wav(path: Path) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * 16000)


@pytest.mark.parametrize(("case", "command"), MATRIX, ids=[f"{c.name}-{cmd}" for c, cmd in MATRIX])
def test_one_clear_line(finished: dict[tuple[str, str], Finished], case: Case, command: str) -> None:
    result = finished[(case.name, command)]
    status, says = _check_expectations(case) if command == "check" else (case.status, case.says)
    output = result.output
    assert "Traceback" not in output, output
    for secret in (TOKEN, SMS["TWILIO_AUTH_TOKEN"]):  # a traceback of a failed login used to carry the token
        assert not [secret[i:i + 8] for i in range(len(secret) - 7) if secret[i:i + 8] in output]
    assert result.code == status, output
    lines = [line for line in output.splitlines() if all(s in line for s in says)]
    assert len(lines) == 1, f"expected one line saying {says}:\n{output}"
    if command != "check" or status == 2:
        prog = "voicebot" if command == "run" else f"voicebot {command}"
        assert lines[0].startswith(f"{prog}: "), lines[0]


def test_the_traceback_is_shown_at_debug(tmp_path: Path) -> None:
    settings = {"LOG_LEVEL": "DEBUG", **_bad_character(tmp_path, Context("", 0, 0, tmp_path))}
    result = CliRun("chat", tmp_path, settings, stdin="hello\n").start().finish(timeout=120)
    assert result.code == 2
    assert "Traceback" in result.stderr and "CharacterError" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("voicebot chat: CHARACTER_FILE ")


@pytest.mark.parametrize(("exc", "status", "says"), [
    (PermissionError(13, "Permission denied", "/srv/voicebot"), 2, ("DATA_DIR '/srv/voicebot/data'", "not writable")),
    (PermissionError(13, "Permission denied", "/srv/voicebot/data"), 2, ("DATA_DIR", "make it writable")),
    (OSError(errno.EROFS, "Read-only file system", "/srv/voicebot/data"), 2, ("DATA_DIR", "not writable")),
    (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), 2, ("WEB_HOST '10.9.9.9'", "not an address")),
    (PermissionError(errno.EACCES, "Permission denied"), 2, ("WEB_PORT 80", "above 1024")),
    (PermissionError(13, "Permission denied", "/etc/elsewhere"), 2, ("'/etc/elsewhere'", "this user")),
    (ZeroDivisionError("division by zero"), 1, ("unexpected ZeroDivisionError", "LOG_LEVEL=DEBUG")),
])
def test_other_failures_are_named(exc: BaseException, status: int, says: tuple[str, ...]) -> None:
    from bot.cli import describe_failure
    from bot.settings import load_settings

    settings = load_settings({"DATA_DIR": "/srv/voicebot/data", "WEB_HOST": "10.9.9.9", "WEB_PORT": "80"},
                             env_file=None)
    failure = describe_failure(exc, settings)
    assert failure.status == status and all(s in failure.line for s in says), failure.line
