"""Deepgram STT: pure message conversion, and the real SDK against a loopback Deepgram."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from deepgram.core.unchecked_base_model import construct_type
from deepgram.listen.v1.socket_client import V1SocketClientResponse
from deepgram.listen.v2.socket_client import V2SocketClientResponse

from audio.stt.base import STTError, Transcript
from audio.stt.deepgram import (
    DeepgramSTT,
    DeepgramStream,
    final_covers_until,
    handshake_error,
    results_to_transcript,
    speech_started_to_transcript,
    turn_info_to_transcript,
    utterance_end_to_transcript,
)
from tests.fakes.deepgram_server import FakeDeepgram, silence, word_audio

KEY = "dg-test-key-0123456789"
VOCAB = {1000: "alpha", 2000: "bravo", 3000: "charlie"}
BPS = 32000  # 16 kHz s16le mono
FRAME = 640


def v1(obj: dict[str, Any]) -> Any:
    """Parse a server frame exactly as the SDK does."""
    return construct_type(type_=V1SocketClientResponse, object_=obj)


def v2(obj: dict[str, Any]) -> Any:
    return construct_type(type_=V2SocketClientResponse, object_=obj)


def results(text: str = "hello world", *, start: float = 1.0, duration: float = 0.5, is_final: bool = True,
            speech_final: bool = False, from_finalize: bool = False) -> dict[str, Any]:
    words = [
        {"word": w.lower(), "start": start + 0.1 * i, "end": start + 0.1 * i + 0.08, "confidence": 0.9,
         "punctuated_word": w}
        for i, w in enumerate(text.split())
    ]
    return {
        "type": "Results", "channel_index": [0, 1], "start": start, "duration": duration, "is_final": is_final,
        "speech_final": speech_final, "from_finalize": from_finalize,
        "channel": {"alternatives": [{"transcript": text, "confidence": 0.93, "words": words}]},
        "metadata": {"request_id": "r", "model_uuid": "u", "model_info": {"name": "n", "version": "v", "arch": "a"}},
    }


# ---------------------------------------------------------------- pure conversion


def test_interim_results() -> None:
    t = results_to_transcript(v1(results("Hello there", is_final=False)), offset=10.0, received_at=5.0)
    assert t is not None
    assert (t.text, t.is_final, t.end_of_turn) == ("Hello there", False, False)
    assert t.start == pytest.approx(11.0) and t.end == pytest.approx(11.5)
    assert [w.text for w in t.words] == ["Hello", "there"]
    assert t.words[1].start == pytest.approx(11.1)
    assert t.confidence == pytest.approx(0.93) and t.received_at == 5.0


@pytest.mark.parametrize(
    ("speech_final", "from_finalize", "end_of_turn"),
    [(False, False, False), (True, False, True), (False, True, True)],
)
def test_final_results_end_of_turn(speech_final: bool, from_finalize: bool, end_of_turn: bool) -> None:
    t = results_to_transcript(v1(results(speech_final=speech_final, from_finalize=from_finalize)))
    assert t is not None and t.is_final and t.end_of_turn is end_of_turn


def test_empty_results() -> None:
    assert results_to_transcript(v1(results("", is_final=False))) is None
    assert results_to_transcript(v1(results("", is_final=True))) is None
    t = results_to_transcript(v1(results("", is_final=True, speech_final=True)))
    assert t is not None and t.text == "" and t.end_of_turn and t.confidence is None


def test_malformed_results_do_not_raise() -> None:
    assert results_to_transcript(v1({"type": "Results", "start": 0.0})) is None
    t = results_to_transcript(v1({"type": "Results", "is_final": True, "speech_final": True,
                                  "channel": {"alternatives": []}}))
    assert t is not None and t.text == "" and t.start == 0.0
    t = results_to_transcript(v1({"type": "Results", "is_final": False, "start": "x",
                                  "channel": {"alternatives": [{"transcript": "hi", "words": [{"word": "hi"}]}]}}))
    assert t is not None and t.text == "hi" and t.words[0].start == 0.0


def test_utterance_end_and_speech_started() -> None:
    t = utterance_end_to_transcript(v1({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 2.3}), offset=1.0)
    assert (t.text, t.is_final, t.end_of_turn, t.start) == ("", True, True, pytest.approx(3.3))
    s = speech_started_to_transcript(v1({"type": "SpeechStarted", "channel": [0, 1], "timestamp": 0.5}), offset=1.0)
    assert (s.text, s.is_final, s.end_of_turn, s.start) == ("", False, False, pytest.approx(1.5))


def test_unknown_message_is_none_and_ignored() -> None:
    assert v1({"type": "BrandNew"}) is None
    assert final_covers_until(None) is None


def turn(event: str, text: str = "hi there", **extra: Any) -> dict[str, Any]:
    return {
        "type": "TurnInfo", "request_id": "r", "sequence_id": 3, "event": event, "turn_index": 0,
        "audio_window_start": 0.5, "audio_window_end": 1.7, "transcript": text,
        "words": [{"word": w, "confidence": 0.8} for w in text.split()], "end_of_turn_confidence": 0.7, **extra,
    }


@pytest.mark.parametrize(
    ("event", "is_final"),
    [("StartOfTurn", False), ("Update", False), ("EagerEndOfTurn", False), ("TurnResumed", False), ("EndOfTurn", True)],
)
def test_turn_info_events(event: str, is_final: bool) -> None:
    t = turn_info_to_transcript(v2(turn(event)), offset=2.0)
    assert t is not None
    assert (t.text, t.is_final, t.end_of_turn) == ("hi there", is_final, is_final)
    assert t.start == pytest.approx(2.5) and t.end == pytest.approx(3.7)
    # Flux words may lack timings: they fall back to the audio window.
    assert t.words[0].start == pytest.approx(2.5) and t.confidence == pytest.approx(0.8)


def test_turn_info_empty_and_unknown() -> None:
    started = turn_info_to_transcript(v2(turn("StartOfTurn", "")))
    assert started is not None and started.text == "" and not started.is_final
    assert turn_info_to_transcript(v2(turn("Update", ""))) is None
    assert turn_info_to_transcript(v2(turn("SomethingElse"))) is None
    ended = turn_info_to_transcript(v2(turn("EndOfTurn", "", trigger="manual")))
    assert ended is not None and ended.end_of_turn and ended.text == ""


def test_final_covers_until() -> None:
    assert final_covers_until(v1(results(start=1.0, duration=0.5))) == pytest.approx(1.5)
    assert final_covers_until(v1(results(is_final=False))) is None
    assert final_covers_until(v1({"type": "UtteranceEnd", "channel": [0], "last_word_end": 1.0})) is None
    assert final_covers_until(v2(turn("EndOfTurn"))) == pytest.approx(1.7)
    assert final_covers_until(v2(turn("Update"))) is None


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404])
def test_handshake_4xx_is_fatal(status: int) -> None:
    err = handshake_error(status)
    assert err is not None and not err.retryable and err.user_message


@pytest.mark.parametrize("status", [None, 408, 429, 500, 503])
def test_handshake_transient(status: int | None) -> None:
    assert handshake_error(status) is None


def test_handshake_401_message() -> None:
    err = handshake_error(401)
    assert err is not None and "Deepgram rejected the API key" in err.user_message


# ---------------------------------------------------------------- against the loopback server


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def engine_for(dg: FakeDeepgram, **kw: Any) -> DeepgramSTT:
    kw.setdefault("backoff_base", 0.001)
    kw.setdefault("backoff_max", 0.002)
    return DeepgramSTT(kw.pop("api_key", KEY), base_url=dg.http_url, **kw)


async def collect(stream: DeepgramStream, until: Callable[[Transcript], bool], timeout: float = 10.0) -> list[Transcript]:
    out: list[Transcript] = []
    it: AsyncIterator[Transcript] = aiter(stream)

    async def run() -> None:
        async for t in it:
            out.append(t)
            if until(t):
                return

    try:
        await asyncio.wait_for(run(), timeout)
    finally:
        await it.aclose()  # type: ignore[attr-defined]
    return out


async def drain(stream: DeepgramStream, timeout: float = 10.0) -> list[Transcript]:
    """Everything until iteration ends (after aclose)."""
    return await collect(stream, lambda t: False, timeout)


def eot(t: Transcript) -> bool:
    return t.end_of_turn


async def test_transcripts_flow_and_query() -> None:
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB) as dg:
        engine = engine_for(dg, keyterms=["Wendy"])
        stream = engine.open_stream(speaker="discord:1")
        stream.push(word_audio([1000, 2000]) + silence(20))
        got = await collect(stream, eot)
        await engine.aclose()

        conn = dg.connections[0]
        assert conn.path == "/v1/listen"
        assert conn.headers["Authorization"] == f"Token {KEY}"
        assert conn.param("model") == "nova-3"
        assert conn.param("encoding") == "linear16"
        assert conn.param("sample_rate") == "16000"
        assert conn.param("channels") == "1"
        assert conn.param("interim_results") == "true"
        assert conn.param("endpointing") == "300"
        assert conn.param("utterance_end_ms") == "1000"
        assert conn.param("vad_events") == "true"
        assert conn.param("smart_format") == "true"
        assert conn.query["keyterm"] == ["Wendy"]
        assert conn.control_types()[-1] == "CloseStream"

    assert got[0].text == "" and not got[0].is_final  # SpeechStarted
    assert any(not t.is_final and t.text.lower().startswith("alpha") for t in got)
    final = got[-1]
    assert final.is_final and final.end_of_turn and final.text == "Alpha bravo."
    assert [w.text for w in final.words] == ["alpha", "bravo"]
    assert final.words[1].start == pytest.approx(0.2) and final.words[1].end == pytest.approx(0.4)
    assert final.received_at > 0


async def test_unknown_message_types_ignored() -> None:
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB, send_unknown=True) as dg:
        engine = engine_for(dg)
        stream = engine.open_stream(speaker="s")
        stream.push(word_audio([1000]) + silence(20))
        got = await collect(stream, eot)
        await engine.aclose()
    assert got[-1].text == "Alpha."


async def test_keepalive_while_idle() -> None:
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB) as dg:
        engine = engine_for(dg, keepalive_interval=0.02)
        stream = engine.open_stream(speaker="s")
        stream.push(word_audio([1000]))
        await dg.wait_for(lambda: bool(dg.connections) and "KeepAlive" in dg.connections[0].control_types())
        await stream.aclose()
        assert len(dg.connections) == 1  # keepalives, not reconnects


async def test_finalize_gives_end_of_turn() -> None:
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB) as dg:
        engine = engine_for(dg)
        stream = engine.open_stream(speaker="s")
        # No trailing silence: as on Discord, endpointing never sees a pause.
        stream.push(word_audio([1000, 3000]))
        await dg.wait_for(lambda: bool(dg.connections) and len(dg.connections[0].audio) == 2 * 10 * FRAME)
        await stream.finalize()
        got = await collect(stream, eot)
        assert dg.connections[0].control_types() == ["Finalize"]
        final = got[-1]
        assert final.is_final and final.end_of_turn and final.text == "Alpha charlie."
        assert final.end == pytest.approx(0.4)
        # A second finalize with no new audio sends nothing.
        await stream.finalize()
        stream.push(word_audio([2000]))
        await stream.finalize()
        got = await collect(stream, eot)
        assert got[-1].text == "Bravo." and got[-1].start == pytest.approx(0.4)
        assert dg.connections[0].control_types() == ["Finalize", "Finalize"]
        await engine.aclose()


async def test_every_finalize_is_answered_by_an_end_of_turn() -> None:
    """The voice session counts its finalize calls against the ends of turn it gets back (the local
    engine's contract): a breath the recognizer hears nothing in, and two ends of speech that leave
    in one Finalize (a sender that ran late), are each answered, or the session waits for ever."""
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB) as dg:
        engine = engine_for(dg)
        stream = engine.open_stream(speaker="s")
        stream.push(word_audio([1000]))
        await stream.finalize()
        assert [t.text for t in await collect(stream, eot) if t.end_of_turn] == ["Alpha."]
        stream.push(silence(5))  # sound to the receive path's VAD, no words to the recognizer
        await stream.finalize()
        breath = await collect(stream, eot)
        assert breath[-1].end_of_turn and breath[-1].text == ""
        # Both ends of speech are asked for before the sender runs: one Finalize goes out for both.
        stream.push(word_audio([2000]))
        await stream.finalize()
        stream.push(word_audio([3000]))
        await stream.finalize()
        first = await collect(stream, eot)
        second = await collect(stream, eot)
        assert (first[-1].text, second[-1].text) == ("Bravo charlie.", "")
        assert dg.connections[0].control_types() == ["Finalize"] * 3
        await engine.aclose()


async def test_end_of_turn_reported_once() -> None:
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB) as dg:
        engine = engine_for(dg)
        stream = engine.open_stream(speaker="s")
        # speech_final after 300 ms, UtteranceEnd after 1000 ms: the same turn ends twice upstream.
        stream.push(word_audio([1000]) + silence(60))
        await dg.wait_for(lambda: bool(dg.connections) and "UtteranceEnd" in dg.connections[0].sent_types())
        await stream.aclose()
        got = await drain(stream)
    assert [t.text for t in got if t.end_of_turn] == ["Alpha."]


async def test_utterance_end_ends_turn_without_endpointing() -> None:
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB) as dg:
        engine = engine_for(dg, endpointing_ms=None)
        stream = engine.open_stream(speaker="s")
        stream.push(word_audio([1000]) + silence(60))
        got = await collect(stream, eot)
        assert dg.connections[0].param("endpointing") == "false"
        await engine.aclose()
    assert got[-1].text == "" and got[-1].end_of_turn and got[-1].start == pytest.approx(0.2)
    assert any(t.text.lower() == "alpha" for t in got[:-1])


async def test_aclose_flushes_and_ends_iteration() -> None:
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB) as dg:
        engine = engine_for(dg)
        stream = engine.open_stream(speaker="s")
        stream.push(word_audio([2000]))
        await dg.wait_for(lambda: bool(dg.connections) and len(dg.connections[0].audio) == 10 * FRAME)
        await stream.aclose()
        got = await drain(stream)
        await stream.aclose()  # twice is fine
        stream.push(word_audio([1000]))  # ignored after close
        assert dg.connections[0].control_types() == ["CloseStream"]
        assert "Metadata" in dg.connections[0].sent_types()
        assert len(dg.connections) == 1
    assert got[-1].text == "Bravo." and got[-1].is_final


async def test_reconnect_after_1011_replays_untranscribed_audio() -> None:
    first = word_audio([1000]) + silence(20)  # a final (speech_final) covers 0.0-0.5 s
    second = word_audio([2000])  # 0.6-0.8 s: heard, never finalised before the drop
    audio = first + second
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB, drop_after_bytes=len(audio)) as dg:
        engine = engine_for(dg)
        stream = engine.open_stream(speaker="s")
        stream.push(audio)
        got = await collect(stream, eot)
        assert got[-1].text == "Alpha." and got[-1].end == pytest.approx(0.5)
        await dg.wait_for(lambda: len(dg.connections) == 2 and len(dg.connections[1].audio) >= len(audio) - 16000)
        assert dg.connections[0].close_code == 1011
        # Only what no final covered is sent again: from 0.5 s on.
        assert bytes(dg.connections[1].audio) == audio[16000:]
        await stream.finalize()
        got = await collect(stream, eot)
        await engine.aclose()
    final = got[-1]
    assert final.text == "Bravo." and final.end_of_turn
    # Times are on the stream's timeline, not the new socket's clock.
    assert final.words[0].start == pytest.approx(0.6) and final.words[0].end == pytest.approx(0.8)


async def test_finalize_survives_a_drop() -> None:
    audio = word_audio([3000])
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB, drop_on_control="Finalize") as dg:
        engine = engine_for(dg)
        stream = engine.open_stream(speaker="s")
        stream.push(audio)
        await stream.finalize()  # the server dies on receiving it, before answering
        got = await collect(stream, eot)
        await engine.aclose()
        assert dg.connections[0].close_code == 1011
        # The new socket gets the untranscribed audio again, then the Finalize again.
        assert bytes(dg.connections[1].audio) == audio
        assert dg.connections[1].control_types()[0] == "Finalize"
    assert got[-1].text == "Charlie." and got[-1].end_of_turn


async def test_gives_up_after_repeated_drops() -> None:
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB, drop_on_connect=100) as dg:
        engine = engine_for(dg, max_reconnects=2)
        stream = engine.open_stream(speaker="s")
        stream.push(word_audio([1000]))
        with pytest.raises(STTError) as info:
            await drain(stream)
        assert info.value.retryable
        assert len(dg.connections) == 3
        await engine.aclose()


@pytest.mark.parametrize("status", [401, 402, 403])
async def test_rejected_handshake_not_retried(status: int, caplog: pytest.LogCaptureFixture) -> None:
    async with FakeDeepgram(api_key=KEY, reject_status=None if status == 401 else status) as dg:
        engine = engine_for(dg, api_key="wrong-secret-key" if status == 401 else KEY)
        stream = engine.open_stream(speaker="s")
        stream.push(word_audio([1000]))
        with pytest.raises(STTError) as info:
            await drain(stream)
        err = info.value
        assert not err.retryable
        assert dg.handshakes == 1
        if status == 401:
            assert "Deepgram rejected the API key" in err.user_message
        for text in (str(err), repr(err), err.user_message, caplog.text):
            assert "wrong-secret-key" not in text and KEY not in text
        # Another speaker fails at once: no second handshake with a key known to be bad.
        other = engine.open_stream(speaker="t")
        other.push(word_audio([1000]))
        with pytest.raises(STTError):
            await drain(other)
        assert dg.handshakes == 1
        await engine.aclose()


async def test_429_retried_with_bound() -> None:
    async with FakeDeepgram(api_key=KEY, reject_status=429) as dg:
        engine = engine_for(dg, max_reconnects=2)
        stream = engine.open_stream(speaker="s")
        stream.push(word_audio([1000]))
        with pytest.raises(STTError) as info:
            await drain(stream)
        assert info.value.retryable
        assert dg.handshakes == 3
        await engine.aclose()


async def test_idle_close_and_reopen() -> None:
    clock = FakeClock()
    first = word_audio([1000]) + silence(20)
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB) as dg:
        engine = engine_for(dg, keepalive_interval=0.01, idle_timeout=30.0, clock=clock)
        stream = engine.open_stream(speaker="s")
        stream.push(first)
        got = await collect(stream, eot)
        assert got[-1].text == "Alpha."
        await dg.wait_for(lambda: "KeepAlive" in dg.connections[0].control_types())
        clock.now += 31.0
        await dg.wait_for(lambda: dg.connections[0].closed)
        assert dg.connections[0].control_types()[-1] == "CloseStream"
        assert dg.connections[0].close_code == 1000
        assert len(dg.connections) == 1  # nothing to say: no new socket until audio arrives

        stream.push(word_audio([2000]))
        await stream.finalize()
        got = await collect(stream, eot)
        assert len(dg.connections) == 2
        assert bytes(dg.connections[1].audio) == word_audio([2000])  # nothing replayed
        assert got[-1].text == "Bravo."
        assert got[-1].start == pytest.approx(len(first) / BPS)
        await engine.aclose()


async def test_flux_turns() -> None:
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB) as dg:
        engine = engine_for(dg, model="flux-general-en", eot_timeout_ms=500, keyterms=["Wendy"])
        stream = engine.open_stream(speaker="s")
        stream.push(word_audio([1000, 2000]) + silence(30))
        got = await collect(stream, eot)
        conn = dg.connections[0]
        assert conn.path == "/v2/listen"
        assert conn.param("model") == "flux-general-en"
        assert conn.param("encoding") == "linear16" and conn.param("sample_rate") == "16000"
        assert conn.param("eot_timeout_ms") == "500" and conn.query["keyterm"] == ["Wendy"]
        assert got[0].text == "" and not got[0].is_final  # StartOfTurn
        assert got[-1].text == "alpha bravo" and got[-1].end_of_turn
        assert [t.is_final for t in got] == [False] * (len(got) - 1) + [True]

        stream.push(word_audio([3000]))
        await stream.finalize()
        got = await collect(stream, eot)
        assert conn.control_types() == ["ForceEndTurn"]
        assert got[-1].text == "charlie" and got[-1].end == pytest.approx(1.2)
        await engine.aclose()


async def test_english_flux_hears_a_place_with_another_language_through_the_multilingual_model() -> None:
    # LANGUAGE=en keeps flux-general-en for the process; a German server's streams ask for German.
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB) as dg:
        engine = engine_for(dg, model="flux-general-en", language="en-US")
        for language in ("de", "multi", None):
            stream = engine.open_stream(speaker="s", language=language)
            stream.push(word_audio([1000]) + silence(30))
            await collect(stream, eot)
            await stream.aclose()
        german, auto, english = dg.connections
        assert german.param("model") == "flux-general-multi" and german.param("language_hint") == "de"
        assert auto.param("model") == "flux-general-multi" and auto.param("language_hint") is None
        assert english.param("model") == "flux-general-en" and english.param("language_hint") is None
        await engine.aclose()


async def test_flux_idle_sends_silence_not_keepalive() -> None:
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB) as dg:
        engine = engine_for(dg, model="flux-general-en", keepalive_interval=0.01)
        stream = engine.open_stream(speaker="s")
        audio = word_audio([1000])
        stream.push(audio)
        await dg.wait_for(lambda: bool(dg.connections) and len(dg.connections[0].audio) > len(audio))
        await stream.aclose()
        conn = dg.connections[0]
        assert "KeepAlive" not in conn.control_types()
        assert bytes(conn.audio[len(audio):]) == bytes(len(conn.audio) - len(audio))
        # The open turn was ended before CloseStream (Flux's CloseStream emits no EndOfTurn).
        assert conn.control_types()[-2:] == ["ForceEndTurn", "CloseStream"]


async def test_check() -> None:
    async with FakeDeepgram(api_key=KEY) as dg:
        assert "nova-3" in await engine_for(dg).check()
        with pytest.raises(STTError) as info:
            await engine_for(dg, api_key="nope").check()
        assert not info.value.retryable


async def test_check_unreachable() -> None:
    async with FakeDeepgram(api_key=KEY) as dg:
        url = dg.http_url
    engine = DeepgramSTT(KEY, base_url=url)
    with pytest.raises(STTError) as info:
        await engine.check()
    assert info.value.retryable


def test_missing_key_is_a_clear_error() -> None:
    with pytest.raises(STTError) as info:
        DeepgramSTT("")
    assert "DEEPGRAM_API_KEY" in info.value.user_message


def test_repr_has_no_key() -> None:
    engine = DeepgramSTT(KEY)
    assert KEY not in repr(engine)


async def test_replay_buffer_is_bounded() -> None:
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB) as dg:
        # Silence is never finalised by the fake, so nothing ever covers it.
        engine = engine_for(dg, replay_seconds=1.0)
        stream = engine.open_stream(speaker="s")
        for second in range(1, 6):
            for _ in range(50):
                stream.push(silence(1))
            await dg.wait_for(lambda: bool(dg.connections) and len(dg.connections[0].audio) == second * BPS)
            assert stream._ring_bytes <= BPS + FRAME
        await stream.aclose()


async def test_long_replay_is_sent_in_small_chunks() -> None:
    audio = word_audio([1000, 2000, 3000] * 20)  # 12 s, never finalised before the drop
    async with FakeDeepgram(api_key=KEY, vocabulary=VOCAB, drop_after_bytes=len(audio)) as dg:
        engine = engine_for(dg)
        stream = engine.open_stream(speaker="s")
        stream.push(audio)
        await dg.wait_for(lambda: len(dg.connections) == 2 and len(dg.connections[1].audio) == len(audio))
        assert bytes(dg.connections[1].audio) == audio
        await stream.aclose()
