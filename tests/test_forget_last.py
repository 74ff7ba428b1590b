""""Forget what I just said": the matcher in six languages, and the real agent path removing the turn and
everything drawn from it.

The agent answers through the real OpenAI engine against the loopback server (tests/fakes/openai_server.py,
which records every prompt); memory, the recall index and facts (a scripted extraction model,
tests/fakes/fact_model.py) share one database, on SQLite and on PostgreSQL. After the request, the forgotten
sentence is in no table, in no later prompt (neither the room's recent turns nor a recall from another
channel), and on SQLite in no byte of the database's files.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.agent import Agent, Incoming
from bot.agent.character import parse_character
from bot.agent.engines.openai_engine import OpenAIEngine
from bot.agent.forget import forget_request
from bot.facts import FactsService, RecallDocuments, build_facts
from bot.i18n.catalog import t
from bot.i18n.places import PlaceLanguages
from bot.memory import Memory, Modality
from bot.recall import Recall, RecallConfig
from bot.settings import load_settings
from bot.sms.inbound import SmsService, TwilioWebhooks
from bot.store import Database
from bot.voice.session import VoiceSession
from bot.voice.turns import TurnPolicy, VoiceMode
from bot.web import create_app
from tests.backends import store_db  # noqa: F401  (both backends)
from tests.fakes.fact_model import FactRule, ScriptedFactModel
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.twilio_server import sign_webhook
from tests.sms_helpers import sms_store
from tests.test_voice_session import RecordingOut, ScriptedSTT, ToneTTS, speak

MAYA = "discord:420000000000000001"
BOB = "discord:420000000000000002"
GUILD = "discord:1000:2000"
OTHER_CHANNEL = "discord:1000:2001"
VISIBLE = frozenset({GUILD, OTHER_CHANNEL})
REPLY = "Hello there, friend."  # the loopback model's streamed answer
SECRET = "Quetzalmarble"  # the forgotten sentence's word: in no table, prompt or byte afterwards
RULES = [
    FactRule(r"my sister is getting married in (\w+) in (\w+)", "{name}'s sister is getting married in {1} in {2}",
             "sister's wedding"),
    FactRule(r"my brother is getting married in (\w+)", "{name}'s brother is getting married in {1}"),
    FactRule(r"I like (\w+)", "{name} likes {1}"),
]

# ---------------------------------------------------------------------------------------- the matcher

REQUESTS = [
    ("forget what I just said", "en"),
    ("Please forget that.", "en"),
    ("Wren, forget what I just said!", "en"),
    ("hey Wren, could you please delete my last message?", "en"),
    ("FORGET WHAT I JUST SAID, please", "en"),
    ("olvida lo que acabo de decir", "es"),
    ("¡Olvida lo que acabo de decir, por favor!", "es"),
    ("Wren, olvida eso", "es"),
    ("borra mi último mensaje", "es"),
    ("oublie ce que je viens de dire", "fr"),
    ("Oubliez ça, s'il vous plaît.", "fr"),
    ("Vergiss, was ich gerade gesagt habe.", "de"),
    ("Bitte vergiss das!", "de"),
    ("Lösche meine letzte Nachricht", "de"),
    ("Kannst du das vergessen?", "de"),
    ("Oubliez ce que je viens de vous dire", "fr"),
    ("それは忘れてください", "ja"),
    ("今言ったことを消してください", "ja"),
    ("esqueça o que eu acabei de dizer", "pt"),
    ("Por favor, esquece isso.", "pt"),
    ("apaga o que eu acabei de dizer", "pt"),
    ("今言ったことは忘れてください。", "ja"),
    ("今のは忘れて", "ja"),
    ("Wren、さっき言ったことを忘れてください", "ja"),
]

NOT_REQUESTS = [
    "don't forget what I just said",
    "Please don't forget what I just said!",
    "did you forget what I just said?",
    "I hope you won't forget what I just said about my sister",
    "forget what I just said about the party, the real plan is Friday",
    "forget it",
    "delete that",  # erasing "that" may be about anything: only what was said
    "borra eso",
    "efface ça",
    "lösch das",
    "apaga isso",
    "それを消して",
    "no olvides lo que acabo de decir",
    "¿olvidaste lo que acabo de decir?",
    "n'oublie pas ce que je viens de dire",
    "tu as oublié ce que je viens de dire ?",
    "Vergiss nicht, was ich gerade gesagt habe",
    "Hast du vergessen, was ich gerade gesagt habe?",
    "não esqueça o que eu acabei de dizer",
    "você esqueceu o que eu acabei de dizer?",
    "今言ったことを忘れないで",
    "今言ったこと忘れた？",
    "",
    "forget what I just said " * 10,
]


@pytest.mark.parametrize(("text", "language"), REQUESTS)
def test_the_request_is_recognised_in_each_language(text: str, language: str) -> None:
    assert forget_request(text, ("Wren",)) == language


@pytest.mark.parametrize("text", NOT_REQUESTS)
def test_negations_questions_and_longer_sentences_are_not_the_request(text: str) -> None:
    assert forget_request(text, ("Wren",)) is None


def test_a_huge_message_is_never_a_request() -> None:
    assert forget_request("forget what I just said" + " " * 100_000) is None
    assert forget_request("x" * 100_000 + " forget what I just said") is None


def test_the_confirmations_exist_in_every_shipped_language() -> None:
    for language in ("en", "de", "fr", "es", "pt", "ja"):
        assert t("forget_last.done", language) != t("forget_last.nothing", language)
    assert t("forget_last.done", "es") == "Hecho — lo he olvidado."


# ---------------------------------------------------------------------------------------- the agent path


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        self.now += 1.0  # every turn a second after the one before: summaries' spans are exact
        return self.now


@dataclass
class Rig:
    fake: FakeOpenAI
    model: ScriptedFactModel
    memory: Memory
    store: Database
    recall: Recall
    agent: Agent
    facts: FactsService

    async def say(self, room: str, speaker: str, name: str, text: str, *,
                  visible: frozenset[str] | None = VISIBLE, language: str | None = None) -> str:
        reply = self.agent.reply(Incoming(room, speaker, name, text, Modality.TEXT, language=language,
                                          visible=visible))
        said = await reply.collect()
        reply.finish()
        await self.facts.wait_idle()
        return said

    def prompts(self) -> list[str]:
        """Every streamed (reply) request's whole prompt, in order."""
        return ["\n".join(m["content"] for m in r.body["messages"]) for r in self.fake.completion_requests
                if r.body and r.body.get("stream")]

    async def rows_with(self, word: str) -> list[tuple[str, str]]:
        found = []
        for table in sorted(await self.store.tables()):
            if table.startswith("recall_fts"):
                continue  # FTS5's own shadow tables: checked as bytes on disk
            for row in await self.store.query(f'SELECT * FROM "{table}"'):
                flat = " ".join(str(v) for v in tuple(row))
                if word.lower() in flat.lower():
                    found.append((table, flat[:80]))
        return found


