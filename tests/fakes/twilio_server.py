"""A loopback stand-in for Twilio's REST API (the Messages resource) and a webhook signer.

Speaks the real wire protocol the twilio SDK uses: ``POST /2010-04-01/Accounts/{sid}/Messages.json``
with HTTP Basic auth (Account SID : Auth Token) and a form-encoded body (``To``, ``From``, ``Body``,
``StatusCallback``...); answers 201 with a message resource shaped like Twilio's, or an error in
Twilio's legacy error shape ``{"code", "message", "more_info", "status"}``.

Errors are scripted: :meth:`FakeTwilio.fail_next` queues responses consumed one per request, each
either instead of creating the message or, like the real service at times, after creating it (an
error answer, or the connection dropped with no answer at all: :meth:`FakeTwilio.drop_next`);
:meth:`FakeTwilio.hold_next` holds the next create request open (before or after the message is
created), which is how a test stands for a process dying in the middle of a send. A body may be
rewritten on the way in, as a trial account's prefix or Smart Encoding rewrites it
(:attr:`FakeTwilio.rewrite`): the list then shows the rewritten body.

``GET /2010-04-01/Accounts/{sid}/Messages.json`` is Twilio's Messages list with its filters as the
SDK sends them: ``To``, ``From``, ``DateSent`` / ``DateSent<`` / ``DateSent>`` (a ``YYYY-MM-DD`` day
in GMT, or a full ``YYYY-MM-DDTHH:MM:SSZ``; messages never sent do not match a date filter),
newest first, paged with ``PageSize``/``Page``/``PageToken`` and ``next_page_uri``.

:class:`TwilioRetrier` plays Twilio's side of an inbound message: it posts the signed webhook and,
like Twilio, posts it again (same signature, same ``I-Twilio-Idempotency-Token``) after a
connection failure or a 5xx, and turns a TwiML answer into outbound messages in the fake's list.
"""

from __future__ import annotations

import asyncio
import base64
import html
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

from tests.fakes.loopback_http import serve_on_loopback

__all__ = ["FakeTwilio", "ListedMessage", "SentMessage", "TwilioRetrier", "sign_webhook"]


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


@dataclass
class ListedMessage:
    """A message as the Messages list shows it (REST-created, a TwiML reply, or inbound)."""

    sid: str
    to: str
    from_: str
    body: str
    direction: str  # outbound-api | outbound-reply | inbound
    date_created: float
    date_sent: float | None
    status: str = "sent"


@dataclass(frozen=True)
class _Scripted:
    status: int
    code: int | None
    message: str
    raw: str | None = None  # a non-JSON body (e.g. an HTML 503 from a proxy)
    created: bool = False  # the message is created first, then the error is answered
    drop: bool = False  # no answer at all: the connection is closed


