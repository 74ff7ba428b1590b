"""Sending SMS through Twilio's REST API, with errors mapped to clear outcomes.

The twilio SDK types stay in this module: callers get a :class:`SendResult`. Retries live here and
only here: bounded, exponential with full jitter, and only for 408/429/5xx, Twilio's 20429 and
transport failures. Everything else (an opted-out recipient, a bad number, bad credentials) is
final at once.

A send that got no answer (a timeout, a dropped connection) or a 408/5xx may still have created the
message: Twilio can create it and then fail to say so. Before sending it again, Twilio's Messages
list is asked (as recovery after a crash does, :meth:`TwilioSender.find_sent`); a message found
there is the send, and when the list cannot be read the outcome is ``uncertain``, never a second
text. Bodies are compared as Twilio may have rewritten them (:func:`comparable_body`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

import aiohttp

from bot.sms.text import mask_number

__all__ = ["SendOutcome", "SendResult", "TwilioSender", "backoff_delay", "classify_send_error", "comparable_body",
           "maybe_created"]

log = logging.getLogger(__name__)


class SendOutcome(StrEnum):
    SENT = "sent"
    OPTED_OUT = "opted_out"  # 21610: the recipient texted STOP; they must text START first
    UNVERIFIED = "unverified_number"  # 21608: a trial account may only text verified numbers
    INVALID_NUMBER = "invalid_number"  # 21211 (and 21614 not a mobile number)
    AUTH_FAILED = "auth_failed"  # 20003 / HTTP 401: wrong Account SID or Auth Token
    RATE_LIMITED = "rate_limited"  # 429 / 20429 still refused after every retry
    UNAVAILABLE = "unavailable"  # 5xx, timeouts or connection failures after every retry
    REJECTED = "rejected"  # any other 4xx: Twilio refused this message; retrying would not help
    UNCERTAIN = "uncertain"  # Twilio may have created it and its Messages list could not say: not resent


@dataclass(frozen=True)
class SendResult:
    """How one REST send ended. ``detail`` is for logs: it never holds a secret or a message body."""

    outcome: SendOutcome
    to: str
    sid: str | None = None
    status: int | None = None  # HTTP status of the last attempt, if there was a response
    code: int | None = None  # Twilio error code of the last attempt
    attempts: int = 1
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is SendOutcome.SENT


_CODE_OUTCOMES: dict[int, SendOutcome] = {
    21610: SendOutcome.OPTED_OUT,
    21608: SendOutcome.UNVERIFIED,
    21211: SendOutcome.INVALID_NUMBER,
    21614: SendOutcome.INVALID_NUMBER,
    20003: SendOutcome.AUTH_FAILED,
    20429: SendOutcome.RATE_LIMITED,
}


def classify_send_error(status: int | None, code: int | None) -> tuple[SendOutcome, bool]:
    """Map an HTTP status and Twilio error code to ``(outcome, retryable)``.

    ``status=None`` means no response at all (connection failure, timeout): retryable.
    """
    if code is not None and code in _CODE_OUTCOMES:
        outcome = _CODE_OUTCOMES[code]
        return outcome, outcome is SendOutcome.RATE_LIMITED
    if status is None:
        return SendOutcome.UNAVAILABLE, True
    if status == 401:
        return SendOutcome.AUTH_FAILED, False
    if status == 429:
        return SendOutcome.RATE_LIMITED, True
    if status == 408 or status >= 500:
        return SendOutcome.UNAVAILABLE, True
    return SendOutcome.REJECTED, False


def maybe_created(status: int | None) -> bool:
    """Whether a failed create may have created the message all the same: no answer at all, a
    request timeout or a server error (Twilio, or a proxy in front of it, failed after the request
    arrived). A 4xx other than 408, a 429 included, means it was refused."""
    return status is None or status == 408 or status >= 500


# What Twilio's Smart Encoding (Messaging Services) writes for punctuation outside GSM-7, by class:
# every double quotation mark becomes '"', every single one and apostrophe-like mark "'", every
# dash and hyphen "-", the ellipsis "...", and full-width ASCII forms their ASCII letter. Spaces of
# any width are whitespace to str.split(). Applied to both sides of a comparison, so mapping a few
# more look-alikes than Twilio does only makes the comparison blind to how a quote was drawn.
_DOUBLE_QUOTES = "\u00ab\u00bb\u201c\u201d\u201e\u201f\u02ba\u02ee\u2033\u275d\u275e\u301d\u301e\u301f"
_SINGLE_QUOTES = ("\u2018\u2019\u201b\u2032\u2035\u02b9\u02bb\u02bc\u02bd\u02c8\u02ca\u02cb\u0060\u00b4"
                  "\u275b\u275c")
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\ufe58\ufe63"
_SMART = str.maketrans({
    **{c: '"' for c in _DOUBLE_QUOTES}, **{c: "'" for c in _SINGLE_QUOTES}, **{c: "-" for c in _DASHES},
    "\u2026": "...", **{chr(c): chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)},
})
# A trial account's messages reach the phone (and the Messages list) with this in front.
TRIAL_PREFIX = "Sent from your Twilio trial account - "


def comparable_body(body: str) -> str:
    """``body`` with what Twilio may rewrite taken out: the trial prefix, Smart Encoding's
    substitutions, and runs of whitespace (trailing spaces dropped). Two bodies are the same message
    when these are equal. Pure."""
    text = " ".join(body.translate(_SMART).split())
    prefix = TRIAL_PREFIX.strip()
    if text.startswith(prefix + " ") or text == prefix:
        text = text[len(prefix):].lstrip()
    return text


def backoff_delay(attempt: int, rand: float, *, base: float = 0.5, cap: float = 8.0) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1-based); ``rand`` in [0, 1)."""
    return rand * min(cap, base * (2 ** (attempt - 1)))


