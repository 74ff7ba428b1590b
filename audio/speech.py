"""Reply text → speakable sentences.

``SentenceSplitter`` cuts streamed reply text into sentences as soon as each one is complete, so
TTS can start on the first sentence while the agent is still generating the rest.
``normalize_for_speech`` turns one piece of chat text (markdown, code, URLs, emoji, Discord
mentions, long numbers) into what should be said out loud; the text channel keeps the original.
Both are synchronous and pure, so tests call them without asyncio.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from audio.spoken import speak_in, spoken_phrase

__all__ = ["normalize_for_speech", "SentenceSplitter"]

# -- normalisation -----------------------------------------------------------------------------

_FENCED_CODE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_CUSTOM_EMOJI = re.compile(r"<a?:\w+:\d+>")
_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_CHANNEL_MENTION = re.compile(r"<#(\d+)>")
_TIMESTAMP = re.compile(r"<t:-?\d+(?::[tTdDfFR])?>")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\((?:[^()\s]|\([^()\s]*\))+\)")
_URL = re.compile(r"<?\b(?:https?://|www\.)[^\s<>]+>?", re.IGNORECASE)
_INLINE_CODE = re.compile(r"`([^`\n]*)`")
_HEADER = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+", re.MULTILINE)
_QUOTE = re.compile(r"^[ \t]*>+[ \t]?", re.MULTILINE)
_BULLET = re.compile(r"^[ \t]*(?:[-*+•]|\d{1,3}[.)])[ \t]+", re.MULTILINE)
_RULE = re.compile(r"^[ \t]*(?:[-*_][ \t]*){3,}$", re.MULTILINE)
_EMPHASIS = [
    re.compile(r"\*\*\*(.+?)\*\*\*", re.DOTALL),
    re.compile(r"\*\*(.+?)\*\*", re.DOTALL),
    re.compile(r"__(.+?)__", re.DOTALL),
    re.compile(r"~~(.+?)~~", re.DOTALL),
    re.compile(r"\|\|(.+?)\|\|", re.DOTALL),
    re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"),
    re.compile(r"(?<![\w_])_(?!\s)(.+?)(?<!\s)_(?![\w_])"),
]
_SHORTCODE = re.compile(r":[a-z][a-z0-9_+-]*:")
_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # pictographs, emoticons, transport, symbols, flags (regional indicators)
    "\u2600-\u27bf"  # misc symbols and dingbats
    "\u2b00-\u2bff"  # arrows, stars
    "\u2300-\u23ff"  # technical (⌚ ⏰ …)
    "\ufe0f\ufe0e\u200d\u20e3"  # variation selectors, zero-width joiner, keycap
    "\U000e0020-\U000e007f"  # tag characters (subdivision flags)
    "]+"
)
_PHONE = re.compile(r"(?<![\w.])(\+?\(?\d{1,4}\)?(?:[ .-]\(?\d{2,4}\)?){2,4})(?!\w|[.,]\d)")
_LONG_NUMBER = re.compile(r"(?<![\w.,])(\d{5,})(\.\d+)?(?![\w,])")
_SPACES = re.compile(r"[ \t\r\f\v]+")
# Bidirectional controls (LRM, RLM, ALM, embeddings, overrides, isolates) that right-to-left chat
# text carries: they steer how text is drawn, never how it sounds, and some voices read them out.
_BIDI_CONTROLS = re.compile("[\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]")
_SPEAKABLE = re.compile(r"[^\W_]")


def _domain(url: str) -> str:
    host = re.sub(r"^(?:https?://)?(?:www\.)?", "", url.strip("<>"), flags=re.IGNORECASE)
    host = re.split(r"[/?#:]", host, maxsplit=1)[0]
    return host.rstrip(".,;:!?)").lower()


def _url_phrase(match: re.Match[str], language: str = "en") -> str:
    url = match.group(0)
    trailing = ""
    while url and url[-1] in ".,;:!?)":  # sentence punctuation after a URL is not part of it
        trailing = url[-1] + trailing
        url = url[:-1]
    domain = _domain(url)
    return (spoken_phrase("link_to", language, domain=domain) if domain else spoken_phrase("link", language)) + trailing


def _phone_phrase(match: re.Match[str]) -> str:
    digits = re.findall(r"\d+", match.group(1))
    if not 7 <= sum(len(d) for d in digits) <= 15:
        return match.group(0)
    return ", ".join(" ".join(group) for group in digits)


def _number_phrase(match: re.Match[str]) -> str:
    digits, fraction = match.group(1), match.group(2) or ""
    if digits.startswith("0") or (len(digits) >= 10 and not fraction):
        # Codes, identifiers and bare phone numbers, not quantities: read them in groups of digits.
        return ", ".join(" ".join(digits[i : i + 3]) for i in range(0, len(digits), 3)) + fraction
    return f"{int(digits):,}{fraction}"


def normalize_for_speech(text: str, names: Mapping[str, str] | None = None, language: str = "en") -> str:
    """Return what should be said for ``text`` ("" when nothing in it is speakable).

    ``names`` maps Discord user/role/channel ids to display names for mentions. ``language`` (a
    code such as ``"de"``) decides how numbers, dates, units and abbreviations are said
    (``audio.spoken``) and the words used in place of links and unknown mentions.
    """
    names = names or {}
    out = _BIDI_CONTROLS.sub("", text)
    out = _FENCED_CODE.sub("\n", out)
    out = _CUSTOM_EMOJI.sub("", out)
    out = _TIMESTAMP.sub("", out)
    out = _USER_MENTION.sub(lambda m: names.get(m.group(1), spoken_phrase("someone", language)), out)
    out = _ROLE_MENTION.sub(lambda m: names.get(m.group(1), spoken_phrase("role", language)), out)
    out = _CHANNEL_MENTION.sub(lambda m: names.get(m.group(1), spoken_phrase("channel", language)), out)
    out = _IMAGE.sub(lambda m: m.group(1), out)
    out = _LINK.sub(lambda m: m.group(1), out)
    out = _URL.sub(lambda m: _url_phrase(m, language), out)
    out = _INLINE_CODE.sub(lambda m: m.group(1), out)
    out = _RULE.sub("", out)
    out = _HEADER.sub("", out)
    out = _QUOTE.sub("", out)
    out = _BULLET.sub("", out)
    for pattern in _EMPHASIS:
        out = pattern.sub(lambda m: m.group(1), out)
    out = _SHORTCODE.sub("", out)
    out = _EMOJI.sub("", out)
    # Dates, times and units before phone numbers: "2026-12-01" is a date, not digits to spell out.
    out = speak_in(out, language, numbers=False)
    out = _PHONE.sub(_phone_phrase, out)
    if language == "en":
        out = _LONG_NUMBER.sub(_number_phrase, out)
    else:
        out = speak_in(out, language, forms=False)  # every number as words, phone digits one by one
    lines = [_SPACES.sub(" ", line).strip() for line in out.split("\n")]
    lines = [line for line in lines if line]
    # Lines (list items, headers, paragraphs) are separate thoughts: end each with punctuation so
    # TTS pauses between them.
    spoken = " ".join(
        line if i == len(lines) - 1 or line[-1] in ".!?:;,…" else line + "." for i, line in enumerate(lines)
    )
    return spoken if _SPEAKABLE.search(spoken) else ""


# -- sentence splitting ------------------------------------------------------------------------

# Titles and abbreviations that never end a sentence, and those that end one only before a capital.
# English first, then German, French, Spanish and Portuguese ones that a reply commonly contains.
_NEVER_FINAL = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "e.g", "i.e", "cf", "approx", "fig", "mt", "ft",
    "z.b", "bzw", "vgl", "nr", "ca", "hr", "fr", "mme", "mlle", "sra", "srta", "dra", "ud", "uds", "pág",
    "núm", "aprox", "p.ex", "sto", "sta",
}
# "No." is a title before a number ("No. 5") and a plain word everywhere else ("Creo que no. Vamos").
_BEFORE_NUMBER = {"no", "nr", "núm", "nº"}
_MAYBE_FINAL = {"etc", "u.s", "u.k", "a.m", "p.m", "inc", "ltd", "co", "corp", "usw", "etw", "gmbh", "cie", "ltda"}
# Full stops and question/exclamation marks of scripts that write no space after them (Chinese,
# Japanese: 。！？) or whose marks never occur inside a word or number (Devanagari danda, Arabic
# and Urdu marks, Ethiopic, Armenian, Myanmar): each ends a sentence wherever it stands.
_SCRIPT_TERMINAL = "。！？｡︒﹒﹖﹗।॥؟۔።፧፨։။"
_TERMINAL = ".!?…" + _SCRIPT_TERMINAL
_CLOSERS = "\"')]}»”’*_」』）】》〉〕］｝"
# Openers that start a sentence the way a capital does (Spanish ¿ ¡, quotes, CJK brackets).
_OPENERS = "\"'“‘(¿¡「『（【《〈«"
_CLAUSE_BREAK = re.compile(r"[,;:—–،؛](?=\s)|[，、；：]")


class SentenceSplitter:
    """Cut a stream of text deltas into complete sentences, as early as is safe.

    ``feed(delta)`` returns the sentences completed by that delta; ``flush()`` returns the rest.
    A sentence ends at ``.``, ``!``, ``?`` or ``…`` followed by whitespace (plus any closing quotes
    or brackets), or at a newline, but not after titles and abbreviations (Mr., e.g.), inside
    numbers (3.14), URLs, or fenced code blocks (a code block is emitted whole, as its own piece,
    for ``normalize_for_speech`` to drop). To cut latency, when the first sentence of the stream
    runs past ``first_clause_chars`` characters, its first clause (ending at a comma, semicolon,
    colon or dash at least ``min_clause_chars`` in) is emitted on its own. The joined output always
    equals the input up to whitespace.
    """

    def __init__(self, *, first_clause_chars: int = 80, min_clause_chars: int = 20,
                 clause_at_end: bool = False) -> None:
        self._buf = ""
        self._emitted_any = False
        self._first_clause_chars = first_clause_chars
        self._min_clause_chars = min_clause_chars
        # A first clause may also end at a comma that ends the text so far ("Sure," before the next
        # token arrives) when a letter precedes it (so "3," of "3,000" waits). For speech, where
        # the first sound matters more than where a clause breaks.
        self._clause_at_end = clause_at_end

    def feed(self, delta: str) -> list[str]:
        """Add reply text; return every sentence it completed (stripped, non-empty)."""
        self._buf += delta
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """The stream ended: return whatever is left (as one or more pieces)."""
        out = self._drain(final=True)
        rest = self._buf.strip()
        self._buf = ""
        if rest:
            out.append(rest)
        return out

    # -- internals -----------------------------------------------------------------------------

    def _drain(self, *, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            end = self._next_end(final)
            if end is None:
                break
            piece, self._buf = self._buf[:end].strip(), self._buf[end:]
            if piece:
                out.append(piece)
                self._emitted_any = True
        return out

    def _next_end(self, final: bool) -> int | None:
        """Index just past the next complete piece in the buffer, or None if none is complete."""
        buf = self._buf
        start = len(buf) - len(buf.lstrip())
        fence = buf.find("```", start)
        limit = len(buf) if fence < 0 else fence
        if fence == start:
            close = buf.find("```", fence + 3)
            if close < 0:
                return None  # inside a code block: wait for its end (flush takes it whole)
            line_end = buf.find("\n", close + 3)
            if line_end < 0:
                return len(buf) if final else None
            return line_end + 1
        end, undecided = self._sentence_end(buf, start, limit, final)
        if end is not None:
            return end
        if fence >= 0 and not undecided:
            return fence  # text before a code block is a piece of its own
        if not self._emitted_any and not undecided:
            return self._early_clause(buf, start, limit)
        return None

    def _early_clause(self, buf: str, start: int, limit: int) -> int | None:
        if limit - start < self._first_clause_chars:
            return None
        window_end = start + self._first_clause_chars
        for match in _CLAUSE_BREAK.finditer(buf, start + self._min_clause_chars, window_end):
            if not self._in_url(buf, match.start()):
                return match.end()
        end = len(buf)
        if (self._clause_at_end and limit == end and end - start > self._min_clause_chars
                and buf[-1] in ",;:" and buf[-2].isalpha() and not self._in_url(buf, end - 1)):
            return end
        return None

    @staticmethod
    def _in_url(buf: str, index: int) -> bool:
        word_start = max(buf.rfind(" ", 0, index), buf.rfind("\n", 0, index)) + 1
        word = buf[word_start : index + 1].lower()
        return "://" in word or word.startswith("www.")

    def _sentence_end(self, buf: str, start: int, limit: int, final: bool) -> tuple[int | None, bool]:
        """(end index, undecided): undecided means a candidate needs more text to judge."""
        i = start
        while i < limit:
            ch = buf[i]
            if ch == "\n":
                if buf[start:i].strip():
                    return i + 1, False
                i += 1
                continue
            if ch not in _TERMINAL:
                i += 1
                continue
            j = i
            while j < limit and buf[j] in _TERMINAL:
                j += 1
            while j < limit and buf[j] in _CLOSERS:
                j += 1
            if j >= limit:
                # Punctuation at the very end: the next character decides (unless the stream ended).
                if final and limit == len(buf):
                    return j, False
                return None, True
            if not buf[j].isspace():
                if any(c in _SCRIPT_TERMINAL for c in buf[i:j]):
                    return j, False  # 你好。今天… : no space follows a CJK full stop
                i = j  # 3.14, example.com, "wait...what"
                continue
            k = j
            while k < limit and buf[k].isspace():
                k += 1
            next_char = buf[k] if k < limit else ""
            if not next_char and not (final and limit == len(buf)) and limit == len(buf):
                return None, True
            after = buf[k + 1] if k + 1 < limit else ""
            if next_char == "I" and not after and limit == len(buf) and not final:
                return None, True  # "Well... I" — the pronoun or a new sentence? Needs one more char.
            if next_char == "I" and (after.isspace() or after in "'’"):
                next_char = "i"  # the pronoun "I" does not start a sentence after an ellipsis
            if self._is_boundary(buf, start, i, j, next_char):
                return j, False
            i = j
        return None, False

    def _is_boundary(self, buf: str, start: int, i: int, j: int, next_char: str) -> bool:
        punct = buf[i:j]
        if "!" in punct or "?" in punct or any(c in _SCRIPT_TERMINAL for c in punct):
            return True
        word_start = max(buf.rfind(" ", start, i), buf.rfind("\n", start, i), start - 1) + 1
        word = buf[word_start:i].strip("\"'([{*_" + _OPENERS).lower()
        ellipsis = punct.startswith("...") or punct.startswith("…")
        # A letter of a script without case (CJK, Arabic, Devanagari…) can start a sentence too.
        capital_next = bool(next_char) and (
            next_char.isupper() or next_char in _OPENERS or (next_char.isalpha() and not next_char.islower())
        )
        if ellipsis:
            return capital_next or not next_char
        if not word:
            return True
        if word in _BEFORE_NUMBER:
            return not next_char.isdigit()
        if word in _NEVER_FINAL:
            return False
        if len(word) == 1 and word.isalpha():
            return False  # an initial: "J. R. R. Tolkien"
        if word in _MAYBE_FINAL:
            return capital_next or not next_char
        if word.isdigit() and buf[start:word_start].strip() == "":
            return False  # a numbered list marker at the start of a line: "1. First"
        if "://" in word or word.startswith("www."):
            return True  # "see https://example.com. Then" — the URL ended at the final dot
        return True