@pytest.fixture
async def rig(store_db: Database) -> AsyncIterator[Rig]:  # noqa: F811
    model = ScriptedFactModel(RULES)
    fake = FakeOpenAI(responder=model)
    await fake.start()
    memory = await Memory.open(store_db)
    recall = Recall(store_db, RecallConfig(budget_ms=5000), linked=memory.identities_of)
    await recall.start()
    memory.on_stored.append(recall.on_stored)
    engine = OpenAIEngine(api_key=fake.api_key, base_url=fake.base_url, model="gpt-test")
    agent = Agent(parse_character({"name": "Wren"}), engine, memory, clock=Clock(), context_budget=5.0)
    agent.recall = recall
    settings = load_settings({"OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url,
                              "OPENAI_MODEL": "gpt-test", "FACTS_DEBOUNCE_SECONDS": "0"}, env_file=None)
    facts = await build_facts(settings, agent, store_db, documents=RecallDocuments(recall))
    assert facts is not None
    facts.clock = agent.clock
    made = Rig(fake, model, memory, store_db, recall, agent, facts)
    try:
        yield made
    finally:
        await facts.aclose()
        await agent.aclose()
        await memory.aclose()
        await recall.aclose()
        await fake.close()


def on_disk(db: Database, needle: str) -> list[str]:
    path = getattr(db, "path", None)
    assert path is not None
    found = []
    for suffix in ("", "-wal", "-shm"):
        part = Path(str(path) + suffix)
        if part.exists() and needle.encode() in part.read_bytes():
            found.append(part.name)
    return found


