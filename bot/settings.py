"""One typed settings object, read once from the environment and ``.env``.

This is the only module that reads ``os.environ``. Every problem is collected and reported
together, naming each variable. Secrets are wrapped in :class:`Secret` so they never appear in
logs, errors or ``repr``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import re
import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from bot.shards import MAX_SHARD_COUNT, parse_shard_ids, shard_problems
from bot.usage.limits import Limits, Prices, parse_limits, parse_prices

__all__ = ["Secret", "Settings", "SettingsError", "env_file_in_use", "load_settings", "requested_log_level",
           "secret_values", "ENV_VARS"]

T = TypeVar("T")

VOICE_MODES = ("auto", "always", "addressed", "push-to-talk", "scribe")
AGENT_ENGINES = ("auto", "openai", "elizaos", "eliza")
ELIZAOS_APIS = ("auto", "v1", "v0")
STT_ENGINES = ("auto", "deepgram", "local", "none")
TTS_ENGINES = ("auto", "elevenlabs", "espeak", "piper", "none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:  # pickling would be a way to leak it
        raise TypeError("Secret values cannot be pickled")


class SettingsError(Exception):
    """Raised with every configuration problem at once.

    ``secrets`` holds the raw values of the secret settings that were read, so whoever prints the
    problems can redact them even though no :class:`Settings` was built.
    """

    def __init__(self, problems: list[str], *, secrets: tuple[str, ...] = ()) -> None:
        self.problems = problems
        self.secrets = secrets
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} configuration problem(s):\n{lines}")


@dataclass(frozen=True)
class Settings:
    """Everything configurable, grouped by service. See ``.env.example`` for the variables."""

    # --- Discord
    discord_token: Secret | None = None
    discord_application_id: int | None = None
    discord_dev_guild_id: int | None = None
    discord_sync_global: bool = False
    discord_chat_channels: frozenset[int] = frozenset()
    discord_api_base: str | None = None  # e.g. https://127.0.0.1:PORT/api/v10 for the loopback Discord
    discord_ca_file: Path | None = None  # extra CA certificate to trust (loopback Discord's TLS)
    shard_ids: tuple[int, ...] | None = None  # this process's shards; None: all of shard_count
    shard_count: int | None = None  # shards across all processes; None: Discord's recommendation
    # --- Several processes (bot/cluster)
    database_url: str | None = None  # postgresql://...: the database the processes share; None: the SQLite file
    process_name: str | None = None  # this process in the cluster and /metrics; None: host:pid
    cluster_heartbeat: float = 5.0  # seconds between two heartbeats of a process
    cluster_down_after: int = 3  # missed heartbeats after which a process counts as down
    chat_rate_limit: int = 6  # messages per user per minute
    # --- Agent
    character_file: Path | None = None  # None: the shipped default character
    agent_engine: str = "auto"
    openai_api_key: Secret | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    openai_max_tokens: int = 400
    openai_temperature: float = 0.8
    elizaos_url: str | None = None
    elizaos_agent_id: str | None = None
    elizaos_api_key: Secret | None = None
    elizaos_api: str = "auto"
    memory_context_turns: int = 20
    # Background learning with an LLM engine: facts about people and voice-session summaries.
    memory_facts: bool = True
    facts_model: str | None = None  # None: OPENAI_MODEL
    facts_debounce_seconds: float = 30.0
    facts_per_person: int = 50
    facts_tokens_per_hour: int = 20_000
    knowledge_dir: Path | None = None  # None: the "knowledge" folder beside CHARACTER_FILE
    memory_recall: bool = True  # long-term recall (bot/recall) adds remembered turns to the prompt
    recall_budget_ms: int = 50  # a reply waits at most this long for memories, then goes on without
    memory_recall_count: int = 5  # memories in a prompt at most
    memory_prompt_tokens: int = 400  # ...and at most about this many tokens of them
    memory_embeddings: str = "off"  # off | local (voicebot[embeddings]) | openai: vectors re-rank recall's candidates
    memory_embeddings_model: str = "text-embedding-3-small"  # MEMORY_EMBEDDINGS=openai's model
    data_dir: Path = Path("data")
    database_url: str | None = None  # postgresql://…; unset: the SQLite file in DATA_DIR
    memory_queue_max: int = 10_000  # turns held in memory while the database is away
    transcript_retention_days: int = 30  # 0 keeps transcripts forever
    privacy_key_file: Path | None = None  # the opt-out key's file; None: beside the SQLite file
    privacy_key: Secret | None = None  # the opt-out key itself (64 hex digits), instead of a file
    # --- Speech-to-text
    stt_engine: str = "auto"
    deepgram_api_key: Secret | None = None
    deepgram_model: str = "nova-3"  # flux-general-en selects Flux (/v2/listen)
    deepgram_language: str = "en-US"
    deepgram_endpointing_ms: int = 300
    deepgram_url: str | None = None  # ws(s)://host:port override (tests, proxies)
    local_stt_model: str | None = None  # path or faster-whisper name; None: the packaged tiny.en
    stt_sample_rate: int = 16000
    # --- Text-to-speech
    tts_engine: str = "auto"
    elevenlabs_api_key: Secret | None = None
    elevenlabs_voice_id: str | None = None  # None: the character's voice, else a stock voice
    elevenlabs_model: str = "eleven_flash_v2_5"
    elevenlabs_base_url: str | None = None
    espeak_voice: str = "en-us"
    piper_model: Path | None = None
    # --- Audio binaries
    ffmpeg_path: str | None = None
    opus_library: str | None = None
    # --- Voice behaviour
    voice_mode: str = "auto"
    wake_phrases: tuple[str, ...] = ()
    voice_idle_leave_seconds: int = 300
    record_audio: bool = False
    # --- Turn detection and speculative replies (issue 12)
    turn_detection: str = "smart"  # smart: a short gap plus what the words say; fixed: 600 ms of silence
    turn_pause_ms: int = 100  # packet gap that asks the recognizer for a final (smart)
    turn_end_ms: int = 250  # silence that ends a finished-looking sentence (smart)
    turn_hold_ms: int = 1200  # silence an unfinished-looking sentence waits for more (smart)
    speculative_reply: bool = True  # start the reply before the turn is over; play it only if it is
    deepgram_pause_signal: str = "finalize"  # how Deepgram hears a pause: finalize | silence
    local_stt_workers: int = 1  # whisper transcriptions at once (per process, all guilds)
    deepgram_eager_eot_threshold: float | None = None  # Flux: EagerEndOfTurn confidence (starts a speculative reply)
    # --- Local Whisper speed (issue 12, local target)
    local_stt_short_window: bool = True  # encode the speech, not Whisper's whole 30 s window
    local_stt_early_ms: int = 0  # packet gap after which Whisper starts on the speech so far (0: off)
    # --- SMS (Twilio) and the web server
    twilio_account_sid: str | None = None
    twilio_auth_token: Secret | None = None
    twilio_phone_number: str | None = None
    twilio_api_base: str | None = None  # tests: http://127.0.0.1:PORT
    public_url: str | None = None  # the URL Twilio calls, as Twilio sees it
    web_host: str = "127.0.0.1"  # loopback: the console needs no token; set 0.0.0.0 to expose webhooks
    web_port: int = 8080
    sms_rate_limit: int = 10  # messages per number per 10 minutes
    # --- SMS durability
    sms_shutdown_grace: float = 20.0  # seconds replies in flight get to finish on SIGTERM
    sms_lease_seconds: float = 30.0  # a dead process's unfinished SMS are taken over by another after this
    # --- Reply caps: the most one reply may take in each channel (longer ones are shortened)
    discord_reply_max_messages: int = 4  # Discord messages (2,000 characters each)
    sms_reply_max_segments: int = 4  # SMS messages (1,600 characters each)
    voice_reply_max_seconds: float = 60.0  # seconds of speech
    # --- Console, playground and /metrics (bot/console)
    console_token: Secret | None = None  # required when the web server is bound beyond loopback
    metrics_token: Secret | None = None  # a separate token for /metrics (else CONSOLE_TOKEN)
    console_show_content: bool = False  # show what was said (transcripts, replies) on the console
    metrics_guild_labels: bool = False  # label voice metrics with guild ids
    # --- Phone calls (Twilio Media Streams; uses the Twilio settings and PUBLIC_URL above)
    phone_calls: bool = True
    phone_allowed_callers: frozenset[str] = frozenset()  # empty: anyone may call
    phone_greeting: str = "Hi, this is {name}."
    phone_ai_notice: bool = True
    phone_max_call_seconds: int = 600
    phone_max_calls: int = 10  # calls at once; more callers hear "busy" before any recognition starts
    # --- Logging
    log_level: str = "INFO"
    # --- Languages (issue 15)
    language: str = "en"  # a code (en, de, ja…) or "auto": answer each message in its own language
    # --- Keeping costs down (issue 25, bot/usage): daily limits on paid use, and unit prices
    limits_per_person: Limits = Limits()
    limits_per_server: Limits = Limits()
    limits_total: Limits = Limits()
    prices: Prices = Prices()
    limits_local_fallback: bool = False  # over the speech limit: the local recognizer listens instead

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"Settings({shown})"

    @property
    def sms_enabled(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token and self.twilio_phone_number)

    @property
    def phone_enabled(self) -> bool:
        return self.sms_enabled and bool(self.public_url) and self.phone_calls

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# Parsers: each takes the raw string and returns the value or raises ValueError with a reason.


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if lo is not None and value < lo:
            raise ValueError(f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            raise ValueError(f"must be at most {hi}, got {value}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _snowflake(raw: str) -> int:
    raw = raw.strip()
    if not raw.isdigit() or not 15 <= len(raw) <= 21:
        raise ValueError(f"expected a Discord id (a number of 15-21 digits), got {raw!r}")
    return int(raw)


def _snowflakes(raw: str) -> frozenset[int]:
    return frozenset(_snowflake(p) for p in raw.split(",") if p.strip())


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _choice(options: tuple[str, ...], *, lower: bool = True) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower() if lower else raw.strip().upper()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}; got {raw!r}")
        return value

    return parse


_USERINFO = re.compile(r"://([^/?#@]*)@")


def _shown_url(raw: str) -> str:
    """``raw`` fit for an error message: any ``user:password@`` part masked."""
    return _USERINFO.sub("://********@", raw.strip())


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().rstrip("/")
        scheme, sep, rest = value.partition("://")
        expected = " or ".join(s + "://" for s in schemes)
        if not sep or scheme.lower() not in schemes or not rest:
            raise ValueError(f"expected a URL starting with {expected}; got {_shown_url(raw)!r}")
        if any(c.isspace() or not c.isprintable() for c in value):
            # urlsplit takes "http://exa mple.com" as a host name; the HTTP client fails on it at the first request.
            raise ValueError(f"contains a space or another invisible character: {_shown_url(raw)!r}; "
                             "write the URL without it (a space in a path is %20)")
        try:  # what the HTTP clients will do with it later, where the error would name no setting
            parts = urlsplit(value)
            host, _port = parts.hostname, parts.port
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc}): {_shown_url(raw)!r}; "
                             f"write it as {expected}host[:port][/path]") from None
        if not host:
            raise ValueError(f"has no host name: {_shown_url(raw)!r}")
        return value

    return parse


def _secret(raw: str) -> Secret:
    value = raw.strip()
    if any(c.isspace() for c in value):
        raise ValueError("contains whitespace (a pasting mistake?)")
    return Secret(value)


WEB_TOKEN_MIN_CHARS = 20  # about 120 bits as secrets.token_urlsafe writes them: past any guessing


def _web_token(raw: str) -> Secret:
    """CONSOLE_TOKEN / METRICS_TOKEN: anyone who guesses one sees the console (or the metrics)."""
    secret = _secret(raw)
    if len(secret.get()) < WEB_TOKEN_MIN_CHARS:
        raise ValueError(f"is too short to be safe ({len(secret.get())} of at least {WEB_TOKEN_MIN_CHARS} characters); "
                         "use one nobody can guess, e.g. the output of: "
                         "python3 -c \"import secrets; print(secrets.token_urlsafe(24))\"")
    return secret


def _discord_token(raw: str) -> Secret:
    value = raw.strip()
    if value.lower().startswith("bot "):
        value = value[4:].strip()
    if value.count(".") != 2 or any(c.isspace() for c in value):
        raise ValueError("does not look like a bot token (three dot-separated parts); copy it from the Bot page")
    return Secret(value)


def _database_url(raw: str) -> str:
    """DATABASE_URL: a PostgreSQL URL (the message never repeats the value: it may hold a password)."""
    from urllib.parse import urlsplit

    value = raw.strip()
    if not value.startswith(("postgresql://", "postgres://")):
        raise ValueError("must be a PostgreSQL URL, postgresql://user:password@host:5432/database "
                         "(leave it unset to keep the SQLite file in DATA_DIR)")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise ValueError("is not a readable URL (a password with @, / or : must be percent-encoded)") from None
    if not parts.hostname or not parts.path.strip("/"):
        raise ValueError("needs a host and a database name: postgresql://user:password@host:5432/database")
    return value


def _path(raw: str) -> Path:
    return Path(raw.strip()).expanduser()


def _existing_file(raw: str) -> Path:
    path = _path(raw)
    if not path.is_file():
        raise ValueError(f"no such file: {str(path)!r}")
    return path


def _ca_file(raw: str) -> Path:
    path = _existing_file(raw)
    try:  # exactly what the Discord connector does with it
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise ValueError(f"{str(path)!r} is not a PEM certificate file ({reason}); "
                         "give the CA certificate in PEM form (-----BEGIN CERTIFICATE-----)") from None
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    return path


def _phone(raw: str) -> str:
    value = raw.strip().replace(" ", "").replace("-", "")
    if not (value.startswith("+") and value[1:].isdigit() and 8 <= len(value) <= 16):
        raise ValueError(f"expected an E.164 number such as +15551234567, got {raw!r}")
    return value


def _account_sid(raw: str) -> str:
    value = raw.strip()
    if not (value.startswith("AC") and len(value) == 34):
        raise ValueError("expected a Twilio Account SID: 'AC' followed by 32 characters")
    return value


def _phrases(raw: str) -> tuple[str, ...]:
    return tuple(p.strip().lower() for p in raw.split(",") if p.strip())


def _phones(raw: str) -> frozenset[str]:
    return frozenset(_phone(p) for p in raw.split(",") if p.strip())
PRIVACY_KEY_BYTES = 32


def decode_privacy_key(text: str) -> bytes:
    """PRIVACY_KEY as bytes: 64 hex digits (or the same 32 bytes in base64); ValueError otherwise."""
    value = text.strip()
    try:
        key = bytes.fromhex(value)
    except ValueError:
        try:
            key = base64.b64decode(value, validate=True)
        except ValueError:
            key = b""
    if len(key) != PRIVACY_KEY_BYTES:
        raise ValueError(f"expected {PRIVACY_KEY_BYTES} bytes as {2 * PRIVACY_KEY_BYTES} hex digits (make one with: "
                         "python3 -c \"import secrets; print(secrets.token_hex(32))\", or take an existing key "
                         "file's: xxd -p -c 64 data/voicebot.sqlite3.key)")
    return key


def _privacy_key(raw: str) -> Secret:
    secret = _secret(raw)
    decode_privacy_key(secret.get())
    return secret


def _language(raw: str) -> str:
    from audio.languages import parse_setting

    return parse_setting(raw)


def _text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("is empty")
    return value


# variable name -> (field, parser). Order groups them as in .env.example.
ENV_VARS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "DISCORD_TOKEN": ("discord_token", _discord_token),
    "DISCORD_APPLICATION_ID": ("discord_application_id", _snowflake),
    "DISCORD_DEV_GUILD_ID": ("discord_dev_guild_id", _snowflake),
    "DISCORD_SYNC_GLOBAL": ("discord_sync_global", _bool),
    "DISCORD_CHAT_CHANNELS": ("discord_chat_channels", _snowflakes),
    "DISCORD_API_BASE": ("discord_api_base", _url("http", "https")),
    "DISCORD_CA_FILE": ("discord_ca_file", _ca_file),
    "SHARD_IDS": ("shard_ids", parse_shard_ids),
    "SHARD_COUNT": ("shard_count", _int(1, MAX_SHARD_COUNT)),
    "DATABASE_URL": ("database_url", _url("postgresql", "postgres")),
    "PROCESS_NAME": ("process_name", _text),
    "CLUSTER_HEARTBEAT": ("cluster_heartbeat", _float(0.2, 300.0)),
    "CLUSTER_DOWN_AFTER": ("cluster_down_after", _int(2, 100)),
    "CHAT_RATE_LIMIT": ("chat_rate_limit", _int(1, 600)),
    "CHARACTER_FILE": ("character_file", _existing_file),
    "AGENT_ENGINE": ("agent_engine", _choice(AGENT_ENGINES)),
    "OPENAI_API_KEY": ("openai_api_key", _secret),
    "OPENAI_BASE_URL": ("openai_base_url", _url("http", "https")),
    "OPENAI_MODEL": ("openai_model", _text),
    "OPENAI_MAX_TOKENS": ("openai_max_tokens", _int(16, 32000)),
    "OPENAI_TEMPERATURE": ("openai_temperature", _float(0.0, 2.0)),
    "ELIZAOS_URL": ("elizaos_url", _url("http", "https")),
    "ELIZAOS_AGENT_ID": ("elizaos_agent_id", _text),
    "ELIZAOS_API_KEY": ("elizaos_api_key", _secret),
    "ELIZAOS_API": ("elizaos_api", _choice(ELIZAOS_APIS)),
    "MEMORY_CONTEXT_TURNS": ("memory_context_turns", _int(0, 500)),
    "MEMORY_FACTS": ("memory_facts", _bool),
    "FACTS_MODEL": ("facts_model", _text),
    "FACTS_DEBOUNCE_SECONDS": ("facts_debounce_seconds", _float(0.0, 3600.0)),
    "FACTS_PER_PERSON": ("facts_per_person", _int(1, 1000)),
    "FACTS_TOKENS_PER_HOUR": ("facts_tokens_per_hour", _int(0, 100_000_000)),
    "KNOWLEDGE_DIR": ("knowledge_dir", _path),
    "MEMORY_RECALL": ("memory_recall", _bool),
    "RECALL_BUDGET_MS": ("recall_budget_ms", _int(1, 5000)),
    "MEMORY_RECALL_COUNT": ("memory_recall_count", _int(0, 20)),
    "MEMORY_PROMPT_TOKENS": ("memory_prompt_tokens", _int(50, 8000)),
    "MEMORY_EMBEDDINGS": ("memory_embeddings", _choice(("off", "local", "openai"))),
    "MEMORY_EMBEDDINGS_MODEL": ("memory_embeddings_model", _text),
    "DATA_DIR": ("data_dir", _path),
    "DATABASE_URL": ("database_url", _database_url),
    "MEMORY_QUEUE_MAX": ("memory_queue_max", _int(10, 10_000_000)),
    "TRANSCRIPT_RETENTION_DAYS": ("transcript_retention_days", _int(0, 36500)),
    "PRIVACY_KEY_FILE": ("privacy_key_file", _path),
    "PRIVACY_KEY": ("privacy_key", _privacy_key),
    "STT_ENGINE": ("stt_engine", _choice(STT_ENGINES)),
    "DEEPGRAM_API_KEY": ("deepgram_api_key", _secret),
    "DEEPGRAM_MODEL": ("deepgram_model", _text),
    "DEEPGRAM_LANGUAGE": ("deepgram_language", _text),
    "DEEPGRAM_ENDPOINTING_MS": ("deepgram_endpointing_ms", _int(10, 5000)),
    "DEEPGRAM_URL": ("deepgram_url", _url("ws", "wss")),
    "LOCAL_STT_MODEL": ("local_stt_model", _text),
    "STT_SAMPLE_RATE": ("stt_sample_rate", lambda raw: int(_choice(("16000", "48000"))(raw))),
    "TTS_ENGINE": ("tts_engine", _choice(TTS_ENGINES)),
    "ELEVENLABS_API_KEY": ("elevenlabs_api_key", _secret),
    "ELEVENLABS_VOICE_ID": ("elevenlabs_voice_id", _text),
    "ELEVENLABS_MODEL": ("elevenlabs_model", _text),
    "ELEVENLABS_BASE_URL": ("elevenlabs_base_url", _url("http", "https")),
    "ESPEAK_VOICE": ("espeak_voice", _text),
    "PIPER_MODEL": ("piper_model", _existing_file),
    "FFMPEG_PATH": ("ffmpeg_path", _text),
    "OPUS_LIBRARY": ("opus_library", _text),
    "VOICE_MODE": ("voice_mode", _choice(VOICE_MODES)),
    "WAKE_PHRASES": ("wake_phrases", _phrases),
    "VOICE_IDLE_LEAVE_SECONDS": ("voice_idle_leave_seconds", _int(0, 86400)),
    "RECORD_AUDIO": ("record_audio", _bool),
    "TURN_DETECTION": ("turn_detection", _choice(("smart", "fixed"))),
    "TURN_PAUSE_MS": ("turn_pause_ms", _int(40, 2000)),
    "TURN_END_MS": ("turn_end_ms", _int(40, 5000)),
    "TURN_HOLD_MS": ("turn_hold_ms", _int(100, 10000)),
    "SPECULATIVE_REPLY": ("speculative_reply", _bool),
    "DEEPGRAM_PAUSE_SIGNAL": ("deepgram_pause_signal", _choice(("finalize", "silence"))),
    "DEEPGRAM_EAGER_EOT_THRESHOLD": ("deepgram_eager_eot_threshold", _float(0.3, 0.9)),
    "LOCAL_STT_WORKERS": ("local_stt_workers", _int(1, 16)),
    "LOCAL_STT_SHORT_WINDOW": ("local_stt_short_window", _bool),
    "LOCAL_STT_EARLY_MS": ("local_stt_early_ms", _int(0, 2000)),
    "TWILIO_ACCOUNT_SID": ("twilio_account_sid", _account_sid),
    "TWILIO_AUTH_TOKEN": ("twilio_auth_token", _secret),
    "TWILIO_PHONE_NUMBER": ("twilio_phone_number", _phone),
    "TWILIO_API_BASE": ("twilio_api_base", _url("http", "https")),
    "PUBLIC_URL": ("public_url", _url("http", "https")),
    "WEB_HOST": ("web_host", _text),
    "WEB_PORT": ("web_port", _int(1, 65535)),
    "SMS_RATE_LIMIT": ("sms_rate_limit", _int(1, 1000)),
    "SMS_SHUTDOWN_GRACE": ("sms_shutdown_grace", _float(0.0, 600.0)),
    "SMS_LEASE_SECONDS": ("sms_lease_seconds", _float(1.0, 3600.0)),
    "DISCORD_REPLY_MAX_MESSAGES": ("discord_reply_max_messages", _int(1, 50)),
    "SMS_REPLY_MAX_SEGMENTS": ("sms_reply_max_segments", _int(1, 10)),
    "VOICE_REPLY_MAX_SECONDS": ("voice_reply_max_seconds", _float(5.0, 3600.0)),
    "CONSOLE_TOKEN": ("console_token", _web_token),
    "METRICS_TOKEN": ("metrics_token", _web_token),
    "CONSOLE_SHOW_CONTENT": ("console_show_content", _bool),
    "METRICS_GUILD_LABELS": ("metrics_guild_labels", _bool),
    "PHONE_CALLS": ("phone_calls", _bool),
    "PHONE_ALLOWED_CALLERS": ("phone_allowed_callers", _phones),
    "PHONE_GREETING": ("phone_greeting", _text),
    "PHONE_AI_NOTICE": ("phone_ai_notice", _bool),
    "PHONE_MAX_CALL_SECONDS": ("phone_max_call_seconds", _int(30, 14400)),
    "PHONE_MAX_CALLS": ("phone_max_calls", _int(1, 1000)),
    "LOG_LEVEL": ("log_level", _choice(LOG_LEVELS, lower=False)),
    "LANGUAGE": ("language", _language),
    "LIMITS_PER_PERSON": ("limits_per_person", parse_limits),
    "LIMITS_PER_SERVER": ("limits_per_server", parse_limits),
    "LIMITS_TOTAL": ("limits_total", parse_limits),
    "PRICES": ("prices", parse_prices),
    "LIMITS_LOCAL_FALLBACK": ("limits_local_fallback", _bool),
}


def _cross_checks(values: dict[str, Any]) -> list[str]:
    """Problems that involve more than one variable."""
    problems: list[str] = []
    engine = values.get("agent_engine", "auto")
    if engine == "openai" and not (values.get("openai_api_key") or values.get("openai_base_url")):
        problems.append("AGENT_ENGINE=openai needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server such as Ollama)")
    if engine == "elizaos" and not values.get("elizaos_url"):
        problems.append("AGENT_ENGINE=elizaos needs ELIZAOS_URL")
    if values.get("elizaos_url") and not values.get("elizaos_agent_id"):
        problems.append("ELIZAOS_URL is set but ELIZAOS_AGENT_ID is not: the agent's id is required")
    embeddings = values.get("memory_embeddings")
    if embeddings == "openai" and not (values.get("openai_api_key") or values.get("openai_base_url")):
        problems.append("MEMORY_EMBEDDINGS=openai needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)")
    if embeddings == "local":
        import importlib.util

        if importlib.util.find_spec("wordllama") is None:
            problems.append("MEMORY_EMBEDDINGS=local needs the local embedding model: pip install 'voicebot[embeddings]'")
    if values.get("stt_engine") == "deepgram" and not values.get("deepgram_api_key"):
        problems.append("STT_ENGINE=deepgram needs DEEPGRAM_API_KEY")
    if values.get("tts_engine") == "elevenlabs" and not values.get("elevenlabs_api_key"):
        problems.append("TTS_ENGINE=elevenlabs needs ELEVENLABS_API_KEY")
    twilio = [n for n in ("twilio_account_sid", "twilio_auth_token", "twilio_phone_number") if values.get(n)]
    if twilio and len(twilio) < 3:
        missing = [v for v, (f, _) in ENV_VARS.items()
                   if f in ("twilio_account_sid", "twilio_auth_token", "twilio_phone_number") and not values.get(f)]
        problems.append(f"SMS needs all of TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_PHONE_NUMBER; missing {', '.join(missing)}")
    if len(twilio) == 3 and not values.get("public_url"):
        problems.append("SMS is configured but PUBLIC_URL is not: Twilio signatures are checked against the public URL")
    problems.extend(shard_problems(values.get("shard_ids"), values.get("shard_count")))
    if values.get("privacy_key_file") and values.get("privacy_key"):
        problems.append("PRIVACY_KEY_FILE and PRIVACY_KEY are both set: keep one (the key file, or the key itself)")
    elif values.get("database_url") and not (values.get("privacy_key_file") or values.get("privacy_key")):
        problems.append("DATABASE_URL is set but neither PRIVACY_KEY_FILE nor PRIVACY_KEY: with PostgreSQL the "
                        "opt-out key cannot sit beside a database file, and a key made on one machine would leave "
                        "opt-outs unreadable on another; set PRIVACY_KEY_FILE to the key file every process reads "
                        "(e.g. the old data/voicebot.sqlite3.key) or PRIVACY_KEY to the key itself")
    return problems


def _env_line_problem(line: str) -> str:
    """What is wrong with one line python-dotenv could not parse, naming at most the variable (never
    the value: it may be a secret)."""
    name, equals, value = (line.splitlines() or [""])[0].partition("=")
    name = name.strip().removeprefix("export ").strip()
    if not equals or not name:
        return "expected NAME=value"
    value = value.strip()
    quote = value[:1]
    if quote in ("'", '"') and quote not in value[1:].replace("\\" + quote, ""):
        return f"{name}: its {quote} quote is never closed; close it on the same line or remove the quotes"
    return f"{name}: not a value dotenv can read (text after a closing quote?); write NAME=value, a comment after #"


def _read_env_file(env_file: str | os.PathLike[str]) -> dict[str, str]:
    """The values in ``env_file`` (empty when there is none); SettingsError for an unusable file."""
    path = Path(env_file)
    if path.is_dir():
        raise SettingsError([f"{path}: is a directory, not a settings file: remove or rename it, or name the "
                             "settings file with --env-file"])
    if not path.exists():
        return {}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SettingsError([f"{path}: cannot read the settings file: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8-sig")  # editors on Windows like to add a BOM
    except UnicodeDecodeError as exc:
        raise SettingsError([f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 "
                             "(for example: iconv -f latin1 -t utf-8)"]) from None
    # python-dotenv skips a line it cannot parse with a warning that names no file, and the settings
    # after it then look unset ("DISCORD_TOKEN is not set"): name the file and the line instead.
    unreadable = [f"{path}: line {b.original.line}: {_env_line_problem(b.original.string)}"
                  for b in parse_stream(io.StringIO(text)) if b.error]
    if unreadable:
        raise SettingsError(unreadable)
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


def env_file_in_use(env_file: str | os.PathLike[str] | None) -> Path | None:
    """The settings file ``load_settings(env_file=...)`` read, as an absolute path; None when none was."""
    if env_file is None:
        return None
    path = Path(env_file).absolute()
    return path if path.exists() and not path.is_dir() else None


def _secret_vars() -> frozenset[str]:
    return frozenset(var for var, (_, parse) in ENV_VARS.items() if parse in (_secret, _discord_token, _privacy_key))


def userinfo_values(url: str) -> list[str]:
    """The secret forms of a URL's ``user:password@`` part: each half, the pair, and its Basic form."""
    found: list[str] = []
    for info in _USERINFO.findall(url):
        user, _, password = info.partition(":")
        # A short user name ("api", "user") is no secret and would be redacted wherever the word
        # appears; a long one may be a token (https://TOKEN@host).
        found.extend(v for v in (info, password, user if len(user) >= 8 or not password else "") if v)
        found.append(base64.b64encode(info.encode()).decode("ascii"))  # Authorization: Basic ...
    return found


