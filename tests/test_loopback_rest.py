"""The loopback Discord's REST side, driven by a plain discord.py client pointed at it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import discord
import discord.gateway
import discord.http
import pytest
import yarl
from discord import app_commands

from bot.loopback.server import LocalDiscord

TIMEOUT = 20.0


def make_intents() -> discord.Intents:
    intents = discord.Intents.default()
    intents.message_content = True
    intents.members = True
    intents.voice_states = True
    return intents


@contextlib.asynccontextmanager
async def connected(client: discord.Client, token: str, *, timeout: float = TIMEOUT) -> AsyncIterator[discord.Client]:
    """``client`` logged in and connected until the block ends, then closed; yields once it is ready."""
    runner: asyncio.Task[None] | None = None
    try:
        await client.login(token)
        runner = asyncio.create_task(client.connect(reconnect=True), name="test-discord-client")
        waiter = asyncio.create_task(client.wait_until_ready(), name="test-wait-ready")
        done, _ = await asyncio.wait({waiter, runner}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if runner in done:
                runner.result()
            raise TimeoutError("the client never became ready")
        yield client
    finally:
        await client.close()
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner


@contextlib.asynccontextmanager
async def running_client(
    discord_: LocalDiscord,
    monkeypatch: pytest.MonkeyPatch,
    setup: Callable[[discord.Client], None] | None = None,
    *,
    client_cls: type[discord.Client] = discord.Client,
    token: str | None = None,
) -> AsyncIterator[discord.Client]:
    """A discord.py client connected to ``discord_`` with only settings changed; yields once ready."""
    monkeypatch.setattr(discord.http.Route, "BASE", discord_.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(discord_.gateway_url + "/"))
    client = client_cls(intents=make_intents(), connector=discord_.connector(), guild_ready_timeout=0.05)
    if setup is not None:
        setup(client)
    async with connected(client, token or discord_.token):
        # guild_ready_timeout is short to keep logins fast; on a loaded machine a GUILD_CREATE can
        # arrive after it and so after on_ready. Wait for the guilds themselves, not for the timer.
        expected = set(discord_.world.guilds)
        for _ in range(int(TIMEOUT / 0.01)):
            if expected <= {g.id for g in client.guilds}:
                break
            await asyncio.sleep(0.01)
        else:
            raise TimeoutError(f"guilds {expected - {g.id for g in client.guilds}} never arrived")
        yield client


@pytest.fixture
async def discord_() -> AsyncIterator[LocalDiscord]:
    async with LocalDiscord(interaction_deadline=3.0) as server:
        yield server


async def test_login_sees_guild_channels_and_members(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    guild = discord_.add_guild("Loopback")
    guild.add_text_channel("general")
    guild.add_voice_channel("General")
    guild.add_stage_channel("Stage")
    alice = guild.add_member("Alice")
    async with running_client(discord_, monkeypatch) as client:
        assert client.user is not None and client.user.id == discord_.bot_user_id
        assert client.application_id == discord_.application_id
        seen = client.get_guild(guild.id)
        assert seen is not None
        assert {c.name for c in seen.channels} == {"general", "General", "Stage"}
        assert seen.get_member(alice.id) is not None and seen.get_member(alice.id).display_name == "Alice"
        assert seen.me.guild_permissions.administrator
        _, url, _ = await client.http.get_bot_gateway()
        assert url == discord_.gateway_url
    assert discord_.problems == []


async def test_member_message_reaches_on_message_and_reply_is_logged(
    discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    guild = discord_.add_guild()
    text = guild.add_text_channel("general")
    alice = guild.add_member("Alice")
    received: asyncio.Queue[discord.Message] = asyncio.Queue()

    def setup(client: discord.Client) -> None:
        @client.event
        async def on_message(message: discord.Message) -> None:
            if message.author.bot:
                return
            await received.put(message)
            await message.reply(f"hello {message.author.display_name}", mention_author=False)

    async with running_client(discord_, monkeypatch, setup) as client:
        sent = await alice.send_message(text, f"<@{discord_.bot_user_id}> hi there")
        message = await asyncio.wait_for(received.get(), TIMEOUT)
        assert message.content.endswith("hi there")
        assert client.user in message.mentions
        reply = await discord_.wait_bot_message(text, timeout=TIMEOUT)
        assert reply.content == "hello Alice"
        assert reply.reference_id == sent.id
        assert [m.content for m in text.bot_messages] == ["hello Alice"]
    assert discord_.problems == []


async def test_too_long_message_is_rejected_like_discord(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    guild = discord_.add_guild()
    text = guild.add_text_channel("general")
    async with running_client(discord_, monkeypatch) as client:
        channel = client.get_channel(text.id)
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.HTTPException) as info:
            await channel.send("x" * 2001)
        assert info.value.status == 400 and info.value.code == 50035
        assert "content" in str(info.value)
        ok = await channel.send("x" * 2000)
        assert len(ok.content) == 2000
    assert any("2001 characters" in p for p in discord_.problems)


async def test_missing_route_is_a_404_and_a_problem(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    guild = discord_.add_guild()
    async with running_client(discord_, monkeypatch) as client:
        with pytest.raises(discord.NotFound):
            await client.http.request(discord.http.Route("GET", "/guilds/{guild_id}/bans", guild_id=guild.id))
    assert any(f"GET /api/v10/guilds/{guild.id}/bans" in p for p in discord_.problems)


async def test_wrong_token_is_refused(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    discord_.add_guild()
    with pytest.raises(discord.LoginFailure):
        async with running_client(discord_, monkeypatch, token="not-the-token"):
            pass
    assert any("Authorization" in p for p in discord_.problems)


async def test_typing_channel_fetch_and_voice_status(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    guild = discord_.add_guild()
    text = guild.add_text_channel("general")
    voice = guild.add_voice_channel("General")
    async with running_client(discord_, monkeypatch) as client:
        channel = await client.fetch_channel(text.id)
        assert channel.name == "general"
        await channel.typing()  # type: ignore[union-attr]
        vc = client.get_channel(voice.id)
        assert isinstance(vc, discord.VoiceChannel)
        await vc.edit(status="listening")
    assert discord_.events.of("typing")
    assert voice.channel.status == "listening"
    assert discord_.problems == []


def _tree_setup(commands_ready: asyncio.Event, gate: asyncio.Event | None = None,
                outcome: asyncio.Future[BaseException | str] | None = None) -> Callable[[discord.Client], None]:
    def setup(client: discord.Client) -> None:
        tree = app_commands.CommandTree(client)

        @tree.command(name="ping", description="Answer at once")
        async def ping(interaction: discord.Interaction, word: str = "pong") -> None:
            await interaction.response.send_message(word)

        @tree.command(name="slow", description="Defer, then follow up")
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await interaction.followup.send("done thinking")

        @tree.command(name="late", description="Answers after the deadline")
        async def late(interaction: discord.Interaction) -> None:
            assert gate is not None and outcome is not None
            await gate.wait()
            try:
                await interaction.response.send_message("too late")
                outcome.set_result("answered")
            except discord.HTTPException as exc:
                outcome.set_result(exc)

        @client.event
        async def on_ready() -> None:
            for guild in client.guilds:
                tree.copy_global_to(guild=guild)
                await tree.sync(guild=guild)
            commands_ready.set()

    return setup


async def test_command_sync_and_interactions(discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    guild = discord_.add_guild()
    text = guild.add_text_channel("general")
    alice = guild.add_member("Alice")
    synced = asyncio.Event()
    async with running_client(discord_, monkeypatch, _tree_setup(synced)):
        await asyncio.wait_for(synced.wait(), TIMEOUT)
        assert set(discord_.world.guild_commands[guild.id]) == {"ping", "slow", "late"}
        ping = await alice.invoke_command("ping", {"word": "hello"}, channel=text)
        await ping.wait_response(timeout=TIMEOUT)
        assert ping.response_type == 4 and ping.texts == ["hello"]
        assert not ping.late
        slow = await alice.invoke_command("slow")
        assert await slow.wait_text(timeout=TIMEOUT) == "done thinking"
        assert slow.response_type == 5
        with pytest.raises(LookupError):
            await alice.invoke_command("unknown")
        with pytest.raises(KeyError):
            await alice.invoke_command("ping", {"nope": 1})
    assert discord_.problems == []


FRUITS = ("apple", "banana", "mango", "orange")


def _autocomplete_setup(commands_ready: asyncio.Event) -> Callable[[discord.Client], None]:
    def setup(client: discord.Client) -> None:
        tree = app_commands.CommandTree(client)
        pick = app_commands.Group(name="pick", description="Pick something")

        @pick.command(name="fruit", description="A fruit")
        async def fruit(interaction: discord.Interaction, name: str, size: int = 1) -> None:
            await interaction.response.send_message(f"{name} x{size}")

        @fruit.autocomplete("name")
        async def fruit_names(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            if current == "many":
                return [app_commands.Choice(name=f"fruit {i}", value=f"f{i}") for i in range(30)]
            if current == "long":
                return [app_commands.Choice(name="x" * 101, value="x")]
            return [app_commands.Choice(name=f.title(), value=f) for f in FRUITS if current in f]

        @fruit.autocomplete("size")
        async def sizes(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[int]]:
            return [app_commands.Choice(name=f"{n} ({interaction.namespace.name})", value=n) for n in (1, 2, 3)]

        tree.add_command(pick)

        @client.event
        async def on_ready() -> None:
            for guild in client.guilds:
                tree.copy_global_to(guild=guild)
                await tree.sync(guild=guild)
            commands_ready.set()

    return setup


async def test_autocomplete_of_a_subcommand_option_and_discords_limits_on_the_answer(
        discord_: LocalDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    guild = discord_.add_guild()
    text = guild.add_text_channel("general")
    alice = guild.add_member("Alice")
    synced = asyncio.Event()
    async with running_client(discord_, monkeypatch, _autocomplete_setup(synced)):
        await asyncio.wait_for(synced.wait(), TIMEOUT)
        typing = await alice.type_option("pick fruit", {"name": "an"}, focused="name", channel=text)
        assert await typing.wait_choices(TIMEOUT) == [{"name": "Banana", "value": "banana"},
                                                      {"name": "Mango", "value": "mango"},
                                                      {"name": "Orange", "value": "orange"}]
        assert typing.interaction.type == 4 and typing.response_type == 8 and not typing.texts
        # An integer option: the partial input is sent as a string, the choices' values are integers;
        # the options filled in before come along.
        sizes = await alice.type_option("pick fruit", {"name": "mango", "size": "2"}, focused="size")
        assert [c["value"] for c in await sizes.wait_choices(TIMEOUT)] == [1, 2, 3]
        assert sizes.choices is not None and sizes.choices[0]["name"] == "1 (mango)"
        # Discord refuses more than 25 choices, and a name over 100 characters.
        for typed, problem in (("many", "30 autocomplete choices; Discord allows 25"),
                               ("long", "autocomplete choice 0 has a name of 101 characters")):
            refused = await alice.type_option("pick fruit", {"name": typed}, focused="name")
            await discord_.events.wait_for("problem", lambda e, i=refused.id: e.data.get("interaction_id") == i,
                                           timeout=TIMEOUT)
            assert not refused.answered and any(problem in p for p in discord_.problems)
        # The chosen value then runs the subcommand.
        chosen = await alice.invoke_command("pick fruit", {"name": "banana", "size": 3}, channel=text)
        await chosen.wait_response(timeout=TIMEOUT)
        assert chosen.texts == ["banana x3"]
        with pytest.raises(KeyError):
            await alice.type_option("pick fruit", {}, focused="colour")
        with pytest.raises(KeyError):
            await alice.invoke_command("pick vegetable")
    assert len(discord_.problems) == 2


async def test_late_interaction_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    async with LocalDiscord(interaction_deadline=0.2) as discord_:
        guild = discord_.add_guild()
        guild.add_text_channel("general")
        alice = guild.add_member("Alice")
        synced, gate = asyncio.Event(), asyncio.Event()
        outcome: asyncio.Future[BaseException | str] = asyncio.get_running_loop().create_future()
        async with running_client(discord_, monkeypatch, _tree_setup(synced, gate, outcome)):
            await asyncio.wait_for(synced.wait(), TIMEOUT)
            late = await alice.invoke_command("late")
            await discord_.events.wait_for("problem", lambda e: e.data.get("interaction_id") == late.id,
                                           timeout=TIMEOUT)
            gate.set()
            result = await asyncio.wait_for(outcome, TIMEOUT)
        assert late.late and not late.answered
        assert isinstance(result, discord.NotFound) and result.code == 10062
        assert any(f"interaction {late.id} (/late) not answered within 0.2 s" in p for p in discord_.problems)
