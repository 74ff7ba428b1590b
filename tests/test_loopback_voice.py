"""The loopback Discord's voice gateway, UDP and DAVE, with an unchanged discord.py VoiceClient."""

from __future__ import annotations

import asyncio
import io
import math
import struct
import threading
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import davey
import discord
import numpy as np
import pytest

from audio.native import load_libopus
from bot.loopback.participant import ParticipantOptions, encode_opus_frames, load_wav_48k_stereo
from bot.loopback.server import ChannelHandle, GuildHandle, LocalDiscord
from bot.loopback.voice import BotVoice, open_rtp, seal_rtp
from tests.test_loopback_gateway import RawGateway, close_raw
from tests.test_loopback_rest import TIMEOUT, running_client


def tone(seconds: float, rate: int = 48000, channels: int = 2, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wave_ = (0.4 * np.sin(2 * math.pi * freq * t) * 32767).astype("<i2")
    return np.repeat(wave_[:, None], channels, axis=1).tobytes()


def write_wav(path: Path, pcm: bytes, rate: int, channels: int) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return path


class PacketCounter:
    """A socket listener (runs on discord.py's socket thread) that keeps raw RTP for the test."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ssrc: int, want: int) -> None:
        self.loop = loop
        self.ssrc = ssrc
        self.want = want
        self.packets: list[bytes] = []
        self._lock = threading.Lock()
        self.done: asyncio.Future[None] = loop.create_future()

    def __call__(self, data: bytes) -> None:
        if len(data) < 12 or data[0] >> 6 != 2 or struct.unpack_from(">I", data, 8)[0] != self.ssrc:
            return
        with self._lock:
            self.packets.append(bytes(data))
            if len(self.packets) == self.want:
                self.loop.call_soon_threadsafe(lambda: self.done.done() or self.done.set_result(None))


@pytest.fixture(scope="module", autouse=True)
def _opus() -> None:
    load_libopus()


@pytest.fixture
async def discord_() -> AsyncIterator[LocalDiscord]:
    async with LocalDiscord() as server:
        yield server


def seed(discord_: LocalDiscord) -> tuple[GuildHandle, ChannelHandle]:
    guild = discord_.add_guild()
    guild.add_text_channel("general")
    return guild, guild.add_voice_channel("General")


async def connect(client: discord.Client, channel: ChannelHandle) -> discord.VoiceClient:
    vc_channel = client.get_channel(channel.id)
    assert isinstance(vc_channel, discord.VoiceChannel)
    return await vc_channel.connect(timeout=TIMEOUT)


async def play(vc: discord.VoiceClient, pcm: bytes) -> Exception | None:
    """Play 48 kHz stereo PCM through the bot's voice client; return the player's error (None when fine)."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[Exception | None] = loop.create_future()
    vc.play(discord.PCMAudio(io.BytesIO(pcm)), after=lambda err: loop.call_soon_threadsafe(finished.set_result, err))
    return await asyncio.wait_for(finished, TIMEOUT)


def bot_decrypt(vc: discord.VoiceClient, packet: bytes, user_id: int) -> bytes:
    conn = vc._connection
    opened = open_rtp(conn.mode, bytes(conn.secret_key), packet)
    return conn.dave_session.decrypt(user_id, davey.MediaType.audio, opened.payload)  # type: ignore[union-attr]


async def test_bot_joins_dave_completes_and_participant_hears_playback(
    discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    guild, voice = seed(discord_)
    alice = guild.add_member("Alice")
    async with running_client(discord_, monkeypatch) as client:
        participant = await alice.join_voice(voice)
        vc = await connect(client, voice)
        try:
            await participant.wait_dave_ready(timeout=TIMEOUT)
            await discord_.wait_dave_transition(timeout=TIMEOUT)
            assert vc._connection.dave_session is not None and vc._connection.dave_session.ready
            assert vc._connection.mode == "aead_xchacha20_poly1305_rtpsize"
            assert vc.voice_privacy_code == participant.dave.voice_privacy_code  # type: ignore[union-attr]
            assert await play(vc, tone(0.6)) is None
            await participant.wait_heard(timeout=TIMEOUT)
            await participant.wait_quiet(timeout=TIMEOUT)
            # A loaded machine can stall discord.py's player past the participant's 0.3 s utterance
            # gap and split the tone in two: count every utterance heard, not only the first.
            heard = participant.heard
            assert {u.user_id for u in heard} == {discord_.bot_user_id}
            pcm = b"".join([await u.pcm() for u in heard])
            assert 0.5 <= sum(u.duration for u in heard) <= 0.7
            samples = np.frombuffer(pcm, dtype="<i2")
            assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 1000  # clearly not silence
            assert participant.decrypt_failures == 0
        finally:
            await vc.disconnect(force=True)
    assert discord_.problems == []
    ops = {e.kind for e in discord_.events.events}
    assert {"voice_identify", "ip_discovery", "voice_select_protocol", "dave_key_package", "dave_transition"} <= ops


async def test_participant_speech_reaches_the_bot_socket(
    discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    guild, voice = seed(discord_)
    alice = guild.add_member("Alice")
    wav = write_wav(tmp_path / "mono16k.wav", tone(0.4, rate=16000, channels=1), 16000, 1)
    async with running_client(discord_, monkeypatch) as client:
        vc = await connect(client, voice)
        try:
            options = ParticipantOptions(padding=0.5, extension_words=1, seed=7)
            participant = await alice.join_voice(voice, options)
            await participant.wait_dave_ready(timeout=TIMEOUT)
            await discord_.wait_dave_transition(timeout=TIMEOUT)
            counter = PacketCounter(asyncio.get_running_loop(), participant.ssrc, want=20)
            vc._connection.add_socket_listener(counter)
            try:
                result = await participant.speak_wav(wav)
                await asyncio.wait_for(counter.done, TIMEOUT)
            finally:
                vc._connection.remove_socket_listener(counter)
            assert result.frames == 20 and result.sent == 20
            padded = 0
            for packet in counter.packets:
                opened = open_rtp(vc._connection.mode, bytes(vc._connection.secret_key), packet)
                assert opened.extension_words == 1
                padded += opened.padded
                opus = vc._connection.dave_session.decrypt(  # type: ignore[union-attr]
                    alice.id, davey.MediaType.audio, opened.payload)
                assert opus
            assert 0 < padded < 20
            assert discord_.events.of("member_voice_join")
        finally:
            await vc.disconnect(force=True)
    assert discord_.problems == []


async def test_second_participant_causes_new_epoch_that_the_bot_follows(
    discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    guild, voice = seed(discord_)
    alice, bob = guild.add_member("Alice"), guild.add_member("Bob")
    async with running_client(discord_, monkeypatch) as client:
        vc = await connect(client, voice)
        try:
            pa = await alice.join_voice(voice)
            await pa.wait_dave_ready(timeout=TIMEOUT)
            first = await discord_.wait_dave_transition(timeout=TIMEOUT)
            epoch_before = vc._connection.dave_session.epoch  # type: ignore[union-attr]
            pb = await bob.join_voice(voice)
            await pb.wait_dave_ready(timeout=TIMEOUT)
            second = await discord_.wait_dave_transition(after=first.data["transition_id"], timeout=TIMEOUT)
            await pa.wait_epochs(2, timeout=TIMEOUT)
            assert second.data["members"] == sorted([discord_.bot_user_id, alice.id, bob.id])
            session = vc._connection.dave_session
            assert session is not None and session.epoch == epoch_before + 1
            assert session.voice_privacy_code == pa.dave.voice_privacy_code == pb.dave.voice_privacy_code  # type: ignore[union-attr]
            # The bot committed (op 28) and was told (op 29); Bob's audio decrypts on the bot's session.
            assert any(e.data["user_id"] == discord_.bot_user_id for e in discord_.events.of("dave_commit"))
            counter = PacketCounter(asyncio.get_running_loop(), pb.ssrc, want=10)
            vc._connection.add_socket_listener(counter)
            try:
                await pb.speak_pcm(tone(0.2))
                await asyncio.wait_for(counter.done, TIMEOUT)
            finally:
                vc._connection.remove_socket_listener(counter)
            assert all(bot_decrypt(vc, p, bob.id) for p in counter.packets)
            # Bob leaves: a Remove proposal and another epoch, still followed by the bot.
            await bob.leave_voice()
            third = await discord_.wait_dave_transition(after=second.data["transition_id"], timeout=TIMEOUT)
            assert third.data["members"] == sorted([discord_.bot_user_id, alice.id])
            assert session.epoch == epoch_before + 2
        finally:
            await vc.disconnect(force=True)
    assert discord_.problems == []


@pytest.mark.parametrize("code", [4006, 4014])
async def test_voice_close_codes_are_reported(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    guild, voice = seed(discord_)
    alice = guild.add_member("Alice")
    async with running_client(discord_, monkeypatch) as client:
        await alice.join_voice(voice)
        vc = await connect(client, voice)
        try:
            first = await discord_.wait_bot_voice(guild, timeout=TIMEOUT)
            await discord_.wait_dave_transition(timeout=TIMEOUT)
            await discord_.close_bot_voice(guild, code)
            closed = await discord_.events.wait_for("voice_disconnect", lambda e: e.data["code"] == code,
                                                    timeout=TIMEOUT)
            assert closed.data["user_id"] == discord_.bot_user_id
            assert discord_.events.of("voice_close")[0].data["code"] == code
            if code == 4006:
                # discord.py starts over after 4006: op 4 leave + join on the main gateway, then a new
                # voice IDENTIFY (new SSRC). It completes only after its socket reader leaves a
                # select() on the closed old UDP socket (up to 30 s in discord.py 2.7.1), so the
                # test stops at the new IDENTIFY and its IP discovery request.
                await discord_.events.wait_for("voice_identify", lambda e: e.data["ssrc"] != first.ssrc,
                                               timeout=TIMEOUT)
                await discord_.events.wait_for("ip_discovery", lambda e: e.data["ssrc"] != first.ssrc,
                                               timeout=TIMEOUT)
        finally:
            await vc.disconnect(force=True)


async def raw_voice(discord_: LocalDiscord) -> RawGateway:
    session = aiohttp.ClientSession(connector=discord_.connector())
    ws = await session.ws_connect(f"wss://127.0.0.1:{discord_.port}/?v=8")
    return RawGateway(session, ws)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"token": "wrong"}, 4004),
        ({"session_id": "other"}, 4006),
        ({"max_dave_protocol_version": None}, 4017),
        ({"mode": "xsalsa20_poly1305"}, 4016),
    ],
)
async def test_voice_identify_and_select_checks(discord_: LocalDiscord, change: dict[str, Any], code: int) -> None:
    guild, voice = seed(discord_)
    discord_.voice.bot_voice[guild.id] = BotVoice(guild.id, voice.id, "sess", "tok", f"127.0.0.1:{discord_.port}")
    identify: dict[str, Any] = {"server_id": str(guild.id), "user_id": str(discord_.bot_user_id),
                                "session_id": "sess", "token": "tok", "max_dave_protocol_version": 1}
    mode = change.pop("mode", None)
    identify.update(change)
    identify = {k: v for k, v in identify.items() if v is not None}
    raw = await raw_voice(discord_)
    try:
        hello = await raw.recv()
        assert hello["op"] == 8 and "seq" not in hello
        await raw.send(3, {"t": 123, "seq_ack": -1})
        ack = await raw.recv()
        assert ack == {"op": 6, "d": {"t": 123}}
        await raw.send(0, identify)
        if mode is None:
            assert await raw.closed_with() == code
            return
        ready = await raw.recv()
        assert ready["op"] == 2 and ready["seq"] == 1 and "aead_xchacha20_poly1305_rtpsize" in ready["d"]["modes"]
        await raw.send(1, {"protocol": "udp", "data": {"address": "127.0.0.1", "port": 1, "mode": mode}})
        assert await raw.closed_with() == code
    finally:
        await close_raw(raw)
    assert discord_.problems


async def test_garbage_loss_reorder_jitter_do_not_break_the_call(
    discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    guild, voice = seed(discord_)
    alice = guild.add_member("Alice")
    async with running_client(discord_, monkeypatch) as client:
        vc = await connect(client, voice)
        try:
            options = ParticipantOptions(loss=0.1, reorder=0.2, jitter=0.01, garbage_every=5,
                                         extension_words=2, padding=0.3, seed=3)
            participant = await alice.join_voice(voice, options)
            await participant.wait_dave_ready(timeout=TIMEOUT)
            await discord_.wait_dave_transition(timeout=TIMEOUT)
            result = await participant.speak_pcm(tone(0.6))
            assert result.dropped > 0 and result.sent + result.dropped == 30
            # The call survives: the bot can still play and be heard.
            assert await play(vc, tone(0.2)) is None
            await participant.wait_heard(timeout=TIMEOUT)
            assert vc.is_connected()
        finally:
            await vc.disconnect(force=True)


def test_rtp_seal_open_round_trip_with_padding_and_extensions() -> None:
    key = bytes(range(32))
    for mode in ("aead_xchacha20_poly1305_rtpsize", "aead_aes256_gcm_rtpsize"):
        for words in (0, 1, 2):
            for padding in (0, 1, 5):
                packet = seal_rtp(mode, key, seq=65535, timestamp=960, ssrc=42, payload=b"opus!", counter=7,
                                  extension_words=words, padding=padding)
                opened = open_rtp(mode, key, packet)
                assert (opened.seq, opened.timestamp, opened.ssrc, opened.payload) == (65535, 960, 42, b"opus!")
                assert opened.padded == bool(padding) and opened.extension_words == words
        with pytest.raises(ValueError):
            open_rtp(mode, key, packet[:-5] + b"\x00" + packet[-4:])


def test_wav_conversion_any_rate_and_channels(tmp_path: Path) -> None:
    for rate, channels in ((16000, 1), (44100, 2), (48000, 1)):
        pcm = tone(0.5, rate=rate, channels=channels)
        out = load_wav_48k_stereo(write_wav(tmp_path / f"t{rate}{channels}.wav", pcm, rate, channels))
        assert abs(len(out) / 4 / 48000 - 0.5) < 0.01


async def test_close_4015_resumes_and_dave_is_rebuilt(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    guild, voice = seed(discord_)
    alice = guild.add_member("Alice")
    async with running_client(discord_, monkeypatch) as client:
        participant = await alice.join_voice(voice)
        vc = await connect(client, voice)
        try:
            first = await discord_.wait_dave_transition(timeout=TIMEOUT)
            await discord_.close_bot_voice(guild, 4015)
            await discord_.events.wait_for("voice_resume", timeout=TIMEOUT)
            # After RESUMED and a fresh op 4 discord.py re-creates its DAVE session: the old leaf is
            # removed and the new key package added in one commit.
            again = await discord_.wait_dave_transition(after=first.data["transition_id"], timeout=TIMEOUT)
            assert again.data["members"] == sorted([discord_.bot_user_id, alice.id])
            assert vc._connection.dave_session is not None and vc._connection.dave_session.ready
            assert vc.voice_privacy_code == participant.dave.voice_privacy_code  # type: ignore[union-attr]
        finally:
            await vc.disconnect(force=True)
    assert discord_.problems == []


async def test_voice_server_change_moves_the_bot_to_the_new_endpoint(
    discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    guild, voice = seed(discord_)
    alice = guild.add_member("Alice")
    async with running_client(discord_, monkeypatch) as client:
        await alice.join_voice(voice)
        vc = await connect(client, voice)
        try:
            first = await discord_.wait_dave_transition(timeout=TIMEOUT)
            endpoint = await discord_.change_voice_server(guild)
            region = endpoint.partition("/")[2]
            await discord_.events.wait_for("voice_identify", lambda e: e.data["region"] == region, timeout=TIMEOUT)
            await discord_.wait_dave_transition(after=first.data["transition_id"], timeout=TIMEOUT)
            assert vc.endpoint == endpoint
        finally:
            await vc.disconnect(force=True)
    assert discord_.problems == []


async def test_member_leaving_mid_sentence(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    guild, voice = seed(discord_)
    alice = guild.add_member("Alice")
    async with running_client(discord_, monkeypatch) as client:
        vc = await connect(client, voice)
        try:
            participant = await alice.join_voice(voice)
            await participant.wait_dave_ready(timeout=TIMEOUT)
            counter = PacketCounter(asyncio.get_running_loop(), participant.ssrc, want=5)
            vc._connection.add_socket_listener(counter)
            frames = await asyncio.get_running_loop().run_in_executor(None, encode_opus_frames, tone(2.0))
            speaking = asyncio.create_task(participant.speak_opus(frames), name="test-speak")
            try:
                await asyncio.wait_for(counter.done, TIMEOUT)
                await alice.leave_voice()
                result = await asyncio.wait_for(speaking, TIMEOUT)
            finally:
                vc._connection.remove_socket_listener(counter)
                speaking.cancel()
            assert result.sent < 100
            gone = await discord_.wait_dave_transition(after=1, timeout=TIMEOUT)
            assert gone.data["members"] == [discord_.bot_user_id]
            assert vc.is_connected()
        finally:
            await vc.disconnect(force=True)
    assert discord_.problems == []
