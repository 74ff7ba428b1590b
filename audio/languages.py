"""The languages the bot knows: names, and what each engine can do with them.

Codes are ISO 639-1 (``de``, ``ja``); ``normalize_code`` accepts the spellings people and services
use (``de-DE``, ``pt_BR``, Discord's ``es-ES``, Deepgram's ``zh-CN``). ``catalog`` says whether the
bot's own words exist in that language (``bot.i18n.catalog``); the agent, Deepgram, ElevenLabs and
espeak-ng each cover more.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AUTO",
    "Language",
    "LANGUAGES",
    "CATALOG_LANGUAGES",
    "DEEPGRAM_MULTI",
    "normalize_code",
    "language_name",
    "parse_setting",
]

AUTO = "auto"


@dataclass(frozen=True)
class Language:
    code: str
    english: str  # the name in English (logs, README)
    native: str  # the name in the language itself (what people see)
    espeak: str  # the espeak-ng voice (the zero-download voice has over 100)
    elevenlabs: bool  # eleven_flash_v2_5 speaks it
    deepgram: bool  # nova-3 recognises it (monolingual or multi)


# eleven_flash_v2_5: 32 languages; nova-3 multilingual: 55 (Deepgram's docs, checked 2026-12).
_TABLE: tuple[Language, ...] = (
    Language("en", "English", "English", "en-us", True, True),
    Language("de", "German", "Deutsch", "de", True, True),
    Language("fr", "French", "Français", "fr-fr", True, True),
    Language("es", "Spanish", "Español", "es", True, True),
    Language("pt", "Portuguese", "Português", "pt-br", True, True),
    Language("ja", "Japanese", "日本語", "ja", True, True),
    Language("it", "Italian", "Italiano", "it", True, True),
    Language("nl", "Dutch", "Nederlands", "nl", True, True),
    Language("pl", "Polish", "Polski", "pl", True, True),
    Language("ru", "Russian", "Русский", "ru", True, True),
    Language("uk", "Ukrainian", "Українська", "uk", True, True),
    Language("tr", "Turkish", "Türkçe", "tr", True, True),
    Language("sv", "Swedish", "Svenska", "sv", True, True),
    Language("da", "Danish", "Dansk", "da", True, True),
    Language("fi", "Finnish", "Suomi", "fi", True, True),
    Language("no", "Norwegian", "Norsk", "nb", True, True),
    Language("cs", "Czech", "Čeština", "cs", True, True),
    Language("ro", "Romanian", "Română", "ro", True, True),
    Language("hu", "Hungarian", "Magyar", "hu", True, True),
    Language("el", "Greek", "Ελληνικά", "el", True, True),
    Language("zh", "Chinese", "中文", "cmn", True, True),
    Language("ko", "Korean", "한국어", "ko", True, True),
    Language("ar", "Arabic", "العربية", "ar", True, True),
    Language("hi", "Hindi", "हिन्दी", "hi", True, True),
    Language("id", "Indonesian", "Bahasa Indonesia", "id", True, True),
    Language("ms", "Malay", "Bahasa Melayu", "ms", True, True),
    Language("vi", "Vietnamese", "Tiếng Việt", "vi", True, True),
    Language("ta", "Tamil", "தமிழ்", "ta", True, True),
    Language("he", "Hebrew", "עברית", "he", False, True),
    Language("fa", "Persian", "فارسی", "fa", False, True),
    Language("th", "Thai", "ไทย", "th", False, True),
    Language("ca", "Catalan", "Català", "ca", False, True),
    Language("bn", "Bengali", "বাংলা", "bn", False, True),
)

LANGUAGES: dict[str, Language] = {lang.code: lang for lang in _TABLE}
# The bot's own words (consent notice, commands, errors, SMS keywords) are written in these.
CATALOG_LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "pt", "ja")
# Deepgram's `language=multi` on nova-3 (the code for "detect, and follow switches mid-sentence").
DEEPGRAM_MULTI = "multi"

_ALIASES = {"nb": "no", "nn": "no", "cmn": "zh", "iw": "he", "in": "id", "fil": "tl", "jp": "ja"}


def normalize_code(value: str | None) -> str | None:
    """``"de-DE"`` → ``"de"``; None for something that is not a language tag we know."""
    if not value:
        return None
    base = value.strip().replace("_", "-").split("-", 1)[0].lower()
    base = _ALIASES.get(base, base)
    return base if base in LANGUAGES else None


def language_name(code: str, *, native: bool = True) -> str:
    """A language's name (its own by default); the code itself for one we do not know."""
    lang = LANGUAGES.get(code)
    if lang is None:
        return code
    return lang.native if native else lang.english


def parse_setting(value: str) -> str:
    """A language setting as stored: ``"auto"`` or a known code. Raises ValueError otherwise."""
    raw = value.strip().lower()
    if raw == AUTO:
        return AUTO
    code = normalize_code(raw)
    if code is None:
        for lang in _TABLE:  # "German", "deutsch", "日本語"
            if raw in (lang.english.lower(), lang.native.lower()):
                return lang.code
        raise ValueError(f"unknown language {value!r}; use auto or one of: {', '.join(LANGUAGES)}")
    return code
