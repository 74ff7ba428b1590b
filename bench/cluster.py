"""One process against two workers under the same guild load, and a worker SIGKILLed under it.

Runs the real bot on the loopback Discord (in this process) with the built-in ELIZA agent: ``--guilds``
guilds over two shards, one member in each writing to the bot every ``--interval`` seconds for
``--seconds``. Side by side in one run:

- ``one_process``: ``voicebot run`` holding both shards;
- ``two_workers``: ``voicebot cluster --processes 2`` (each worker one shard, one registry on SQLite);
- ``sigkill``: under the same load on the two workers, worker 1 is killed with SIGKILL; the seconds
  until the supervisor started it again, until it was healthy, and until a message in one of its
  guilds was answered again (a probe every 0.25 s from the kill on).

Figures: the reply wait (the member's message reaching Discord → the bot's reply reaching Discord)
p50/p95/max, messages answered / unanswered, the CPU seconds each bot process used during the load
(from /proc, the supervisor excluded) and the guilds per process.

What the figures leave out: voice (speech recognition and synthesis are where a voice bot's CPU goes;
this load is text only, answered by ELIZA, so it measures the bot's own per-message cost and the
gateway, not the engines); the loopback Discord runs in this benchmark's process on the same two
cores, so both set-ups share the machine with it; messages sent to a worker while it is down are not
delivered by the loopback (as by Discord, which does not queue events for a dead session), and are
counted as unanswered.

    python -m bench.cluster --json
    python -m bench.cluster --guilds 40 --seconds 20 --interval 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from bot.loopback.gateway import Sharding
from bot.loopback.server import ChannelHandle, LocalDiscord, MemberHandle

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "loopback.benchcluster.0123456789abcdef"
START_DEADLINE = 180.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def free_port(pair: bool = False) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not pair:
            return port
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


class Proc:
    """A subprocess whose output is read as it comes (lines kept for status parsing)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    async def wait_line(self, pattern: str, after: int = 0) -> tuple[float, re.Match[str]]:
        deadline = time.monotonic() + START_DEADLINE
        while True:
            for at, line in self.lines[after:]:
                found = re.search(pattern, line)
                if found:
                    return at, found
            if time.monotonic() > deadline or self.proc.poll() is not None:
                tail = "\n".join(line for _, line in self.lines[-40:])
                raise RuntimeError(f"no line matching {pattern!r}:\n{tail}")
            await asyncio.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


async def healthy(port: int) -> None:
    deadline = time.monotonic() + START_DEADLINE
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the bot on port {port} never became healthy")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000, 1)


async def ask(discord_: LocalDiscord, member: MemberHandle, text: ChannelHandle, words: str,
              timeout: float) -> float | None:
    """Post ``words`` to the bot; seconds until its reply reached Discord (None: no reply in ``timeout``)."""
    mention = f"<@{discord_.bot_user_id}>"
    waiter = asyncio.ensure_future(discord_.events.wait_for(
        "message", lambda e: e.data["channel_id"] == text.id, timeout=timeout, past=False))
    sent = asyncio.get_running_loop().time()
    await member.send_message(text, f"{mention} {words}")
    try:
        reply = await waiter
    except asyncio.TimeoutError:
        return None
    return reply.at - sent


async def load(discord_: LocalDiscord, rooms: list[tuple[ChannelHandle, MemberHandle]], seconds: float,
               interval: float) -> tuple[list[float], int]:
    """Every member asks every ``interval`` s for ``seconds`` (staggered); returns the waits and the unanswered."""
    waits: list[float] = []
    missed = 0

    async def member_loop(i: int, text: ChannelHandle, member: MemberHandle) -> None:
        nonlocal missed
        await asyncio.sleep(interval * i / len(rooms))
        end = asyncio.get_running_loop().time() + seconds
        n = 0
        while asyncio.get_running_loop().time() < end:
            started = asyncio.get_running_loop().time()
            wait = await ask(discord_, member, text, f"I feel tired today, number {n}", timeout=15.0)
            n += 1
            if wait is None:
                missed += 1
            else:
                waits.append(wait)
            await asyncio.sleep(max(0.0, interval - (asyncio.get_running_loop().time() - started)))

    await asyncio.gather(*(member_loop(i, t, m) for i, (t, m) in enumerate(rooms)))
    return waits, missed


def env_for(discord_: LocalDiscord, home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": str(home),
            "PYTHONDONTWRITEBYTECODE": "1", "DATA_DIR": str(home / "data"), "DISCORD_TOKEN": TOKEN,
            "DISCORD_API_BASE": discord_.api_base, "DISCORD_CA_FILE": str(discord_.ca_file),
            "AGENT_ENGINE": "eliza", "STT_ENGINE": "none", "TTS_ENGINE": "none", "LOG_LEVEL": "WARNING",
            "SHARD_COUNT": "2", "CHAT_RATE_LIMIT": "600", "CLUSTER_HEARTBEAT": "1"}


