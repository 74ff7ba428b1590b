"""The phone side of the web server: Twilio's incoming-call webhook, its status callback, and the
Media Streams WebSocket each call connects to.

``POST /twilio/voice`` (signed like the SMS webhook, checked against ``PUBLIC_URL``; forged: 403)
answers TwiML ``<Response><Connect><Stream url="wss://…/twilio/media/TOKEN"/></Connect></Response>``:
the stream URL is ``PUBLIC_URL`` with ``https``→``wss`` (``http``→``ws``), and the token is single-use,
lives 30 seconds and is the only one its CallSid ever gets (see :mod:`bot.phone.tokens`): the same
webhook replayed gets the same TwiML while the token is unused, and 409 once it was used or the call
ended. A number outside ``PHONE_ALLOWED_CALLERS`` hears a short ``<Say>`` and ``<Hangup/>``, and so does
a caller while ``PHONE_MAX_CALLS`` calls are connected or connecting (before any recognition starts).
``POST /twilio/voice/status`` takes the signed call status callbacks; an ended call's token dies.
``GET /twilio/media/{token}`` is the WebSocket: Twilio signs the upgrade (``X-Twilio-Signature`` over
the ``wss://`` URL, no parameters), and without that signature and a live token it answers 403 before
any upgrade. Every signature check is :mod:`bot.twilio_signature`, the one the SMS webhooks use.

Language: the TwiML ``<Say>`` texts and everything the call says in its own words are in the
number's language (``bot.i18n.places``, the per-number store SMS uses); with Deepgram a number in
``auto`` is heard with ``language=multi`` and a number that set a language with that language.

Opt-outs: a number that texted STOP is never texted — and the bot places no calls at all, so it never
calls one back; calls *from* such a number are answered, since the person chose to call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web
from twilio.twiml.voice_response import Connect, VoiceResponse

from audio.stt.base import STTEngine
from audio.tts.base import TTSEngine, VoiceSpec
from bot.i18n.catalog import catalog_language, t
from bot.i18n.languages import AUTO
from bot.phone.call import CallOptions, CallText, PhoneCall, catalog_text
from bot.phone.tokens import CallTokens, DatabaseTokens, StreamTokens
from bot.twilio_signature import TwilioSignature

if TYPE_CHECKING:
    from bot.agent import Agent
    from bot.i18n.places import PlaceLanguages
    from bot.memory import Memory
    from bot.settings import Settings
    from bot.store import Database as Store
    from bot.voice.session import VoiceSession

__all__ = ["MEDIA_PATH", "PhoneService", "STATUS_PATH", "TwilioCalls", "VOICE_PATH", "build_phone", "ai_notice",
           "stream_base"]

log = logging.getLogger(__name__)
NAME_BUDGET = 0.5  # seconds a call's start may wait for the caller's linked name

VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/voice/status"
MEDIA_PATH = "/twilio/media"
DEFAULT_MAX_CALLS = 10  # PHONE_MAX_CALLS' default
MAX_FRAME_BYTES = 64 * 1024  # a media message is ~300 bytes and start ~1 kB; anything near this is not Twilio
# <Say language=… voice=…> for the catalog's languages: Twilio wants a locale, and its default voice
# ("man") has no Japanese or Brazilian Portuguese, so those name an Amazon Polly voice Twilio offers.
# English keeps Twilio's defaults.
SAY_VOICES: dict[str, tuple[str, str | None]] = {
    "de": ("de-DE", None), "fr": ("fr-FR", None), "es": ("es-ES", None),
    "pt": ("pt-BR", "Polly.Camila"), "ja": ("ja-JP", "Polly.Mizuki"),
}
ENDED_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


def stream_base(public_url: str) -> str:
    """The WebSocket base for ``public_url``: ``https``→``wss``, ``http``→``ws``."""
    url = public_url.rstrip("/")
    if url.startswith("https://"):
        return "wss://" + url[len("https://"):]
    if url.startswith("http://"):
        return "ws://" + url[len("http://"):]
    raise ValueError(f"PUBLIC_URL must start with http:// or https://, got {public_url!r}")


def _mask(number: str) -> str:
    return f"…{number[-4:]}" if len(number) > 4 else "…"


class TwilioCalls:
    """Hangs up calls through Twilio's REST API (``Calls/{CallSid}.json`` with ``Status=completed``).

    The async HTTP client builds an aiohttp session, so it is made on first use inside the loop.
    """

    def __init__(self, account_sid: str, auth_token: str, *, api_base: str | None = None) -> None:
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._api_base = api_base
        self._client: object | None = None  # twilio.rest.Client; typed loosely so it never leaks

    def __repr__(self) -> str:
        return f"TwilioCalls(api_base={self._api_base!r})"

    def _get(self) -> object:
        if self._client is None:
            from twilio.http.async_http_client import AsyncTwilioHttpClient
            from twilio.rest import Client

            # environment={}: the SDK would otherwise read TWILIO_* variables from os.environ.
            client = Client(self._account_sid, self._auth_token, http_client=AsyncTwilioHttpClient(), environment={})
            if self._api_base:
                client.api.base_url = self._api_base
            self._client = client
        return self._client

    async def hangup(self, call_sid: str) -> None:
        client = self._get()
        await client.calls(call_sid).update_async(status="completed")  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.http_client.close()  # type: ignore[attr-defined]


class PhoneService:
    """Owns the calls in progress; :meth:`register` mounts the routes, :meth:`aclose` ends every call."""

    def __init__(
        self,
        *,
        agent: Agent,
        memory: Memory,
        stt: STTEngine | None,
        tts: TTSEngine,
        fallback_tts: TTSEngine | None,
        voice: VoiceSpec | None,
        auth_token: str,
        public_url: str,
        options: CallOptions,
        allowed_callers: Iterable[str] = (),
        calls: TwilioCalls | None = None,
        caller_name: Callable[[str], Awaitable[str]] | None = None,
        token_ttl: float = 30.0,
        tokens: CallTokens | None = None,
        max_calls: int = DEFAULT_MAX_CALLS,
        owned: Iterable[object] = (),
        languages: PlaceLanguages | None = None,
        recognizer_language: Callable[[str], str] | None = None,
        usage: Any = None,
    ) -> None:
        self.agent = agent
        # bot.usage.UsageMeter: a caller over a daily limit is turned away before any recognition;
        # a call's minutes are reserved when it is answered (its length capped to what was granted).
        self.usage = usage
        self._usage_grants: dict[str, Any] = {}  # CallSid -> the call's reserved phone seconds
        self.memory = memory
        self.stt = stt
        self.tts = tts
        self.fallback_tts = fallback_tts
        self.voice = voice
        self.options = options
        self.allowed_callers = frozenset(allowed_callers)
        self.twilio_calls = calls
        self._caller_name = caller_name
        self._signature = TwilioSignature(auth_token, public_url)
        self._public_url = self._signature.public_url
        self._stream_base = stream_base(self._public_url)
        self.tokens: CallTokens = tokens if tokens is not None else StreamTokens(token_ttl)
        self.max_calls = max_calls  # PHONE_MAX_CALLS: connected calls plus those connecting
        self._upgrading = 0  # media sockets past their token, not yet in self.calls
        self.calls: dict[str, PhoneCall] = {}  # by CallSid, while the socket is open
        self.finished: list[PhoneCall] = []  # the last few ended calls (simulate, tests)
        self._handlers: set[asyncio.Task[object]] = set()
        self._owned = tuple(owned)
        # The language per number (None: English only); ``recognizer_language`` maps a number's
        # mode (``auto`` or a code) to Deepgram's ``language`` for its stream.
        self.languages = languages
        self._recognizer_language = recognizer_language
        self._closing = False
        self.changed = asyncio.Condition()  # notified when a call starts or ends (tests, simulate)

    def __repr__(self) -> str:
        return f"PhoneService(public_url={self._public_url!r}, calls={len(self.calls)})"

    def register(self, app: web.Application) -> None:
        app.router.add_post(VOICE_PATH, self.voice_webhook)
        app.router.add_post(STATUS_PATH, self.status_webhook)
        app.router.add_get(MEDIA_PATH + "/{token}", self.media)
        app.on_shutdown.append(self._on_shutdown)

    # ------------------------------------------------------------------ webhooks

    async def voice_webhook(self, request: web.Request) -> web.Response:
        form = await self._signature.signed_form(request)
        if isinstance(form, web.Response):
            return form
        call_sid, caller, called = (str(form.get(k, "")).strip() for k in ("CallSid", "From", "To"))
        missing = [k for k, v in (("CallSid", call_sid), ("From", caller)) if not v]
        if missing:
            log.warning("Twilio voice webhook rejected with 400: missing %s", ", ".join(missing))
            return web.Response(status=400, text=f"missing field(s): {', '.join(missing)}")
        response = VoiceResponse()
        if self._closing:
            self._say(response, "phone.restarting", caller)
            response.hangup()
            log.info("call %s from %s turned away: shutting down", call_sid, _mask(caller))
        elif self.stt is None:
            self._say(response, "phone.no_ears", caller)
            response.hangup()
            log.warning("call %s from %s turned away: no speech recognizer (STT_ENGINE=none?)", call_sid,
                        _mask(caller))
        elif self.allowed_callers and caller not in self.allowed_callers:
            self._say(response, "phone.not_allowed", caller)
            response.hangup()
            log.info("call %s from %s refused: not in PHONE_ALLOWED_CALLERS", call_sid, _mask(caller))
        elif not await self.tokens.seen(call_sid) and await self.busy():
            self._say(response, "phone.busy", caller)
            response.hangup()
            log.warning("call %s from %s turned away: %d calls connected or connecting (PHONE_MAX_CALLS=%d)",
                        call_sid, _mask(caller), await self.active_calls(), self.max_calls)
        elif (until := await self._usage_refusal(call_sid, caller)) is not None:
            from bot.usage.messages import until_text

            self._say(response, "usage.call_over", caller, time=until_text(until))
            response.hangup()
            log.info("call %s from %s turned away: over a daily limit", call_sid, _mask(caller))
        else:
            token = await self.tokens.issue(call_sid, caller, called)
            if token is None:
                # A replay (Twilio's signature holds no time): this call's one token is used or dead.
                log.warning("call %s: voice webhook again after its stream connected or the call ended; "
                            "refused with 409", call_sid)
                return web.Response(status=409, text="call already answered")
            connect = Connect()
            # The token rides in the path: Twilio does not pass a stream URL's query string on.
            connect.stream(url=f"{self._stream_base}{MEDIA_PATH}/{token}")
            response.append(connect)
            log.info("call %s from %s: connecting its media stream", call_sid, _mask(caller))
        return web.Response(text=str(response), content_type="application/xml")

    async def active_calls(self) -> int:
        """Calls connected here plus calls this process answered whose stream is about to connect."""
        return len(self.calls) + self._upgrading + await self.tokens.pending()

    async def busy(self) -> bool:
        return await self.active_calls() >= self.max_calls

    def language_of(self, number: str) -> str:
        """The language the bot's own words to ``number`` are in (its set or last sure language)."""
        if self.languages is None:
            return "en"
        try:
            return catalog_language(self.languages.fallback(f"phone:{number}"))
        except Exception:  # the database is not this webhook's to fail on: English it is
            log.exception("looking up the language of %s failed", _mask(number))
            return "en"

    def _say(self, response: VoiceResponse, key: str, number: str, **values: object) -> None:
        language = self.language_of(number)
        if language not in SAY_VOICES:
            response.say(t(key, "en", **values))
            return
        locale, voice = SAY_VOICES[language]
        if voice is None:
            response.say(t(key, language, **values), language=locale)
        else:
            response.say(t(key, language, **values), voice=voice, language=locale)

    async def _usage_refusal(self, call_sid: str, caller: str) -> float | None:
        """Reserve the call's minutes (up to PHONE_MAX_CALL_SECONDS) and check the caller can still be
        heard: None when the call may go on, else when the caller's allowance comes back."""
        if self.usage is None or call_sid in self._usage_grants:
            return None
        from bot.usage import OverLimit, Who

        who = Who(person=f"phone:{caller}")
        try:
            if self.stt is not None and self.stt.name == "deepgram" and not self.usage.local_stt_fallback:
                await self.usage.check("speech", who, engine=self.stt.name)  # no recognizer would hear them
            grant = await self.usage.reserve("phone", who, self.options.max_seconds, engine="twilio", minimum=10.0)
        except OverLimit as exc:
            return exc.until
        except Exception:  # the store is down: the call goes on, its minutes counted when it ends
            log.exception("usage: could not reserve call minutes for %s", call_sid)
            return None
        self._usage_grants[call_sid] = grant
        return None

    def _usage_settle(self, call_sid: str, seconds: float) -> None:
        grant = self._usage_grants.pop(call_sid, None)
        if grant is not None and self.usage is not None:
            self.usage.settle(grant, seconds)

    def stream_options(self, number: str) -> dict[str, str]:
        """Recognizer options for a call from ``number``: Deepgram's language for the number's mode
        when it differs from the engine's (``multi`` for ``auto``), else none."""
        if self.languages is None or self._recognizer_language is None or self.stt is None:
            return {}
        setting, _learned = self.languages.store.get(f"phone:{number}")
        wanted = self._recognizer_language(setting or AUTO)
        return {} if wanted == getattr(self.stt, "language", None) else {"language": wanted}

    async def status_webhook(self, request: web.Request) -> web.Response:
        form = await self._signature.signed_form(request)
        if isinstance(form, web.Response):
            return form
        call_sid, status = str(form.get("CallSid", "")).strip(), str(form.get("CallStatus", "")).strip().lower()
        if not call_sid or not status:
            log.warning("Twilio call status callback rejected with 400: missing CallSid or CallStatus")
            return web.Response(status=400, text="missing CallSid or CallStatus")
        if status in ENDED_STATUSES:
            await self.tokens.end_call(call_sid)
            if call_sid not in self.calls:  # never connected (or already over): its minutes go back
                self._usage_settle(call_sid, 0.0)
        log.info("call %s %s%s", call_sid, status,
                 f" after {form['CallDuration']} s" if str(form.get("CallDuration", "")).isdigit() else "")
        return web.Response(status=204)

    # ------------------------------------------------------------------ the media socket

    async def media(self, request: web.Request) -> web.StreamResponse:
        refused = self._signature.check_upgrade(request, self._stream_base)
        if refused is not None:
            return refused  # before the token: a stranger cannot spend a real call's token
        grant = await self.tokens.redeem(request.match_info["token"])
        if grant is None or self._closing:
            # Refused before the upgrade: no socket, no audio. (No token detail in the log.)
            log.warning("media stream refused: %s", "shutting down" if grant else "unknown, used or expired token")
            if grant is not None:
                await self.tokens.end_call(grant.call_sid)
            return web.Response(status=403, text="stream not allowed")
        if grant.call_sid in self.calls:
            log.warning("call %s already has a media stream; refused a second", grant.call_sid)
            return web.Response(status=409, text="call already connected")
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=None, autoping=True)
        self._upgrading += 1  # between its token and self.calls, still one of the calls in progress
        try:
            await ws.prepare(request)
        except BaseException:
            await self.tokens.end_call(grant.call_sid)
            raise
        finally:
            self._upgrading -= 1
        options, on_session = self.options, self._console_hook(request)
        usage_grant = self._usage_grants.get(grant.call_sid)
        if self.usage is not None:
            if usage_grant is not None and usage_grant.granted < options.max_seconds:
                options = dataclasses.replace(options, max_seconds=usage_grant.granted)  # the minutes left today
            on_session = self._usage_hook(grant.caller, on_session)
        call = PhoneCall(
            grant=grant, agent=self.agent, memory=self.memory, stt=self.stt, tts=self.tts,
            fallback_tts=self.fallback_tts, voice=self.voice, options=options,
            caller_name=await self._name(grant.caller),
            hangup=self.twilio_calls.hangup if self.twilio_calls is not None else None,
            languages=self.languages, stream_options=self.stream_options(grant.caller),
            on_session=on_session,
        )
        connected_at = time.monotonic()
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self.calls[grant.call_sid] = call
        await self._notify()
        try:
            await call.run(ws)
        finally:
            self._usage_settle(grant.call_sid, time.monotonic() - connected_at)
            self.calls.pop(grant.call_sid, None)
            await self.tokens.end_call(grant.call_sid)  # the call is over: no token of it opens anything again
            self.finished.append(call)
            del self.finished[:-20]
            if task is not None:
                self._handlers.discard(task)
            await self._notify()
        return ws

    def _usage_hook(self, caller: str, then: Callable[[VoiceSession], None] | None) -> Callable[[VoiceSession], None]:
        """Guard the call's session: the caller's speech and the voice's characters reserved first."""
        from bot.usage import Who
        from bot.usage.wiring import guard_session

        def hook(session: VoiceSession) -> None:
            person = f"phone:{caller}"
            guard_session(session, self.usage, who_of=lambda _speaker: Who(person=person), person=person,
                          language=lambda: self.language_of(caller))
            if then is not None:
                then(session)

        return hook

    def _console_hook(self, request: web.Request) -> Callable[[VoiceSession], None] | None:
        """The console's metrics for the call's session, when the console is on this server: the
        same turn outcomes and waits as a voice channel's, labelled ``call``."""
        from bot.console.app import CONSOLE_KEY

        console = request.app.get(CONSOLE_KEY)
        if console is None:
            return None
        return console.watch  # the session knows its pause window (TurnDetection) and when each turn ended

    async def _name(self, number: str) -> str:
        if self._caller_name is not None:
            try:
                # A database that is slow or away costs the caller a greeting by number, never a wait.
                async with asyncio.timeout(NAME_BUDGET):
                    return await self._caller_name(number)
            except asyncio.TimeoutError:
                log.info("looking up the caller's name took over %.1f s; greeting by number", NAME_BUDGET)
            except Exception:
                log.exception("looking up the caller's name failed")
        return f"caller ending {number[-4:]}"

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_ended(self, count: int, timeout: float = 30.0) -> list[PhoneCall]:
        """Wait until ``count`` calls have ended (the timeout only guards failures)."""
        async with asyncio.timeout(timeout):
            async with self.changed:
                await self.changed.wait_for(lambda: len(self.finished) >= count)
        return list(self.finished)

    # ------------------------------------------------------------------ lifecycle

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.end_calls()

    async def end_calls(self) -> None:
        """Close every call's socket (Twilio then ends the call) and wait for their handlers."""
        self._closing = True
        for call in list(self.calls.values()):
            await call.end("shutdown")
        handlers = set(self._handlers)
        if handlers:
            _, late = await asyncio.wait(handlers, timeout=15)
            for task in late:
                task.cancel()

    async def aclose(self) -> None:
        await self.end_calls()
        if self.twilio_calls is not None:
            await self.twilio_calls.aclose()
        for engine in self._owned:
            with contextlib.suppress(Exception):
                await engine.aclose()  # type: ignore[attr-defined]


