"""The reply-engine interface and the types every engine shares.

An engine turns one :class:`Conversation` (the assembled prompt plus who said what) into a stream
of text deltas. Engines translate their provider's failures into :class:`AgentError` at the
boundary, so nothing above them ever sees an SDK or HTTP exception.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.agent.character import Character
from bot.i18n.catalog import t
from bot.logs import redact
from bot.memory import Modality, Turn

__all__ = ["AgentError", "ChatMessage", "Conversation", "Incoming", "ReplyEngine"]

ChatMessage = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class Incoming:
    """Something a person said to the agent, and where."""

    room: str
    speaker_id: str
    speaker_name: str
    text: str
    modality: Modality
    # The language to answer in (ISO 639-1, e.g. "de"); None: whatever the person wrote in.
    language: str | None = None
    # The guild rooms (discord:{guild}:{channel}) the speaker can see, from the transport's permission
    # check: what long-term recall may search besides this room. None: this room only.
    visible: frozenset[str] | None = None


class AgentError(Exception):
    """A reply could not be produced.

    ``user_message`` is friendly and safe to show to the person; ``str(exc)`` is for logs and
    names what went wrong (never a secret). ``retryable`` says whether trying again later may help.
    """

    def __init__(self, message: str, *, user_message: str | None = None, retryable: bool = False,
                 key: str | None = None) -> None:
        # Both texts reach people (terminal, Discord, SMS) and logs: the process's redactor takes out
        # any piece of a secret a provider's error text carried in.
        super().__init__(redact(message))
        # ``key``: the catalog message (bot.i18n) for user_message; the reply says it in the person's
        # language (``in_language``), English until then.
        self.key = key if key is not None or user_message is not None else "agent.failed"
        self.user_message = redact(user_message or t(self.key or "agent.failed", "en"))
        self.retryable = retryable

    def in_language(self, language: str | None) -> None:
        """Say ``user_message`` in ``language`` when it comes from the catalog (an engine's own text stays)."""
        if self.key and language:
            self.user_message = redact(t(self.key, language))


@dataclass(frozen=True)
class Conversation:
    """Everything an engine may need for one reply.

    ``messages`` is the assembled chat prompt (system, history, the new message) for LLM engines;
    ``incoming`` and ``history`` are the raw material for engines that keep their own state
    (ElizaOS) or follow their own rules (classic ELIZA). ``text`` is what to send: the incoming
    text, possibly shortened.
    """

    character: Character
    incoming: Incoming
    text: str
    messages: Sequence[ChatMessage] = ()
    history: Sequence[Turn] = field(default=())
    memories: Sequence[Any] = field(default=())  # bot.recall Hits shown in ``messages``, best first
    # Where an engine writes the token counts its API reported for this request (``prompt_tokens``,
    # ``completion_tokens``), when the caller gave a dict (bot/usage meters model tokens with them).
    usage: dict[str, int] | None = field(default=None, compare=False)


class ReplyEngine(ABC):
    """Streams reply text for a conversation."""

    name: str = "engine"

    @abstractmethod
    def stream(self, conversation: Conversation) -> AsyncIterator[str]:
        """Yield reply text deltas as they are produced. Raises :class:`AgentError`."""

    @abstractmethod
    async def check(self) -> str:
        """Round-trip the service; return a short detail or raise :class:`AgentError` naming the problem."""

    async def aclose(self) -> None:
        """Release connections and sessions (idempotent)."""