async def vacuumed(db: Database) -> set[str]:
    """PostgreSQL's record of the tables a VACUUM ran on (its statistics may lag: polled, with a deadline
    that only guards a failure)."""
    wanted = {"turns", "recall_docs", "facts", "summaries"}
    deadline = time.monotonic() + 20
    while True:
        done = {r[0] for r in await db.query("SELECT relname FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL")}
        if wanted <= done or time.monotonic() > deadline:
            return done
        await asyncio.sleep(0.1)


async def test_a_text_request_removes_the_turn_its_reply_facts_summaries_and_recall_everywhere(rig: Rig) -> None:
    rig.fake.reply_tokens = ["How lovely, ", f"{SECRET} ", "in June!"]  # the reply names it too
    await rig.say(GUILD, MAYA, "Maya", f"my sister is getting married in {SECRET} in June")
    rig.fake.reply_tokens = ["Noted."]
    await rig.say(GUILD, BOB, "Bob", "my brother is getting married in Porto")
    await rig.say(GUILD, BOB, "Bob", "I like trains")
    facts, _ = await rig.facts.about(MAYA)
    assert [f.text for f in facts] == [f"Maya's sister is getting married in {SECRET} in June"]
    summary = await rig.facts.summarize_session(GUILD, rig.agent.clock.now - 100, rig.agent.clock.now + 1)
    assert summary is not None
    await rig.recall.flush()
    assert await rig.rows_with(SECRET)  # the checks below can see what they look for
    if rig.store.dialect == "sqlite":
        assert on_disk(rig.store, SECRET)
    requests_before = len(rig.fake.completion_requests)

    answer = await rig.say(GUILD, MAYA, "Maya", "Wren, forget what I just said!")

    assert answer == "Done — I've forgotten that."
    assert len(rig.fake.completion_requests) == requests_before  # the request never reached a model
    turns = await rig.memory.recent(GUILD, 20)
    assert [(t.speaker_id, t.text) for t in turns] == [
        (BOB, "my brother is getting married in Porto"), ("agent", "Noted."), (BOB, "I like trains"),
        ("agent", "Noted.")]  # her turn and the reply to it are gone; the request was never stored
    assert await rig.rows_with(SECRET) == []
    assert await rig.rows_with("forget what") == []
    assert (await rig.facts.about(MAYA)) == ([], [])  # her fact, and the summary of the session it was in
    assert sorted(f.text for f in (await rig.facts.about(BOB))[0]) == [
        "Bob likes trains", "Bob's brother is getting married in Porto"]
    assert (await rig.facts.about(BOB))[1] == []

    # Later prompts: the room's recent turns, and recall from another channel of the server, know the
    # brother's wedding (recall works) and nothing of the sister's.
    await rig.say(GUILD, MAYA, "Maya", "who is getting married?")
    await rig.say(OTHER_CHANNEL, MAYA, "Maya", "who is getting married, remind me?")
    here, elsewhere = rig.prompts()[-2:]
    assert "Porto" in here and "Porto" in elsewhere
    assert "brother is getting married in Porto" in elsewhere.split("getting married, remind me")[0]
    for prompt in rig.prompts()[requests_before:]:
        assert SECRET not in prompt and "sister" not in prompt and "forget what" not in prompt
    if rig.store.dialect == "sqlite":
        assert on_disk(rig.store, SECRET) == []  # and no byte of it in the database's files
    else:
        assert {"turns", "recall_docs", "facts", "summaries"} <= await vacuumed(rig.store)


