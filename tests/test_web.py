"""The web server: /healthz, start/stop on a real port, and serve() carrying an SMS from a real
HTTP request to the agent's reply on the loopback Twilio API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.store import SqliteDatabase as Database
from bot.memory import Memory
from bot.settings import Secret, Settings
from bot.web import WebServer, create_app, serve
from tests.fakes.fake_agent import FakeAgent
from tests.fakes.twilio_server import FakeTwilio, sign_webhook

SID = "AC" + "3" * 32
TOKEN = "web-test-token"
OURS = "+15550009999"
THEM = "+15551112222"
PUBLIC = "https://sms.example.net/voicebot"  # a proxy that strips the /voicebot prefix
ROOT = Path(__file__).resolve().parents[1]


async def test_healthz_reports_parts() -> None:
    app = create_app(health={"discord": lambda: True})
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/healthz")
        assert resp.status == 200
        assert await resp.json() == {"ok": True, "parts": {"web": True, "discord": True}}


async def test_healthz_is_503_when_a_part_is_down(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    app = create_app(health={"discord": lambda: False, "agent": broken})
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/healthz")
        assert resp.status == 503
        assert await resp.json() == {"ok": False, "parts": {"web": True, "discord": False, "agent": False}}
    assert len([r for r in caplog.records if r.name == "bot.web"]) == 1


async def test_web_server_starts_on_a_free_port_and_stops() -> None:
    server = WebServer(create_app(), "127.0.0.1", 0)
    await server.start()
    assert server.port > 0
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/healthz") as resp:
            assert resp.status == 200
        await server.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(server.url + "/healthz"):
                pass
    await server.stop()  # idempotent


def sms_settings(api_base: str | None) -> Settings:
    return Settings(twilio_account_sid=SID, twilio_auth_token=Secret(TOKEN), twilio_phone_number=OURS,
                    twilio_api_base=api_base, public_url=PUBLIC, web_host="127.0.0.1", web_port=0, sms_rate_limit=5)


@pytest.fixture
async def fake_twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(SID, TOKEN) as fake:
        yield fake


async def test_serve_full_path_slow_reply_goes_out_by_rest(fake_twilio: FakeTwilio,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    db = Database.in_memory()
    memory = (await Memory.open(db))
    agent = FakeAgent(memory, replies=["# Story\nOnce upon a **time**, the end."], gate=asyncio.Event())
    stop = asyncio.Event()
    started: asyncio.Future[WebServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(sms_settings(fake_twilio.base_url), agent=agent, memory=memory, store=db, stop=stop,  # type: ignore[arg-type]
              ready=started.set_result, reply_budget=0.01),
        name="test-serve",
    )
    try:
        server = await asyncio.wait_for(started, 10)
        form = {"MessageSid": "SM" + "b" * 32, "AccountSid": SID, "From": THEM, "To": OURS,
                "Body": "tell me a story", "NumMedia": "0"}
        headers = {"X-Twilio-Signature": sign_webhook(TOKEN, PUBLIC + "/twilio/sms", form),
                   "Host": "10.0.0.5:8080", "X-Forwarded-Proto": "http"}  # what a proxy might pass on
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url + "/twilio/sms", data=form, headers=headers) as resp:
                assert resp.status == 200
                assert resp.content_type == "application/xml"
                assert "<Message>" not in await resp.text()
            agent.gate.set()  # type: ignore[union-attr]
            [sent] = await fake_twilio.wait_for_sent(1)
            assert (sent.to, sent.from_, sent.body) == (THEM, OURS, "Story\nOnce upon a time, the end.")
            assert sent.status_callback == PUBLIC + "/twilio/status"

            status_form = {"MessageSid": sent.sid, "MessageStatus": "delivered", "To": THEM, "AccountSid": SID}
            sig = sign_webhook(TOKEN, PUBLIC + "/twilio/status", status_form)
            async with session.post(server.url + "/twilio/status", data=status_form,
                                    headers={"X-Twilio-Signature": sig}) as resp:
                assert resp.status == 204
            async with session.get(server.url + "/healthz") as resp:
                assert (await resp.json())["parts"] == {"web": True, "sms": True}
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    turns = (await memory.recent(f"sms:{THEM}", 10))
    assert [t.role for t in turns] == ["user", "assistant"]
    assert any("delivered" in r.getMessage() for r in caplog.records if r.name == "bot.sms.inbound")
    await db.close()


async def test_serve_without_sms_serves_health_only() -> None:
    db = Database.in_memory()
    memory = (await Memory.open(db))
    stop = asyncio.Event()
    started: asyncio.Future[WebServer] = asyncio.get_running_loop().create_future()
    settings = Settings(web_host="127.0.0.1", web_port=0)
    task = asyncio.create_task(serve(settings, agent=FakeAgent(memory), memory=memory, store=db, stop=stop,  # type: ignore[arg-type]
                                     ready=started.set_result), name="test-serve-health")
    try:
        server = await asyncio.wait_for(started, 10)
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["parts"] == {"web": True}
            async with session.post(server.url + "/twilio/sms", data={"Body": "x"}) as resp:
                assert resp.status == 404
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    await db.close()


async def test_serve_stops_when_cancelled(fake_twilio: FakeTwilio) -> None:
    db = Database.in_memory()
    memory = (await Memory.open(db))
    started: asyncio.Future[WebServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(sms_settings(fake_twilio.base_url), agent=FakeAgent(memory), memory=memory,  # type: ignore[arg-type]
                                     store=db, ready=started.set_result), name="test-serve-cancel")
    server = await asyncio.wait_for(started, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(server.url + "/healthz"):
                pass
    await db.close()


# --- issue 21 item 10: connections that never finish a request --------------------------------------

# The server in a child process whose descriptor limit is lowered first, so running it out of
# descriptors takes a few hundred sockets, not thousands. It prints its port, serves until stdin
# closes, and logs to stderr as `voicebot` does.
SERVER = """
import asyncio, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from bot.logs import setup_logging
from bot.web import WebServer, create_app
from bot.webguard import ConnectionGuard

