"""A fake agent implementing the shared ``Agent``/``Reply`` contract, for tests.

Switches:
- ``replies``: a list of reply texts used in turn (the last one repeats), or a function of the
  :class:`~bot.agent.Incoming`;
- ``fail_after``: raise :class:`~bot.agent.AgentError` after that many text deltas (0 = before any);
- ``gate``: an :class:`asyncio.Event` every reply waits on before its first delta (a slow engine
  whose speed the test controls);
- ``started``: set whenever a reply begins streaming, so a test can wait for "the agent is busy".

Like the real agent it stores the user's turn when a reply starts and the assistant's turn only
when :meth:`FakeReply.finish` is called.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from bot.agent import AgentError, Incoming
from bot.memory import Memory, Modality, Turn

__all__ = ["FakeAgent", "FakeCharacter", "FakeReply"]


@dataclass(frozen=True)
class FakeCharacter:
    name: str = "Testy"
    voice: object | None = None
    languages: dict[str, object] = field(default_factory=dict)  # as Character: per-language voices (none)


@dataclass
class FakeReply:
    agent: FakeAgent
    incoming: Incoming
    script: str
    text: str = ""
    finished: bool = False
    finished_with: str | None = field(default=None, repr=False)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[str]:
        agent = self.agent
        agent.started.set()
        if agent.gate is not None:
            await agent.gate.wait()
        deltas = [w + " " for w in self.script.split(" ")]
        deltas[-1] = deltas[-1][:-1]
        for i, delta in enumerate(deltas):
            if agent.fail_after is not None and i >= agent.fail_after:
                raise AgentError("fake engine failed mid-reply",
                                 user_message="Sorry, something went wrong on my side. Please try again in a bit.")
            self.text += delta
            yield delta
            await asyncio.sleep(0)  # a real engine yields to the loop between deltas

    def finish(self, spoken: str | None = None, *, interrupted: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        self.finished_with = spoken if spoken is not None else self.text
        if self.agent.memory is not None:
            self.agent.memory.append(
                Turn(room=self.incoming.room, speaker_id="agent", speaker_name=self.agent.character.name,
                     role="assistant", text=self.finished_with, modality=self.incoming.modality,
                     created_at=time.time(), interrupted=interrupted)
            )


class FakeAgent:
    """Scripted replies through the ``Agent`` interface (``reply(incoming) -> Reply``)."""

    engine_name = "fake"

    def __init__(
        self,
        memory: Memory | None = None,
        *,
        replies: list[str] | Callable[[Incoming], str] | None = None,
        fail_after: int | None = None,
        gate: asyncio.Event | None = None,
        name: str = "Testy",
    ) -> None:
        self.memory = memory
        self.character = FakeCharacter(name)
        self._replies = replies if replies is not None else ["Hello from the fake agent."]
        self.fail_after = fail_after
        self.gate = gate
        self.started = asyncio.Event()
        self.calls: list[Incoming] = []
        self.replies_made: list[FakeReply] = []
        self.ignored: list[Modality] = []  # turns its channel chose not to answer (Agent.turn_ignored)
        self.prefetched: list[Incoming] = []  # words recall was asked to start on (Agent.prefetch_memories)
        self.closed = False

    def prefetch_memories(self, incoming: Incoming) -> None:
        self.prefetched.append(incoming)

    def reply(self, incoming: Incoming) -> FakeReply:
        self.calls.append(incoming)
        if callable(self._replies):
            script = self._replies(incoming)
        else:
            script = self._replies[min(len(self.calls), len(self._replies)) - 1]
        if self.memory is not None:
            self.memory.append(
                Turn(room=incoming.room, speaker_id=incoming.speaker_id, speaker_name=incoming.speaker_name,
                     role="user", text=incoming.text, modality=Modality(incoming.modality), created_at=time.time())
            )
        made = FakeReply(self, incoming, script)
        self.replies_made.append(made)
        return made

    def turn_ignored(self, modality: Modality) -> None:
        self.ignored.append(modality)

    async def aclose(self) -> None:
        self.closed = True
