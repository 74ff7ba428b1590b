"""The phone side of the web server: Twilio's incoming-call webhook, its status callback, and the
Media Streams WebSocket each call connects to.

``POST /twilio/voice`` (signed like the SMS webhook, checked against ``PUBLIC_URL``; forged: 403)
answers TwiML ``<Response><Connect><Stream url="wss://…/twilio/media/TOKEN"/></Connect></Response>``:
the stream URL is ``PUBLIC_URL`` with ``https``→``wss`` (``http``→``ws``), and the token is single-use,
lives 30 seconds and belongs to that CallSid (see :mod:`bot.phone.tokens`). A number outside
``PHONE_ALLOWED_CALLERS`` hears a short ``<Say>`` and ``<Hangup/>``. ``POST /twilio/voice/status`` takes
the signed call status callbacks. ``GET /twilio/media/{token}`` is the WebSocket; without a live token
it answers 403 before any upgrade.

Opt-outs: a number that texted STOP is never texted — and the bot places no calls at all, so it never
calls one back; calls *from* such a number are answered, since the person chose to call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.twiml.voice_response import Connect, VoiceResponse

from audio.stt.base import STTEngine
from audio.tts.base import TTSEngine, VoiceSpec
from bot.phone.call import CallOptions, PhoneCall
from bot.phone.tokens import StreamTokens

if TYPE_CHECKING:
    from bot.agent import Agent
    from bot.db import Database
    from bot.memory import Memory
    from bot.settings import Settings

__all__ = ["MEDIA_PATH", "PhoneService", "STATUS_PATH", "TwilioCalls", "VOICE_PATH", "build_phone", "ai_notice",
           "stream_base"]

log = logging.getLogger(__name__)

VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/voice/status"
MEDIA_PATH = "/twilio/media"
MAX_FRAME_BYTES = 64 * 1024  # a media message is ~300 bytes and start ~1 kB; anything near this is not Twilio
NO_EARS_TEXT = "Sorry, I can't take calls right now. Please send a text message instead. Goodbye."
NOT_ALLOWED_TEXT = "Sorry, this number doesn't take calls from your phone. Goodbye."
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
        caller_name: Callable[[str], str] | None = None,
        token_ttl: float = 30.0,
        owned: Iterable[object] = (),
    ) -> None:
        self.agent = agent
        self.memory = memory
        self.stt = stt
        self.tts = tts
        self.fallback_tts = fallback_tts
        self.voice = voice
        self.options = options
        self.allowed_callers = frozenset(allowed_callers)
        self.twilio_calls = calls
        self._caller_name = caller_name
        self._validator = RequestValidator(auth_token)
        self._public_url = public_url.rstrip("/")
        self._stream_base = stream_base(self._public_url)
        self.tokens = StreamTokens(token_ttl)
        self.calls: dict[str, PhoneCall] = {}  # by CallSid, while the socket is open
        self.finished: list[PhoneCall] = []  # the last few ended calls (simulate, tests)
        self._handlers: set[asyncio.Task[object]] = set()
        self._owned = tuple(owned)
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

    async def _signed_form(self, request: web.Request) -> Mapping[str, str] | web.Response:
        try:
            form = await request.post()
        except UnicodeDecodeError:
            log.warning("Twilio webhook %s rejected with 400: body is not UTF-8", request.path)
            return web.Response(status=400, text="body is not UTF-8")
        signature = request.headers.get("X-Twilio-Signature", "")
        url = self._public_url + request.raw_path
        algorithm = get_signature_algorithm(request.headers.get("X-Twilio-Webhooks-Signature-Settings"))
        if not signature or not self._validator.validate(url, form, signature, algorithm):
            log.warning("Twilio webhook %s rejected with 403: %s", request.path,
                        "no X-Twilio-Signature" if not signature else f"signature does not match {url}")
            return web.Response(status=403, text="invalid signature")
        return form  # type: ignore[return-value]

    async def voice_webhook(self, request: web.Request) -> web.Response:
        form = await self._signed_form(request)
        if isinstance(form, web.Response):
            return form
        call_sid, caller, called = (str(form.get(k, "")).strip() for k in ("CallSid", "From", "To"))
        missing = [k for k, v in (("CallSid", call_sid), ("From", caller)) if not v]
        if missing:
            log.warning("Twilio voice webhook rejected with 400: missing %s", ", ".join(missing))
            return web.Response(status=400, text=f"missing field(s): {', '.join(missing)}")
        response = VoiceResponse()
        if self._closing:
            response.say("Sorry, I'm restarting. Please call again in a minute.")
            response.hangup()
            log.info("call %s from %s turned away: shutting down", call_sid, _mask(caller))
        elif self.stt is None:
            response.say(NO_EARS_TEXT)
            response.hangup()
            log.warning("call %s from %s turned away: no speech recognizer (STT_ENGINE=none?)", call_sid,
                        _mask(caller))
        elif self.allowed_callers and caller not in self.allowed_callers:
            response.say(NOT_ALLOWED_TEXT)
            response.hangup()
            log.info("call %s from %s refused: not in PHONE_ALLOWED_CALLERS", call_sid, _mask(caller))
        else:
            token = self.tokens.issue(call_sid, caller, called)
            connect = Connect()
            # The token rides in the path: Twilio does not pass a stream URL's query string on.
            connect.stream(url=f"{self._stream_base}{MEDIA_PATH}/{token}")
            response.append(connect)
            log.info("call %s from %s: connecting its media stream", call_sid, _mask(caller))
        return web.Response(text=str(response), content_type="application/xml")

    async def status_webhook(self, request: web.Request) -> web.Response:
        form = await self._signed_form(request)
        if isinstance(form, web.Response):
            return form
        call_sid, status = str(form.get("CallSid", "")).strip(), str(form.get("CallStatus", "")).strip().lower()
        if not call_sid or not status:
            log.warning("Twilio call status callback rejected with 400: missing CallSid or CallStatus")
            return web.Response(status=400, text="missing CallSid or CallStatus")
        if status in ENDED_STATUSES:
            self.tokens.revoke_call(call_sid)
        log.info("call %s %s%s", call_sid, status,
                 f" after {form['CallDuration']} s" if str(form.get("CallDuration", "")).isdigit() else "")
        return web.Response(status=204)

    # ------------------------------------------------------------------ the media socket

    async def media(self, request: web.Request) -> web.StreamResponse:
        grant = self.tokens.redeem(request.match_info["token"])
        if grant is None or self._closing:
            # Refused before the upgrade: no socket, no audio. (No token detail in the log.)
            log.warning("media stream refused: %s", "shutting down" if grant else "unknown, used or expired token")
            return web.Response(status=403, text="stream not allowed")
        if grant.call_sid in self.calls:
            log.warning("call %s already has a media stream; refused a second", grant.call_sid)
            return web.Response(status=409, text="call already connected")
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=None, autoping=True)
        await ws.prepare(request)
        call = PhoneCall(
            grant=grant, agent=self.agent, memory=self.memory, stt=self.stt, tts=self.tts,
            fallback_tts=self.fallback_tts, voice=self.voice, options=self.options,
            caller_name=self._name(grant.caller),
            hangup=self.twilio_calls.hangup if self.twilio_calls is not None else None,
        )
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self.calls[grant.call_sid] = call
        await self._notify()
        try:
            await call.run(ws)
        finally:
            self.calls.pop(grant.call_sid, None)
            self.finished.append(call)
            del self.finished[:-20]
            if task is not None:
                self._handlers.discard(task)
            await self._notify()
        return ws

    def _name(self, number: str) -> str:
        if self._caller_name is not None:
            try:
                return self._caller_name(number)
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


def ai_notice(settings: Settings, engine_name: str) -> str:
    """The spoken notice: an AI answers, and which outside services hear or read the call."""
    from bot.providers import stt_choice, tts_choice

    parts = []
    if stt_choice(settings) == "deepgram":
        parts.append("Deepgram transcribes what you say")
    if engine_name == "openai":
        parts.append("OpenAI writes the replies" if not settings.openai_base_url
                     else "a language model service writes the replies")
    elif engine_name == "elizaos":
        parts.append("an ElizaOS agent writes the replies")
    if tts_choice(settings) == "elevenlabs":
        parts.append("ElevenLabs speaks them")
    heard = (", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] + ".") if parts else \
        "Your voice stays on this server."
    return f"Just so you know, this call is answered by an AI agent. {heard[0].upper()}{heard[1:]}"


def build_phone(settings: Settings, *, agent: Agent, memory: Memory, db: Database | None = None) -> PhoneService:
    """The phone service from settings (call inside the running loop; needs ``phone_enabled``)."""
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
    notice = ai_notice(settings, agent.engine_name) if settings.phone_ai_notice else ""
    options = CallOptions(greeting=settings.phone_greeting.replace("{name}", character.name), notice=notice,
                          max_seconds=float(settings.phone_max_call_seconds))
    caller_name = None
    if db is not None:
        from bot.sms.store import SmsStore

        store = SmsStore(db)

        def caller_name(number: str) -> str:
            link = store.link_for_number(number)
            # The memory link is the source of truth: /forget removes it, and then so does the name.
            if link is not None and link.identity in memory.identities_of(f"phone:{number}"):
                return link.display_name
            return f"caller ending {number[-4:]}"

    return PhoneService(
        agent=agent, memory=memory, stt=stt, tts=tts, fallback_tts=fallback, voice=voice,
        auth_token=settings.twilio_auth_token.get(), public_url=settings.public_url, options=options,
        allowed_callers=settings.phone_allowed_callers,
        calls=TwilioCalls(settings.twilio_account_sid, settings.twilio_auth_token.get(),
                          api_base=settings.twilio_api_base),
        caller_name=caller_name, owned=owned,
    )
