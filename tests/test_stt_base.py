"""The STT interface types, the transcript queue, and the scripted fake engine."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from audio.stt import STTEngine, STTError, STTStream, Transcript, TranscriptQueue, Word
from tests.fakes.fake_stt import FakeSTTEngine


def t(text: str, final: bool = True) -> Transcript:
    return Transcript(text=text, is_final=final, end_of_turn=final, start=0.0, end=1.0)


async def take(source: AsyncIterator[Transcript] | STTStream | TranscriptQueue, n: int) -> list[Transcript]:
    it = aiter(source)  # type: ignore[arg-type]
    out = [await asyncio.wait_for(anext(it), 5) for _ in range(n)]
    await it.aclose()  # type: ignore[attr-defined]
    return out


async def rest(source: STTStream | TranscriptQueue) -> list[Transcript]:
    async def run() -> list[Transcript]:
        return [x async for x in source]

    return await asyncio.wait_for(run(), 5)


def test_dataclasses_are_frozen_with_defaults() -> None:
    tr = Transcript(text="hi", is_final=True, end_of_turn=False, start=0.0, end=0.5)
    assert tr.confidence is None and tr.words == () and tr.received_at == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        tr.text = "x"  # type: ignore[misc]
    assert Word("hi", 0.0, 0.2).confidence is None


def test_stt_error() -> None:
    err = STTError("HTTP 401 from provider", retryable=False, user_message="Bad key.")
    assert (str(err), err.retryable, err.user_message) == ("HTTP 401 from provider", False, "Bad key.")
    assert "retryable=False" in repr(err)
    assert STTError("x", retryable=True).user_message  # always something to show


def test_interfaces_are_abstract() -> None:
    with pytest.raises(TypeError):
        STTEngine()  # type: ignore[abstract]
    with pytest.raises(TypeError):
        STTStream()  # type: ignore[abstract]


async def test_queue_order_and_close() -> None:
    q = TranscriptQueue()
    q.put(t("a", False))
    q.put(t("b"))
    q.close()
    q.put(t("ignored"))
    assert [x.text for x in await rest(q)] == ["a", "b"]
    assert q.closed


async def test_queue_wakes_a_waiting_reader() -> None:
    q = TranscriptQueue()
    reader = asyncio.create_task(take(q, 1), name="reader")
    await asyncio.sleep(0)
    q.put(t("late"))
    assert [x.text for x in await reader] == ["late"]


async def test_queue_failure_after_items() -> None:
    q = TranscriptQueue()
    q.put(t("a"))
    q.fail(STTError("boom", retryable=True))
    q.fail(STTError("second", retryable=False))  # the first failure wins
    seen: list[str] = []
    with pytest.raises(STTError, match="boom"):
        async for x in q:
            seen.append(x.text)
    assert seen == ["a"]


async def test_queue_is_bounded() -> None:
    q = TranscriptQueue(maxlen=3)
    for i in range(10):
        q.put(t(str(i)))
    q.close()
    assert [x.text for x in await rest(q)] == ["7", "8", "9"]
    assert q.dropped == 7


async def test_fake_engine_scripted_turns() -> None:
    engine = FakeSTTEngine(["hello there bot", "goodbye"])
    stream = engine.open_stream(speaker="discord:1")
    stream.push(bytes(32000))
    await stream.finalize()
    first = await take(stream, 2)
    assert [(x.text, x.is_final, x.end_of_turn) for x in first] == [
        ("hello", False, False),
        ("hello there bot", True, True),
    ]
    assert first[1].end == pytest.approx(1.0) and len(first[1].words) == 3
    stream.push(bytes(16000))
    await stream.finalize()
    (second,) = await take(stream, 1)
    assert second.text == "goodbye" and second.start == pytest.approx(1.0)
    assert engine.stream_for("discord:1") is stream and stream.finalize_count == 2
    await engine.aclose()
    assert await rest(stream) == [] and stream.closed and engine.closed


async def test_fake_engine_switches() -> None:
    boom = STTError("scripted", retryable=False, user_message="nope")
    with pytest.raises(STTError):
        FakeSTTEngine(open_error=boom).open_stream(speaker="x")
    with pytest.raises(STTError):
        await FakeSTTEngine(check_error=boom).check()
    assert await FakeSTTEngine().check()

    engine = FakeSTTEngine(["one two"], fail_after=2, stream_error=boom, interim=False)
    stream = engine.open_stream(speaker="x")
    await stream.finalize()
    await stream.finalize()
    seen: list[str] = []
    with pytest.raises(STTError) as info:
        async for x in stream:
            seen.append(x.text)
    assert seen == ["one two"] and info.value is boom
    await engine.aclose()


async def test_fake_stream_driven_by_test() -> None:
    engine = FakeSTTEngine(delay=0.001)
    stream = engine.open_stream(speaker="x", sample_rate=48000)
    assert stream.sample_rate == 48000
    stream.say("partial", is_final=False, end_of_turn=False)
    stream.say("partial words")
    await stream.finalize()  # nothing scripted: no transcript
    stream.fail(STTError("gone", retryable=True))
    with pytest.raises(STTError, match="gone"):
        await rest(stream)
    await engine.aclose()
