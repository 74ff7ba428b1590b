"""SMS through a kill -9: a burst of texts, a bot process killed mid-way, Twilio retrying.

Runs the real ``python -m bot serve`` in subprocesses against a loopback Twilio (REST API and
Messages list) and a loopback OpenAI-compatible model whose output is paced by this script, posts
``--messages`` signed webhooks at once (one per phone number) through a Twilio-like retry driver,
and kills a bot with SIGKILL.

- One process (the baseline, SQLite): the bot is started again on the same data directory.
- ``--processes 2 --database postgresql://…``: two bots on one PostgreSQL behind a round-robin load
  balancer (it stops sending to a dead one, as a health-checked balancer does); one is killed and
  not restarted: the other must finish the dead one's texts (Twilio's retries land on it, and its
  sweep takes the rest).

It waits until every delivery got its 200 and the database holds no unfinished message. Prints one
JSON object: how many numbers were answered once, twice, never (targets: all once), before the kill
and after, and ``recovery_seconds``: from the kill until the last text was answered.

    python -m bench.sms_crash --messages 200 --kill-after 1.0
    python -m bench.sms_crash --messages 200 --kill-when-busy 100
    python -m bench.sms_crash --compare --database postgresql://postgres@127.0.0.1:5432/postgres

``--compare`` runs the SQLite baseline and the two PostgreSQL processes in one run (a fresh
database is created beside the one named, and dropped afterwards). What the figures leave out: one
machine (the dead process is judged dead from its pid at once; on another machine its texts wait
for ``SMS_LEASE_SECONDS``), a loopback model and Twilio (no network latency).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.twilio_server import FakeTwilio, TwilioRetrier

__all__ = ["BurstResult", "burst", "main"]

ACCOUNT = "AC" + "5" * 32
TOKEN = "crash-bench-token"
OURS = "+15550007777"
PUBLIC = "https://bot.example.com"
KEY = "sk-crash-bench-0123456789"
ROOT = Path(__file__).resolve().parent.parent
UNFINISHED = ("received", "accepted", "replying", "sending")


@dataclass
class BurstResult:
    messages: int
    processes: int = 1
    backend: str = "sqlite"
    separate_hosts: bool = False  # each process as on a machine of its own: the dead one's leases must expire
    lease_seconds: float | None = None  # SMS_LEASE_SECONDS given to the bots (None: the bot's default, 30)
    answered_once: int = 0
    answered_before_kill: int = 0
    answered_after_restart: int = 0
    never_answered: int = 0
    answered_twice: int = 0
    unfinished_at_kill: dict[str, int] = field(default_factory=dict)  # recorded states the kill left
    resumed_at_start: int = 0  # from the restarted bot's log line
    webhook_attempts: int = 0  # every POST the retry driver made (retries included)
    seconds_to_all_answered: float = 0.0  # from the restart (one process) or the kill (two)
    recovery_seconds: float = 0.0  # from the kill until every text was answered
    taken_over_by_survivor: int = 0  # two processes: texts the survivor finished from the dead one's log lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _number(i: int) -> str:
    return f"+1555{2000000 + i:07d}"


class Bot:
    """``python -m bot serve`` as a subprocess (stderr to a log file)."""

    def __init__(self, data_dir: Path, port: int, twilio: str, openai: str, database_url: str | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.database_url = database_url
        self.port = port
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(data_dir),
            "PYTHONPATH": str(ROOT),
            "DATA_DIR": str(data_dir),
            "TWILIO_ACCOUNT_SID": ACCOUNT,
            "TWILIO_AUTH_TOKEN": TOKEN,
            "TWILIO_PHONE_NUMBER": OURS,
            "TWILIO_API_BASE": twilio,
            "PUBLIC_URL": PUBLIC,
            "WEB_HOST": "127.0.0.1",
            "WEB_PORT": str(port),
            "AGENT_ENGINE": "openai",
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": openai,
            "OPENAI_MODEL": "gpt-test",
            "LOG_LEVEL": "INFO",
        }
        if database_url:
            self.env["DATABASE_URL"] = database_url
            self.env["PRIVACY_KEY"] = "ab" * 32  # every process reads the same opt-out key
        self.command = "serve"  # or "run": the whole bot (needs Discord settings in env)
        # A host name of its own (a UTS namespace, as on another machine): nobody can judge it dead
        # from its pid, so its texts wait for their leases to expire.
        self.host: str | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.logs: list[Path] = []

    async def start(self) -> None:
        log_path = self.data_dir / f"bot-{len(self.logs)}.log"
        self.logs.append(log_path)
        env_file = self.data_dir / "empty.env"  # the bot reads only what the bench sets (a named file must exist)
        env_file.touch()
        with log_path.open("wb") as log_file:
            prefix = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.host] if self.host else []
            self.proc = await asyncio.create_subprocess_exec(
                *prefix, sys.executable, "-m", "bot", "--env-file", str(env_file), self.command,
                cwd=str(self.data_dir), env=self.env, stdout=log_file, stderr=log_file)

    async def wait_ready(self, timeout: float) -> None:
        """Until /healthz answers 200 (every part up: the web side, SMS, and Discord under ``run``)."""
        url = f"http://127.0.0.1:{self.port}/healthz"
        async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
            while True:
                assert self.proc is not None and self.proc.returncode is None, self.log_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)  # polling a predicate; the timeout only guards a failure

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def terminate(self, timeout: float) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def states_async(self) -> dict[str, int]:
        """SMS states where the records are: the SQLite file, or PostgreSQL."""
        if not self.database_url:
            return self.states()
        import asyncpg

        conn = await asyncpg.connect(self.database_url)
        try:
            rows = await conn.fetch("SELECT state, COUNT(*) FROM sms_messages GROUP BY state")
        finally:
            await conn.close()
        return {str(r[0]): int(r[1]) for r in rows}

    def states(self) -> dict[str, int]:
        db = self.data_dir / "voicebot.sqlite3"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return {str(s): int(n) for s, n in conn.execute("SELECT state, COUNT(*) FROM sms_messages GROUP BY state")}
        finally:
            conn.close()


@contextlib.asynccontextmanager
async def _fakes() -> AsyncIterator[tuple[FakeTwilio, FakeOpenAI]]:
    async with FakeTwilio(ACCOUNT, TOKEN) as twilio, FakeOpenAI(api_key=KEY, paced=True) as openai:
        yield twilio, openai


class _Balancer(TwilioRetrier):
    """Twilio's retrier posting through a round-robin load balancer over the live bots."""

    def __init__(self, twilio: FakeTwilio, bots: list[Bot], public_url: str, *, give_up: float) -> None:
        super().__init__(twilio, "", public_url, give_up=give_up)
        self.bots = bots
        self._turn = 0

    @property  # type: ignore[override]
    def url(self) -> str:
        live = [b for b in self.bots if b.alive] or self.bots
        self._turn += 1
        return f"http://127.0.0.1:{live[self._turn % len(live)].port}/twilio/sms"

    @url.setter
    def url(self, _value: str) -> None:
        pass


