"""The agent: a character with memory, answering through a streaming reply engine.

Usage::

    reply = agent.reply(Incoming(room, speaker_id, speaker_name, text, Modality.TEXT))
    try:
        async for delta in reply:       # raises AgentError if the engine fails
            show(delta)
    except AgentError as exc:
        log.warning("reply failed: %s", exc)   # the caller logs the one line, with its context
        show(exc.user_message)          # nothing is stored as said
    else:
        reply.finish()                  # stores the assistant turn

The person's turn is queued for storing when the reply starts (so it is remembered even if the reply
fails); the room's recent turns are read when the reply is first iterated (from memory's cache, so the
voice path never waits on the database);
the agent's turn only when the caller says what was actually delivered, via :meth:`Reply.finish`
(for voice: the part that was spoken before a barge-in).

A message that asks to forget what the person just said (:func:`bot.agent.forget.forget_request`, six
languages) never reaches the engine and is never stored: its reply removes that person's previous turn in
the room, the agent's answer to it, their recall entries and what was learnt from them
(:meth:`Agent.forget_last`), then confirms in a few words. Every channel gets this through ``reply``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from bot.agent.character import Character, CharacterError, CharacterVoice
from bot.agent.engines.base import AgentError, Conversation, Incoming, ReplyEngine
from bot.agent.forget import forget_request
from bot.agent.prompt import build_messages, clip
from bot.i18n.catalog import t
from bot.memory import Memory, Modality, Turn
from bot.recall.prompt import format_memories
from bot.store import DatabaseError

if TYPE_CHECKING:
    from bot.recall import Recall

__all__ = [
    "Agent",
    "AgentError",
    "Character",
    "CharacterError",
    "CharacterVoice",
    "Incoming",
    "MAX_INPUT_CHARS",
    "Reply",
    "AGENT_SPEAKER_ID",
]

log = logging.getLogger(__name__)

# Longest message passed to an engine. ElizaOS's sessions API refuses content over 4,000
# characters, and a wall of pasted text is better summarised by its start than rejected.
MAX_INPUT_CHARS = 4000
AGENT_SPEAKER_ID = "agent"
# What recall brings into the prompt as memories: things said, facts and summaries. The character's
# knowledge is recalled by the same index into its own section (bot.facts.knowledge).
MEMORY_KINDS = ("turn", "fact", "summary")


async def _no_notes() -> list[str]:
    return []


async def _said(text: str) -> AsyncGenerator[str, None]:
    yield text


class Reply:
    """One streamed reply. Async-iterate it once for text deltas; then call :meth:`finish`."""

    def __init__(
        self,
        agent: Agent,
        incoming: Incoming,
        source: AsyncIterator[str] | None,
        *,
        canned: str | None = None,
        store: bool = True,
        prepare: Callable[[], Awaitable[AsyncIterator[str]]] | None = None,
    ) -> None:
        self._agent = agent
        self.incoming = incoming
        self._source = source
        self._prepare = prepare  # opens the engine's stream once the history is read
        self._canned = canned
        self._store = store
        self._gen: AsyncGenerator[str, None] | None = None
        self.text = ""
        self.done = False
        self.error: AgentError | None = None
        self._finished = False
        self._incoming_turn: Turn | None = None  # the person's turn, not stored yet (remember=False)
        self._turn: Turn | None = None  # the person's turn once stored (see Agent.forget_last)
        self._committed: asyncio.Event | None = None  # a request to forget waits for the turn to be over
        self._started = time.monotonic()

    def __repr__(self) -> str:
        return f"<Reply room={self.incoming.room!r} chars={len(self.text)} done={self.done}>"

    def __aiter__(self) -> AsyncIterator[str]:
        if self._gen is not None:
            raise RuntimeError("a Reply can be iterated only once")
        self._gen = self._run()
        return self._gen

    async def _run(self) -> AsyncGenerator[str, None]:
        """The reply's text, telling the agent's turn listeners how the turn ended."""
        first: float | None = None
        outcome: str | None = None
        try:
            async with contextlib.aclosing(self._produce()) as deltas:
                async for delta in deltas:
                    if first is None and delta.strip():
                        first = time.monotonic() - self._started
                    yield delta
            outcome = "answered"
        except GeneratorExit:
            # Closed by the caller part-way (a capped message, a barge-in): what came was the answer.
            outcome = "answered" if first is not None else None
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            outcome = "failed"
            raise
        finally:
            if outcome is not None:
                self._agent._turn_ended(self.incoming.modality, outcome, first)

    async def _produce(self) -> AsyncGenerator[str, None]:
        if self._canned is not None:
            self.text = self._canned
            self.done = True
            yield self._canned
            return
        started = time.monotonic()
        try:
            if self._source is None:
                assert self._prepare is not None
                self._source = await self._prepare()
            async for delta in self._source:
                if not delta:
                    continue
                self.text += delta
                yield delta
        except asyncio.CancelledError:
            raise
        except AgentError as exc:
            exc.in_language(self.incoming.language)  # a catalog message, said in the reply's language
            self.error = exc
            # The caller (chat cog, voice session, SMS, CLI) writes the one warning line for this
            # failure, with the person and channel it knows about; here it is detail only.
            log.debug("Reply failed (engine=%s room=%s): %s", self._agent.engine_name, self.incoming.room, exc)
            raise
        except Exception as exc:  # a bug in an engine: log it fully, show the person something kind
            self.error = AgentError(f"{self._agent.engine_name} engine crashed: {type(exc).__name__}: {exc}",
                                    user_message=t("agent.failed", self.incoming.language))
            log.exception("Reply engine %s crashed (room=%s)", self._agent.engine_name, self.incoming.room)
            raise self.error from exc
        finally:
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                await aclose()
        if not self.text.strip():
            self.error = AgentError(f"{self._agent.engine_name} engine returned an empty reply",
                                    user_message=t("agent.blank", self.incoming.language),
                                    retryable=True)
            log.debug("Empty reply (engine=%s room=%s)", self._agent.engine_name, self.incoming.room)
            raise self.error
        self.done = True
        log.debug("Reply done in %.3fs (engine=%s room=%s chars=%d)", time.monotonic() - started,
                  self._agent.engine_name, self.incoming.room, len(self.text))

    async def collect(self) -> str:
        """Consume the whole reply and return its text (raises :class:`AgentError`)."""
        async for _ in self:
            pass
        return self.text

    async def aclose(self) -> None:
        """Stop generating (e.g. the person barged in); the engine's stream is closed."""
        if self._gen is not None:
            await self._gen.aclose()
        elif self._source is not None and hasattr(self._source, "aclose"):
            await self._source.aclose()  # type: ignore[attr-defined]

    def remember_incoming(self) -> None:
        """Store the person's turn now (a speculative reply that turned out to be the answer). Idempotent."""
        if self._committed is not None:
            self._committed.set()
        turn, self._incoming_turn = self._incoming_turn, None
        if turn is not None:
            self._agent.memory.append(turn)
            self._agent._stored(self, turn)

    def finish(self, spoken: str | None = None, *, interrupted: bool = False) -> None:
        """Store the agent's turn: ``spoken`` if given (what was actually delivered), else the full text.

        Does nothing if the reply failed, was already finished, or answered an empty message.
        """
        if self._finished:
            return
        self._finished = True
        self._agent._finished(self)
        if self.error is not None or not self._store:
            return
        said = self.text if spoken is None else spoken
        if not said.strip() and not interrupted:
            return
        self._agent.memory.append(
            Turn(
                room=self.incoming.room,
                speaker_id=AGENT_SPEAKER_ID,
                speaker_name=self._agent.character.name,
                role="assistant",
                text=said,
                modality=self.incoming.modality,
                created_at=self._agent.clock(),
                interrupted=interrupted,
            )
        )
        self._agent._reply_stored(self.incoming)