def _raw_secret_values(source: Mapping[str, str]) -> tuple[str, ...]:
    """Secret settings as read, before parsing (for redacting problems about an unloadable configuration)."""
    secret_vars = _secret_vars()
    values: list[str] = []
    for var in ENV_VARS:
        raw = source.get(var)
        if not raw or not raw.strip():
            continue
        if var in secret_vars:
            value = raw.strip()
            values.append(value)
            if value.lower().startswith("bot "):
                values.append(value[4:].strip())
        if "://" in raw:
            values.extend(userinfo_values(raw))
    return tuple(values)


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: str | os.PathLike[str] | None = ".env",
) -> Settings:
    """Read settings from ``environ`` (default ``os.environ``) over the values in ``env_file``.

    Real environment variables win over ``.env``. Pass ``env_file=None`` to ignore ``.env``.
    Raises :class:`SettingsError` listing every problem found.
    """
    env = os.environ if environ is None else environ
    source: dict[str, str] = {}
    if env_file is not None:
        try:
            source.update(_read_env_file(env_file))
        except SettingsError as exc:
            raise SettingsError(exc.problems, secrets=_raw_secret_values(env)) from None
    source.update(env)

    values: dict[str, Any] = {}
    problems: list[str] = []
    for var, (name, parse) in ENV_VARS.items():
        raw = source.get(var)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:  # the message never includes a secret's value
            problems.append(f"{var}: {exc}")
    problems.extend(_cross_checks(values))
    if problems:
        raise SettingsError(problems, secrets=_raw_secret_values(source))
    return Settings(**values)


