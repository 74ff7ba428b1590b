"""Back where it was, with real processes on the loopback Discord and PostgreSQL: a bot in a voice channel
(with /mode and /language chosen) is SIGKILLed; the next process for that guild — started with an empty
data folder, as on another machine, on the same DATABASE_URL — joins the same channel with the same mode
and language and says so in the channel once. A /leave is not undone by a restart."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from bot.loopback.server import LocalDiscord
from tests.cli_runs import CliRun, free_port
from tests.test_cluster_processes import DEADLINE, healthy

TOKEN = "loopback.clusterrejoin.0123456789abcdef"
MANAGE_GUILD = 1 << 5


async def until(predicate, what: str) -> None:  # noqa: ANN001
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not predicate():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.1)


async def test_a_restarted_process_rejoins_its_voice_channel_with_its_mode_and_language(
        tmp_path: Path, pg_url: str) -> None:
    async with LocalDiscord(token=TOKEN) as discord_:
        guild = discord_.add_guild("Loopback")
        text = guild.add_text_channel("general")
        voice = guild.add_voice_channel("Lounge")
        boss = guild.add_member("Boss", roles=[guild.add_role("mods", MANAGE_GUILD)])
        env = {"DISCORD_TOKEN": TOKEN, "DISCORD_API_BASE": discord_.api_base, "DISCORD_CA_FILE": str(discord_.ca_file),
               "DISCORD_DEV_GUILD_ID": str(guild.id), "AGENT_ENGINE": "eliza", "STT_ENGINE": "none",
               "TTS_ENGINE": "none", "LOG_LEVEL": "INFO", "DATABASE_URL": pg_url, "PRIVACY_KEY": "ab" * 32, "CLUSTER_HEARTBEAT": "0.5"}

        def start(home: str) -> tuple[CliRun, int]:
            port = free_port()
            return CliRun("run", tmp_path / home, {**env, "WEB_PORT": str(port)}).start(), port

        first, port = start("machine-a")
        runs = [first]
        try:
            await healthy(port, first)
            await until(lambda: discord_.world.find_command("join", guild.id) is not None, "/join never synced")

            async def command(name: str, options: dict | None = None) -> str:
                handle = discord_.invoke_command(boss, name, options, channel=text)
                return await handle.wait_text(timeout=DEADLINE)

            await command("mode", {"mode": "push-to-talk"})
            await command("language", {"language": "de"})
            await boss.join_voice(voice)
            await command("join")
            before = await discord_.wait_bot_voice(guild, timeout=DEADLINE)
            first.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            await asyncio.to_thread(first.finish, DEADLINE)

            second, port = start("machine-b")  # an empty data folder: only the database remembers
            runs.append(second)
            await healthy(port, second)
            back = await discord_.wait_bot_message(voice, contains="Neustart", timeout=DEADLINE)
            assert "Lounge" in back.content or str(voice.id) in back.content
            conn = await discord_.wait_bot_voice(guild, timeout=DEADLINE)
            assert conn is not before
            # The same mode and language, in the settings every process shares (the one database).
            from bot.store import open_database

            db = await open_database(pg_url)
            try:
                mode = await db.scalar("SELECT mode FROM voice_guild_settings WHERE guild_id = ?", (guild.id,))
                language = await db.scalar("SELECT setting FROM language_places WHERE place = ?",
                                           (f"guild:{guild.id}",))
            finally:
                await db.close()
            assert (mode, language) == ("push-to-talk", "de")
            # Said once; a stop with SIGTERM keeps the channel for the next start.
            second.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            assert (await asyncio.to_thread(second.finish, DEADLINE)).code == 0
            third, port = start("machine-b")
            runs.append(third)
            await healthy(port, third)
            await until(lambda: sum("Neustart" in (m.content or "") for m in voice.bot_messages) == 2,
                        "not back after a clean stop")
            # /leave is a choice the next start keeps.
            await command("leave")
            await until(lambda: discord_.bot_voice_connection(guild) is None, "never left")
            third.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            assert (await asyncio.to_thread(third.finish, DEADLINE)).code == 0
            fourth, port = start("machine-b")
            runs.append(fourth)
            await healthy(port, fourth)
            await until(lambda: discord_.world.find_command("join", guild.id) is not None, "no sync")
        finally:
            for run in runs:
                if run.proc is not None and run.proc.poll() is None:
                    run.proc.send_signal(signal.SIGTERM)
                    await asyncio.to_thread(run.finish, DEADLINE)
        assert sum("Neustart" in (m.content or "") for m in voice.bot_messages) == 2
        assert discord_.bot_voice_connection(guild) is None
