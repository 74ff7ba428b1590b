"""The playground's language selector: what the agent answers in and the voice it speaks with.

Over the WebSocket protocol (bad values refused with one line), and in a real browser (Chromium
driven by playwright, as tests/test_console_browser.py does): choosing Deutsch, then 日本語, makes the
built-in agent answer in that language with espeak-ng's matching voice, and the audio reaches the page.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bot.console import Console, Metrics, mount
from bot.store import SqliteDatabase as Database
from bot.services import Services, build_services
from bot.settings import load_settings
from bot.web import create_app
from tests.test_console_browser import CHROMIUM, CHROMIUM_ARGS, WAIT
from tests.test_playground import Rig, receive_until, rig  # noqa: F401  (the fixture)


async def test_the_selector_sets_the_playgrounds_language_and_refuses_bad_values(rig: Rig) -> None:  # noqa: F811
    ws = await rig.connect()
    hello = await receive_until(ws, "hello")
    assert hello["language"] == {"setting": None, "mode": "en", "name": "English"}
    codes = [lang["code"] for lang in hello["languages"]]
    assert {"de", "fr", "es", "pt", "ja"} <= set(codes)

    for bad in ("klingon", "", 42, "x" * 200):
        await ws.send_str(json.dumps({"type": "language", "language": bad}))
        error = await receive_until(ws, "error")
        assert "language" in error["message"].lower()
    assert rig.services.languages is not None
    assert rig.services.languages.store.get("playground") == (None, None)  # nothing stored

    await ws.send_str(json.dumps({"type": "language", "language": "de"}))
    state = await receive_until(ws, "language")
    assert state == {"type": "language", "setting": "de", "mode": "de", "name": "Deutsch"}
    await ws.send_str(json.dumps({"type": "text", "text": "Wie spät ist es?"}))
    turn = await receive_until(ws, "turn")
    assert turn["language"] == "de" and turn["voice"] == "de"
    assert "Englisch" in turn["reply"]  # ELIZA says, in German, that it only knows English

    await ws.send_str(json.dumps({"type": "language", "language": "default"}))
    assert (await receive_until(ws, "language"))["setting"] is None
    await ws.close()


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    settings = load_settings({"AGENT_ENGINE": "eliza", "STT_ENGINE": "none", "TTS_ENGINE": "espeak"}, env_file=None)
    s = await build_services(settings, db=Database.in_memory())
    yield s
    await s.aclose()


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
async def test_choosing_a_language_in_the_browser_changes_the_answer_and_the_voice(services: Services,
                                                                                  tmp_path: Path) -> None:
    pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install -e '.[test]')")
    from playwright.async_api import async_playwright

    console = Console(services, metrics=Metrics())
    server = TestServer(create_app(mounts=[lambda app: mount(app, console)]), host="127.0.0.1")
    await server.start_server()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(bypass_csp=True)
                problems: list[str] = []
                page.on("pageerror", lambda exc: problems.append(str(exc)))
                await page.goto(f"http://127.0.0.1:{server.port}/")
                await page.click("#pg-connect")
                await page.wait_for_function("window.voicebot.playground.language !== null", timeout=WAIT)
                assert await page.input_value("#pg-language") == "default"

                async def ask(code: str, text: str, count: int) -> dict[str, Any]:
                    await page.select_option("#pg-language", code)
                    await page.wait_for_function(f"window.voicebot.playground.language.mode === '{code}'",
                                                 timeout=WAIT)
                    await page.fill("#pg-text", text)
                    await page.click("#pg-send")
                    await page.wait_for_function(f"window.voicebot.playground.turns.length >= {count}",
                                                 timeout=WAIT)
                    turn: dict[str, Any] = await page.evaluate(f"window.voicebot.playground.turns[{count - 1}]")
                    return turn

                german = await ask("de", "Hallo, wie geht es dir heute?", 1)
                assert german["language"] == "de" and german["voice"] == "de" and "Englisch" in german["reply"]
                await page.wait_for_function("window.voicebot.playground.replyAudioSeconds > 0.3", timeout=WAIT)
                heard = await page.evaluate("window.voicebot.playground.replyAudioSeconds")

                japanese = await ask("ja", "こんにちは、元気ですか？", 2)
                assert japanese["language"] == "ja" and japanese["voice"] == "ja" and "英語" in japanese["reply"]
                await page.wait_for_function(f"window.voicebot.playground.replyAudioSeconds > {heard + 0.3}",
                                             timeout=WAIT)
                assert "Language: 日本語" in await page.text_content("#pg-log")
                assert problems == []
            finally:
                await browser.close()
    finally:
        await server.close()
    assert services.languages is not None and services.languages.store.get("playground")[0] == "ja"
