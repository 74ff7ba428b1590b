"""The console on the real aiohttp server: /metrics (parsed by prometheus-client's own parser), the
live state over server-sent events, and who may see any of it (tokens, Host, public binding)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from bot.agent import Incoming
from bot.console import Console, Metrics, mount
from bot.console.metrics import LiveSource, ReceiveSample
from bot.db import Database
from bot.memory import Modality
from bot.services import Services, build_services
from bot.settings import Secret, Settings
from bot.voice.session import TurnTiming
from bot.web import create_app

CONSOLE_TOKEN = "console-secret-token-1"
METRICS_TOKEN = "metrics-secret-token-2"

FAMILIES = {
    "voicebot_turns": "counter",
    "voicebot_wait_seconds": "histogram",
    "voicebot_stage_seconds": "histogram",
    "voicebot_receive_packets": "counter",
    "voicebot_receive_drops": "counter",
    "voicebot_provider_requests": "counter",
    "voicebot_provider_errors": "counter",
    "voicebot_sms_messages_total": "gauge",
    "voicebot_voice_connections": "gauge",
    "voicebot_active_speakers": "gauge",
    "process_cpu_seconds": "counter",
}


async def make_services(**settings: object) -> Services:
    return await build_services(Settings(**settings), db=Database.in_memory())  # type: ignore[arg-type]


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    s = await make_services()
    yield s
    await s.aclose()


async def client_for(services: Services, console: Console | None = None) -> TestClient:
    console = console or Console(services, metrics=Metrics())
    app = create_app(mounts=[lambda app: mount(app, console)])
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


def parse(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict[str, object], family: str, name: str, **labels: str) -> float:
    for s in families[family].samples:  # type: ignore[attr-defined]
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


def timing(start: float = 100.0) -> TurnTiming:
    return TurnTiming(user_id=1, speech_end=start, final_transcript=start + 0.2, first_text=start + 0.3,
                      first_tts_audio=start + 0.35, first_frame=start + 0.36, text="my secret plans", reply="ok")


# ------------------------------------------------------------------------------------------ /metrics


async def test_metrics_parse_with_every_documented_family(services: Services) -> None:
    client = await client_for(services)
    try:
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        families = parse(await resp.text())
    finally:
        await client.close()
    for name, kind in FAMILIES.items():
        assert name in families, name
        assert families[name].type == kind, name  # type: ignore[attr-defined]
    assert sample(families, "voicebot_turns", "voicebot_turns_total", channel="playground", outcome="answered") == 0
    assert sample(families, "voicebot_voice_connections", "voicebot_voice_connections") == 0


async def test_text_reply_counts_a_turn_and_a_provider_request(services: Services) -> None:
    metrics = Metrics(process=False)
    Console(services, metrics=metrics)
    reply = services.agent.reply(Incoming(room="discord:1:2", speaker_id="discord:3", speaker_name="Ann",
                                          text="hello there", modality=Modality.TEXT))
    assert await reply.collect()
    families = parse(metrics.render().decode())
    assert sample(families, "voicebot_turns", "voicebot_turns_total", channel="text", outcome="answered") == 1
    assert sample(families, "voicebot_provider_requests", "voicebot_provider_requests_total",
                  provider="eliza", kind="agent") == 1
    assert sample(families, "voicebot_wait_seconds", "voicebot_wait_seconds_count", channel="text") == 1
    # Nothing of what was said reaches the exposition.
    assert "hello" not in metrics.render().decode()


async def test_voice_turn_feeds_wait_and_stage_histograms_without_content() -> None:
    metrics = Metrics(process=False)
    metrics.turn("voice", "answered", timing(), end_of_turn=0.6)
    metrics.turn("voice", "ignored", None)
    text = metrics.render().decode()
    families = parse(text)
    assert sample(families, "voicebot_turns", "voicebot_turns_total", channel="voice", outcome="answered") == 1
    assert sample(families, "voicebot_turns", "voicebot_turns_total", channel="voice", outcome="ignored") == 1
    assert sample(families, "voicebot_wait_seconds", "voicebot_wait_seconds_sum", channel="voice") == pytest.approx(0.96)
    for stage, seconds in {"end_of_turn": 0.6, "stt_final": 0.2, "agent_first_text": 0.1,
                           "tts_first_audio": 0.05, "first_packet": 0.01}.items():
        assert sample(families, "voicebot_stage_seconds", "voicebot_stage_seconds_sum",
                      stage=stage) == pytest.approx(seconds), stage
    assert "secret" not in text


async def test_two_metrics_objects_share_nothing() -> None:
    a, b = Metrics(process=False), Metrics(process=False)
    a.turn("sms", "failed")
    fb = parse(b.render().decode())
    assert sample(fb, "voicebot_turns", "voicebot_turns_total", channel="sms", outcome="failed") == 0


class _Receive(LiveSource):
    def __init__(self) -> None:
        self.samples: list[ReceiveSample] = []

    def receive_samples(self) -> list[ReceiveSample]:
        return list(self.samples)

    def voice_connections(self) -> dict[int, int]:
        return {s.guild_id: 1 for s in self.samples}


async def test_receive_counters_stay_monotonic_when_a_connection_leaves() -> None:
    metrics = Metrics(process=False)
    source = _Receive()
    metrics.attach_live(source, guild_labels=True)
    conn = object()
    source.samples = [ReceiveSample(conn, 42, delivered=90, lost=4, dropped={"decrypt": 4, "rtcp": 6})]
    f = parse(metrics.render().decode())
    assert sample(f, "voicebot_receive_packets", "voicebot_receive_packets_total", guild="42", result="delivered") == 90
    assert sample(f, "voicebot_receive_packets", "voicebot_receive_packets_total", guild="42", result="rejected") == 6
    assert sample(f, "voicebot_receive_drops", "voicebot_receive_drops_total", guild="42", reason="decrypt") == 4
    assert sample(f, "voicebot_voice_connections", "voicebot_voice_connections", guild="42") == 1
    source.samples = []  # the bot left that channel
    f = parse(metrics.render().decode())
    assert sample(f, "voicebot_receive_packets", "voicebot_receive_packets_total", guild="42", result="delivered") == 90
    assert sample(f, "voicebot_receive_packets", "voicebot_receive_packets_total", guild="42", result="lost") == 4


async def test_guild_ids_appear_only_when_opted_in() -> None:
    metrics = Metrics(process=False)
    source = _Receive()
    metrics.attach_live(source)
    source.samples = [ReceiveSample(object(), 123456789, delivered=5, lost=0, dropped={})]
    text = metrics.render().decode()
    assert "123456789" not in text
    assert sample(parse(text), "voicebot_receive_packets", "voicebot_receive_packets_total", result="delivered") == 5


async def test_sms_states_are_read_from_the_store(services: Services) -> None:
    from bot.sms.store import SmsStore

    metrics = Metrics(process=False)
    Console(services, metrics=metrics)
    store = SmsStore(services.db)
    assert store.claim("SM1", "+15551112222") and store.claim("SM2", "+15551112222")
    store.set_state("SM2", "failed")
    store.claim("SM3", "+15551112223")
    store.set_state("SM3", "keyword:STOP")
    f = parse(metrics.render().decode())
    assert sample(f, "voicebot_sms_messages_total", "voicebot_sms_messages_total", state="received") == 1
    assert sample(f, "voicebot_sms_messages_total", "voicebot_sms_messages_total", state="failed") == 1
    assert sample(f, "voicebot_sms_messages_total", "voicebot_sms_messages_total", state="keyword") == 1
    assert "+1555" not in metrics.render().decode()


async def test_metrics_scraped_during_a_burst_parse_and_count_exactly(services: Services) -> None:
    console = Console(services, metrics=Metrics())
    client = await client_for(services, console)
    try:
        async def burst(n: int) -> None:
            for i in range(n):
                console.metrics.turn("voice", "answered", timing(float(i)))
                if i % 10 == 0:
                    await asyncio.sleep(0)

        async def scrape() -> dict[str, object]:
            resp = await client.get("/metrics")
            assert resp.status == 200
            return parse(await resp.text())

        results = await asyncio.gather(*(burst(100) for _ in range(5)), *(scrape() for _ in range(20)))
        for families in results[5:]:
            assert "voicebot_turns" in families  # every scrape mid-burst is a complete exposition
        final = await scrape()
        assert sample(final, "voicebot_turns", "voicebot_turns_total", channel="voice", outcome="answered") == 500
        assert sample(final, "voicebot_stage_seconds", "voicebot_stage_seconds_count", stage="stt_final") == 500
    finally:
        await client.close()


# ------------------------------------------------------------------------------------------ the page


async def test_console_page_and_assets_are_served_from_the_package(services: Services) -> None:
    client = await client_for(services)
    try:
        resp = await client.get("/")
        assert resp.status == 200
        html = await resp.text()
        assert "/console/static/console.js" in html and "http" not in html.replace("http-equiv", "")
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        for name in ("console.js", "console.css", "pcm-worklet.js"):
            asset = await client.get(f"/console/static/{name}")
            assert asset.status == 200, name
            assert "https://" not in await asset.text()  # nothing fetched from elsewhere
        assert (await client.get("/console/static/..%2Fapp.py")).status == 404
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()


async def read_event(resp: aiohttp.ClientResponse) -> dict[str, object]:
    data = None
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), 30)).decode()
        if line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "\n" and data is not None:
            return data


@pytest.mark.parametrize("show", [False, True])
async def test_live_state_streams_turns_with_content_only_when_enabled(show: bool) -> None:
    services = await make_services(console_show_content=show)
    console = Console(services, metrics=Metrics(process=False))
    client = await client_for(services, console)
    try:
        resp = await client.get("/console/events")
        assert resp.headers["Content-Type"] == "text/event-stream"
        first = await read_event(resp)
        assert first["bot"] == services.agent.character.name and first["turns"] == []
        assert first["engines"]["agent"] == "eliza"  # type: ignore[index]
        console.metrics.turn("playground", "answered", timing())
        while True:
            state = await read_event(resp)
            if state["turns"]:
                break
        turn = state["turns"][0]  # type: ignore[index]
        assert turn["channel"] == "playground" and turn["outcome"] == "answered"
        assert turn["stages_ms"]["stt_final"] == pytest.approx(200.0)
        assert turn["wait_ms"] == pytest.approx(360.0)
        assert ("text" in turn) is show
        assert ("my secret plans" in json.dumps(state)) is show
        resp.close()
    finally:
        await client.close()
        await services.aclose()


# ------------------------------------------------------------------------------------------ access

PROTECTED = ("/", "/console/events", "/console/state", "/console/static/console.js", "/playground/ws")


async def test_public_binding_without_a_token_refuses_everything_but_health_and_twilio() -> None:
    services = await make_services(web_host="0.0.0.0")
    client = await client_for(services)
    try:
        for path in (*PROTECTED, "/metrics"):
            resp = await client.get(path)
            assert resp.status == 403, path
            assert "TOKEN" in await resp.text()
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()
        await services.aclose()


async def test_tokens_are_required_and_checked_when_bound_publicly(caplog: pytest.LogCaptureFixture) -> None:
    services = await make_services(web_host="0.0.0.0", console_token=Secret(CONSOLE_TOKEN),
                                   metrics_token=Secret(METRICS_TOKEN))
    client = await client_for(services)
    try:
        for path in ("/", "/console/state", "/metrics"):
            assert (await client.get(path)).status == 401, path  # missing
            assert (await client.get(path, headers={"Authorization": "Bearer nope"})).status == 401, path
        console_auth = {"Authorization": f"Bearer {CONSOLE_TOKEN}"}
        metrics_auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        assert (await client.get("/console/state", headers=console_auth)).status == 200
        assert (await client.get("/metrics", headers=console_auth)).status == 401  # metrics has its own token
        assert (await client.get("/metrics", headers=metrics_auth)).status == 200
        assert (await client.get("/console/state", headers=metrics_auth)).status == 401
        # /?token= once: a cookie, and the token leaves the address bar.
        resp = await client.get(f"/?token={CONSOLE_TOKEN}", allow_redirects=False)
        assert resp.status == 302 and resp.headers["Location"] == "/"
        assert (await client.get("/console/state")).status == 200  # the cookie jar sends it now
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()
        await services.aclose()
    assert CONSOLE_TOKEN not in caplog.text and METRICS_TOKEN not in caplog.text


async def test_loopback_binding_refuses_a_foreign_host_name(services: Services) -> None:
    client = await client_for(services)
    try:
        assert (await client.get("/console/state")).status == 200
        rebound = await client.get("/console/state", headers={"Host": "attacker.example:8080"})
        assert rebound.status == 403
        assert (await client.get("/metrics", headers={"Host": "localhost"})).status == 200
    finally:
        await client.close()


async def test_too_many_event_streams_are_refused(services: Services) -> None:
    from bot.console.app import MAX_EVENT_STREAMS

    client = await client_for(services)
    try:
        streams = []
        for _ in range(MAX_EVENT_STREAMS):
            resp = await client.get("/console/events")
            await read_event(resp)
            streams.append(resp)
        assert (await client.get("/console/events")).status == 429
        for resp in streams:
            resp.close()
    finally:
        await client.close()  # the server ends its streams on shutdown: nothing hangs here


# ------------------------------------------------------------------------------------------ session outcomes


async def test_the_session_reports_every_outcome_to_the_metrics() -> None:
    from bot.voice.turns import VoiceMode
    from tests.test_voice_session import (
        RecordingOut,
        ScriptedEngine,
        ScriptedSTT,
        make_session,
        speak,
        wait_turns,
    )

    services = await make_services()
    console = Console(services, metrics=Metrics(process=False))
    try:
        # ignored (addressed mode, not named), then answered, then failed (the agent), then interrupted.
        ignored, _, _ = make_session(ScriptedEngine(["Yes?"]), ScriptedSTT({1: ["nice weather", "hey wren hi"]}),
                                     mode=VoiceMode.ADDRESSED, humans=3)
        console.watch(ignored, end_of_turn=0.6)
        speak(ignored, 1)
        speak(ignored, 1)
        await wait_turns(ignored, 1)
        await ignored.aclose()

        failing, _, _ = make_session(ScriptedEngine(["never"], fail_after=0), ScriptedSTT({1: ["hello"]}))
        console.watch(failing)
        speak(failing, 1)
        await wait_turns(failing, 1)
        await failing.aclose()

        out = RecordingOut(hold=True)
        stt = ScriptedSTT({1: ["tell me a story"]})
        cut, _, _ = make_session(ScriptedEngine(["One two three four five six. ", "Never."]), stt, out=out)
        console.watch(cut)
        speak(cut, 1)
        await asyncio.wait_for(out.started.wait(), 30)
        cut.on_speech_start(2)
        stt.streams["2"].emit("wait")
        await wait_turns(cut, 1)
        await cut.aclose()

        f = parse(console.metrics.render().decode())
        got = {o: sample(f, "voicebot_turns", "voicebot_turns_total", channel="voice", outcome=o) for o in
               ("answered", "ignored", "failed", "interrupted")}
        assert got == {"answered": 1, "ignored": 1, "failed": 1, "interrupted": 1}
        assert [t.outcome for t in console.turns] == ["ignored", "answered", "failed", "interrupted"]
        assert sample(f, "voicebot_provider_requests", "voicebot_provider_requests_total",
                      provider="scripted", kind="stt") >= 3
    finally:
        await services.aclose()


async def test_behind_a_proxy_on_this_machine_the_console_needs_its_token() -> None:
    # nginx's default `proxy_pass http://127.0.0.1:8080;` sends Host: 127.0.0.1:8080; with PUBLIC_URL
    # set the server is reached from outside, so loopback no longer means "this machine's owner".
    from aiohttp.test_utils import TestClient, TestServer

    from bot.console import Console, Metrics, mount
    from bot.db import Database
    from bot.services import build_services
    from bot.settings import Settings
    from bot.web import create_app

    settings = Settings(public_url="https://bot.example.com")  # WEB_HOST 127.0.0.1, no CONSOLE_TOKEN
    services = await build_services(settings, db=Database.in_memory())
    console = Console(services, metrics=Metrics())
    client = TestClient(TestServer(create_app(mounts=[lambda app: mount(app, console)]), host="127.0.0.1"))
    await client.start_server()
    try:
        headers = {"Host": "127.0.0.1:8080", "X-Forwarded-For": "203.0.113.9"}
        for path in ("/console/state", "/metrics", "/"):
            response = await client.get(path, headers=headers)
            assert response.status in (401, 403), (path, response.status)
    finally:
        await client.close()
        await services.aclose()