async def test_nothing_to_forget_then_once_then_twice(rig: Rig) -> None:
    nothing = "There's nothing to forget: I have nothing new that you said here."
    assert await rig.say(GUILD, MAYA, "Maya", "forget what I just said") == nothing
    assert await rig.memory.count(GUILD) == 0
    await rig.say(GUILD, MAYA, "Maya", "I like tea")
    await rig.say(GUILD, MAYA, "Maya", f"I like {SECRET}")
    assert await rig.say(GUILD, MAYA, "Maya", "please forget that") == "Done — I've forgotten that."
    # Asked again: the turn before is not taken; there is nothing new to forget, said once.
    assert await rig.say(GUILD, MAYA, "Maya", "Forget what I just said.") == nothing
    assert [t.text for t in await rig.memory.recent(GUILD, 10)] == ["I like tea", REPLY]
    assert [f.text for f in (await rig.facts.about(MAYA))[0]] == ["Maya likes tea"]
    # Something new said: that can be forgotten again.
    await rig.say(GUILD, MAYA, "Maya", "I like chess")
    assert await rig.say(GUILD, MAYA, "Maya", "forget what I just said") == "Done — I've forgotten that."
    assert [t.text for t in await rig.memory.recent(GUILD, 10)] == ["I like tea", REPLY]
    assert await rig.rows_with(SECRET) == [] and await rig.rows_with("chess") == []


async def test_only_the_speakers_own_turn_in_this_room_goes(rig: Rig) -> None:
    await rig.say(GUILD, MAYA, "Maya", "I like tea")
    await rig.say(OTHER_CHANNEL, MAYA, "Maya", "I like rain")
    await rig.say(GUILD, BOB, "Bob", "I like trains")
    assert await rig.say(GUILD, MAYA, "Maya", "olvida lo que acabo de decir") == "Hecho — lo he olvidado."
    assert [t.text for t in await rig.memory.recent(GUILD, 10)] == ["I like trains", REPLY]
    assert [t.text for t in await rig.memory.recent(OTHER_CHANNEL, 10)] == ["I like rain", REPLY]
    # The channel's language wins over the phrase's when the channel chose one.
    assert await rig.say(GUILD, BOB, "Bob", "forget that", language="de") == "Erledigt — das habe ich vergessen."


async def test_a_100000_character_message_is_forgotten_to_the_last_byte(rig: Rig) -> None:
    huge = f"{SECRET} " + "word " * 20_000  # 100,000+ characters
    assert len(huge) > 100_000
    await rig.say(GUILD, MAYA, "Maya", "I like tea")
    await rig.say(GUILD, MAYA, "Maya", huge)
    assert rig.prompts()[-1].count("word") < 1_000  # the engine got it shortened, memory the whole
    await rig.recall.flush()
    assert await rig.rows_with(SECRET)
    if rig.store.dialect == "sqlite":
        assert on_disk(rig.store, SECRET)
    assert await rig.say(GUILD, MAYA, "Maya", "forget what I just said") == "Done — I've forgotten that."
    assert [t.text for t in await rig.memory.recent(GUILD, 10)] == ["I like tea", REPLY]
    assert await rig.rows_with(SECRET) == []
    if rig.store.dialect == "sqlite":
        assert on_disk(rig.store, SECRET) == []
    await rig.say(GUILD, MAYA, "Maya", "what did I say?")
    assert SECRET not in rig.prompts()[-1]


async def test_a_turn_still_queued_is_forgotten_and_never_written(rig: Rig) -> None:
    await rig.say(GUILD, MAYA, "Maya", "I like tea")
    await rig.memory.flush()
    # The database goes away: the next turn waits on memory's queue.
    real = rig.memory.turns.insert_many

    async def away(turns: object) -> list[int]:
        raise ConnectionError("the database is away")

    rig.memory.turns.insert_many = away  # type: ignore[method-assign]
    reply = rig.agent.reply(Incoming(GUILD, MAYA, "Maya", f"I like {SECRET}", Modality.TEXT))
    await reply.collect()
    reply.finish()
    assert rig.memory.pending == 2
    assert await rig.say(GUILD, MAYA, "Maya", "forget what I just said") == "Done — I've forgotten that."
    assert rig.memory.pending == 0
    rig.memory.turns.insert_many = real  # type: ignore[method-assign]
    await rig.say(GUILD, MAYA, "Maya", "I like chess")
    await rig.memory.flush()
    assert [t.text for t in await rig.memory.recent(GUILD, 10)] == [
        "I like tea", REPLY, "I like chess", REPLY]
    assert await rig.rows_with(SECRET) == []


