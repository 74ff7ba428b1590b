"""Pure text builders for what the bot tells people about listening: notices, status lines, summaries.

A bot that listens must say so plainly: that it is listening, which outside services hear the audio
or read the words, and how to say no. Everything here is a pure function of plain values so tests
read the exact wording without Discord.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from bot.providers import local_stt_english_only, stt_choice, tts_choice
from bot.settings import Settings
from bot.voice.turns import VoiceMode

if TYPE_CHECKING:
    from audio.watchdog import WatchdogStats

__all__ = [
    "Providers",
    "providers_from_settings",
    "consent_notice",
    "channel_status",
    "mode_explanation",
    "status_summary",
    "ConnectionStatus",
    "format_breakdown",
    "rule_in",
]

CHANNEL_STATUS_LIMIT = 500  # Discord's maximum voice channel status length
MESSAGE_LIMIT = 2000


@dataclass(frozen=True)
class Providers:
    """Who processes what, in words a person understands."""

    stt: str | None  # None: nobody transcribes (listening is off)
    stt_remote: bool
    tts: str | None
    tts_remote: bool
    llm: str
    llm_remote: bool


def _host(url: str | None) -> str | None:
    if not url:
        return None
    return urlsplit(url).hostname or None


def _is_local_host(host: str | None) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def providers_from_settings(settings: Settings, engine_name: str) -> Providers:
    """Describe the configured providers; ``engine_name`` is the agent's engine (``Agent.engine_name``)."""
    stt_kind, tts_kind = stt_choice(settings), tts_choice(settings)
    if stt_kind is None:
        stt, stt_remote = None, False
    elif stt_kind == "deepgram":
        host = _host(settings.deepgram_url)
        stt_remote = not _is_local_host(host)
        stt = "Deepgram" if host is None else f"Deepgram ({host})"
    else:
        stt_remote = False
        stt = _LOCAL_STT if local_stt_english_only(settings) else _LOCAL_STT_MULTI
    if tts_kind is None:
        tts, tts_remote = None, False
    elif tts_kind == "elevenlabs":
        host = _host(settings.elevenlabs_base_url)
        tts_remote = not _is_local_host(host)
        tts = "ElevenLabs" if host is None else f"ElevenLabs ({host})"
    else:
        tts, tts_remote = "a local voice on the bot's own server", False
    # the language model
    engine = engine_name.lower()
    if engine.startswith("openai"):
        host = _host(settings.openai_base_url) or "api.openai.com"
        llm, llm_remote = f"the language model at {host}", not _is_local_host(host)
    elif engine.startswith("eliza") and engine != "eliza" and settings.elizaos_url:
        host = _host(settings.elizaos_url)
        llm, llm_remote = f"the ElizaOS agent at {host}", not _is_local_host(host)
    else:
        llm, llm_remote = "a built-in script on the bot's own server", False
    return Providers(stt=stt, stt_remote=stt_remote, tts=tts, tts_remote=tts_remote, llm=llm, llm_remote=llm_remote)


_LOCAL_STT = "a local recognizer on the bot's own server"
_LOCAL_STT_MULTI = "a local multilingual recognizer on the bot's own server"
_MODE_KEYS = {VoiceMode.ALWAYS: "mode.always", VoiceMode.PUSH_TO_TALK: "mode.push_to_talk",
              VoiceMode.ADDRESSED: "mode.addressed", VoiceMode.SCRIBE: "mode.scribe"}


def _provider_phrase(text: str, language: str) -> str:
    """A provider description from ``providers_from_settings`` in ``language`` (names stay as they are)."""
    from bot.i18n.catalog import t

    fixed = {_LOCAL_STT: "consent.local_stt", _LOCAL_STT_MULTI: "consent.local_stt_multi",
             "a local voice on the bot's own server": "consent.local_tts",
             "a built-in script on the bot's own server": "consent.builtin_llm"}
    if text in fixed:
        return t(fixed[text], language)
    for prefix, key in (("the language model at ", "consent.llm_at"), ("the ElizaOS agent at ", "consent.elizaos_at")):
        if text.startswith(prefix):
            return t(key, language, host=text[len(prefix):])
    return text


def mode_explanation(mode: str, bot_name: str, language: str = "en") -> str:
    """One sentence on when the bot answers (in ``language``, from the catalog)."""
    from bot.i18n.catalog import t

    return t(_MODE_KEYS.get(mode, "mode.auto"), language, bot=bot_name)


