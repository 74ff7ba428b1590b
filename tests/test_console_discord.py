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
from bot.console.metrics import stage_seconds
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
            # Every sample of a running bot also carries process="PROCESS_NAME" (bot/cluster): keyed without it.
            return {tuple(sorted((k, v) for k, v in s.labels.items() if k != "process")): s.value
                    for s in f.samples if s.name == sample}
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
                # The wait runs from Alice's last packet (the end of speech less the 100 ms gap of the
                # default smart rule) to the reply's first packet, and the stages split exactly that:
                # the end of turn is the one that happened, not a fixed 0.6 s window.
                timing = session.last_timing
                assert timing is not None and timing.first_frame is not None and timing.voice_end is not None
                assert timing.voice_end == pytest.approx(timing.speech_end - 0.1)
                wait = values(text, "voicebot_wait_seconds", "voicebot_wait_seconds_sum")[(("channel", "voice"),)]
                assert wait == pytest.approx(timing.first_frame - timing.voice_end)
                stages = values(text, "voicebot_stage_seconds", "voicebot_stage_seconds_sum")
                assert {k[0][1]: v for k, v in stages.items()} == pytest.approx(stage_seconds(timing))
                assert sum(stages.values()) == pytest.approx(wait)
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


async def test_with_a_token_the_console_runs_beside_the_bot(tmp_path: Path) -> None:
    import socket

    from bot.cli import _run_bot
    from bot.loopback.server import LocalDiscord
    from bot.simulate import simulation_settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = load_settings({"AGENT_ENGINE": "eliza", "STT_ENGINE": "none", "TTS_ENGINE": "espeak",
                          "DATA_DIR": str(tmp_path), "WEB_PORT": str(port)}, env_file=None)
    async with LocalDiscord(bot_name="Wren") as discord_:
        guild = discord_.add_guild("Console")
        settings = simulation_settings(base, discord_, guild.id)
        bot = asyncio.create_task(_run_bot(settings), name="test-bot")
        try:
            async with ClientSession() as http:
                async def discord_seen() -> bool:
                    try:
                        state = await (await http.get(f"http://127.0.0.1:{port}/console/state")).json()
                    except OSError:
                        return False
                    return bool(state["discord"])

                async def poll() -> None:
                    while not await discord_seen():
                        await asyncio.sleep(0.1)

                await asyncio.wait_for(poll(), TIMEOUT)
                metrics = await (await http.get(f"http://127.0.0.1:{port}/metrics")).text()
                assert values(metrics, "voicebot_voice_connections", "voicebot_voice_connections")[()] == 0
                assert 'voicebot_voice_connections{process="' in metrics
        finally:
            bot.cancel()
            await asyncio.gather(bot, return_exceptions=True)
    assert [t.get_name() for t in asyncio.all_tasks() if not t.done() and t.get_name().startswith(
        ("console", "web-server", "playground"))] == []


async def test_a_taken_port_is_one_clear_line_and_the_bot_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                                  ) -> None:
    import socket

    from bot.console.run import report_web_failure
    from bot.store import SqliteDatabase as Database
    from bot.services import build_services
    from bot.web import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = load_settings({"WEB_PORT": str(taken.getsockname()[1])}, env_file=None)
        services = await build_services(settings, db=Database.in_memory())
        try:
            task = asyncio.create_task(serve(settings, agent=services.agent, memory=services.memory,
                                             store=services.store), name="web-server")
            task.add_done_callback(report_web_failure)  # runs before gather's own callback
            await asyncio.gather(task, return_exceptions=True)
        finally:
            await services.aclose()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= 40]
    assert len(lines) == 1 and "could not start" in lines[0] and "WEB_PORT" in lines[0], lines
