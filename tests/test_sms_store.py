"""SMS bookkeeping on both backends: dedupe, the state machine, leases, rate limit, opt-outs, link codes.

Every test runs on the SQLite file and on a fresh PostgreSQL database (the same statements, the same
answers). Leases are judged with a test clock; owners are named as processes on another machine
unless a test is about this machine's dead processes.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.privacy import open_opt_outs
from bot.sms.store import LINK_CODE_TTL, RATE_WINDOW, Admission, Claim, SmsStore, open_sms_store
from bot.store import Database, SqliteDatabase, open_database
from bot.store.leases import LeaseOwner, owner_alive, process_prefix
from bot.store.sms import MIGRATIONS, UNFINISHED
from tests.backends import store_db  # noqa: F401  (both backends)

NUMBER = "+15551230001"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def elsewhere(name: str) -> LeaseOwner:
    """An owner on another machine: judged by its lease's expiry only."""
    return LeaseOwner(f"other-host-{name}/boot/1234/99/{name}")


@pytest.fixture
def db(store_db: Database) -> Database:  # noqa: F811  (tests/backends: a fresh SQLite file, then PostgreSQL)
    return store_db


async def store_on(db: Database, clock: Clock | None = None, owner: LeaseOwner | None = None,
                   lease: float = 30.0) -> SmsStore:
    return await open_sms_store(db, opt_outs=await open_opt_outs(db), clock=clock or Clock(),
                                owner=owner or elsewhere("a"), lease=lease)


async def test_claim_records_the_text_and_dedupes_finished_messages(db: Database) -> None:
    clock = Clock()
    store = await store_on(db, clock)
    assert await store.claim("SM1", NUMBER, "hello there") is Claim.NEW
    # Seen, not finished, and ours: a retry reaching us must finish it (the service checks its tasks).
    assert await store.claim("SM1", NUMBER, "hello there") is Claim.UNFINISHED
    [pending] = await store.unfinished()
    assert (pending.message_sid, pending.from_number, pending.body, pending.state) == ("SM1", NUMBER, "hello there",
                                                                                        "received")
    assert await store.advance("SM1", "received", "accepted")
    assert await store.advance("SM1", "accepted", "replying")
    assert not await store.advance("SM1", "accepted", "replying")  # not in that state any more: one winner
    assert await store.advance("SM1", "replying", "sending", reply=["part one", "part two"], sent_segments=0)
    assert await store.segment_sent("SM1", 1)
    pending = await store.pending("SM1")
    assert pending is not None and pending.reply == ("part one", "part two") and pending.sent_segments == 1
    assert await store.advance("SM1", "sending", "answered")
    assert await store.claim("SM1", NUMBER, "hello there") is Claim.DONE
    assert await store.unfinished() == [] and await store.pending("SM1") is None
    # A finished row keeps no text, no reply and no lease.
    row = await db.query_one("SELECT body, reply, lease_owner, lease_until FROM sms_messages WHERE message_sid = ?",
                             ("SM1",))
    assert tuple(row) == (None, None, None, None)
    assert await store.claim("SM2", NUMBER) is Claim.NEW
    assert await store.counts_by_state() == {"answered": 1, "received": 1}


async def test_a_retry_of_a_message_a_live_process_answers_is_not_taken(db: Database) -> None:
    clock = Clock()
    first = await store_on(db, clock, elsewhere("first"))
    second = await store_on(db, clock, elsewhere("second"))
    assert await first.claim("SM1", NUMBER, "hi") is Claim.NEW
    assert await second.claim("SM1", NUMBER, "hi") is Claim.ELSEWHERE
    assert await second.take_unfinished() == []  # the sweep leaves it too
    assert not await second.advance("SM1", "received", "accepted")  # and cannot move it
    clock.now += 20
    assert await first.renew(["SM1"]) == 1  # a live holder keeps what it works on...
    assert await first.renew(["SMother"]) == 0 and await first.renew() == 1
    clock.now += 20
    assert await second.claim("SM1", NUMBER, "hi") is Claim.ELSEWHERE
    assert await first.advance("SM1", "received", "accepted")


