"""Prompt assembly: character + recent memory + who is talking through what -> chat messages.

:func:`build_messages` is pure and deterministic: the same inputs always give the same messages.
Where a character has more lore, knowledge or examples than fit, the choice is made by a
generator seeded from the inputs (room and the new text), so it varies between turns the way
ElizaOS's random sampling does, yet tests and replays are reproducible.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from typing import TypeVar

from bot.agent.character import Character, ExampleMessage
from bot.agent.engines.base import ChatMessage, Incoming
from bot.memory import Modality, Turn

__all__ = ["build_messages", "build_system_prompt", "clip", "language_instruction", "situation", "speaker_label"]

MAX_BIO = 8
MAX_LORE = 4
MAX_ADJECTIVES = 5
MAX_TOPICS = 6
MAX_EXAMPLES = 2
MAX_NAME = 48
MAX_HISTORY_TURN_CHARS = 2000  # one pasted essay must not crowd the rest of the window out

T = TypeVar("T")

_PLACEHOLDER = re.compile(r"\{\{\s*(user|name)(\d*)\s*\}\}", re.IGNORECASE)
_AGENT_PLACEHOLDER = re.compile(r"\{\{\s*(agentName|char)\s*\}\}", re.IGNORECASE)
_EXAMPLE_NAMES = ("Sam", "Alex", "Jordan", "Robin")


def speaker_label(name: str) -> str:
    """A speaker's display name made safe for a one-line transcript prefix."""
    label = " ".join(name.split())[:MAX_NAME].strip()
    return label or "Someone"


def _rng(*parts: str) -> random.Random:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _sample(items: Sequence[T], k: int, rng: random.Random) -> list[T]:
    """Up to ``k`` items, chosen by ``rng`` but kept in their original order."""
    if len(items) <= k:
        return list(items)
    chosen = sorted(rng.sample(range(len(items)), k))
    return [items[i] for i in chosen]


def _placeholder_name(match: re.Match[str]) -> str:
    """The example name standing in for a ``{{userN}}``/``{{nameN}}`` placeholder (N defaults to 1)."""
    index = int(match.group(2) or "1") - 1
    return _EXAMPLE_NAMES[index % len(_EXAMPLE_NAMES)]


def _example_speaker(speaker: str, character: Character) -> str:
    if speaker.strip().lower() in (character.name.lower(), (character.username or "").lower()):
        return character.name
    match = _PLACEHOLDER.fullmatch(speaker.strip())
    if match:
        return _placeholder_name(match)
    return speaker_label(speaker)


def _fill_placeholders(text: str, character: Character) -> str:
    text = _AGENT_PLACEHOLDER.sub(character.name, text)
    return _PLACEHOLDER.sub(_placeholder_name, text)


def _bullets(items: Sequence[str], character: Character) -> str:
    return "\n".join(f"- {_fill_placeholders(item, character)}" for item in items)


def _format_example(conversation: Sequence[ExampleMessage], character: Character) -> str:
    return "\n".join(
        f"{_example_speaker(m.speaker, character)}: {_fill_placeholders(m.text, character)}" for m in conversation
    )


def _room_kind(room: str) -> str:
    if room == "console":
        return "a terminal chat"
    if room.startswith("discord:dm:"):
        return "a Discord direct message"
    if room.startswith("sms:"):
        return "an SMS conversation"
    if room.startswith("phone:"):
        return "a phone call"
    if room.startswith("discord:"):
        return "a Discord server channel"
    return "a chat"


def situation(incoming: Incoming, *, group: bool = False) -> str:
    """One paragraph telling the model who is talking, through what, and how to answer."""
    who = speaker_label(incoming.speaker_name)
    if incoming.modality is Modality.VOICE:
        text = (
            f"{who} is speaking to you in a Discord voice channel. Your reply will be spoken aloud: "
            "keep it short (one to three sentences), use plain spoken words, and no markdown, lists, "
            "emoji, links or code."
        )
    elif incoming.modality is Modality.CALL:
        text = (
            f"{who} is talking to you on a phone call. Your reply will be spoken aloud over the phone: "
            "keep it short (one to three sentences), use plain spoken words, and no markdown, lists, "
            "emoji, links or code."
        )
    elif incoming.modality is Modality.SMS:
        text = (
            f"{who} is texting you by SMS. Reply in plain text with no markdown, in a message short "
            "enough for a phone screen (ideally under 300 characters)."
        )
    else:
        text = (
            f"{who} is writing to you in {_room_kind(incoming.room)}. Keep it conversational and "
            "reasonably short; light markdown is fine."
        )
    if group:
        text += (
            " Several people take part in this conversation; each of their messages starts with "
            "the speaker's name. Do not start your own replies with your name."
        )
    return text


