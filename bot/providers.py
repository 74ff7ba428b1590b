"""Speech providers built from settings: the one place that maps settings to audio/ constructors."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from audio.stt.base import STTEngine, STTError
from audio.tts.base import TTSEngine, TTSError, VoiceSpec
from bot.settings import Settings, secret_value

if TYPE_CHECKING:
    from bot.agent.character import Character

__all__ = ["build_stt", "build_tts", "build_local_tts", "voice_for", "checks", "local_stt_available", "stt_choice",
           "tts_choice"]

log = logging.getLogger(__name__)


def local_stt_available() -> bool:
    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        return False
    return True


def stt_choice(settings: Settings) -> str | None:
    """Which recognizer the settings select: ``"deepgram"``, ``"local"``, or None (listening off)."""
    if settings.stt_engine == "none":
        return None
    if settings.stt_engine == "deepgram" or (settings.stt_engine == "auto" and settings.deepgram_api_key):
        return "deepgram"
    return "local"


def tts_choice(settings: Settings) -> str | None:
    """Which voice the settings select: ``"elevenlabs"``, ``"piper"``, ``"espeak"``, or None (silent)."""
    if settings.tts_engine == "none":
        return None
    if settings.tts_engine == "elevenlabs" or (settings.tts_engine == "auto" and settings.elevenlabs_api_key):
        return "elevenlabs"
    return _local_voice(settings)


def _local_voice(settings: Settings) -> str:
    return "piper" if settings.tts_engine == "piper" or settings.piper_model is not None else "espeak"


def deepgram_language(settings: Settings, place_mode: str | None = None) -> str:
    """Deepgram's ``language`` for a place in ``place_mode`` (``auto`` or a code; None: LANGUAGE).

    ``auto`` listens with ``multi`` (nova-3 follows people switching languages mid-sentence); a
    fixed language other than English is asked for by its code; English keeps DEEPGRAM_LANGUAGE
    (``en-US`` by default, or whatever accent the operator chose).
    """
    from audio.languages import AUTO, DEEPGRAM_MULTI

    mode = place_mode or settings.language
    if mode == AUTO:
        return DEEPGRAM_MULTI
    if mode != "en" and not settings.deepgram_language.lower().startswith(mode):
        return mode
    return settings.deepgram_language


def deepgram_model(settings: Settings) -> str:
    """DEEPGRAM_MODEL, except that English-only Flux becomes Flux Multilingual when the bot speaks
    other languages (``flux-general-multi``: 10 languages, the language per turn)."""
    model = settings.deepgram_model
    if model == "flux-general-en" and settings.language != "en":
        return "flux-general-multi"
    return model


def build_stt(settings: Settings, *, keyterms: tuple[str, ...] = ()) -> STTEngine | None:
    """The configured recognizer; None when listening is off (``STT_ENGINE=none`` or nothing installed)."""
    choice = stt_choice(settings)
    if choice is None:
        return None
    if choice == "deepgram":
        from audio.stt.deepgram import DeepgramSTT

        ws_url = settings.deepgram_url
        http_url = None
        if ws_url:
            http_url = ws_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
        return DeepgramSTT(
            secret_value(settings.deepgram_api_key) or "",
            model=deepgram_model(settings),
            language=deepgram_language(settings),
            endpointing_ms=settings.deepgram_endpointing_ms,
            pause_signal=settings.deepgram_pause_signal,
            eager_eot_threshold=settings.deepgram_eager_eot_threshold,
            keyterms=keyterms,
            base_url=http_url,
            ws_url=ws_url,
        )
    if settings.stt_engine == "local" or local_stt_available():
        from audio.stt.local import LocalWhisperSTT

        if local_stt_multilingual(settings):
            from audio.stt import multilingual

            # LANGUAGE other than English: Whisper base (99 languages) joined from its two packages.
            path = multilingual.model_dir(settings.data_dir / "models")
            return LocalWhisperSTT(model=str(path), language=None if settings.language == "auto" else settings.language,
                                   workers=settings.local_stt_workers, short_window=settings.local_stt_short_window,
                                   early_ms=settings.local_stt_early_ms or None)
        return LocalWhisperSTT(model=settings.local_stt_model, workers=settings.local_stt_workers,
                               short_window=settings.local_stt_short_window, early_ms=settings.local_stt_early_ms or None)
    log.warning("no speech recognizer: set DEEPGRAM_API_KEY or `pip install 'voicebot[local]'`")
    return None


def build_local_tts(settings: Settings) -> TTSEngine:
    """The voice that needs nothing: Piper when configured, else espeak-ng."""
    if _local_voice(settings) == "piper":
        from audio.tts.piper import PiperEngine

        return PiperEngine(model_path=settings.piper_model)
    from audio.tts.espeak import EspeakEngine

    return EspeakEngine(default_voice=settings.espeak_voice)


def build_tts(settings: Settings) -> TTSEngine | None:
    choice = tts_choice(settings)
    if choice is None:
        return None
    if choice == "elevenlabs":
        from audio.tts.elevenlabs import ElevenLabsEngine

        kwargs: dict[str, object] = {"model": settings.elevenlabs_model}
        if settings.elevenlabs_voice_id:
            kwargs["voice_id"] = settings.elevenlabs_voice_id
        return ElevenLabsEngine(
            api_key=secret_value(settings.elevenlabs_api_key) or "",
            base_url=settings.elevenlabs_base_url,
            **kwargs,  # type: ignore[arg-type]
        )
    return build_local_tts(settings)


def voice_for(settings: Settings, character: Character, override: str | None = None, *,
              engine: str = "elevenlabs") -> VoiceSpec:
    """The voice to speak with on ``engine``: a per-guild choice, else settings, else the character's.

    The character's and settings' voices are ElevenLabs voices; a local engine (espeak, Piper) takes
    only a guild's own choice, made from that engine's voice list.
    """
    if engine != "elevenlabs":
        return VoiceSpec(voice_id=override)
    voice = character.voice or VoiceSpec()
    return dataclasses.replace(voice, voice_id=override or settings.elevenlabs_voice_id or voice.voice_id)


def local_stt_multilingual(settings: Settings) -> bool:
    """Whether the local recognizer is the optional multilingual Whisper base: installed
    (``voicebot[multilingual]``), no LOCAL_STT_MODEL of the operator's, and LANGUAGE not English."""
    if settings.local_stt_model is not None or settings.language == "en":
        return False
    from audio.stt import multilingual

    return multilingual.available()


