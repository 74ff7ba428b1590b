"""Real processes on the loopback Discord: ``voicebot cluster --processes 2`` starts two workers with their
shard ranges, starts a SIGKILLed one again (its guild answered again), and stops everything on SIGTERM;
a process started on shards a live one holds refuses with one line; two processes logging in at once
in one IDENTIFY bucket keep Discord's 5 s between them (the loopback gateway refuses faster ones)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import aiohttp

from bot.cluster.store import ClusterStore
from bot.loopback.gateway import Sharding
from bot.loopback.server import LocalDiscord
from bot.store import open_database
from tests.cli_runs import ROOT, CliRun, free_port

TOKEN = "loopback.clusterprocs.0123456789abcdef"
DEADLINE = 120.0  # interpreters starting on a busy two-core machine


def two_free_ports() -> int:
    """A port whose next one is free too (the workers take WEB_PORT and WEB_PORT + 1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


class Proc:
    """A process whose output is read as it comes (a worker's logs would fill a pipe nobody reads)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_line(self, pattern: str, *, after: int = 0) -> re.Match[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while True:
            for line in self.lines[after:]:
                found = re.search(pattern, line)
                if found:
                    return found
            assert self.proc.poll() is None or loop.time() < deadline, f"exited without {pattern!r}:\n{self.output[-3000:]}"
            assert loop.time() < deadline, f"no line matching {pattern!r}:\n{self.output[-3000:]}"
            await asyncio.sleep(0.1)

    def finish(self, timeout: float = DEADLINE) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(5)
        return code


async def healthy(port: int, *runs: CliRun) -> None:
    """Until the process on ``port`` answers /healthz with 200; fails at once when one of ``runs`` exited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return
            for run in runs:
                assert run.proc is not None and run.proc.poll() is None, f"exited: {run.finish().output[-3000:]}"
            assert loop.time() < deadline, f"the worker on port {port} never became healthy"
            await asyncio.sleep(0.2)


async def console_until(port: int, predicate: Callable[[dict], bool]) -> dict:
    """The ``cluster`` part of the console state on ``port`` once ``predicate`` holds for it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"http://127.0.0.1:{port}/console/state") as response:
                panel = (await response.json())["cluster"]
            if predicate(panel):
                return panel
            assert loop.time() < deadline, panel
            await asyncio.sleep(0.2)


def base_env(discord_: LocalDiscord, home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": str(home),
            "PYTHONDONTWRITEBYTECODE": "1", "DATA_DIR": str(home / "data"),
            "DISCORD_TOKEN": TOKEN, "DISCORD_API_BASE": discord_.api_base, "DISCORD_CA_FILE": str(discord_.ca_file),
            "AGENT_ENGINE": "eliza", "STT_ENGINE": "none", "TTS_ENGINE": "none", "LOG_LEVEL": "INFO",
            "CLUSTER_HEARTBEAT": "0.5"}


async def test_cluster_starts_workers_restarts_a_killed_one_and_stops_all(tmp_path: Path) -> None:
    async with LocalDiscord(token=TOKEN, sharding=Sharding(max_concurrency=2)) as discord_:
        rooms = []
        for shard_id in range(2):
            guild = discord_.add_guild(f"G{shard_id}", shard=(shard_id, 2))
            rooms.append((guild.add_text_channel("general"), guild.add_member(f"Member{shard_id}")))
        port = two_free_ports()
        env = {**base_env(discord_, tmp_path), "WEB_PORT": str(port), "SHARD_COUNT": "2", "PROCESS_NAME": "box"}
        sup = Proc([sys.executable, "-m", "bot", "cluster", "--processes", "2"], env, tmp_path)
        try:
            first = [await sup.wait_line(rf"^worker {i} \(box-{i}\): shards {i} of 2, port {port + i}: started, pid (\d+)$")
                     for i in range(2)]
            await healthy(port)
            await healthy(port + 1)
            assert discord_.gateway.live_shards() == {0, 1}
            mention = f"<@{discord_.bot_user_id}>"
            for text, member in rooms:
                await member.send_message(text, f"{mention} I feel fine today")
            for text, _ in rooms:
                await discord_.wait_bot_message(text, timeout=DEADLINE)
            # Either worker's console shows the whole cluster; its /metrics names the process.
            def both_up(panel: dict) -> bool:
                rows = {p["name"]: p for p in panel["processes"] if p["state"] == "up"}
                return {n: (p["shards"], p["guilds"]) for n, p in rows.items()} == {"box-0": ("0", 1), "box-1": ("1", 1)}
            panel = await console_until(port + 1, both_up)
            assert [p["this"] for p in panel["processes"] if p["name"] == "box-1"] == [True]
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                exposition = await resp.text()
            assert 'voicebot_turns_total{channel="text",outcome="answered",process="box-0"} 1.0' in exposition

            # SIGKILL worker 1: the supervisor starts it again and shard 1's guild is answered again.
            killed = int(first[1].group(1))
            mark = len(sup.lines)
            os.kill(killed, signal.SIGKILL)
            await sup.wait_line(r"^worker 1 \(box-1\): .*exited \(killed by SIGKILL\).*starting again in 1 s$", after=mark)
            again = await sup.wait_line(r"^worker 1 \(box-1\): .*started, pid (\d+) \(start 2\)$", after=mark)
            assert int(again.group(1)) != killed
            await healthy(port + 1)
            text, member = rooms[1]
            before = len(text.bot_messages)
            await member.send_message(text, f"{mention} I remember my mother")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DEADLINE
            while len(text.bot_messages) == before:
                assert loop.time() < deadline, sup.output[-3000:]
                await asyncio.sleep(0.1)
            # Worker 0's console: the killed process is down, its successor up with shard 1.
            def replaced(panel: dict) -> bool:
                states = {p["pid"]: p["state"] for p in panel["processes"]}
                return states.get(killed) == "down" and states.get(int(again.group(1))) == "up" and panel["down"] == 1
            await console_until(port, replaced)
            # Worker 0 never noticed: started once.
            assert not re.search(r"^worker 0 .*start 2", sup.output, re.M)

            # The registry: both workers up, worker 1's new process holding shard 1.
            db = await open_database(str(tmp_path / "data" / "voicebot.sqlite3"))
            try:
                rows = [r for r in await ClusterStore(db).processes() if r.state == "up"]
            finally:
                await db.close()
            assert sorted((r.name, r.shard_ids, r.pid) for r in rows) == [
                ("box-0", (0,), int(first[0].group(1))), ("box-1", (1,), int(again.group(1)))]
        finally:
            sup.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(sup.finish)
        assert code == 0, sup.output[-3000:]
        for i in range(2):
            assert re.search(rf"^worker {i} \(box-{i}\): .*: stopped$", sup.output, re.M), sup.output[-3000:]
        assert discord_.problems == [], discord_.problems


async def test_a_process_on_shards_a_live_one_holds_refuses_with_one_line(tmp_path: Path) -> None:
    async with LocalDiscord(token=TOKEN, sharding=Sharding(max_concurrency=2)) as discord_:
        discord_.add_guild("G0", shard=(0, 2))
        env = {k: v for k, v in base_env(discord_, tmp_path).items() if k not in ("PATH", "PYTHONPATH", "HOME",
                                                                                 "PYTHONDONTWRITEBYTECODE", "DATA_DIR")}
        env["DATA_DIR"] = str(tmp_path / "shared")  # both on one SQLite file: one machine
        ports = [free_port(), free_port()]
        first = CliRun("run", tmp_path / "a", {**env, "WEB_PORT": str(ports[0])},
                       args=("--shard-ids", "0-1", "--shard-count", "2")).start()
        try:
            await healthy(ports[0])
            second = CliRun("run", tmp_path / "b", {**env, "WEB_PORT": str(ports[1])},
                            args=("--shard-ids", "1", "--shard-count", "2")).start()
            done = await asyncio.to_thread(second.finish, DEADLINE)
        finally:
            assert first.proc is not None
            first.proc.send_signal(signal.SIGTERM)
            first_done = await asyncio.to_thread(first.finish, DEADLINE)
        assert done.code == 2, done.output[-3000:]
        last = done.stderr.strip().splitlines()[-1]
        assert re.fullmatch(r"voicebot: shard\(s\) 1 of 2 are held by the live process \S+ \(pid \d+ on \S+\): give "
                            r"this process other SHARD_IDS, or stop that one first", last), last
        assert "Traceback" not in done.output
        assert first_done.code == 0
        assert sorted(e.data["shard"] for e in discord_.events.of("identify")) == [[0, 2], [1, 2]]  # never the second's


async def test_two_processes_in_one_identify_bucket_keep_five_seconds_apart(tmp_path: Path, pg_url: str) -> None:
    # max_concurrency 1: both shards are in bucket 0; each process alone would IDENTIFY at once.
    async with LocalDiscord(token=TOKEN, sharding=Sharding(max_concurrency=1)) as discord_:
        for shard_id in range(2):
            discord_.add_guild(f"G{shard_id}", shard=(shard_id, 2))
        env = {k: v for k, v in base_env(discord_, tmp_path).items() if k not in ("PATH", "PYTHONPATH", "HOME",
                                                                                 "PYTHONDONTWRITEBYTECODE", "DATA_DIR")}
        env["DATABASE_URL"] = pg_url
        env["PRIVACY_KEY"] = "ab" * 32
        ports = [free_port(), free_port()]
        runs = [CliRun("run", tmp_path / f"w{i}", {**env, "WEB_PORT": str(ports[i])},
                       args=("--shard-ids", str(i), "--shard-count", "2")).start() for i in range(2)]
        try:
            for port in ports:
                await healthy(port)
        finally:
            for run in runs:
                assert run.proc is not None
                run.proc.send_signal(signal.SIGTERM)
            finished = [await asyncio.to_thread(run.finish, DEADLINE) for run in runs]
        assert [f.code for f in finished] == [0, 0], [f.output[-2000:] for f in finished]
        identifies = discord_.events.of("identify")
        assert sorted(e.data["shard"] for e in identifies) == [[0, 2], [1, 2]]
        assert discord_.problems == [], discord_.problems  # no IDENTIFY inside another's 5 s
        assert discord_.events.of("identify_refused") == []


async def test_bad_cluster_commands_are_one_line_each(tmp_path: Path) -> None:
    base = {"DISCORD_TOKEN": TOKEN, "SHARD_COUNT": "2", "DISCORD_API_BASE": "https://127.0.0.1:9/api/v10"}
    cases = [
        (base, ("--processes", "two"), "voicebot cluster: --processes: expected a whole number, got 'two'"),
        (base, ("--processes", "0"), "voicebot cluster: --processes: must be from 1 to 256, got 0"),
        (base, ("--processes", "3"), "voicebot cluster: --processes 3 is more than the 2 shard(s): each worker "
                                     "needs at least one (raise SHARD_COUNT or run fewer processes)"),
        ({**base, "SHARD_IDS": "0"}, ("--processes", "2"), "voicebot cluster: SHARD_IDS is set: `voicebot cluster` "
                                                           "gives each worker its share itself; leave SHARD_IDS empty "
                                                           "(SHARD_COUNT alone is fine)"),
        ({"SHARD_COUNT": "2"}, ("--processes", "2"),
         "voicebot cluster: DISCORD_TOKEN is not set: the workers have nothing to log in as"),
    ]
    runs = [CliRun("cluster", tmp_path / f"c{i}", env, args=args).start() for i, (env, args, _) in enumerate(cases)]
    for run, (_, _, line) in zip(runs, cases, strict=True):
        done = await asyncio.to_thread(run.finish, DEADLINE)
        assert done.code == 2, done.output
        assert done.stderr.strip().splitlines()[-1] == line
        assert "Traceback" not in done.output and TOKEN not in done.output


async def test_a_database_url_that_cannot_be_used_is_one_line_without_its_password(tmp_path: Path) -> None:
    secret = "s3cret-db-password-0123"
    cases = [
        ("postgresql://postgres@127.0.0.1:5432/vb_no_such_database_here",
         # Every URL's userinfo is masked in output (bot/logs.py), the user name too.
         "voicebot: DATABASE_URL: PostgreSQL at 127.0.0.1:5432/vb_no_such_database_here: that database does not exist"),
        (f"postgresql://postgres:{secret}@127.0.0.1:1/voicebot",
         "voicebot: DATABASE_URL: cannot reach PostgreSQL at 127.0.0.1:1/voicebot"),  # (8-character pieces of the pair are masked too)
    ]
    runs = [CliRun("run", tmp_path / f"d{i}", {"DISCORD_TOKEN": TOKEN, "DATABASE_URL": url, "PRIVACY_KEY": "ab" * 32}).start()
            for i, (url, _) in enumerate(cases)]
    for run, (_, line) in zip(runs, cases, strict=True):
        done = await asyncio.to_thread(run.finish, DEADLINE)
        assert done.code == 2, done.output
        assert done.stderr.strip().splitlines()[-1].startswith(line), done.stderr
        assert secret not in done.output and "Traceback" not in done.output