Sleep = Callable[[float], Awaitable[None]]


class TwilioSender:
    """Sends SMS with the twilio SDK's async client.

    The client is created on first use, inside the running loop, because
    ``AsyncTwilioHttpClient`` builds an aiohttp ``ClientSession`` in its constructor. Call
    :meth:`aclose` on shutdown.

    ``api_base`` points the SDK at another host (tests: ``http://127.0.0.1:PORT``) through
    ``client.api.base_url``; never set Twilio's edge/region, which rewrite the hostname.
    ``sleep`` and ``rand`` make the backoff deterministic in tests.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str,
        *,
        api_base: str | None = None,
        status_callback: str | None = None,
        max_attempts: int = 4,
        attempt_timeout: float = 15.0,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._account_sid = account_sid
        self._auth_token = auth_token
        self.from_number = from_number
        self._api_base = api_base
        self._status_callback = status_callback
        self._max_attempts = max_attempts
        self._attempt_timeout = attempt_timeout
        self._sleep = sleep
        self._rand = rand
        self._client: object | None = None  # twilio.rest.Client; typed loosely so it never leaks
        # SIDs of messages this sender knows are accounted for (sent, or found for a reply): a list
        # entry with one of them never proves another send, however alike the bodies.
        self._accounted: OrderedDict[str, None] = OrderedDict()

    def __repr__(self) -> str:
        return f"TwilioSender(account_sid={self._account_sid!r}, from={mask_number(self.from_number)!r})"

    def _get_client(self) -> object:
        if self._client is None:
            from twilio.http.async_http_client import AsyncTwilioHttpClient
            from twilio.rest import Client

            http = AsyncTwilioHttpClient()
            # environment={}: the SDK would otherwise read TWILIO_* variables from os.environ.
            client = Client(self._account_sid, self._auth_token, http_client=http, environment={})
            if self._api_base:
                client.api.base_url = self._api_base
            self._client = client
        return self._client

    async def send(self, to: str, body: str) -> SendResult:
        """Send one message (``body`` at most 1,600 characters) and report how it went."""
        from twilio.base.exceptions import TwilioRestException, TwilioServiceException

        client = self._get_client()
        started = time.time()
        attempt = 0
        while True:
            attempt += 1
            status: int | None
            code: int | None
            reached = True  # the request may have reached Twilio
            try:
                # The async client passes timeout=None to aiohttp, which means no timeout at all,
                # so every attempt gets our own.
                async with asyncio.timeout(self._attempt_timeout):
                    message = await client.messages.create_async(  # type: ignore[attr-defined]
                        to=to, from_=self.from_number, body=body, status_callback=self._status_callback
                    )
            except TwilioRestException as exc:
                status, code, detail = exc.status, _int_or_none(exc.code), str(exc.msg)
            except TwilioServiceException as exc:
                status, code, detail = exc.status, _int_or_none(exc.code), str(exc.title)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, code, detail = None, None, f"{type(exc).__name__}: {exc}"
                # No connection (refused, DNS, TLS handshake): nothing was sent, nothing created.
                reached = not isinstance(exc, aiohttp.ClientConnectorError)
            else:
                self._account([str(message.sid)])
                return SendResult(SendOutcome.SENT, to, sid=str(message.sid), status=201, attempts=attempt)
            outcome, retryable = classify_send_error(status, code)
            if reached and maybe_created(status):
                created = await self._created_since(to, body, started)
                if created is None:
                    log.warning("Twilio send to %s failed (%s, HTTP %s) and its Messages list cannot say whether "
                                "the message was created; not sending it again", mask_number(to), outcome, status)
                    return SendResult(SendOutcome.UNCERTAIN, to, status=status, code=code, attempts=attempt,
                                      detail=f"{detail}; Twilio's list unreadable")
                if created:
                    log.info("Twilio send to %s answered HTTP %s but had created the message; not sending it again",
                             mask_number(to), status)
                    return SendResult(SendOutcome.SENT, to, sid=created, status=status, code=code, attempts=attempt,
                                      detail=f"created despite: {detail}")
            if not retryable or attempt >= self._max_attempts:
                return SendResult(outcome, to, status=status, code=code, attempts=attempt, detail=detail)
            delay = backoff_delay(attempt, self._rand())
            log.info(
                "Twilio send to %s failed (%s, HTTP %s, code %s); retry %d/%d in %.2fs",
                mask_number(to), outcome, status, code, attempt, self._max_attempts - 1, delay,
            )
            await self._sleep(delay)

    async def _created_since(self, to: str, body: str, since: float) -> str | None:
        """The SID of a message with ``body`` to ``to`` that Twilio created since ``since`` and that no
        other send accounts for; ``""`` when there is none; None when the list could not be read
        (asked up to ``max_attempts`` times, with the same backoff as sends)."""
        for check in range(1, self._max_attempts + 1):
            listed = await self._listed(to, since)
            if listed is not None:
                wanted = comparable_body(body)
                sid = next((sid for sid, listed_body in listed if comparable_body(listed_body) == wanted), "")
                if sid:
                    self._account([sid])
                return sid
            if check < self._max_attempts:
                await self._sleep(backoff_delay(check, self._rand()))
        return None

    async def find_sent(self, to: str, bodies: list[str], since: float) -> list[bool] | None:
        """Which of ``bodies`` Twilio already holds as messages from us to ``to`` created since ``since``.

        Used before re-sending a reply whose send may have happened just before a crash: Twilio's
        Messages list (filtered by To, From and DateSent, as the API offers) is the only record of
        a message created but not yet noted by us. Returns None when Twilio could not be asked;
        the caller then must not send (a second text is worse than a late one) and tries later.
        ``since`` is Unix seconds; a 2-minute margin absorbs clock differences with Twilio.
        """
        listed = await self._listed(to, since)
        if listed is None:
            log.warning("Cannot list Twilio messages to %s; the reply is retried later", mask_number(to))
            return None
        out: list[bool] = []
        for body in bodies:
            wanted = comparable_body(body)
            # One Twilio message proves one segment, not two identical ones.
            hit = next((i for i, (_sid, listed_body) in enumerate(listed) if comparable_body(listed_body) == wanted),
                       None)
            if hit is not None:
                self._account([listed.pop(hit)[0]])
            out.append(hit is not None)
        return out

    async def _listed(self, to: str, since: float) -> list[tuple[str, str]] | None:
        """(SID, body) of the messages from us to ``to`` that Twilio created since ``since`` (less a
        2-minute margin) and no send of ours accounts for, oldest first; None if the list failed."""
        # A failed list page raises the SDK's base TwilioException (not TwilioRestException).
        from twilio.base.exceptions import TwilioException

        client = self._get_client()
        # DateSent filters by day (GMT); the day before covers a send just before midnight. A message
        # still queued at Twilio (a long code sends about one a second, so a burst queues) has no
        # DateSent yet and only the unfiltered list, newest first, shows it: ask both ways.
        day = time.strftime("%Y-%m-%d", time.gmtime(since - 86400))
        try:
            async with asyncio.timeout(self._attempt_timeout * 2):
                sent = await client.messages.list_async(  # type: ignore[attr-defined]
                    to=to, from_=self.from_number, date_sent_after=day, limit=200)
                newest = await client.messages.list_async(  # type: ignore[attr-defined]
                    to=to, from_=self.from_number, limit=50)
        except (TwilioException, aiohttp.ClientError, TimeoutError) as exc:
            log.debug("listing Twilio messages to %s failed: %s", mask_number(to), type(exc).__name__)
            return None
        found = {str(m.sid): m for m in [*sent, *newest] if str(m.sid) not in self._accounted}
        created: list[tuple[float, str, str]] = []
        for sid, message in found.items():
            stamp = message.date_created or message.date_sent
            if stamp is not None and stamp.timestamp() >= since - 120:
                created.append((stamp.timestamp(), sid, str(message.body or "")))
        return [(sid, body) for _stamp, sid, body in sorted(created)]

    def _account(self, sids: Iterable[str]) -> None:
        for sid in sids:
            self._accounted[sid] = None
            self._accounted.move_to_end(sid)
        while len(self._accounted) > 1000:
            self._accounted.popitem(last=False)

    async def check(self) -> str:
        """Fetch the account (for ``voicebot check``): a short detail, or RuntimeError saying what is wrong."""
        from twilio.base.exceptions import TwilioRestException

        client = self._get_client()
        try:
            async with asyncio.timeout(self._attempt_timeout):
                account = await client.api.v2010.accounts(self._account_sid).fetch_async()  # type: ignore[attr-defined]
        except TwilioRestException as exc:
            if exc.status == 401 or _int_or_none(exc.code) == 20003:
                raise RuntimeError("Twilio rejected TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN (401)") from None
            raise RuntimeError(f"Twilio answered HTTP {exc.status} (code {exc.code})") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RuntimeError(f"cannot reach Twilio: {type(exc).__name__}") from None
        return f"account {account.friendly_name!r} is {account.status}"

    async def aclose(self) -> None:
        """Close the SDK's HTTP session (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            await client.http_client.close()  # type: ignore[attr-defined]


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
