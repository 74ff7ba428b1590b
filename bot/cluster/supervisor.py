"""``voicebot cluster --processes N``: N bot workers on this machine, each with its share of the shards.

The shard count is ``SHARD_COUNT`` (or ``--shard-count``) or, when neither is set, the count
Discord recommends (``GET /gateway/bot``); the shards are split into N contiguous ranges, worker ``i``
running ``voicebot run --shard-ids A-B --shard-count C`` with ``WEB_PORT + i`` and the process name
``PROCESS_NAME-i`` (host name when unset). Every worker registers in the database they share
(``DATABASE_URL``; without it the SQLite file in ``DATA_DIR``, shared on this machine).

A worker that exits is started again after a backoff (1 s, doubling to 60 s; back to 1 s once it
ran a minute). SIGTERM or SIGINT stops every worker the way one process stops (SIGTERM: replies and
calls in flight drain) and kills one that is still running after ``SMS_SHUTDOWN_GRACE`` + 30 s.

The supervisor prints one status line per worker when it starts, exits or is started again; the
workers' own logs go to the same standard error as the supervisor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from bot.settings import Settings
from bot.shards import describe_shards

__all__ = ["Supervisor", "WorkerSpec", "recommended_shards", "split_shards"]

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
STEADY_AFTER = 60.0  # a worker that ran this long starts again after the first backoff
KILL_AFTER_GRACE = 30.0  # beyond SMS_SHUTDOWN_GRACE before a worker that does not stop is killed


def split_shards(shard_count: int, processes: int) -> list[tuple[int, ...]]:
    """``shard_count`` shards as ``processes`` contiguous ranges, the first ones one larger when uneven."""
    if processes < 1:
        raise ValueError("--processes must be at least 1")
    if processes > shard_count:
        raise ValueError(f"--processes {processes} is more than the {shard_count} shard(s): each worker needs at "
                         "least one (raise SHARD_COUNT or run fewer processes)")
    size, extra = divmod(shard_count, processes)
    ranges, start = [], 0
    for i in range(processes):
        end = start + size + (1 if i < extra else 0)
        ranges.append(tuple(range(start, end)))
        start = end
    return ranges


async def recommended_shards(settings: Settings) -> int:
    """Discord's recommended shard count for this token (``GET /gateway/bot``)."""
    import aiohttp

    assert settings.discord_token is not None
    base = (settings.discord_api_base or "https://discord.com/api/v10").rstrip("/")
    context = ssl.create_default_context(cafile=str(settings.discord_ca_file)) if settings.discord_ca_file else None
    headers = {"Authorization": f"Bot {settings.discord_token.get()}", "User-Agent": "DiscordBot (voicebot, 1)"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context) if context else None) as session:
        async with session.get(f"{base}/gateway/bot", headers=headers,
                               timeout=aiohttp.ClientTimeout(total=30)) as response:
            if response.status == 401:
                raise ValueError("DISCORD_TOKEN was rejected by Discord (401): reset the token on the Bot page")
            response.raise_for_status()
            return max(1, int((await response.json())["shards"]))


@dataclass
class WorkerSpec:
    index: int
    shard_ids: tuple[int, ...]
    shard_count: int
    port: int
    name: str


