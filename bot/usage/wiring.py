"""Putting the guards in place: the meter from settings, a voice session's engines, a call's engines."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bot.usage.guards import LimitedEngine, LimitedSTT, LimitedTTS
from bot.usage.meter import OverLimit, UsageMeter, Who
from bot.usage.messages import resting_text
from bot.usage.store import UsageStore

if TYPE_CHECKING:
    from audio.stt.base import STTEngine
    from bot.settings import Settings
    from bot.store import Database
    from bot.voice.session import VoiceSession

__all__ = ["build_meter", "guard_agent", "guard_session", "local_fallback_stt"]

log = logging.getLogger(__name__)


def build_meter(settings: Settings, store: Database | None) -> UsageMeter:
    return UsageMeter(UsageStore(store) if store is not None else None, per_person=settings.limits_per_person,
                      per_server=settings.limits_per_server, total=settings.limits_total, prices=settings.prices,
                      local_stt_fallback=settings.limits_local_fallback)


def guard_agent(agent: Any, meter: UsageMeter) -> None:
    """Meter (and limit) every request of the agent's reply engine (idempotent)."""
    if not isinstance(agent.engine, LimitedEngine):
        agent.engine = LimitedEngine(agent.engine, meter)


def local_fallback_stt(settings: Settings, stt: STTEngine | None) -> STTEngine | None:
    """The local recognizer for people over their speech limit (LIMITS_LOCAL_FALLBACK), when the
    main one is paid and the local one is installed."""
    if not settings.limits_local_fallback or stt is None or stt.name != "deepgram":
        return None
    from bot.providers import build_stt, local_stt_available

    if not local_stt_available():
        log.warning("LIMITS_LOCAL_FALLBACK is on but the local recognizer is not installed "
                    "(pip install 'voicebot[local]'): people over their speech limit are not transcribed")
        return None
    return build_stt(settings.replace(stt_engine="local"))


def guard_session(session: VoiceSession, meter: UsageMeter, *, who_of: Callable[[str], Who],
                  guild: int | None = None, person: str | None = None,
                  post: Callable[[str], Awaitable[None]] | None = None,
                  language: Callable[[], str | None] = lambda: None,
                  local_stt: STTEngine | None = None) -> None:
    """Wrap a voice session's engines so each paid request is reserved first. Someone over a limit
    is told once, in ``language()``: posted with ``post`` and said in the channel."""

    async def tell(exc: OverLimit, who: Who) -> None:
        text = resting_text(exc.level, exc.until, language())
        if post is not None:
            try:
                await post(text)
            except Exception:
                log.exception("usage: could not post the resting notice")
        try:
            await session.say(text, language=language())
        except Exception:
            log.exception("usage: could not say the resting notice")

    if session.stt is not None and not isinstance(session.stt, LimitedSTT):
        session.stt = LimitedSTT(session.stt, meter, who_of, local=local_stt, tell=tell)
    same = session.fallback_tts is session.tts
    if not isinstance(session.tts, LimitedTTS):
        session.tts = LimitedTTS(session.tts, meter, guild=guild, person=person, tell=tell, language=language)
    if same:
        session.fallback_tts = session.tts
    elif session.fallback_tts is not None and not isinstance(session.fallback_tts, LimitedTTS):
        session.fallback_tts = LimitedTTS(session.fallback_tts, meter, guild=guild, person=person)
