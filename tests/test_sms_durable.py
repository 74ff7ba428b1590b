"""An SMS survives a crash, a restart and a shutdown: stored before the 200, finished by the next
run or by Twilio's retry, never sent twice, never after STOP or /forget.

A "crash" here is a run whose tasks are cancelled mid-way and whose objects are dropped; the next
"run" opens the same SQLite file afresh. A crashed run's lease holder is retired, as a dead process's
would be judged dead, so the next run takes its messages at once. The loopback Twilio holds a create request open before or
after creating the message, which is exactly where a process can die during a send. (The real
kill -9 of a real process is tests/test_sms_crash.py.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.store import SqliteDatabase as Database
from bot.memory import Memory
from bot.sms.inbound import SmsService, TwilioWebhooks
from bot.sms.outbound import TwilioSender
from bot.sms.store import SmsStore
from tests.sms_helpers import sms_store
from bot.web import create_app
from tests.fakes.fake_agent import FakeAgent
from tests.fakes.twilio_server import FakeTwilio, sign_webhook

SID = "AC" + "2" * 32
TOKEN = "durable-test-token"
OURS = "+15550008888"
THEM = "+15557654321"
PUBLIC = "https://bot.example.com"
REPLY = "Here is my answer."
TIMEOUT = 30.0


async def instant(_delay: float) -> None:
    return None


def form(body: str, sid: str, frm: str = THEM) -> dict[str, str]:
    return {"MessageSid": sid, "SmsSid": sid, "AccountSid": SID, "From": frm, "To": OURS, "Body": body,
            "NumMedia": "0"}


@dataclass
class Run:
    """One run of the bot's SMS side on the shared database file."""

    db: Database
    memory: Memory
    store: SmsStore
    agent: FakeAgent
    service: SmsService
    client: TestClient

    async def post(self, fields: dict[str, str]) -> tuple[int, str]:
        sig = sign_webhook(TOKEN, PUBLIC + "/twilio/sms", fields)
        resp = await self.client.post("/twilio/sms", data=fields, headers={"X-Twilio-Signature": sig})
        return resp.status, await resp.text()

    async def crash(self) -> None:
        """Die without finishing anything: every task cancelled, nothing recorded on the way out."""
        for task in list(self.service._tasks):
            task.cancel()
        await asyncio.gather(*self.service._tasks, return_exceptions=True)
        assert self.service.sender is not None
        await self.service.sender.aclose()
        await self.client.close()
        self.store.owner.retire()
        await self.db.close()


class Runs:
    def __init__(self, path: Path, fake: FakeTwilio) -> None:
        self.path = path
        self.fake = fake
        self.runs: list[Run] = []

    async def start(self, *, gate: asyncio.Event | None = None, budget: float = 10.0, max_attempts: int = 1) -> Run:
        db = Database(self.path)
        memory = (await Memory.open(db))
        store = await sms_store(db)
        sender = TwilioSender(SID, TOKEN, OURS, api_base=self.fake.base_url, sleep=instant, rand=lambda: 0.0,
                              max_attempts=max_attempts)
        agent = FakeAgent(memory, replies=[REPLY], gate=gate)
        service = SmsService(agent=agent, memory=memory, store=store, sender=sender, rate_limit=50,  # type: ignore[arg-type]
                             reply_budget=budget)
        client = TestClient(TestServer(create_app(webhooks=TwilioWebhooks(service, auth_token=TOKEN,
                                                                          public_url=PUBLIC))))
        await client.start_server()
        run = Run(db, memory, store, agent, service, client)
        self.runs.append(run)
        return run

    async def close(self) -> None:
        for run in self.runs:
            if not run.db._closed:
                await run.service.aclose(grace=TIMEOUT)
                await run.client.close()
                await run.db.close()


@pytest.fixture
async def runs(tmp_path: Path) -> AsyncIterator[Runs]:
    async with FakeTwilio(SID, TOKEN) as fake:
        r = Runs(tmp_path / "voicebot.sqlite3", fake)
        yield r
        await r.close()