async def test_a_dead_holders_message_is_taken_after_its_lease_and_the_old_holder_cannot_move_it(db: Database) -> None:
    clock = Clock()
    dead = await store_on(db, clock, elsewhere("dead"))
    live = await store_on(db, clock, elsewhere("live"))
    for i in range(3):
        assert await dead.claim(f"SM{i}", NUMBER, f"text {i}") is Claim.NEW
    assert await dead.advance("SM0", "received", "accepted")
    clock.now += 29
    assert await live.take_unfinished() == []
    clock.now += 2  # past the lease: no renewal came
    taken = await live.take_unfinished(limit=2)
    assert [p.message_sid for p in taken] == ["SM0", "SM1"] and taken[0].state == "accepted"
    assert await live.claim("SM2", NUMBER, "text 2") is Claim.UNFINISHED  # a Twilio retry takes the third
    assert await live.take_unfinished() == []  # all three are the live one's now
    # The old holder, back from a long pause, can neither move nor renew nor send any of them.
    assert not await dead.advance("SM0", "accepted", "replying")
    assert await dead.renew() == 0 and not await dead.holds("SM1")
    assert await live.holds("SM1") and await live.advance("SM0", "accepted", "replying")
    assert [p.message_sid for p in await live.held()] == ["SM0", "SM1", "SM2"]


async def test_two_sweepers_at_once_take_each_message_once(db: Database) -> None:
    clock = Clock()
    dead = await store_on(db, clock, elsewhere("dead"))
    for i in range(40):
        await dead.claim(f"SM{i:02d}", f"+1555000{i:04d}", "hi")
    clock.now += 31
    sweepers = [await store_on(db, clock, elsewhere(f"s{k}")) for k in range(4)]
    results = await asyncio.gather(*(s.take_unfinished(limit=15) for s in sweepers for _ in range(2)))
    sids = [p.message_sid for batch in results for p in batch]
    assert sorted(sids) == [f"SM{i:02d}" for i in range(40)]  # every one taken, none twice


async def test_a_released_message_waits_then_is_free(db: Database) -> None:
    clock = Clock()
    a = await store_on(db, clock, elsewhere("a"))
    b = await store_on(db, clock, elsewhere("b"))
    await a.claim("SM1", NUMBER, "x")
    await a.claim("SM2", NUMBER, "y")
    assert await a.release("SM1", not_before=600) == 1  # Twilio could not say: nobody retries for a while
    assert await a.release("SM2") == 1  # a drain: free at once
    assert [p.message_sid for p in await b.take_unfinished()] == ["SM2"]
    assert await b.set_state("SM2", "ignored")
    clock.now += 601
    assert [p.message_sid for p in await b.take_unfinished()] == ["SM1"]