async def main():
    setup_logging("INFO")
    loop = asyncio.get_running_loop()
    guard = ConnectionGuard(**eval(sys.argv[2])) if len(sys.argv) > 2 else None
    server = WebServer(create_app(), "127.0.0.1", 0, **({"guard": guard} if guard else {}))
    await server.start()
    print(server.port, flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    await server.stop()

asyncio.run(main())
"""


def slow_clients(port: int, n: int, source: str, settle: float = 10.0) -> list[socket.socket]:
    """``n`` connections from ``source`` that each send one header line and never the rest. Returns
    once each is connected (or refused), or after ``settle`` seconds: a server that stopped
    accepting leaves the rest waiting in the kernel's backlog, which is the point."""
    socks = []
    with selectors.DefaultSelector() as waiting:  # epoll: the descriptors may be numbered past 1024
        for _ in range(n):
            sock = socket.socket()
            sock.bind((source, 0))
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            socks.append(sock)
            waiting.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + settle
        while waiting.get_map() and time.monotonic() < deadline:
            for key, _ in waiting.select(deadline - time.monotonic()):
                with contextlib.suppress(OSError):
                    key.fileobj.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n")  # type: ignore[union-attr]
                waiting.unregister(key.fileobj)
    return socks


def healthz_answers(port: int, within: float) -> bool:
    """Whether /healthz answers 200 before ``within`` seconds pass (a failure guard, polled on state)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=deadline - time.monotonic()) as r:
                return r.status == 200
        except (OSError, ValueError):
            time.sleep(0.1)  # refused or reset while the server is overrun: ask again
    return False


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    port: int
    log: list[str]  # its stderr, read as it comes (a log storm must not fill the pipe and stall it)
    reader: threading.Thread

    def stop(self) -> str:
        """Close the server's stdin (it stops and logs what it still holds back); all it logged."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(60)
        self.reader.join(60)
        return "".join(self.log)


@contextlib.contextmanager
def server_process(nofile: int, guard: str | None = None) -> Iterator[ServerProcess]:
    args = [sys.executable, "-c", SERVER, str(nofile), *([guard] if guard else [])]
    proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)})
    log: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    reader = threading.Thread(target=lambda: log.extend(proc.stderr), name="server-stderr", daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), "".join(log)
        yield ServerProcess(proc, int(line), log, reader)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def test_one_address_holding_connections_open_cannot_take_the_server() -> None:
    """A 400-descriptor server and 500 connections from one address that never finish a request:
    the address gets its share (half of what the server holds), the rest are closed at once,
    /healthz answers everyone else, and the refusals are one line, then one summary line."""
    with server_process(400) as server:
        attackers = slow_clients(server.port, 500, "127.0.0.2")
        try:
            assert healthz_answers(server.port, 30), "the server stopped answering"
        finally:
            for sock in attackers:
                sock.close()
        log = server.stop()
    lines = [line for line in log.splitlines() if "web server:" in line]
    assert 1 <= len(lines) <= 2, log[-3000:]
    assert re.search(r"refusing connections \(127\.0\.0\.2 has \d+ open, the most one address may", lines[0])
    assert "accept() failed" not in log and "Traceback" not in log


def test_a_process_out_of_descriptors_logs_one_line_and_recovers_when_slow_clients_are_cut() -> None:
    """With the connection caps out of the way the process does run out of descriptors: asyncio's
    accept() failures (up to 128 a second, each with a traceback) become one line and a count, and
    the slow clients are cut after the header timeout, so /healthz is answered again."""
    caps = "dict(header_timeout=1.0, max_per_address=100000, max_connections=100000, log_interval=3600.0)"
    with server_process(100, caps) as server:
        attackers = slow_clients(server.port, 150, "127.0.0.2")
        try:
            assert healthz_answers(server.port, 60), "the server never recovered"
        finally:
            for sock in attackers:
                sock.close()
        log = server.stop()
    accept = [line for line in log.splitlines() if "accept()" in line]
    assert len(accept) == 2, log[-3000:]  # when it began, and the count when the server stopped
    assert int(accept[1].split("web server: ")[1].split()[0]) >= 10  # many more failures than lines
    cut = [line for line in log.splitlines() if "no complete request" in line or "slow connections" in line]
    assert 1 <= len(cut) <= 2 and "Traceback" not in log, log[-3000:]


async def test_a_request_head_that_never_ends_is_cut() -> None:
    from bot.webguard import ConnectionGuard

    server = WebServer(create_app(), "127.0.0.1", 0, guard=ConnectionGuard(header_timeout=0.5))
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and nothing more, ever
        await writer.drain()
        try:
            assert await asyncio.wait_for(reader.read(), 30) == b""  # closed without an answer
        except ConnectionResetError:
            pass  # closed hard: also closed
        writer.close()
        assert server.guard.connections == 0
    finally:
        await server.stop()
