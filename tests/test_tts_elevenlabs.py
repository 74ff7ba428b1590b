from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from audio.tts.base import AudioFormat, TTSError, VoiceSpec
from audio.tts.elevenlabs import (
    DEFAULT_MODEL,
    DEFAULT_VOICE_ID,
    ElevenLabsEngine,
    ErrorKind,
    audio_format_for,
    classify_error,
    voice_info_from_json,
)
from tests.fakes.elevenlabs_server import DieAfter, Fail, FakeElevenLabs, Paced, Stall, error_body, tone_pcm

KEY = "test-key-SECRET-123"


@pytest.fixture
async def fake() -> AsyncIterator[FakeElevenLabs]:
    async with FakeElevenLabs(api_key=KEY) as server:
        yield server
    assert server.problems == []


def make_engine(fake: FakeElevenLabs, **kwargs: object) -> ElevenLabsEngine:
    options: dict[str, object] = {"backoff_base": 0.0, "rng": random.Random(1)}
    options.update(kwargs)
    return ElevenLabsEngine(api_key=str(options.pop("api_key", KEY)), base_url=fake.url, **options)  # type: ignore[arg-type]


async def collect(engine: ElevenLabsEngine, text: str, voice: VoiceSpec | None = None) -> bytes:
    return b"".join([chunk async for chunk in engine.synthesize(text, voice)])


# -- pure functions ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["status", "code"])
@pytest.mark.parametrize(
    ("status", "code", "kind", "retryable"),
    [
        (401, "invalid_api_key", ErrorKind.INVALID_API_KEY, False),
        (401, "quota_exceeded", ErrorKind.QUOTA_EXCEEDED, False),
        (429, "too_many_concurrent_requests", ErrorKind.CONCURRENCY_LIMIT, True),
        (429, "concurrent_limit_exceeded", ErrorKind.CONCURRENCY_LIMIT, True),
        (429, "system_busy", ErrorKind.RATE_LIMITED, True),
        (429, "rate_limit_exceeded", ErrorKind.RATE_LIMITED, True),
        (500, "internal_error", ErrorKind.SERVER_ERROR, True),
        (503, "service_unavailable", ErrorKind.SERVER_ERROR, True),
        (404, "voice_not_found", ErrorKind.VOICE_NOT_FOUND, False),
        (400, "voice_not_found", ErrorKind.VOICE_NOT_FOUND, False),
        (400, "max_character_limit_exceeded", ErrorKind.TEXT_TOO_LONG, False),
        (403, "forbidden", ErrorKind.FORBIDDEN, False),
        (408, "timeout", ErrorKind.TIMEOUT, True),
    ],
)
def test_classify_error(status: int, code: str, kind: ErrorKind, retryable: bool, shape: str) -> None:
    info = classify_error(status, error_body(code, shape=shape))
    assert info.kind is kind
    assert info.retryable is retryable
    assert info.user_message
    assert code in info.detail


def test_classify_error_odd_bodies() -> None:
    assert classify_error(None, None).kind is ErrorKind.CONNECTION
    assert classify_error(502, "<html>Bad gateway</html>").kind is ErrorKind.SERVER_ERROR
    assert classify_error(401, {"detail": "nope"}).kind is ErrorKind.INVALID_API_KEY
    assert classify_error(429, {}).kind is ErrorKind.RATE_LIMITED
    info = classify_error(422, {"detail": [{"loc": ["body", "text"], "msg": "field required"}]})
    assert info.kind is ErrorKind.BAD_REQUEST and "field required" in info.detail and not info.retryable


def test_voice_info_from_json_and_formats() -> None:
    info = voice_info_from_json(
        {"voice_id": "v1", "name": "George", "category": "premade", "labels": {"accent": "british"}, "description": "Warm"}
    )
    assert info.id == "v1" and info.name == "George"
    assert "Warm" in info.description and "british" in info.description
    assert voice_info_from_json({"voice_id": "x"}).name == "x"
    assert audio_format_for("pcm_48000") == AudioFormat("s16le", 48000, 1)
    assert audio_format_for("ulaw_8000") == AudioFormat("ulaw", 8000, 1)
    assert audio_format_for("mp3_44100_128").encoding == "mp3"
    with pytest.raises(ValueError):
        audio_format_for("flac_1")


# -- against the fake server -------------------------------------------------------------------