async def burst(messages: int = 200, *, kill_after: float | None = None, kill_when_busy: int | None = None,
                data_dir: Path | None = None, timeout: float = 240.0, processes: int = 1,
                database_url: str | None = None, lease: float | None = None,
                separate_hosts: bool = False) -> BurstResult:
    """Run the burst. Kill after ``kill_after`` seconds (a benchmark) or, for tests, once at least
    ``kill_when_busy`` replies have reached the model (state, not time).

    One process: killed, then started again. Two (``database_url`` a PostgreSQL database they
    share): the first is killed and stays dead; the second finishes everything. ``separate_hosts``:
    each runs under a host name of its own (``unshare --uts``), as on two machines."""
    if processes not in (1, 2):
        raise ValueError("processes must be 1 or 2")
    if processes > 1 and not database_url:
        raise ValueError("several processes share one PostgreSQL database: pass database_url")
    result = BurstResult(messages, processes=processes, backend="postgresql" if database_url else "sqlite",
                         separate_hosts=separate_hosts, lease_seconds=lease)
    # The dead process's half-read model streams make the loopback model log every broken write.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sms-crash-")))
        async with _fakes() as (twilio, openai):
            bots = [Bot(data_dir if processes == 1 else data_dir / f"p{k}", _free_port(), twilio.base_url,
                        openai.base_url, database_url) for k in range(processes)]
            for k, bot in enumerate(bots):
                if lease is not None:
                    bot.env["SMS_LEASE_SECONDS"] = str(lease)
                if separate_hosts:
                    bot.host = f"sms-crash-machine-{k}"
            victim = bots[0]
            try:
                await asyncio.gather(*(b.start() for b in bots))
                await asyncio.gather(*(b.wait_ready(timeout) for b in bots))
                async with _Balancer(twilio, bots, PUBLIC + "/twilio/sms", give_up=timeout) as driver:
                    forms = [{"MessageSid": f"SM{i:032d}", "SmsSid": f"SM{i:032d}", "AccountSid": ACCOUNT,
                              "From": _number(i), "To": OURS, "Body": f"message number {i}", "NumMedia": "0"}
                             for i in range(messages)]
                    # The model answers about 100 replies a second until the kill (5 chunks each).
                    pacer = asyncio.create_task(_pace(openai), name="bench-pacer")
                    deliveries = [asyncio.create_task(driver.deliver(f), name=f"deliver-{f['MessageSid']}")
                                  for f in forms]
                    if kill_after is not None:
                        await asyncio.sleep(kill_after)  # the benchmark's one second in
                    else:
                        assert kill_when_busy is not None
                        async with asyncio.timeout(timeout):
                            while len(openai.completion_requests) < kill_when_busy or not twilio.answers_to_any():
                                await asyncio.sleep(0.02)  # polling a predicate
                    victim.kill()
                    assert victim.proc is not None
                    await victim.proc.wait()
                    killed = time.monotonic()
                    pacer.cancel()
                    await asyncio.gather(pacer, return_exceptions=True)
                    killed_at = time.time()
                    before = {f["From"] for f in forms if twilio.answers_to(f["From"])}
                    result.answered_before_kill = len(before)
                    result.unfinished_at_kill = {s: n for s, n in (await victim.states_async()).items()
                                                 if s in UNFINISHED}
                    openai.paced = False
                    openai.allow(100_000)  # lets the dead process's streams end
                    restarted = time.monotonic()
                    if processes == 1:
                        await victim.start()
                        await victim.wait_ready(timeout)
                    async with asyncio.timeout(timeout):
                        await asyncio.gather(*deliveries)
                        while True:
                            states = await victim.states_async()
                            if not any(states.get(s) for s in UNFINISHED):
                                break
                            await asyncio.sleep(0.05)  # polling a predicate
                    done = time.monotonic()
                    result.seconds_to_all_answered = round(done - restarted, 2)
                    result.recovery_seconds = round(done - killed, 2)
                    result.webhook_attempts = sum(len(d.attempts) for d in driver.deliveries)
                    for f in forms:
                        answers = twilio.answers_to(f["From"])
                        if not answers:
                            result.never_answered += 1
                        elif len(answers) > 1:
                            result.answered_twice += 1
                        else:
                            result.answered_once += 1
                        if answers and f["From"] not in before and min(a.date_created for a in answers) >= killed_at:
                            result.answered_after_restart += 1
                survivors = [b for b in bots if b.alive] if processes > 1 else [victim]
                codes = [await b.terminate(timeout) for b in survivors]
                log = "\n".join(b.log_text() for b in survivors)
                for line in log.splitlines():
                    if "left unfinished by the last run" in line:
                        n = int(line.split("Finishing ")[1].split(" ")[0])
                        if processes == 1:
                            result.resumed_at_start = n
                            break
                        result.taken_over_by_survivor += n
                    elif processes > 1 and "Twilio retried a message left" in line:
                        result.taken_over_by_survivor += 1
                if any(code != 0 for code in codes):
                    raise RuntimeError(f"a bot exited with {codes} on SIGTERM:\n{log[-4000:]}")
            finally:
                for bot in bots:
                    if bot.alive:
                        bot.kill()
                        assert bot.proc is not None
                        await bot.proc.wait()
    return result