@dataclass
class _Worker:
    spec: WorkerSpec
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    starts: int = 0
    backoff: float = BACKOFF_FIRST
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Starts the workers, restarts those that die, stops them all on SIGTERM/SIGINT."""

    def __init__(self, settings: Settings, specs: Sequence[WorkerSpec], *, out: TextIO,
                 env_file: Path | None = None, python: str = sys.executable) -> None:
        self.settings = settings
        self.workers = [_Worker(spec) for spec in specs]
        self.out = out
        self.env_file = env_file
        self.python = python
        self.stopping = asyncio.Event()

    def _status(self, worker: _Worker, what: str) -> None:
        spec = worker.spec
        self.out.write(f"worker {spec.index} ({spec.name}): shards {describe_shards(spec.shard_ids)} of "
                       f"{spec.shard_count}, port {spec.port}: {what}\n")
        self.out.flush()

    def _argv(self, spec: WorkerSpec) -> list[str]:
        argv = [self.python, "-m", "bot"]
        if self.env_file is not None:
            argv += ["--env-file", str(self.env_file)]
        return argv + ["run", "--shard-ids", describe_shards(spec.shard_ids).replace(" ", ""),
                       "--shard-count", str(spec.shard_count)]

    async def _start(self, worker: _Worker) -> None:
        import os

        env = {**os.environ, "WEB_PORT": str(worker.spec.port), "PROCESS_NAME": worker.spec.name}
        worker.proc = await asyncio.create_subprocess_exec(*self._argv(worker.spec), env=env, stdin=asyncio.subprocess.DEVNULL)
        worker.started_at = time.monotonic()
        worker.starts += 1
        self._status(worker, f"started, pid {worker.proc.pid}" + (f" (start {worker.starts})" if worker.starts > 1 else ""))

    async def _keep(self, worker: _Worker) -> None:
        """Run one worker until the supervisor stops, starting it again when it exits."""
        while not self.stopping.is_set():
            await self._start(worker)
            assert worker.proc is not None
            code = await worker.proc.wait()
            if self.stopping.is_set():
                return
            ran = time.monotonic() - worker.started_at
            if ran >= STEADY_AFTER:
                worker.backoff = BACKOFF_FIRST
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            self._status(worker, f"exited ({how}) after {ran:.0f} s; starting again in {worker.backoff:g} s")
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(worker.backoff):
                    await self.stopping.wait()
            worker.backoff = min(BACKOFF_MAX, worker.backoff * 2)

    async def _stop_all(self) -> None:
        grace = self.settings.sms_shutdown_grace + KILL_AFTER_GRACE
        running = [w for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for worker in running:
            assert worker.proc is not None
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)

        async def reap(worker: _Worker) -> None:
            assert worker.proc is not None
            try:
                async with asyncio.timeout(grace):
                    code = await worker.proc.wait()
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                code = await worker.proc.wait()
                self._status(worker, f"killed: still running {grace:g} s after SIGTERM")
                return
            self._status(worker, "stopped" if code == 0 else f"stopped with exit status {code}")

        await asyncio.gather(*(reap(w) for w in running))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)
        for worker in self.workers:
            worker.task = asyncio.create_task(self._keep(worker), name=f"worker-{worker.spec.index}")
        try:
            await self.stopping.wait()
        finally:
            self.stopping.set()
            # Workers between their exit and their next start wake from the backoff and return;
            # those running are stopped here.
            await self._stop_all()
            await asyncio.gather(*(w.task for w in self.workers if w.task is not None), return_exceptions=True)
        return 0


def worker_specs(settings: Settings, processes: int, shard_count: int) -> list[WorkerSpec]:
    base = settings.process_name or socket.gethostname()
    specs = []
    for i, ids in enumerate(split_shards(shard_count, processes)):
        port = settings.web_port + i
        if port > 65535:
            raise ValueError(f"WEB_PORT {settings.web_port} + {processes - 1} workers passes port 65535: lower WEB_PORT")
        specs.append(WorkerSpec(index=i, shard_ids=ids, shard_count=shard_count, port=port, name=f"{base}-{i}"))
    return specs


async def run_cluster(settings: Settings, processes: int, out: TextIO, env_file: Path | None) -> int:
    if settings.shard_ids is not None:
        raise ValueError("SHARD_IDS is set: `voicebot cluster` gives each worker its share itself; leave SHARD_IDS "
                         "empty (SHARD_COUNT alone is fine)")
    count = settings.shard_count
    if count is None:
        count = await recommended_shards(settings)
        out.write(f"Discord recommends {count} shard(s) for this bot\n")
    specs = worker_specs(settings, processes, count)
    if not settings.database_url:
        out.write(f"workers share the SQLite database in {settings.data_dir.absolute()} (one machine only; "
                  "set DATABASE_URL to a PostgreSQL database to add machines)\n")
    return await Supervisor(settings, specs, out=out, env_file=env_file).run()
