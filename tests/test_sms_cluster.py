"""Two SMS services on one PostgreSQL (two connection pools, two webhook servers, one loopback Twilio),
as two processes behind one load balancer: Twilio's webhook and its retries land on either, and
each text is answered once — while the first still answers, after it finished, and after it died.

"Another machine" here is an owner name that this machine cannot judge (so only the lease's expiry
frees its work); the real processes are tests/test_sms_crash.py. Everything waits on state.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.memory import Memory
from bot.privacy import open_opt_outs
from bot.sms.inbound import SmsService, TwilioWebhooks
from bot.sms.outbound import TwilioSender
from bot.sms.store import open_sms_store
from bot.store import PostgresDatabase
from bot.store.leases import LeaseOwner, process_prefix
from bot.web import create_app
from tests.fakes.fake_agent import FakeAgent
from tests.fakes.twilio_server import FakeTwilio, sign_webhook

SID = "AC" + "4" * 32
TOKEN = "cluster-test-token"
OURS = "+15550004444"
THEM = "+15557770000"
PUBLIC = "https://bot.example.com"
REPLY = "One answer, once."
TIMEOUT = 30.0


async def instant(_delay: float) -> None:
    return None


def form(body: str, sid: str, frm: str = THEM) -> dict[str, str]:
    return {"MessageSid": sid, "SmsSid": sid, "AccountSid": SID, "From": frm, "To": OURS, "Body": body,
            "NumMedia": "0"}


@dataclass
class Node:
    """One process's SMS side: its own pool on the shared database, its own web server."""

    name: str
    db: PostgresDatabase
    memory: Memory
    agent: FakeAgent
    service: SmsService
    client: TestClient
    dead: bool = False

    async def post(self, fields: dict[str, str]) -> tuple[int, list[str]]:
        sig = sign_webhook(TOKEN, PUBLIC + "/twilio/sms", fields)
        resp = await self.client.post("/twilio/sms", data=fields, headers={"X-Twilio-Signature": sig})
        return resp.status, re.findall(r"<Message>(.*?)</Message>", await resp.text(), re.DOTALL)

    async def die(self) -> None:
        """SIGKILL, as far as the others can tell: no renewal, no release, nothing finished."""
        self.dead = True
        keeper = self.service._keeper
        tasks = [*self.service._tasks, *([keeper] if keeper is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.close()
        assert self.service.sender is not None
        await self.service.sender.aclose()
        await self.db.close()


class Cluster:
    def __init__(self, url: str, fake: FakeTwilio) -> None:
        self.url = url
        self.fake = fake
        self.nodes: list[Node] = []

    async def node(self, name: str, *, lease: float = 30.0, budget: float = 10.0, gate: asyncio.Event | None = None,
                   elsewhere: bool = True, start: bool = True) -> Node:
        db = await PostgresDatabase.connect(self.url)
        memory = await Memory.open(db)  # each node's memory and opt-outs on the shared database, as the bot runs
        owner = LeaseOwner(f"machine-{name}/boot/1/1/{name}") if elsewhere else LeaseOwner()
        store = await open_sms_store(db, opt_outs=await open_opt_outs(db), owner=owner, lease=lease)
        sender = TwilioSender(SID, TOKEN, OURS, api_base=self.fake.base_url, sleep=instant, rand=lambda: 0.0)
        agent = FakeAgent(memory, replies=[REPLY], gate=gate)
        service = SmsService(agent=agent, memory=memory, store=store, sender=sender, rate_limit=100,  # type: ignore[arg-type]
                             reply_budget=budget)
        service.find_sent_retry_delays = (0.0,)
        client = TestClient(TestServer(create_app(webhooks=TwilioWebhooks(service, auth_token=TOKEN,
                                                                          public_url=PUBLIC))))
        await client.start_server()
        if start:
            await service.start()
        node = Node(name, db, memory, agent, service, client)
        self.nodes.append(node)
        return node

    def answers(self, number: str = THEM) -> list[str]:
        """What the person received: REST sends (the fake's list) and TwiML answers (counted by the test)."""
        return [m.body for m in self.fake.sent if m.to == number]

    async def close(self) -> None:
        for node in self.nodes:
            if not node.dead:
                if node.agent.gate is not None:
                    node.agent.gate.set()
                await node.service.aclose(grace=TIMEOUT)
                await node.memory.aclose()
                await node.client.close()
                await node.db.close()


@pytest.fixture
async def cluster(pg_url: str) -> AsyncIterator[Cluster]:
    async with FakeTwilio(SID, TOKEN) as fake:
        c = Cluster(pg_url, fake)
        yield c
        await c.close()


async def wait_for(predicate, what: str) -> None:  # noqa: ANN001
    async with asyncio.timeout(TIMEOUT):
        while not await predicate():
            await asyncio.sleep(0.01)  # polling a predicate; the timeout only guards a failure


async def test_a_retry_on_the_other_process_while_the_first_answers_gets_nothing(cluster: Cluster) -> None:
    gate = asyncio.Event()
    a = await cluster.node("a", gate=gate)
    b = await cluster.node("b")
    sid = "SM" + "1" * 32
    first = asyncio.create_task(a.post(form("are you there?", sid)), name="webhook-a")
    await a.agent.started.wait()
    # Twilio gave up on the first webhook and retried on the other process: nothing from it.
    assert await b.post(form("are you there?", sid)) == (200, [])
    assert b.agent.calls == []
    gate.set()
    status, twiml = await first
    assert (status, twiml) == (200, [REPLY])
    await a.service.wait_idle()
    # Another retry after the answer, on either process: nothing more.
    assert await b.post(form("are you there?", sid)) == (200, [])
    assert await a.post(form("are you there?", sid)) == (200, [])
    assert cluster.answers() == []  # the one answer was the TwiML
    assert await a.service.store.state_of(sid) == "answered"


async def test_the_same_webhook_at_both_processes_at_once_is_answered_once(cluster: Cluster) -> None:
    a = await cluster.node("a")
    b = await cluster.node("b")
    for i in range(20):
        sid = f"SM{i:032d}"
        results = await asyncio.gather(a.post(form(f"hello {i}", sid)), b.post(form(f"hello {i}", sid)))
        assert sorted(len(twiml) for _status, twiml in results) == [0, 1], results
    assert len(a.agent.calls) + len(b.agent.calls) == 20
    assert cluster.answers() == []


async def test_a_live_process_keeps_its_text_past_the_lease_by_renewing(cluster: Cluster) -> None:
    gate = asyncio.Event()
    a = await cluster.node("a", lease=0.6, gate=gate, budget=0.01)  # answers by REST, later
    b = await cluster.node("b", lease=0.6)
    sid = "SM" + "2" * 32
    assert await a.post(form("take your time", sid)) == (200, [])
    await a.agent.started.wait()
    swept = b.service.sweeps

    async def b_swept_past_several_leases() -> bool:
        return b.service.sweeps >= swept + 10  # ten sweeps, a fifth of a lease apart: over three leases

    await wait_for(b_swept_past_several_leases, "b's sweeps")
    assert b.agent.calls == [] and await b.service.store.holds(sid) is False and await a.service.store.holds(sid)
    gate.set()
    await a.service.wait_idle()
    assert cluster.answers() == [REPLY]


async def test_a_dead_process_s_texts_are_finished_by_the_other_once(cluster: Cluster) -> None:
    """A dies (on "another machine") with texts at every stage; B's sweep takes them after the lease."""
    a = await cluster.node("a", lease=1.0, gate=asyncio.Event(), budget=0.01)
    b = await cluster.node("b", lease=1.0)
    numbers = [f"+1555888{i:04d}" for i in range(6)]
    for i, number in enumerate(numbers):
        assert (await a.post(form(f"text {i}", f"SM{i:032d}", frm=number)))[0] == 200
    async with asyncio.timeout(TIMEOUT):
        while len(a.agent.calls) < len(numbers):
            await asyncio.sleep(0.01)  # polling a predicate
    await a.die()
    # A retry of one of them reaches B before the lease ran out: B answers nothing yet...
    assert await b.post(form("text 0", f"SM{0:032d}", frm=numbers[0])) == (200, [])

    async def all_answered() -> bool:
        states = await b.service.store.counts_by_state()
        return states == {"answered": len(numbers)}

    await wait_for(all_answered, "every text answered")
    await b.service.wait_idle()
    assert sorted(m.to for m in cluster.fake.sent) == sorted(numbers)  # each once
    assert len(b.agent.calls) == len(numbers)


async def test_a_process_that_died_on_this_machine_is_taken_over_without_waiting_for_its_lease(
        cluster: Cluster) -> None:
    a = await cluster.node("a", lease=3600.0, gate=asyncio.Event(), budget=0.01, elsewhere=False)
    b = await cluster.node("b", lease=3600.0, elsewhere=False)
    assert a.service.store.owner.name.startswith(process_prefix())
    sid = "SM" + "3" * 32
    await a.post(form("hello", sid))
    await a.agent.started.wait()
    await a.die()
    a.service.store.owner.retire()  # in this process, a retired owner is what a gone pid is for another
    status, twiml = await b.post(form("hello", sid))  # Twilio's retry, an hour before the lease would end
    assert (status, twiml) == (200, [])  # taken and answered by REST (a recovery never answers in TwiML)
    await b.service.wait_idle()
    assert cluster.answers() == [REPLY]


async def test_a_text_taken_while_its_retry_was_being_decided_is_not_kept_alive_by_nobody(cluster: Cluster) -> None:
    """The sweep can take a dead holder's text while a Twilio retry of it is being decided here (and
    is answered "elsewhere"): nothing works on it then, so its lease is not renewed, and a later sweep
    takes it again and answers it."""
    a = await cluster.node("a", lease=1.0, gate=asyncio.Event(), budget=0.01)
    b = await cluster.node("b", lease=1.0, start=False)  # its sweeps are staged by hand first
    sid = "SM" + "5" * 32
    await a.post(form("hello", sid))
    await a.agent.started.wait()
    await a.die()
    store = b.service.store

    async def expired() -> bool:
        return bool(await b.db.scalar("SELECT 1 FROM sms_messages WHERE message_sid = ? AND lease_until < ?",
                                      (sid, time.time())))

    await wait_for(expired, "a's lease to run out")
    b.service._handling.add(sid)  # the retry's webhook is being decided at this moment
    await b.service.resume_unfinished(at_start=False)  # the sweep takes it, and leaves it to the webhook
    b.service._handling.discard(sid)  # which answered "elsewhere" (it read the row before the take)
    assert await store.holds(sid) and b.agent.calls == []
    await b.service.start()  # from now on b renews what it works on and sweeps

    async def answered() -> bool:
        return await store.state_of(sid) == "answered"

    await wait_for(answered, "the text answered")
    assert cluster.answers() == [REPLY]
