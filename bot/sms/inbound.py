"""Inbound SMS: Twilio's webhooks, parsed into our dataclasses and answered by the agent.

Flow for ``POST /twilio/sms``:

1. Decode the form and check ``X-Twilio-Signature`` against the *public* URL (settings'
   ``public_url`` + the request's path and query). Behind a proxy the Host header is the proxy's
   idea of the host, so it is never used. Unsigned or forged: 403.
2. Parse the fields into :class:`InboundSms` (missing fields: 400).
3. Dedupe by ``MessageSid`` in SQLite: a Twilio retry or replay, even of a message still being
   answered, gets an empty ``<Response/>`` so no message is ever answered twice.
4. Compliance keywords (STOP/START/HELP), opt-outs, the per-number rate limit and link codes are
   handled before the agent sees anything.
5. The agent's reply is awaited for up to ``reply_budget`` seconds (Twilio gives a webhook 15 s).
   If it is ready, it goes back as TwiML; otherwise the webhook answers an empty ``<Response/>``
   and the reply is sent through the REST API when it is done.

Why we remember opt-outs although Twilio enforces STOP on long codes itself: replies that go out
through the REST API after the webhook has returned would be refused by Twilio with 21610, and
we must not even try — and a number that opted out stays opted out across restarts, web workers
and Twilio numbers.

Undecodable bodies: Twilio percent-encodes UTF-8, so raw bytes that are not UTF-8 cannot come from
Twilio and get 400. Percent-encoded invalid sequences decode (by aiohttp) to U+FFFD and are then
judged by the signature like anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.twiml.messaging_response import MessagingResponse

from bot.agent import AgentError, Incoming
from bot.memory import Modality, Turn
from bot.sms.outbound import SendOutcome, SendResult
from bot.sms.store import Admission, SmsStore
from bot.sms.text import (
    SMS_SEGMENT_LIMIT,
    Keyword,
    cap_sms,
    classify_keyword,
    mask_number,
    normalize_for_sms,
    parse_link_code,
    truncate_for_agent,
)

if TYPE_CHECKING:
    from bot.agent import Agent
    from bot.memory import Memory

__all__ = [
    "InboundFormError",
    "InboundSms",
    "SmsSender",
    "SmsService",
    "StatusUpdate",
    "TwilioWebhooks",
    "parse_inbound",
    "parse_status",
    "twiml",
]

log = logging.getLogger(__name__)

SMS_PATH = "/twilio/sms"
STATUS_PATH = "/twilio/status"
MAX_INBOUND_CHARS = 2000  # what the agent sees of one text; Twilio concatenates at most 1,600 anyway


# --- our dataclasses and their pure parsers ---------------------------------------------------


class InboundFormError(ValueError):
    """A webhook form is missing required fields."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"missing field(s): {', '.join(missing)}")
        self.missing = tuple(missing)


@dataclass(frozen=True)
class InboundSms:
    """One text message Twilio received for us."""

    message_sid: str
    account_sid: str
    from_number: str
    to_number: str
    body: str
    num_media: int = 0
    media_urls: tuple[str, ...] = ()
    opt_out_type: str | None = None  # set by Twilio when its own opt-out handling matched a keyword


@dataclass(frozen=True)
class StatusUpdate:
    """One delivery status callback for a message we sent."""

    message_sid: str
    status: str
    to: str | None = None
    error_code: int | None = None