def consent_notice(
    *,
    bot_name: str,
    channel_name: str,
    mode: str,
    providers: Providers,
    recording: bool,
    retention_days: int,
    mirror: bool = False,
    language: str = "en",
) -> str:
    """The message posted in the voice channel's chat when the bot joins: the same facts, line for
    line, in every language (the message catalog, ``bot.i18n``)."""
    from bot.i18n.catalog import t

    lines = [t("consent.title", language, bot=bot_name, channel=channel_name)]
    llm = _provider_phrase(providers.llm, language)
    if providers.stt is None:
        lines.append(t("consent.stt_off", language))
    else:
        key = "consent.stt_remote" if providers.stt_remote else "consent.stt_local"
        lines.append(t(key, language, stt=_provider_phrase(providers.stt, language), llm=llm))
        if providers.stt == _LOCAL_STT and language != "en":
            lines.append(t("language.local_stt_english_only", language))  # tiny.en: say it plainly
    if providers.tts is not None:
        lines.append(t("consent.tts", language, tts=_provider_phrase(providers.tts, language)))
    lines.append(mode_explanation(mode, bot_name, language))
    lines.append(t("consent.recording_on" if recording else "consent.recording_off", language))
    if retention_days == 1:
        lines.append(t("consent.retention_one_day", language))
    elif retention_days > 0:
        lines.append(t("consent.retention_days", language, days=retention_days))
    else:
        lines.append(t("consent.retention_forever", language))
    if mirror:
        lines.append(t("consent.mirror", language))
    lines.append(t("consent.optout", language))
    return _clip("\n".join(lines), MESSAGE_LIMIT)


def channel_status(bot_name: str, *, mode: str, language: str = "en") -> str:
    """The short voice channel status shown under the channel name (Discord allows 500 characters)."""
    from bot.i18n.catalog import t

    if mode == VoiceMode.PUSH_TO_TALK:
        key = "channel.status_push_to_talk"
    elif mode == VoiceMode.SCRIBE:
        key = "channel.status_scribe"
    else:
        key = "channel.status_listening"
    return _clip(t(key, language, bot=bot_name), CHANNEL_STATUS_LIMIT)


@dataclass(frozen=True)
class ConnectionStatus:
    """Plain data about one guild's voice connection, gathered by the voice manager for ``/status``."""

    channel_name: str | None
    connected: bool
    reconnecting: bool
    latency_ms: float | None
    dave_version: int | None  # 0: DAVE not in use; None: unknown
    dave_ready: bool | None
    received: int | None
    decrypted: int | None
    dropped: Mapping[str, int]
    mode: str
    voice: str | None
    listeners: int  # humans in the channel
    opted_out_present: int  # of those, how many opted out
    server_muted: bool
    can_speak: bool
    breakdown: Mapping[str, float | None] | None  # the last turn's latency breakdown in ms
    rule: str | None = None  # which answering rule applies right now (auto mode changes with the room)
    ignored: Mapping[str, int] | None = None  # transcripts dropped: echo of the bot, invented text
    lost: int | None = None  # frames missing from real streams after reordering and FEC
    rejected: int | None = None  # datagrams that were not audio anyone in the call sent
    hearing: WatchdogStats | None = None  # the deaf watchdog's view: people speaking, people heard
    bots_ignored: int = 0  # other bots in the channel whose audio is not heard


_STEPS = {
    "end_of_speech_to_final_transcript": "status.step.eos_final",
    "final_transcript_to_first_text": "status.step.final_text",
    "first_text_to_first_tts_audio": "status.step.text_audio",
    "first_tts_audio_to_first_frame": "status.step.audio_frame",
    "end_of_speech_to_first_frame": "status.step.eos_frame",
}
_IGNORED = {"echo": "status.ignored.echo", "phrase": "status.ignored.phrase",
            "non_speech": "status.ignored.non_speech", "low_confidence": "status.ignored.low_confidence"}
_RULES = {VoiceMode.ALWAYS: "rule.always", VoiceMode.ADDRESSED: "rule.addressed",
          VoiceMode.PUSH_TO_TALK: "rule.push_to_talk", VoiceMode.SCRIBE: "rule.scribe"}


def format_breakdown(breakdown: Mapping[str, float | None], language: str = "en") -> list[str]:
    """One line per latency step; missing steps are shown as '—'."""
    from bot.i18n.catalog import t

    lines = []
    for key, label in _STEPS.items():
        value = breakdown.get(key)
        lines.append(f"• {t(label, language)}: {'—' if value is None else f'{value:.0f} ms'}")
    return lines


