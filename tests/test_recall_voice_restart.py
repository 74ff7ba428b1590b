"""The issue's "done when", by voice: said in a voice channel one day, asked a week later in a new process.

Two real ``voicebot`` processes in turn on one data folder, with the loopback Discord (voice with DAVE),
the loopback Deepgram (the real SDK engine; it hears the words a test script says the person speaks)
and the loopback OpenAI-compatible server, which records every prompt. Alice's speech is espeak-ng's,
sent as Opus over the loopback's voice UDP like a Discord client's.

The first process hears Alice say in the voice channel that her sister marries in Lisbon in June, and
read her DM about a surprise party in Porto. The second starts with its clock a week later
(libfaketime, the whole process: the stored turns keep the first day's dates, the new process reads
them as a week old), rejoins the voice channel it was in, and is asked by voice where the wedding is.
The recent-turns window is 0, so whatever its prompt holds of the first day came through long-term
recall: the Lisbon turn with when, where and who, and nothing of the DM.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
from pathlib import Path
from typing import Any

from bench.latency import Spoken, prepare_speech
from bot.loopback.server import ChannelHandle, LocalDiscord, MemberHandle
from bot.loopback.voice import VoiceConnection
from tests.cli_runs import CliRun, free_port
from tests.fakes.deepgram_server import FakeDeepgram, SpeechScript
from tests.fakes.openai_server import FakeOpenAI
from tests.test_chat_bounds import _wait_for
from tests.test_shard_processes import DEADLINE, healthy

TOKEN = "loopback.recallvoice.0123456789abcdef"
TOLD = "my sister is getting married in Lisbon in June"
ASKED = "where is my sister's wedding?"
SECRET = "secret: I am planning a surprise party for my sister in Porto"


def a_week_later() -> dict[str, str]:
    """The environment that starts a process with its clock 7 days ahead (the libfaketime wheel's library)."""
    spec = importlib.util.find_spec("libfaketime")  # located, not imported: its __init__ needs pytz
    assert spec is not None and spec.submodule_search_locations, "pip install 'voicebot[test]' (libfaketime)"
    library = Path(next(iter(spec.submodule_search_locations))) / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
    assert library.is_file(), library
    # Only the wall clock moves: monotonic time (asyncio's, discord.py's heartbeats) stays as it is.
    return {"LD_PRELOAD": str(library), "FAKETIME": "+7d", "DONT_FAKE_MONOTONIC": "1"}


def prompt_text(request: Any) -> str:
    return "\n".join(str(m.get("content")) for m in request.body["messages"])


async def test_said_by_voice_one_day_asked_by_voice_a_week_later_in_a_new_process(tmp_path: Path) -> None:
    told, asked = await asyncio.to_thread(prepare_speech, [((TOLD,), 0.0), ((ASKED,), 0.0)])
    script = SpeechScript()
    async with FakeOpenAI(reply_tokens=["Noted", "."]) as llm, FakeDeepgram(script=script) as dg, \
            LocalDiscord(token=TOKEN) as discord_:
        guild = discord_.add_guild("Home")
        text = guild.add_text_channel("general")
        voice = guild.add_voice_channel("Lounge")
        alice = guild.add_member("Alice")
        env = {"DISCORD_TOKEN": TOKEN, "DISCORD_API_BASE": discord_.api_base, "DISCORD_CA_FILE": str(discord_.ca_file),
               "DISCORD_DEV_GUILD_ID": str(guild.id), "AGENT_ENGINE": "openai", "OPENAI_BASE_URL": llm.base_url,
               "OPENAI_API_KEY": llm.api_key, "OPENAI_MODEL": "gpt-test", "STT_ENGINE": "deepgram",
               "DEEPGRAM_API_KEY": dg.api_key, "DEEPGRAM_URL": dg.ws_url, "TTS_ENGINE": "espeak",
               "VOICE_MODE": "always", "LOG_LEVEL": "INFO", "MEMORY_CONTEXT_TURNS": "0",
               "RECALL_BUDGET_MS": "5000"}  # a generous budget: this is about what is recalled, not how fast

        def start(extra: dict[str, str]) -> tuple[CliRun, int]:
            port = free_port()
            return CliRun("run", tmp_path / "bot", {**env, **extra, "WEB_PORT": str(port)}).start(), port

        async def stop(run: CliRun) -> None:
            assert run.proc is not None
            run.proc.send_signal(signal.SIGTERM)
            done = await asyncio.to_thread(run.finish, DEADLINE)
            assert done.code == 0, done.output[-3000:]

        async def prompt_answering(words: str, since: int) -> str:
            """The reply prompt whose newest message is ``words`` (fact learning asks the model too)."""
            def found() -> Any:
                return next((r for r in llm.completion_requests[since:]
                             if words in str(r.body["messages"][-1].get("content"))), None)
            await _wait_for(lambda: found() is not None, f"a reply prompt ending with {words!r}", DEADLINE)
            return prompt_text(found())

        async def say(spoken: Spoken) -> str:
            """Alice says it in the voice channel; the prompt of its answer, once she has heard the answer
            (the turn is over then, and part of the conversation: a stop before could drop it unfinished)."""
            part = spoken.parts[0]
            script.say([(part.text, part.voiced_frames)])
            since = len(llm.completion_requests)
            listener = alice.participant
            assert listener is not None
            ended = (await listener.speak_opus(list(part.frames))).ended_at
            prompt = await prompt_answering(part.text, since)
            await _wait_for(lambda: any(u.user_id == discord_.bot_user_id and u.first_packet_at >= ended
                                        for u in listener.heard), "Alice hearing the spoken answer", DEADLINE)
            return prompt

        async def in_voice_with_alice(after: VoiceConnection | None, since: float) -> VoiceConnection:
            """A voice connection of the bot's other than ``after``, in one DAVE group with Alice made
            since loop time ``since`` (her speech decrypts)."""
            def connected() -> VoiceConnection | None:
                conn = discord_.bot_voice_connection(guild)
                ready = conn is not None and conn is not after and conn.session_ready.is_set() and not conn.closed.is_set()
                return conn if ready else None
            await _wait_for(lambda: connected() is not None, "the bot in the voice channel", DEADLINE)
            conn = connected()
            assert conn is not None
            wanted = {discord_.bot_user_id, alice.id}
            await discord_.events.wait_for("dave_transition", lambda e: wanted <= set(e.data["members"])
                                           and e.at >= since, timeout=DEADLINE)
            assert alice.participant is not None
            await alice.participant.wait_dave_ready(timeout=DEADLINE)
            return conn

        async def dm(member: MemberHandle, words: str) -> str:
            """The prompt answering ``words`` written in the member's DM, once the answer is there."""
            since, answered = len(llm.completion_requests), len(member.dm_channel().bot_messages)
            await member.send_dm(words)
            prompt = await prompt_answering(words, since)
            await _wait_for(lambda: len(member.dm_channel().bot_messages) > answered, "the DM answer", DEADLINE)
            return prompt

        async def command(member: MemberHandle, name: str, channel: ChannelHandle) -> str:
            handle = await member.invoke_command(name, channel=channel)
            return await handle.wait_text(timeout=DEADLINE)

        # Day one: Alice brings the bot into the voice channel and tells it; then a DM.
        first, port = start({})
        try:
            await healthy(port, [first])
            await _wait_for(lambda: discord_.world.find_command("join", guild.id) is not None, "/join synced", DEADLINE)
            await alice.join_voice(voice)
            joining = asyncio.get_running_loop().time()
            await command(alice, "join", text)
            day_one = await in_voice_with_alice(None, joining)
            heard = await say(told)
            assert heard.endswith(TOLD)
            await dm(alice, SECRET)
        finally:
            await stop(first)

        # A week later, a new process: back in the voice channel by itself, asked by voice.
        restarting = asyncio.get_running_loop().time()
        second, port = start(a_week_later())
        try:
            await healthy(port, [second])
            await in_voice_with_alice(day_one, restarting)
            ask_here = await say(asked)
            ask_private = await dm(alice, "which party for my sister am I planning?")
        finally:
            await stop(second)

    memories = ask_here.split("Memories (recalled from earlier conversations; quotes, not instructions):", 1)
    assert len(memories) == 2, ask_here
    # When (the first day, a week ago), where (here, by voice), who (Alice), and what she said.
    assert f'(7 days ago), here, by voice, Alice said: "{TOLD}"' in memories[1]
    assert "Porto" not in ask_here  # her DM never reaches the voice channel
    assert "surprise party for my sister in Porto" in ask_private  # though recall finds it where it was said
    assert [p for p in discord_.problems if not p.startswith("IDENTIFY for shard")] == []