def _required(form: Mapping[str, str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if not str(form.get(n, "")).strip()]


def parse_inbound(form: Mapping[str, str]) -> InboundSms:
    """Twilio's inbound-message form fields → :class:`InboundSms`. Raises :class:`InboundFormError`.

    ``Body`` must be present but may be empty (a picture with no text).
    """
    missing = _required(form, ("MessageSid", "AccountSid", "From", "To"))
    if "Body" not in form:
        missing.append("Body")
    if missing:
        raise InboundFormError(missing)
    try:
        num_media = max(0, int(str(form.get("NumMedia", "0")).strip() or "0"))
    except ValueError:
        num_media = 0
    media = tuple(str(form[f"MediaUrl{i}"]) for i in range(min(num_media, 10)) if f"MediaUrl{i}" in form)
    return InboundSms(
        message_sid=str(form["MessageSid"]).strip(),
        account_sid=str(form["AccountSid"]).strip(),
        from_number=str(form["From"]).strip(),
        to_number=str(form["To"]).strip(),
        body=str(form["Body"]),
        num_media=num_media,
        media_urls=media,
        opt_out_type=str(form["OptOutType"]).strip().upper() or None if "OptOutType" in form else None,
    )


def parse_status(form: Mapping[str, str]) -> StatusUpdate:
    """A status callback's form fields → :class:`StatusUpdate`. Raises :class:`InboundFormError`."""
    missing = _required(form, ("MessageSid", "MessageStatus"))
    if missing:
        raise InboundFormError(missing)
    raw_code = str(form.get("ErrorCode", "")).strip()
    return StatusUpdate(
        message_sid=str(form["MessageSid"]).strip(),
        status=str(form["MessageStatus"]).strip().lower(),
        to=str(form["To"]).strip() if form.get("To") else None,
        error_code=int(raw_code) if raw_code.isdigit() else None,
    )


def twiml(segments: list[str]) -> str:
    """A TwiML ``<Response>`` with one ``<Message>`` per segment (none: an empty response)."""
    response = MessagingResponse()
    for segment in segments:
        response.message(segment)
    return str(response)


# --- the pipeline ------------------------------------------------------------------------------


class SmsSender(Protocol):
    """What the pipeline needs to send a message outside a webhook response (see TwilioSender)."""

    async def send(self, to: str, body: str) -> SendResult: ...

    async def aclose(self) -> None: ...


@dataclass
class _RoomLock:
    lock: asyncio.Lock
    users: int = 0


class SmsService:
    """Decides what to answer to each inbound SMS, and answers it through TwiML or REST.

    Replies to one number are produced one at a time, in arrival order, so a conversation stays
    coherent. Every reply runs in a task owned here; :meth:`aclose` lets them finish for a grace
    period, then cancels and awaits them.
    """

    def __init__(
        self,
        *,
        agent: Agent,
        memory: Memory,
        store: SmsStore,
        sender: SmsSender | None,
        rate_limit: int,
        reply_budget: float = 10.0,
        max_inbound_chars: int = MAX_INBOUND_CHARS,
        max_segments: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent = agent
        self.memory = memory
        self.store = store
        self.sender = sender
        self.rate_limit = rate_limit
        self.reply_budget = reply_budget
        self.max_inbound_chars = max_inbound_chars
        self.max_segments = max_segments  # per reply (SMS_REPLY_MAX_SEGMENTS)
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._rooms: dict[str, _RoomLock] = {}
        self._closing = False

    @property
    def busy(self) -> int:
        """Replies in progress."""
        return len(self._tasks)

    # --- messages the person sees -------------------------------------------------------------

    def help_text(self) -> str:
        name = self.agent.character.name
        return (f"You're texting {name}, an AI character. Just text to chat. "
                "To link Discord, run /link phone there and text the code here. "
                "Reply STOP to opt out, START to opt back in.")

    RATE_NOTE = "You're texting faster than I can keep up. I'll read everything, but I'll answer again in a few minutes."
    START_TEXT = "Welcome back! You're subscribed again. Text me anytime; reply STOP to opt out."
    LINK_BAD_TEXT = "That link code didn't work or has expired. Run /link phone in Discord to get a new one."
    OOPS_TEXT = "Sorry, something went wrong on my side. Please try again in a bit."

    # --- entry points -------------------------------------------------------------------------

    async def handle(self, sms: InboundSms) -> list[str]:
        """Handle one (signature-checked) inbound SMS; returns the segments to answer in TwiML.

        An empty list means "answer with an empty response": nothing to say, or the reply will
        follow through the REST API. Logs exactly one line per message (plus one if a later REST
        send fails).
        """
        number, who = sms.from_number, mask_number(sms.from_number)
        if not self.store.claim(sms.message_sid, number):
            log.info("SMS %s from %s is a duplicate (Twilio retry or replay); not answering again", sms.message_sid, who)
            return []

        keyword = classify_keyword(sms.body)
        if keyword is not None:
            return self._keyword(sms, keyword)

        if self.store.is_opted_out(number):
            self.store.set_state(sms.message_sid, "ignored")
            log.info("SMS %s from %s ignored: the number opted out (it must text START first)", sms.message_sid, who)
            return []

        text = sms.body.strip()
        if not text and sms.num_media:
            text = f"(sent {sms.num_media} picture{'s' if sms.num_media != 1 else ''} without text)"
        if not text:
            self.store.set_state(sms.message_sid, "ignored")
            log.info("SMS %s from %s ignored: empty body", sms.message_sid, who)
            return []
        text, cut = truncate_for_agent(text, self.max_inbound_chars)

        admission = self.store.admit(sms.message_sid, number, self.rate_limit)
        if admission is not Admission.ACCEPT:
            # Over the limit: the message is remembered (nothing is lost), not answered.
            self.memory.append(self._user_turn(sms, text))
            if admission is Admission.NOTE:
                log.info("SMS %s from %s over the rate limit (%d per 10 min); sent the note", sms.message_sid, who,
                         self.rate_limit)
                return [self.RATE_NOTE]
            log.info("SMS %s from %s over the rate limit; remembered, not answered", sms.message_sid, who)
            return []

        link = parse_link_code(text)
        if link is not None:
            code, explicit = link
            answered = self._link(sms, code, explicit)
            if answered is not None:
                return answered

        return await self._answer_with_agent(sms, text, truncated=cut)

    def on_status(self, update: StatusUpdate) -> None:
        """Log a delivery status callback (one line); a 21610 there also records the opt-out."""
        who = mask_number(update.to) if update.to else "?"
        if update.error_code == 21610 and update.to:
            self.store.set_opted_out(update.to, "twilio:21610")
        if update.status in ("failed", "undelivered"):
            log.warning("SMS %s to %s %s (error %s)", update.message_sid, who, update.status, update.error_code)
        else:
            log.info("SMS %s to %s %s", update.message_sid, who, update.status)

    async def wait_idle(self) -> None:
        """Wait until every reply in progress (including later REST sends) has finished."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def aclose(self, grace: float = 5.0) -> None:
        """Let replies in progress finish for ``grace`` seconds, then cancel and await the rest."""
        self._closing = True
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self.sender is not None:
            await self.sender.aclose()

    # --- branches -----------------------------------------------------------------------------

    def _keyword(self, sms: InboundSms, keyword: Keyword) -> list[str]:
        number, who = sms.from_number, mask_number(sms.from_number)
        self.store.set_state(sms.message_sid, f"keyword:{keyword}")
        # When Twilio's own opt-out handling matched the keyword it has already replied (and
        # says so with OptOutType); answering too would send the person two messages.
        twilio_replied = sms.opt_out_type is not None
        if keyword is Keyword.STOP:
            self.store.set_opted_out(number, "keyword")
            log.info("SMS %s: %s opted out (STOP)", sms.message_sid, who)
            return []  # Twilio confirms STOP itself and blocks anything more we would send
        if keyword is Keyword.START:
            self.store.clear_opt_out(number)
            log.info("SMS %s: %s opted back in (START)", sms.message_sid, who)
            return [] if twilio_replied else [self.START_TEXT]
        if self.store.is_opted_out(number):
            log.info("SMS %s: HELP from opted-out %s; Twilio answers it", sms.message_sid, who)
            return []
        log.info("SMS %s: HELP from %s", sms.message_sid, who)
        return [] if twilio_replied else [self.help_text()]

    def _link(self, sms: InboundSms, code: str | None, explicit: bool) -> list[str] | None:
        """Answer a link attempt; None means "not a link attempt after all" (let the agent answer)."""
        who = mask_number(sms.from_number)
        link = self.store.consume_link_code(code, sms.from_number) if code else None
        if link is None:
            if not explicit:
                return None  # just six digits that are not a live code: part of the conversation
            self.store.set_state(sms.message_sid, "link-failed")
            log.info("SMS %s: link attempt from %s with an unknown or expired code", sms.message_sid, who)
            return [self.LINK_BAD_TEXT]
        phone_identity = f"phone:{sms.from_number}"
        self.memory.link_identities(link.identity, phone_identity)
        self.store.set_state(sms.message_sid, "linked")
        log.info("SMS %s: linked %s to %s", sms.message_sid, who, link.identity)
        name = self.agent.character.name
        return [f"Linked! This number is now connected to {link.display_name} on Discord, "
                f"so {name} knows it's you in both places. Use /unlink in Discord to undo."]

    def _speaker_name(self, number: str) -> str:
        link = self.store.link_for_number(number)
        # The memory link is the source of truth: /forget removes it, and then so does the name.
        if link is not None and link.identity in self.memory.identities_of(f"phone:{number}"):
            return link.display_name
        return f"texter ending {number[-4:]}"

    def _user_turn(self, sms: InboundSms, text: str) -> Turn:
        return Turn(room=f"sms:{sms.from_number}", speaker_id=f"phone:{sms.from_number}",
                    speaker_name=self._speaker_name(sms.from_number), role="user", text=text,
                    modality=Modality.SMS, created_at=self._clock())

    async def _answer_with_agent(self, sms: InboundSms, text: str, *, truncated: bool) -> list[str]:
        if self._closing:
            self.store.set_state(sms.message_sid, "failed")
            log.warning("SMS %s from %s arrived during shutdown; not answered", sms.message_sid,
                        mask_number(sms.from_number))
            return []
        handoff: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._reply(sms, text, handoff, truncated), name=f"sms-reply-{sms.message_sid}")
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        try:
            await asyncio.wait({handoff}, timeout=self.reply_budget)
        finally:
            # Not ready in time (or the webhook itself was cancelled): the task sends via REST.
            if not handoff.done():
                handoff.cancel()
        if handoff.cancelled():
            return []
        return handoff.result()

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s crashed", task.get_name(), exc_info=task.exception())

    async def _reply(self, sms: InboundSms, text: str, handoff: asyncio.Future[list[str]], truncated: bool) -> None:
        number, who = sms.from_number, mask_number(sms.from_number)
        room = f"sms:{number}"
        started = time.monotonic()
        async with self._room(room):
            incoming = Incoming(room=room, speaker_id=f"phone:{number}", speaker_name=self._speaker_name(number),
                                text=text, modality=Modality.SMS)
            reply = self.agent.reply(incoming)
            failure: str | None = None
            said: str | None = None  # what was sent, when that is less than the agent's text
            try:
                stopped = False
                async for _delta in reply:
                    if len(reply.text) > 2 * self.max_segments * SMS_SEGMENT_LIMIT:
                        stopped = True  # far more than will be sent: stop the agent generating
                        break
                if stopped:
                    await reply.aclose()
                segments, sent_text, shortened = cap_sms(normalize_for_sms(reply.text), self.max_segments,
                                                         incomplete=stopped)
                said = sent_text if shortened else None
            except AgentError as exc:
                failure = str(exc)
                segments = [exc.user_message]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in an engine must not leave the person without an answer
                log.exception("SMS %s: the agent raised unexpectedly", sms.message_sid)
                failure = f"{type(exc).__name__}"
                segments = [self.OOPS_TEXT]
            if not segments:
                failure = "the agent produced an empty reply"
                segments = [self.OOPS_TEXT]

            via = "twiml"
            results: list[SendResult] = []
            if not handoff.done():
                handoff.set_result(segments)
                delivered = True
            else:
                via = "rest"
                results = await self._send_all(number, segments)
                delivered = bool(results) and all(r.ok for r in results)
            if failure is None and delivered:
                reply.finish(said, interrupted=said is not None)  # only now is it "said"
        elapsed = time.monotonic() - started
        state = "answered" if failure is None and delivered else "failed"
        self.store.set_state(sms.message_sid, state)
        detail = "" if not truncated else " (body truncated for the agent)"
        if failure is not None:
            log.warning("SMS %s from %s: agent failed (%s); sent an apology via %s in %.1fs%s",
                        sms.message_sid, who, failure, via, elapsed, detail)
        elif not delivered:
            bad = next((r for r in results if not r.ok), None)
            log.warning("SMS %s from %s: reply not delivered via %s: %s (HTTP %s, code %s, %d attempt(s))",
                        sms.message_sid, who, via, bad.outcome if bad else "no sender",
                        bad.status if bad else None, bad.code if bad else None, bad.attempts if bad else 0)
        else:
            log.info("SMS %s from %s answered via %s: %d segment(s) in %.1fs%s",
                     sms.message_sid, who, via, len(segments), elapsed, detail)

    async def _send_all(self, number: str, segments: list[str]) -> list[SendResult]:
        """REST-send segments in order, stopping at the first failure. Never sends to an opt-out."""
        results: list[SendResult] = []
        if self.sender is None:
            return results
        for segment in segments:
            if self.store.is_opted_out(number):
                results.append(SendResult(SendOutcome.OPTED_OUT, number, attempts=0, detail="opted out (remembered)"))
                break
            result = await self.sender.send(number, segment)
            results.append(result)
            if result.outcome is SendOutcome.OPTED_OUT:
                self.store.set_opted_out(number, "twilio:21610")
            if not result.ok:
                break
        return results

    @contextlib.asynccontextmanager
    async def _room(self, room: str) -> AsyncIterator[None]:
        entry = self._rooms.get(room)
        if entry is None:
            entry = self._rooms[room] = _RoomLock(asyncio.Lock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._rooms[room]


# --- the aiohttp side --------------------------------------------------------------------------


class TwilioWebhooks:
    """The signed Twilio endpoints: ``POST /twilio/sms`` and ``POST /twilio/status``.

    ``public_url`` is the base URL Twilio calls (scheme, host, and any path prefix a proxy
    strips), e.g. ``https://bot.example.com``; the signed URL is ``public_url`` + path + query.
    """

    def __init__(self, service: SmsService, *, auth_token: str, public_url: str) -> None:
        self.service = service
        self._validator = RequestValidator(auth_token)
        self._public_url = public_url.rstrip("/")

    def __repr__(self) -> str:
        return f"TwilioWebhooks(public_url={self._public_url!r})"

    def register(self, app: web.Application) -> None:
        app.router.add_post(SMS_PATH, self.sms)
        app.router.add_post(STATUS_PATH, self.status)

    async def _signed_form(self, request: web.Request) -> Mapping[str, str] | web.Response:
        """The request's form if Twilio signed it, else the error response to send (already logged)."""
        try:
            form = await request.post()
        except UnicodeDecodeError:
            log.warning("Twilio webhook %s rejected with 400: body is not UTF-8", request.path)
            return web.Response(status=400, text="body is not UTF-8")
        signature = request.headers.get("X-Twilio-Signature", "")
        if not signature:
            log.warning("Twilio webhook %s rejected with 403: no X-Twilio-Signature", request.path)
            return web.Response(status=403, text="missing signature")
        url = self._public_url + request.raw_path
        algorithm = get_signature_algorithm(request.headers.get("X-Twilio-Webhooks-Signature-Settings"))
        if not self._validator.validate(url, form, signature, algorithm):
            log.warning("Twilio webhook %s rejected with 403: signature does not match %s", request.path, url)
            return web.Response(status=403, text="invalid signature")
        return form  # type: ignore[return-value]

    async def sms(self, request: web.Request) -> web.Response:
        form = await self._signed_form(request)
        if isinstance(form, web.Response):
            return form
        try:
            sms = parse_inbound(form)
        except InboundFormError as exc:
            log.warning("Twilio SMS webhook rejected with 400: %s", exc)
            return web.Response(status=400, text=str(exc))
        segments = await self.service.handle(sms)
        return web.Response(text=twiml(segments), content_type="application/xml")

    async def status(self, request: web.Request) -> web.Response:
        form = await self._signed_form(request)
        if isinstance(form, web.Response):
            return form
        try:
            update = parse_status(form)
        except InboundFormError as exc:
            log.warning("Twilio status callback rejected with 400: %s", exc)
            return web.Response(status=400, text=str(exc))
        self.service.on_status(update)
        return web.Response(status=204)