class Agent:
    """A character, its memory, and the engine that writes its replies."""

    def __init__(
        self,
        character: Character,
        engine: ReplyEngine,
        memory: Memory,
        *,
        context_turns: int = 20,
        max_input_chars: int = MAX_INPUT_CHARS,
        clock: Callable[[], float] = time.time,
        context_budget: float = 0.05,
    ) -> None:
        self.character = character
        self.engine = engine
        self.memory = memory
        self.context_turns = context_turns
        self.max_input_chars = max_input_chars
        self.clock = clock
        # Told how each person's turn to the agent ended: (modality, "answered" / "failed" /
        # "ignored", seconds from the message to the reply's first text). The console counts the
        # text and SMS ones; voice sessions report their own, with what was heard and played.
        self.turn_listeners: list[Callable[[Modality, str, float | None], None]] = []
        # Told when the agent's reply to a person was stored (background learning starts from here;
        # a listener must only note it, never do the work on the caller's path).
        self.reply_listeners: list[Callable[[Incoming], None]] = []
        # Paragraphs for the system prompt drawn from long-term memory (what a person told the agent
        # before, the character's knowledge recalled for this message). They run together before the
        # engine is asked, under ``context_budget`` seconds; past it the reply goes on without them.
        self.context_providers: list[Callable[[Incoming], Awaitable[str | None]]] = []
        self.context_budget = context_budget
        self.context_late = 0  # replies that went on without their memories (over the budget)
        self.speaker_facts = False  # a context provider puts the speaker's facts in the prompt (bot.facts)
        self.knowledge: Any = None  # the character's knowledge, chunked (bot.facts.knowledge.KnowledgeIndex)
        # Long-term recall (bot.recall.Recall): memories for the prompt, searched when the reply
        # starts (a speculative voice reply: on the pause's words) under its budget.
        self.recall: Recall | None = None
        self._recalls: set[asyncio.Task[Any]] = set()  # searches past their budget, left to finish
        # (room, speaker) -> (search words, visible rooms, the search started early, when): see prefetch_memories.
        self._prefetched: dict[tuple[str, str], tuple[tuple[str, ...], Any, asyncio.Task[Any], float]] = {}
        # Told of the turns a person asked to have forgotten, once memory and recall dropped them:
        # (room, [(row id, or None for one never written), turn]). bot.facts drops what it drew from them.
        self.forget_listeners: list[Callable[[str, list[tuple[int | None, Turn]]], Awaitable[object]]] = []
        # Each person's latest reply per room whose turn is stored, until it is finished: a reply still being
        # written when its question is forgotten is not stored either.
        self._open: weakref.WeakValueDictionary[tuple[str, str], Reply] = weakref.WeakValueDictionary()
        # Turns memory deleted on request whose recall entries or learnt facts could not be removed then:
        # the person is told it failed, and their next request there finishes the job.
        self._unfinished: dict[tuple[str, str], list[tuple[int | None, Turn]]] = {}

    @property
    def engine_name(self) -> str:
        return self.engine.name

    def __repr__(self) -> str:
        return f"<Agent character={self.character.name!r} engine={self.engine_name!r}>"

    def turn_ignored(self, modality: Modality) -> None:
        """A person's message that its channel chose not to answer (over a rate limit, from a number
        that opted out, empty): counted as such by the turn listeners."""
        self._turn_ended(modality, "ignored", None)

    def _turn_ended(self, modality: Modality, outcome: str, wait: float | None) -> None:
        for listener in list(self.turn_listeners):
            try:
                listener(modality, outcome, wait)
            except Exception:
                log.exception("turn listener failed")

    def _stored(self, reply: Reply, turn: Turn) -> None:
        reply._turn = turn
        self._open[(turn.room, turn.speaker_id)] = reply

    def _finished(self, reply: Reply) -> None:
        key = (reply.incoming.room, reply.incoming.speaker_id)
        if self._open.get(key) is reply:
            del self._open[key]

    @property
    def names(self) -> tuple[str, ...]:
        """What people call the agent (a request may start with it): its name and the name's first word."""
        name = self.character.name.strip()
        return tuple(dict.fromkeys(n for n in (name, name.split(" ")[0] if name else "") if n))

    def _reply_stored(self, incoming: Incoming) -> None:
        for listener in list(self.reply_listeners):
            try:
                listener(incoming)
            except Exception:
                log.exception("reply listener failed")

    async def _context(self, incoming: Incoming) -> list[str]:
        """The providers' paragraphs, in provider order; none of them past the budget."""
        tasks = [asyncio.ensure_future(provider(incoming)) for provider in self.context_providers]
        done, late = await asyncio.wait(tasks, timeout=self.context_budget)
        for task in late:
            task.cancel()
        if late:
            self.context_late += 1
            log.info("memories for a reply took over %.0f ms; answering without %d of them",
                     self.context_budget * 1000, len(late), extra={"room": incoming.room})
        notes: list[str] = []
        for task in tasks:
            if task not in done:
                continue
            if task.exception() is not None:
                log.warning("a memory for the prompt failed: %s", task.exception(), extra={"room": incoming.room})
                continue
            note = task.result()
            if note:
                notes.append(note)
        return notes

    def reply(self, incoming: Incoming, *, remember: bool = True) -> Reply:
        """Start a reply to ``incoming``: stores the person's turn, returns a :class:`Reply` to iterate.

        ``remember=False`` (a speculative voice reply, started before the person is known to have
        finished): the person's turn is stored only by :meth:`Reply.remember_incoming`, so a reply
        that is thrown away leaves nothing in memory.
        """
        said = incoming.text.strip()
        if not said:
            # An empty mention or a silent voice turn: answer kindly, without the engine, and
            # remember nothing (nothing was said).
            name = " ".join(incoming.speaker_name.split())
            greeting = (t("agent.empty_named", incoming.language, name=name) if name
                        else t("agent.empty", incoming.language))
            return Reply(self, incoming, None, canned=greeting, store=False)
        asked_in = forget_request(said, self.names)
        if asked_in is not None:
            return self._forget_reply(incoming, incoming.language or asked_in, committed=remember)
        turn = Turn(
            room=incoming.room,
            speaker_id=incoming.speaker_id,
            speaker_name=incoming.speaker_name,
            role="user",
            text=incoming.text,
            modality=incoming.modality,
            created_at=self.clock(),
        )
        # The history is what was said before this turn: read it now if the room is cached (the usual
        # case: nothing to wait for), else when the reply is first iterated, leaving this turn out.
        memory = self.memory
        text = clip(said, self.max_input_chars)
        if text is not said:
            log.info("Shortened a %d-character message to %d for the engine (room=%s)",
                     len(said), len(text), incoming.room)

        async def prepare() -> AsyncIterator[str]:
            history = tuple(t for t in await memory.recent(incoming.room, self.context_turns + 1)
                            if t != turn)[-self.context_turns:] if self.context_turns > 0 else ()
            conversation = Conversation(
                character=self.character,
                incoming=incoming,
                text=text,
                messages=tuple(build_messages(self.character, history, incoming, text=text)),
                history=history,
            )
            recall = self.recall
            if (recall is not None and recall.config.enabled and recall.config.count > 0) or self.context_providers:
                return self._with_memories(conversation, turn.created_at)
            return self.engine.stream(conversation)

        reply = Reply(self, incoming, None, prepare=prepare)
        if remember:
            self.memory.append(turn)
            self._stored(reply, turn)
        else:
            reply._incoming_turn = turn
        return reply

    def _forget_reply(self, incoming: Incoming, language: str, *, committed: bool) -> Reply:
        """The reply to "forget what I just said": the forgetting, then its confirmation. A speculative one
        (``committed=False``: the person may not have finished) forgets nothing until
        :meth:`Reply.remember_incoming` says the turn is over; thrown away, it never does."""
        reply = Reply(self, incoming, None, store=False)
        ready = reply._committed = asyncio.Event()
        if committed:
            ready.set()

        async def prepare() -> AsyncIterator[str]:
            await ready.wait()
            return _said(await self.forget_last(incoming, language))

        reply._prepare = prepare
        return reply

    async def forget_last(self, incoming: Incoming, language: str) -> str:
        """Remove what the person of ``incoming`` last said in its room, the agent's reply to it, their
        recall entries and what facts and summaries drew from them; then scrub the database's files.
        Returns what to tell them, in ``language``."""
        room, who = incoming.room, incoming.speaker_id
        key = (room, who)
        self._prefetched.pop(key, None)  # a search started on these words may hold the turn
        try:
            gone = await self.memory.forget_last(room, who)
        except Exception as exc:  # the database is away and the turn is stored: nothing was deleted
            log.warning("forgetting a last turn on request failed: %s", exc, extra={"room": room})
            return t("forget_last.failed", language)
        if gone:
            open_reply = self._open.get(key)
            if open_reply is not None and open_reply._turn in [turn for _, turn in gone]:
                open_reply._store = False  # still being written: its answer is not kept either
            gone = self._unfinished.pop(key, []) + gone
        else:
            gone = self._unfinished.pop(key, [])  # what failed last time is finished now
            if not gone:
                log.info("asked to forget a last turn: nothing new to forget", extra={"room": room})
                return t("forget_last.nothing", language)
        try:
            await self._forget_drawn(room, gone)
        except asyncio.CancelledError:
            self._unfinished[key] = gone
            raise
        except Exception as exc:
            self._unfinished[key] = gone
            log.warning("forgetting what was drawn from a last turn failed: %s", exc, extra={"room": room})
            return t("forget_last.failed", language)
        log.info("forgot a last turn on request (%d turns)", len(gone), extra={"room": room})
        return t("forget_last.done", language)

    async def _forget_drawn(self, room: str, gone: list[tuple[int | None, Turn]]) -> None:
        """The recall entries of turns memory deleted, and what listeners (facts) drew from them; then the
        database's files are scrubbed."""
        ids = [row_id for row_id, _ in gone if row_id is not None]
        recall = self.recall
        if recall is not None and ids:
            await recall.flush()  # a turn handed to the index but not in it yet would land after the delete
            await recall.remove_turns(ids)
        for listener in list(self.forget_listeners):
            await listener(room, gone)
        if recall is not None:
            await recall.scrub()
        await self.memory.db.scrub(["turns"])

    async def _with_memories(self, conversation: Conversation, said_at: float) -> AsyncGenerator[str, None]:
        """The engine's stream for ``conversation`` with recalled memories in its prompt (when any
        come within the budget)."""
        # Recall and the context providers (facts about the speaker, recalled knowledge) run together,
        # each under its own budget.
        memories, notes = await asyncio.gather(
            self.memories_for(conversation.incoming, conversation.history, said_at=said_at),
            self._context(conversation.incoming) if self.context_providers else _no_notes())
        block = None
        if memories:
            block = format_memories(memories, place=conversation.incoming.room, now=self.clock(),
                                    max_tokens=self.recall.config.prompt_tokens if self.recall else 0)
        if block is not None or notes:
            conversation = dataclasses.replace(
                conversation, memories=tuple(memories) if block is not None else (),
                messages=tuple(build_messages(self.character, conversation.history, conversation.incoming,
                                              text=conversation.text, memories=block, notes=notes)))
        async with contextlib.aclosing(self.engine.stream(conversation)) as deltas:  # type: ignore[type-var]
            async for delta in deltas:
                yield delta

    def prefetch_memories(self, incoming: Incoming) -> None:
        """Start recall on words not final yet (a voice pause: the recognizer's latest words). A reply
        to the same person in the same room, on the same search words, within a few seconds, takes
        this search instead of starting its own, so the search overlaps the wait for the final."""
        recall = self.recall
        if recall is None or not recall.config.enabled or recall.config.count <= 0 or not incoming.text.strip():
            return
        from bot.recall.ranker import terms_of

        terms = terms_of(incoming.text[:2000])
        key = (incoming.room, incoming.speaker_id)
        now = time.monotonic()
        for stale in [k for k, e in self._prefetched.items() if now - e[3] > 10]:
            del self._prefetched[stale]  # never taken: the person went on, or left
        old = self._prefetched.get(key)
        if old is not None and old[0] == terms and old[1] == incoming.visible and not old[2].done():
            return  # the same search is running
        task = asyncio.ensure_future(self._search(incoming))
        self._recalls.add(task)
        task.add_done_callback(self._recall_done)
        self._prefetched[key] = (terms, incoming.visible, task, time.monotonic())

    def _search(self, incoming: Incoming) -> Any:
        assert self.recall is not None
        return self.recall.search(incoming.text[:2000], asker=incoming.speaker_id, place=incoming.room,
                                  visible=incoming.visible, limit=self.recall.config.count * 2 + 4,
                                  kinds=MEMORY_KINDS)

    def _take_prefetched(self, incoming: Incoming) -> asyncio.Task[Any] | None:
        entry = self._prefetched.pop((incoming.room, incoming.speaker_id), None)
        if entry is None:
            return None
        from bot.recall.ranker import terms_of

        terms, visible, task, started = entry
        if terms != terms_of(incoming.text[:2000]) or visible != incoming.visible or time.monotonic() - started > 10:
            return None
        return task

    async def memories_for(self, incoming: Incoming, history: Sequence[Turn], *, said_at: float) -> list[Any]:
        """The best memories for ``incoming`` that are not already in ``history``, or [] when recall
        is off, finds nothing, fails, or takes longer than its budget (then the reply goes on without)."""
        recall = self.recall
        if recall is None:
            return []
        config = recall.config
        started = time.monotonic()
        task = self._take_prefetched(incoming) or asyncio.ensure_future(self._search(incoming))
        done, _ = await asyncio.wait({task}, timeout=config.budget_ms / 1000)
        elapsed = time.monotonic() - started
        if not done:
            # Not awaited: a statement already sent finishes on its own; the reply does not wait for it.
            task.cancel()
            if task not in self._recalls:
                self._recalls.add(task)
                task.add_done_callback(self._recall_done)
            recall.report("over_budget", elapsed)
            log.debug("Recall took over its %d ms budget; replying without memories (room=%s)",
                      config.budget_ms, incoming.room)
            return []
        if task.cancelled():
            recall.report("failed", elapsed)
            return []
        try:
            hits = task.result()
        except Exception as exc:
            recall.report("failed", elapsed)
            if isinstance(exc, DatabaseError):  # the database is away: one line
                log.warning("Recall failed; replying without memories (room=%s): %s", incoming.room, exc)
            else:
                log.exception("Recall failed; replying without memories (room=%s)", incoming.room)
            return []
        # What the recent turns already show (this room since the oldest of them, or this very turn).
        since = min((t.created_at for t in history), default=said_at)
        fresh = [h for h in hits if not (h.kind == "turn" and h.place == incoming.room and h.created_at >= since)]
        if self.speaker_facts:
            # The speaker's own facts are in the prompt already (bot.facts' context provider).
            fresh = [h for h in fresh if not (h.kind == "fact" and h.speaker_id == incoming.speaker_id)]
        recall.report("found" if fresh else "none", elapsed)
        return fresh[:config.count]

    def _recall_done(self, task: asyncio.Task[Any]) -> None:
        self._recalls.discard(task)
        for key, entry in list(self._prefetched.items()):
            if entry[2] is task and time.monotonic() - entry[3] > 10:
                self._prefetched.pop(key, None)  # never taken: the person went on, or left
        if not task.cancelled() and task.exception() is not None:
            log.debug("A recall past its budget failed: %s", task.exception())

    async def check(self) -> str:
        """Round-trip the engine's service (for ``voicebot check``); raises :class:`AgentError`."""
        return await self.engine.check()

    async def aclose(self) -> None:
        """Close the engine (after any recall still finishing past its budget)."""
        if self._recalls:
            await asyncio.gather(*self._recalls, return_exceptions=True)
        await self.engine.aclose()
