"""ElizaOS-compatible character files.

An existing ElizaOS character JSON works unchanged: we read ``name``, ``bio`` (a string or a list),
``lore``, ``adjectives``, ``topics``, ``knowledge``, ``style.all``/``style.chat``/``style.post``,
``messageExamples``, ``system`` and ``settings.voice.elevenlabs`` and ignore everything else
(``clients``, ``plugins``, ``modelProvider``, ``postExamples``...). One optional field is ours:
``languages``, per language code, ``{"style": [...], "messageExamples": [...], "voice":
{"elevenlabs": VOICE_ID, "espeak": VOICE}}``: how the character writes and sounds in that
language (ElizaOS ignores unknown fields, so the file still loads there). Facts about the format:

- ``knowledge`` entries may be strings or, in ElizaOS, objects such as ``{"path": ..., "shared": ...}``
  or ``{"directory": ...}`` naming files under the knowledge folder; the strings are kept in
  ``knowledge`` and the objects in ``knowledge_sources``, read and chunked by :mod:`bot.facts.knowledge`.
- ``messageExamples`` is a list of conversations, each a list of ``{"user"|"name": speaker,
  "content": {"text": ...}}`` (v0 uses ``user``, v1 uses ``name``). Speakers are usually the
  placeholders ``{{user1}}``/``{{name1}}`` or the character's own name.
- ElizaOS types the ElevenLabs voice numbers as *strings* (``"stability": "0.5"``); people also
  write plain numbers, so both are accepted. The ElevenLabs plugin's flat settings
  (``settings.ELEVENLABS_VOICE_ID`` ...) are honoured as a fallback.

A broken file raises :class:`CharacterError` naming the file and the field.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from audio.tts.base import VoiceSpec

__all__ = [
    "Character",
    "CharacterError",
    "CharacterLanguage",
    "CharacterVoice",
    "ExampleMessage",
    "KnowledgeSource",
    "default_character",
    "load_character",
    "parse_character",
]

log = logging.getLogger(__name__)

_MAX_FILE_BYTES = 5 * 1024 * 1024  # character files are a few KB; refuse to slurp a mistake


class CharacterError(Exception):
    """A character file could not be used. The message names the file and the field."""

    def __init__(self, source: str, field: str | None, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")


# A character's ElevenLabs voice is exactly what the TTS interface takes.
CharacterVoice = VoiceSpec


@dataclass(frozen=True)
class ExampleMessage:
    """One line of an example conversation, speaker as written in the file."""

    speaker: str
    text: str


@dataclass(frozen=True)
class KnowledgeSource:
    """An ElizaOS knowledge entry naming a file (``kind="path"``) or a folder (``"directory"``)."""

    kind: str
    value: str
    shared: bool = False


def _knowledge_sources(value: Any, source: str) -> tuple[KnowledgeSource, ...]:
    if not isinstance(value, list):
        return ()
    out: list[KnowledgeSource] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            continue
        for kind in ("directory", "path"):
            if kind in item:
                where = item[kind]
                if not isinstance(where, str) or not where.strip():
                    raise CharacterError(source, f"knowledge[{i}].{kind}", f"expected a non-empty string, got "
                                                                           f"{_type_name(where)}")
                out.append(KnowledgeSource(kind, where.strip(), item.get("shared") is True))
                break
        else:
            raise CharacterError(source, f"knowledge[{i}]", "expected a string, {\"path\": ...} or {\"directory\": ...}")
    return tuple(out)


@dataclass(frozen=True)
class CharacterLanguage:
    """How the character writes and sounds in one language (the optional ``languages`` field)."""

    style: tuple[str, ...] = ()
    message_examples: tuple[tuple[ExampleMessage, ...], ...] = ()
    elevenlabs_voice: str | None = None  # an ElevenLabs voice id for this language
    espeak_voice: str | None = None  # an espeak-ng voice name (e.g. "de", "fr-fr", "en-gb")


@dataclass(frozen=True)
class Character:
    """Who the agent is. Immutable; built by :func:`parse_character`."""

    name: str
    bio: tuple[str, ...] = ()
    lore: tuple[str, ...] = ()
    adjectives: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    knowledge: tuple[str, ...] = ()
    knowledge_sources: tuple[KnowledgeSource, ...] = ()  # {"path": ...} / {"directory": ...} entries
    style_all: tuple[str, ...] = ()
    style_chat: tuple[str, ...] = ()
    style_post: tuple[str, ...] = ()
    message_examples: tuple[tuple[ExampleMessage, ...], ...] = ()
    system: str | None = None
    username: str | None = None
    voice: CharacterVoice | None = None
    source: str = "<memory>"
    languages: Mapping[str, CharacterLanguage] = field(default_factory=dict, hash=False)


# ---------------------------------------------------------------------------------------------
# Field readers: each raises CharacterError naming the field.


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _clean(text: str) -> str:
    return text.strip()


def _optional_str(data: Mapping[str, Any], key: str, source: str, field: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise CharacterError(source, field, f"expected a string, got {_type_name(value)}")
    return _clean(value) or None


def _str_list(
    value: Any, source: str, field: str, *, allow_string: bool = False, skip_non_strings: bool = False
) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        if allow_string:
            return (_clean(value),) if _clean(value) else ()
        raise CharacterError(source, field, "expected a list of strings, got a string")
    if not isinstance(value, list):
        expected = "a string or a list of strings" if allow_string else "a list of strings"
        raise CharacterError(source, field, f"expected {expected}, got {_type_name(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            if _clean(item):
                out.append(_clean(item))
        elif skip_non_strings and isinstance(item, dict):
            continue  # ElizaOS v1 knowledge sources ({"path": ...}); loaded by ElizaOS, not us
        else:
            raise CharacterError(source, f"{field}[{i}]", f"expected a string, got {_type_name(item)}")
    return tuple(out)


def _unit_float(value: Any, source: str, field: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise CharacterError(source, field, "expected a number between 0 and 1, got a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CharacterError(source, field, f"expected a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise CharacterError(source, field, f"expected a number between 0 and 1, got {number:g}")
    return number


def _flag(value: Any, source: str, field: str) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise CharacterError(source, field, f"expected true or false, got {value!r}")


def _voice(settings: Any, source: str) -> CharacterVoice | None:
    if settings is None:
        return None
    if not isinstance(settings, dict):
        raise CharacterError(source, "settings", f"expected an object, got {_type_name(settings)}")
    voice = settings.get("voice")
    if voice is not None and not isinstance(voice, dict):
        raise CharacterError(source, "settings.voice", f"expected an object, got {_type_name(voice)}")
    eleven = (voice or {}).get("elevenlabs")
    if eleven is not None:
        base = "settings.voice.elevenlabs"
        if not isinstance(eleven, dict):
            raise CharacterError(source, base, f"expected an object, got {_type_name(eleven)}")
        return CharacterVoice(
            voice_id=_optional_str(eleven, "voiceId", source, f"{base}.voiceId"),
            model=_optional_str(eleven, "model", source, f"{base}.model"),
            stability=_unit_float(eleven.get("stability"), source, f"{base}.stability"),
            similarity_boost=_unit_float(eleven.get("similarityBoost"), source, f"{base}.similarityBoost"),
            style=_unit_float(eleven.get("style"), source, f"{base}.style"),
            use_speaker_boost=_flag(eleven.get("useSpeakerBoost"), source, f"{base}.useSpeakerBoost"),
        )
    # The ElizaOS ElevenLabs plugin reads flat keys from character settings.
    if any(k.startswith("ELEVENLABS_") for k in settings):
        flat = CharacterVoice(
            voice_id=_optional_str(settings, "ELEVENLABS_VOICE_ID", source, "settings.ELEVENLABS_VOICE_ID"),
            model=_optional_str(settings, "ELEVENLABS_MODEL_ID", source, "settings.ELEVENLABS_MODEL_ID"),
            stability=_unit_float(settings.get("ELEVENLABS_VOICE_STABILITY"), source,
                                  "settings.ELEVENLABS_VOICE_STABILITY"),
            similarity_boost=_unit_float(settings.get("ELEVENLABS_VOICE_SIMILARITY_BOOST"), source,
                                         "settings.ELEVENLABS_VOICE_SIMILARITY_BOOST"),
            style=_unit_float(settings.get("ELEVENLABS_VOICE_STYLE"), source, "settings.ELEVENLABS_VOICE_STYLE"),
            use_speaker_boost=_flag(settings.get("ELEVENLABS_VOICE_USE_SPEAKER_BOOST"), source,
                                    "settings.ELEVENLABS_VOICE_USE_SPEAKER_BOOST"),
        )
        return flat if flat != CharacterVoice() else None
    return None


def _example_message(item: Any, source: str, field: str) -> ExampleMessage | None:
    if not isinstance(item, dict):
        raise CharacterError(source, field, f"expected an object with user/name and content, got {_type_name(item)}")
    speaker = item.get("user", item.get("name"))
    if not isinstance(speaker, str) or not speaker.strip():
        raise CharacterError(source, f"{field}.user", 'expected the speaker as "user" or "name" (a string)')
    content = item.get("content")
    if isinstance(content, str):  # a common hand-written shortcut
        text: Any = content
    elif isinstance(content, dict):
        text = content.get("text", "")
    else:
        raise CharacterError(source, f"{field}.content", f"expected an object with text, got {_type_name(content)}")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise CharacterError(source, f"{field}.content.text", f"expected a string, got {_type_name(text)}")
    if not text.strip():
        return None  # action-only examples carry no words to imitate
    return ExampleMessage(speaker=speaker.strip(), text=text.strip())


def _message_examples(value: Any, source: str) -> tuple[tuple[ExampleMessage, ...], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise CharacterError(source, "messageExamples",
                             f"expected a list of conversations, got {_type_name(value)}")
    # Some hand-written files use a flat list of messages: read it as one conversation.
    conversations = [value] if value and all(isinstance(v, dict) for v in value) else value
    flat = conversations is not value
    out: list[tuple[ExampleMessage, ...]] = []
    for i, conversation in enumerate(conversations):
        if not isinstance(conversation, list):
            raise CharacterError(source, f"messageExamples[{i}]",
                                 f"expected a list of messages, got {_type_name(conversation)}")
        messages = []
        for j, item in enumerate(conversation):
            field = f"messageExamples[{j}]" if flat else f"messageExamples[{i}][{j}]"
            message = _example_message(item, source, field)
            if message is not None:
                messages.append(message)
        if messages:
            out.append(tuple(messages))
    return tuple(out)


def _languages(value: Any, source: str) -> dict[str, CharacterLanguage]:
    from bot.i18n.languages import normalize_code

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CharacterError(source, "languages", f"expected an object keyed by language code, got {_type_name(value)}")
    out: dict[str, CharacterLanguage] = {}
    for key, entry in value.items():
        where = f"languages.{key}"
        code = normalize_code(str(key))
        if code is None:
            raise CharacterError(source, where, "is not a language code the bot knows (e.g. de, fr, es, pt, ja)")
        if not isinstance(entry, dict):
            raise CharacterError(source, where, f"expected an object with style/messageExamples/voice, got {_type_name(entry)}")
        voice = entry.get("voice") or {}
        if not isinstance(voice, dict):
            raise CharacterError(source, f"{where}.voice", f"expected an object, got {_type_name(voice)}")
        examples = _message_examples(entry.get("messageExamples"), source)
        out[code] = CharacterLanguage(
            style=_str_list(entry.get("style"), source, f"{where}.style", allow_string=True),
            message_examples=examples,
            elevenlabs_voice=_optional_str(voice, "elevenlabs", source, f"{where}.voice.elevenlabs"),
            espeak_voice=_optional_str(voice, "espeak", source, f"{where}.voice.espeak"),
        )
    return out


def _first_nul(value: Any, where: str) -> str | None:
    """The field path of the first string (or key) holding a NUL, if any."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        shown = key if isinstance(key, int) else key.replace("\x00", "\\u0000")
        path = f"{where}[{shown}]" if isinstance(key, int) else f"{where}.{shown}" if where else shown
        if isinstance(key, str) and "\x00" in key:
            return path
        found = _first_nul(item, path)
        if found is not None:
            return found
    return None