def figures(waits: list[float], missed: int, cpu: dict[str, float], guilds: dict[str, int],
            seconds: float) -> dict[str, Any]:
    return {
        "answered": len(waits), "unanswered": missed,
        "wait_ms": {"p50": percentile(waits, 0.5), "p95": percentile(waits, 0.95), "max": percentile(waits, 1.0),
                    "mean": round(statistics.fmean(waits) * 1000, 1) if waits else None},
        "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
        "cpu_share_of_a_core": {k: round(v / seconds, 3) for k, v in cpu.items()},
        "guilds": guilds,
    }


async def run(guilds: int, seconds: float, interval: float) -> dict[str, Any]:
    result: dict[str, Any] = {"guilds": guilds, "shards": 2, "seconds": seconds, "interval_s": interval,
                              "members_per_guild": 1, "agent": "eliza (built in)", "load": "text messages"}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        home = Path(tmp)
        async with LocalDiscord(token=TOKEN, sharding=Sharding(max_concurrency=2)) as discord_:
            rooms: list[tuple[ChannelHandle, MemberHandle]] = []
            shard_of: list[int] = []
            for i in range(guilds):
                guild = discord_.add_guild(f"G{i}", shard=(i % 2, 2))
                rooms.append((guild.add_text_channel("general"), guild.add_member(f"Member{i}")))
                shard_of.append(i % 2)

            # --- one process, both shards
            port = free_port()
            one = Proc([sys.executable, "-m", "bot", "run"], {**env_for(discord_, home / "one"), "WEB_PORT": str(port)},
                       home / "one")
            try:
                await healthy(port)
                before = cpu_seconds(one.proc.pid)
                waits, missed = await load(discord_, rooms, seconds, interval)
                cpu = {"bot": cpu_seconds(one.proc.pid) - before}
            finally:
                one.stop()
            result["one_process"] = figures(waits, missed, cpu, {"bot": guilds}, seconds)

            # --- two workers under the supervisor
            port = free_port(pair=True)
            sup = Proc([sys.executable, "-m", "bot", "cluster", "--processes", "2"],
                       {**env_for(discord_, home / "two"), "WEB_PORT": str(port), "PROCESS_NAME": "bench"},
                       home / "two")
            try:
                pids = []
                for i in range(2):
                    _, found = await sup.wait_line(rf"^worker {i} .*started, pid (\d+)$")
                    pids.append(int(found.group(1)))
                await healthy(port)
                await healthy(port + 1)
                before_cpu = {f"worker-{i}": cpu_seconds(pid) for i, pid in enumerate(pids)}
                waits, missed = await load(discord_, rooms, seconds, interval)
                cpu = {k: cpu_seconds(pids[int(k[-1])]) - v for k, v in before_cpu.items()}
                per = {f"worker-{s}": sum(1 for x in shard_of if x == s) for s in range(2)}
                result["two_workers"] = figures(waits, missed, cpu, per, seconds)

                # --- SIGKILL worker 1 under the same load
                victims = [r for r, s in zip(rooms, shard_of, strict=True) if s == 1]
                mark = len(sup.lines)
                load_task = asyncio.ensure_future(load(discord_, rooms, seconds, interval))
                await asyncio.sleep(min(3.0, seconds / 3))
                killed_at = time.monotonic()
                os.kill(pids[1], signal.SIGKILL)
                restarted_at, _ = await sup.wait_line(r"^worker 1 .*started, pid \d+ \(start 2\)$", after=mark)
                await healthy(port + 1)
                healthy_at = time.monotonic()
                text, member = victims[0]
                answered_at = None
                while time.monotonic() - killed_at < START_DEADLINE:
                    if await ask(discord_, member, text, "are you back", timeout=0.25) is not None:
                        answered_at = time.monotonic()
                        break
                waits, missed = await load_task
                result["sigkill"] = {
                    "restarted_after_s": round(restarted_at - killed_at, 2),
                    "healthy_after_s": round(healthy_at - killed_at, 2),
                    "answered_again_after_s": round(answered_at - killed_at, 2) if answered_at else None,
                    "load_during": {"answered": len(waits), "unanswered": missed,
                                    "wait_ms": {"p50": percentile(waits, 0.5), "p95": percentile(waits, 0.95)}},
                    "worker_0_restarted": any("worker 0" in line and "start 2" in line for _, line in sup.lines),
                }
                # Every exit the supervisor saw, with what the worker logged just before (a worker dying
                # outside the kill is a finding, not noise).
                result["worker_exits"] = [
                    {"line": line, "before": [text for _, text in sup.lines[max(0, i - 8):i]
                                              if "WARNING" in text or "ERROR" in text or "Traceback" in text]}
                    for i, (_, line) in enumerate(sup.lines) if re.match(r"^worker \d .*exited", line)]
            finally:
                sup.stop()
            result["loopback_problems"] = discord_.problems
    one_p95 = result["one_process"]["wait_ms"]["p95"]
    two_p95 = result["two_workers"]["wait_ms"]["p95"]
    result["two_workers_not_slower"] = bool(one_p95 is not None and two_p95 is not None and two_p95 <= one_p95 * 1.1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guilds", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each load phase")
    parser.add_argument("--interval", type=float, default=3.0,
                        help="seconds between one member's messages (40 guilds every 3 s stay under Discord's global 50 requests/s)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.guilds, args.seconds, args.interval))
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
