"""A loopback stand-in for Twilio's REST API (the Messages resource) and a webhook signer.

Speaks the real wire protocol the twilio SDK uses: ``POST /2010-04-01/Accounts/{sid}/Messages.json``
with HTTP Basic auth (Account SID : Auth Token) and a form-encoded body (``To``, ``From``, ``Body``,
``StatusCallback``...); answers 201 with a message resource shaped like Twilio's, or an error in
Twilio's legacy error shape ``{"code", "message", "more_info", "status"}``.

Errors are scripted: :meth:`FakeTwilio.fail_next` queues responses consumed one per request.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from aiohttp import web
from twilio.request_validator import RequestValidator

from tests.fakes.loopback_http import serve_on_loopback

__all__ = ["FakeTwilio", "SentMessage", "sign_webhook"]


def sign_webhook(auth_token: str, url: str, form: dict[str, str]) -> str:
    """The ``X-Twilio-Signature`` Twilio would send for ``form`` posted to ``url``."""
    return RequestValidator(auth_token).compute_signature(url, form)


@dataclass(frozen=True)
class SentMessage:
    sid: str
    to: str
    from_: str
    body: str
    status_callback: str | None
    user_agent: str


@dataclass(frozen=True)
class _Scripted:
    status: int
    code: int | None
    message: str
    raw: str | None = None  # a non-JSON body (e.g. an HTML 503 from a proxy)


class FakeTwilio:
    """An aiohttp server on 127.0.0.1 (port 0) playing the Twilio Messages API."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.sent: list[SentMessage] = []
        self.attempts = 0  # every POST that reached the Messages endpoint, failed or not
        self.unauthorized = 0
        self._script: deque[_Scripted] = deque()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def fail_next(self, status: int, code: int | None = None, message: str = "scripted failure", *, raw: str | None = None,
                  times: int = 1) -> None:
        """Answer the next ``times`` requests with this error instead of creating a message."""
        for _ in range(times):
            self._script.append(_Scripted(status, code, message, raw))

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._create_message)
        app.router.add_get("/2010-04-01/Accounts/{sid}.json", self._fetch_account)
        self._runner, self.base_url = await serve_on_loopback(app, access_log=None)
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTwilio:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for_sent(self, count: int, timeout: float = 10.0) -> list[SentMessage]:
        """Wait until at least ``count`` messages were created (the timeout only guards failures)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.sent) >= count)
        return list(self.sent)

    async def wait_for_attempts(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: self.attempts >= count)

    def _error(self, status: int, code: int | None, message: str) -> web.Response:
        body: dict[str, Any] = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}" if code else None,
            "status": status,
        }
        return web.json_response(body, status=status)

    def _authorized(self, request: web.Request) -> bool:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return request.headers.get("Authorization") == expected and request.match_info["sid"] == self.account_sid

    async def _fetch_account(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        return web.json_response({
            "sid": self.account_sid, "friendly_name": "Test Account", "status": "active", "type": "Full",
            "owner_account_sid": self.account_sid, "auth_token": "[redacted]", "date_created": None,
            "date_updated": None, "uri": f"/2010-04-01/Accounts/{self.account_sid}.json", "subresource_uris": {},
        })

    async def _create_message(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            self.unauthorized += 1
            await self._notify()
            return self._error(401, 20003, "Authenticate")
        form = await request.post()
        self.attempts += 1
        try:
            if self._script:
                scripted = self._script.popleft()
                if scripted.raw is not None:
                    return web.Response(status=scripted.status, text=scripted.raw, content_type="text/html")
                return self._error(scripted.status, scripted.code, scripted.message)
            missing = [f for f in ("To", "From", "Body") if not form.get(f)]
            if missing:
                return self._error(400, 21604 if "To" in missing else 21602, f"Missing {', '.join(missing)}")
            body = str(form["Body"])
            if len(body) > 1600:
                return self._error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
            sid = "SM" + secrets.token_hex(16)
            sent = SentMessage(sid, str(form["To"]), str(form["From"]), body,
                               str(form["StatusCallback"]) if "StatusCallback" in form else None,
                               request.headers.get("User-Agent", ""))
            self.sent.append(sent)
            now = formatdate(usegmt=True)  # Twilio dates are RFC 2822
            return web.json_response(
                {
                    "account_sid": self.account_sid,
                    "api_version": "2010-04-01",
                    "body": body,
                    "date_created": now,
                    "date_sent": None,
                    "date_updated": now,
                    "direction": "outbound-api",
                    "error_code": None,
                    "error_message": None,
                    "from": sent.from_,
                    "messaging_service_sid": None,
                    "num_media": "0",
                    "num_segments": str(max(1, -(-len(body) // 153))),
                    "price": None,
                    "price_unit": "USD",
                    "sid": sid,
                    "status": "queued",
                    "subresource_uris": {"media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}/Media.json"},
                    "to": sent.to,
                    "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
                },
                status=201,
            )
        finally:
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