async def wait_state(store: SmsStore, sid: str, state: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while await store.state_of(sid) != state:
            await asyncio.sleep(0.01)  # polling a predicate; the timeout only guards a failure


async def assistant_turns(memory: Memory) -> list[str]:
    return [t.text for t in (await memory.recent(f"sms:{THEM}", 50)) if t.role == "assistant"]


async def user_turns(memory: Memory) -> list[str]:
    return [t.text for t in (await memory.recent(f"sms:{THEM}", 50)) if t.role == "user"]


# --- durable before 200 ------------------------------------------------------------------------


async def test_the_text_is_stored_before_the_webhook_answers(runs: Runs) -> None:
    gate = asyncio.Event()
    run = await runs.start(gate=gate, budget=0.01)  # the gate keeps the agent busy past the budget
    status, _ = await run.post(form("please remember this", "SM" + "a" * 32))
    assert status == 200
    [pending] = await run.store.unfinished()
    assert (pending.body, pending.from_number, pending.state) == ("please remember this", THEM, "replying")
    gate.set()
    await wait_state(run.store, "SM" + "a" * 32, "answered")
    [sent] = await runs.fake.wait_for_sent(1, timeout=TIMEOUT)
    assert sent.body == REPLY


# --- crash, then the next start finishes -------------------------------------------------------


async def test_crash_while_replying_is_answered_at_the_next_start(runs: Runs) -> None:
    first = await runs.start(gate=asyncio.Event(), budget=0.01)
    sid = "SM" + "b" * 32
    assert (await first.post(form("are you there?", sid)))[0] == 200
    await first.agent.started.wait()
    await first.crash()

    second = await runs.start()
    assert await second.service.resume_unfinished() == 1
    await wait_state(second.store, sid, "answered")
    [sent] = runs.fake.sent
    assert (sent.to, sent.body) == (THEM, REPLY)
    # The person's words are remembered once, and the reply as said.
    assert await user_turns(second.memory) == ["are you there?"]
    assert await assistant_turns(second.memory) == [REPLY]


async def test_crash_before_the_send_reached_twilio_sends_once(runs: Runs) -> None:
    first = await runs.start(budget=0.0)
    released = runs.fake.hold_next("before")
    sid = "SM" + "c" * 32
    await first.post(form("hello", sid))
    await asyncio.wait_for(runs.fake.held.wait(), TIMEOUT)
    assert await first.store.state_of(sid) == "sending"
    await first.crash()
    released.set()

    second = await runs.start()
    await second.service.resume_unfinished()
    await wait_state(second.store, sid, "answered")
    assert [m.body for m in runs.fake.sent] == [REPLY]  # Twilio had nothing, so it was sent now
    # It asked Twilio first, with the list's real filters.
    query, newest = runs.fake.list_requests
    assert query["To"] == THEM and query["From"] == OURS and "DateSent>" in query
    assert newest["To"] == THEM and "DateSent>" not in newest  # queued messages have no DateSent yet
    assert await assistant_turns(second.memory) == [REPLY]


async def test_crash_after_twilio_created_it_but_before_it_was_noted_never_sends_twice(runs: Runs) -> None:
    first = await runs.start(budget=0.0)
    released = runs.fake.hold_next("after")
    sid = "SM" + "d" * 32
    await first.post(form("hello", sid))
    await asyncio.wait_for(runs.fake.held.wait(), TIMEOUT)
    assert len(runs.fake.sent) == 1 and await first.store.state_of(sid) == "sending"
    await first.crash()
    released.set()

    second = await runs.start()
    await second.service.resume_unfinished()
    await wait_state(second.store, sid, "answered")
    assert len(runs.fake.sent) == 1  # found in Twilio's list: not sent again
    assert len(runs.fake.list_requests) == 2
    assert await assistant_turns(second.memory) == [REPLY]


async def test_a_twilio_retry_of_an_unfinished_sid_is_answered_not_dismissed(runs: Runs) -> None:
    first = await runs.start(gate=asyncio.Event(), budget=0.01)
    sid = "SM" + "e" * 32
    await first.post(form("still waiting", sid))
    await first.agent.started.wait()
    await first.crash()

    second = await runs.start()  # no start-up recovery: only Twilio's retry brings it back
    status, xml = await second.post(form("still waiting", sid))
    assert status == 200 and "<Message>" not in xml  # the answer goes by REST, once
    await wait_state(second.store, sid, "answered")
    assert [m.body for m in runs.fake.sent] == [REPLY]
    # A second retry while (or after) it is answered gets nothing more.
    status, xml = await second.post(form("still waiting", sid))
    assert status == 200 and "<Message>" not in xml
    await second.service.wait_idle()
    assert len(runs.fake.sent) == 1


async def test_no_answer_after_a_stop_sent_meanwhile(runs: Runs) -> None:
    first = await runs.start(gate=asyncio.Event(), budget=0.01)
    sid = "SM" + "f" * 32
    await first.post(form("tell me more", sid))
    await first.agent.started.wait()
    await first.crash()

    second = await runs.start()
    await second.post(form("STOP", "SM" + "1" * 32))
    await second.service.resume_unfinished()
    await wait_state(second.store, sid, "suppressed")
    await second.service.wait_idle()
    assert runs.fake.sent == [] and runs.fake.list_requests == []


async def test_no_answer_to_a_number_forgotten_meanwhile(runs: Runs) -> None:
    first = await runs.start(gate=asyncio.Event(), budget=0.01)
    sid = "SM" + "9" * 32
    await first.post(form("my secret", sid))
    await first.agent.started.wait()
    await first.crash()

    second = await runs.start()
    (await second.memory.forget_person(f"phone:{THEM}"))
    assert await second.service.resume_unfinished() == 0
    assert await second.store.state_of(sid) is None
    await second.service.wait_idle()
    assert runs.fake.sent == []


# --- SIGTERM: drain ---------------------------------------------------------------------------


async def test_drain_answers_503_lets_replies_finish_and_reports_what_is_left(
        runs: Runs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    gate = asyncio.Event()
    run = await runs.start(gate=gate, budget=0.01)
    await run.post(form("first", "SM" + "3" * 32))
    await run.agent.started.wait()
    closing = asyncio.create_task(run.service.aclose(grace=TIMEOUT), name="test-drain")
    async with asyncio.timeout(TIMEOUT):
        while not run.service.draining:
            await asyncio.sleep(0)
    status, _ = await run.post(form("second", "SM" + "4" * 32, frm="+15550001111"))
    assert status == 503  # Twilio retries it after the restart
    # A STOP is honoured even during the drain (a reply finishing now must not reach that number).
    assert (await run.post(form("STOP", "SM" + "8" * 32, frm="+15550002222")))[0] == 200
    assert await run.store.is_opted_out("+15550002222")
    assert await run.store.pending("SM" + "4" * 32) is not None  # and its text is already kept
    gate.set()  # the reply in flight finishes within the grace
    await closing
    assert await run.store.state_of("SM" + "3" * 32) == "answered"
    assert [m.body for m in runs.fake.sent] == [REPLY]
    [left] = [r.getMessage() for r in caplog.records if "SMS shutdown" in r.getMessage()]
    assert "1 message(s) not answered" in left and "1 received" in left
    await run.client.close()
    await run.db.close()

    nxt = await runs.start()
    assert await nxt.service.resume_unfinished() == 1
    await wait_state(nxt.store, "SM" + "4" * 32, "answered")
    assert sorted(m.to for m in runs.fake.sent) == sorted([THEM, "+15550001111"])


async def test_drain_grace_expires_leaves_the_reply_recorded(runs: Runs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    run = await runs.start(gate=asyncio.Event(), budget=0.01)
    sid = "SM" + "5" * 32
    await run.post(form("slow one", sid))
    await run.agent.started.wait()
    await run.service.aclose(grace=0.0)
    assert await run.store.state_of(sid) == "replying"
    [left] = [r.getMessage() for r in caplog.records if "SMS shutdown" in r.getMessage()]
    assert "0 of 1 reply(ies) in flight finished" in left and "1 replying" in left and THEM not in left
    await run.client.close()
    await run.db.close()

    nxt = await runs.start()
    await nxt.service.resume_unfinished()
    await wait_state(nxt.store, sid, "answered")
    assert [m.body for m in runs.fake.sent] == [REPLY]
    assert await user_turns(nxt.memory) == ["slow one"]


async def test_when_twilio_cannot_say_whether_it_was_sent_nothing_is_sent(runs: Runs,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    first = await runs.start(budget=0.0)
    released = runs.fake.hold_next("before")
    sid = "SM" + "6" * 32
    await first.post(form("hello", sid))
    await asyncio.wait_for(runs.fake.held.wait(), TIMEOUT)
    await first.crash()
    released.set()

    runs.fake.list_failures = 3  # Twilio's list answers 500 (the SDK's client does not retry it)
    second = await runs.start()
    second.service.find_sent_retry_delays = (0.0, 0.0)  # asked three times in all, failing each time
    await second.service.resume_unfinished()
    await second.service.wait_idle()
    assert runs.fake.sent == [] and await second.store.state_of(sid) == "sending"  # late rather than twice
    assert any("cannot tell whether the reply was sent" in r.getMessage() for r in caplog.records)
    await second.crash()

    assert len(runs.fake.list_requests) == 3

    runs.fake.list_failures = 1  # next time it fails once, then answers: the same run carries on
    third = await runs.start()
    third.service.find_sent_retry_delays = (0.0,)
    await third.service.resume_unfinished()
    await wait_state(third.store, sid, "answered")
    assert [m.body for m in runs.fake.sent] == [REPLY]


# --- a send Twilio created but did not confirm -------------------------------------------------


@pytest.mark.parametrize("failure", ["503", "dropped"])
async def test_a_reply_twilio_created_then_failed_to_confirm_goes_out_once(runs: Runs, failure: str) -> None:
    run = await runs.start(budget=0.0, max_attempts=4)  # the reply goes by REST, with retries
    if failure == "503":
        runs.fake.fail_next(503, None, "Service Unavailable", created=True)
    else:
        runs.fake.drop_next(created=True)
    sid = "SM" + "a1" * 16
    await run.post(form("hello", sid))
    await wait_state(run.store, sid, "answered")
    assert [m.body for m in runs.fake.sent] == [REPLY] and runs.fake.attempts == 1  # one text
    assert await assistant_turns(run.memory) == [REPLY]


async def test_when_twilio_cannot_confirm_a_send_the_reply_waits_rather_than_goes_twice(
        runs: Runs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    first = await runs.start(budget=0.0)
    first.service.find_sent_retry_delays = (0.0,)
    runs.fake.fail_next(503, created=True)
    runs.fake.list_failures = 100  # Twilio's list is down: nobody can say whether it went out
    sid = "SM" + "b2" * 16
    await first.post(form("hello", sid))
    await first.service.wait_idle()
    assert len(runs.fake.sent) == 1 and await first.store.state_of(sid) == "sending"  # left for later, not resent
    assert any("cannot tell whether the reply was sent" in r.getMessage() for r in caplog.records)
    await first.service.aclose()
    await first.client.close()
    await first.db.close()

    runs.fake.list_failures = 0
    second = await runs.start()
    assert await second.service.resume_unfinished() == 1
    await wait_state(second.store, sid, "answered")
    assert len(runs.fake.sent) == 1 and await assistant_turns(second.memory) == [REPLY]


async def test_an_unconfirmed_send_is_checked_again_by_the_service_then_finished(runs: Runs) -> None:
    run = await runs.start(budget=0.0)  # one attempt, one list check: the check fails, the send is uncertain
    run.service.find_sent_retry_delays = (0.0,)
    runs.fake.fail_next(503, created=True)
    runs.fake.list_failures = 1  # ... and the service's own question a moment later is answered
    sid = "SM" + "c3" * 16
    await run.post(form("hello", sid))
    await wait_state(run.store, sid, "answered")
    assert len(runs.fake.sent) == 1 and len(runs.fake.list_requests) == 3  # failed, then both list calls


async def test_the_loopback_messages_list_filters_like_twilio(runs: Runs) -> None:
    """The list endpoint as the twilio SDK calls it: To, From, DateSent (day, before, after), paging."""
    import time as _time
    from datetime import date

    fake = runs.fake
    now = _time.time()
    for i in range(7):
        fake.record(THEM, OURS, f"today {i}", "outbound-api")
    old = fake.record(THEM, OURS, "three days ago", "outbound-api")
    old.date_created = old.date_sent = now - 3 * 86400
    fake.record("+15550000000", OURS, "to someone else", "outbound-api")
    fake.record(OURS, THEM, "inbound", "inbound")
    queued = fake.record(THEM, OURS, "never sent", "outbound-api")
    queued.date_sent = None
    sender = TwilioSender(SID, TOKEN, OURS, api_base=fake.base_url)
    client = sender._get_client()
    try:
        today = date.fromtimestamp(now).isoformat()
        listed = await client.messages.list_async(to=THEM, from_=OURS, date_sent_after=today, page_size=3)  # type: ignore[attr-defined]
        assert sorted(m.body for m in listed) == [f"today {i}" for i in range(7)]  # 3 pages followed
        assert len(fake.list_requests) == 3 and fake.list_requests[0]["DateSent>"] == today
        before = await client.messages.list_async(to=THEM, date_sent_before=date.fromtimestamp(now - 86400).isoformat())  # type: ignore[attr-defined]
        assert [m.body for m in before] == ["three days ago"]
        exact = await client.messages.list_async(date_sent=date.fromtimestamp(now - 3 * 86400).isoformat())  # type: ignore[attr-defined]
        assert [m.body for m in exact] == ["three days ago"]
        every = await client.messages.list_async(to=THEM)  # type: ignore[attr-defined]
        assert len(every) == 9 and every[0].date_created is not None
        assert await sender.find_sent(THEM, ["today 3", "today 3", "not there"], since=now - 60) == [True, False, False]
        # A message still queued at Twilio (no DateSent yet) counts as created: never sent twice.
        assert await sender.find_sent(THEM, ["never sent"], since=now - 60) == [True]
        assert await sender.find_sent(THEM, ["three days ago"], since=now - 60) == [False]  # before the reply
    finally:
        await sender.aclose()
