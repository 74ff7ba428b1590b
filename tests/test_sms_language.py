"""SMS in the texter's language: detected from what they write (and remembered), set with
LANGUAGE, and STOP/HELP in the bot's other languages (Twilio's own keywords unchanged)."""

from __future__ import annotations

import itertools
import re

from aiohttp.test_utils import TestClient, TestServer

from bot.agent import Agent
from bot.agent.character import default_character
from bot.agent.engines.eliza import ElizaEngine
from bot.store import SqliteDatabase as Database
from bot.i18n.places import PlaceLanguages
from bot.memory import Memory
from bot.sms.inbound import SmsService, TwilioWebhooks
from bot.sms.store import SmsStore
from bot.sms.text import Keyword, classify_keyword, keyword_language
from bot.web import create_app
from tests.fakes.twilio_server import sign_webhook
from tests.sms_helpers import sms_store

SID = "AC" + "5" * 32
TOKEN = "language-test-token"
OURS = "+15550008888"
THEM = "+15552223333"
PUBLIC = "https://bot.example.com"
_sids = itertools.count(1)


class Phone:
    def __init__(self, configured: str = "en") -> None:
        self.db = Database.in_memory()
        self.configured = configured
        self.store: SmsStore | None = None
        self.service: SmsService | None = None

    async def _service(self) -> SmsService:
        if self.service is None:
            self.memory = await Memory.open(self.db)
            character = default_character()
            self.agent = Agent(character, ElizaEngine(character.name), self.memory)
            self.store = await sms_store(self.db)
            self.service = SmsService(agent=self.agent, memory=self.memory, store=self.store, sender=None,
                                      rate_limit=50)
            self.service.languages = await PlaceLanguages.open(self.db, self.configured)
        return self.service

    async def text(self, body: str, *, opt_out_type: str | None = None) -> list[str]:
        app = create_app(webhooks=TwilioWebhooks(await self._service(), auth_token=TOKEN, public_url=PUBLIC))
        form = {"MessageSid": f"SM{next(_sids):032x}", "AccountSid": SID, "From": THEM, "To": OURS, "Body": body,
                "NumMedia": "0"}
        if opt_out_type:
            form["OptOutType"] = opt_out_type
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/twilio/sms", data=form, headers={
                "X-Twilio-Signature": sign_webhook(TOKEN, PUBLIC + "/twilio/sms", form)})
            assert resp.status == 200
            xml = await resp.text()
        return re.findall(r"<Message>(.*?)</Message>", xml, re.DOTALL)

    async def close(self) -> None:
        if self.service is not None and self.store is not None:
            await self.service.aclose()
            await self.memory.aclose()
        await self.db.close()


def test_keywords_in_other_languages() -> None:
    assert classify_keyword("HILFE") is Keyword.HELP and keyword_language("hilfe") == "de"
    assert classify_keyword(" Stopp! ") is Keyword.STOP and keyword_language(" Stopp! ") == "de"
    assert classify_keyword("arrêt") is Keyword.STOP and keyword_language("arrêt") == "fr"
    assert classify_keyword("停止。") is Keyword.STOP and keyword_language("停止") == "ja"
    assert classify_keyword("ayuda") is Keyword.HELP and classify_keyword("ajuda") is Keyword.HELP
    # Twilio's own words stay exactly Twilio's (and say nothing about a language).
    assert classify_keyword("STOP") is Keyword.STOP and keyword_language("STOP") is None
    assert classify_keyword("hilfe mir bitte") is None


async def test_a_german_texter_is_answered_in_german_and_it_is_remembered() -> None:
    phone = Phone()
    try:
        [answer] = await phone.text("Hallo, wie geht es dir heute? Ich habe eine Frage.")
        # The built-in script knows only English and says so, in German, instead of pretending.
        assert answer.startswith("Ich bin ein einfaches eingebautes Skript")
        # "ok" says nothing about a language: the number's remembered German holds.
        [answer] = await phone.text("ok")
        assert answer.startswith("Ich bin ein einfaches eingebautes Skript")
        [answer] = await phone.text("Hello, how are you doing today my friend?")
        assert not answer.startswith("I'm a simple built-in script")  # English: ELIZA answers for real
        assert "Skript" not in answer
    finally:
        await phone.close()


async def test_stop_and_help_in_the_bots_other_languages() -> None:
    phone = Phone()
    try:
        [help_de] = await phone.text("HILFE")
        assert help_de.startswith("Du schreibst mit") and "STOPP" in help_de
        [help_ja] = await phone.text("ヘルプ")
        assert "停止" in help_ja
        [stopped] = await phone.text("Stopp")  # Twilio did not act on it, so the bot confirms
        assert stopped.startswith("Du bist abgemeldet") and await phone.store.is_opted_out(THEM)  # type: ignore[union-attr]
        assert await phone.text("Hallo?") == []  # opted out: nothing more is sent
        # Twilio's own keyword: Twilio answers it, the bot only records it.
        assert await phone.text("START", opt_out_type="START") == []
        assert not await phone.store.is_opted_out(THEM)  # type: ignore[union-attr]
    finally:
        await phone.close()


async def test_language_is_set_by_text_and_unknown_values_go_to_the_agent() -> None:
    phone = Phone()
    try:
        [done] = await phone.text("LANGUAGE ja")
        assert done.startswith("わかりました。これからは日本語で")
        [answer] = await phone.text("Hello there, what's up?")  # fixed: Japanese even for English text
        assert answer.startswith("私は英語しかわからない")
        [answer] = await phone.text("language barriers")  # not a language: the agent answers it
        assert answer.startswith("私は英語しかわからない")
        [done] = await phone.text("language auto")
        assert "LANGUAGE auto" in done
    finally:
        await phone.close()
