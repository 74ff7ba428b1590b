"""Notes of a voice call: the transcript file ``/transcript`` posts, and the summary posted on ``/leave``.

Nothing here keeps its own copy of what was said: the transcript is read back from memory (every
heard turn is stored there, in every mode), so it follows the retention setting and ``/forget``
like everything else, and a one-hour call costs the database, not the process's memory. The file
is bounded by Discord's attachment limit: when a call's transcript would exceed it, the newest part
is kept and the file says that earlier lines were left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone

from bot.agent import Agent, AgentError, Incoming
from bot.agent.engines.base import Conversation
from bot.i18n.catalog import t
from bot.memory import Memory, Modality, Turn

__all__ = ["MAX_TRANSCRIPT_TURNS", "render_transcript", "call_transcript", "summarize"]

log = logging.getLogger(__name__)

MAX_TRANSCRIPT_TURNS = 20_000  # far beyond a long call (a turn every two seconds for eleven hours)
SUMMARY_INPUT_CHARS = 24_000  # the newest part of a long transcript, well inside a small model's context
SUMMARY_TIMEOUT = 90.0
OMITTED = t("transcript.omitted", "en") + "\n"  # English; render_transcript writes the file's language


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%H:%M:%S")


def render_transcript(turns: Sequence[Turn], *, title: str, limit_bytes: int,
                      language: str = "en") -> tuple[bytes, bool]:
    """A UTF-8 text file of ``turns`` ("[HH:MM:SS] Name: words", times in UTC) of at most
    ``limit_bytes``; returns the bytes and whether earlier lines had to be left out. The file's
    own words (the note on UTC, "someone", the cut) are in ``language``."""
    header = f"{title}\n{t('transcript.times_utc', language)}\n\n".encode()
    someone = t("transcript.someone", language)
    omitted = (t("transcript.omitted", language) + "\n").encode()
    lines = [f"[{_clock(turn.created_at)}] {' '.join(turn.speaker_name.split()) or someone}: "
             f"{' '.join(turn.text.split())}{' …' if turn.interrupted else ''}\n".encode() for turn in turns]
    budget = limit_bytes - len(header)
    kept: list[bytes] = []
    size = 0
    for line in reversed(lines):
        if size + len(line) > budget - len(omitted):
            break
        kept.append(line)
        size += len(line)
    truncated = len(kept) < len(lines)
    body = (omitted if truncated else b"") + b"".join(reversed(kept))
    return header + body, truncated


async def call_transcript(memory: Memory, room: str, since: float) -> list[Turn]:
    """What was said in ``room`` since ``since`` (epoch seconds), from memory."""
    return await memory.since(room, since, MAX_TRANSCRIPT_TURNS)


async def summarize(agent: Agent, room: str, turns: Sequence[Turn], language: str | None = None) -> str | None:
    """A few lines on what a call was about, written by the agent's language model.

    None when there is nothing to summarise, when the engine is the built-in ELIZA (a script, not a
    language model: it would only turn the transcript into questions), or when the engine fails.
    Nothing is stored in memory: the summary is about the call, not part of it.
    """
    if not turns or agent.engine_name == "eliza":
        return None
    text = "".join(f"{turn.speaker_name}: {turn.text}\n" for turn in turns)
    if len(text) > SUMMARY_INPUT_CHARS:
        text = "…\n" + text[-SUMMARY_INPUT_CHARS:]
    instruction = (
        "Below is the transcript of a voice call you listened to as a note-taker. Write a short summary "
        "for the people in it: at most five bullet points covering what was discussed, what was decided "
        "and who will do what. Write it in the language the people spoke. Do not add anything that was "
        "not said."
    )
    if language:
        # The server's language: for a call in several languages, or too short to tell.
        from bot.i18n.languages import language_name

        instruction += f" If they spoke several languages, write it in {language_name(language, native=False)}."
    incoming = Incoming(room=f"{room}:summary", speaker_id="scribe", speaker_name="transcript",
                        text=f"{instruction}\n\n{text}", modality=Modality.TEXT, language=language)
    conversation = Conversation(
        character=agent.character,
        incoming=incoming,
        text=incoming.text,
        messages=({"role": "system", "content": f"You are {agent.character.name}, taking notes of a call."},
                  {"role": "user", "content": incoming.text}),
    )
    parts: list[str] = []

    async def collect() -> None:
        stream = agent.engine.stream(conversation)
        try:
            async for delta in stream:
                parts.append(delta)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    started = time.monotonic()
    try:
        async with asyncio.timeout(SUMMARY_TIMEOUT):
            await collect()
    except AgentError as exc:
        log.warning("could not summarise the call: %s", exc, extra={"room": room})
        return None
    except asyncio.TimeoutError:
        log.warning("summarising the call took over %.0f s; posting the transcript only", SUMMARY_TIMEOUT,
                    extra={"room": room})
        return None
    summary = "".join(parts).strip()
    log.info("call summarised in %.1f s", time.monotonic() - started, extra={"room": room})
    return summary or None