class FakeTwilio:
    """An aiohttp server on 127.0.0.1 (port 0) playing the Twilio Messages API."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.sent: list[SentMessage] = []
        self.attempts = 0  # every POST that reached the Messages endpoint, failed or not
        self.unauthorized = 0
        self.messages: list[ListedMessage] = []  # everything the list endpoint can return
        self.list_requests: list[dict[str, str]] = []  # the query of each list call, as received
        self.list_failures = 0  # the next this-many list calls answer 500
        self.rewrite: Callable[[str], str] = lambda body: body  # what Twilio makes of a body it accepts
        self._script: deque[_Scripted] = deque()
        self._holds: deque[tuple[str, asyncio.Event]] = deque()
        self.held = asyncio.Event()  # set when a create request is being held (see hold_next)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def fail_next(self, status: int, code: int | None = None, message: str = "scripted failure", *, raw: str | None = None,
                  times: int = 1, created: bool = False) -> None:
        """Answer the next ``times`` create requests with this error: instead of creating the
        message, or (``created``) after creating it, as Twilio's edge can answer 5xx for a message
        the API has already queued."""
        for _ in range(times):
            self._script.append(_Scripted(status, code, message, raw, created=created))

    def drop_next(self, *, created: bool, times: int = 1) -> None:
        """Close the connection of the next ``times`` create requests without answering, before
        or (``created``) after creating the message: the sender never hears which."""
        for _ in range(times):
            self._script.append(_Scripted(0, None, "dropped", created=created, drop=True))

    def hold_next(self, when: str) -> asyncio.Event:
        """Hold the next create request open, ``"before"`` or ``"after"`` creating the message.

        Returns the event that releases it (the handler then answers 503). Meanwhile
        :attr:`held` is set, so a test can "crash" the sender at exactly that point.
        """
        assert when in ("before", "after")
        release = asyncio.Event()
        self._holds.append((when, release))
        return release

    def record(self, to: str, from_: str, body: str, direction: str) -> ListedMessage:
        """Add a message to the list (TwiML replies and inbound texts come in this way)."""
        now = time.time()
        message = ListedMessage("SM" + secrets.token_hex(16), to, from_, body, direction, now, now)
        self.messages.append(message)
        return message

    def answers_to(self, number: str) -> list[ListedMessage]:
        """Every message sent to ``number`` (by REST or TwiML)."""
        return [m for m in self.messages if m.to == number and m.direction.startswith("outbound")]

    def answers_to_any(self) -> bool:
        return any(m.direction.startswith("outbound") for m in self.messages)

    async def wait_until(self, predicate: Any, timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (re-checked whenever the fake's state changes)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(predicate)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/2010-04-01/Accounts/{sid}/Messages.json", self._list_messages)
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
        hold: tuple[str, asyncio.Event] | None = self._holds.popleft() if self._holds else None
        try:
            if hold is not None and hold[0] == "before":
                self.held.set()
                await self._notify()
                await hold[1].wait()
                return self._error(503, None, "held, then released")
            scripted = self._script.popleft() if self._script else None
            if scripted is not None and not scripted.created:
                return self._scripted(request, scripted)
            missing = [f for f in ("To", "From", "Body") if not form.get(f)]
            if missing:
                return self._error(400, 21604 if "To" in missing else 21602, f"Missing {', '.join(missing)}")
            body = str(form["Body"])
            if len(body) > 1600:
                return self._error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
            sid = "SM" + secrets.token_hex(16)
            body = self.rewrite(body)
            sent = SentMessage(sid, str(form["To"]), str(form["From"]), body,
                               str(form["StatusCallback"]) if "StatusCallback" in form else None,
                               request.headers.get("User-Agent", ""))
            self.sent.append(sent)
            created = time.time()
            # The fake "sends" at once, so the message has a date_sent and DateSent filters match it.
            self.messages.append(ListedMessage(sid, sent.to, sent.from_, body, "outbound-api", created, created))
            if scripted is not None:
                return self._scripted(request, scripted)
            if hold is not None:  # "after": created at Twilio, but the sender never hears back
                self.held.set()
                await self._notify()
                await hold[1].wait()
                return self._error(503, None, "held, then released")
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

    def _scripted(self, request: web.Request, scripted: _Scripted) -> web.Response:
        if scripted.drop:
            assert request.transport is not None
            request.transport.close()  # the client sees the connection end with no response
            return web.Response(status=503)  # never reaches the client
        if scripted.raw is not None:
            return web.Response(status=scripted.status, text=scripted.raw, content_type="text/html")
        return self._error(scripted.status, scripted.code, scripted.message)

    async def _list_messages(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        query = dict(request.query)
        self.list_requests.append(query)
        if self.list_failures > 0:
            self.list_failures -= 1
            return self._error(500, 20500, "Internal Server Error")
        found = list(self.messages)
        if "To" in query:
            found = [m for m in found if m.to == query["To"]]
        if "From" in query:
            found = [m for m in found if m.from_ == query["From"]]
        for name, keep in (("DateSent", lambda a, b: a == b), ("DateSent<", lambda a, b: a <= b),
                           ("DateSent>", lambda a, b: a >= b)):
            if name in query:
                bound, day_only = _parse_date(query[name])
                if bound is None:
                    return self._error(400, 20001, f"Invalid {name}: {query[name]}")
                found = [m for m in found if m.date_sent is not None
                         and keep(_day(m.date_sent) if day_only else m.date_sent, bound)]
        found.sort(key=lambda m: (m.date_sent or m.date_created), reverse=True)  # newest first, like Twilio
        try:
            size = max(1, min(1000, int(query.get("PageSize", "50"))))
            page = max(0, int(query.get("Page", "0")))
        except ValueError:
            return self._error(400, 20001, "Invalid paging")
        chunk = found[page * size:(page + 1) * size]
        base = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        kept = {k: v for k, v in query.items() if k not in ("Page", "PageSize", "PageToken")}

        def uri(n: int) -> str:
            return base + "?" + urlencode({**kept, "PageSize": size, "Page": n, "PageToken": f"PA{n}"})

        more = (page + 1) * size < len(found)
        return web.json_response({
            "messages": [self._resource(m) for m in chunk],
            "end": page * size + len(chunk) - 1, "start": page * size, "page": page, "page_size": size,
            "first_page_uri": uri(0), "next_page_uri": uri(page + 1) if more else None,
            "previous_page_uri": uri(page - 1) if page else None, "uri": uri(page),
        })

    def _resource(self, m: ListedMessage) -> dict[str, Any]:
        return {
            "account_sid": self.account_sid, "api_version": "2010-04-01", "body": m.body,
            "date_created": formatdate(m.date_created, usegmt=True),
            "date_sent": formatdate(m.date_sent, usegmt=True) if m.date_sent is not None else None,
            "date_updated": formatdate(m.date_created, usegmt=True), "direction": m.direction,
            "error_code": None, "error_message": None, "from": m.from_, "messaging_service_sid": None,
            "num_media": "0", "num_segments": "1", "price": None, "price_unit": "USD", "sid": m.sid,
            "status": m.status, "subresource_uris": {}, "to": m.to,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{m.sid}.json",
        }

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _day(stamp: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(stamp))


def _parse_date(value: str) -> tuple[Any, bool]:
    """A DateSent filter value: ``(YYYY-MM-DD, True)`` or ``(unix seconds, False)``; None if invalid."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return value, True
    try:
        return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone, False
    except ValueError:
        return None, False