async def test_streams_pcm_with_the_real_wire_request(fake: FakeElevenLabs) -> None:
    engine = make_engine(fake)
    assert engine.format == AudioFormat("s16le", 48000, 1)
    chunks = [c async for c in engine.synthesize("Hello there.")]
    assert b"".join(chunks) == tone_pcm(0.05 * len("Hello there."), 48000)
    assert all(len(c) == 3840 for c in chunks[:-1])  # request_options chunk_size
    [request] = fake.requests
    assert request.voice_id == DEFAULT_VOICE_ID
    assert request.query["output_format"] == "pcm_48000"
    assert request.headers["xi-api-key"] == KEY
    assert request.body["text"] == "Hello there."
    assert request.body["model_id"] == DEFAULT_MODEL
    assert "voice_settings" not in request.body
    await engine.aclose()


async def test_voice_spec_is_sent(fake: FakeElevenLabs) -> None:
    engine = make_engine(fake)
    spec = VoiceSpec(voice_id="21m00Tcm4TlvDq8ikWAM", model="eleven_turbo_v2_5", stability=0.3, style=0.1,
                     use_speaker_boost=True)
    assert await collect(engine, "Hi.", spec)
    body = fake.requests[0].body
    assert fake.requests[0].voice_id == "21m00Tcm4TlvDq8ikWAM"
    assert body["model_id"] == "eleven_turbo_v2_5"
    assert body["voice_settings"] == {"stability": 0.3, "style": 0.1, "use_speaker_boost": True}
    await engine.aclose()


async def test_empty_text_makes_no_request(fake: FakeElevenLabs) -> None:
    engine = make_engine(fake)
    assert await collect(engine, "  \n\t ") == b""
    assert fake.requests == []
    await engine.aclose()


async def test_5000_character_reply(fake: FakeElevenLabs) -> None:
    engine = make_engine(fake)
    text = ("All work and no play. " * 300)[:5000]
    audio = await collect(engine, text)
    assert len(audio) == len(tone_pcm(0.05 * 5000))
    assert fake.requests[0].body["text"] == text
    await engine.aclose()


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [(401, "invalid_api_key", "invalid_api_key"), (401, "quota_exceeded", "quota_exceeded"), (403, "forbidden", "forbidden")],
)
async def test_non_retryable_errors_are_not_retried(fake: FakeElevenLabs, status: int, code: str, kind: str) -> None:
    engine = make_engine(fake)
    fake.script(Fail(status, error_body(code, shape="code")))
    with pytest.raises(TTSError) as info:
        await collect(engine, "Hello.")
    assert info.value.kind == kind
    assert not info.value.retryable and not info.value.audio_started
    assert len(fake.requests) == 1
    assert KEY not in str(info.value) and KEY not in info.value.user_message
    await engine.aclose()


async def test_wrong_key_is_invalid_api_key(fake: FakeElevenLabs) -> None:
    engine = make_engine(fake, api_key="wrong-key-XYZ")
    with pytest.raises(TTSError) as info:
        await collect(engine, "Hello.")
    assert info.value.kind == "invalid_api_key"
    assert "wrong-key-XYZ" not in str(info.value) and "wrong-key-XYZ" not in repr(engine)
    await engine.aclose()


async def test_nonexistent_voice_id(fake: FakeElevenLabs) -> None:
    engine = make_engine(fake)
    with pytest.raises(TTSError) as info:
        await collect(engine, "Hello.", VoiceSpec(voice_id="does-not-exist"))
    assert info.value.kind == "voice_not_found"
    assert "voice" in info.value.user_message
    assert len(fake.requests) == 1
    await engine.aclose()


@pytest.mark.parametrize(
    "failure",
    [
        Fail(429, error_body("too_many_concurrent_requests")),
        Fail(429, error_body("system_busy", shape="code")),
        Fail(429, error_body("rate_limit_exceeded"), headers={"Retry-After": "0"}),
        Fail(500, {"detail": {"status": "internal_error", "message": "boom"}}),
        Fail(502, "<html>bad gateway</html>"),
    ],
    ids=["429-concurrency", "429-system-busy", "429-rate-limit", "500", "502-html"],
)
async def test_retryable_errors_are_retried_then_succeed(fake: FakeElevenLabs, failure: Fail) -> None:
    engine = make_engine(fake, max_attempts=3)
    fake.script(failure, failure)
    audio = await collect(engine, "Hello.")
    assert audio == tone_pcm(0.05 * 6)
    assert len(fake.requests) == 3
    await engine.aclose()