async def test_an_owner_dead_on_this_machine_is_taken_over_before_its_lease_ends(db: Database, tmp_path: Path) -> None:
    clock = Clock()
    # A real process that claims a message and exits: its lease has 30 s to run, but it is provably gone.
    script = tmp_path / "claim.py"
    script.write_text(
        "import asyncio, sys\n"
        "from bot.store import open_database\n"
        "from bot.sms.store import open_sms_store\n"
        "async def main():\n"
        "    db = await open_database(sys.argv[1])\n"
        "    store = await open_sms_store(db, clock=lambda: float(sys.argv[2]))\n"
        "    print(await store.claim('SMdead', '+15550001111', 'hello'), store.owner.name)\n"
        "    await db.close()\n"
        "asyncio.run(main())\n")
    where = str(db.path) if isinstance(db, SqliteDatabase) else db.url  # type: ignore[attr-defined]
    out = subprocess.run([sys.executable, str(script), where, repr(clock.now)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert out.returncode == 0, out.stderr
    status, name = out.stdout.split()
    assert status == "new" and name.startswith(process_prefix().rsplit("/", 2)[0])  # same host and boot
    assert owner_alive(name) is False
    live = await store_on(db, clock, LeaseOwner())
    assert [p.message_sid for p in await live.take_unfinished()] == ["SMdead"]


def test_owners_in_this_process_live_until_retired_and_elsewhere_is_unknown() -> None:
    owner = LeaseOwner()
    assert owner_alive(owner.name) is True
    owner.retire()
    assert owner_alive(owner.name) is False
    assert owner_alive(elsewhere("x").name) is None
    assert owner_alive("not an owner") is None


async def test_a_forgotten_message_cannot_move_on(db: Database) -> None:
    store = await store_on(db)
    await store.claim("SM1", NUMBER, "secret words")
    await store.advance("SM1", "received", "accepted")
    counts = await store.forget([f"phone:{NUMBER}"])
    assert counts["sms record"] == 1
    assert not await store.advance("SM1", "accepted", "replying")
    assert not await store.segment_sent("SM1", 1)
    assert not await store.holds("SM1")


async def test_rate_limit_notes_once_then_silence_until_window_passes(db: Database) -> None:
    clock = Clock()
    store = await store_on(db, clock)
    decisions = []
    for i in range(8):
        await store.claim(f"SM{i}", NUMBER)
        decisions.append(await store.admit(f"SM{i}", NUMBER, limit=3))
    assert decisions == [Admission.ACCEPT] * 3 + [Admission.NOTE] + [Admission.SILENT] * 4
    # Another number is unaffected.
    await store.claim("SMother", "+15559990000")
    assert await store.admit("SMother", "+15559990000", limit=3) is Admission.ACCEPT
    clock.now += RATE_WINDOW + 1
    await store.claim("SMlater", NUMBER)
    assert await store.admit("SMlater", NUMBER, limit=3) is Admission.ACCEPT


async def test_the_rate_limit_holds_when_two_processes_decide_at_once(db: Database) -> None:
    clock = Clock()
    stores = [await store_on(db, clock, elsewhere(f"p{k}")) for k in range(2)]
    for i in range(10):
        await stores[i % 2].claim(f"SM{i}", NUMBER, "hi")
    decisions = await asyncio.gather(*(stores[i % 2].admit(f"SM{i}", NUMBER, limit=4) for i in range(10)))
    assert decisions.count(Admission.ACCEPT) == 4 and decisions.count(Admission.NOTE) == 1


async def test_opt_outs(db: Database) -> None:
    store = await store_on(db)
    assert not await store.is_opted_out(NUMBER)
    await store.set_opted_out(NUMBER, "keyword")
    await store.set_opted_out(NUMBER, "twilio:21610")
    assert await store.is_opted_out(NUMBER)
    assert await store.clear_opt_out(NUMBER)
    assert not await store.is_opted_out(NUMBER)
    assert not await store.clear_opt_out(NUMBER)


async def test_link_code_is_one_time_and_expires(db: Database) -> None:
    clock = Clock()
    store = await store_on(db, clock)
    code = await store.create_link_code("discord:42", "Ada")
    assert len(code.code) == 6 and code.code.isdigit()
    link = await store.consume_link_code(code.code, NUMBER)
    assert link is not None and link.identity == "discord:42" and link.display_name == "Ada"
    assert await store.consume_link_code(code.code, NUMBER) is None  # used up
    assert await store.link_for_number(NUMBER) == link

    late = await store.create_link_code("discord:43", "Bob")
    clock.now += LINK_CODE_TTL + 1
    assert await store.consume_link_code(late.code, "+15550000000") is None


async def test_a_code_used_from_two_processes_at_once_links_once(db: Database) -> None:
    a, b = await store_on(db, owner=elsewhere("a")), await store_on(db, owner=elsewhere("b"))
    code = await a.create_link_code("discord:42", "Ada")
    results = await asyncio.gather(a.consume_link_code(code.code, NUMBER), b.consume_link_code(code.code, "+15550009999"))
    assert sum(r is not None for r in results) == 1


async def test_new_code_replaces_old_and_unlink_removes_links(db: Database) -> None:
    store = await store_on(db)
    first = await store.create_link_code("discord:42", "Ada")
    second = await store.create_link_code("discord:42", "Ada")
    if first.code != second.code:
        assert await store.consume_link_code(first.code, NUMBER) is None
    assert await store.consume_link_code(second.code, NUMBER) is not None
    removed = await store.remove_links("discord:42")
    assert [r.number for r in removed] == [NUMBER]
    assert await store.link_for_number(NUMBER) is None


async def test_codes_are_stored_hashed(db: Database) -> None:
    store = await store_on(db)
    code = await store.create_link_code("discord:42", "Ada")
    stored = [tuple(r) for r in await db.query("SELECT * FROM sms_link_codes")]
    assert code.code not in repr(stored)


async def test_forget_removes_every_row_naming_the_person_and_their_linked_phone(db: Database) -> None:
    clock = Clock()
    store = await store_on(db, clock)
    code = await store.create_link_code("discord:42", "Ada")
    await store.consume_link_code(code.code, NUMBER)
    await store.create_link_code("discord:42", "Ada")  # a pending code too
    for i in range(4):
        await store.claim(f"SM{i}", NUMBER, "hi")
        await store.admit(f"SM{i}", NUMBER, limit=3)
    await store.claim("SMother", "+15559990000", "someone else")
    counts = await store.forget(["discord:42"])  # the phone comes in through the link
    assert counts == {"sms record": 4, "bookkeeping": 1, "linked phone": 1, "link code": 1}
    for table in ("sms_messages", "sms_rate_notes", "sms_links", "sms_link_codes"):
        assert NUMBER not in repr([tuple(r) for r in await db.query(f"SELECT * FROM {table}")])
    assert [p.message_sid for p in await store.unfinished()] == ["SMother"]


async def test_prune_drops_old_finished_rows_and_keeps_unfinished(db: Database) -> None:
    clock = Clock()
    store = await store_on(db, clock)
    await store.claim("SMold", NUMBER, "x")
    await store.set_state("SMold", "ignored")
    await store.claim("SMopen", NUMBER, "y")
    clock.now += 8 * 86400
    assert await store.prune() == 1
    assert await store.state_of("SMold") is None and await store.state_of("SMopen") == "received"


async def test_an_existing_sqlite_file_opens_with_its_rows_and_versions(tmp_path: Path) -> None:
    """A file written by the last release (sms at version 2, raw opt-outs converted) keeps its rows."""
    path = tmp_path / "voicebot.sqlite3"
    old = SqliteDatabase(path)
    await old.migrate("sms", [MIGRATIONS[0]["sqlite"] + "CREATE TABLE sms_opt_outs (number TEXT PRIMARY KEY, "
                                                        "opted_out_at REAL NOT NULL, source TEXT NOT NULL);",
                              MIGRATIONS[1]["sqlite"]])
    await old.execute("INSERT INTO sms_messages (message_sid, from_number, received_at, state, body, updated_at) "
                      "VALUES ('SMold', ?, 1.0, 'replying', 'left by the old release', 1.0)", (NUMBER,))
    await old.execute("INSERT INTO sms_opt_outs VALUES ('+15550002222', 1.0, 'keyword')")
    await old.close()
    db = SqliteDatabase(path)
    try:
        # what the composition root builds: the opt-outs (converting the raw ones), then the SMS store
        store = await open_sms_store(db, opt_outs=await open_opt_outs(db), owner=LeaseOwner())
        assert await db.schema_version("sms") == len(MIGRATIONS)
        [left] = await store.take_unfinished()  # no lease at all: free
        assert (left.message_sid, left.state, left.body) == ("SMold", "replying", "left by the old release")
        assert await store.is_opted_out("+15550002222")
        assert "sms_opt_outs" not in await db.tables()
    finally:
        await db.close()
    # And the file is still a plain SQLite file the sqlite3 module reads.
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT state FROM sms_messages").fetchall() == [("replying",)]
    conn.close()


def test_unfinished_states_are_the_ones_the_service_resumes() -> None:
    assert UNFINISHED == ("received", "accepted", "replying", "sending")
