"""Notes of a call: the transcript file (bounded) and the summary a language model writes."""

from __future__ import annotations

import time

from bot.agent import Agent
from bot.agent.character import parse_character
from bot.agent.engines.eliza import ElizaEngine
from bot.agent.engines.openai_engine import OpenAIEngine
from bot.store import SqliteDatabase as Database
from bot.memory import Memory, Modality, Turn
from bot.voice.scribe import OMITTED, call_transcript, render_transcript, summarize
from tests.fakes.openai_server import FakeOpenAI

ROOM = "discord:1:2"


def said(memory: Memory, name: str, text: str, at: float) -> None:
    memory.append(Turn(room=ROOM, speaker_id=f"discord:{len(name)}", speaker_name=name, role="user", text=text,
                       modality=Modality.VOICE, created_at=at))


async def test_transcript_has_names_and_times_and_only_this_call() -> None:
    memory = Memory(Database.in_memory())
    said(memory, "Alice", "before the call", 1000.0)
    said(memory, "Alice", "Good morning everyone.", 3600.0)
    said(memory, "Bob", "Morning!\nShall we start?", 3605.0)
    turns = await call_transcript(memory, ROOM, since=3000.0)
    data, cut = render_transcript(turns, title="Transcript of Voice", limit_bytes=10_000)
    text = data.decode()
    assert not cut and "before the call" not in text
    assert "[01:00:00] Alice: Good morning everyone.\n" in text
    assert "[01:00:05] Bob: Morning! Shall we start?\n" in text  # one line per turn


async def test_an_hour_long_call_stays_inside_the_attachment_limit() -> None:
    memory = Memory(Database.in_memory())
    start = time.time()
    for i in range(1800):  # an hour, a turn every two seconds
        said(memory, "Alice" if i % 2 else "Bob", f"sentence number {i} " + "words " * 30, start + 2 * i)
    turns = await call_transcript(memory, ROOM, since=start)
    assert len(turns) == 1800
    limit = 64 * 1024
    data, cut = render_transcript(turns, title="Transcript", limit_bytes=limit)
    assert cut and len(data) <= limit
    text = data.decode()
    assert OMITTED.strip() in text and "sentence number 1799 " in text and "sentence number 0 " not in text


async def test_a_language_model_summarises_and_eliza_does_not() -> None:
    memory = Memory(Database.in_memory())
    said(memory, "Alice", "Let's move the launch to Friday.", 100.0)
    said(memory, "Bob", "Fine, I'll tell the team.", 101.0)
    turns = await call_transcript(memory, ROOM, since=0)
    character = parse_character({"name": "Wren"})
    async with FakeOpenAI(reply_tokens=["- The launch moves", " to Friday; Bob tells the team."]) as fake:
        engine = OpenAIEngine(api_key=fake.api_key, base_url=fake.base_url, model="gpt-test", max_tokens=200,
                              temperature=0.3, timeout=10, max_retries=0)
        agent = Agent(character, engine, memory)
        try:
            summary = await summarize(agent, ROOM, turns)
        finally:
            await engine.aclose()
        [request] = fake.completion_requests
    assert summary == "- The launch moves to Friday; Bob tells the team."
    prompt = request.body["messages"][-1]["content"]
    assert "Alice: Let's move the launch to Friday." in prompt and "Bob: Fine" in prompt
    assert (await memory.count(ROOM)) == 2  # the summary is not part of the conversation
    eliza = Agent(character, ElizaEngine(), memory)
    assert await summarize(eliza, ROOM, turns) is None


async def test_a_failing_model_means_no_summary_not_an_error() -> None:
    memory = Memory(Database.in_memory())
    said(memory, "Alice", "Hello.", 1.0)
    async with FakeOpenAI(fail_with=500) as fake:
        engine = OpenAIEngine(api_key=fake.api_key, base_url=fake.base_url, model="gpt-test", max_tokens=200,
                              temperature=0.3, timeout=10, max_retries=0)
        try:
            assert await summarize(Agent(parse_character({"name": "Wren"}), engine, memory), ROOM,
                                   await call_transcript(memory, ROOM, 0)) is None
        finally:
            await engine.aclose()
