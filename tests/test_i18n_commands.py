"""Every command's words in the server's language, on the loopback Discord; nothing left outside the catalog."""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from bot.i18n import catalog
from bot.i18n.catalog import MESSAGES, t
from bot.i18n.commands import DESCRIPTIONS, NAMES
from bot.loopback.server import LocalDiscord
from tests.test_voice_commands import TIMEOUT, _seed, running_bot

ROOT = Path(__file__).resolve().parent.parent
LOCALISED = ("de", "fr", "es", "pt", "ja")
EVERY_COG = ("cogs.voice", "cogs.privacy", "cogs.link", "cogs.language", "cogs.memory")


@pytest.fixture
async def discord_() -> AsyncIterator[LocalDiscord]:
    async with LocalDiscord(token="loopback.voicebot.0123456789abcdef") as server:
        yield server


# -- a German server hears German from every command -------------------------------------------


async def test_a_german_server_gets_german_answers_from_every_command(
        discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    h.guild.guild.preferred_locale = "de"  # a Community server that chose German; the callers' clients are en-US
    async with running_bot(h, monkeypatch, extensions=EVERY_COG):
        status = await h.command(h.alice, "status")
        assert "ist hier in keinem Sprachkanal" in status and "**Sprache:** Deutsch" in status
        assert "**Spracherkennung:** aus" in status and "**Antworten schreibt:**" in status

        assert "es gibt also kein Gespräch" in await h.command(h.alice, "transcript")
        assert "Nutze zuerst `/join`" in await h.command(h.alice, "say", {"text": "Hallo"})

        # A voice engine's own reason, in German (and a reason the catalog does not know: a general one).
        from audio.tts.base import TTSError

        real = h.manager.tts.list_voices
        reasons = iter(["My voice service rejected its API key, so I can't speak right now.", "Out of cheese."])

        async def refused() -> list[object]:
            raise TTSError("ElevenLabs answered 401", user_message=next(reasons))

        h.manager.tts.list_voices = refused
        assert await h.command(h.alice, "voice list") == \
            "Mein Sprachdienst hat seinen API-Schlüssel abgelehnt, deshalb kann ich gerade nicht sprechen."
        assert (await h.command(h.alice, "voice list")).startswith("Ich konnte die Stimmen gerade nicht")
        h.manager.tts.list_voices = real

        settings = await h.command(h.boss, "voice settings")
        assert settings.startswith("Aktuelle Spracheinstellungen:") and "• Modus: **auto**" in settings
        assert "• tritt von selbst bei: **nirgends**" in settings
        assert (await h.command(h.boss, "voice settings", {"transcript": True})).startswith("Gespeichert.")
        assert "Stimmen (" in await h.command(h.alice, "voice list")
        assert "kenne ich nicht" in await h.command(h.boss, "voice set", {"voice": "Nobody"})
        assert "Hier spreche ich ab jetzt mit **Rachel**" in await h.command(h.boss, "voice set", {"voice": "rachel"})
        allow = await h.command(h.boss, "voice allow", {"channel": h.voice.id, "on": True})
        assert allow.startswith("Man darf mich in diese Kanäle holen: ")
        from bot.voice.guilds import AUTO_JOIN, MAX_LISTED_CHANNELS
        for fake_id in range(1, MAX_LISTED_CHANNELS + 1):
            (await h.manager.guild_settings.set_channel(h.guild.id, AUTO_JOIN, fake_id, True))
        full = await h.command(h.boss, "voice autojoin", {"channel": h.other_voice.id, "on": True})
        assert full == f"Die Liste ist voll ({MAX_LISTED_CHANNELS} Kanäle); entferne zuerst einen."

        await h.alice.join_voice(h.voice)
        assert (await h.command(h.alice, "join")).startswith("Ich bin in ")
        notice = await discord_.wait_bot_message(h.voice, contains="/optout", timeout=TIMEOUT)
        assert "hört zu" in notice.content
        assert h.voice.channel.status is not None and "hört zu" in h.voice.channel.status

        status = await h.command(h.alice, "status")
        assert "**Sprachkanal:** Lounge" in status and "**Gerade:** auto: eine Person hier" in status
        assert "**Letzte Runde:**" in status
        assert await h.command(h.alice, "say", {"text": "Hallo zusammen."}) == "Gesagt."
        assert (await h.command(h.alice, "listen")).startswith("Ich höre zu")
        assert await h.command(h.alice, "transcript") == "Hier ist die bisherige Mitschrift dieses Gesprächs."

        assert (await h.command(h.alice, "optout")).startswith("Erledigt: Ab jetzt ignoriere ich deine Stimme")
        assert (await h.command(h.alice, "optout")).startswith("Du warst schon abgemeldet")
        assert (await h.command(h.alice, "listen")).startswith("Du hast dich abgemeldet")
        assert (await h.command(h.alice, "optin")).startswith("Willkommen zurück")
        assert (await h.command(h.alice, "forget")).startswith(("Vergessen:", "Ich hatte nichts"))
        memory = await h.command(h.alice, "memory show")
        assert memory.startswith("**Was ich über dich speichere**") and "Mit meiner jetzigen Engine" in memory

        assert (await h.command(h.alice, "link phone")).startswith("SMS sind bei diesem Bot nicht eingerichtet")
        assert await h.command(h.alice, "unlink") == "Mit deinem Konto ist keine Telefonnummer verknüpft."

        assert await h.command(h.alice, "leave") == "Ich habe den Sprachkanal verlassen und höre nicht mehr zu."


async def test_command_names_are_localised_for_every_command(discord_: LocalDiscord,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    async with running_bot(h, monkeypatch, extensions=EVERY_COG):
        world = discord_.world
        for name, german in (("voice", "stimme"), ("optout", "abmelden"), ("status", "status"),
                             ("transcript", "mitschrift"), ("forget", "vergessen"), ("link", "verknüpfen"),
                             ("unlink", "trennen"), ("listen", "zuhören"), ("mode", "modus")):
            command = world.find_command(name, h.guild.id)
            assert command is not None, name
            assert command.raw["name_localizations"]["de"] == german, name
            assert command.raw["description_localizations"]["ja"], name
        voice = world.find_command("voice", h.guild.id)
        assert voice is not None
        subs = {o["name"]: o for o in voice.raw["options"]}
        assert subs["settings"]["name_localizations"]["fr"] == "réglages"
        option = next(o for o in subs["settings"]["options"] if o["name"] == "idle_leave_seconds")
        assert option["description_localizations"]["es-ES"].startswith("Salir tras")


def _app_commands() -> Iterator[app_commands.Command | app_commands.Group]:  # type: ignore[type-arg]
    import cogs.chat
    import cogs.language
    import cogs.link
    import cogs.memory
    import cogs.privacy
    import cogs.voice

    for module in (cogs.voice, cogs.language, cogs.privacy, cogs.link, cogs.chat, cogs.memory):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, commands.Cog) and value is not commands.Cog:
                yield from value.__cog_app_commands__


def test_every_command_name_and_description_has_every_translation() -> None:
    missing: list[tuple[str, str]] = []
    names_valid = re.compile(r"^[-_\w]{1,32}$")

    def visit(command: app_commands.Command | app_commands.Group) -> None:  # type: ignore[type-arg]
        texts = [command.description]
        if isinstance(command, app_commands.Group):
            for sub in command.commands:
                visit(sub)
        else:
            texts += [p.description for p in command.parameters]
        for code in LOCALISED:
            name = NAMES.get(command.name, {}).get(code)
            if name is None:
                missing.append((command.name, code))
            else:
                assert names_valid.match(name) and name == name.lower(), (command.name, code, name)
            for text in texts:
                if text and not DESCRIPTIONS.get(text, {}).get(code):
                    missing.append((text, code))

    commands_ = list(_app_commands())
    for command in commands_:
        visit(command)
    assert missing == []
    # Discord refuses a sync where two commands of one level share a name in some locale.
    levels = [[c.name for c in commands_]] + [[s.name for s in c.commands] for c in commands_
                                               if isinstance(c, app_commands.Group)]
    for level in levels:
        for code in LOCALISED:
            shown = [NAMES[name][code] for name in level]
            assert len(shown) == len(set(shown)), (code, shown)
    # Discord refuses the whole sync when one localisation is longer than 100 characters.
    too_long = [(k, code) for k, entry in DESCRIPTIONS.items() for code, text in entry.items() if len(text) > 100]
    assert too_long == []


# -- nothing a person reads is written outside the catalog --------------------------------------

_SENDERS = {"send", "send_message", "reply", "edit", "edit_original_response", "_answer", "_send_safely", "_post"}
_LETTERS = re.compile(r"[^\W\d_]")


def _literals(node: ast.AST) -> Iterator[str]:
    """String constants inside an expression, except those that are only an argument of t() or a key."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "t":
        return  # t("key", ...): a catalog lookup
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
        return
    for child in ast.iter_child_nodes(node):
        yield from _literals(child)


def _person_facing_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in _SENDERS:
            args = list(node.args) + [k.value for k in node.keywords if k.arg in (None, "content")]
        elif name == "VoiceCommandError":
            args = list(node.args[:1])
        elif name in ("Choice", "Button"):
            args = [k.value for k in node.keywords if k.arg in ("name", "label")]
        else:
            continue
        for arg in args:
            for text in _literals(arg):
                if _LETTERS.search(text) and text not in MESSAGES:
                    found.append(f"{path.name}:{node.lineno}: {text!r}")
    return found


def test_no_person_facing_literal_outside_the_catalog() -> None:
    files = sorted((ROOT / "cogs").glob("*.py")) + [ROOT / "bot" / "voice" / "manager.py"]
    found = [line for path in files for line in _person_facing_literals(path)]
    assert found == []


def test_the_scan_finds_a_literal_when_there_is_one(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "async def f(interaction, t):\n"
        "    await interaction.response.send_message('Said it.', ephemeral=True)\n"
        "    await interaction.followup.send(t('say.done', 'de'))\n"
        "    raise VoiceCommandError('voice.shutting_down')\n"
        "    raise VoiceCommandError(f'I left {x}')\n", encoding="utf-8")
    found = sorted(_person_facing_literals(sample))
    assert len(found) == 2 and "'Said it.'" in found[0] and "I left" in found[1]


# -- bad inputs --------------------------------------------------------------------------------


def test_a_translation_naming_a_value_the_caller_does_not_give_falls_back_to_english(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MESSAGES, "test.mismatch", {"en": "Moved to {channel}.", "de": "Jetzt in {kanal}."})
    caplog.set_level(logging.ERROR, logger="bot.i18n.catalog")
    assert t("test.mismatch", "de", channel="#x") == "Moved to #x."
    assert any("needs values" in r.getMessage() for r in caplog.records)


def test_a_missing_translation_of_a_new_key_falls_back_to_english_once(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = {code: text for code, text in MESSAGES["say.done"].items() if code != "ja"}
    monkeypatch.setitem(MESSAGES, "say.done", entry)
    monkeypatch.setattr(catalog, "_warned", set())
    caplog.set_level(logging.WARNING, logger="bot.i18n.catalog")
    assert t("say.done", "ja") == "Said it." and t("say.done", "ja-JP") == "Said it."
    assert len([r for r in caplog.records if "say.done" in r.getMessage()]) == 1


async def test_right_to_left_values_keep_their_direction_and_unknown_languages_fall_back(
        discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    h.guild.guild.preferred_locale = "ko"  # a language the bot's words are not in
    rtl = h.guild.add_voice_channel("טרקלין")
    discord_.world.users[h.boss.id].locale = "fr"
    async with running_bot(h, monkeypatch, extensions=EVERY_COG):
        # Korean server, French client: the catalog has no Korean, so the caller's French.
        answer = await h.command(h.boss, "language", {"language": "שלום?"})
        assert answer.startswith("Je ne connais pas la langue")
        assert "\u2068שלום?\u2069" in answer  # isolated: the "?" stays at the end of the Hebrew word
        refused = await h.command(h.boss, "voice set", {"voice": "مرحبا؟"})
        assert "\u2068مرحبا؟\u2069" in refused and refused.startswith("Je ne connais pas de voix")
        # Alice's client is en-US (says nothing) and the server's language has no catalog: English.
        assert "is not in a voice channel here" in await h.command(h.alice, "status")
        # A server set to a language without a catalog (Arabic): the caller's language again.
        await h.command(h.boss, "language", {"language": "ar"})
        assert "n'est dans aucun salon vocal ici" in await h.command(h.boss, "status")
        # A Hebrew channel name inside the (English) join notice keeps its direction.
        await h.alice.join_voice(rtl)
        await h.command(h.alice, "join")
        notice = await discord_.wait_bot_message(rtl, contains="/optout", timeout=TIMEOUT)
        assert "in \u2068טרקלין\u2069 and listening" in notice.content
        await h.command(h.alice, "leave")


async def test_auto_servers_answer_each_caller_in_their_language(discord_: LocalDiscord,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    h = _seed(discord_)
    h.guild.guild.preferred_locale = "de"
    discord_.world.users[h.alice.id].locale = "ja"
    async with running_bot(h, monkeypatch, extensions=EVERY_COG):
        assert "ist hier in keinem Sprachkanal" in await h.command(h.alice, "status")  # the server's German
        await h.command(h.boss, "language", {"language": "auto"})
        # auto: no language of its own, so each caller's client language (Japanese), else the fallback.
        assert "ボイスチャンネルに参加していません" in await h.command(h.alice, "status")
        assert "is not in a voice channel here" in await h.command(h.boss, "status")  # Boss's client: en-US


async def test_dm_answers_follow_the_persons_language() -> None:
    from bot.store import SqliteDatabase as Database
    from bot.i18n.places import PlaceLanguages
    from bot.i18n.words import person_words_language

    languages = (await PlaceLanguages.open(Database.in_memory(), "en"))
    assert person_words_language(languages, 7, "pt-BR") == "pt"
    assert person_words_language(languages, 7, "ko") == "en"  # no catalog: English
    languages.store.learn("discord:7", "fr")  # what the DMs showed
    assert person_words_language(languages, 7, "pt-BR") == "fr"
    assert person_words_language((await PlaceLanguages.open(Database.in_memory(), "es")), 8, None) == "es"
    assert person_words_language(None, 9, "klingon") == "en"


# -- the speech engines' failure texts -----------------------------------------------------------


def test_every_engine_text_in_the_catalog_is_still_what_an_engine_writes() -> None:
    from bot.i18n.engine_texts import ENGINE_PREFIX

    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "audio").rglob("*.py"))
    stale = []
    for key, entry in MESSAGES.items():
        if key.startswith(ENGINE_PREFIX):
            english = re.sub(r"\{\w+\}", "{", entry["en"]).split("{")[0]  # up to a placeholder
            if english not in sources:
                stale.append(key)
    assert stale == []


def test_engine_texts_are_said_in_the_places_language_and_anything_else_passes() -> None:
    from bot.i18n.engine_texts import translate_engine_text

    assert translate_engine_text("I can't reach Deepgram right now.", "de") == "Ich erreiche Deepgram gerade nicht."
    assert translate_engine_text("Deepgram refused the connection (HTTP 503).", "fr") == \
        "Deepgram a refusé la connexion (HTTP 503)."
    # A synthesis failure names its sentence: the sentence stays as it was said.
    assert translate_engine_text("The local voice is not working. (Guten Tag)", "ja") == \
        "ローカル音声が動作していません。 (Guten Tag)"
    assert translate_engine_text("I can't reach Deepgram right now.", "en") == "I can't reach Deepgram right now."
    assert translate_engine_text("Ich erreiche Deepgram gerade nicht.", "fr") == "Ich erreiche Deepgram gerade nicht."
    assert translate_engine_text("Something else entirely.", "de") == "Something else entirely."


async def test_a_shortened_text_reply_says_so_in_the_readers_language() -> None:
    from bot.textchat import StreamingWriter
    from tests.test_textchat import Recorder, _endless

    channel = Recorder()
    note = t("chat.shortened", "de")
    writer = StreamingWriter(channel.send, channel.edit, max_messages=2, shortened_note=note)
    await writer.stream(_endless("Das ist noch ein Satz einer endlosen Antwort. ", [0]))
    assert writer.capped and channel.messages[-1].endswith("Antwort. *…(Antwort gekürzt)*")
    assert all(len(m) <= 2000 for m in channel.messages)


async def test_notes_of_a_call_name_the_servers_language_and_the_file_speaks_it() -> None:
    import time as _time

    from bot.agent import Agent
    from bot.agent.character import parse_character
    from bot.agent.engines.openai_engine import OpenAIEngine
    from bot.store import SqliteDatabase as Database
    from bot.memory import Memory, Modality, Turn
    from bot.voice.scribe import call_transcript, render_transcript, summarize
    from tests.fakes.openai_server import FakeOpenAI

    memory = (await Memory.open(Database.in_memory()))
    room = "discord:1:2"
    memory.append(Turn(room=room, speaker_id="discord:7", speaker_name="", role="user", text="Wir verschieben den Start.",
                       modality=Modality.VOICE, created_at=_time.time()))
    turns = await call_transcript(memory, room, since=0)
    async with FakeOpenAI(reply_tokens=["- Start verschoben."]) as fake:
        engine = OpenAIEngine(api_key=fake.api_key, base_url=fake.base_url, model="gpt-test", max_tokens=50,
                              temperature=0.3, timeout=10, max_retries=0)
        try:
            assert await summarize(Agent(parse_character({"name": "Wren"}), engine, memory), room, turns, "de") == \
                "- Start verschoben."
        finally:
            await engine.aclose()
        [request] = fake.completion_requests
    assert "If they spoke several languages, write it in German." in request.body["messages"][-1]["content"]
    data, cut = render_transcript(turns, title="Mitschrift von Lounge", limit_bytes=200, language="de")
    text = data.decode()
    assert text.startswith("Mitschrift von Lounge\nZeiten in UTC.\n") and "] jemand: Wir verschieben" in text
    assert not cut
    data, cut = render_transcript(turns * 20, title="x", limit_bytes=300, language="ja")
    assert cut and "以前の行は省略" in data.decode()
