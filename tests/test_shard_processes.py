"""Two real ``voicebot`` processes split the shards of one bot on the loopback Discord: each logs in
only as its shard, sees only its guild, and every message (a DM too) is answered exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from pathlib import Path

import aiohttp

from bot.loopback.gateway import Sharding
from bot.loopback.server import LocalDiscord
from tests.cli_runs import CliRun, Finished, free_port

TOKEN = "loopback.shardprocs.0123456789abcdef"
DEADLINE = 90.0  # two interpreters starting at once on a busy two-core machine


async def healthy(port: int, runs: list[CliRun]) -> None:
    """Wait until the process on ``port`` answers /healthz with 200 (its shards are ready)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return
            for run in runs:
                assert run.proc is not None and run.proc.poll() is None, f"a worker exited: {run.finish().output}"
            assert loop.time() < deadline, f"the process on port {port} never became healthy"
            await asyncio.sleep(0.1)


async def test_two_processes_each_answer_their_own_shard_and_dms_only_on_shard_zero(tmp_path: Path) -> None:
    async with LocalDiscord(token=TOKEN, sharding=Sharding(max_concurrency=2)) as discord_:
        channels = []
        for shard_id in range(2):
            guild = discord_.add_guild(f"G{shard_id}", shard=(shard_id, 2))
            channels.append((guild, guild.add_text_channel("general"), guild.add_member(f"Member{shard_id}")))
        env = {"DISCORD_TOKEN": TOKEN, "DISCORD_API_BASE": discord_.api_base, "DISCORD_CA_FILE": str(discord_.ca_file),
               "AGENT_ENGINE": "eliza", "STT_ENGINE": "none", "TTS_ENGINE": "none", "LOG_LEVEL": "INFO"}
        ports = [free_port() for _ in range(2)]
        runs = [CliRun("run", tmp_path / f"worker{shard_id}", {**env, "WEB_PORT": str(ports[shard_id])},
                       args=("--shard-ids", str(shard_id), "--shard-count", "2")).start() for shard_id in range(2)]
        finished: list[Finished] = []
        try:
            for port in ports:  # each process's health check turns 200 once its shards are ready
                await healthy(port, runs)
            assert discord_.gateway.live_shards() == {0, 1}
            mention = f"<@{discord_.bot_user_id}>"
            for _, text, member in channels:
                await member.send_message(text, f"{mention} I feel fine today")
            dm_author = channels[1][2]  # a member of shard 1's guild: their DM still goes to shard 0
            await dm_author.send_dm("I remember my mother")
            for _, text, _ in channels:
                await discord_.wait_bot_message(text, timeout=DEADLINE)
            await discord_.wait_bot_message(dm_author.dm_channel(), timeout=DEADLINE)
        finally:
            for run in runs:
                assert run.proc is not None
                run.proc.send_signal(signal.SIGTERM)
            finished = [await asyncio.to_thread(run.finish, DEADLINE) for run in runs]
        # Both processes have exited: nothing more can be answered.
        assert [f.code for f in finished] == [0, 0], [f.output[-2000:] for f in finished]
        for shard_id, done in enumerate(finished):
            assert re.search(rf"in 1 guild\(s\) on shards {shard_id} of 2", done.output), done.output[-2000:]
        assert [len(text.bot_messages) for _, text, _ in channels] == [1, 1]
        assert len(dm_author.dm_channel().bot_messages) == 1
        assert sorted(e.data["shard"] for e in discord_.events.of("identify")) == [[0, 2], [1, 2]]
        assert discord_.problems == []