async def test_a_reply_still_being_written_is_not_stored_once_its_question_is_forgotten(rig: Rig) -> None:
    first = rig.agent.reply(Incoming(GUILD, MAYA, "Maya", f"I like {SECRET}", Modality.TEXT))
    assert await rig.say(GUILD, MAYA, "Maya", "forget what I just said") == "Done — I've forgotten that."
    await first.collect()
    first.finish()  # the answer arrives after its question was forgotten: not kept
    assert await rig.memory.count(GUILD) == 0
    assert await rig.rows_with(SECRET) == []


async def test_a_step_that_fails_after_the_turn_is_gone_is_finished_by_the_next_request(rig: Rig) -> None:
    await rig.say(GUILD, MAYA, "Maya", f"I like {SECRET}")
    assert [f.text for f in (await rig.facts.about(MAYA))[0]] == [f"Maya likes {SECRET}"]
    failures = [ConnectionError("the facts tables are locked")]

    async def flaky(room: str, gone: object) -> None:
        if failures:
            raise failures.pop()

    rig.agent.forget_listeners.insert(0, flaky)
    failed = "I couldn't forget that just now (my memory isn't reachable). Please ask again in a moment."
    assert await rig.say(GUILD, MAYA, "Maya", "forget what I just said") == failed
    assert await rig.memory.count(GUILD) == 0
    assert await rig.rows_with(SECRET)  # the learnt fact is still there: not done, and they were told
    assert await rig.say(GUILD, MAYA, "Maya", "forget what I just said") == "Done — I've forgotten that."
    assert await rig.rows_with(SECRET) == [] and (await rig.facts.about(MAYA)) == ([], [])
    if rig.store.dialect == "sqlite":
        assert on_disk(rig.store, SECRET) == []


async def test_a_speculative_request_forgets_nothing_until_the_turn_is_over(rig: Rig) -> None:
    await rig.say(GUILD, MAYA, "Maya", f"I like {SECRET}")
    thrown = rig.agent.reply(Incoming(GUILD, MAYA, "Maya", "forget what I just said", Modality.VOICE), remember=False)
    task = asyncio.ensure_future(thrown.collect())
    await rig.memory.flush()
    task.cancel()  # the person went on talking: the guess is thrown away
    await asyncio.gather(task, return_exceptions=True)
    await thrown.aclose()
    assert await rig.memory.count(GUILD) == 2
    kept = rig.agent.reply(Incoming(GUILD, MAYA, "Maya", "forget what I just said", Modality.VOICE), remember=False)
    kept.remember_incoming()  # the turn is over: this is the answer
    assert await kept.collect() == "Done — I've forgotten that."
    assert await rig.memory.count(GUILD) == 0


# ---------------------------------------------------------------------------------------- voice and SMS


async def test_said_in_a_voice_channel_it_is_forgotten_and_the_confirmation_spoken(rig: Rig) -> None:
    room = "discord:1000:3000"
    stt = ScriptedSTT({7: [f"my sister is getting married in {SECRET} in June", "Wren, forget what I just said.",
                           "where is the wedding?"]})
    out = RecordingOut()
    session = VoiceSession(room=room, agent=rig.agent, memory=rig.memory, stt=stt, tts=ToneTTS(), out=out,
                           policy=TurnPolicy(bot_names=("Wren",), mode=VoiceMode.ALWAYS),
                           name_of=lambda uid: "Maya", humans_present=lambda: 1,
                           speaker_id=lambda uid: MAYA)
    try:
        for n in (1, 2, 3):
            speak(session, 7)
            async with session.answered:
                await session.answered.wait_for(lambda: session.turns_done >= n)
        await rig.facts.wait_idle()
    finally:
        await session.aclose()
    assert [text for text, _ in out.played] == ["Hello there,", "friend.", "Done — I've forgotten that.",
                                                "Hello there,", "friend."]
    assert [(t.role, t.text) for t in await rig.memory.recent(room, 10)] == [
        ("user", "where is the wedding?"), ("assistant", REPLY)]
    assert [t.modality for t in await rig.memory.recent(room, 10)] == [Modality.VOICE, Modality.VOICE]
    last = rig.prompts()[-1]
    assert "where is the wedding?" in last and SECRET not in last and "forget" not in last
    assert await rig.rows_with(SECRET) == [] and (await rig.facts.about(MAYA)) == ([], [])
    if rig.store.dialect == "sqlite":
        assert on_disk(rig.store, SECRET) == []


