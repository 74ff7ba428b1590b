"""Text chat on the loopback Discord in the writer's language, right-to-left text included."""

from __future__ import annotations

import pytest

from bot.loopback.server import LocalDiscord
from tests.test_chat_bounds import TOKEN, _wait_for, running_bot


async def test_each_message_is_answered_in_its_language_and_rtl_text_is_handled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with LocalDiscord(token=TOKEN) as d:
        async with running_bot(d, monkeypatch, {"AGENT_ENGINE": "eliza", "LANGUAGE": "auto"}) as bot:
            alice = bot.guild.add_member("Alice")
            mention = f"<@{d.bot_user_id}>"
            await alice.send_message(bot.text, f"{mention} Hallo, wie geht es dir heute? Mir ist langweilig.")
            await _wait_for(lambda: len(bot.text.bot_messages) >= 1, "the German answer")
            assert bot.text.bot_messages[-1].content.startswith("Ich bin ein einfaches eingebautes Skript")

            # Arabic, with the direction marks a right-to-left keyboard adds. The bot's own words
            # have no Arabic yet: the script's notice falls back to English and names the language.
            arabic = "\u200fمرحبا، كيف حالك اليوم؟ أنا بخير والحمد لله.\u200f"
            await alice.send_message(bot.text, f"{mention} {arabic}")
            await _wait_for(lambda: len(bot.text.bot_messages) >= 2, "the Arabic answer")
            answer = bot.text.bot_messages[-1].content
            assert answer.startswith("I'm a simple built-in script") and "العربية" in answer

            await alice.send_message(bot.text, f"{mention} I feel tired today and I miss my mother")
            await _wait_for(lambda: len(bot.text.bot_messages) >= 3, "the English answer")
            assert "script" not in bot.text.bot_messages[-1].content
            # A bare mention says nothing to detect: it is answered in the server's language.
            (await bot.services.languages.set(f"guild:{bot.guild.id}", "de"))
            await alice.send_message(bot.text, mention)
            await _wait_for(lambda: len(bot.text.bot_messages) >= 4, "the answer to a bare mention")
            assert bot.text.bot_messages[-1].content == "Wolltest du etwas sagen, Alice? Ich höre zu."
            stored = (await bot.services.memory.recent(bot.room, 10))
            assert any(t.text.endswith(arabic.strip("\u200f") + "\u200f") or "مرحبا" in t.text for t in stored)
        assert d.problems == []
