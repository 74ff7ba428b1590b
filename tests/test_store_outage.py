"""Issue 22 item 6: PostgreSQL going away while the bot runs. A real ``voicebot chat`` process keeps its
store on PostgreSQL behind a TCP proxy (tests/fakes/tcp_proxy.py); the proxy cuts every connection and
refuses new ones; the bot keeps answering; when the proxy lets connections through again, every turn
said meanwhile is written — while the process still runs, not only at its exit."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from bot.store import PostgresDatabase
from tests.cli_runs import ROOT
from tests.fakes.tcp_proxy import TcpProxy

DEADLINE = 60.0


async def _reply(proc: asyncio.subprocess.Process) -> str:
    """Read up to the next prompt; return the bot's answer line (``Wren> …``)."""
    assert proc.stdout is not None
    text = (await asyncio.wait_for(proc.stdout.readuntil(b"you> "), DEADLINE)).decode()
    return text.removesuffix("you> ").strip()


async def test_the_bot_keeps_answering_while_postgresql_is_away_and_writes_the_turns_when_it_returns(
        pg_url: str, tmp_path: Path) -> None:
    parts = urlsplit(pg_url)
    direct = await PostgresDatabase.connect(pg_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        url = parts._replace(netloc=f"{parts.username or 'postgres'}@{proxy.host_port}").geturl()
        (tmp_path / "empty.env").write_text("")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
               "DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": url, "PRIVACY_KEY": "ab" * 32, "AGENT_ENGINE": "eliza",
               "STT_ENGINE": "none", "TTS_ENGINE": "none", "LOG_LEVEL": "WARNING"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "--env-file", str(tmp_path / "empty.env"), "chat",
            env=env, cwd=tmp_path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert proc.stdin is not None and proc.stderr is not None
        log: list[str] = []
        logged = asyncio.Condition()

        async def read_log() -> None:
            assert proc.stderr is not None
            async for line in proc.stderr:
                log.append(line.decode(errors="replace"))
                async with logged:
                    logged.notify_all()

        reader = asyncio.create_task(read_log())

        async def log_shows(text: str) -> None:
            try:
                async with logged:
                    await asyncio.wait_for(logged.wait_for(lambda: any(text in line for line in log)), DEADLINE)
            except TimeoutError:
                raise AssertionError(f"the bot never logged {text!r}; its log:\n" + "".join(log)[-6000:]) from None

        try:
            await _reply(proc)  # the banner and the first prompt
            proc.stdin.write(b"hello there\n")
            await proc.stdin.drain()
            assert (await _reply(proc)).startswith("Wren>")

            proxy.cut()  # PostgreSQL goes away
            for line in (b"I feel a bit odd today\n", b"my mother called me\n", b"are you still there?\n"):
                proc.stdin.write(line)
                await proc.stdin.drain()
                answer = await _reply(proc)
                assert answer.startswith("Wren>") and len(answer) > len("Wren> "), answer

            # Memory's writer tried (and kept the turns) before the database comes back: its log says so.
            await log_shows("Storing turns failed")
            proxy.restore()  # it returns: all eight turns are written while the bot runs
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DEADLINE
            while True:
                tables = await direct.tables()
                stored = await direct.scalar("SELECT COUNT(*) FROM turns") if "turns" in tables else 0
                if stored == 8:
                    break
                assert loop.time() < deadline, f"{stored} of 8 turns written after the database returned:\n" + \
                    "".join(log)[-6000:]
                await asyncio.sleep(0.1)  # polling the database; the deadline only guards a failure
            said = [r[0] for r in await direct.query("SELECT text FROM turns WHERE role = 'user' ORDER BY id")]
            assert said == ["hello there", "I feel a bit odd today", "my mother called me", "are you still there?"]
            assert proxy.refused > 0  # the bot did try while it was away

            proc.stdin.write(b"/quit\n")
            await proc.stdin.drain()
            assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
            await reader
            errors = "".join(log)
            assert "takes turns again" in errors, errors
            # The outage is told in lines, not tracebacks (each component says once what failed and why).
            assert "Traceback" not in errors and "never awaited" not in errors and "never retrieved" not in errors, errors
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            reader.cancel()
    await direct.close()


def test_a_connection_the_server_closed_is_an_outage_not_the_end() -> None:
    # asyncpg says "connection is closed" when the server or the network drops a connection; memory's
    # writer once read that as "this process closed its database", stopped and dropped its queue.
    from bot.memory import _closed_for_good
    from bot.store import DatabaseClosed, DatabaseError

    assert not _closed_for_good(DatabaseError("PostgreSQL at postgresql://h/db is unreachable: connection is closed"))
    assert not _closed_for_good(DatabaseError("PostgreSQL at postgresql://h/db is unreachable: pool is closed"))
    assert _closed_for_good(DatabaseClosed("SQLite at /x is closed"))
