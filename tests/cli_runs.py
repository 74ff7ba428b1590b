"""Running ``voicebot`` commands as real subprocesses, many at once, for the CLI's end-to-end tests.

PYTHONPATH points at this checkout so the code under test is what runs. Every run gets its own
directory (its cwd, ``DATA_DIR`` and ``.env``) and nothing of the developer's environment.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ROOT", "CliRun", "Finished", "drop_file_override", "free_port"]

ROOT = Path(__file__).resolve().parents[1]



# free_port() hands out ports below Linux's ephemeral range (32768-60999), which the kernel never
# gives to a bind(0) or to the source port of a connect(): a port that is free when picked stays
# free until the child binds it, even with other pytest workers and test servers busy. Each process
# starts at its own place in the range (its pid) and walks on, skipping what is taken.
_PORTS = range(20000, 32768)
_next_port = _PORTS.start + (os.getpid() * 97) % len(_PORTS)


def free_port() -> int:
    """A loopback port nobody listens on, for a child process to bind."""
    global _next_port
    for _ in range(len(_PORTS)):
        port = _next_port
        _next_port = _PORTS.start + (port + 1 - _PORTS.start) % len(_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise OSError("no free loopback port in 20000-32767")


_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2
_PR_CAPBSET_DROP = 24


def drop_file_override() -> None:
    """In a child before exec: give up root's power to ignore file modes (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH), so a directory of mode 0555 refuses writes as it would for any user.

    Dropped from the bounding set, because root regains every capability it allows at exec.
    Tests here run as root; everything else about the process stays the same.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@dataclass(frozen=True)
class Finished:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class CliRun:
    """``voicebot COMMAND ARGS`` with ``settings`` as its whole environment, in directory ``home``."""

    command: str  # "run" is plain `voicebot`
    home: Path
    settings: dict[str, str]
    args: tuple[str, ...] = ()
    stdin: str = ""
    no_file_override: bool = False  # as root: without the capability to ignore file modes
    options: tuple[str, ...] = ()  # voicebot's own, before the command (--env-file FILE)
    proc: subprocess.Popen[str] | None = field(default=None, repr=False)

    def start(self) -> CliRun:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": str(self.home),
               "PYTHONDONTWRITEBYTECODE": "1", "DATA_DIR": str(self.home / "data"), **self.settings}
        argv = [sys.executable, "-m", "bot", *self.options, *(() if self.command == "run" else (self.command,)),
                *self.args]
        self.proc = subprocess.Popen(argv, env=env, cwd=self.home, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=drop_file_override if self.no_file_override else None)
        assert self.proc.stdin is not None
        self.proc.stdin.write(self.stdin)  # small: fits the pipe's buffer, read when the command wants it
        self.proc.stdin.close()
        self.proc.stdin = None  # communicate() would flush it
        return self

    def finish(self, timeout: float = 120.0) -> Finished:
        """Send stdin, wait for the exit (``timeout`` is a failure guard), return what it printed."""
        assert self.proc is not None
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            err += f"\n[test harness: killed after {timeout} s without exiting]\n"
        return Finished(self.proc.returncode, out, err)
