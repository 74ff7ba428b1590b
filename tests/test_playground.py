"""The voice playground over its WebSocket, driven by a Python client: a spoken turn answered with
audio, the text box, and every bad input the console must survive (foreign Origin, frames that are
not PCM, a 10 MB frame, audio faster than real time, a second tab, a tab closing mid-reply)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from audio.tts.espeak import EspeakEngine
from bot.console import Console, Metrics, mount
from bot.console.playground import BYTES_PER_SECOND
from bot.store import SqliteDatabase as Database
from bot.services import Services, build_services
from bot.settings import Settings
from bot.web import create_app
from tests.fakes.fake_stt import FakeSTTEngine

WS_TIMEOUT = 60.0  # generous: the machine may be loaded; waits are on messages, never on sleeps


@dataclass
class Rig:
    services: Services
    console: Console
    client: TestClient
    stt: FakeSTTEngine

    @property
    def origin(self) -> str:
        return f"http://{self.client.host}:{self.client.port}"

    async def connect(self, origin: str | None = None, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        headers = {"Origin": self.origin if origin is None else origin}
        return await self.client.ws_connect("/playground/ws", headers=headers, **kwargs)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    services = await build_services(Settings(), db=Database.in_memory())
    stt = FakeSTTEngine(["hello there computer"])
    tts = EspeakEngine()
    console = Console(services, metrics=Metrics(process=False), engines=(stt, tts, None))
    client = TestClient(TestServer(create_app(mounts=[lambda app: mount(app, console)]), host="127.0.0.1"))
    await client.start_server()
    try:
        yield Rig(services, console, client, stt)
    finally:
        await client.close()
        await tts.aclose()
        await services.aclose()
    await assert_nothing_left_running()


async def assert_nothing_left_running() -> None:
    """Every task of the playground's sessions ends. A cancelled synthesis still finishes the sentence
    its thread is on (audio.tts.base.stream_from_thread waits for it), so this waits, bounded."""

    def leftovers() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()
                and t.get_name().startswith(("respond-playground", "tts-prefetch", "stt-", "playground", "console"))]

    with contextlib.suppress(asyncio.TimeoutError):
        await wait_for(lambda: not leftovers())
    assert not leftovers(), leftovers()


async def receive_until(ws: aiohttp.ClientWebSocketResponse, kind: str, audio: list[bytes] | None = None
                        ) -> dict[str, Any]:
    """Messages until one of ``kind``; binary frames go to ``audio``."""
    while True:
        msg = await ws.receive(timeout=WS_TIMEOUT)
        if msg.type == aiohttp.WSMsgType.BINARY:
            if audio is not None:
                audio.append(msg.data)
            continue
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"socket ended ({msg.type}, {msg.data!r}) waiting for {kind}")
        data = json.loads(msg.data)
        if data["type"] == kind:
            return data


def tone(seconds: float) -> bytes:
    return b"\x10\x00\xf0\xff" * int(BYTES_PER_SECOND * seconds / 4)


async def wait_for(predicate: Any, timeout: float = WS_TIMEOUT) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


async def speak(ws: aiohttp.ClientWebSocketResponse, seconds: float = 1.0) -> None:
    await ws.send_str(json.dumps({"type": "start"}))
    audio = tone(seconds)
    for i in range(0, len(audio), 3200):  # 100 ms frames, as the page sends them
        await ws.send_bytes(audio[i:i + 3200])
    await ws.send_str(json.dumps({"type": "end"}))


async def test_a_spoken_turn_is_answered_with_audio_and_counted(rig: Rig) -> None:
    ws = await rig.connect()
    hello = await receive_until(ws, "hello")
    assert hello["stt"] == "fake" and hello["tts"] == "espeak"
    await speak(ws)
    transcript = await receive_until(ws, "transcript")
    assert transcript["text"] == "hello there computer"
    audio: list[bytes] = []
    start = await receive_until(ws, "reply_start", audio)
    turn = await receive_until(ws, "turn", audio)
    from audio.tts.espeak import EspeakEngine

    rate = EspeakEngine.format.sample_rate  # the voice's own format goes to the page as it is
    assert start["sample_rate"] == rate
    assert sum(map(len, audio)) > rate  # more than half a second of the reply's voice reached the page
    assert turn["outcome"] == "answered" and turn["reply"]
    assert set(turn["stages_ms"]) >= {"stt_final", "agent_first_text", "tts_first_audio", "first_packet"}
    assert rig.stt.streams[0].seconds == pytest.approx(1.0)  # the recognizer got exactly what was said
    metrics = (await (await rig.client.get("/metrics")).text())
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    turns = {(s.labels["channel"], s.labels["outcome"]): s.value for s in families["voicebot_turns"].samples
             if s.name == "voicebot_turns_total"}
    assert turns[("playground", "answered")] == 1
    stage_counts = {s.labels["stage"]: s.value for s in families["voicebot_stage_seconds"].samples
                    if s.name == "voicebot_stage_seconds_count"}
    assert stage_counts["first_packet"] == 1
    requests = {(s.labels["provider"], s.labels["kind"]): s.value for s in families["voicebot_provider_requests"].samples
                if s.name == "voicebot_provider_requests_total"}
    assert requests[("fake", "stt")] == 1 and requests[("eliza", "agent")] == 1 and requests[("espeak", "tts")] >= 1
    # The same memory, in room "playground".
    assert [t.text for t in (await rig.services.memory.recent("playground", 10))][0] == "hello there computer"
    # The person at the console is a console identity, which /forget and `voicebot chat` know.
    assert (await rig.services.memory.recent("playground", 10))[0].speaker_id == "console:playground"
    # Metered like any voice (bot/usage): the recognizer's seconds and the voice's characters, never limited.
    usage = rig.services.usage
    assert usage is not None
    counters = usage.counters
    assert counters[("speech", "fake")].amount == pytest.approx(1.0)
    assert counters[("voice", "espeak")].amount >= len(turn["reply"]) - 5
    await ws.close()


async def test_the_text_box_is_a_turn_too_and_typing_is_rate_limited(rig: Rig) -> None:
    ws = await rig.connect()
    await receive_until(ws, "hello")
    for i in range(8):
        await ws.send_str(json.dumps({"type": "text", "text": f"message number {i}"}))
    error = await receive_until(ws, "error")
    assert "couple of seconds" in error["message"]
    first = await receive_until(ws, "turn")
    # Messages typed while the bot is busy are answered together, as the policy does for speech.
    assert first["text"].startswith("message number 0") and first["outcome"] == "answered"
    await ws.send_str(json.dumps({"type": "ping"}))
    await receive_until(ws, "pong")
    await ws.close()
    said = " ".join(t.text for t in (await rig.services.memory.recent("playground", 50)) if t.role == "user")
    assert "message number 0" in said and "message number 3" not in said  # the burst allowance, no more


async def test_a_websocket_from_another_origin_is_refused(rig: Rig) -> None:
    for origin in ("http://evil.example", "null", ""):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await rig.connect(origin=origin)
        assert info.value.status == 403
    assert rig.console.playground is not None and rig.console.playground.count() == 0


@pytest.mark.parametrize(("frame", "why"), [
    (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(100), "WAV"),
    (b"OggS" + bytes(100), "Ogg"),
    (b"\x01\x02\x03", "even number"),
])
async def test_a_binary_frame_that_is_not_pcm_is_refused_and_the_tab_keeps_working(rig: Rig, frame: bytes,
                                                                                 why: str) -> None:
    ws = await rig.connect()
    await receive_until(ws, "hello")
    await ws.send_str(json.dumps({"type": "start"}))
    await ws.send_bytes(frame)
    error = await receive_until(ws, "error")
    assert why in error["message"]
    await ws.send_str(json.dumps({"type": "ping"}))
    await receive_until(ws, "pong")
    assert all(s.seconds == 0 for s in rig.stt.streams)  # nothing reached the recognizer
    await ws.close()


async def test_audio_without_start_is_refused(rig: Rig) -> None:
    ws = await rig.connect()
    await receive_until(ws, "hello")
    await ws.send_bytes(tone(0.1))
    assert "talk button" in (await receive_until(ws, "error"))["message"]
    await ws.close()


async def test_a_10_mb_frame_closes_the_socket_and_the_session(rig: Rig) -> None:
    ws = await rig.connect()
    await receive_until(ws, "hello")
    await ws.send_str(json.dumps({"type": "start"}))
    try:
        await ws.send_bytes(bytes(10 * 1024 * 1024))
    except ConnectionError:
        pass  # the server hung up before the client finished writing 10 MB: also a refusal
    else:
        msg = await ws.receive(timeout=WS_TIMEOUT)
        while msg.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            msg = await ws.receive(timeout=WS_TIMEOUT)
        assert ws.close_code in (aiohttp.WSCloseCode.MESSAGE_TOO_BIG, None)
    assert rig.console.playground is not None
    await wait_for(lambda: rig.console.playground.count() == 0)
    assert all(s.seconds == 0 for s in rig.stt.streams)  # none of it reached the recognizer
    again = await rig.connect()  # and the playground is usable again
    await receive_until(again, "hello")
    await again.close()


async def test_audio_faster_than_real_time_is_cut_to_real_time(rig: Rig) -> None:
    ws = await rig.connect()
    await receive_until(ws, "hello")
    await ws.send_str(json.dumps({"type": "start"}))
    audio = tone(8.0)  # eight seconds sent at once
    for i in range(0, len(audio), 16000):
        await ws.send_bytes(audio[i:i + 16000])
    error = await receive_until(ws, "error")
    assert "faster than real time" in error["message"]
    await ws.send_str(json.dumps({"type": "ping"}))
    await receive_until(ws, "pong")
    # The burst allowance (2 s) plus the time the sending took, never the whole eight seconds.
    assert rig.stt.streams[0].seconds < 6.0
    await ws.close()


async def test_a_second_tab_is_refused_while_the_first_keeps_working(rig: Rig) -> None:
    first = await rig.connect()
    await receive_until(first, "hello")
    second = await rig.connect()
    error = await receive_until(second, "error")
    assert "another tab" in error["message"]
    msg = await second.receive(timeout=WS_TIMEOUT)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert second.close_code == aiohttp.WSCloseCode.TRY_AGAIN_LATER
    await first.send_str(json.dumps({"type": "ping"}))
    await receive_until(first, "pong")
    await first.close()
    await wait_for(lambda: rig.console.playground.count() == 0)  # type: ignore[union-attr]
    third = await rig.connect()  # the slot is free again
    await receive_until(third, "hello")
    await third.close()


async def test_closing_the_tab_mid_reply_stops_everything(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    ws = await rig.connect()
    await receive_until(ws, "hello")
    await ws.send_str(json.dumps({"type": "text", "text": "tell me a long story about the sea"}))
    audio: list[bytes] = []
    await receive_until(ws, "reply_start", audio)
    while not audio:
        msg = await ws.receive(timeout=WS_TIMEOUT)
        if msg.type == aiohttp.WSMsgType.BINARY:
            audio.append(msg.data)
    await ws.close()  # the person closed the tab while the bot was talking
    await wait_for(lambda: rig.console.playground.count() == 0)  # type: ignore[union-attr]
    # The fixture checks that no session, synthesis or recognizer task is left running.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_talk_button_held_too_long_is_released_by_the_server(rig: Rig, monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    import bot.console.playground as playground

    monkeypatch.setattr(playground, "MAX_TALK_SECONDS", 0.0)  # "a minute" passes at the first frame
    ws = await rig.connect()
    await receive_until(ws, "hello")
    await ws.send_str(json.dumps({"type": "start"}))
    await ws.send_bytes(tone(0.2))
    released = await receive_until(ws, "released")
    assert "answering" in released["message"]
    assert (await receive_until(ws, "transcript"))["text"] == "hello there computer"  # the turn went on
    await ws.close()


async def test_garbage_and_floods_of_control_messages_are_bounded(rig: Rig) -> None:
    ws = await rig.connect()
    await receive_until(ws, "hello")
    await ws.send_str("{not json")
    assert "Unknown message" in (await receive_until(ws, "error"))["message"]
    await ws.send_str("x" * 10_000)  # over the text-frame limit
    for _ in range(200):
        await ws.send_str(json.dumps({"type": "nonsense"}))
    while True:
        msg = await ws.receive(timeout=WS_TIMEOUT)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            break
    assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
    await wait_for(lambda: rig.console.playground.count() == 0)  # type: ignore[union-attr]


def speech_16k(text: str) -> bytes:
    """``text`` spoken by espeak-ng, as the page sends audio: s16le mono at 16 kHz."""
    import numpy as np
    import soxr

    from tests.speech_samples import espeak_pcm

    pcm, rate = espeak_pcm(text)
    samples = soxr.resample(np.frombuffer(pcm, dtype="<i2"), rate, 16000)
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def families_of(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def values(families: dict[str, Any], family: str, sample: str, label: str) -> dict[str, float]:
    return {s.labels[label]: s.value for s in families[family].samples if s.name == sample}


async def test_a_typed_message_is_a_text_turn_not_a_voice_turn(rig: Rig) -> None:
    """Issue 21 item 5: the text box's turns count on the text channel, with no speech stages."""
    ws = await rig.connect()
    await receive_until(ws, "hello")
    await ws.send_str(json.dumps({"type": "text", "text": "what is your name"}))
    turn = await receive_until(ws, "turn")
    assert turn["channel"] == "text" and turn["outcome"] == "answered" and turn["stages_ms"] == {}
    await ws.close()
    families = families_of(await (await rig.client.get("/metrics")).text())
    turns = {(s.labels["channel"], s.labels["outcome"]): s.value for s in families["voicebot_turns"].samples
             if s.name == "voicebot_turns_total"}
    assert turns[("text", "answered")] == 1 and turns[("playground", "answered")] == 0
    waits = values(families, "voicebot_wait_seconds", "voicebot_wait_seconds_count", "channel")
    assert waits == {"text": 1}
    assert set(values(families, "voicebot_stage_seconds", "voicebot_stage_seconds_count", "stage").values()) == {0}


