"""The console beside the real bot on the loopback Discord: a spoken turn in a voice channel shows
up in /metrics (turn, wait, stages, receive counters, connections) and in the live state, and the
receive totals stay put after the bot leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from audio.native import load_libopus
from bot.console import Console, Metrics, mount
from bot.providers import local_stt_available
from bot.settings import load_settings
from bot.simulate import running_bot
from bot.web import create_app

TIMEOUT = 60.0

pytestmark = pytest.mark.skipif(not local_stt_available(), reason="faster-whisper is not installed")


async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


def values(text: str, family: str, sample: str) -> dict[tuple[tuple[str, str], ...], float]:
    for f in text_string_to_metric_families(text):
        if f.name == family:
            return {tuple(sorted(s.labels.items())): s.value for s in f.samples if s.name == sample}
    raise AssertionError(family)


async def test_a_voice_channel_turn_is_counted_and_shown(tmp_path: Path) -> None:
    from tests.speech_samples import espeak_wav

    load_libopus()
    wav = espeak_wav("Good morning, can you hear me?", tmp_path / "morning.wav")
    settings = load_settings({"AGENT_ENGINE": "eliza", "STT_ENGINE": "local", "TTS_ENGINE": "espeak"}, env_file=None)
    async with running_bot(settings, ["Alice"]) as lb:
        console = Console(lb.services, metrics=Metrics(process=False), voice=lambda: lb.manager, tick=0.2)
        server = TestServer(create_app(mounts=[lambda app: mount(app, console)]), host="127.0.0.1")
        await server.start_server()
        base = f"http://127.0.0.1:{server.port}"
        try:
            async with ClientSession() as http:
                alice = lb.members["Alice"]
                participant = await alice.join_voice(lb.voice)
                assert "I'm in" in await lb.command(alice, "join")
                await lb.wait_dave_group([alice])
                session = lb.manager.session(lb.guild.id)
                assert session is not None
                await until(lambda: session.on_outcome is not None)  # the console hooked the new session
                state = await (await http.get(f"{base}/console/state")).json()
                assert [(g["channel"], g["connected"]) for g in state["guilds"]] == [("Voice", True)]

                await participant.speak_wav(wav)
                await asyncio.wait_for(session.wait_settled(), TIMEOUT)
                await participant.wait_quiet(TIMEOUT)
                text = await (await http.get(f"{base}/metrics")).text()
                turns = values(text, "voicebot_turns", "voicebot_turns_total")
                assert turns[(("channel", "voice"), ("outcome", "answered"))] == 1
                stages = values(text, "voicebot_stage_seconds", "voicebot_stage_seconds_sum")
                assert stages[(("stage", "end_of_turn"),)] == pytest.approx(0.6)
                assert stages[(("stage", "first_packet"),)] >= 0
                packets = values(text, "voicebot_receive_packets", "voicebot_receive_packets_total")
                delivered = packets[(("result", "delivered"),)]
                assert delivered > 50  # a sentence is well over a second of 20 ms packets
                assert values(text, "voicebot_voice_connections", "voicebot_voice_connections")[()] == 1
                requests = values(text, "voicebot_provider_requests", "voicebot_provider_requests_total")
                assert requests[(("kind", "stt"), ("provider", "local"))] >= 1
                assert requests[(("kind", "tts"), ("provider", "espeak"))] >= 1
                state = await (await http.get(f"{base}/console/state")).json()
                assert state["turns"][-1]["channel"] == "voice" and "text" not in state["turns"][-1]

                assert "Left" in await lb.command(alice, "leave")
                text = await (await http.get(f"{base}/metrics")).text()
                assert values(text, "voicebot_voice_connections", "voicebot_voice_connections")[()] == 0
                after = values(text, "voicebot_receive_packets", "voicebot_receive_packets_total")
                assert after[(("result", "delivered"),)] >= delivered  # monotonic after the leave
        finally:
            await server.close()
    assert lb.discord.problems == []