def build_system_prompt(character: Character, incoming: Incoming, *, group: bool = False,
                        notes: Sequence[str] = (), memories: bool = False) -> str:
    """The system message: identity, personality, style, examples, ``notes`` and the situation.

    ``notes`` are paragraphs recalled for this message (the character's knowledge chosen by the recall
    ranker, what the speaker told the agent before: :attr:`bot.agent.Agent.context_providers`).
    """
    rng = _rng(incoming.room, incoming.text)
    name = character.name
    parts: list[str] = [_fill_placeholders(character.system, character) if character.system else f"You are {name}."]
    if character.bio:
        bio = _sample(character.bio, MAX_BIO, rng)
        parts.append(f"About {name}:\n" + _bullets(bio, character))
    if character.lore:
        lore = _sample(character.lore, MAX_LORE, rng)
        parts.append(f"Some things about {name}'s past:\n" + _bullets(lore, character))
    if character.adjectives:
        parts.append(f"{name} is " + ", ".join(_sample(character.adjectives, MAX_ADJECTIVES, rng)) + ".")
    if character.topics:
        parts.append(f"{name} is interested in " + ", ".join(_sample(character.topics, MAX_TOPICS, rng)) + ".")
    own = character.languages.get(incoming.language) if incoming.language else None
    style = [*character.style_all, *character.style_chat, *(own.style if own else ())]
    if style:
        parts.append("How you write:\n" + _bullets(style, character))
    # Examples written in the answer language, when the character has them, show its tone there.
    conversations = own.message_examples if own and own.message_examples else character.message_examples
    if conversations:
        examples = [_format_example(c, character) for c in _sample(conversations, MAX_EXAMPLES, rng)]
        parts.append(
            f"Examples of how {name} talks (for tone only; these are not part of this conversation):\n\n"
            + "\n\n".join(examples)
        )
    parts.extend(notes)
    parts.append(situation(incoming, group=group))
    if memories:
        from bot.recall.prompt import MEMORY_INSTRUCTIONS

        parts.append(MEMORY_INSTRUCTIONS)
    if incoming.language:
        parts.append(language_instruction(incoming.language))
    return "\n\n".join(parts)


def language_instruction(code: str) -> str:
    """The line that tells the model which language to answer in."""
    from bot.i18n.languages import language_name

    english, native = language_name(code, native=False), language_name(code)
    name = english if english == native else f"{english} ({native})"
    return (f"Answer in {name}, whatever language the examples above are in. If the person mixes "
            f"languages, still answer in {english}; keep names, code and quoted words as they are.")


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters at a word boundary, saying that it was cut."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    space = head.rfind(" ", int(limit * 0.8))
    if space > 0:
        head = head[:space]
    return f"{head.rstrip()} [... message cut: it was {len(text):,} characters long]"


def _turn_message(turn: Turn) -> ChatMessage:
    if turn.role == "assistant":
        content = clip(turn.text, MAX_HISTORY_TURN_CHARS)
        if turn.interrupted:
            # The person talked over the agent: the model should know the rest was never heard.
            content += " [you were interrupted here; they did not hear the rest]"
        return {"role": "assistant", "content": content}
    return {"role": "user", "content": f"{speaker_label(turn.speaker_name)}: {clip(turn.text, MAX_HISTORY_TURN_CHARS)}"}


def build_messages(
    character: Character,
    history: Sequence[Turn],
    incoming: Incoming,
    *,
    text: str | None = None,
    notes: Sequence[str] = (),
    memories: str | None = None,
) -> list[ChatMessage]:
    """Chat messages for an OpenAI-style model.

    ``memories`` (bot.recall.prompt.format_memories) goes under the recent turns, just before the
    new message, and the system prompt says how to use it.

    ``history`` is the recent memory window of the room, oldest first, *not* including the new
    message; ``text`` overrides the incoming text (e.g. a shortened version of a very long one).
    User messages carry the speaker's name so several people can share a room.
    """
    said = incoming.text if text is None else text
    speakers = {t.speaker_id for t in history if t.role == "user"} | {incoming.speaker_id}
    group = len(speakers) > 1
    messages: list[ChatMessage] = [
        {"role": "system", "content": build_system_prompt(character, incoming, group=group, notes=notes,
                                                          memories=memories is not None)}
    ]
    messages.extend(_turn_message(t) for t in history if t.text.strip())
    if memories is not None:
        messages.append({"role": "system", "content": memories})
    messages.append({"role": "user", "content": f"{speaker_label(incoming.speaker_name)}: {said}"})
    return messages
