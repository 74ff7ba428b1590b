"""The built-in classic ELIZA engine: no network, no model, always answers.

Weizenbaum's method: find the highest-ranked keyword in the message, try that keyword's
decomposition patterns in order, and answer with the next reassembly template of the first one
that matches, with the captured words reflected ("my job" -> "your job"). Templates cycle
deterministically per room. Remarks about "my ..." are kept on a memory stack and brought back
("Earlier you said your ...") when nothing else matches. The script lives in ``eliza_script``.

:class:`Eliza` is synchronous and pure apart from its per-room state; :class:`ElizaEngine`
adapts it to the streaming engine interface.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from bot.agent.engines import eliza_script as script
from bot.agent.engines.base import Conversation, ReplyEngine

__all__ = ["Eliza", "ElizaEngine", "ElizaState", "reflect", "tokenize"]

log = logging.getLogger(__name__)

MAX_ROOMS = 1000          # per-room state kept in memory; least recently used rooms are dropped
MAX_MEMORIES = 10
MAX_WORDS = 200           # ELIZA reads the first clauses of very long messages only
_TOKEN = re.compile(r"[A-Za-z0-9'’\-]+|[.,;:!?]")
_CLAUSE_BREAK = frozenset(".,;:!?")
_CAPTURE = re.compile(r"\((\d+)\)")
_NOT_WORTH_REMEMBERING = frozenset({"name"})


@dataclass
class ElizaState:
    """What ELIZA remembers about one room: template positions and the memory stack."""

    cycles: dict[tuple[int, int], int] = field(default_factory=dict)
    memories: list[str] = field(default_factory=list)
    no_match: int = 0
    memory_recall: int = 0
    farewell: int = 0


def _tokens(text: str) -> tuple[list[str], list[str]]:
    """Aligned lists: lower-case words for matching, and the words as written for echoing back."""
    lower: list[str] = []
    written: list[str] = []
    for match in _TOKEN.finditer(text.replace("’", "'")):
        raw = match.group().strip("'-")
        if not raw:
            continue
        key = raw.lower()
        if key in script.PRE_SUBSTITUTIONS:
            words = script.PRE_SUBSTITUTIONS[key].split()
            lower.extend(words)
            written.extend(words)
        else:
            lower.append(key)
            written.append(raw)
    return lower, written


def tokenize(text: str) -> list[str]:
    """Lower-case words and clause punctuation, with the script's pre-substitutions applied."""
    return _tokens(text)[0]


def reflect(words: Sequence[str], written: Sequence[str] | None = None) -> str:
    """Turn the speaker's words around: "i am sad about my job" -> "you are sad about your job".

    ``words`` are lower case; ``written`` (same length) are echoed where no reflection applies,
    so names keep their capitals.
    """
    shown = written if written is not None else words
    out: list[str] = []
    i = 0
    while i < len(words):
        if i + 1 < len(words) and (words[i], words[i + 1]) in script.REFLECTION_PAIRS:
            out.append(script.REFLECTION_PAIRS[(words[i], words[i + 1])])
            i += 2
            continue
        word = words[i]
        if word == "you":
            # "you" as a subject becomes "I" ("you said" -> "I said"), as an object "me".
            out.append("I" if i == 0 else "me")
        elif word in script.REFLECTIONS:
            out.append(script.REFLECTIONS[word])
        else:
            out.append(shown[i])
        i += 1
    return " ".join(out)


Span = tuple[int, int]


def _match(pattern: Sequence[str], words: Sequence[str], start: int = 0) -> list[Span] | None:
    """Match a decomposition pattern against ``words[start:]``.

    Returns the (start, end) span bound to each ``*`` and ``@group`` component, in order
    (literal words are not numbered), or None if the pattern does not match.
    """
    if not pattern:
        return [] if start == len(words) else None
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        # Shortest run first: Weizenbaum's matcher binds the leftmost wildcard as tightly as possible.
        for end in range(start, len(words) + 1):
            tail = _match(rest, words, end)
            if tail is not None:
                return [(start, end), *tail]
        return None
    if start >= len(words):
        return None
    if head.startswith("@"):
        if words[start] not in script.SYNONYMS.get(head[1:], ()):
            return None
        tail = _match(rest, words, start + 1)
        return None if tail is None else [(start, start + 1), *tail]
    if words[start] != head:
        return None
    return _match(rest, words, start + 1)


