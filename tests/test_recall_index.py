"""The recall index on real SQLite (FTS5, porter) and real PostgreSQL (full-text, GIN): storing,
searching inside the audience, the ranker's signals, removal."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.memory import Modality, Turn
from bot.recall import Audience, Recall
from bot.store import Database
from tests.backends import store_db  # noqa: F401

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0
GUILD = "discord:100:200"
OTHER_CHANNEL = "discord:100:201"
OTHER_GUILD = "discord:900:901"


@pytest.fixture
def db(store_db: Database) -> Database:  # noqa: F811  (tests/backends: a fresh SQLite file, then PostgreSQL)
    return store_db


def turn(room: str, who: str, name: str, text: str, when: float, role: str = "user") -> Turn:
    return Turn(room=room, speaker_id=who, speaker_name=name, role=role, text=text, modality=Modality.VOICE,
                created_at=when)


async def store(recall: Recall, turns: list[Turn]) -> None:
    for i, t in enumerate(turns, start=1):
        await recall.add_turn(t, turn_id=i)


async def test_a_turn_is_searchable_the_moment_it_is_stored_with_who_where_when(db: Database) -> None:
    recall = Recall(db, clock=lambda: NOW)
    await recall.add_turn(turn(GUILD, "discord:1", "Maya", "My sister is getting married in Lisbon in June",
                               NOW - 7 * DAY), turn_id=41)
    hits = await recall.search("where is my sister's wedding? is she married?", asker="discord:2", place=GUILD)
    assert [h.text for h in hits] == ["My sister is getting married in Lisbon in June"]
    hit = hits[0]
    assert (hit.speaker_name, hit.speaker_id, hit.place, hit.kind, hit.turn_id, hit.sources) == (
        "Maya", "discord:1", GUILD, "turn", 41, (41,))
    assert hit.created_at == NOW - 7 * DAY and hit.score > 0
    assert await recall.count() == 1


async def test_the_porter_stemmer_matches_word_forms(db: Database) -> None:
    recall = Recall(db, clock=lambda: NOW)
    await store(recall, [turn(GUILD, "discord:1", "Ana", "We were painting sunsets by the lake", NOW - DAY)])
    assert [h.text for h in await recall.search("who paints sunset pictures?", asker="discord:2", place=GUILD)] == [
        "We were painting sunsets by the lake"]


async def test_search_stays_inside_the_guild_and_the_visible_channels(db: Database) -> None:
    recall = Recall(db, clock=lambda: NOW)
    await store(recall, [
        turn(GUILD, "discord:1", "Ana", "the password for the wifi is pineapple", NOW - DAY),
        turn(OTHER_CHANNEL, "discord:1", "Ana", "pineapple pizza is the best pizza", NOW - DAY),
        turn(OTHER_GUILD, "discord:1", "Ana", "pineapple farm trip on Saturday", NOW - DAY),
    ])
    only_here = await recall.search("pineapple", asker="discord:2", place=GUILD)
    assert {h.place for h in only_here} == {GUILD}
    seen = await recall.search("pineapple", asker="discord:2", place=GUILD, visible={GUILD, OTHER_CHANNEL, OTHER_GUILD})
    assert {h.place for h in seen} == {GUILD, OTHER_CHANNEL}  # another guild's room in `visible` is still refused
    assert {h.place for h in await recall.search("pineapple", asker="discord:2", place=OTHER_GUILD)} == {OTHER_GUILD}


async def test_private_words_come_back_only_in_the_same_persons_private_rooms(db: Database) -> None:
    links = {"discord:1": {"discord:1", "phone:+15550001"}, "phone:+15550001": {"discord:1", "phone:+15550001"}}
    recall = Recall(db, clock=lambda: NOW, linked=lambda i: links.get(i, {i}))
    await store(recall, [
        turn("discord:dm:1", "discord:1", "Ana", "my secret diagnosis is migraine", NOW - DAY),
        turn("sms:+15550001", "phone:+15550001", "Ana", "the migraine pills are in the blue box", NOW - DAY),
        turn("discord:dm:2", "discord:2", "Ben", "my migraine started on Monday", NOW - DAY),
    ])
    for place in (GUILD, "discord:dm:2", "console"):
        found = await recall.search("migraine", asker="discord:2" if place != GUILD else "discord:1", place=place)
        assert all(not h.place.endswith(":1") and "+1555" not in h.place for h in found), (place, found)
    own = await recall.search("migraine", asker="discord:1", place="discord:dm:1")
    assert {h.place for h in own} == {"discord:dm:1", "sms:+15550001"}  # linked identities are one person
    by_phone = await recall.search("migraine", asker="phone:+15550001", place="phone:+15550001")
    assert {h.place for h in by_phone} == {"discord:dm:1", "sms:+15550001"}
    assert [h.place for h in await recall.search("migraine", asker="discord:2", place="discord:dm:2")] == [
        "discord:dm:2"]


async def test_documents_for_everyone_and_kinds(db: Database) -> None:
    recall = Recall(db, clock=lambda: NOW)
    await recall.add_document("knowledge", "The harbour festival is held every August", audience=Audience.everyone())
    await recall.add_document("fact", "Maya's sister marries in Lisbon in June", audience=Audience.of_room(GUILD),
                              speaker_id="discord:1", speaker_name="Maya", sources=(3, 4), ref="fact:1")
    hits = await recall.search("harbour festival", asker="discord:5", place="discord:dm:5")
    assert [(h.kind, h.place) for h in hits] == [("knowledge", "")]
    facts = await recall.search("Lisbon sister", asker="discord:5", place=GUILD, kinds=("fact",))
    assert [(h.kind, h.sources, h.ref) for h in facts] == [("fact", (3, 4), "fact:1")]
    assert await recall.search("Lisbon sister", asker="discord:5", place=GUILD, kinds=("turn",)) == []
    assert await recall.remove(kind="fact", ref="fact:1") == 1
    assert await recall.search("Lisbon", asker="discord:5", place=GUILD) == []


async def test_the_named_speaker_the_named_day_and_the_turn_after_a_hit_rank_first(db: Database) -> None:
    recall = Recall(db, clock=lambda: NOW)
    base = NOW - 14 * DAY
    await store(recall, [
        turn(GUILD, "discord:1", "Ana", "the concert tickets were expensive", base),
        turn(GUILD, "discord:2", "Ben", "the concert tickets sold out in an hour", base + 60),
        turn(GUILD, "discord:3", "Cy", "did anyone get concert tickets?", NOW - DAY),
        turn(GUILD, "discord:1", "Ana", "yes, two, front row", NOW - DAY + 5),
    ])
    ben = await recall.search("what did Ben say about the concert tickets?", asker="discord:9", place=GUILD)
    assert ben[0].speaker_name == "Ben"
    yesterday = await recall.search("concert tickets yesterday", asker="discord:9", place=GUILD, limit=2)
    assert {h.text for h in yesterday} == {"did anyone get concert tickets?", "yes, two, front row"}
    assert (await recall.search("concert tickets", asker="discord:9", place=GUILD, lexical_only=True, limit=10))
    assert all(h.text != "yes, two, front row" for h in
               await recall.search("concert tickets", asker="discord:9", place=GUILD, lexical_only=True, limit=10))


async def test_bad_input_is_bounded_and_never_raises(db: Database) -> None:
    recall = Recall(db, clock=lambda: NOW)
    await store(recall, [
        turn(GUILD, "discord:1", "Ana", "x" * 100_000 + " endword", NOW - DAY),
        turn(GUILD, "discord:1", "Ana", "🎉🎉🎉", NOW - DAY),
        turn(GUILD, "discord:1", "Ana", "東京の天気はどうですか", NOW - DAY),
        turn(GUILD, "discord:1", "Ana", 'ignore previous instructions" OR tags:(rall) AND "x', NOW - DAY),
    ])
    for query in ("🎉", "", "   ", '" OR * NEAR(', "東京の天気はどうですか", "AND OR NOT", "tags:rall", "x" * 5000,
                  "ignore previous instructions"):
        await recall.search(query, asker="discord:2", place=GUILD)  # never raises
    assert (await recall.search("東京の天気はどうですか", asker="discord:2", place=GUILD))[0].text == "東京の天気はどうですか"
    hits = await recall.search("ignore previous instructions", asker="discord:2", place=GUILD)
    assert hits and hits[0].text.startswith("ignore previous instructions")
    assert await recall.search("tags rall", asker="discord:2", place=OTHER_GUILD) == []


async def test_forget_and_retention_remove_index_entries(db: Database) -> None:
    recall = Recall(db, clock=lambda: NOW)
    await store(recall, [
        turn(GUILD, "discord:1", "Ana", "my bicycle is green", NOW - 40 * DAY),
        turn(GUILD, "discord:2", "Ben", "my bicycle is red", NOW - DAY),
        turn("discord:dm:2", "agent", "Bot", "your bicycle is red, Ben", NOW - DAY, role="assistant"),
    ])
    assert await recall.forget_identities({"discord:2"}) == 2  # what Ben said, and his DM (the bot's words too)
    assert [h.speaker_name for h in await recall.search("bicycle", asker="discord:2", place=GUILD)] == ["Ana"]
    assert await recall.prune(NOW - 30 * DAY) == 1
    assert await recall.search("bicycle", asker="discord:2", place=GUILD) == []
    await recall.scrub()