def rule_in(mode: str, humans_present: int, language: str) -> str:
    """``TurnPolicy.rule_now`` in ``language``: which answering rule applies with this many people here."""
    from bot.i18n.catalog import t

    if mode == VoiceMode.AUTO:
        return t("rule.auto_alone", language) if humans_present <= 1 else \
            t("rule.auto_many", language, count=humans_present)
    key = _RULES.get(mode)
    return t(key, language) if key else mode


def status_summary(status: ConnectionStatus | None, providers: Providers, *, bot_name: str,
                   language: str | None = None, words: str = "en") -> str:
    """The ``/status`` reply in ``words``; ``language`` describes the server's language setting."""
    from bot.i18n.catalog import t

    def say(key: str, **values: object) -> str:
        return t(key, words, **values)

    lines: list[str] = []
    if status is None:
        lines.append(say("status.not_in_voice", bot=bot_name))
    else:
        if status.reconnecting:
            state = say("status.reconnecting")
        elif status.connected:
            state = say("status.connected_ms", ms=f"{status.latency_ms:.0f}") if status.latency_ms is not None \
                else say("status.connected")
        else:
            state = say("status.not_connected")
        lines.append(say("status.voice", channel=status.channel_name or "?", state=state))
        if status.dave_version is None:
            dave = say("status.dave_unknown")
        elif status.dave_version == 0:
            dave = say("status.dave_off")
        else:
            dave = say("status.dave_ready" if status.dave_ready else "status.dave_setting_up",
                       version=status.dave_version)
        lines.append(say("status.dave", state=dave))
        if status.received is not None:
            # drop reasons are the receive stage's own names (what the log and /metrics say)
            detail = ", ".join(f"{k} {v}" for k, v in sorted(status.dropped.items()) if v)
            if status.lost is None or status.rejected is None:
                counts = say("status.dropped", count=sum(status.dropped.values()))
            else:  # lost: gaps in real streams; rejected: not audio anyone in the call sent
                counts = say("status.lost_rejected", lost=status.lost, rejected=status.rejected)
            lines.append(say("status.packets", received=status.received, decrypted=status.decrypted, counts=counts)
                         + (say("status.drops", detail=detail) if detail else ""))
        if status.hearing is not None:
            h = status.hearing
            text = say("status.speaking_one" if h.speaking == 1 else "status.speaking_many",
                       count=h.speaking, heard=h.heard)
            if h.unheard:
                text += say("status.unheard", count=len(h.unheard), seconds=f"{max(h.unheard.values()):.0f}")
            if h.given_up:
                text += say("status.watchdog_gave_up")
            elif h.rejoins:
                text += say("status.watchdog_rejoined", count=h.rejoins)
            lines.append(say("status.hearing", text=text))
        if status.bots_ignored:
            lines.append(say("status.other_bots", count=status.bots_ignored))
        lines.append(say("status.mode", mode=status.mode, explanation=mode_explanation(status.mode, bot_name, words)))
        if status.rule:
            # the rule comes from TurnPolicy in English; other languages say the same from mode and people
            rule = status.rule if words == "en" else rule_in(status.mode, status.listeners, words)
            lines.append(say("status.right_now", rule=rule))
        if status.ignored and any(status.ignored.values()):
            items = ", ".join(f"{n} × {say(_IGNORED[k]) if k in _IGNORED else k}"
                              for k, n in sorted(status.ignored.items()) if n)
            lines.append(say("status.ignored", items=items))
        lines.append(say("status.listening_one" if status.listeners == 1 else "status.listening_many",
                         count=status.listeners)
                     + (say("status.opted_out_present", count=status.opted_out_present)
                        if status.opted_out_present else ""))
        if status.server_muted or not status.can_speak:
            lines.append(say("status.cant_speak"))
        if status.voice:
            lines.append(say("status.speaking_voice", voice=status.voice))
    stt = _provider_phrase(providers.stt, words) if providers.stt else say("status.off")
    if providers.stt == _LOCAL_STT:
        stt += say("status.english_only")  # the packaged model is tiny.en
    lines.append(say("status.stt", stt=stt))
    if language:
        lines.append(say("status.language", language=language))
    lines.append(say("status.tts", tts=_provider_phrase(providers.tts, words) if providers.tts else say("status.off")))
    lines.append(say("status.llm", llm=_provider_phrase(providers.llm, words)))
    if status is not None and status.breakdown:
        lines.append(say("status.last_turn"))
        lines.extend(format_breakdown(status.breakdown, words))
    elif status is not None:
        lines.append(say("status.last_turn_none"))
    return _clip("\n".join(lines), MESSAGE_LIMIT)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
