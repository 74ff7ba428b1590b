"""Reply text made fit for speaking, and cut into sentences while it is still being generated.

The text channel always gets the full text; what is spoken is normalised: markdown removed, code
blocks left out, links named by their host, emoji dropped, long numbers grouped so a voice reads
them as numbers rather than as a string of digits.
"""

from __future__ import annotations

import re

__all__ = ["normalize_for_speech", "SentenceSplitter"]

_CODE_BLOCK = re.compile(r"```.*?(```|$)", re.S)
_INLINE_CODE = re.compile(r"`([^`\n]*)`")
_MD_LINK = re.compile(r"!?\[([^\]\n]*)\]\((?:[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_URL = re.compile(r"\b(?:https?://|www\.)([^\s/<>()\[\]]+)[^\s<>()\[\]]*", re.I)
_DISCORD_EMOJI = re.compile(r"<a?:\w+:\d+>")
_DISCORD_MENTION = re.compile(r"<(?:@[!&]?|#)\d+>")
_SHORTCODE = re.compile(r"(?<!\w):[a-z0-9_+\-]+:(?!\w)")
_HEADER = re.compile(r"^\s{0,3}#{1,6}\s+", re.M)
_QUOTE = re.compile(r"^\s{0,3}>\s?", re.M)
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+", re.M)
_RULE = re.compile(r"^\s*(?:[-*_]\s*){3,}$", re.M)
_EMPHASIS = re.compile(r"(\*\*|__|\*|_|~~)(?=\S)(.+?)(?<=\S)\1")
_TABLE_PIPE = re.compile(r"\s*\|\s*")
_LONG_NUMBER = re.compile(r"(?<![\d.,])\d{5,}(?![\d,]|\.\d)")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANKS = re.compile(r"\n\s*\n+")

# Pictographs, dingbats, flags, skin tones, joiners and variation selectors.
_EMOJI = re.compile(
    "[\U0001F000-\U0001FAFF\U00002600-\U000027BF\U0001F1E6-\U0001F1FF\U0001F3FB-\U0001F3FF"
    "\u200d\ufe0e\ufe0f\u2300-\u23ff\u2b00-\u2bff\u3030\u303d\u3297\u3299]+"
)


def _group_number(match: re.Match[str]) -> str:
    digits = match.group(0)
    if len(digits) >= 10 or digits.startswith("0"):
        # An id, a code or a phone number: read in small groups, not as an amount.
        groups = [digits[i:i + 3] for i in range(0, len(digits), 3)]
        if len(groups) > 1 and len(groups[-1]) == 1:  # 555 123 4567, not 555 123 456 7
            groups[-2:] = [groups[-2] + groups[-1]]
        return " ".join(groups)
    return f"{int(digits):,}"


def _link_name(match: re.Match[str]) -> str:
    host = match.group(1).lower().rstrip(".,;:!?")
    if host.startswith("www."):
        host = host[4:]
    return f"a link to {host}" if host else "a link"


def _end_list_line(line: str) -> str:
    """A heading or list item is a phrase of its own: give it a full stop so it is read as one."""
    if (_HEADER.match(line) or _BULLET.match(line)) and not re.search(r"[.!?,;:]\s*$", line):
        return line.rstrip() + "."
    return line


def normalize_for_speech(text: str) -> str:
    """What a voice should say for ``text``; ``""`` when nothing in it is speakable."""
    text = _CODE_BLOCK.sub(" ", text)
    text = _INLINE_CODE.sub(r"\1", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _URL.sub(_link_name, text)
    text = _DISCORD_EMOJI.sub(" ", text)
    text = _DISCORD_MENTION.sub(" ", text)
    text = _SHORTCODE.sub(" ", text)
    text = _EMOJI.sub(" ", text)
    text = _RULE.sub(" ", text)
    text = "\n".join(_end_list_line(line) for line in text.split("\n"))
    text = _HEADER.sub("", text)
    text = _QUOTE.sub("", text)
    text = _BULLET.sub("", text)
    for _ in range(2):  # nested emphasis such as ***bold italic***
        text = _EMPHASIS.sub(r"\2", text)
    text = _TABLE_PIPE.sub(", ", text) if "|" in text else text
    text = _LONG_NUMBER.sub(_group_number, text)
    text = _BLANKS.sub(". ", text)
    text = text.replace("\n", " ")
    text = _SPACES.sub(" ", text).strip()
    text = re.sub(r"\s+([,.!?;:])", r"\1", text)
    text = re.sub(r"([.!?])\.+(?=\s|$)", r"\1", text)
    text = re.sub(r"[,;:]\.(?=\s|$)", ".", text)
    if not re.search(r"[^\W_]", text):
        return ""
    return text


_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e a.m p.m u.s u.k no fig approx inc ltd co dept".split()
)
_END = re.compile(r"([.!?…]+)([\"'”’)\]]*)(\s+|$)")
_EARLY_CUT = 120  # characters without a sentence end before a clause may be spoken on its own


class SentenceSplitter:
    """Feed streamed text; get back each sentence as soon as it is complete.

    Sentences end at ``.``, ``!``, ``?`` or ``…`` followed by white space, or at a blank line, but
    not after common abbreviations (``Dr.``, ``e.g.``), inside numbers (``3.14``) or inside a code
    block. When a sentence runs long, it is cut at a clause boundary (a comma, semicolon or dash) so
    speech can start sooner. Concatenating everything returned equals the input, white space aside.
    """

    def __init__(self, *, early_cut: int = _EARLY_CUT) -> None:
        self._buffer = ""
        self._early_cut = early_cut

    def feed(self, delta: str) -> list[str]:
        self._buffer += delta
        out: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            sentence, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if sentence:
                out.append(sentence)
        return out

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []

    def _find_cut(self) -> int | None:
        buf = self._buffer
        # Never end a sentence inside an open code block: wait for it to close.
        fences = [m.start() for m in re.finditer(r"```", buf)]
        open_from = fences[-1] if len(fences) % 2 else None
        paragraph = buf.find("\n\n")
        for m in _END.finditer(buf):
            end = m.end(2)
            if open_from is not None and end > open_from:
                break
            if any(a < m.start() < b for a, b in zip(fences[::2], fences[1::2])):
                continue
            if paragraph != -1 and paragraph < m.start():
                break
            if not m.group(3) and end == len(buf):
                return None  # the end of the buffer: more text may follow ("3." then "14")
            if m.group(1) == "." and self._is_abbreviation(buf, m.start()):
                continue
            return m.end()
        if paragraph != -1 and (open_from is None or paragraph < open_from):
            return paragraph + 2
        if open_from is None and len(buf) > self._early_cut:
            clause = max(buf.rfind(", ", 0, len(buf) - 1), buf.rfind("; ", 0, len(buf) - 1),
                         buf.rfind(" – ", 0, len(buf) - 1), buf.rfind(" - ", 0, len(buf) - 1))
            if clause >= self._early_cut // 3:
                return clause + 2
        return None

    @staticmethod
    def _is_abbreviation(buf: str, dot: int) -> bool:
        start = dot
        while start > 0 and (buf[start - 1].isalpha() or buf[start - 1] == "."):
            start -= 1
        word = buf[start:dot].lower()
        if word in _ABBREVIATIONS:
            return True
        return len(word) == 1 and word.isalpha() and word not in ("a", "i")  # initials: "J. R. R."