async def test_retries_are_bounded(fake: FakeElevenLabs) -> None:
    engine = make_engine(fake, max_attempts=2)
    fake.script(*[Fail(503, error_body("system_busy"))] * 5)
    with pytest.raises(TTSError) as info:
        await collect(engine, "Hello.")
    assert info.value.kind == "server_error" and info.value.retryable
    assert len(fake.requests) == 2
    await engine.aclose()


async def test_death_mid_stream_is_never_retried(fake: FakeElevenLabs) -> None:
    """ElevenLabs down mid-sentence: the audio already yielded stays, and the caller can fall back."""
    engine = make_engine(fake, max_attempts=3)
    fake.script(DieAfter(3840 * 2))
    received: list[bytes] = []
    with pytest.raises(TTSError) as info:
        async for chunk in engine.synthesize("A long sentence that will be cut off."):
            received.append(chunk)
    assert b"".join(received)  # some audio arrived before the failure
    assert info.value.audio_started
    assert info.value.kind == "connection"
    assert len(fake.requests) == 1  # no retry once audio started
    await engine.aclose()


async def test_stall_before_first_byte_times_out_and_retries(fake: FakeElevenLabs) -> None:
    # The first try's stall is endless, so it always times out; the second try's first byte has to
    # beat the same timeout, which on a loaded machine 0.2 s did not always give it.
    engine = make_engine(fake, max_attempts=2, first_byte_timeout=2.0)
    stall = Stall()
    fake.script(stall)
    audio = await collect(engine, "Hello.")  # first try stalls, second succeeds
    assert stall.arrived.is_set()
    assert audio and len(fake.requests) == 2
    await engine.aclose()


async def test_first_chunk_arrives_while_stream_is_still_going(fake: FakeElevenLabs) -> None:
    engine = make_engine(fake)
    paced = Paced()
    fake.script(paced)
    async with aclosing(engine.synthesize("Twenty characters!!!")) as stream:
        iterator = aiter(stream)
        paced.allow(1)
        first = await asyncio.wait_for(anext(iterator), timeout=10)
        assert first and paced.sent == 1 and not paced.done.is_set()
        paced.finish()
        rest = [c async for c in iterator]
    assert len(first + b"".join(rest)) == len(tone_pcm(0.05 * 20))
    await engine.aclose()


async def test_cancelling_mid_stream_closes_the_request(fake: FakeElevenLabs) -> None:
    engine = make_engine(fake)
    paced = Paced()
    fake.script(paced)
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _chunk in engine.synthesize("Some words to say."):
            got_first.set()

    task = asyncio.create_task(consume(), name="consume-tts")
    paced.allow(1)
    await asyncio.wait_for(got_first.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await engine.aclose()


async def test_list_voices_and_check(fake: FakeElevenLabs) -> None:
    fake.voices = [{"voice_id": f"v{i}", "name": f"Voice {i}"} for i in range(150)] + fake.voices
    engine = make_engine(fake)
    voices = await engine.list_voices()
    assert len(voices) == 152
    assert [path for path, _ in fake.voice_requests] == ["/v2/voices", "/v2/voices"]
    assert fake.voice_requests[0][1]["page_size"] == "100"
    assert "152 voices" in await engine.check()
    await engine.aclose()


async def test_check_reports_a_missing_voice_and_bad_key(fake: FakeElevenLabs) -> None:
    engine = make_engine(fake, voice_id="nope")
    with pytest.raises(TTSError) as info:
        await engine.check()
    assert info.value.kind == "voice_not_found"
    await engine.aclose()
    bad = make_engine(fake, api_key="bad")
    with pytest.raises(TTSError) as info:
        await bad.list_voices()
    assert info.value.kind == "invalid_api_key"
    await bad.aclose()


async def test_connection_refused_is_retryable_connection_error() -> None:
    async with FakeElevenLabs() as server:
        url = server.url
    engine = ElevenLabsEngine(api_key="k", base_url=url, max_attempts=2, backoff_base=0.0)
    with pytest.raises(TTSError) as info:
        await collect(engine, "Hello.")
    assert info.value.kind == "connection" and info.value.retryable
    await engine.aclose()