@dataclass
class Delivery:
    """One inbound message as Twilio delivered it: every attempt's outcome, the final status."""

    form: dict[str, str]
    attempts: list[str] = field(default_factory=list)  # "refused", "503", "200"...
    status: int | None = None
    twiml: list[str] = field(default_factory=list)


class TwilioRetrier:
    """Twilio's side of inbound SMS: signed webhooks, re-posted after connection failures and 5xx.

    ``url`` is where the bot listens; ``public_url`` is what the signature is computed over.
    Backoff doubles from ``first_delay`` up to ``max_delay``; it gives up after ``give_up`` seconds.
    TwiML ``<Message>`` answers become ``outbound-reply`` messages in ``twilio``'s list.
    """

    def __init__(self, twilio: FakeTwilio, url: str, public_url: str, *, first_delay: float = 0.1,
                 max_delay: float = 2.0, give_up: float = 300.0) -> None:
        self.twilio = twilio
        self.url = url
        self.public_url = public_url
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.give_up = give_up
        self.deliveries: list[Delivery] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> TwilioRetrier:
        # A connection per request, as Twilio's webhooks arrive: a killed server's sockets die with it.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def deliver(self, form: dict[str, str]) -> Delivery:
        assert self._session is not None
        delivery = Delivery(form)
        self.deliveries.append(delivery)
        headers = {"X-Twilio-Signature": sign_webhook(self.twilio.auth_token, self.public_url, form),
                   "I-Twilio-Idempotency-Token": secrets.token_hex(16),
                   "User-Agent": "TwilioProxy/1.1"}
        self.twilio.record(form["To"], form["From"], form["Body"], "inbound")
        delay = self.first_delay
        deadline = time.monotonic() + self.give_up
        while True:
            try:
                async with self._session.post(self.url, data=form, headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=15)) as resp:
                    text = await resp.text()
                    delivery.attempts.append(str(resp.status))
                    if resp.status < 500:
                        delivery.status = resp.status
                        found = re.findall(r"<Message>(.*?)</Message>", text, re.DOTALL)
                        delivery.twiml = [html.unescape(m) for m in found]
                        for body in delivery.twiml:
                            self.twilio.record(form["From"], form["To"], body, "outbound-reply")
                        await self.twilio._notify()
                        return delivery
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                delivery.attempts.append(type(exc).__name__)
            if time.monotonic() > deadline:
                await self.twilio._notify()
                return delivery
            await asyncio.sleep(delay)  # Twilio's retry backoff, not synchronisation
            delay = min(self.max_delay, delay * 2)