THEM = "+15553334444"
TOKEN = "forget-test-token"
PUBLIC = "https://bot.example.com"


async def test_texted_by_sms_in_spanish_it_is_forgotten_and_confirmed_by_sms(rig: Rig) -> None:
    store = await sms_store(rig.store)
    service = SmsService(agent=rig.agent, memory=rig.memory, store=store, sender=None, rate_limit=10)
    service.languages = await PlaceLanguages.open(rig.store, "en")
    app = create_app(webhooks=TwilioWebhooks(service, auth_token=TOKEN, public_url=PUBLIC))
    answers: list[list[str]] = []
    try:
        async with TestClient(TestServer(app)) as client:
            for i, body in enumerate([f"mi hermana se casa en {SECRET}", "¡Olvida lo que acabo de decir!",
                                      "¿quién se casa?"]):
                form = {"MessageSid": f"SM{i:032d}", "AccountSid": "AC" + "4" * 32, "From": THEM,
                        "To": "+15550009999", "Body": body, "NumMedia": "0"}
                resp = await client.post("/twilio/sms", data=form, headers={
                    "X-Twilio-Signature": sign_webhook(TOKEN, PUBLIC + "/twilio/sms", form)})
                assert resp.status == 200
                answers.append(re.findall(r"<Message>(.*?)</Message>", await resp.text(), re.DOTALL))
                await service.wait_idle()
    finally:
        await service.aclose()
        await service.languages.aclose()
    assert answers[1] == ["Hecho — lo he olvidado."]
    room = f"sms:{THEM}"
    assert [(t.role, t.text) for t in await rig.memory.recent(room, 10)] == [
        ("user", "¿quién se casa?"), ("assistant", REPLY)]
    last = rig.prompts()[-1]
    assert "quién se casa" in last and SECRET not in last and "Olvida" not in last
    assert await rig.rows_with(SECRET) == []
    if rig.store.dialect == "sqlite":
        assert on_disk(rig.store, SECRET) == []


# ---------------------------------------------------------------------------------------- the whole bot


async def test_the_real_bot_in_a_text_channel_forgets_and_confirms_in_the_channel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.loopback.server import LocalDiscord
    from tests.test_chat_bounds import _openai_env, _wait_for, running_bot

    async with FakeOpenAI() as fake, LocalDiscord(token="loopback.forgetbot.0123456789abcdef") as d:
        async with running_bot(d, monkeypatch, {**_openai_env(fake), "FACTS_DEBOUNCE_SECONDS": "0"}) as bot:
            alice = bot.guild.add_member("Alice")
            memory = bot.services.memory
            mention = f"<@{d.bot_user_id}>"

            async def turns(n: int) -> bool:
                return len(await memory.recent(bot.room, 10)) == n

            await alice.send_message(bot.text, f"{mention} my sister is getting married in {SECRET} in June")
            await _wait_for(lambda: len(bot.text.bot_messages) == 1, "the first reply")
            await _wait_for(lambda: turns(2), "the first exchange stored")
            await alice.send_message(bot.text, f"{mention} forget what I just said, please")
            await _wait_for(lambda: len(bot.text.bot_messages) == 2, "the confirmation")
            assert bot.text.bot_messages[-1].content == "Done — I've forgotten that."
            assert await memory.recent(bot.room, 10) == []
            requests = len(fake.completion_requests)
            await alice.send_message(bot.text, f"{mention} where is the wedding?")
            await _wait_for(lambda: len(bot.text.bot_messages) == 3, "the next reply")
            await _wait_for(lambda: turns(2), "the next exchange stored")
            prompts = [r.body for r in fake.completion_requests[requests:] if r.body and r.body.get("stream")]
            assert prompts and all(SECRET not in str(body) and "forget what I" not in str(body) for body in prompts)
            store = bot.services.store
            for table in ("turns", "recall_docs", "facts"):
                if table in await store.tables():
                    assert not [r for r in await store.query(f"SELECT * FROM {table}") if SECRET in str(tuple(r))]
        assert d.problems == []
