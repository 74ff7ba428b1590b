"""A hostile loopback service that answers every request with an error echoing its credentials.

Every path is ``/{run}/{status}/...``: the request is answered with HTTP ``status`` (401, 429, 500,
503...) and a JSON body whose every usual error field (OpenAI's ``error.message``, Discord's
``message``, ElevenLabs' ``detail.message``, Twilio's ``message``) quotes the credentials it was
sent, whole and masked as OpenAI masks a wrong key (first 16 and last 4 characters): the
``Authorization`` header (and, for Basic, its decoded ``user:password``), ``xi-api-key``,
``Token``/``Bearer`` values, the query string. The same values come back in response headers.
Retry hints are tiny so clients' retries end at once. Requests are recorded per ``run`` so a test
knows which credentials each command actually sent (and had echoed back), and can wait for a run's
first request (:meth:`EchoServer.wait_for_request`).

It serves any HTTP client and refuses WebSocket handshakes (Deepgram) the same way. It runs in a
thread of its own so tests can drive subprocesses against it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.fakes.loopback_http import serve_on_loopback

__all__ = ["EchoServer"]


def _credentials(request: web.Request) -> list[str]:
    seen: list[str] = []
    for name in ("Authorization", "xi-api-key", "X-Api-Key", "Api-Key"):
        value = request.headers.get(name)
        if not value:
            continue
        seen.append(value)
        scheme, _, rest = value.partition(" ")
        if rest:
            seen.append(rest)
            if scheme.lower() == "basic":
                try:
                    seen.append(base64.b64decode(rest, validate=True).decode())
                except (binascii.Error, UnicodeDecodeError):
                    pass
    if request.query_string:
        seen.append(request.query_string)
    return seen


class EchoServer:
    """Start with :meth:`start` (returns the base URL), stop with :meth:`stop`."""

    def __init__(self) -> None:
        self.base_url = ""
        self.seen: dict[str, list[str]] = defaultdict(list)  # run -> credentials received
        self.requests: dict[str, int] = defaultdict(int)  # run -> requests answered
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="echo-server", daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> str:
        self._thread.start()
        app = web.Application()
        app.router.add_route("*", "/{run}/{status:\\d{3}}/{tail:.*}", self._answer)
        self._runner, self.base_url = asyncio.run_coroutine_threadsafe(
            serve_on_loopback(app, shutdown_timeout=0.5), self._loop).result(30)
        return self.base_url

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def credentials(self, run: str) -> list[str]:
        with self._lock:
            return list(self.seen.get(run, ()))

    def wait_for_request(self, run: str, *, gone: Callable[[], bool] = lambda: False,
                         timeout: float = 120.0) -> None:
        """Return as soon as ``run`` has sent a request (woken by the request itself); raise if
        ``gone()`` becomes true first (the client exited) or ``timeout`` passes (a failure guard)."""
        deadline = time.monotonic() + timeout
        with self._answered:
            while not self.requests.get(run):
                if gone():
                    raise AssertionError(f"{run} exited before it sent a request")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{run} sent no request in {timeout} s")
                self._answered.wait(0.5)  # woken by the request; the 0.5 s only re-checks gone()

    async def _answer(self, request: web.Request) -> web.Response:
        status = int(request.match_info["status"])
        creds = _credentials(request)
        with self._answered:
            self.seen[request.match_info["run"]].extend(creds)
            self.requests[request.match_info["run"]] += 1
            self._answered.notify_all()
        # Whole, and masked the way OpenAI quotes a wrong key (its first 16 and last 4 characters).
        masked = [f"{c[:16]}{'*' * 8}{c[-4:]}" for c in creds if len(c) > 24]
        echo = " | ".join([*creds, *masked]) or "(none)"
        message = f"Invalid credentials provided: {echo} for {request.path_qs}"
        body: dict[str, Any] = {
            "error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key", "param": None},
            "message": message,
            "detail": {"status": "invalid_api_key", "message": message},
            "code": 20003 if status == 401 else 0,
            "status": status,
            "more_info": message,
            "retry_after": 0.01,  # Discord's 429 field: a quick retry
            "global": False,
        }
        headers = {
            "X-Echo-Credentials": echo.replace("\n", " ")[:4000],
            "WWW-Authenticate": f'Bearer realm="echo", error_description="{echo[:2000]}"',
            "retry-after-ms": "1",
            "Retry-After": "0",
            "Via": "1.1 echo",  # discord.py takes a 429 without Via for a Cloudflare ban
        }
        return web.json_response(body, status=status, headers=headers)