def local_stt_english_only(settings: Settings) -> bool:
    """Whether the local recognizer hears English only: the packaged model is Whisper tiny.en (the
    multilingual one is an optional extra, used when LANGUAGE is not English)."""
    if local_stt_multilingual(settings):
        return False
    model = settings.local_stt_model
    return model is None or model.rstrip("/").endswith(".en")


def stt_language_note(settings: Settings, engine: STTEngine) -> str:
    """What `voicebot check` adds about languages: Deepgram's language, or local English-only."""
    if engine.name == "deepgram":
        return f", language {getattr(engine, 'language', None) or 'en'}"
    if local_stt_multilingual(settings):
        return ", multilingual (Whisper base)"
    if local_stt_english_only(settings):
        return "; English only (Whisper tiny.en): other languages need Deepgram or voicebot[multilingual]"
    return ""


def checks(settings: Settings) -> list[tuple[str, Callable[[], Awaitable[str]]]]:
    """`voicebot check` probes for the speech providers (and SMS), each closing what it opened."""
    probes: list[tuple[str, Callable[[], Awaitable[str]]]] = []

    async def check_stt() -> str:
        engine = build_stt(settings)
        if engine is None:
            raise STTError("no recognizer: set DEEPGRAM_API_KEY, or install the local one with "
                           "pip install 'voicebot[local]'", retryable=False,
                           user_message="set DEEPGRAM_API_KEY or install the local engine")
        try:
            detail = await engine.check()
        finally:
            await engine.aclose()
        return detail + stt_language_note(settings, engine)

    async def check_tts() -> str:
        engine = build_tts(settings)
        if engine is None:
            raise TTSError("TTS_ENGINE=none")
        try:
            return await engine.check()
        finally:
            await engine.aclose()

    stt, tts = stt_choice(settings), tts_choice(settings)
    if stt is not None:
        probes.append((f"speech-to-text ({stt})", check_stt))
    if tts is not None:
        probes.append((f"text-to-speech ({tts})", check_tts))
    if settings.sms_enabled:
        from bot.sms import check_twilio

        probes.append(("sms (twilio)", lambda: check_twilio(settings)))
    return probes

