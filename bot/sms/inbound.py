"""Inbound SMS: Twilio's webhooks, parsed into our dataclasses and answered by the agent.

Flow for ``POST /twilio/sms``:

1. Decode the form and check ``X-Twilio-Signature`` against the *public* URL (settings'
   ``public_url`` + the request's path and query; :mod:`bot.twilio_signature`, shared with the
   phone routes). Behind a proxy the Host header is the proxy's idea of the host, so it is never
   used. Unsigned or forged: 403; a body that is not a form (multipart): 415.
2. Parse the fields into :class:`InboundSms` (missing fields: 400).
3. Record the message (``MessageSid``, sender, text) in the database before anything else, with
   its lease ours, so it is durable before the webhook answers. A SID already finished (a retry or
   a replay) gets an empty ``<Response/>``; a SID being answered right now, here or by another
   live process, too; a SID a dead process left unfinished (a crash) is finished now. While
   draining for shutdown the answer is 503, so Twilio retries (on this process after a restart,
   or on another behind the same load balancer).
4. Compliance keywords (STOP/START/HELP), opt-outs, the per-number rate limit and link codes are
   handled before the agent sees anything.
5. The agent's reply is awaited for up to ``reply_budget`` seconds (Twilio gives a webhook 15 s).
   If it is ready, it goes back as TwiML; otherwise the webhook answers an empty ``<Response/>``
   and the reply is sent through the REST API when it is done.

Each step is a state transition in :mod:`bot.store.sms` (a compare-and-set each, by the holder of
the message's lease only). The reply is stored (state ``sending``) before it leaves and each
segment Twilio confirms is noted, so after a crash whoever finishes the message regenerates what
was not written and, for what may have left, asks Twilio's Messages list before sending the rest:
a late answer rather than a second one. A send that Twilio may have created without saying so and
whose list could not be read either (``uncertain``, :mod:`bot.sms.outbound`) is handled the same
way, in the same run.

Many processes may share one database (PostgreSQL, or one SQLite file on one machine) and
Twilio's webhooks and retries may land on any of them. Each :class:`SmsService` holds leases on
the messages it works on and renews them while it lives (:meth:`SmsService.start`); its sweep
takes over messages whose holder died (lease expired, or the process provably gone on this
machine) — the recovery at start is the first sweep. So one message is answered by one process,
and a dead process's messages are finished by another within a lease.

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
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from twilio.twiml.messaging_response import MessagingResponse

from bot.agent import AGENT_SPEAKER_ID, AgentError, Incoming, Reply
from bot.i18n.catalog import t
from bot.i18n.languages import language_name, parse_setting
from bot.memory import Modality, Turn
from bot.sms.outbound import SendOutcome, SendResult
from bot.sms.store import UNFINISHED, Admission, Claim, PendingSms, SmsStore
from bot.sms.text import (
    SMS_SEGMENT_LIMIT,
    Keyword,
    cap_sms,
    classify_keyword,
    keyword_language,
    mask_number,
    normalize_for_sms,
    parse_link_code,
    truncate_for_agent,
)
from bot.twilio_signature import TwilioSignature

_LANGUAGE_COMMAND = re.compile(r"^\s*(LANGUAGE|LANG|SPRACHE|LANGUE|IDIOMA|IDIOME|言語)\s*[:=]?\s*(\S{2,20})\s*$", re.IGNORECASE)

if TYPE_CHECKING:
    from bot.agent import Agent
    from bot.i18n.places import PlaceLanguages
    from bot.memory import Memory

__all__ = [
    "InboundFormError",
    "InboundSms",
    "SmsSender",
    "ShuttingDown",
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
RECOVERY_MAX_AGE = 86400.0  # an unfinished message older than a day is closed, not answered late
TWIML_WRITE_TIMEOUT = 30.0  # the webhook writes its answer right after handle() returns
FIND_SENT_RETRY_DELAYS = (5.0, 30.0, 120.0)
UNCERTAIN_ROUNDS = 3  # sends that Twilio could not confirm either way, per reply, before it waits for the next start
RECOVERY_CONCURRENCY = 8  # replies finished after a restart at once (a burst must not flood the engine)
PRUNE_INTERVAL = 3600.0  # old SIDs, notes and codes are dropped hourly while running (and at start)
RETRY_LATER = 600.0  # a message left unfinished on purpose (Twilio could not say) is taken again after this


class ShuttingDown(Exception):
    """The service is draining: the webhook answers 503 so Twilio retries after the restart."""


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
        self._inflight: dict[str, asyncio.Task[None]] = {}  # MessageSid -> the task finishing it
        self._twiml_waiters: dict[str, asyncio.Future[bool]] = {}
        self._rooms: dict[str, _RoomLock] = {}
        self._recovery_slots = asyncio.Semaphore(RECOVERY_CONCURRENCY)
        self._handling: set[str] = set()  # MessageSids whose webhook is being decided right now
        self._keeper: asyncio.Task[None] | None = None  # renews our leases, takes over the dead's work
        self.sweeps = 0  # rounds of renewing and sweeping done (tests and the bench wait on it)
        self._draining = False
        # When Twilio's list cannot say whether a reply left before a crash, ask again after these
        # delays; then leave it for the next start (a late answer rather than a second one).
        self.find_sent_retry_delays: tuple[float, ...] = FIND_SENT_RETRY_DELAYS
        # The language per number (bot.i18n); None: English throughout.
        self.languages: PlaceLanguages | None = None

    @property
    def busy(self) -> int:
        """Replies in progress."""
        return len(self._tasks)

    # --- messages the person sees -------------------------------------------------------------

    def help_text(self, language: str = "en") -> str:
        return t("sms.help", language, name=self.agent.character.name)

    async def _language_command(self, sms: InboundSms) -> list[str] | None:
        """``LANGUAGE de`` (or SPRACHE/LANGUE/IDIOMA/言語) sets the number's language; None if not one."""
        match = _LANGUAGE_COMMAND.match(sms.body)
        if match is None or self.languages is None:
            return None
        try:
            setting = parse_setting(match.group(2))
        except ValueError:
            return None  # "language barriers are hard": a sentence for the agent, not a command
        await self.languages.set(f"phone:{sms.from_number}", setting)
        await self.store.set_state(sms.message_sid, "language")
        log.info("SMS %s: %s set the language to %s", sms.message_sid, mask_number(sms.from_number), setting)
        shown = self._language(sms.from_number)
        return [t("language.set_sms", shown, language=language_name(shown))]

    def _language(self, number: str, text: str | None = None) -> str:
        """The number's language: of ``text`` when given (remembered when sure), else its last or set one."""
        if self.languages is None:
            return "en"
        if text:
            return self.languages.choose(f"phone:{number}", text, learn=True).language
        return self.languages.fallback(f"phone:{number}")

    # English texts; each number gets them in its language through the catalog (bot.i18n).
    RATE_NOTE = t("sms.rate", "en")
    START_TEXT = t("sms.start", "en")
    LINK_BAD_TEXT = t("sms.link_bad", "en")
    OOPS_TEXT = t("sms.oops", "en")

    # --- entry points -------------------------------------------------------------------------

    async def handle(self, sms: InboundSms) -> list[str]:
        """Handle one (signature-checked) inbound SMS; returns the segments to answer in TwiML.

        The message (text and sender) is in the database before this returns, whatever it returns.
        An empty list means "answer with an empty response": nothing to say, or the reply will
        follow through the REST API. Raises :class:`ShuttingDown` while draining: the webhook
        answers 503 so Twilio retries, and the recorded message is finished at the next start.
        Logs exactly one line per message (plus one if a later REST send fails).
        """
        number, who = sms.from_number, mask_number(sms.from_number)
        if sms.message_sid in self._handling or sms.message_sid in self._inflight:
            log.info("SMS %s from %s is a duplicate of a message being answered; not answering twice",
                     sms.message_sid, who)
            return []
        self._handling.add(sms.message_sid)
        try:
            return await self._handle(sms, number, who)
        finally:
            self._handling.discard(sms.message_sid)

    async def _handle(self, sms: InboundSms, number: str, who: str) -> list[str]:
        claim = await self.store.claim(sms.message_sid, number, sms.body, sms.num_media)
        if claim is Claim.DONE:
            log.info("SMS %s from %s is a duplicate (Twilio retry or replay); not answering again", sms.message_sid, who)
            return []
        if claim is Claim.ELSEWHERE:
            log.info("SMS %s from %s is being answered by another process; not answering twice", sms.message_sid, who)
            return []
        if self._draining:
            if claim is Claim.NEW and classify_keyword(sms.body) is Keyword.STOP:
                # Taken at once: a reply still finishing during the drain must not reach this number.
                return await self._keyword(sms, Keyword.STOP)
            log.info("SMS %s from %s recorded during shutdown; answered 503 (finished at the next start)",
                     sms.message_sid, who)
            raise ShuttingDown()
        if claim is Claim.UNFINISHED:
            pending = await self.store.pending(sms.message_sid)
            if pending is None:
                return []
            if pending.state != "received":
                log.info("SMS %s from %s: Twilio retried a message left %s by an earlier run; finishing it",
                         sms.message_sid, who, pending.state)
                self._resume(pending)
                return []
            # Left before any decision: decide now, as if it were new.
        return await self._process(sms, webhook=True)

    async def _process(self, sms: InboundSms, *, webhook: bool) -> list[str]:
        """Decide and answer a ``received`` message; ``webhook=False`` (a recovery) sends answers by REST."""
        number, who = sms.from_number, mask_number(sms.from_number)
        keyword = classify_keyword(sms.body)
        if keyword is not None:
            return await self._keyword(sms, keyword)

        if await self.store.is_opted_out(number):
            await self.store.set_state(sms.message_sid, "ignored")
            log.info("SMS %s from %s ignored: the number opted out (it must text START first)", sms.message_sid, who)
            self.agent.turn_ignored(Modality.SMS)
            return []

        chosen = await self._language_command(sms)
        if chosen is not None:
            return chosen

        text, cut = self._agent_text(sms.body, sms.num_media)
        if not text:
            await self.store.set_state(sms.message_sid, "ignored")
            log.info("SMS %s from %s ignored: empty body", sms.message_sid, who)
            self.agent.turn_ignored(Modality.SMS)
            return []

        admission = await self.store.admit(sms.message_sid, number, self.rate_limit)
        if admission is not Admission.ACCEPT:
            # Over the limit: the message is remembered (nothing is lost), not answered.
            self.memory.append(await self._user_turn(sms, text))
            self.agent.turn_ignored(Modality.SMS)
            if admission is Admission.NOTE:
                log.info("SMS %s from %s over the rate limit (%d per 10 min); sent the note", sms.message_sid, who,
                         self.rate_limit)
                return [t("sms.rate", self._language(number, text))]
            log.info("SMS %s from %s over the rate limit; remembered, not answered", sms.message_sid, who)
            return []

        link = parse_link_code(text)
        if link is not None:
            code, explicit = link
            answered = await self._link(sms, code, explicit)
            if answered is not None:
                return answered

        if not webhook:
            self._spawn(sms.message_sid, self._reply(sms.message_sid, number, text, cut, "accepted",
                                                     sms_received_at=self._clock(), handoff=None))
            return []
        return await self._answer_with_agent(sms, text, truncated=cut)

    def _agent_text(self, body: str, num_media: int) -> tuple[str, bool]:
        text = body.strip()
        if not text and num_media:
            text = f"(sent {num_media} picture{'s' if num_media != 1 else ''} without text)"
        if not text:
            return "", False
        return truncate_for_agent(text, self.max_inbound_chars)

    async def on_status(self, update: StatusUpdate) -> None:
        """Log a delivery status callback (one line); a 21610 there also records the opt-out."""
        who = mask_number(update.to) if update.to else "?"
        if update.error_code == 21610 and update.to:
            await self.store.set_opted_out(update.to, "twilio:21610")
        if update.status in ("failed", "undelivered"):
            log.warning("SMS %s to %s %s (error %s)", update.message_sid, who, update.status, update.error_code)
        else:
            log.info("SMS %s to %s %s", update.message_sid, who, update.status)

    # --- recovery and shutdown ----------------------------------------------------------------

    async def start(self) -> int:
        """Finish what dead processes left (:meth:`resume_unfinished`), then keep our leases alive and
        sweep for more in the background until :meth:`aclose`. Returns how many were resumed now.

        Call before webhooks are served, so a Twilio retry of a resumed message finds it in progress.
        """
        resumed = await self.resume_unfinished()
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_leases(), name="sms-leases")
        return resumed

    async def resume_unfinished(self, *, at_start: bool = True) -> int:
        """Take and start finishing every unfinished message no live process holds; returns how many.

        At start-up these are what the last run (or any dead process) left, including messages
        left to rest because Twilio could not say whether their reply went out (``at_start``; a
        sweep while running leaves those for :data:`RETRY_LATER`). Messages older than
        :data:`RECOVERY_MAX_AGE` are closed as failed: an answer a day late would make no sense to
        the person.
        """
        now = self._clock()
        resumed = 0
        stale = 0
        while True:
            taken = await self.store.take_unfinished(resting=at_start)
            for message in taken:
                if message.message_sid in self._inflight or message.message_sid in self._handling:
                    continue
                if now - message.received_at > RECOVERY_MAX_AGE or message.body is None:
                    await self.store.advance(message.message_sid, UNFINISHED, "failed")
                    stale += 1
                    continue
                self._resume(message)
                resumed += 1
            if len(taken) < 100:
                break
        if resumed or stale:
            log.info("Finishing %d SMS left unfinished by the last run (%d too old or without text, closed)",
                     resumed, stale)
        return resumed

    async def _keep_leases(self) -> None:
        """Every third of a lease: renew ours, and take over what a dead process left; hourly, prune."""
        period = max(0.05, self.store.lease / 3)
        pruned_at = time.monotonic()  # build_sms pruned at start
        while True:
            await asyncio.sleep(period)  # a schedule, not synchronisation
            try:
                # Only what a task here works on: a message taken while its webhook was being decided
                # (and then dropped) must expire and be taken again, not be kept alive by nobody.
                await self.store.renew({*self._inflight, *self._handling})
                if not self._draining:
                    await self.resume_unfinished(at_start=False)
                self.sweeps += 1
                if time.monotonic() - pruned_at >= PRUNE_INTERVAL:
                    pruned_at = time.monotonic()
                    removed = await self.store.prune()
                    if removed:
                        log.info("Pruned %d old SMS bookkeeping rows", removed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away for a moment: the next round tries again
                log.warning("SMS: could not renew leases or sweep (%s: %s); trying again in %.0fs",
                            type(exc).__name__, exc, period)

    def _resume(self, message: PendingSms) -> None:
        if message.state == "received":
            sms = InboundSms(message.message_sid, "", message.from_number, "", message.body or "",
                             num_media=message.num_media)
            self._spawn(message.message_sid, self._recover_received(sms))
            return
        text, cut = self._agent_text(message.body or "", message.num_media)
        self._spawn(message.message_sid, self._reply(message.message_sid, message.from_number, text, cut,
                                                     message.state, sms_received_at=message.received_at,
                                                     handoff=None, pending=message))

    async def _recover_received(self, sms: InboundSms) -> None:
        """A message recorded but never decided on: decide now; canned answers go by REST."""
        try:
            async with self._recovery_slots:
                segments = await self._process(sms, webhook=False)
                if segments and self.sender is not None and not await self.store.is_opted_out(sms.from_number):
                    await self._send_all(sms.from_number, segments)
        except asyncio.CancelledError:
            raise
        except Exception:
            await self._let_go(sms.message_sid, later=self.store.lease)
            raise

    async def _let_go(self, message_sid: str, *, later: float = RETRY_LATER) -> None:
        """A message we stopped working on without finishing it: nobody takes it for ``later`` seconds."""
        try:
            await self.store.release(message_sid, not_before=later)
        except Exception as exc:  # the lease then simply expires
            log.debug("SMS %s: could not release its lease: %s", message_sid, exc)

    def begin_drain(self) -> None:
        """Stop taking new work: webhooks answer 503 from now on (Twilio retries them later)."""
        if not self._draining:
            self._draining = True
            log.debug("SMS: draining; new webhooks get 503 so Twilio retries them after the restart")

    @property
    def draining(self) -> bool:
        return self._draining

    async def wait_idle(self) -> None:
        """Wait until every reply in progress (including later REST sends) has finished."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def aclose(self, grace: float = 20.0) -> None:
        """Drain: let replies in progress finish for ``grace`` seconds, then cancel and await the rest.

        A cancelled reply keeps its recorded state (accepted, replying or sending), so the next
        start finishes it; one log line says what was left.
        """
        self.begin_drain()
        keeper, self._keeper = self._keeper, None
        tasks = set(self._tasks)
        cancelled = 0
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            cancelled = len(pending)
            await asyncio.gather(*pending, return_exceptions=True)
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        left: list[PendingSms] = []
        try:
            left = await self.store.held()
            # Free at once: another process behind the same load balancer (or the next start) finishes them.
            await self.store.release()
        except Exception as exc:  # the database is away: the leases expire instead
            log.warning("SMS shutdown: could not release this process's leases (%s: %s); other processes take "
                        "its unfinished texts when they expire", type(exc).__name__, exc)
        self.store.owner.retire()
        finished = f"{len(tasks) - cancelled} of {len(tasks)} reply(ies) in flight finished within the {grace:.0f}s grace"
        if left:
            by_state: dict[str, int] = {}
            for message in left:
                by_state[message.state] = by_state.get(message.state, 0) + 1
            detail = ", ".join(f"{n} {state}" for state, n in sorted(by_state.items()))
            log.warning("SMS shutdown: %s; %d message(s) not answered (%s) are recorded and will be finished at "
                        "the next start (or by another process)", finished, len(left), detail)
        elif tasks:
            log.info("SMS shutdown: %s", finished)
        if self.sender is not None:
            await self.sender.aclose()

    # --- branches -----------------------------------------------------------------------------

    async def _keyword(self, sms: InboundSms, keyword: Keyword) -> list[str]:
        number, who = sms.from_number, mask_number(sms.from_number)
        await self.store.set_state(sms.message_sid, f"keyword:{keyword}")
        # When Twilio's own opt-out handling matched the keyword it has already replied (and
        # says so with OptOutType); answering too would send the person two messages.
        twilio_replied = sms.opt_out_type is not None
        # A keyword in another language ("HILFE") is answered in it; Twilio did not see it as one.
        language = keyword_language(sms.body) or self._language(number)
        if keyword is Keyword.STOP:
            await self.store.set_opted_out(number, "keyword")
            log.info("SMS %s: %s opted out (STOP)", sms.message_sid, who)
            if keyword_language(sms.body) is not None and not twilio_replied:
                return [t("sms.stopped", language)]  # Twilio did not act on it: the one confirmation is ours
            return []  # Twilio confirms STOP itself and blocks anything more we would send
        if keyword is Keyword.START:
            await self.store.clear_opt_out(number)
            log.info("SMS %s: %s opted back in (START)", sms.message_sid, who)
            return [] if twilio_replied else [t("sms.start", language)]
        if await self.store.is_opted_out(number):
            log.info("SMS %s: HELP from opted-out %s; Twilio answers it", sms.message_sid, who)
            return []
        log.info("SMS %s: HELP from %s", sms.message_sid, who)
        return [] if twilio_replied else [self.help_text(language)]

    async def _link(self, sms: InboundSms, code: str | None, explicit: bool) -> list[str] | None:
        """Answer a link attempt; None means "not a link attempt after all" (let the agent answer)."""
        who = mask_number(sms.from_number)
        link = await self.store.consume_link_code(code, sms.from_number) if code else None
        if link is None:
            if not explicit:
                return None  # just six digits that are not a live code: part of the conversation
            await self.store.set_state(sms.message_sid, "link-failed")
            log.info("SMS %s: link attempt from %s with an unknown or expired code", sms.message_sid, who)
            return [t("sms.link_bad", self._language(sms.from_number))]
        phone_identity = f"phone:{sms.from_number}"
        await self.memory.link_identities(link.identity, phone_identity)
        await self.store.set_state(sms.message_sid, "linked")
        log.info("SMS %s: linked %s to %s", sms.message_sid, who, link.identity)
        name = self.agent.character.name
        return [t("link.sms_linked", self._language(sms.from_number), person=link.display_name, name=name)]

    async def _speaker_name(self, number: str) -> str:
        link = await self.store.link_for_number(number)
        # The memory link is the source of truth: /forget removes it, and then so does the name.
        if link is not None and link.identity in await self.memory.identities_of(f"phone:{number}"):
            return link.display_name
        return f"texter ending {number[-4:]}"

    async def _user_turn(self, sms: InboundSms, text: str) -> Turn:
        return Turn(room=f"sms:{sms.from_number}", speaker_id=f"phone:{sms.from_number}",
                    speaker_name=await self._speaker_name(sms.from_number), role="user", text=text,
                    modality=Modality.SMS, created_at=self._clock())

    async def _answer_with_agent(self, sms: InboundSms, text: str, *, truncated: bool) -> list[str]:
        handoff: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._spawn(sms.message_sid, self._reply(sms.message_sid, sms.from_number, text, truncated, "accepted",
                                                 sms_received_at=self._clock(), handoff=handoff))
        try:
            await asyncio.wait({handoff}, timeout=self.reply_budget)
        finally:
            # Not ready in time (or the webhook itself was cancelled): the task sends via REST.
            if not handoff.done():
                handoff.cancel()
        if handoff.cancelled():
            return []
        return handoff.result()  # raises ShuttingDown if the reply was stopped by a shutdown

    def twiml_written(self, message_sid: str, ok: bool) -> None:
        """The webhook wrote (``ok``) or failed to write the TwiML reply handed to it."""
        waiter = self._twiml_waiters.pop(message_sid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(ok)

    def _spawn(self, message_sid: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"sms-reply-{message_sid}")
        self._tasks.add(task)
        self._inflight[message_sid] = task
        task.add_done_callback(lambda t: self._reap(message_sid, t))

    def _reap(self, message_sid: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._inflight.get(message_sid) is task:
            del self._inflight[message_sid]
        if not task.cancelled() and task.exception() is not None:
            log.error("%s crashed", task.get_name(), exc_info=task.exception())

    async def _reply(self, sid: str, number: str, text: str, truncated: bool, state: str, *,
                     sms_received_at: float, handoff: asyncio.Future[list[str]] | None,
                     pending: PendingSms | None = None) -> None:
        """Take one message from ``state`` (accepted, replying or sending) to answered / failed / suppressed."""
        try:
            await self._reply_steps(sid, number, text, truncated, state, sms_received_at=sms_received_at,
                                    handoff=handoff, pending=pending)
        except asyncio.CancelledError:
            # Stopped by a shutdown: a webhook still waiting answers 503 (Twilio retries); the row
            # keeps its state for the next start (or another process: aclose frees our leases).
            if handoff is not None and not handoff.done():
                handoff.set_exception(ShuttingDown())
            raise
        except Exception:
            await self._let_go(sid, later=self.store.lease)  # a fault (the database?): try again soon
            raise
        # Finished, or left unfinished on purpose (Twilio could not say whether it was sent).
        await self._let_go(sid)

    async def _reply_steps(self, sid: str, number: str, text: str, truncated: bool, state: str, *,
                           sms_received_at: float, handoff: asyncio.Future[list[str]] | None,
                           pending: PendingSms | None) -> None:
        who = mask_number(number)
        room = f"sms:{number}"
        started = time.monotonic()
        recovering = pending is not None
        slots = self._recovery_slots if recovering else contextlib.nullcontext()
        async with slots, self._room(room):
            reply: Reply | None = None
            failure: str | None = None
            said: str | None = None  # what was sent, when that is less than the agent's text
            if state == "sending":
                assert pending is not None
                segments = list(pending.reply)
                failure = pending.failure
                sent = pending.sent_segments
                since = pending.updated_at
            else:
                if await self.store.is_opted_out(number):
                    await self.store.advance(sid, ("accepted", "replying"), "suppressed")
                    log.info("SMS %s from %s not answered: the number opted out meanwhile", sid, who)
                    self.agent.turn_ignored(Modality.SMS)
                    return
                if state == "replying":
                    # The earlier run stored the person's turn when its reply began; it is stored again below.
                    await self.memory.forget_turn(room, f"phone:{number}", text, sms_received_at)
                if not await self.store.advance(sid, ("accepted", "replying"), "replying"):
                    log.info("SMS %s from %s not answered: its record is gone (forgotten)", sid, who)
                    return
                incoming = Incoming(room=room, speaker_id=f"phone:{number}", speaker_name=await self._speaker_name(number),
                                    text=text, modality=Modality.SMS, language=self._language(number, text))
                reply = self.agent.reply(incoming)
                try:
                    stopped = False
                    async for _delta in reply:
                        if len(reply.text) > 2 * self.max_segments * SMS_SEGMENT_LIMIT:
                            stopped = True  # far more than will be sent: stop the agent generating
                            break
                    if stopped:
                        await reply.aclose()
                    segments, sent_text, shortened = cap_sms(normalize_for_sms(reply.text), self.max_segments,
                                                             incomplete=stopped, language=incoming.language)
                    said = sent_text if shortened else None
                except AgentError as exc:
                    failure = str(exc)
                    segments = [exc.user_message]
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug in an engine must not leave the person without an answer
                    log.exception("SMS %s: the agent raised unexpectedly", sid)
                    failure = f"{type(exc).__name__}"
                    segments = [t("sms.oops", self._language(number))]
                if not segments:
                    failure = "the agent produced an empty reply"
                    segments = [t("sms.oops", self._language(number))]
                since = self._clock()
                # The reply is recorded before it leaves, so a crash from here on never sends it twice.
                if not await self.store.advance(sid, "replying", "sending", reply=segments, failure=failure,
                                                sent_segments=0):
                    log.info("SMS %s from %s not answered: its record is gone (forgotten)", sid, who)
                    return
                sent = 0

            via = "rest"
            results: list[SendResult] = []
            written = False
            if handoff is not None and not handoff.done():
                waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                self._twiml_waiters[sid] = waiter
                handoff.set_result(segments)
                try:
                    async with asyncio.timeout(TWIML_WRITE_TIMEOUT):
                        written = await waiter
                except TimeoutError:
                    written = False
                finally:
                    self._twiml_waiters.pop(sid, None)
                if written:
                    via = "twiml"
                    sent = len(segments)
                else:
                    # The webhook died before its answer went out; Twilio may or may not have it.
                    recovering = True
            for _round in range(UNCERTAIN_ROUNDS):
                if sent >= len(segments):
                    break
                if recovering:
                    found = await self._already_sent(number, segments[sent:], since)
                    for delay in self.find_sent_retry_delays:
                        if found is not None:
                            break
                        await asyncio.sleep(delay)  # Twilio's list was unavailable; ask again later
                        found = await self._already_sent(number, segments[sent:], since)
                    if found is None:
                        log.warning("SMS %s from %s: cannot tell whether the reply was sent; left for the next "
                                    "start", sid, who)
                        return
                    sent += found
                    if found:
                        await self.store.segment_sent(sid, sent)
                results = await self._send_all(number, segments[sent:], sid=sid, first=sent)
                if not results or results[-1].outcome is not SendOutcome.UNCERTAIN:
                    break
                # Twilio may hold the last segment and could not say: ask its list again (patiently)
                # before anything more is sent, as after a crash.
                sent += len(results) - 1
                recovering = True
            else:
                log.warning("SMS %s from %s: Twilio kept failing to say whether the reply was sent; left for the "
                            "next start", sid, who)
                return
            delivered = all(r.ok for r in results)
            suppressed = any(r.outcome is SendOutcome.OPTED_OUT for r in results)
            final = "suppressed" if suppressed else "answered" if failure is None and delivered else "failed"
            if not await self.store.advance(sid, "sending", final):
                log.info("SMS %s from %s: record gone before the reply was noted (forgotten)", sid, who)
                return
            if failure is None and delivered:
                if reply is not None:
                    reply.finish(said, interrupted=said is not None)  # only now is it "said"
                else:  # finished after a crash: the run that wrote it could not store it
                    self.memory.append(Turn(room=room, speaker_id=AGENT_SPEAKER_ID,
                                            speaker_name=self.agent.character.name, role="assistant",
                                            text=" ".join(segments), modality=Modality.SMS,
                                            created_at=self._clock()))
        elapsed = time.monotonic() - started
        detail = "" if not truncated else " (body truncated for the agent)"
        if failure is not None:
            log.warning("SMS %s from %s: agent failed (%s); sent an apology via %s in %.1fs%s",
                        sid, who, failure, via, elapsed, detail)
        elif not delivered:
            bad = next((r for r in results if not r.ok), None)
            log.warning("SMS %s from %s: reply not delivered via %s: %s (HTTP %s, code %s, %d attempt(s))",
                        sid, who, via, bad.outcome if bad else "no sender",
                        bad.status if bad else None, bad.code if bad else None, bad.attempts if bad else 0)
        else:
            log.info("SMS %s from %s answered via %s%s: %d segment(s) in %.1fs%s",
                     sid, who, via, " after a restart" if pending is not None else "", len(segments), elapsed, detail)

    async def _already_sent(self, number: str, segments: list[str], since: float) -> int | None:
        """How many leading ``segments`` Twilio already created (None: cannot tell)."""
        finder = getattr(self.sender, "find_sent", None)
        if finder is None:
            return None
        found: list[bool] | None = await finder(number, segments, since)
        if found is None:
            return None
        count = 0
        for hit in found:
            if not hit:
                break
            count += 1
        return count

    async def _send_all(self, number: str, segments: list[str], *, sid: str | None = None,
                        first: int = 0) -> list[SendResult]:
        """REST-send segments in order, stopping at the first failure. Never sends to an opt-out.

        With ``sid``, each confirmed segment is recorded at once, and a record that vanished (the
        person was forgotten) stops the sending.
        """
        results: list[SendResult] = []
        if self.sender is None:
            results.append(SendResult(SendOutcome.UNAVAILABLE, number, attempts=0, detail="no sender"))
            return results
        for i, segment in enumerate(segments):
            if await self.store.is_opted_out(number):
                results.append(SendResult(SendOutcome.OPTED_OUT, number, attempts=0, detail="opted out (remembered)"))
                break
            if sid is not None and not await self.store.holds(sid):
                # Forgotten meanwhile, or another process took it over (we were paused past our lease).
                results.append(SendResult(SendOutcome.REJECTED, number, attempts=0, detail="forgotten or taken over"))
                break
            result = await self.sender.send(number, segment)
            results.append(result)
            if result.outcome is SendOutcome.OPTED_OUT:
                await self.store.set_opted_out(number, "twilio:21610")
            if not result.ok:
                break
            if sid is not None:
                await self.store.segment_sent(sid, first + i + 1)
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
        self._signature = TwilioSignature(auth_token, public_url)

    def __repr__(self) -> str:
        return f"TwilioWebhooks(public_url={self._signature.public_url!r})"

    def register(self, app: web.Application) -> None:
        app.router.add_post(SMS_PATH, self.sms)
        app.router.add_post(STATUS_PATH, self.status)

    async def sms(self, request: web.Request) -> web.Response:
        form = await self._signature.signed_form(request)
        if isinstance(form, web.Response):
            return form
        try:
            sms = parse_inbound(form)
        except InboundFormError as exc:
            log.warning("Twilio SMS webhook rejected with 400: %s", exc)
            return web.Response(status=400, text=str(exc))
        try:
            segments = await self.service.handle(sms)
        except ShuttingDown:
            return web.Response(status=503, text="shutting down; retry", headers={"Retry-After": "5"})
        response = web.Response(text=twiml(segments), content_type="application/xml")
        written = False
        try:
            # Written here rather than by aiohttp after we return, so a TwiML reply is noted as
            # sent only once it has left (else a crash could lose it, or a retry answer it twice).
            await response.prepare(request)
            await response.write_eof()
            written = True
        finally:
            self.service.twiml_written(sms.message_sid, written)
        return response

    async def status(self, request: web.Request) -> web.Response:
        form = await self._signature.signed_form(request)
        if isinstance(form, web.Response):
            return form
        try:
            update = parse_status(form)
        except InboundFormError as exc:
            log.warning("Twilio status callback rejected with 400: %s", exc)
            return web.Response(status=400, text=str(exc))
        await self.service.on_status(update)
        return web.Response(status=204)
