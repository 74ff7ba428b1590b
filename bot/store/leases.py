"""Who holds a row lease: an owner name unique across machines, and whether a named owner still lives.

An owner is ``host/boot/pid/start/instance``: the machine's name, its boot id (so a pid from before
a reboot is never mistaken for a live one), the process id and the process's start time (so a
reused pid is not either), and one token per lease holder inside the process (two services in one
process, as tests run them, never share leases).

A lease is also judged dead before it expires when its owner provably is: an owner on this machine
and this boot whose process is gone (or restarted with the same pid), or an owner in this process
that was let go (:meth:`LeaseOwner.retire`). Owners on other machines are judged by expiry only,
so the machines' clocks must agree to well within a lease (NTP does).
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
from pathlib import Path

__all__ = ["LeaseOwner", "owner_alive", "process_prefix"]

_RETIRED: set[str] = set()  # owners in this process that were let go (a service closed or abandoned)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8] or "noboot"
    except OSError:
        return "noboot"


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


@functools.cache
def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def process_prefix() -> str:
    """``host/boot/pid/start`` of this process (computed per call: a forked child gets its own)."""
    pid = os.getpid()
    return f"{_host()}/{_boot_id()}/{pid}/{_start_ticks(pid) or '0'}"


def owner_alive(owner: str) -> bool | None:
    """True or False when this machine can tell; None for an owner elsewhere (judge by expiry)."""
    parts = owner.split("/")
    if len(parts) != 5:
        return None
    host, boot, pid, start, _instance = parts
    if host != _host() or boot != _boot_id() or not pid.isdigit():
        return None
    if int(pid) == os.getpid() and start == (_start_ticks(os.getpid()) or "0"):
        return owner not in _RETIRED
    ticks = _start_ticks(int(pid))
    if ticks is None:
        return False  # no such process: it died
    return ticks == start if start != "0" else None


class LeaseOwner:
    """One lease holder: its name, and a way to say it is gone (so others take its work at once)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"{process_prefix()}/{secrets.token_hex(4)}"

    def __repr__(self) -> str:
        return f"LeaseOwner({self.name!r})"

    def retire(self) -> None:
        """This holder stopped (closed, or a test's simulated crash): its leases are free at once."""
        _RETIRED.add(self.name)

    @property
    def retired(self) -> bool:
        return self.name in _RETIRED
