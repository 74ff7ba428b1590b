"""SMS bookkeeping in SQLite: dedupe, rate limit, opt-outs, link codes."""

from __future__ import annotations

from pathlib import Path

from bot.db import Database
from bot.sms.store import LINK_CODE_TTL, RATE_WINDOW, Admission, Claim, SmsStore

NUMBER = "+15551230001"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_claim_records_the_text_and_dedupes_finished_messages_across_restarts(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite3")
    store = SmsStore(db)
    assert store.claim("SM1", NUMBER, "hello there") is Claim.NEW
    # Seen but not finished: a retry must finish it, not be dismissed as a duplicate.
    assert store.claim("SM1", NUMBER, "hello there") is Claim.UNFINISHED
    db.close()
    db = Database(tmp_path / "db.sqlite3")
    store = SmsStore(db)
    [pending] = store.unfinished()
    assert (pending.message_sid, pending.from_number, pending.body, pending.state) == ("SM1", NUMBER, "hello there",
                                                                                        "received")
    assert store.advance("SM1", "received", "accepted")
    assert store.advance("SM1", "accepted", "replying")
    assert not store.advance("SM1", "accepted", "replying")  # not in that state any more: one winner
    assert store.advance("SM1", "replying", "sending", reply=["part one", "part two"], sent_segments=0)
    assert store.segment_sent("SM1", 1)
    pending = store.pending("SM1")
    assert pending is not None and pending.reply == ("part one", "part two") and pending.sent_segments == 1
    assert store.advance("SM1", "sending", "answered")
    assert store.claim("SM1", NUMBER, "hello there") is Claim.DONE
    assert store.unfinished() == [] and store.pending("SM1") is None
    # A finished row keeps no text and no reply.
    row = db.query("SELECT body, reply FROM sms_messages WHERE message_sid = 'SM1'")[0]
    assert (row["body"], row["reply"]) == (None, None)
    assert store.claim("SM2", NUMBER) is Claim.NEW
    db.close()


def test_a_forgotten_message_cannot_move_on() -> None:
    db = Database.in_memory()
    store = SmsStore(db)
    store.claim("SM1", NUMBER, "secret words")
    store.advance("SM1", "received", "accepted")
    db.execute("DELETE FROM sms_messages WHERE from_number = ?", (NUMBER,))  # what /forget does
    assert not store.advance("SM1", "accepted", "replying")
    assert not store.segment_sent("SM1", 1)


def test_rate_limit_notes_once_then_silence_until_window_passes() -> None:
    clock = Clock()
    store = SmsStore(Database.in_memory(), clock=clock)
    decisions = []
    for i in range(8):
        store.claim(f"SM{i}", NUMBER)
        decisions.append(store.admit(f"SM{i}", NUMBER, limit=3))
    assert decisions == [Admission.ACCEPT] * 3 + [Admission.NOTE] + [Admission.SILENT] * 4
    # Another number is unaffected.
    store.claim("SMother", "+15559990000")
    assert store.admit("SMother", "+15559990000", limit=3) is Admission.ACCEPT
    clock.now += RATE_WINDOW + 1
    store.claim("SMlater", NUMBER)
    assert store.admit("SMlater", NUMBER, limit=3) is Admission.ACCEPT


def test_opt_outs() -> None:
    store = SmsStore(Database.in_memory())
    assert not store.is_opted_out(NUMBER)
    store.set_opted_out(NUMBER, "keyword")
    store.set_opted_out(NUMBER, "twilio:21610")
    assert store.is_opted_out(NUMBER)
    assert store.clear_opt_out(NUMBER)
    assert not store.is_opted_out(NUMBER)
    assert not store.clear_opt_out(NUMBER)


def test_link_code_is_one_time_and_expires() -> None:
    clock = Clock()
    store = SmsStore(Database.in_memory(), clock=clock)
    code = store.create_link_code("discord:42", "Ada")
    assert len(code.code) == 6 and code.code.isdigit()
    link = store.consume_link_code(code.code, NUMBER)
    assert link is not None and link.identity == "discord:42" and link.display_name == "Ada"
    assert store.consume_link_code(code.code, NUMBER) is None  # used up
    assert store.link_for_number(NUMBER) == link

    late = store.create_link_code("discord:43", "Bob")
    clock.now += LINK_CODE_TTL + 1
    assert store.consume_link_code(late.code, "+15550000000") is None


def test_new_code_replaces_old_and_unlink_removes_links() -> None:
    store = SmsStore(Database.in_memory())
    first = store.create_link_code("discord:42", "Ada")
    second = store.create_link_code("discord:42", "Ada")
    if first.code != second.code:
        assert store.consume_link_code(first.code, NUMBER) is None
    assert store.consume_link_code(second.code, NUMBER) is not None
    removed = store.remove_links("discord:42")
    assert [r.number for r in removed] == [NUMBER]
    assert store.link_for_number(NUMBER) is None


def test_codes_are_stored_hashed() -> None:
    db = Database.in_memory()
    store = SmsStore(db)
    code = store.create_link_code("discord:42", "Ada")
    stored = [tuple(r) for r in db.query("SELECT * FROM sms_link_codes")]
    assert code.code not in repr(stored)