def _build_index() -> dict[str, int]:
    index: dict[str, int] = {}
    for number, rule in enumerate(script.KEYWORDS):
        for word in rule.words:
            index.setdefault(word, number)
    return index


_KEYWORD_INDEX = _build_index()
_PATTERNS: list[list[list[str]]] = [[d.pattern.split() for d in rule.decompositions] for rule in script.KEYWORDS]


def _finish(sentence: str) -> str:
    sentence = re.sub(r"\s+", " ", sentence).strip()
    sentence = re.sub(r"\s+([?.!,])", r"\1", sentence)
    sentence = re.sub(r"\bi\b", "I", sentence)
    if not sentence:
        return sentence
    sentence = sentence[0].upper() + sentence[1:]
    return sentence if sentence[-1] in ".?!" else sentence + "."


@dataclass(frozen=True)
class _Clause:
    words: list[str]     # lower case, for matching
    written: list[str]   # as typed, for echoing back


class Eliza:
    """Weizenbaum-style ELIZA speaking as ``name``. Never raises; always answers."""

    def __init__(self, name: str = "ELIZA") -> None:
        self.name = " ".join(name.split()) or "ELIZA"

    def respond(self, text: str, state: ElizaState) -> str:
        """The answer to ``text``, updating ``state`` (template positions, memory stack)."""
        lower, written = _tokens(text)
        lower, written = lower[: MAX_WORDS * 2], written[: MAX_WORDS * 2]
        if all(t in _CLAUSE_BREAK for t in lower):
            return _finish(self._cycle(state, "no_match", script.NO_MATCH))
        if any(w in script.QUIT_WORDS for w in lower):
            return _finish(self._cycle(state, "farewell", script.FAREWELLS))
        clause = self._choose_clause(lower, written)
        self._remember(clause, state)
        for rule_number in self._ranked_keywords(clause.words):
            answer = self._apply(rule_number, clause, state, depth=0)
            if answer:
                return _finish(answer)
        return _finish(self._fallback(state))

    # ----------------------------------------------------------------------------------------

    @staticmethod
    def _clauses(lower: Sequence[str], written: Sequence[str]) -> list[_Clause]:
        clauses: list[_Clause] = [_Clause([], [])]
        for word, shown in zip(lower, written):
            if word in _CLAUSE_BREAK:
                if clauses[-1].words:
                    clauses.append(_Clause([], []))
            else:
                clauses[-1].words.append(word)
                clauses[-1].written.append(shown)
        return [_Clause(c.words[:MAX_WORDS], c.written[:MAX_WORDS]) for c in clauses if c.words]

    def _choose_clause(self, lower: Sequence[str], written: Sequence[str]) -> _Clause:
        """The clause holding the best keyword (Weizenbaum drops clauses without one)."""
        clauses = self._clauses(lower, written)
        best, best_rank = clauses[0], -1
        for clause in clauses:
            ranks = [script.KEYWORDS[_KEYWORD_INDEX[w]].rank for w in clause.words if w in _KEYWORD_INDEX]
            if ranks and max(ranks) > best_rank:
                best, best_rank = clause, max(ranks)
        return best

    @staticmethod
    def _ranked_keywords(words: Sequence[str]) -> list[int]:
        seen: dict[int, int] = {}
        for position, word in enumerate(words):
            number = _KEYWORD_INDEX.get(word)
            if number is not None and number not in seen:
                seen[number] = position
        return sorted(seen, key=lambda n: (-script.KEYWORDS[n].rank, seen[n]))

    def _apply(self, rule_number: int, clause: _Clause, state: ElizaState, depth: int) -> str | None:
        if depth > 3:  # goto chains are short; this guards against a script mistake looping
            return None
        rule = script.KEYWORDS[rule_number]
        for decomp_number, (decomp, pattern) in enumerate(zip(rule.decompositions, _PATTERNS[rule_number])):
            spans = _match(pattern, clause.words)
            if spans is None:
                continue
            templates = decomp.templates
            start = state.cycles.get((rule_number, decomp_number), 0)
            for offset in range(len(templates)):
                template = templates[(start + offset) % len(templates)]
                if template.startswith("goto "):
                    state.cycles[(rule_number, decomp_number)] = start + offset + 1
                    target = template[5:].strip()
                    if target == "none":
                        return self._fallback(state)
                    if target in _KEYWORD_INDEX:
                        return self._apply(_KEYWORD_INDEX[target], clause, state, depth + 1)
                    return None
                answer = self._reassemble(template, clause, spans)
                if answer is not None:
                    state.cycles[(rule_number, decomp_number)] = start + offset + 1
                    return answer
        return None

    def _reassemble(self, template: str, clause: _Clause, spans: Sequence[Span]) -> str | None:
        """Fill ``(n)`` slots with reflected words; None if a slot would be empty."""
        missing = False

        def fill(match: re.Match[str]) -> str:
            nonlocal missing
            index = int(match.group(1)) - 1
            begin, end = spans[index] if 0 <= index < len(spans) else (0, 0)
            if begin >= end:
                missing = True
                return ""
            return reflect(clause.words[begin:end], clause.written[begin:end])

        filled = _CAPTURE.sub(fill, template.replace("{name}", self.name))
        return None if missing else filled

    def _remember(self, clause: _Clause, state: ElizaState) -> None:
        for number, rule in enumerate(script.KEYWORDS):
            if not rule.memory or not any(w in clause.words for w in rule.words):
                continue
            spans = _match(_PATTERNS[number][-1], clause.words)
            if spans is None:
                continue
            template = script.MEMORY_TEMPLATES[state.memory_recall % len(script.MEMORY_TEMPLATES)]
            state.memory_recall += 1
            begin = spans[-1][0]
            if begin < len(clause.words) and clause.words[begin] in _NOT_WORTH_REMEMBERING:
                continue  # "my name is Sam" is answered by the name rule, not worth bringing back
            remark = self._reassemble(template, clause, spans)
            if remark:
                state.memories.append(remark)
                del state.memories[:-MAX_MEMORIES]

    def _fallback(self, state: ElizaState) -> str:
        if state.memories:
            return state.memories.pop(0)
        return self._cycle(state, "no_match", script.NO_MATCH)

    def _cycle(self, state: ElizaState, counter: str, options: Sequence[str]) -> str:
        position = getattr(state, counter)
        setattr(state, counter, position + 1)
        return options[position % len(options)].replace("{name}", self.name)


