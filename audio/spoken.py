"""Per-language spoken forms: numbers, dates, times, units and abbreviations said as words.

``speak_in(text, language)`` runs after the language-independent clean-up in
``audio.speech.normalize_for_speech``. English keeps digits (every English voice reads them well,
and the existing English behaviour is relied upon); other languages get their numbers as words
(``num2words`` carries the number grammar of each language), because a voice reading "1.234,5"
digit by digit, or in the wrong language's number system, is the commonest way a German or
Japanese reply sounds broken. Pure functions, no I/O.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["speak_in", "spoken_phrase", "NORMALISED_LANGUAGES"]

log = logging.getLogger(__name__)

_MONTHS = {
    "en": "January February March April May June July August September October November December",
    "de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
    "es": "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre",
    "pt": "janeiro fevereiro março abril maio junho julho agosto setembro outubro novembro dezembro",
}

# Placeholders that normalize_for_speech says in place of things it cannot read out.
_PHRASES: dict[str, dict[str, str]] = {
    "en": {"someone": "someone", "role": "a role", "channel": "a channel", "link": "a link", "link_to": "a link to {domain}"},
    "de": {"someone": "jemand", "role": "eine Rolle", "channel": "ein Kanal", "link": "ein Link", "link_to": "ein Link zu {domain}"},
    "fr": {"someone": "quelqu'un", "role": "un rôle", "channel": "un salon", "link": "un lien", "link_to": "un lien vers {domain}"},
    "es": {"someone": "alguien", "role": "un rol", "channel": "un canal", "link": "un enlace", "link_to": "un enlace a {domain}"},
    "pt": {"someone": "alguém", "role": "um cargo", "channel": "um canal", "link": "um link", "link_to": "um link para {domain}"},
    "ja": {"someone": "誰か", "role": "ロール", "channel": "チャンネル", "link": "リンク", "link_to": "{domain}へのリンク"},
}


@dataclass(frozen=True)
class _Rules:
    words: bool  # say numbers as words
    decimal: str  # the decimal separator people write ("," in most of Europe)
    units: dict[str, str] = field(default_factory=dict)
    abbreviations: dict[str, str] = field(default_factory=dict)
    percent: str = "percent"


_RULES: dict[str, _Rules] = {
    "en": _Rules(
        words=False,
        decimal=".",
        units={"km/h": "kilometers per hour", "km": "kilometers", "kg": "kilograms", "cm": "centimeters",
               "mm": "millimeters", "°C": "degrees Celsius", "°F": "degrees Fahrenheit", "GB": "gigabytes", "MB": "megabytes"},
        abbreviations={"e.g.": "for example", "i.e.": "that is", "etc.": "et cetera", "approx.": "approximately", "vs.": "versus"},
        percent="percent",
    ),
    "de": _Rules(
        words=True,
        decimal=",",
        units={"km/h": "Kilometer pro Stunde", "km": "Kilometer", "kg": "Kilogramm", "cm": "Zentimeter", "mm": "Millimeter",
               "m": "Meter", "g": "Gramm", "°C": "Grad Celsius", "GB": "Gigabyte", "MB": "Megabyte", "€": "Euro", "$": "Dollar"},
        abbreviations={"z.B.": "zum Beispiel", "z. B.": "zum Beispiel", "bzw.": "beziehungsweise", "usw.": "und so weiter",
                       "ca.": "circa", "Nr.": "Nummer", "d.h.": "das heißt", "d. h.": "das heißt", "u.a.": "unter anderem",
                       "Dr.": "Doktor", "Str.": "Straße", "evtl.": "eventuell", "ggf.": "gegebenenfalls"},
        percent="Prozent",
    ),
    "fr": _Rules(
        words=True,
        decimal=",",
        units={"km/h": "kilomètres heure", "km": "kilomètres", "kg": "kilos", "cm": "centimètres", "mm": "millimètres",
               "m": "mètres", "g": "grammes", "°C": "degrés", "Go": "gigaoctets", "Mo": "mégaoctets", "€": "euros", "$": "dollars"},
        abbreviations={"M.": "Monsieur", "Mme": "Madame", "Mlle": "Mademoiselle", "etc.": "et cetera", "p. ex.": "par exemple",
                       "env.": "environ", "Dr": "Docteur", "n°": "numéro", "av.": "avenue"},
        percent="pour cent",
    ),
    "es": _Rules(
        words=True,
        decimal=",",
        units={"km/h": "kilómetros por hora", "km": "kilómetros", "kg": "kilos", "cm": "centímetros", "mm": "milímetros",
               "m": "metros", "g": "gramos", "°C": "grados", "GB": "gigas", "MB": "megas", "€": "euros", "$": "dólares"},
        abbreviations={"Sr.": "señor", "Sra.": "señora", "Srta.": "señorita", "Dr.": "doctor", "Dra.": "doctora",
                       "etc.": "etcétera", "p. ej.": "por ejemplo", "aprox.": "aproximadamente", "Ud.": "usted",
                       "Uds.": "ustedes", "núm.": "número", "pág.": "página", "EE. UU.": "Estados Unidos"},
        percent="por ciento",
    ),
    "pt": _Rules(
        words=True,
        decimal=",",
        units={"km/h": "quilômetros por hora", "km": "quilômetros", "kg": "quilos", "cm": "centímetros", "mm": "milímetros",
               "m": "metros", "g": "gramas", "°C": "graus", "GB": "gigas", "MB": "megas", "€": "euros", "R$": "reais", "$": "dólares"},
        abbreviations={"Sr.": "senhor", "Sra.": "senhora", "Dr.": "doutor", "Dra.": "doutora", "etc.": "et cetera",
                       "p. ex.": "por exemplo", "aprox.": "aproximadamente", "nº": "número", "pág.": "página", "V. Sa.": "Vossa Senhoria"},
        percent="por cento",
    ),
    "ja": _Rules(
        words=True,
        decimal=".",
        units={"km/h": "キロメートル毎時", "km": "キロメートル", "kg": "キログラム", "cm": "センチメートル", "mm": "ミリメートル",
               "m": "メートル", "g": "グラム", "°C": "度", "GB": "ギガバイト", "MB": "メガバイト", "€": "ユーロ", "$": "ドル", "¥": "円"},
        abbreviations={"e.g.": "例えば", "etc.": "など"},
        percent="パーセント",
    ),
}

NORMALISED_LANGUAGES: tuple[str, ...] = tuple(_RULES)

# Currency signs written before the number ("$5", "€ 3,50", "R$ 10") are said after it.
_CURRENCY_FIRST = re.compile(r"(R\$|[€$£¥])\s?(\d[\d.,]*\d|\d)")
_CURRENCY_AFTER = re.compile(r"(\d)\s?(R\$|[€$£¥])")
_ISO_DATE = re.compile(r"(?<![\d-])(\d{4})-(\d{2})-(\d{2})(?![\d-])")
_DOTTED_DATE = re.compile(r"(?<![\d.])(\d{1,2})\.(\d{1,2})\.(\d{4})(?!\d)")  # German 01.12.2026
_SLASHED_DATE = re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})/(\d{4})(?![\d/])")  # fr/es/pt 01/12/2026 (day first)
_TIME = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])")
_PERCENT = re.compile(r"(\d)\s?%")
# A number stands apart from Latin letters ("v2", "mp3" stay), but Japanese writes it against
# its kana and kanji ("25度", "3時").
_NUMBER_EU = re.compile(r"(?<![0-9A-Za-zÀ-ÿ.,])(-?\d{1,3}(?:\.\d{3})+(?:,\d+)?|-?\d+(?:,\d+)?)(?![0-9A-Za-zÀ-ÿ]|[.,]\d)")
_NUMBER_DOT = re.compile(r"(?<![0-9A-Za-zÀ-ÿ.,])(-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?)(?![0-9A-Za-zÀ-ÿ]|[.,]\d)")
_JA_SEP = ""


def _num2words() -> Callable[..., str] | None:
    try:
        from num2words import num2words
    except ImportError:  # pragma: no cover - a declared dependency
        log.warning("num2words is not installed: numbers are left as digits")
        return None
    return num2words


def _words(value: float | int, language: str, to: str = "cardinal") -> str:
    n2w = _num2words()
    if n2w is None:
        return str(value)
    try:
        return str(n2w(value, lang=language, to=to))
    except (NotImplementedError, OverflowError, ValueError, TypeError):
        return str(value)


def _parse(number: str, decimal: str) -> float | int | None:
    thousands = "." if decimal == "," else ","
    raw = number.replace(thousands, "").replace(decimal, ".")
    try:
        value = float(raw)
    except ValueError:
        return None
    return int(value) if "." not in raw else value


def spoken_phrase(key: str, language: str, **values: str) -> str:
    """A placeholder phrase ("a link to {domain}", "someone"…) in ``language`` (English if unknown)."""
    table = _PHRASES.get(language) or _PHRASES["en"]
    return table.get(key, _PHRASES["en"][key]).format(**values)


def _date(language: str, year: int, month: int, day: int) -> str | None:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    if language == "ja":
        return f"{_words(year, 'ja')}年{_words(month, 'ja')}月{_words(day, 'ja')}日"
    months = _MONTHS.get(language)
    if months is None:
        return None
    name = months.split()[month - 1]
    if language == "en":
        return f"{name} {_words(day, 'en', 'ordinal')}, {year}"
    if language == "de":
        return f"{_words(day, 'de', 'ordinal')}r {name} {_words(year, 'de', 'year')}"
    if language == "fr":
        day_words = "premier" if day == 1 else _words(day, "fr")
        return f"{day_words} {name} {_words(year, 'fr', 'year')}"
    # es, pt: "1 de diciembre de 2026"
    return f"{_words(day, language)} de {name} de {_words(year, language)}"


def _time(language: str, hours: int, minutes: int) -> str:
    h, m = _words(hours, language), _words(minutes, language)
    if language == "ja":
        return f"{h}時" + (f"{m}分" if minutes else "")
    if language == "de":
        return f"{h} Uhr" + (f" {m}" if minutes else "")
    if language == "fr":
        return f"{h} heure{'s' if hours > 1 else ''}" + (f" {m}" if minutes else "")
    if language in ("es", "pt"):
        return h + (f" y {m}" if language == "es" and minutes else f" e {m}" if minutes else "")
    return f"{hours}:{minutes:02d}"


def _abbreviation_pattern(abbreviations: dict[str, str]) -> re.Pattern[str] | None:
    if not abbreviations:
        return None
    alternatives = sorted(abbreviations, key=len, reverse=True)
    return re.compile(r"(?<![\w.])(" + "|".join(re.escape(a) for a in alternatives) + r")(?![\w])")


def _unit_pattern(units: dict[str, str]) -> re.Pattern[str] | None:
    plain = [u for u in units if u not in ("€", "$", "£", "¥", "R$")]
    if not plain:
        return None
    alternatives = sorted(plain, key=len, reverse=True)
    return re.compile(r"(\d)\s?(" + "|".join(re.escape(u) for u in alternatives) + r")(?![A-Za-zÀ-ÿ/])")


_PATTERNS: dict[str, tuple[re.Pattern[str] | None, re.Pattern[str] | None]] = {
    code: (_abbreviation_pattern(rules.abbreviations), _unit_pattern(rules.units)) for code, rules in _RULES.items()
}


def speak_in(text: str, language: str, *, numbers: bool = True, forms: bool = True) -> str:
    """Say numbers, dates, times, units and abbreviations of ``text`` the way ``language`` does.

    ``forms`` covers abbreviations, dates, times, units and currencies; ``numbers`` the digits
    left after them (normalize_for_speech spells out phone numbers in between). Languages
    without rules get the text back unchanged (their voice reads digits itself).
    """
    rules = _RULES.get(language)
    if rules is None:
        return text
    abbreviations, units = _PATTERNS[language]
    out = text
    if forms:
        out = _forms(out, language, rules, abbreviations, units)
    if numbers and rules.words:
        out = _numbers(out, language, rules)
    return out


def _forms(
    text: str, language: str, rules: _Rules, abbreviations: re.Pattern[str] | None, units: re.Pattern[str] | None
) -> str:
    out = text
    if abbreviations is not None:
        def expand(match: re.Match[str]) -> str:
            spoken = rules.abbreviations[match.group(1)]
            # "…usw." at the end of the text still ends the sentence.
            return spoken + ("." if match.end() == len(text) and match.group(1).endswith(".") else "")

        out = abbreviations.sub(expand, out)
    out = _ISO_DATE.sub(lambda m: _date(language, int(m[1]), int(m[2]), int(m[3])) or m[0], out)
    if language == "de":
        out = _DOTTED_DATE.sub(lambda m: _date(language, int(m[3]), int(m[2]), int(m[1])) or m[0], out)
    if language in ("fr", "es", "pt"):
        out = _SLASHED_DATE.sub(lambda m: _date(language, int(m[3]), int(m[2]), int(m[1])) or m[0], out)
    if language != "en":
        out = _TIME.sub(lambda m: _time(language, int(m[1]), int(m[2])), out)
    if rules.words:
        out = _CURRENCY_FIRST.sub(lambda m: f"{m[2]} {rules.units.get(m[1], m[1])}", out)
        out = _CURRENCY_AFTER.sub(lambda m: f"{m[1]} {rules.units.get(m[2], m[2])}", out)
        out = _PERCENT.sub(lambda m: f"{m[1]} {rules.percent}", out)
    if units is not None:
        out = units.sub(lambda m: f"{m[1]} {rules.units[m[2]]}", out)
    return out


def _numbers(text: str, language: str, rules: _Rules) -> str:
    number = _NUMBER_EU if rules.decimal == "," else _NUMBER_DOT

    def say(match: re.Match[str]) -> str:
        value = _parse(match.group(1), rules.decimal)
        if value is None or abs(value) >= 10**15:
            return match.group(0)
        words = _words(value, language)
        if language == "es" and isinstance(value, float):
            words = words.replace(" punto ", " coma ")  # Spain and most of Latin America write and say a comma
        return words

    out = number.sub(say, text)
    if language == "ja":
        # Japanese writes no space between a number and its counter or unit.
        out = re.sub(r"(?<=[\u3000-\u9fff\uff00-\uffef]) (?=[\u3000-\u9fff\uff00-\uffef])", _JA_SEP, out)
    return out