def ai_notice(settings: Settings, engine_name: str, language: str = "en") -> str:
    """The spoken notice in ``language``: an AI answers, and which outside services hear or read the call."""
    from bot.providers import stt_choice, tts_choice

    keys = []
    if stt_choice(settings) == "deepgram":
        keys.append("phone.notice.deepgram")
    if engine_name == "openai":
        keys.append("phone.notice.openai" if not settings.openai_base_url else "phone.notice.llm")
    elif engine_name == "elizaos":
        keys.append("phone.notice.elizaos")
    if tts_choice(settings) == "elevenlabs":
        keys.append("phone.notice.elevenlabs")
    sentences = [t(key, language) for key in ["phone.notice.ai", *(keys or ["phone.notice.local"])]]
    return ("" if catalog_language(language) == "ja" else " ").join(sentences)


def build_phone(settings: Settings, *, agent: Agent, memory: Memory, store: Store | None = None,
                languages: PlaceLanguages | None = None, usage: Any = None) -> PhoneService:
    """The phone service from settings (call inside the running loop; needs ``phone_enabled``).

    ``store`` (bot/store, where the SMS links live) lets a linked caller be greeted by name; ``usage``
    (bot/usage) meters and limits call minutes."""
    tokens = _shared_tokens(settings, store)
    from bot.providers import build_local_tts, build_stt, tts_choice, voice_for

    if not settings.phone_enabled or not settings.public_url:
        raise ValueError("phone calls need TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_PHONE_NUMBER and PUBLIC_URL")
    assert settings.twilio_account_sid and settings.twilio_auth_token
    character = agent.character
    stt = build_stt(settings, keyterms=(character.name,))
    owned: list[object] = [e for e in (stt,) if e is not None]
    tts: TTSEngine
    fallback: TTSEngine | None = None
    if tts_choice(settings) == "elevenlabs":
        from audio.tts.elevenlabs import ElevenLabsEngine
        from bot.settings import secret_value

        kwargs: dict[str, object] = {"model": settings.elevenlabs_model}
        if settings.elevenlabs_voice_id:
            kwargs["voice_id"] = settings.elevenlabs_voice_id
        # μ-law 8 kHz straight from ElevenLabs: exactly what Twilio plays, no conversion at all.
        tts = ElevenLabsEngine(api_key=secret_value(settings.elevenlabs_api_key) or "",
                               base_url=settings.elevenlabs_base_url, output_format="ulaw_8000",
                               **kwargs)  # type: ignore[arg-type]
        fallback = build_local_tts(settings)
        owned += [tts, fallback]
    else:
        tts = build_local_tts(settings)  # a silent phone makes no sense: TTS_ENGINE=none still speaks here
        owned.append(tts)
    voice = voice_for(settings, character, engine=tts.name) if tts.name == "elevenlabs" else None
    from bot.settings import Settings as _Settings
    from bot.voice.endpointing import TurnDetection

    greeting: CallText
    if settings.phone_greeting == _Settings().phone_greeting:
        greeting = catalog_text("phone.greeting", name=character.name)  # the default: in the caller's language
    else:
        greeting = settings.phone_greeting.replace("{name}", character.name)  # the operator's own words
    notice: CallText = partial(ai_notice, settings, agent.engine_name) if settings.phone_ai_notice else ""
    options = CallOptions(
        greeting=greeting, notice=notice, max_seconds=float(settings.phone_max_call_seconds),
        # The same end-of-turn rule and speculation as the voice channels (bot.voice.endpointing).
        turn_detection=TurnDetection(mode=settings.turn_detection, pause_ms=settings.turn_pause_ms,
                                     finished_ms=settings.turn_end_ms, unfinished_ms=settings.turn_hold_ms),
        speculate=settings.speculative_reply, max_reply_seconds=settings.voice_reply_max_seconds,
    )
    caller_name = None
    recognizer_language = None
    if languages is not None:
        from bot.i18n.detect import preload

        preload()  # the text detector's model, now rather than during a caller's first turn
        if stt is not None and stt.name == "deepgram":
            from bot.providers import deepgram_language

            recognizer_language = partial(deepgram_language, settings)
    if store is not None:
        from bot.sms.store import SmsStore, open_sms_store

        sms_store: SmsStore | None = None

        async def caller_name(number: str) -> str:
            nonlocal sms_store
            if sms_store is None:
                sms_store = await open_sms_store(store)
            link = await sms_store.link_for_number(number)
            # The memory link is the source of truth: /forget removes it, and then so does the name.
            if link is not None and link.identity in await memory.identities_of(f"phone:{number}"):
                return link.display_name
            return f"caller ending {number[-4:]}"

    return PhoneService(
        agent=agent, memory=memory, stt=stt, tts=tts, fallback_tts=fallback, voice=voice,
        auth_token=settings.twilio_auth_token.get(), public_url=settings.public_url, options=options,
        allowed_callers=settings.phone_allowed_callers,
        calls=TwilioCalls(settings.twilio_account_sid, settings.twilio_auth_token.get(),
                          api_base=settings.twilio_api_base),
        caller_name=caller_name, owned=owned, languages=languages, recognizer_language=recognizer_language,
        max_calls=settings.phone_max_calls, usage=usage, tokens=tokens,
    )


def _shared_tokens(settings: Settings, store: Store | None) -> CallTokens | None:
    if store is None:
        return None
    import os
    import socket

    return DatabaseTokens(store, issued_by=settings.process_name or f"{socket.gethostname()}:{os.getpid()}")
