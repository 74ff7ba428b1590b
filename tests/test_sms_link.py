"""Same person, same memory: /link phone issues a code, texting it links the identities, and
forget_person then covers SMS and Discord alike (real Memory and SQLite: one file, which the SMS
records share through the async store)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest
from aiohttp.test_utils import TestClient, TestServer
from discord.ext import commands

from bot.store import SqliteDatabase as Database
from bot.memory import Memory, Modality, Turn
from bot.sms.inbound import SmsService, TwilioWebhooks
from bot.sms.store import PhoneLinker, SmsStore
from bot.web import create_app
from cogs.link import NO_SMS, LinkCog, link_phone_message, unlink_message
from tests.fakes.fake_agent import FakeAgent
from tests.fakes.twilio_server import sign_webhook
from tests.sms_helpers import sms_store

SID = "AC" + "2" * 32
TOKEN = "link-test-token"
OURS = "+15550009999"
THEM = "+15557654321"
PUBLIC = "https://bot.example.com"
USER_ID = 400000000000000001


class Harness:
    def __init__(self, client: TestClient, memory: Memory, store: SmsStore, agent: FakeAgent) -> None:
        self.client = client
        self.memory = memory
        self.store = store
        self.agent = agent
        self.linker = PhoneLinker(store, memory)
        self.count = 0

    async def text(self, body: str, frm: str = THEM) -> list[str]:
        self.count += 1
        form = {"MessageSid": f"SM{self.count:032d}", "AccountSid": SID, "From": frm, "To": OURS, "Body": body,
                "NumMedia": "0"}
        resp = await self.client.post("/twilio/sms", data=form,
                                      headers={"X-Twilio-Signature": sign_webhook(TOKEN, PUBLIC + "/twilio/sms", form)})
        assert resp.status == 200
        return re.findall(r"<Message>(.*?)</Message>", await resp.text(), re.DOTALL)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    db = Database(tmp_path / "voicebot.sqlite3")
    memory = (await Memory.open(db))
    store = await sms_store(db)
    agent = FakeAgent(memory, replies=lambda incoming: f"Hi {incoming.speaker_name}!")
    service = SmsService(agent=agent, memory=memory, store=store, sender=None, rate_limit=10)  # type: ignore[arg-type]
    app = create_app(webhooks=TwilioWebhooks(service, auth_token=TOKEN, public_url=PUBLIC))
    async with TestClient(TestServer(app)) as client:
        yield Harness(client, memory, store, agent)
        await service.aclose()
    await db.close()


async def test_link_then_forget_covers_both(harness: Harness) -> None:
    h = harness
    assert await h.text("hello") == ["Hi texter ending 4321!"]
    h.memory.append(Turn(room="discord:dm:%d" % USER_ID, speaker_id=f"discord:{USER_ID}", speaker_name="Ada",
                         role="user", text="hi on discord", modality=Modality.TEXT, created_at=time.time()))

    shown = await link_phone_message(h.linker, OURS, USER_ID, "Ada")
    code = re.search(r"LINK (\d{6})", shown).group(1)  # type: ignore[union-attr]
    assert OURS in shown and "10 minutes" in shown

    [confirmation] = await h.text(f"link {code}")
    assert confirmation.startswith("Linked!") and "Ada" in confirmation
    assert (await h.memory.identities_of(f"discord:{USER_ID}")) == {f"discord:{USER_ID}", f"phone:{THEM}"}
    assert await h.text("it's me") == ["Hi Ada!"]  # the agent now knows who is texting
    assert await h.linker.linked_numbers(f"discord:{USER_ID}") == [THEM]

    removed = (await h.memory.forget_person(f"discord:{USER_ID}"))
    assert removed["message"] == 3 and removed["linked phone"] == 1  # hello, hi on discord, it's me
    assert (await h.memory.recent(f"sms:{THEM}", 50)) == []
    assert (await h.memory.recent(f"discord:dm:{USER_ID}", 50)) == []
    # Memory no longer links them, so the SMS side stops using the Discord name too.
    assert await h.text("still there?") == ["Hi texter ending 4321!"]
    assert await h.linker.linked_numbers(f"discord:{USER_ID}") == []


async def test_code_works_once_and_bad_codes_are_explained(harness: Harness) -> None:
    h = harness
    code = (await h.linker.start(f"discord:{USER_ID}", "Ada")).code
    assert (await h.text(code))[0].startswith("Linked!")  # the bare code works too
    assert await h.text(f"LINK {code}") == [SmsService.LINK_BAD_TEXT]  # used up
    assert await h.text("LINK") == [SmsService.LINK_BAD_TEXT]
    # Six digits that are not a live code are just conversation.
    other = "000000" if code != "000000" else "111111"
    assert await h.text(other) == ["Hi Ada!"]
    assert h.agent.calls[-1].text == other


async def test_the_link_confirmation_is_in_the_numbers_language() -> None:
    from bot.i18n.places import PlaceLanguages

    db = Database.in_memory()
    memory = (await Memory.open(db))
    store = await sms_store(db)
    agent = FakeAgent(memory, replies=lambda incoming: "Hallo!")
    service = SmsService(agent=agent, memory=memory, store=store, sender=None, rate_limit=10)  # type: ignore[arg-type]
    service.languages = await PlaceLanguages.open(db, "en")
    app = create_app(webhooks=TwilioWebhooks(service, auth_token=TOKEN, public_url=PUBLIC))
    async with TestClient(TestServer(app)) as client:
        h = Harness(client, memory, store, agent)
        await h.text("LANGUAGE de")
        code = (await h.linker.start(f"discord:{USER_ID}", "Ada")).code
        [confirmation] = await h.text(f"LINK {code}")
        assert confirmation.startswith("Verknüpft! Diese Nummer gehört jetzt zu Ada auf Discord")
        await service.aclose()
    await db.close()


async def test_another_phone_cannot_reuse_a_code(harness: Harness) -> None:
    h = harness
    code = (await h.linker.start(f"discord:{USER_ID}", "Ada")).code
    assert (await h.text(f"LINK {code}", frm="+15550000001"))[0].startswith("Linked!")
    assert await h.text(f"LINK {code}") == [SmsService.LINK_BAD_TEXT]
    assert f"phone:{THEM}" not in (await h.memory.identities_of(f"discord:{USER_ID}"))


async def test_unlink(harness: Harness) -> None:
    h = harness
    assert await unlink_message(h.linker, USER_ID) == "No phone number is linked to your account."
    code = (await h.linker.start(f"discord:{USER_ID}", "Ada")).code
    await h.text(f"LINK {code}")
    text = await unlink_message(h.linker, USER_ID)
    assert text.startswith("Unlinked +1") and THEM not in text
    assert await h.text("who am I?") == ["Hi texter ending 4321!"]


async def test_link_without_sms_configured() -> None:
    db = Database.in_memory()
    store = await sms_store(db)
    linker = PhoneLinker(store, (await Memory.open(db)))
    assert await link_phone_message(linker, None, USER_ID, "Ada") == NO_SMS


async def test_cog_registers_its_commands() -> None:
    db = Database.in_memory()
    bot = commands.Bot(command_prefix="!", intents=discord.Intents.default())
    store = await sms_store(db)
    await bot.add_cog(LinkCog(PhoneLinker(store, (await Memory.open(db))), OURS))
    group = bot.tree.get_command("link")
    assert isinstance(group, discord.app_commands.Group)
    assert [c.name for c in group.commands] == ["phone"]
    assert bot.tree.get_command("unlink") is not None
    assert group.get_command("phone").description.startswith("Get a one-time code")  # type: ignore[union-attr]
    await bot.close()
