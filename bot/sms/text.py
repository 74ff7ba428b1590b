"""Pure text helpers for SMS: reply normalisation, segmenting, keywords, link codes, masking.

Nothing here does I/O; every function is a plain function of its arguments.
"""

from __future__ import annotations

import re
from enum import StrEnum

from bot.i18n.catalog import t
from bot.textchat import cut_at_sentence

__all__ = [
    "SMS_SEGMENT_LIMIT",
    "SHORTENED_SMS_NOTE",
    "Keyword",
    "cap_sms",
    "classify_keyword",
    "link_instructions",
    "mask_number",
    "normalize_for_sms",
    "parse_link_code",
    "split_sms",
    "truncate_for_agent",
]

# Twilio rejects a Body longer than 1,600 characters (error 21617); it concatenates anything up to
# that into one message on the handset, so 1,600 is the unit we split replies into.
SMS_SEGMENT_LIMIT = 1600


class Keyword(StrEnum):
    """The compliance keywords carriers and Twilio recognise on long codes."""

    STOP = "stop"
    START = "start"
    HELP = "help"


# Twilio's default opt-out handling matches these words when they are the whole message
# (case-insensitive, surrounding whitespace ignored).
_KEYWORDS: dict[str, Keyword] = {
    **{w: Keyword.STOP for w in ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT")},
    **{w: Keyword.START for w in ("START", "YES", "UNSTOP")},
    **{w: Keyword.HELP for w in ("HELP", "INFO")},
}


# The same keywords in the bot's other languages (issue 15). Twilio does not act on these, so the
# bot confirms them itself; Twilio's own words above stay exactly as Twilio defines them.
_LOCAL_KEYWORDS: dict[str, tuple[Keyword, str]] = {
    "STOPP": (Keyword.STOP, "de"), "ABMELDEN": (Keyword.STOP, "de"), "HILFE": (Keyword.HELP, "de"),
    "ARRET": (Keyword.STOP, "fr"), "ARRÊT": (Keyword.STOP, "fr"), "AIDE": (Keyword.HELP, "fr"),
    "BAJA": (Keyword.STOP, "es"), "AYUDA": (Keyword.HELP, "es"),
    "PARAR": (Keyword.STOP, "pt"), "AJUDA": (Keyword.HELP, "pt"),
    "停止": (Keyword.STOP, "ja"), "ストップ": (Keyword.STOP, "ja"), "ヘルプ": (Keyword.HELP, "ja"),
}


def _keyword_word(body: str) -> str:
    return body.strip().rstrip(".!。！").strip().upper()


def classify_keyword(body: str) -> Keyword | None:
    """The keyword ``body`` is, if the whole message is one (``" Stop. "`` counts; ``"stop it"`` does not)."""
    word = _keyword_word(body)
    local = _LOCAL_KEYWORDS.get(word)
    return _KEYWORDS.get(word) or (local[0] if local else None)


def keyword_language(body: str) -> str | None:
    """The language of a keyword in one of the bot's other languages ("HILFE" → "de"); None for Twilio's own."""
    local = _LOCAL_KEYWORDS.get(_keyword_word(body))
    return local[1] if local else None


_LINK_RE = re.compile(r"^\s*(link\b\s*:?\s*)?(\d{3})[\s-]?(\d{3})\s*[.!]?\s*$", re.IGNORECASE)
_LINK_WORD_RE = re.compile(r"^\s*link\b", re.IGNORECASE)


def parse_link_code(body: str) -> tuple[str | None, bool] | None:
    """Recognise a link-code message.

    Returns ``(code, explicit)``: ``("123456", True)`` for ``"LINK 123456"``, ``("123456", False)``
    for a bare ``"123456"`` (which may just be a number the person is telling the agent), and
    ``(None, True)`` for a message starting with ``LINK`` but carrying no well-formed code.
    Returns ``None`` when the message has nothing to do with linking.
    """
    match = _LINK_RE.match(body)
    if match:
        return match.group(2) + match.group(3), bool(match.group(1))
    if _LINK_WORD_RE.match(body) and len(body.strip()) <= 24:
        return None, True
    return None


def mask_number(number: str) -> str:
    """A phone number fit for logs: country code and last four digits only (``+1******4567``)."""
    if len(number) <= 6:
        return "***"
    return number[:2] + "*" * (len(number) - 6) + number[-4:]


def truncate_for_agent(text: str, limit: int) -> tuple[str, bool]:
    """Cut ``text`` to at most ``limit`` characters at a word boundary; returns (text, was_cut)."""
    if len(text) <= limit:
        return text, False
    cut = text[:limit]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip() + " …", True


# --- normalisation ----------------------------------------------------------------------------

_FENCE_RE = re.compile(r"^[ \t]*(```|~~~)[^\n]*$", re.MULTILINE)
_IMAGE_RE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_LINK_MD_RE = re.compile(r"\[([^\]]+)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_AUTOLINK_RE = re.compile(r"<(https?://[^>\s]+)>")
_HEADING_RE = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$", re.MULTILINE)
_QUOTE_RE = re.compile(r"^[ \t]{0,3}>[ \t]?", re.MULTILINE)
_RULE_RE = re.compile(r"^[ \t]*([-*_])([ \t]*\1){2,}[ \t]*$", re.MULTILINE)
_BULLET_RE = re.compile(r"^([ \t]*)[*+][ \t]+", re.MULTILINE)
_BOLD_RE = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1", re.DOTALL)
_STAR_EM_RE = re.compile(r"(?<![*\w])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![*\w])")
_UNDER_EM_RE = re.compile(r"(?<![_\w])_(?=\S)([^_\n]+?)(?<=\S)_(?![_\w])")
_STRIKE_RE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_INLINE_CODE_RE = re.compile(r"`+([^`\n]+?)`+")
_TAG_RE = re.compile(r"</?(?:b|i|u|em|strong|code|pre|br|p|span)\b[^>]*>", re.IGNORECASE)
_SPACES_RE = re.compile(r"[ \t\f\v\u00a0]+")
_BLANKS_RE = re.compile(r"\n{2,}")


def normalize_for_sms(text: str) -> str:
    """Turn an agent's (possibly markdown) reply into plain SMS text.

    Code fences and inline code marks, emphasis, headings, quotes, rules and link syntax are
    removed (a link keeps its text and URL, since a phone renders bare URLs); bullets become
    ``-``; runs of spaces collapse to one and blank lines to a single line break.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _FENCE_RE.sub("", text)
    text = _IMAGE_RE.sub(lambda m: m.group(1) or m.group(2), text)
    text = _LINK_MD_RE.sub(
        lambda m: m.group(1) if m.group(1).strip() == m.group(2) else f"{m.group(1)} ({m.group(2)})", text
    )
    text = _AUTOLINK_RE.sub(r"\1", text)
    text = _RULE_RE.sub("", text)
    text = _HEADING_RE.sub(r"\1", text)
    text = _QUOTE_RE.sub("", text)
    text = _BULLET_RE.sub(r"\1- ", text)
    text = _BOLD_RE.sub(r"\2", text)
    text = _STRIKE_RE.sub(r"\1", text)
    text = _STAR_EM_RE.sub(r"\1", text)
    text = _UNDER_EM_RE.sub(r"\1", text)
    text = _INLINE_CODE_RE.sub(r"\1", text)
    text = _TAG_RE.sub("", text)
    lines = [_SPACES_RE.sub(" ", line).strip() for line in text.split("\n")]
    text = "\n".join(lines)
    return _BLANKS_RE.sub("\n", text).strip()


# --- segmenting -------------------------------------------------------------------------------

_SENTENCE_END_RE = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n+")


def split_sms(text: str, limit: int = SMS_SEGMENT_LIMIT) -> list[str]:
    """Split ``text`` into segments of at most ``limit`` characters.

    Cuts fall, by preference, at a line break or sentence end in the back half of the window,
    else at the last whitespace, else (one unbroken word longer than ``limit``) hard at the limit.
    Segments are stripped and never empty; an empty or blank ``text`` gives ``[]``.
    """
    if limit < 2:
        raise ValueError("limit must be at least 2")
    segments: list[str] = []
    rest = text.strip()
    while rest:
        if len(rest) <= limit:
            segments.append(rest)
            break
        window = rest[: limit + 1]  # +1: a boundary right after the limit still lets us cut there
        cut = 0
        for match in _SENTENCE_END_RE.finditer(window):
            if limit // 2 <= match.start() <= limit:
                cut = match.start()
        if not cut:
            space = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
            cut = space if space > 0 else limit
        head = rest[:cut].rstrip()
        if not head:  # only whitespace before the cut: fall back to a hard cut
            head, cut = rest[:limit], limit
        segments.append(head)
        rest = rest[cut:].lstrip()
    return segments


SHORTENED_SMS_NOTE = t("sms.shortened", "en")


def cap_sms(text: str, max_segments: int, *, incomplete: bool = False,
            limit: int = SMS_SEGMENT_LIMIT, language: str | None = None) -> tuple[list[str], str, bool]:
    """At most ``max_segments`` segments of ``text``; returns ``(segments, delivered, shortened)``.

    A longer text (or one known to be ``incomplete``: the agent was stopped mid-reply) is cut at
    the last sentence end that fits, and its last segment ends with the catalog's ``sms.shortened``
    note in ``language`` (the reply's). ``delivered`` is what the person receives, without the note:
    the turn to remember.
    """
    note = t("sms.shortened", language)
    # Only the start can be sent; splitting a megabyte to throw most of it away would cost time.
    segments = split_sms(text[: (max_segments + 1) * limit + 1], limit)
    if len(segments) <= max_segments and not incomplete:
        return segments, "\n".join(segments), False
    kept = segments[:max_segments]
    if not kept:
        return [], "", incomplete
    # The last kept segment is incomplete when more followed it, or when the reply itself was.
    last = cut_at_sentence(kept[-1], limit - len(note) - 1, complete=False)
    delivered = "\n".join([*kept[:-1], last]).strip()
    kept[-1] = f"{last} {note}".strip()
    return kept, delivered, True


def link_instructions(code: str, bot_number: str, minutes: int) -> str:
    """What ``/link phone`` shows: the code and where to text it."""
    return (f"Text **LINK {code}** to **{bot_number}** from the phone you want to link "
            f"(the code works once, for {minutes} minutes). After that, whatever you text me "
            "is remembered as you, and /forget covers both. Use /unlink to undo.")
