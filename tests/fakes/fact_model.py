"""A scripted language model for the loopback OpenAI server's whole completions (``FakeOpenAI.responder``).

It reads the real extraction request bot/facts sends (the numbered turn lines, the speaker labels, the
known facts) and answers the JSON asked for, by rules: a rule is a pattern on a line's words and the fact
it yields. It is deliberately careless the way real models are: a line of the assistant's (or of a
speaker marked "not a person") that matches a rule is attributed to the last person labelled before it,
citing that line, so the bot's own checks have to refuse it. A new fact whose topic a known fact of the
same person has lists that fact in ``replaces``. Summary requests are answered with a line naming the
speakers; anything else with a fixed chat reply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FactRule", "ScriptedFactModel"]

_TURN = re.compile(r'^\[turn (\d+)\] \S+ \S+ (.*?): (".*")$')
_KNOWN = re.compile(r"^\[fact (\d+)\] (P\d+): (.*?)(?: \(topic: (.*)\))?$")
_LABEL = re.compile(r"^(P\d+) \((.*)\)$")


@dataclass(frozen=True)
class FactRule:
    pattern: str  # a regular expression searched in the line's words (case-insensitive)
    fact: str  # the fact; "{name}" is the speaker's name, "{1}"... the pattern's groups
    topic: str = ""


@dataclass
class ScriptedFactModel:
    rules: Sequence[FactRule]
    chat_reply: str = "Hello there."
    extraction_requests: list[dict[str, Any]] = field(default_factory=list)
    summary_requests: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, body: dict[str, Any]) -> str:
        system = body["messages"][0]["content"]
        user = body["messages"][-1]["content"]
        if "notebook of durable facts" in system:
            self.extraction_requests.append(body)
            return self._extract(user)
        if "Summarise the voice conversation" in system:
            self.summary_requests.append(body)
            names = sorted({m.group(1) for m in re.finditer(r"^([^:\n]+): ", user, re.MULTILINE)})
            return f"They talked about plans ({', '.join(names)})."
        return self.chat_reply

    def _extract(self, user: str) -> str:
        known: dict[str, list[tuple[int, str]]] = {}
        facts: list[dict[str, Any]] = []
        last_label: str | None = None
        for line in user.splitlines():
            k = _KNOWN.match(line)
            if k:
                known.setdefault(k.group(2), []).append((int(k.group(1)), k.group(4) or ""))
                continue
            m = _TURN.match(line)
            if not m:
                continue
            turn_id, who, words = int(m.group(1)), m.group(2), json.loads(m.group(3))
            label_match = _LABEL.match(who)
            if label_match:
                label, name = label_match.group(1), label_match.group(2)
                last_label = label
            else:
                label, name = last_label or "P1", who.split(" (")[0]  # careless: the assistant's words as a person's
            for rule in self.rules:
                found = re.search(rule.pattern, words, re.IGNORECASE)
                if not found or label is None:
                    continue
                text = rule.fact.replace("{name}", name)
                for i, group in enumerate(found.groups(), start=1):
                    text = text.replace("{%d}" % i, group or "")
                replaces = [fid for fid, topic in known.get(label, []) if rule.topic and topic == rule.topic]
                facts.append({"person": label, "fact": text, "turns": [turn_id], "topic": rule.topic,
                              "replaces": replaces})
        return "Here you go:\n```json\n" + json.dumps({"facts": facts}) + "\n```"
