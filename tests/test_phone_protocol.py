"""The pure parts of the phone path: μ-law, the Media Streams messages, stream tokens, the notice."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from audio.tts.base import AudioFormat
from bot.phone.audio import MulawEncoder, UnsupportedFormat, mulaw_decode, mulaw_encode
from bot.phone.protocol import (
    Connected,
    Dtmf,
    Mark,
    Media,
    ProtocolError,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
    parse_message,
)
from bot.phone.service import ai_notice, stream_base
from bot.phone.tokens import DatabaseTokens, StreamTokens
from bot.settings import load_settings

# ------------------------------------------------------------------------------------ μ-law


def test_mulaw_matches_g711_reference_points() -> None:
    assert mulaw_encode(np.array([0, 32767, -32768, 1000, -1000], dtype="<i2").tobytes()) == b"\xff\x80\x00\xce\x4e"
    assert np.frombuffer(mulaw_decode(b"\xff\x80\x00\x7f"), dtype="<i2").tolist() == [0, 32124, -32124, 0]


def test_every_code_survives_decode_then_encode() -> None:
    codes = bytes(range(256))
    again = mulaw_encode(mulaw_decode(codes))
    assert again == codes.replace(b"\x7f", b"\xff")  # the two zeros are one sample


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=400))
def test_encoding_error_is_within_the_segment_step(samples: list[int]) -> None:
    pcm = np.array(samples, dtype="<i2")
    back = np.frombuffer(mulaw_decode(mulaw_encode(pcm.tobytes())), dtype="<i2").astype(int)
    error = np.abs(back - pcm.astype(int))
    assert (error <= np.maximum(16, np.abs(pcm.astype(int)) // 16 + 8)).all()


def test_encoder_resamples_streams_and_keeps_odd_bytes() -> None:
    enc = MulawEncoder(AudioFormat("s16le", 16000, 1))
    one_second = (np.sin(np.arange(16000) / 10) * 8000).astype("<i2").tobytes()
    out = b"".join(enc.feed(one_second[i:i + 1001]) for i in range(0, len(one_second), 1001)) + enc.flush()
    assert abs(len(out) - 8000) <= 2
    assert MulawEncoder(AudioFormat("ulaw", 8000, 1)).feed(b"\x01\x02") == b"\x01\x02"
    stereo = MulawEncoder(AudioFormat("s16le", 8000, 2))
    assert len(stereo.feed(bytes(8))) == 2 and stereo.flush() == b""


@pytest.mark.parametrize("fmt", [AudioFormat("mp3", 44100, 1), AudioFormat("ulaw", 16000, 1)])
def test_formats_the_phone_cannot_take_are_refused(fmt: AudioFormat) -> None:
    with pytest.raises(UnsupportedFormat):
        MulawEncoder(fmt)


# ------------------------------------------------------------------------------------ messages


START = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
         "start": {"accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
                   "customParameters": {"who": "me"},
                   "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


def test_twilios_messages_parse() -> None:
    assert parse_message('{"event":"connected","protocol":"Call","version":"1.0.0"}') == Connected("Call", "1.0.0")
    start = parse_message(json.dumps(START))
    assert start == Start("MZ1", "CA1", "AC1", "audio/x-mulaw", 8000, 1, ("inbound",), {"who": "me"})
    payload = base64.b64encode(b"\xff" * 160).decode()
    media = parse_message(json.dumps({"event": "media", "streamSid": "MZ1",
                                      "media": {"track": "inbound", "chunk": "2", "timestamp": "40",
                                                "payload": payload}}))
    assert media == Media(b"\xff" * 160, "inbound", 2, 40)
    assert parse_message('{"event":"mark","mark":{"name":"utt-1"}}') == Mark("utt-1")
    assert parse_message('{"event":"dtmf","dtmf":{"track":"inbound_track","digit":"7"}}') == Dtmf("7")
    assert parse_message('{"event":"stop","stop":{"accountSid":"AC1","callSid":"CA1"}}') == Stop("CA1")


@pytest.mark.parametrize("raw, reason", [
    ("{nope", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    ("[1]", "not a JSON object"),
    ('{"event": "wobble"}', "unknown event"),
    ("{}", "without an event"),
    ('{"event": "media"}', "without a 'media' object"),
    ('{"event": "media", "media": {"payload": "***"}}', "not base64"),
    ('{"event": "media", "media": {"payload": 5}}', "payload string"),
    ('{"event": "start", "start": {"callSid": "CA1"}}', "streamSid"),
    ('{"event": "start", "streamSid": "MZ", "start": {}}', "callSid"),
    ('{"event": "mark", "mark": {}}', "name"),
])
def test_bad_messages_say_why_in_one_line(raw: str | bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_message(raw)
    assert reason in str(info.value) and "\n" not in str(info.value)


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_protocol_error(text: str) -> None:
    try:
        parse_message(text)
    except ProtocolError:
        pass


def test_outbound_messages_are_twilios_shapes() -> None:
    media = json.loads(media_message("MZ1", b"\x00\xff"))
    assert media == {"event": "media", "streamSid": "MZ1", "media": {"payload": "AP8="}}
    assert json.loads(mark_message("MZ1", "utt-3")) == {"event": "mark", "streamSid": "MZ1", "mark": {"name": "utt-3"}}
    assert json.loads(clear_message("MZ1")) == {"event": "clear", "streamSid": "MZ1"}


# ------------------------------------------------------------------------------------ tokens, URLs, notice


@pytest.mark.parametrize("text", ["[" * 4000, '{"event": "media", "media": ' + '{"a": ' * 5000, "[" * 100_000])
def test_json_nested_thousands_deep_is_a_protocol_error(text: str) -> None:
    with pytest.raises(ProtocolError, match="nested too deeply"):
        parse_message(text)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def token_kind(request: pytest.FixtureRequest, tmp_path) -> object:
    """How to make call tokens on a test clock: in memory, or in the database on SQLite or PostgreSQL."""
    from bot.store import open_database

    opened = []

    async def make(clock: object, **kw: float) -> object:
        if request.param == "memory":
            return StreamTokens(clock=clock, **kw)  # type: ignore[arg-type]
        where = str(tmp_path / "t.sqlite3") if request.param == "sqlite" else request.getfixturevalue("pg_url")
        db = await open_database(where)
        opened.append(db)
        return DatabaseTokens(db, issued_by="test", clock=clock, **kw)  # type: ignore[arg-type]

    yield make
    for db in opened:
        await db.close()


async def test_tokens_are_single_use_short_lived_and_revocable(token_kind) -> None:
    now = [100.0]
    tokens = await token_kind(lambda: now[0], ttl=30)
    a = await tokens.issue("CA1", "+15551", "+15552")
    assert a is not None and await tokens.redeem(a) is not None and await tokens.redeem(a) is None  # used
    b = await tokens.issue("CA2", "+15551", "+15552")
    assert b is not None
    now[0] += 31
    assert await tokens.redeem(b) is None  # expired
    c = await tokens.issue("CA3", "+15551", "+15552")
    assert c is not None
    await tokens.end_call("CA3")
    assert await tokens.redeem(c) is None and await tokens.pending() == 0
    assert await tokens.redeem("") is None


async def test_one_call_gets_one_token_and_none_after_it_was_used_expired_or_ended(token_kind) -> None:
    now = [100.0]
    tokens = await token_kind(lambda: now[0], ttl=30)
    first = await tokens.issue("CA1", "+15551", "+15552")
    assert first is not None and await tokens.issue("CA1", "+15551", "+15552") == first  # a retry: the same answer
    assert await tokens.pending() == 1 and await tokens.seen("CA1") and not await tokens.seen("CA2")
    grant = await tokens.redeem(first)
    assert grant is not None and (grant.call_sid, grant.caller, grant.called) == ("CA1", "+15551", "+15552")
    assert await tokens.issue("CA1", "+15551", "+15552") is None  # replayed while connected
    await tokens.end_call("CA1")
    assert await tokens.issue("CA1", "+15551", "+15552") is None  # replayed after the call
    expired = await tokens.issue("CA2", "+15551", "+15552")
    now[0] += 31
    assert await tokens.issue("CA2", "+15551", "+15552") is None and expired is not None
    assert await tokens.redeem(expired) is None
    ended = await tokens.issue("CA3", "+15551", "+15552")
    await tokens.end_call("CA3")  # the call ended (status callback) before its stream connected
    assert ended is not None and await tokens.redeem(ended) is None and await tokens.issue("CA3", "+1", "+2") is None
    assert await tokens.pending() == 0


async def test_remembered_calls_are_bounded_in_number_and_time() -> None:
    now = [0.0]
    tokens = StreamTokens(clock=lambda: now[0], retention=3600, max_calls=3)
    issued = [await tokens.issue(f"CA{i}", "+1", "+2") for i in range(5)]
    assert [await tokens.seen(f"CA{i}") for i in range(5)] == [False, False, True, True, True]
    assert await tokens.redeem(issued[0] or "") is None and await tokens.redeem(issued[-1] or "") is not None
    now[0] += 3601
    assert not any([await tokens.seen(f"CA{i}") for i in range(5)]) and await tokens.pending() == 0


async def test_database_tokens_forget_the_number_when_the_call_ends_and_the_row_after_a_day(tmp_path) -> None:
    from bot.store import open_database

    now = [0.0]
    db = await open_database(str(tmp_path / "t.sqlite3"))
    try:
        tokens = DatabaseTokens(db, clock=lambda: now[0], retention=86400)
        live = await tokens.issue("CA1", "+15550001111", "+15552")
        await tokens.issue("CA2", "+15550002222", "+15552")
        assert live is not None and await tokens.redeem(live) is not None
        await tokens.end_call("CA1")
        now[0] += 31  # CA2's token dies unused
        await tokens.issue("CA3", "+15550003333", "+15552")
        rows = {r[0]: (r[1], r[2]) for r in await db.query("SELECT call_sid, caller, state FROM phone_call_tokens")}
        assert rows == {"CA1": ("", "ended"), "CA2": ("", "ended"), "CA3": ("+15550003333", "pending")}
        now[0] += 86401
        assert not await tokens.seen("CA1")
        await tokens.issue("CA4", "+1", "+2")
        assert [r[0] for r in await db.query("SELECT call_sid FROM phone_call_tokens")] == ["CA4"]
    finally:
        await db.close()


async def test_two_processes_answering_one_call_give_the_same_token_and_it_opens_once(pg_url: str) -> None:
    """Twilio's retry landing on another process at the same moment; the socket then tried on both."""
    import asyncio

    from bot.store import open_database

    dbs = [await open_database(pg_url) for _ in range(2)]
    try:
        a, b = DatabaseTokens(dbs[0], issued_by="a"), DatabaseTokens(dbs[1], issued_by="b")
        await a.pending()  # the schema, once
        first, second = await asyncio.gather(a.issue("CA9", "+15551", "+15552"), b.issue("CA9", "+15551", "+15552"))
        assert first is not None and first == second
        grants = await asyncio.gather(a.redeem(first), b.redeem(first))
        assert sum(g is not None for g in grants) == 1
        assert await a.pending() + await b.pending() == 0
    finally:
        for db in dbs:
            await db.close()


def test_stream_base_follows_the_public_scheme() -> None:
    assert stream_base("https://bot.example.com/") == "wss://bot.example.com"
    assert stream_base("http://127.0.0.1:8080/prefix") == "ws://127.0.0.1:8080/prefix"


def test_the_ai_notice_names_who_hears_the_call() -> None:
    local = load_settings({"STT_ENGINE": "local", "TTS_ENGINE": "espeak"}, env_file=None)
    assert ai_notice(local, "eliza").endswith("Your voice stays on this server.")
    cloud = load_settings({"DEEPGRAM_API_KEY": "dg-key-123456", "ELEVENLABS_API_KEY": "el-key-123456",
                           "OPENAI_API_KEY": "sk-test-123456"}, env_file=None)
    notice = ai_notice(cloud, "openai")
    assert "AI agent" in notice and "Deepgram" in notice and "OpenAI" in notice and "ElevenLabs" in notice