def secret_values(settings: Settings) -> list[str]:
    """Every secret the running process knows, in the forms it may appear in output.

    Each :class:`Secret` setting, the ``user:password@`` part of every configured URL (each half,
    the pair, and its base64 Basic-auth form), and the Twilio Basic-auth credential.
    """
    values: list[str] = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, Secret) and value.get():
            values.append(value.get())
        elif f.name == "database_url" and value:
            # A database URL names its user in the open (postgresql://postgres@host/db): only the
            # password part is secret, else every "postgres" in the output would be masked.
            parts = urllib.parse.urlsplit(value)
            if parts.password:
                values.extend(v for v in userinfo_values(value) if v != parts.username)
        elif isinstance(value, str) and "://" in value:
            values.extend(userinfo_values(value))
    if settings.twilio_account_sid and settings.twilio_auth_token:
        pair = f"{settings.twilio_account_sid}:{settings.twilio_auth_token.get()}"
        values.append(base64.b64encode(pair.encode()).decode("ascii"))
    return values


def requested_log_level(environ: Mapping[str, str] | None = None) -> str:
    """``LOG_LEVEL`` from the environment when valid, else INFO: for reporting a configuration that
    did not load (the traceback is shown only at DEBUG)."""
    raw = (os.environ if environ is None else environ).get("LOG_LEVEL", "")
    return raw.strip().upper() if raw.strip().upper() in LOG_LEVELS else "INFO"


def secret_value(secret: Secret | None) -> str | None:
    """The plain value, for handing to an SDK at the composition root."""
    return secret.get() if secret is not None else None

