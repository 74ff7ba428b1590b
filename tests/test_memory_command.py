"""``/memory show``, ``/memory forget`` and ``/forget`` on the loopback Discord, with the real bot, the real
OpenAI client on the loopback server, and facts learnt in the background by the scripted model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.agent import Incoming
from bot.loopback.server import LocalDiscord, MemberHandle
from bot.memory import Modality
from tests.fakes.fact_model import FactRule, ScriptedFactModel
from tests.fakes.openai_server import FakeOpenAI
from tests.test_voice_commands import Harness, _seed, running_bot

EXTENSIONS = ("cogs.voice", "cogs.privacy", "cogs.memory")
RULES = [FactRule(r"my sister is getting married in (\w+) in (\w+)", "{name}'s sister is getting married in {1} in {2}",
                  "sister's wedding"),
         FactRule(r"I like (\w+)", "{name} likes {1}")]


@pytest.fixture
async def discord_() -> AsyncIterator[LocalDiscord]:
    async with LocalDiscord(token="loopback.voicebot.0123456789abcdef") as server:
        yield server


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(responder=ScriptedFactModel(RULES)) as fake:
        yield fake


def env(fake: FakeOpenAI) -> dict[str, str]:
    return {"AGENT_ENGINE": "openai", "OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_MODEL": "gpt-test", "FACTS_DEBOUNCE_SECONDS": "0"}


async def tell(h: Harness, room: str, text: str, who: str = "alice") -> None:
    member = getattr(h, who)
    services = h.bot.services
    reply = services.agent.reply(Incoming(room, f"discord:{member.id}", member.name, text, Modality.TEXT))
    await reply.collect()
    reply.finish()
    await services.facts.wait_idle()


async def test_memory_show_lists_facts_places_and_summaries_privately(
        discord_: LocalDiscord, llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch, env=env(llm), extensions=EXTENSIONS):
        channel_room = f"discord:{h.guild.id}:{h.text.id}"
        await tell(h, channel_room, "I like chess")
        await tell(h, f"discord:dm:{h.alice.id}", "my sister is getting married in Lisbon in June")
        await tell(h, channel_room, "I like trains", who="boss")
        facts = h.bot.services.facts
        await facts.summarize_session(channel_room, 0.0, 4_000_000_000.0)

        shown = await h.command(h.alice, "memory show")
        assert shown.startswith("**What I keep about you** (only you see this)")
        assert "Facts I learnt from what you said (2):" in shown
        assert "Alice likes chess (#general in Loopback" in shown
        assert "Alice's sister is getting married in Lisbon in June (our direct messages" in shown
        assert "#general in Loopback: 1" in shown and "our direct messages: 1" in shown
        assert "Summaries of voice sessions you were in (1):" in shown
        assert "Boss likes" not in shown
        interaction = discord_.world.interactions[max(discord_.world.interactions)]
        assert interaction.response_data is not None and interaction.response_data["flags"] & 64  # ephemeral

        kept, _ = await facts.about(f"discord:{h.alice.id}")
        chess = next(f for f in kept if "chess" in f.text)
        boss_fact = (await facts.about(f"discord:{h.boss.id}"))[0][0]
        assert "no fact" in await h.command(h.alice, "memory forget", {"item": str(boss_fact.id)})
        assert await h.command(h.alice, "memory forget", {"item": str(chess.id)}) == "Removed: Alice likes chess"
        assert "no fact `nonsense`" in await h.command(h.alice, "memory forget", {"item": "nonsense"})
        assert [f.text for f in (await facts.about(f"discord:{h.alice.id}"))[0]] == [
            "Alice's sister is getting married in Lisbon in June"]

        everything = await h.command(h.alice, "memory forget", {"item": "all"})
        assert everything.startswith("Removed everything I learnt about you: 1 fact about you, 1 session summary.")
        assert await facts.about(f"discord:{h.alice.id}") == ([], [])
        assert await facts.about(f"discord:{h.boss.id}") != ([], [])  # Boss's fact stays
        assert (await h.bot.services.memory.count(channel_room)) == 4  # the messages stay (2 of each)
        assert "There was nothing learnt" in await h.command(h.alice, "memory forget", {"item": "all"})
        assert "No facts" in await h.command(h.alice, "memory show")


async def test_forget_also_removes_facts_and_summaries(discord_: LocalDiscord, llm: FakeOpenAI,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch, env=env(llm), extensions=EXTENSIONS):
        channel_room = f"discord:{h.guild.id}:{h.text.id}"
        await tell(h, channel_room, "I like chess")
        await tell(h, channel_room, "I like trains", who="boss")
        facts = h.bot.services.facts
        await facts.summarize_session(channel_room, 0.0, 4_000_000_000.0)
        answer = await h.command(h.alice, "forget")
        assert "1 fact about you" in answer and "1 session summary" in answer
        assert await facts.about(f"discord:{h.alice.id}") == ([], [])
        assert (await facts.about(f"discord:{h.boss.id}"))[1] == []  # the summary named Alice
        assert [f.text for f in (await facts.about(f"discord:{h.boss.id}"))[0]] == ["Boss likes trains"]


async def test_with_the_eliza_engine_memory_lists_messages_only(discord_: LocalDiscord,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch, extensions=EXTENSIONS):
        assert h.bot.services.facts is None
        reply = h.bot.services.agent.reply(Incoming(f"discord:{h.guild.id}:{h.text.id}", f"discord:{h.alice.id}",
                                                    "Alice", "I like chess", Modality.TEXT))
        await reply.collect()
        reply.finish()
        shown = await h.command(h.alice, "memory show")
        assert "I don't learn facts" in shown and "#general in Loopback: 1" in shown
        assert "I don't learn facts" in await h.command(h.alice, "memory forget", {"item": "all"})


async def test_a_voice_session_and_a_scribes_notes_each_leave_a_dated_summary(
        discord_: LocalDiscord, llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from bot.memory import Turn

    h = _seed(discord_)
    async with running_bot(h, monkeypatch, env=env(llm), extensions=EXTENSIONS):
        facts = h.bot.services.facts
        memory = h.bot.services.memory
        room = f"discord:{h.guild.id}:{h.voice.id}"
        await h.alice.join_voice(h.voice)
        assert (await h.command(h.alice, "join")).startswith("I'm in")
        memory.append(Turn(room, f"discord:{h.alice.id}", "Alice", "user", "let's plan the picnic for Saturday",
                           Modality.VOICE, time.time()))
        memory.append(Turn(room, "agent", "Wren", "assistant", "Saturday it is.", Modality.VOICE, time.time()))
        await h.command(h.alice, "leave")
        await facts.wait_idle()
        [summary] = await facts.store.summaries_in(room)
        assert summary.kind == "voice" and summary.text.startswith("Voice session of 20")
        assert "Alice" in summary.text and summary.people == (f"discord:{h.alice.id}",)

        # A scribe's call: the notes it posts are the session's summary (no second request).
        assert "only taking notes" in await h.command(h.boss, "mode", {"mode": "scribe"})
        assert (await h.command(h.alice, "join")).startswith("I'm in")
        memory.append(Turn(room, f"discord:{h.alice.id}", "Alice", "user", "we agreed on the lake",
                           Modality.VOICE, time.time()))
        requests = len(llm.completion_requests)
        await h.command(h.alice, "leave")
        await facts.wait_idle()
        notes = [s for s in await facts.store.summaries_in(room) if s.kind == "notes"]
        assert len(notes) == 1 and notes[0].text.startswith("Notes of the call of 20")
        assert "Hello there, friend." in notes[0].text  # what the scribe posted, from the engine
        assert len(llm.completion_requests) == requests + 1  # the notes' own request only


async def test_memory_works_in_a_dm(discord_: LocalDiscord, llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.loopback.state import Channel, ChannelType
    from tests.test_voice_commands import answer_of, raw_invoke

    h = _seed(discord_)
    async with running_bot(h, monkeypatch, env=env(llm), extensions=EXTENSIONS):
        await tell(h, f"discord:dm:{h.alice.id}", "my sister is getting married in Lisbon in June")
        world = discord_.world
        dm = Channel(world.snowflakes.next(), None, ChannelType.DM, "", parent_id=h.alice.id)
        world.channels[dm.id] = dm
        shown = await answer_of(raw_invoke(discord_, h.alice.id, None, dm.id, "memory",
                                           [{"name": "show", "type": 1, "options": []}]))
        assert "Alice's sister is getting married in Lisbon in June (our direct messages" in shown
        removed = await answer_of(raw_invoke(discord_, h.alice.id, None, dm.id, "memory", [
            {"name": "forget", "type": 1, "options": [{"name": "item", "type": 3, "value": "all"}]}]))
        assert removed.startswith("Removed everything I learnt about you: 1 fact about you.")


async def test_more_than_a_message_holds_comes_as_a_file_too(discord_: LocalDiscord, llm: FakeOpenAI,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch, env=env(llm), extensions=EXTENSIONS):
        facts = h.bot.services.facts
        me = f"discord:{h.alice.id}"
        for i in range(45):
            await facts.store.add_fact(person=me, person_name="Alice", text=f"Alice collects stamps from country {i:02d}"
                                       " and keeps them in a blue album", topic="", room=f"discord:dm:{h.alice.id}",
                                       sources=[i + 1], now=1_780_000_000.0 + i, per_person=50)
        from tests.test_voice_commands import answer_of, raw_invoke

        handle = raw_invoke(discord_, h.alice.id, h.guild.id, h.text.id, "memory",
                            [{"name": "show", "type": 1, "options": []}])
        shown = await answer_of(handle)
        assert len(shown) <= 2000 and "…and " in shown and "more." in shown
        message = handle.followups[-1]
        assert message.attachments == ["memory.txt"]
        listed = message.attachment_data[0].decode()
        assert all(f"country {i:02d}" in listed for i in range(45))  # every fact, none hidden


async def test_another_bots_words_in_voice_teach_nothing(discord_: LocalDiscord, llm: FakeOpenAI,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from bot.memory import Turn

    h = _seed(discord_)
    helper = h.guild.add_member("HelperBot", bot=True)  # another bot in the server (a music bot, say)
    async with running_bot(h, monkeypatch, env=env(llm), extensions=EXTENSIONS):
        facts = h.bot.services.facts
        await helper.join_voice(h.voice)  # in the voice channel, as a music bot would be
        await h.alice.join_voice(h.voice)
        assert (await h.command(h.alice, "join")).startswith("I'm in")
        assert facts.is_bot(f"discord:{helper.id}") and not facts.is_bot(f"discord:{h.alice.id}")
        room = f"discord:{h.guild.id}:{h.voice.id}"
        h.bot.services.memory.append(Turn(room, f"discord:{helper.id}", "HelperBot", "user", "I like jazz",
                                          Modality.VOICE, time.time()))
        await tell(h, room, "I like chess")
        assert await facts.about(f"discord:{helper.id}") == ([], [])
        assert [f.text for f in (await facts.about(f"discord:{h.alice.id}"))[0]] == ["Alice likes chess"]
        assert facts.stats.dropped >= 1  # the scripted model gave Alice the bot's jazz; refused
        await h.command(h.alice, "leave")


async def test_forget_autocomplete_offers_only_the_persons_own_matching_facts(
        discord_: LocalDiscord, llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Typing in ``/memory forget item`` on the loopback Discord: an autocomplete interaction (type 4) with
    the focused option, answered by the cog with a type-8 result the loopback checks against Discord's limits."""
    from tests.test_voice_commands import answer_of

    h = _seed(discord_)
    async with running_bot(h, monkeypatch, env=env(llm), extensions=EXTENSIONS):
        facts = h.bot.services.facts
        me, boss = f"discord:{h.alice.id}", f"discord:{h.boss.id}"
        channel_room, dm_room = f"discord:{h.guild.id}:{h.text.id}", f"discord:dm:{h.alice.id}"

        async def add(person: str, name: str, text: str, room: str, n: int) -> int:
            fact_id, _, _ = await facts.store.add_fact(person=person, person_name=name, text=text, topic="",
                                                       room=room, sources=[n], now=1_780_000_000.0 + n, per_person=50)
            return fact_id

        stamps = [await add(me, "Alice", f"Alice collects stamps from country {i:02d}", dm_room, i) for i in range(30)]
        lisbon = await add(me, "Alice", "Alice's sister is getting married in Lisbon in June", channel_room, 30)
        long_text = "Alice's sister " + "plans a very long trip along the coast, " * 5 + "and back"
        long_one = await add(me, "Alice", long_text, dm_room, 31)
        porto = await add(boss, "Boss", "Boss's sister lives in Porto", channel_room, 32)
        mine = {str(i) for i in [*stamps, lisbon, long_one]}

        async def typed(member: MemberHandle, text: str) -> list[dict[str, Any]]:
            handle = await member.type_option("memory forget", {"item": text}, focused="item", channel=h.text)
            choices = await handle.wait_choices(timeout=20.0)
            assert not handle.late
            return choices

        # Nothing typed yet: 25 at most (Discord's limit), her own facts only, "everything" last.
        offered = await typed(h.alice, "")
        assert len(offered) == 25
        assert offered[-1] == {"name": "all: everything learnt about me", "value": "all"}
        assert {c["value"] for c in offered[:-1]} <= mine
        # What she typed, in any case: only her facts that match; the long one cut to 100 characters;
        # never Boss's, and no "everything" to pick by mistake with Enter.
        sister = {c["value"]: c["name"] for c in await typed(h.alice, "SISTER")}
        assert set(sister) == {str(lisbon), str(long_one)}
        assert sister[str(lisbon)] == f"{lisbon}: Alice's sister is getting married in Lisbon in June"
        clipped = sister[str(long_one)]
        assert len(clipped) == 100 and clipped == f"{long_one}: {long_text}"[:99] + "…"
        assert await typed(h.boss, "sister") == [{"name": f"{porto}: Boss's sister lives in Porto", "value": str(porto)}]
        assert await typed(h.alice, "Porto") == []
        assert {c["value"] for c in await typed(h.alice, "country 1")} == {str(i) for i in stamps[10:20]}

        # Picking the Lisbon choice runs /memory forget with its value: exactly that fact goes.
        picked = await h.alice.invoke_command("memory forget", {"item": str(lisbon)}, channel=h.text)
        assert await answer_of(picked) == "Removed: Alice's sister is getting married in Lisbon in June"
        left = {f.id for f in (await facts.about(me))[0]}
        assert left == {*stamps, long_one}
        assert [f.id for f in (await facts.about(boss))[0]] == [porto]
        assert [c["value"] for c in await typed(h.alice, "sister")] == [str(long_one)]

        # In her Discord language: "everything" in German, found by the German word.
        discord_.world.users[h.alice.id].locale = "de"
        assert await typed(h.alice, "alles") == [{"name": "all: alles über mich Gelernte", "value": "all"}]
    assert discord_.problems == []
