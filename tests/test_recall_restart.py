"""Remembered across a restart, by a real ``voicebot`` process: told one day, asked in a new process.

Two real bot processes in turn on the same data folder, the loopback Discord and the loopback
OpenAI-compatible server (which records every prompt). The first hears Alice in #general and in her
DM and stops; the second, a new process, is asked in #general and in the DM. The recent-turns window
is 0, so whatever the second prompt holds of the first day came through long-term recall.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from bot.loopback.server import LocalDiscord
from tests.cli_runs import CliRun, free_port
from tests.fakes.openai_server import FakeOpenAI
from tests.test_chat_bounds import _wait_for
from tests.test_shard_processes import DEADLINE, healthy

TOKEN = "loopback.recallrestart.0123456789abcdef"


async def test_a_new_process_recalls_what_was_said_and_keeps_the_dm_private(tmp_path: Path) -> None:
    async with FakeOpenAI(reply_tokens=["Noted", "."]) as llm, LocalDiscord(token=TOKEN) as discord_:
        guild = discord_.add_guild("Home")
        general = guild.add_text_channel("general")
        alice = guild.add_member("Alice")
        mention = f"<@{discord_.bot_user_id}>"
        env = {"DISCORD_TOKEN": TOKEN, "DISCORD_API_BASE": discord_.api_base, "DISCORD_CA_FILE": str(discord_.ca_file),
               "AGENT_ENGINE": "openai", "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": llm.api_key,
               "OPENAI_MODEL": "gpt-test", "STT_ENGINE": "none", "TTS_ENGINE": "none", "LOG_LEVEL": "INFO",
               "MEMORY_CONTEXT_TURNS": "0", "RECALL_BUDGET_MS": "5000"}  # a generous budget: this is about what

        async def said(member_text: str, *, dm: bool = False) -> str:
            before = len(llm.completion_requests)
            channel = alice.dm_channel() if dm else general
            answered = len(channel.bot_messages)
            if dm:
                await alice.send_dm(member_text)
            else:
                await alice.send_message(general, f"{mention} {member_text}")
            await _wait_for(lambda: len(channel.bot_messages) > answered, f"the answer to {member_text!r}", DEADLINE)
            assert len(llm.completion_requests) == before + 1
            return "\n".join(m["content"] for m in llm.completion_requests[before].body["messages"])

        async def lifetime(steps: list[tuple[str, bool]]) -> list[str]:
            port = free_port()
            run = CliRun("run", tmp_path / "bot", {**env, "WEB_PORT": str(port)}).start()
            prompts: list[str] = []
            try:
                await healthy(port, [run])
                for text, dm in steps:
                    prompts.append(await said(text, dm=dm))
            finally:
                assert run.proc is not None
                run.proc.send_signal(signal.SIGTERM)
                done = await asyncio.to_thread(run.finish, DEADLINE)
            assert done.code == 0, done.output[-3000:]
            return prompts

        await lifetime([("my sister is getting married in Lisbon in June!", False),
                        ("secret: I am planning a surprise party for my sister in Porto", True)])
        ask_here, ask_private = await lifetime([("where is my sister's wedding?", False),
                                                ("which party for my sister am I planning?", True)])
        assert "my sister is getting married in Lisbon in June!" in ask_here
        assert "Alice said" in ask_here and "Porto" not in ask_here  # her DM never reaches the channel
        assert "surprise party for my sister in Porto" in ask_private
        # A restart within 5 s meets Discord's one-IDENTIFY-per-5-s rule (op 9); discord.py waits and
        # identifies again, as it would against Discord. Nothing else may have gone wrong.
        assert [p for p in discord_.problems if not p.startswith("IDENTIFY for shard")] == []
