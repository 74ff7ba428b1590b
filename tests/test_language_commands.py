"""`/language` on the loopback Discord, and the bot's own words following the server's language."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.loopback.server import LocalDiscord
from tests.test_voice_commands import TIMEOUT, _seed, running_bot

EXTENSIONS = ("cogs.voice", "cogs.language")


@pytest.fixture
async def discord_() -> AsyncIterator[LocalDiscord]:
    async with LocalDiscord(token="loopback.voicebot.0123456789abcdef") as server:
        yield server


async def test_language_set_auto_unknown_and_reset(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch, extensions=EXTENSIONS):
        assert "I speak English here (the server's language)" in await h.command(h.boss, "language")
        # Changing it takes Manage Server.
        assert "Manage Server" in await h.command(h.alice, "language", {"language": "de"})
        assert h.manager.languages.mode(f"guild:{h.guild.id}") == "en"

        answer = await h.command(h.boss, "language", {"language": "de"})
        assert answer == "Ab jetzt spreche ich auf diesem Server Deutsch."  # said in the new language
        assert h.manager.languages.mode(f"guild:{h.guild.id}") == "de"
        # The server has a language of its own now: answers come in it, whatever Alice's client says.
        assert "Hier spreche ich Deutsch (von einem Admin gewählt)" in await h.command(h.alice, "language")
        assert "**Sprache:** Deutsch" in await h.command(h.alice, "status")

        # The join notice now comes in German, with the same facts.
        await h.alice.join_voice(h.voice)
        await h.command(h.alice, "join")
        notice = await discord_.wait_bot_message(h.voice, contains="/optout", timeout=TIMEOUT)
        assert "hört zu" in notice.content and "Audio wird nie gespeichert." in notice.content

        unknown = await h.command(h.boss, "language", {"language": "klingon"})
        assert "klingon" in unknown and "auto" in unknown
        assert h.manager.languages.mode(f"guild:{h.guild.id}") == "de"  # unchanged

        auto = await h.command(h.boss, "language", {"language": "auto"})
        # When unsure, auto falls back to the server's Discord language (here English).
        assert auto == "From now on I answer in the language each person speaks. When I can't tell, I use English."
        assert h.manager.languages.mode(f"guild:{h.guild.id}") == "auto"

        reset = await h.command(h.boss, "language", {"language": "default"})
        assert reset == "Back to the default: English."
        assert h.manager.languages.store.get(f"guild:{h.guild.id}")[0] is None
        await h.command(h.alice, "leave")


async def test_the_servers_discord_language_is_the_default(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    h.guild.guild.preferred_locale = "ja"
    discord_.world.users[h.boss.id].locale = "ja"
    async with running_bot(h, monkeypatch, extensions=EXTENSIONS):
        assert await h.command(h.boss, "language") == (
            "ここでは日本語で話しています（サーバーの言語）。`/language` で `auto` か言語を指定すると変更できます。")
        # Alice's Discord is in English, but the server chose Japanese: the server's language wins.
        assert "ここでは日本語で話しています（サーバーの言語）" in await h.command(h.alice, "language")
        await h.alice.join_voice(h.voice)
        await h.command(h.alice, "join")
        notice = await discord_.wait_bot_message(h.voice, contains="/optout", timeout=TIMEOUT)
        assert "聞いています" in notice.content
        await h.command(h.alice, "leave")


async def test_commands_are_localised_and_checks_answer_in_the_callers_language(
        discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    discord_.world.users[h.alice.id].locale = "de"
    async with running_bot(h, monkeypatch, extensions=EXTENSIONS):
        language = discord_.world.find_command("language", h.guild.id)
        assert language is not None
        assert language.raw["name_localizations"]["de"] == "sprache"
        assert language.raw["name_localizations"]["ja"] == "言語"
        assert language.raw["description_localizations"]["fr"].startswith("Choisis la langue")
        assert language.raw["description_localizations"]["pt-BR"].startswith("Escolha o idioma")
        join = discord_.world.find_command("join", h.guild.id)
        assert join is not None and join.raw["description_localizations"]["es-ES"].startswith("Tráeme")
        # A check failing (no Manage Server) answers in the caller's Discord language.
        assert await h.command(h.alice, "mode", {"mode": "always"}) == "Dafür brauchst du die Berechtigung **Server verwalten**."


async def test_join_and_leave_answer_in_the_callers_language(discord_: LocalDiscord,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    discord_.world.users[h.alice.id].locale = "es-ES"
    async with running_bot(h, monkeypatch, extensions=EXTENSIONS):
        assert await h.command(h.alice, "join") == (
            "No estás en ningún canal de voz. Entra en uno primero o dime cuál: `/join channel:`.")
        await h.alice.join_voice(h.voice)
        assert (await h.command(h.alice, "join")).startswith("Estoy en ")
        assert await h.command(h.alice, "leave") == "He salido del canal de voz. Ya no estoy escuchando."
        assert await h.command(h.alice, "leave") == "No estoy en ningún canal de voz de este servidor."


async def test_mode_answers_in_the_callers_language(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    discord_.world.users[h.boss.id].locale = "fr"
    async with running_bot(h, monkeypatch, extensions=EXTENSIONS):
        answer = await h.command(h.boss, "mode", {"mode": "push-to-talk"})
        assert answer.startswith("Mode réglé sur **push-to-talk**. ") and "Utilise `/listen`" in answer


async def test_language_autocomplete_on_the_loopback_discord(discord_: LocalDiscord,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch, extensions=EXTENSIONS):
        async def typed(text: str) -> list[dict[str, str]]:
            handle = await h.boss.type_option("language", {"language": text}, focused="language", channel=h.text)
            return await handle.wait_choices(timeout=TIMEOUT)  # checked by the loopback against Discord's limits

        everything = await typed("")
        assert len(everything) == 25  # 2 settings and 33 languages: Discord's 25 at most
        assert [c["value"] for c in everything[:3]] == ["auto", "default", "en"]
        assert await typed("deu") == [{"name": "Deutsch (de)", "value": "de"}]
        # Typing reaches the languages past the first 25.
        assert await typed("BAHASA") == [{"name": "Bahasa Indonesia (id)", "value": "id"},
                                         {"name": "Bahasa Melayu (ms)", "value": "ms"}]
        picked = await h.boss.invoke_command("language", {"language": "ms"}, channel=h.text)
        await picked.wait_text(timeout=TIMEOUT)
        assert h.manager.languages.mode(f"guild:{h.guild.id}") == "ms"
    assert discord_.problems == []