async def test_a_held_talk_button_waits_from_the_last_word_not_from_the_recognizers_decision(rig: Rig) -> None:
    """Issue 21 item 5: the person stops talking but keeps the button down; the recognizer ends the
    turn on its own pause. The wait runs from their last voiced frame, through that pause."""
    import time

    speech = speech_16k("hello there computer")
    speech += bytes(-len(speech) % 3200)  # whole messages of whole 20 ms frames: no voice spills into the pause
    ws = await rig.connect()
    await receive_until(ws, "hello")
    await ws.send_str(json.dumps({"type": "start"}))
    for i in range(0, len(speech), 3200):
        await ws.send_bytes(speech[i:i + 3200])
    await wait_for(lambda: rig.stt.streams and rig.stt.streams[0].seconds >= len(speech) / BYTES_PER_SECOND)
    spoke_until = time.monotonic()  # every voiced frame has reached the session by now
    # Half a second of silence with the button held, paced as a microphone sends it: the person's
    # pause is what is measured here, so it is made of real time (the asserts below are lower bounds).
    silence = bytes(3200)
    for _ in range(5):
        await ws.send_bytes(silence)
        await asyncio.sleep(0.1)
    await wait_for(lambda: rig.stt.streams[0].seconds >= len(speech) / BYTES_PER_SECOND + 0.5)
    assert time.monotonic() - spoke_until >= 0.5
    rig.stt.streams[0].say("hello there computer")  # the recognizer's own end of turn, button still down
    turn = await receive_until(ws, "turn")
    assert turn["outcome"] == "answered"
    assert turn["stages_ms"]["end_of_turn"] >= 500  # the silence the person waited through
    assert turn["wait_ms"] >= 500 + turn["stages_ms"]["first_packet"]
    assert turn["wait_ms"] == pytest.approx(sum(turn["stages_ms"].values()), abs=1.0)
    await ws.close()


async def test_deeply_nested_json_is_refused_and_the_tab_keeps_working(rig: Rig,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Issue 21 item 12: "[" * 4000 fits the text-frame limit and makes the JSON parser recurse 4000 deep."""
    caplog.set_level(logging.INFO)
    ws = await rig.connect()
    await receive_until(ws, "hello")
    await ws.send_str("[" * 4000)
    assert "nested too deeply" in (await receive_until(ws, "error"))["message"]
    await ws.send_str(json.dumps({"type": "ping"}))
    await receive_until(ws, "pong")
    await ws.close()
    assert [r.getMessage() for r in caplog.records if r.name == "bot.console.playground" and "refused" in
            r.getMessage()] == ["playground refused a message: nested"]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
