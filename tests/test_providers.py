"""Which speech engines the settings select, and which voice the bot speaks with."""

from __future__ import annotations

import dataclasses

from audio.stt.deepgram import DeepgramSTT
from audio.stt.local import LocalWhisperSTT
from audio.tts.base import VoiceSpec
from audio.tts.elevenlabs import ElevenLabsEngine
from audio.tts.espeak import EspeakEngine
from bot.agent.character import default_character
from bot.providers import build_stt, build_tts, checks, voice_for
from bot.settings import load_settings


def settings(**env: str):  # type: ignore[no-untyped-def]
    return load_settings(env, env_file=None)


def test_keys_select_the_cloud_engines_and_nothing_falls_back_to_local() -> None:
    cloud = settings(DEEPGRAM_API_KEY="dg-key-123456", ELEVENLABS_API_KEY="el-key-123456",
                     DEEPGRAM_URL="ws://127.0.0.1:9")
    assert isinstance(build_stt(cloud), DeepgramSTT)
    assert isinstance(build_tts(cloud), ElevenLabsEngine)
    local = settings()
    assert isinstance(build_stt(local), LocalWhisperSTT)  # faster-whisper is installed for tests
    assert isinstance(build_tts(local), EspeakEngine)
    assert build_stt(settings(STT_ENGINE="none")) is None and build_tts(settings(TTS_ENGINE="none")) is None
    assert isinstance(build_stt(settings(STT_ENGINE="local", DEEPGRAM_API_KEY="dg-key-123456")), LocalWhisperSTT)


def test_voice_precedence_guild_then_settings_then_character() -> None:
    character = default_character()
    assert character.voice is not None
    own = voice_for(settings(), character)
    assert own == character.voice
    configured = voice_for(settings(ELEVENLABS_VOICE_ID="from-settings"), character)
    assert configured == dataclasses.replace(character.voice, voice_id="from-settings")
    assert voice_for(settings(ELEVENLABS_VOICE_ID="from-settings"), character, "guild-choice").voice_id == "guild-choice"
    plain = dataclasses.replace(character, voice=None)
    assert voice_for(settings(), plain) == VoiceSpec()
    # A local engine cannot use ElevenLabs voice ids: only the guild's own choice applies.
    assert voice_for(settings(ELEVENLABS_VOICE_ID="from-settings"), character, engine="espeak") == VoiceSpec()
    assert voice_for(settings(), character, "en-gb", engine="espeak") == VoiceSpec(voice_id="en-gb")


def test_check_names_the_engines() -> None:
    names = [name for name, _ in checks(settings(DEEPGRAM_API_KEY="dg-key-123456"))]
    assert names == ["speech-to-text (deepgram)", "text-to-speech (espeak)"]