async def _pace(openai: FakeOpenAI) -> None:
    while True:
        openai.allow(5)
        await asyncio.sleep(0.01)  # a model's throughput, not synchronisation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--kill-after", type=float, default=1.0, help="seconds after the burst starts")
    parser.add_argument("--kill-when-busy", type=int, metavar="N",
                        help="kill instead once N replies reached the model and one was answered (what the test does)")
    parser.add_argument("--processes", type=int, default=1, choices=(1, 2))
    parser.add_argument("--database", metavar="URL", help="a PostgreSQL database the bots share (DATABASE_URL)")
    parser.add_argument("--lease", type=float, help="SMS_LEASE_SECONDS for the bots (default: the bot's)")
    parser.add_argument("--separate-hosts", action="store_true",
                        help="run each bot under a host name of its own (unshare --uts; needs root), as on two "
                             "machines: the dead one's texts wait for their leases")
    parser.add_argument("--compare", action="store_true",
                        help="one process on SQLite, then two on a fresh PostgreSQL database beside --database")
    args = parser.parse_args(argv)
    kill = {"kill_when_busy": args.kill_when_busy} if args.kill_when_busy is not None else {"kill_after": args.kill_after}
    if args.compare:
        if not args.database:
            parser.error("--compare needs --database (a PostgreSQL server's database to create a fresh one beside)")
        out: dict[str, Any] = {"baseline_sqlite_1_process": asdict(asyncio.run(burst(args.messages, **kill)))}
        url = asyncio.run(_fresh_database(args.database))
        try:
            out["postgresql_2_processes"] = asdict(asyncio.run(burst(args.messages, processes=2, database_url=url,
                                                                     lease=args.lease, **kill)))
            if args.separate_hosts:
                asyncio.run(_drop_database(args.database, url))
                url = asyncio.run(_fresh_database(args.database))
                out["postgresql_2_processes_2_hosts"] = asdict(asyncio.run(burst(
                    args.messages, processes=2, database_url=url, lease=args.lease, separate_hosts=True, **kill)))
        finally:
            asyncio.run(_drop_database(args.database, url))
        results = list(out.values())
    else:
        one = asdict(asyncio.run(burst(args.messages, processes=args.processes, database_url=args.database,
                                       lease=args.lease, separate_hosts=args.separate_hosts, **kill)))
        out = one
        results = [one]
    out["target_met"] = all(r["never_answered"] == 0 and r["answered_twice"] == 0 for r in results)
    print(json.dumps(out, indent=2))
    return 0 if out["target_met"] else 1


async def _fresh_database(url: str) -> str:
    import uuid

    import asyncpg

    name = f"sms_crash_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await conn.close()
    return url.rsplit("/", 1)[0] + "/" + name


async def _drop_database(admin_url: str, url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


if __name__ == "__main__":
    raise SystemExit(main())
