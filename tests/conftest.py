"""Shared test set-up: a developer's environment and .env never reach a test."""

from __future__ import annotations

import pytest

from bot.settings import ENV_VARS
from tests.pg import pg_url  # noqa: F401  (a fresh PostgreSQL database per test)


@pytest.fixture(autouse=True)
def _no_developer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings come only from what each test passes; SDKs that read their own variables
    # (DEEPGRAM_API_KEY, ELEVENLABS_API_KEY, OPENAI_*) see nothing either.
    for name in [*ENV_VARS, "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "DEEPGRAM_TOKEN"]:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _restore_discord_api_base() -> object:
    # The bot points discord.py's REST routes at DISCORD_API_BASE (a class attribute); undo it.
    import discord.gateway
    import discord.http

    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    yield
    discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


def _asyncio_task_stacks() -> str:
    """Every pending task of every open event loop, with where each one waits."""
    import asyncio
    import gc
    import io

    out = io.StringIO()
    for loop in [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]:
        if loop.is_closed():
            continue
        for task in asyncio.all_tasks(loop):
            task.print_stack(limit=12, file=out)
    return out.getvalue() or "(no pending tasks)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    # pytest-timeout prints the threads; a hang on the event loop is in its tasks, so print those too.
    outcome = yield
    if call.excinfo is not None and "Timeout" in str(call.excinfo.value):
        outcome.get_result().sections.append(("asyncio tasks at the timeout", _asyncio_task_stacks()))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    # `-n auto`: most of the suite waits on real time (audio paced as people speak, real processes
    # starting, the real clients' retry back-offs) rather than computing, so half again as many
    # workers as cores keeps the cores busy; the tests themselves never depend on the machine's speed.
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores + cores // 2)
