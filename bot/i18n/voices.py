"""The voice to speak a reply with, given its language.

espeak-ng has a voice per language (``audio.languages``); a guild's own espeak choice is kept
when it is a voice of the reply's language ("en-gb" for English). ElevenLabs keeps its voice (the
multilingual models speak every language in the same voice) unless the character names one
for the language, gets the language code, and moves to ``eleven_flash_v2_5`` when the
configured model is English-only. A character's ``languages.<code>.voice`` wins over all that.
"""

from __future__ import annotations

import dataclasses

from audio.languages import LANGUAGES
from audio.tts.base import VoiceSpec
from bot.agent.character import Character

__all__ = ["voice_for_language", "speaks", "MULTILINGUAL_MODEL"]

MULTILINGUAL_MODEL = "eleven_flash_v2_5"
# ElevenLabs models that speak one language only (the rest are multilingual).
_ENGLISH_ONLY_MODELS = ("eleven_monolingual_v1", "eleven_turbo_v2", "eleven_flash_v2")


def voice_for_language(base: VoiceSpec | None, engine: str, language: str | None,
                       character: Character | None = None) -> VoiceSpec | None:
    """``base`` adapted to speak ``language`` on ``engine`` ("espeak", "elevenlabs", "piper"…)."""
    if not language:
        return base
    own = character.languages.get(language) if character is not None else None
    voice = base or VoiceSpec()
    if engine == "espeak":
        chosen = voice.voice_id
        if own is not None and own.espeak_voice:
            chosen = own.espeak_voice
        elif chosen and chosen.lower().split("-", 1)[0] != language:
            chosen = None  # the guild's voice speaks another language: use this language's voice
        if not chosen and language in LANGUAGES:
            chosen = LANGUAGES[language].espeak
        return dataclasses.replace(voice, voice_id=chosen, language=language)
    if engine == "elevenlabs":
        voice_id = own.elevenlabs_voice if own is not None and own.elevenlabs_voice else voice.voice_id
        model = voice.model
        if language != "en" and model in _ENGLISH_ONLY_MODELS:
            model = MULTILINGUAL_MODEL
        return dataclasses.replace(voice, voice_id=voice_id, model=model, language=language)
    return dataclasses.replace(voice, language=language)


def speaks(engine: str, language: str | None) -> bool:
    """Whether ``engine`` can speak ``language``: the shipped Piper voice (joe) is English only."""
    return engine != "piper" or language in (None, "en")
