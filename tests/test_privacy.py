"""Consent texts (what the bot says about listening) and the privacy commands."""

from __future__ import annotations

import pytest

from bot.settings import Settings, load_settings
from bot.voice.consent import (
    CHANNEL_STATUS_LIMIT,
    ConnectionStatus,
    channel_status,
    consent_notice,
    providers_from_settings,
    status_summary,
)


def _settings(**env: str) -> Settings:
    return load_settings(env, env_file=None)


def test_providers_name_who_hears_the_audio() -> None:
    cloud = providers_from_settings(_settings(DEEPGRAM_API_KEY="dg", ELEVENLABS_API_KEY="el", OPENAI_API_KEY="sk"),
                                    "openai")
    assert (cloud.stt, cloud.stt_remote, cloud.tts, cloud.tts_remote) == ("Deepgram", True, "ElevenLabs", True)
    assert cloud.llm == "the language model at api.openai.com" and cloud.llm_remote
    local = providers_from_settings(_settings(), "eliza")
    assert not (local.stt_remote or local.tts_remote or local.llm_remote)
    assert "local" in local.stt and "local" in local.tts and "built-in" in local.llm
    off = providers_from_settings(_settings(STT_ENGINE="none", TTS_ENGINE="none"), "eliza")
    assert off.stt is None and off.tts is None
    ollama = providers_from_settings(_settings(OPENAI_BASE_URL="http://127.0.0.1:11434/v1"), "openai")
    assert ollama.llm == "the language model at 127.0.0.1" and not ollama.llm_remote
    eliza_os = providers_from_settings(_settings(ELIZAOS_URL="https://agents.example.org", ELIZAOS_AGENT_ID="a"),
                                       "elizaos")
    assert eliza_os.llm == "the ElizaOS agent at agents.example.org"


def test_consent_notice_says_what_listens_where_and_how_to_say_no() -> None:
    providers = providers_from_settings(_settings(DEEPGRAM_API_KEY="dg", ELEVENLABS_API_KEY="el",
                                                  OPENAI_API_KEY="sk"), "openai")
    text = consent_notice(bot_name="Wren", channel_name="Lounge", mode="addressed", providers=providers,
                          recording=False, retention_days=30)
    assert "Wren is now in Lounge and listening" in text
    assert "sent to Deepgram" in text and "ElevenLabs" in text and "api.openai.com" in text
    assert "/optout" in text and "/forget" in text and "/optin" in text
    assert "Audio is never saved" in text and "30 days" in text
    assert "says its name" in text
    assert len(text) <= 2000


@pytest.mark.parametrize("recording, retention, mirror, expected", [
    (True, 1, False, ["saved to disk", "1 day."]),
    (False, 0, True, ["Audio is never saved", "until someone asks", "transcript of the conversation"]),
])
def test_consent_notice_variants(recording: bool, retention: int, mirror: bool, expected: list[str]) -> None:
    providers = providers_from_settings(_settings(), "eliza")
    text = consent_notice(bot_name="Wren", channel_name="Lounge", mode="push-to-talk", providers=providers,
                          recording=recording, retention_days=retention, mirror=mirror)
    for phrase in expected:
        assert phrase in text
    assert "handled by a local recognizer" in text and "/listen" in text


def test_consent_notice_when_nothing_is_transcribed() -> None:
    providers = providers_from_settings(_settings(STT_ENGINE="none"), "eliza")
    text = consent_notice(bot_name="Wren", channel_name="Lounge", mode="always", providers=providers,
                          recording=False, retention_days=30)
    assert "nobody's voice is transcribed" in text


def test_channel_status_fits_discord_limit_even_with_a_long_name() -> None:
    assert "/optout" in channel_status("Wren", mode="always")
    assert "push-to-talk" in channel_status("Wren", mode="push-to-talk")
    assert len(channel_status("W" * 600, mode="always")) == CHANNEL_STATUS_LIMIT


def _status(**overrides: object) -> ConnectionStatus:
    values: dict[str, object] = dict(
        channel_name="Lounge", connected=True, reconnecting=False, latency_ms=41.6, dave_version=1, dave_ready=True,
        received=500, decrypted=480, dropped={"dave_decrypt": 12, "duplicate": 8, "opted_out": 0}, mode="always",
        voice=None, listeners=2, opted_out_present=1, server_muted=False, can_speak=True,
        breakdown={"end_of_speech_to_final_transcript": 300.0, "final_transcript_to_first_text": 210.0,
                   "first_text_to_first_tts_audio": 150.4, "first_tts_audio_to_first_frame": None,
                   "end_of_speech_to_first_frame": 702.0})
    values.update(overrides)
    return ConnectionStatus(**values)  # type: ignore[arg-type]


def test_status_summary_shows_connection_dave_packets_providers_and_latency() -> None:
    providers = providers_from_settings(_settings(), "eliza")
    text = status_summary(_status(), providers, bot_name="Wren")
    assert "Lounge, connected (42 ms)" in text
    assert "protocol v1, ready" in text
    assert "500 received, 480 decrypted, 20 dropped (drops: dave_decrypt 12, duplicate 8)" in text
    assert "2 people (1 opted out, not heard)" in text
    assert "end of speech → final transcript: 300 ms" in text
    assert "first synthesized audio → first packet: —" in text
    assert "end of speech → first packet**: 702 ms" in text
    assert "Speech-to-text:** a local recognizer" in text


def test_status_summary_variants() -> None:
    providers = providers_from_settings(_settings(), "eliza")
    assert "not in a voice channel" in status_summary(None, providers, bot_name="Wren")
    text = status_summary(_status(connected=False, reconnecting=True, dave_version=0, breakdown=None,
                                  server_muted=True, voice="rachel"), providers, bot_name="Wren")
    assert "reconnecting" in text and "off (transport encryption only)" in text
    assert "Last turn:** none yet" in text and "not allowed here right now" in text and "rachel" in text
    assert "setting up" in status_summary(_status(dave_ready=False), providers, bot_name="Wren")


def test_status_summary_separates_lost_from_rejected_and_shows_hearing() -> None:
    from types import MappingProxyType

    from audio.watchdog import WatchdogStats

    providers = providers_from_settings(_settings(), "eliza")
    hearing = WatchdogStats(speaking=2, heard=1, unheard=MappingProxyType({7: 6.2}), rejoins=1, given_up=False,
                            verdicts=1)
    text = status_summary(_status(lost=3, rejected=12, hearing=hearing, bots_ignored=1), providers, bot_name="Wren")
    assert "500 received, 480 decrypted, 3 lost, 12 rejected (drops: dave_decrypt 12, duplicate 8)" in text
    assert "**Hearing:** 2 people speaking lately, 1 heard; 1 not heard for 6 s; deaf watchdog rejoined 1×" in text
    assert "**Other bots:** 1 in the channel, not heard" in text
