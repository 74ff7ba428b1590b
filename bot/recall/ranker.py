"""The ranker: what a question asks for (words, people, a period) and how candidates are re-scored.

Pure functions, no I/O: :func:`plan` reads the question once; :func:`rank` combines, for each candidate
document, its lexical score (normalised to the best candidate's), whether its speaker is a person the
question names (or the asker, for "I"/"my"), whether it was said in the period the question names, the
lexical scores of the turns said around it in the same room (a question often shares words with one
turn while the answer is the next), and a little recency.

Dates are read in UTC: "today", "yesterday", "last night", "N days/weeks ago", "last week", "this
week", "last month", weekday names ("on Tuesday", "last Tuesday"), month names ("in June", "June
2025"), "May 8" / "8 May", ISO dates and years.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.recall.index import Hit

__all__ = ["Plan", "plan", "rank", "terms_of", "period_of", "WEIGHTS"]

MAX_TERMS = 24
DAY = 86400.0

WEIGHTS = {
    "lex": 1.0,  # the candidate's own lexical score, 0..1
    "name": 0.5,  # said by a person the question names
    "self": 0.15,  # said by the asker, when they ask about themselves ("my", "I")
    "date": 1.0,  # said in the period the question names
    "context": 0.45,  # the best lexical score of a turn around it
    "recency": 0.05,  # decays over RECENCY_DAYS
    "agent": -0.05,  # the bot's own words count a little less than people's
    # MEMORY_EMBEDDINGS: the question's cosine similarity, 0..1. Small on purpose: on bench/data's sample
    # and bench.memory_data's sets any larger weight lowered recall@5 (WordLlama; see README, Memory).
    "semantic": 0.1,
}
RECENCY_DAYS = 30.0
NEIGHBOUR_SECONDS = 180.0  # turns further apart than this are not "around" each other

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_STOPWORDS = frozenset("""
a about above after again against all am an and any are aren't as at be because been before being below between
both but by can could did didn't do does doesn't doing don't down during each few for from further had has have
having he he'd he's her here hers herself him himself his how i i'd i'm i've if in into is isn't it it's its itself
just let's me more most my myself no nor not now of off on once only or other ought our ours ourselves out over own
same she she's should so some such than that that's the their theirs them themselves then there there's these they
they're this those through to too under until up very was wasn't we we're were what what's when where which while
who whom why will with won't would you you're your yours yourself yourselves tell told say said remember recall
know think ever did anything something thing things get got also like really
yesterday today tonight ago last day days week weeks month months earlier session
""".split())
_FIRST_PERSON = frozenset("i i'm i've i'd me my mine myself we we're our ours us".split())
_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_abbr) if name})
_MONTHS.pop("may", None)
_MONTHS["may"] = 5
_WEEKDAYS = {name.lower(): i for i, name in enumerate(calendar.day_name)}
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
            "eight": 8, "nine": 9, "ten": 10, "couple": 2, "few": 3}


@dataclass(frozen=True)
class Plan:
    """What one question asks: its search ``terms``, all its ``words`` (for names), the period it
    names (``when``: epoch seconds, start inclusive, end exclusive) and whether it is about the asker."""

    terms: tuple[str, ...]
    words: frozenset[str]
    when: tuple[float, float] | None
    about_self: bool


def terms_of(text: str) -> tuple[str, ...]:
    """The search words of ``text``: lower-cased, no stop words, each once, in order (at most MAX_TERMS)."""
    seen: dict[str, None] = {}
    for match in _WORD.finditer(text.lower()):
        word = match.group(0)
        if word in _STOPWORDS:
            continue
        word = word.replace("'", " ").split()[0] if "'" in word else word
        if len(word) < 2 and not word.isdigit() and word.isascii():
            continue
        if word in _STOPWORDS:
            continue
        seen.setdefault(word, None)
        if len(seen) >= MAX_TERMS:
            break
    return tuple(seen)


def plan(question: str, now: float) -> Plan:
    words = frozenset(w.split("'")[0] for w in (m.group(0) for m in _WORD.finditer(question.lower())))
    return Plan(terms=terms_of(question), words=words, when=period_of(question, now),
                about_self=bool(words & _FIRST_PERSON))


def _day_start(day: datetime) -> datetime:
    return day.replace(hour=0, minute=0, second=0, microsecond=0)


def _span(start: datetime, end: datetime) -> tuple[float, float]:
    return (start.timestamp(), end.timestamp())


def period_of(question: str, now: float) -> tuple[float, float] | None:
    """The period ``question`` names, relative to ``now`` (None when it names none)."""
    text = question.lower()
    today = _day_start(datetime.fromtimestamp(now, UTC))
    one = timedelta(days=1)
    if re.search(r"\btoday\b|\bthis morning\b|\bearlier today\b|\btonight\b", text):
        return _span(today, today + one)
    if re.search(r"\blast night\b", text):
        return _span(today - one + timedelta(hours=12), today + timedelta(hours=6))
    if re.search(r"\byesterday\b|\byesterday's\b", text):
        return _span(today - one, today)
    m = re.search(r"\b(\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|couple|few)\s+(?:of\s+)?"
                  r"(day|week|month)s?\s+ago\b", text)
    if m:
        n = int(m.group(1)) if m.group(1).isdigit() else _NUMBERS[m.group(1)]
        unit = {"day": 1, "week": 7, "month": 30}[m.group(2)]
        centre = today - timedelta(days=n * unit)
        slack = timedelta(days=max(1, unit * n // 4))
        return _span(centre - slack, centre + one + slack)
    for name, weekday in _WEEKDAYS.items():
        if re.search(rf"\b{name}s?\b", text):
            back = (today.weekday() - weekday) % 7 or 7
            day = today - timedelta(days=back)
            if re.search(rf"\b(?:last|previous)\s+{name}\b", text) and back < 2:
                day -= timedelta(days=7)
            return _span(day, day + one)
    if re.search(r"\blast week\b|\bprevious week\b", text):
        start = today - timedelta(days=today.weekday() + 7)
        return _span(start, start + timedelta(days=7))
    if re.search(r"\bthis week\b", text):
        start = today - timedelta(days=today.weekday())
        return _span(start, today + one)
    if re.search(r"\blast month\b", text):
        first = today.replace(day=1)
        prev = (first - one).replace(day=1)
        return _span(prev, first)
    m = re.search(r"\b(\d{4})-(\d{2})-(\d{2})\b", text)
    if m:
        try:
            day = datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)), tzinfo=UTC)
            return _span(day, day + one)
        except ValueError:
            pass
    month_names = "|".join(sorted(_MONTHS, key=len, reverse=True))
    m = (re.search(rf"\b({month_names})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(\d{{4}}))?", text)
         or None)
    d = re.search(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({month_names})\b(?:,?\s+(\d{{4}}))?", text)
    if m or d:
        if m:
            month, dom, year = _MONTHS[m.group(1)], int(m.group(2)), m.group(3)
        else:
            assert d is not None
            month, dom, year = _MONTHS[d.group(2)], int(d.group(1)), d.group(3)
        y = int(year) if year else today.year
        try:
            day = datetime(y, month, dom, tzinfo=UTC)
        except ValueError:
            day = None
        if day is not None:
            if not year and day > today:
                day = day.replace(year=y - 1)
            return _span(day, day + one)
    m = re.search(rf"\b(?:in|during|since|last|this)\s+({month_names})\b(?:\s+(\d{{4}}))?", text)
    if m and not (m.group(1) == "may" and not m.group(2) and not re.search(r"\bin may\b", text)):
        month = _MONTHS[m.group(1)]
        y = int(m.group(2)) if m.group(2) else today.year
        start = datetime(y, month, 1, tzinfo=UTC)
        if not m.group(2) and start > today:
            start = start.replace(year=y - 1)
        end = datetime(start.year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
        return _span(start, end)
    m = re.search(r"\b(?:in|during)\s+((?:19|20)\d{2})\b", text)
    if m:
        y = int(m.group(1))
        return _span(datetime(y, 1, 1, tzinfo=UTC), datetime(y + 1, 1, 1, tzinfo=UTC))
    return None


def _first_name(name: str) -> str:
    parts = name.lower().split()
    return parts[0] if parts else ""


def rank(p: Plan, candidates: Sequence[Hit], neighbours: Iterable[Hit], *, identities: set[str],
         now: float, weights: dict[str, float] | None = None, semantic: dict[int, float] | None = None) -> list[Hit]:
    """Candidates and their neighbours, best first, each with its combined ``score`` and ``features``.

    ``semantic``: each document's cosine similarity to the question (MEMORY_EMBEDDINGS); a document
    without one scores as the least similar.
    """
    w = weights or WEIGHTS
    pool: dict[int, Hit] = {h.id: h for h in candidates}
    for n in neighbours:
        pool.setdefault(n.id, n)
    best = max((h.score for h in candidates), default=0.0)
    lex = {h.id: (h.score / best if best > 0 else 0.0) for h in pool.values()}
    named = {_first_name(h.speaker_name) for h in pool.values()} & p.words
    named.discard("")
    # The turns of each room in time order, for "around a hit".
    by_room: dict[str, list[Hit]] = {}
    for h in pool.values():
        if h.kind == "turn":
            by_room.setdefault(h.place, []).append(h)
    context: dict[int, float] = {}
    for turns in by_room.values():
        turns.sort(key=lambda h: (h.created_at, h.id))
        for i, h in enumerate(turns):
            best_around = 0.0
            for j, weight in ((i - 1, 1.0), (i + 1, 1.0), (i - 2, 0.5), (i + 2, 0.5)):
                if 0 <= j < len(turns) and abs(turns[j].created_at - h.created_at) <= NEIGHBOUR_SECONDS:
                    best_around = max(best_around, lex[turns[j].id] * weight)
            context[h.id] = best_around
    sem = {i: max(0.0, v) for i, v in (semantic or {}).items()}
    scored: list[Hit] = []
    seen_text: set[tuple[str, str]] = set()
    for h in pool.values():
        f = {
            "lex": lex[h.id],
            "name": 1.0 if named and _first_name(h.speaker_name) in named else 0.0,
            "self": 1.0 if p.about_self and h.speaker_id in identities and h.role == "user" else 0.0,
            "date": (1.0 if p.when is not None and p.when[0] <= h.created_at < p.when[1] else 0.0),
            "context": context.get(h.id, 0.0),
            "recency": math.exp(-max(0.0, now - h.created_at) / (RECENCY_DAYS * DAY)),
            "agent": 1.0 if h.role == "assistant" else 0.0,
        }
        if semantic is not None:
            f["semantic"] = sem.get(h.id, 0.0)
        if f["lex"] == 0.0 and f["context"] == 0.0 and f["date"] == 0.0:
            continue  # a neighbour of nothing that matters
        score = sum(w[k] * v for k, v in f.items())
        key = (h.place, " ".join(h.text.lower().split()))
        if key in seen_text:
            continue
        seen_text.add(key)
        scored.append(replace(h, score=score, features=f))
    scored.sort(key=lambda h: (-h.score, -h.created_at, h.id))
    return scored
