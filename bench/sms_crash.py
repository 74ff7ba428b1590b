"""SMS through a kill -9: a burst of texts, the bot killed mid-way, restarted, Twilio retrying.

Runs the real ``python -m bot serve`` in a subprocess against a loopback Twilio (REST API and
Messages list) and a loopback OpenAI-compatible model whose output is paced by this script, posts
``--messages`` signed webhooks at once (one per phone number) through a Twilio-like retry driver,
kills the bot with SIGKILL, starts it again on the same data directory, and waits until every
delivery got its 200 and the database holds no unfinished message. Prints one JSON object: how
many numbers were answered before the kill and after the restart, how many never, and how many
twice (the targets: all answered, none twice).

    python -m bench.sms_crash --messages 200 --kill-after 1.0
    python -m bench.sms_crash --messages 200 --kill-when-busy 100
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
    answered_before_kill: int = 0
    answered_after_restart: int = 0
    never_answered: int = 0
    answered_twice: int = 0
    unfinished_at_kill: dict[str, int] = field(default_factory=dict)  # recorded states the kill left
    resumed_at_start: int = 0  # from the restarted bot's log line
    webhook_attempts: int = 0  # every POST the retry driver made (retries included)
    seconds_to_all_answered: float = 0.0  # from the restart


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _number(i: int) -> str:
    return f"+1555{2000000 + i:07d}"


class Bot:
    """``python -m bot serve`` as a subprocess (stderr to a log file)."""

    def __init__(self, data_dir: Path, port: int, twilio: str, openai: str) -> None:
        self.data_dir = data_dir
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
        self.command = "serve"  # or "run": the whole bot (needs Discord settings in env)
        self.proc: asyncio.subprocess.Process | None = None
        self.logs: list[Path] = []

    async def start(self) -> None:
        log_path = self.data_dir / f"bot-{len(self.logs)}.log"
        self.logs.append(log_path)
        env_file = self.data_dir / "empty.env"  # the bot reads only what the bench sets (a named file must exist)
        env_file.touch()
        with log_path.open("wb") as log_file:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "--env-file", str(env_file), self.command,
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


async def burst(messages: int = 200, *, kill_after: float | None = None, kill_when_busy: int | None = None,
                data_dir: Path | None = None, timeout: float = 240.0) -> BurstResult:
    """Run the burst. Kill after ``kill_after`` seconds (a benchmark) or, for tests, once at least
    ``kill_when_busy`` replies have reached the model (state, not time)."""
    result = BurstResult(messages)
    # The dead process's half-read model streams make the loopback model log every broken write.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sms-crash-")))
        async with _fakes() as (twilio, openai):
            bot = Bot(data_dir, _free_port(), twilio.base_url, openai.base_url)
            await bot.start()
            try:
                await bot.wait_ready(timeout)
                url = f"http://127.0.0.1:{bot.port}/twilio/sms"
                async with TwilioRetrier(twilio, url, PUBLIC + "/twilio/sms", give_up=timeout) as driver:
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
                    bot.kill()
                    assert bot.proc is not None
                    await bot.proc.wait()
                    pacer.cancel()
                    await asyncio.gather(pacer, return_exceptions=True)
                    killed_at = time.time()
                    before = {f["From"] for f in forms if twilio.answers_to(f["From"])}
                    result.answered_before_kill = len(before)
                    result.unfinished_at_kill = {s: n for s, n in bot.states().items() if s in UNFINISHED}
                    openai.paced = False
                    openai.allow(100_000)  # lets the dead process's streams end
                    restarted = time.monotonic()
                    await bot.start()
                    await bot.wait_ready(timeout)
                    async with asyncio.timeout(timeout):
                        await asyncio.gather(*deliveries)
                        while any(bot.states().get(s) for s in UNFINISHED):
                            await asyncio.sleep(0.05)  # polling a predicate
                    result.seconds_to_all_answered = round(time.monotonic() - restarted, 2)
                    result.webhook_attempts = sum(len(d.attempts) for d in driver.deliveries)
                    for f in forms:
                        answers = twilio.answers_to(f["From"])
                        if not answers:
                            result.never_answered += 1
                        elif len(answers) > 1:
                            result.answered_twice += 1
                        if answers and f["From"] not in before and min(a.date_created for a in answers) >= killed_at:
                            result.answered_after_restart += 1
                code = await bot.terminate(timeout)
                log = bot.log_text()
                for line in log.splitlines():
                    if "left unfinished by the last run" in line:
                        result.resumed_at_start = int(line.split("Finishing ")[1].split(" ")[0])
                if code != 0:
                    raise RuntimeError(f"the bot exited with {code} on SIGTERM:\n{log[-4000:]}")
            finally:
                if bot.proc is not None and bot.proc.returncode is None:
                    bot.kill()
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
    args = parser.parse_args(argv)
    if args.kill_when_busy is not None:
        result = asyncio.run(burst(args.messages, kill_when_busy=args.kill_when_busy))
    else:
        result = asyncio.run(burst(args.messages, kill_after=args.kill_after))
    out: dict[str, Any] = asdict(result)
    out["target_met"] = result.never_answered == 0 and result.answered_twice == 0
    print(json.dumps(out, indent=2))
    return 0 if out["target_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