def parse_character(data: Any, source: str = "<memory>") -> Character:
    """Build a :class:`Character` from decoded ElizaOS character JSON (pure; no I/O)."""
    if not isinstance(data, dict):
        raise CharacterError(source, None, f"expected a JSON object at the top level, got {_type_name(data)}")
    name = data.get("name")
    if name is None:
        raise CharacterError(source, "name", "is required")
    if not isinstance(name, str):
        raise CharacterError(source, "name", f"expected a string, got {_type_name(name)}")
    if not name.strip():
        raise CharacterError(source, "name", "must not be empty")
    control = next((c for c in name if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        # A name is said, shown and stored everywhere: a NUL cuts it short in C strings and is refused by
        # PostgreSQL and XML (TwiML), a newline splits log lines and the prompt's "Name:" turns.
        raise CharacterError(source, "name", f"contains the control character U+{ord(control):04X}: "
                                             "write the name as plain text")
    nul = _first_nul(data, "")
    if nul is not None:
        raise CharacterError(source, nul, "contains a NUL character (U+0000), which no text here may hold")
    style = data.get("style")
    if style is None:
        style = {}
    if not isinstance(style, dict):
        raise CharacterError(source, "style", f"expected an object with all/chat/post lists, got {_type_name(style)}")
    return Character(
        name=name.strip(),
        username=_optional_str(data, "username", source, "username"),
        system=_optional_str(data, "system", source, "system"),
        bio=_str_list(data.get("bio"), source, "bio", allow_string=True),
        lore=_str_list(data.get("lore"), source, "lore"),
        adjectives=_str_list(data.get("adjectives"), source, "adjectives"),
        topics=_str_list(data.get("topics"), source, "topics"),
        knowledge=_str_list(data.get("knowledge"), source, "knowledge", skip_non_strings=True),
        knowledge_sources=_knowledge_sources(data.get("knowledge"), source),
        style_all=_str_list(style.get("all"), source, "style.all"),
        style_chat=_str_list(style.get("chat"), source, "style.chat"),
        style_post=_str_list(style.get("post"), source, "style.post"),
        message_examples=_message_examples(data.get("messageExamples"), source),
        voice=_voice(data.get("settings"), source),
        source=source,
        languages=_languages(data.get("languages"), source),
    )


def load_character(path: Path | str) -> Character:
    """Read and parse a character file. Raises :class:`CharacterError` naming file and field."""
    path = Path(path)
    source = str(path)
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise CharacterError(source, None, f"file is larger than {_MAX_FILE_BYTES // (1024 * 1024)} MB")
        raw = path.read_bytes()
    except OSError as exc:
        raise CharacterError(source, None, f"cannot read the file: {exc.strerror or exc}") from None
    return _decode(raw, source)


def _decode(raw: bytes, source: str) -> Character:
    try:
        text = raw.decode("utf-8-sig")  # editors on Windows like to add a BOM
    except UnicodeDecodeError as exc:
        raise CharacterError(source, None, f"not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CharacterError(source, None, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # json's parser recurses once per level of [ or {
        raise CharacterError(source, None, "nested too deeply to be a character (JSON arrays or objects "
                                           "inside each other hundreds of levels deep)") from None
    return parse_character(data, source)


def default_character() -> Character:
    """The character shipped with the bot (``bot/characters/default.json``)."""
    ref = resources.files("bot").joinpath("characters", "default.json")
    return _decode(ref.read_bytes(), "bot/characters/default.json")