def _not_english(asked: str | None, text: str) -> str | None:
    """The language to apologise in when the message is not English, else None.

    The answer language decides; when that is English (a place fixed to English), a message
    clearly in another language still gets the apology, in that language.
    """
    if asked and asked != "en":
        return asked
    from bot.i18n.detect import detect
    from bot.i18n.languages import normalize_code

    found = detect(text)
    if found is None or not found.sure or found.confidence < 0.8:
        return None  # short or unclear lines stay with the script (it answers "ok", "hmm", names…)
    code = normalize_code(found.language)
    return code if code is not None and code != "en" else None


class ElizaEngine(ReplyEngine):
    """The classic ELIZA behind the streaming engine interface; one state per room."""

    name = "eliza"

    def __init__(self, character_name: str = "ELIZA") -> None:
        self._eliza = Eliza(character_name)
        self._states: OrderedDict[str, ElizaState] = OrderedDict()

    def respond(self, room: str, text: str) -> str:
        """Synchronous answer for ``room`` (used by :meth:`stream` and tests)."""
        state = self._states.pop(room, None) or ElizaState()
        self._states[room] = state
        while len(self._states) > MAX_ROOMS:
            self._states.popitem(last=False)
        try:
            return self._eliza.respond(text, state)
        except Exception:  # the script must never leave someone without an answer
            log.exception("ELIZA failed on a message (room=%s)", room)
            return "Please, go on."

    async def stream(self, conversation: Conversation) -> AsyncIterator[str]:
        language = _not_english(conversation.incoming.language, conversation.text)
        if language is not None:
            # The script only knows English: answering German with English reflections would
            # pretend to have understood. Say so, in the person's language.
            from bot.i18n import catalog, languages

            answer = catalog.t("language.eliza_english_only", language, language=languages.language_name(language))
        else:
            answer = self.respond(conversation.incoming.room, conversation.text)
        # Word by word, so callers see the same incremental shape as from a language model.
        words = answer.split(" ")
        for i, word in enumerate(words):
            yield word if i == len(words) - 1 else word + " "

    async def check(self) -> str:
        probe = Eliza(self._eliza.name).respond("hello", ElizaState())
        return f"built-in, answers locally ({len(probe)} chars to a hello)"

    async def aclose(self) -> None:
        self._states.clear()
