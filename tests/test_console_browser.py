"""The console in a real browser: Debian's Chromium driven by playwright, its fake microphone fed a
WAV of speech. The page connects, the speech is transcribed by the local recognizer, the reply's
audio reaches the page, the chart shows the turn, and /metrics counts it.

Skips (with the reason) where /usr/bin/chromium or playwright is missing; `.ci/run` installs both.
Set VOICEBOT_SCREENSHOT=path to keep the screenshot (docs/console.png was made that way).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from bot.console import Console, Metrics, mount
from bot.store import SqliteDatabase as Database
from bot.services import Services, build_services
from bot.settings import load_settings
from bot.web import create_app

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does it)"),
]
playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install -e '.[test]')")

PHRASE = "Hello, can you hear me today?"
WAIT = 180_000  # ms: the recognizer shares two loaded cores; every wait is on page state, not time
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


def speech_wav(path: Path) -> tuple[Path, float]:
    """The phrase (espeak-ng, 48 kHz mono) followed by silence: Chromium loops the file."""
    import soxr

    from tests.speech_samples import espeak_pcm

    pcm, rate = espeak_pcm(PHRASE)
    speech = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    speech48 = soxr.resample(speech, rate, 48000)
    silence = np.zeros(48000 * 4, dtype=np.float32)
    audio = np.concatenate([np.zeros(4800, dtype=np.float32), speech48, silence])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path, 0.1 + len(speech48) / 48000


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    settings = load_settings({"AGENT_ENGINE": "eliza", "STT_ENGINE": "local", "TTS_ENGINE": "espeak"}, env_file=None)
    s = await build_services(settings, db=Database.in_memory())
    yield s
    await s.aclose()


async def test_talking_to_the_bot_from_a_browser(services: Services, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    wav, spoken = speech_wav(tmp_path / "speech.wav")
    console = Console(services, metrics=Metrics())
    server = TestServer(create_app(mounts=[lambda app: mount(app, console)]), host="127.0.0.1")
    await server.start_server()
    url = f"http://127.0.0.1:{server.port}/"
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                               args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}"])
            try:
                # bypass_csp: the page forbids eval, which is how playwright runs the test's predicates.
                page = await browser.new_page(viewport={"width": 1200, "height": 1000}, bypass_csp=True)
                problems: list[str] = []
                page.on("pageerror", lambda exc: problems.append(str(exc)))
                await page.goto(url)
                await page.wait_for_function("window.voicebot && window.voicebot.updates > 0", timeout=WAIT)
                assert await page.text_content("#bot-name") == services.agent.character.name
                assert await page.text_content("#engine-stt") == "local"

                await page.click("#pg-connect")
                await page.wait_for_function("window.voicebot.playground.connected", timeout=WAIT)
                await page.wait_for_selector("#pg-log .note", timeout=WAIT)  # hello from the server
                await page.click("#pg-talk")
                # Hold the button while the phrase plays (measured in audio the page has sent).
                await page.wait_for_function(f"window.voicebot.playground.sentSeconds >= {spoken + 0.6}",
                                             timeout=WAIT)
                await page.click("#pg-talk")

                await page.wait_for_function("window.voicebot.playground.transcripts.length > 0", timeout=WAIT)
                heard = (await page.evaluate("window.voicebot.playground.transcripts[0]")).lower()
                assert "hear" in heard, heard
                await page.wait_for_function("window.voicebot.playground.turns.length > 0", timeout=WAIT)
                await page.wait_for_function("window.voicebot.playground.replyAudioSeconds > 0.3", timeout=WAIT)
                turn: dict[str, Any] = await page.evaluate("window.voicebot.playground.turns[0]")
                assert turn["outcome"] == "answered" and turn["reply"]
                assert turn["stages_ms"]["stt_final"] >= 0 and turn["wait_ms"] > 0
                # The live chart (over server-sent events) shows the turn.
                await page.wait_for_function("Number(document.getElementById('turns-chart').dataset.turns) >= 1",
                                             timeout=WAIT)
                chart_pixels = await page.evaluate("""() => {
                    const c = document.getElementById('turns-chart');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let coloured = 0;
                    for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 200 && d[i] < 120) coloured++;
                    return coloured; }""")
                assert chart_pixels > 20  # the bar's final-transcript segment (blue) is drawn
                assert problems == []

                shot = Path(os.environ.get("VOICEBOT_SCREENSHOT") or tmp_path / "console.png")
                await page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                await page.click("#pg-connect")  # disconnect
                await page.wait_for_function("!window.voicebot.playground.connected", timeout=WAIT)
            finally:
                await browser.close()

        # /metrics counts the turn, read by prometheus-client's own parser.
        async with aiohttp.ClientSession() as client:
            text = await (await client.get(f"{url}metrics")).text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        answered = [s.value for s in families["voicebot_turns"].samples if s.name == "voicebot_turns_total"
                    and s.labels == {"channel": "playground", "outcome": "answered"}]
        assert answered == [1.0]
        waits = [s.value for s in families["voicebot_wait_seconds"].samples
                 if s.name == "voicebot_wait_seconds_count" and s.labels["channel"] == "playground"]
        assert waits == [1.0]
        await asyncio.wait_for(_until(lambda: console.playground is not None and console.playground.count() == 0), 60)
    finally:
        await server.close()


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.05)


def test_chromium_is_the_debian_one() -> None:
    # The tests drive the system browser; nothing is downloaded by playwright.
    assert shutil.which("chromium") in (CHROMIUM, None) or os.path.exists(CHROMIUM)


async def test_two_tabs_and_a_tab_closed_mid_reply(services: Services) -> None:
    from playwright.async_api import async_playwright

    from audio.tts.espeak import EspeakEngine

    tts = EspeakEngine()
    console = Console(services, metrics=Metrics(process=False), engines=(None, tts, None))
    server = TestServer(create_app(mounts=[lambda app: mount(app, console)]), host="127.0.0.1")
    await server.start_server()
    url = f"http://127.0.0.1:{server.port}/"
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                first = await browser.new_page(bypass_csp=True)
                second = await browser.new_page(bypass_csp=True)
                for page in (first, second):
                    await page.goto(url)
                await first.click("#pg-connect")
                await first.wait_for_function("window.voicebot.playground.connected", timeout=WAIT)
                await second.click("#pg-connect")
                await second.wait_for_function("window.voicebot.playground.errors.length > 0", timeout=WAIT)
                assert "another tab" in await second.evaluate("window.voicebot.playground.errors[0]")
                await second.wait_for_function("!window.voicebot.playground.connected", timeout=WAIT)
                assert await first.evaluate("window.voicebot.playground.connected")

                # The first tab types; it closes as soon as the reply's audio starts arriving.
                await first.fill("#pg-text", "Tell me about the sea and the sky and the long summer days.")
                await first.click("#pg-send")
                await first.wait_for_function("window.voicebot.playground.replyAudioSeconds > 0", timeout=WAIT)
                await first.close()
                await asyncio.wait_for(_until(lambda: console.playground is not None
                                              and console.playground.count() == 0), 60)
                # The slot is free: the second tab connects now.
                await second.click("#pg-connect")
                await second.wait_for_function("window.voicebot.playground.connected", timeout=WAIT)
            finally:
                await browser.close()
    finally:
        await server.close()
        await tts.aclose()
    from tests.test_playground import assert_nothing_left_running

    await assert_nothing_left_running()
