"""The console on the real aiohttp server: /metrics (parsed by prometheus-client's own parser), the
live state over server-sent events, and who may see any of it (tokens, Host, public binding)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from bot.agent import Incoming
from bot.console import Console, Metrics, mount
from bot.console.metrics import LiveSource, ReceiveSample
from bot.store import SqliteDatabase as Database
from bot.memory import Modality, Turn
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


async def client_for(services: Services, console: Console | None = None, **options: float) -> TestClient:
    console = console or Console(services, metrics=Metrics())
    app = create_app(mounts=[lambda app: mount(app, console, **options)])
    server = TestServer(app, host="127.0.0.1")
    # No access log, as WebServer runs it (aiohttp's would write /?token=... when INFO is on).
    await server.start_server(access_log=None)
    client = TestClient(server)
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
    """A spoken turn under the smart rule: the last sound 100 ms before the pause was noticed
    (``start``), the final 200 ms later, the turn over 250 ms after the last sound."""
    return TurnTiming(user_id=1, speech_end=start, final_transcript=start + 0.2, turn_end=start + 0.15 + 0.1,
                      first_text=start + 0.3, first_tts_audio=start + 0.35, first_frame=start + 0.36,
                      text="my secret plans", reply="ok", voice_end=start - 0.1)


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
    metrics.turn("voice", "answered", timing())
    metrics.turn("voice", "ignored", None)
    text = metrics.render().decode()
    families = parse(text)
    assert sample(families, "voicebot_turns", "voicebot_turns_total", channel="voice", outcome="answered") == 1
    assert sample(families, "voicebot_turns", "voicebot_turns_total", channel="voice", outcome="ignored") == 1
    # From the last sound (100 ms before the pause was noticed) to the first packet: 460 ms.
    assert sample(families, "voicebot_wait_seconds", "voicebot_wait_seconds_sum", channel="voice") == pytest.approx(0.46)
    # The end of turn that happened: the pause noticed (100 ms) and the hold after the final (50 ms);
    # the agent's stage starts when the turn was over. The stages add up to the wait.
    stages = {"end_of_turn": 0.15, "stt_final": 0.2, "agent_first_text": 0.05, "tts_first_audio": 0.05,
              "first_packet": 0.01}
    for stage, seconds in stages.items():
        assert sample(families, "voicebot_stage_seconds", "voicebot_stage_seconds_sum",
                      stage=stage) == pytest.approx(seconds), stage
    assert sum(stages.values()) == pytest.approx(0.46)
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
    from bot.sms.store import open_sms_store

    metrics = Metrics(process=False)
    console = Console(services, metrics=metrics)
    store = await open_sms_store(services.store)
    assert await store.claim("SM1", "+15551112222") and await store.claim("SM2", "+15551112222")
    await store.set_state("SM2", "failed")
    await store.claim("SM3", "+15551112223")
    await store.set_state("SM3", "keyword:STOP")
    await console.refresh_sms_states()  # what the console's tick does (a scrape never waits on the database)
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
        assert turn["wait_ms"] == pytest.approx(460.0)
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
    client = await client_for(services, wrong_token_delay=0.0)
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
        assert (await client.get("/metrics", headers={"Host": f"localhost:{client.port}"})).status == 200
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
        console.watch(ignored)
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
    from bot.store import SqliteDatabase as Database
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


# ------------------------------------------------------------------------------------------ issue 21


class _ClockedOut:
    """Plays nothing, but says when the first frame went out, on the session's clock."""

    async def play(self, text: str, chunks: object, fmt: object) -> object:
        import time

        from bot.voice.session import PlayResult

        first = None
        async for _ in chunks:  # type: ignore[attr-defined]
            first = first if first is not None else time.monotonic()
        return PlayResult(1.0, 1.0, interrupted=False, first_frame_at=first)

    def stop(self) -> None:
        pass


async def test_a_voice_turns_wait_runs_from_the_last_sound_to_the_first_packet() -> None:
    """Item 4: the session carries when the person last spoke (the end of speech less the receive
    path's packet gap) and when their turn was declared over; /metrics uses that, not a fixed 0.6 s."""
    from bot.agent import Agent
    from bot.agent.character import default_character
    from bot.console.metrics import stage_seconds
    from bot.memory import Memory
    from bot.voice.endpointing import TurnDetection
    from bot.voice.session import VoiceSession
    from bot.voice.turns import TurnPolicy, VoiceMode
    from tests.test_voice_session import FRAME, ScriptedEngine, ScriptedSTT, ToneTTS, wait_turns

    services = await make_services()
    console = Console(services, metrics=Metrics(process=False))
    memory = (await Memory.open(Database.in_memory()))
    character = default_character()
    session = VoiceSession(
        room="discord:1:2", agent=Agent(character, ScriptedEngine(["It is noon."]), memory), memory=memory,
        stt=ScriptedSTT({1: ["What time is it?"]}), tts=ToneTTS(), out=_ClockedOut(),  # type: ignore[arg-type]
        policy=TurnPolicy(bot_names=(character.name,), mode=VoiceMode.ALWAYS),
        turn_detection=TurnDetection(pause_ms=100, finished_ms=250, unfinished_ms=250),
    )
    console.watch(session)
    try:
        session.on_speech_start(1)
        for _ in range(10):
            session.on_audio(1, FRAME)
        session.on_speech_end(1)  # the receive path noticed a 100 ms gap after the last packet
        await wait_turns(session, 1)
        t = session.last_timing
        assert t is not None and t.first_frame is not None and t.turn_end is not None
        assert t.voice_end == pytest.approx(t.speech_end - 0.1)
        assert t.turn_end >= t.voice_end + 0.25  # finished words: over 250 ms after the last sound
        f = parse(console.metrics.render().decode())
        wait = sample(f, "voicebot_wait_seconds", "voicebot_wait_seconds_sum", channel="voice")
        assert wait == pytest.approx(t.first_frame - t.voice_end)
        stages = {s: sample(f, "voicebot_stage_seconds", "voicebot_stage_seconds_sum", stage=s)
                  for s in ("end_of_turn", "stt_final", "agent_first_text", "tts_first_audio", "first_packet")}
        assert stages == pytest.approx(stage_seconds(t))
        assert sum(stages.values()) == pytest.approx(wait)  # the stages are the wait, split
        # The end of turn that happened: the gap and the hold, never less than the rule's 250 ms.
        assert stages["end_of_turn"] + stages["stt_final"] >= 0.25 - 1e-6
        assert console.turns[-1].wait_ms == pytest.approx(round(wait * 1000, 1))
    finally:
        await session.aclose()
        await console.aclose()
        await services.aclose()


def turns_of(families: dict[str, object], channel: str) -> dict[str, float]:
    return {o: sample(families, "voicebot_turns", "voicebot_turns_total", channel=channel, outcome=o)
            for o in ("answered", "interrupted", "failed", "ignored")}


async def test_a_calls_summary_is_a_request_to_the_agent_not_a_persons_turn() -> None:
    """Item 6: the scribe's summary asks the reply engine, but nobody took a text turn."""
    import time

    from bot.memory import Turn
    from bot.voice.scribe import summarize
    from tests.test_voice_session import ScriptedEngine

    services = await make_services()
    services.agent.engine = ScriptedEngine(["- They planned the trip."])
    console = Console(services, metrics=Metrics(process=False))
    try:
        said = [Turn(room="discord:1:2", speaker_id="discord:3", speaker_name="Ann", role="user",
                     text="Let us plan the trip", modality=Modality.VOICE, created_at=time.time())]
        assert await summarize(services.agent, "discord:1:2", said) == "- They planned the trip."
        f = parse(console.metrics.render().decode())
        assert sample(f, "voicebot_provider_requests", "voicebot_provider_requests_total",
                      provider="scripted", kind="agent") == 1
        assert turns_of(f, "text") == {"answered": 0, "interrupted": 0, "failed": 0, "ignored": 0}
        # A person's message is a turn (and an empty mention, answered without the engine, is one too).
        for text in ("hello there", ""):
            await services.agent.reply(Incoming(room="discord:1:2", speaker_id="discord:3", speaker_name="Ann",
                                                text=text, modality=Modality.TEXT)).collect()
        f = parse(console.metrics.render().decode())
        assert turns_of(f, "text")["answered"] == 2
        assert sample(f, "voicebot_provider_requests", "voicebot_provider_requests_total",
                      provider="scripted", kind="agent") == 2
    finally:
        await console.aclose()
        await services.aclose()


async def test_text_messages_over_the_rate_limit_are_counted_as_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 6: the real chat cog on the loopback Discord, one answer a minute per person."""
    from bot.loopback.server import LocalDiscord
    from tests.test_chat_bounds import TOKEN, _wait_for, running_bot

    async with LocalDiscord(token=TOKEN) as d:
        async with running_bot(d, monkeypatch, {"AGENT_ENGINE": "eliza", "CHAT_RATE_LIMIT": "1"}) as bot:
            console = Console(bot.services, metrics=Metrics(process=False))
            ann = bot.guild.add_member("Ann")
            for n in range(3):
                await ann.send_message(bot.text, f"<@{d.bot_user_id}> hello number {n}")
            # One answer, then one "slow down" note; the third is not answered at all.
            await _wait_for(lambda: turns_of(parse(console.metrics.render().decode()), "text")["ignored"] == 2,
                            "two ignored turns")
            await _wait_for(lambda: len(bot.text.bot_messages) == 2, "the answer and the note")
            assert turns_of(parse(console.metrics.render().decode()), "text") == {
                "answered": 1, "interrupted": 0, "failed": 0, "ignored": 2}
            await console.aclose()
        assert d.problems == []


async def test_sms_messages_not_answered_are_counted_as_ignored() -> None:
    """Item 6: real signed webhooks into the SMS service with the real agent: an opted-out number,
    an empty text and one over the rate limit are turns, ignored; STOP and START are commands."""
    from bot.sms.inbound import SmsService, TwilioWebhooks
    from bot.sms.outbound import TwilioSender
    from bot.privacy import open_opt_outs
    from bot.sms.store import open_sms_store
    from tests.fakes.twilio_server import FakeTwilio
    from tests.test_sms_webhook import OURS, PUBLIC, SID, TOKEN, Env, instant, sms_form

    services = await make_services()
    console = Console(services, metrics=Metrics(process=False))
    assert services.store is not None
    store = await open_sms_store(services.store, opt_outs=await open_opt_outs(services.store))
    try:
        async with FakeTwilio(SID, TOKEN) as fake:
            sender = TwilioSender(SID, TOKEN, OURS, api_base=fake.base_url, status_callback=PUBLIC + "/twilio/status",
                                  sleep=instant, rand=lambda: 0.0)
            service = SmsService(agent=services.agent, memory=services.memory, store=store, sender=sender,
                                 rate_limit=1, reply_budget=10.0)
            app = create_app(webhooks=TwilioWebhooks(service, auth_token=TOKEN, public_url=PUBLIC),
                             mounts=[lambda app: mount(app, console)])
            async with TestClient(TestServer(app)) as client:
                env = Env(client, fake, services.memory, store, services.agent, service)  # type: ignore[arg-type]
                for body in ("hello there", "STOP", "are you there?", "START", "", "hello again"):
                    status, _ = await env.post(sms_form(body))
                    assert status == 200, body
                await service.wait_idle()
                await service.aclose()
        f = parse(console.metrics.render().decode())
        assert turns_of(f, "sms") == {"answered": 1, "interrupted": 0, "failed": 0, "ignored": 3}
        assert turns_of(f, "text") == {"answered": 0, "interrupted": 0, "failed": 0, "ignored": 0}
    finally:
        await console.aclose()
        await services.aclose()


async def test_only_this_machines_literal_names_reach_the_loopback_console(services: Services) -> None:
    """Item 9 (DNS rebinding): a name of the attacker's that resolves to 127.0.0.1 is not this machine."""
    client = await client_for(services)
    port = client.port
    try:
        for host in (f"127.attacker.example:{port}", f"127.0.0.1.nip.io:{port}", f"localhost.attacker:{port}",
                     f"localhost:{port + 1}", "localhost", f"127.0.0.1:{port}x", ""):
            for path in ("/console/state", "/metrics", "/"):
                assert (await client.get(path, headers={"Host": host})).status == 403, (host, path)
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await client.ws_connect("/playground/ws", headers={"Host": host, "Origin": f"http://{host}"})
            assert refused.value.status == 403, host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}",
                     f"127.0.0.2:{port}"):
            assert (await client.get("/console/state", headers={"Host": host})).status == 200, host
            assert (await client.get("/metrics", headers={"Host": host})).status == 200, host
        ws = await client.ws_connect("/playground/ws", headers={"Host": f"localhost:{port}",
                                                                "Origin": f"http://localhost:{port}"})
        await ws.close()
    finally:
        await client.close()


async def test_behind_public_url_the_host_is_public_urls_or_this_machines() -> None:
    services = await make_services(public_url="https://bot.example.com", console_token=Secret(CONSOLE_TOKEN))
    client = await client_for(services)
    auth = {"Authorization": f"Bearer {CONSOLE_TOKEN}"}
    try:
        for host in ("bot.example.com", "bot.example.com:443", f"127.0.0.1:{client.port}"):
            assert (await client.get("/console/state", headers={**auth, "Host": host})).status == 200, host
        for host in ("evil.example", "bot.example.com:8443", f"127.attacker.example:{client.port}"):
            assert (await client.get("/console/state", headers={**auth, "Host": host})).status == 403, host
    finally:
        await client.close()
        await services.aclose()


async def raw_request(port: int, head: bytes) -> bytes:
    """One request written byte for byte (what a client library would refuse to send); the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def test_bytes_that_are_not_utf8_in_the_token_are_a_401_not_a_500(caplog: pytest.LogCaptureFixture) -> None:
    """Item 12: non-UTF-8 bytes in Authorization or Cookie are a wrong token (one line, no traceback)."""
    caplog.set_level(logging.INFO)
    services = await make_services(web_host="0.0.0.0", console_token=Secret(CONSOLE_TOKEN))
    console = Console(services, metrics=Metrics(process=False))
    client = TestClient(TestServer(create_app(mounts=[lambda app: mount(app, console, wrong_token_delay=0.0)]),
                                   host="127.0.0.1"))
    await client.start_server()
    try:
        for header in (b"Authorization: Bearer \xff\xfe\x80" + CONSOLE_TOKEN.encode(),
                       b"Cookie: voicebot_console=\xff\xfe.\x80"):
            caplog.clear()
            answer = await raw_request(client.port, b"GET /console/state HTTP/1.1\r\nHost: x\r\n" + header +
                                       b"\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
            refusals = [r for r in caplog.records if r.name == "bot.console.app"]
            assert len(refusals) == 1 and "wrong token" in refusals[0].getMessage()
            assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    finally:
        await client.close()
        await services.aclose()


async def test_event_streams_of_clients_that_never_read_are_cut(services: Services,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Item 13: eight clients that ask for the live events and never read do not keep the slots."""
    import socket

    from bot.console.app import MAX_EVENT_STREAMS

    caplog.set_level(logging.INFO)
    console = Console(services, metrics=Metrics(process=False), tick=0.02)  # snapshots come quickly
    client = TestClient(TestServer(create_app(mounts=[lambda app: mount(app, console, event_send_timeout=0.5)]),
                                   host="127.0.0.1"))
    await client.start_server()
    idle: list[socket.socket] = []
    try:
        for _ in range(MAX_EVENT_STREAMS):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, never emptied
            sock.connect(("127.0.0.1", client.port))
            sock.sendall(f"GET /console/events HTTP/1.1\r\nHost: 127.0.0.1:{client.port}\r\n\r\n".encode())
            idle.append(sock)

        async def a_tab_gets_in() -> None:
            while True:
                resp = await client.get("/console/events")
                if resp.status == 200:
                    assert (await read_event(resp))["bot"] == services.agent.character.name
                    resp.close()
                    return
                assert resp.status == 429
                resp.close()
                await asyncio.sleep(0.1)

        await asyncio.wait_for(a_tab_gets_in(), 30)
        assert any("stopped reading" in r.getMessage() for r in caplog.records)
    finally:
        for sock in idle:
            sock.close()
        await client.close()


async def test_the_console_cookie_is_a_signed_session_not_the_token() -> None:
    """Item 13: the cookie never holds the token, lasts a working day, and is Secure behind https."""
    from http.cookies import SimpleCookie

    for public_url, secure in (("https://bot.example.com", True), (None, False)):
        services = await make_services(web_host="0.0.0.0", public_url=public_url, console_token=Secret(CONSOLE_TOKEN))
        client = await client_for(services, wrong_token_delay=0.0)
        host = {"Host": "bot.example.com"} if public_url else {}
        try:
            resp = await client.get(f"/?token={CONSOLE_TOKEN}", headers=host, allow_redirects=False)
            assert resp.status == 302
            cookie = SimpleCookie(resp.headers["Set-Cookie"])["voicebot_console"]
            assert CONSOLE_TOKEN not in resp.headers["Set-Cookie"]
            assert not any(w in cookie.value for w in (CONSOLE_TOKEN[i:i + 8] for i in range(len(CONSOLE_TOKEN) - 7)))
            assert 0 < int(cookie["max-age"]) <= 12 * 3600
            assert bool(cookie["secure"]) is secure and cookie["httponly"] and cookie["samesite"] == "Strict"
            client.session.cookie_jar.clear()  # a Secure cookie is sent over https only: send it by hand
            session = {**host, "Cookie": f"voicebot_console={cookie.value}"}
            assert (await client.get("/console/state", headers=session)).status == 200
            # The old kind of cookie (the raw token) is no key.
            forged = {**host, "Cookie": f"voicebot_console={CONSOLE_TOKEN}"}
            assert (await client.get("/console/state", headers=forged)).status == 401
        finally:
            await client.close()
            await services.aclose()


async def test_wrong_tokens_are_answered_later_and_later(caplog: pytest.LogCaptureFixture) -> None:
    """Item 13: each wrong token in a row from one address waits twice as long; the right one does not."""
    import time

    caplog.set_level(logging.INFO)
    services = await make_services(web_host="0.0.0.0", console_token=Secret(CONSOLE_TOKEN))
    console = Console(services, metrics=Metrics(process=False))
    client = TestClient(TestServer(create_app(mounts=[lambda app: mount(app, console, wrong_token_delay=0.1)]),
                                   host="127.0.0.1"))
    await client.start_server()
    try:
        took = []
        for guess in ("nope", "still-nope", "nope-again"):
            started = time.monotonic()
            resp = await client.get("/console/state", headers={"Authorization": f"Bearer {guess}"})
            took.append(time.monotonic() - started)
            assert resp.status == 401
        started = time.monotonic()
        resp = await client.get("/?token=guess-in-the-address", allow_redirects=False)
        assert resp.status == 401 and time.monotonic() - started >= 0.8  # the fourth in a row: 0.1 * 2**3
        assert took[0] >= 0.1 and took[1] >= 0.2 and took[2] >= 0.4  # lower bounds: a slow machine only adds
        right = await client.get("/console/state", headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"})
        assert right.status == 200
        assert len([r for r in caplog.records if "wrong token" in r.getMessage()]) == 4
    finally:
        await client.close()
        await services.aclose()


def test_a_guessable_console_token_is_refused_at_start_with_one_line(tmp_path: Path) -> None:
    """Item 13: `CONSOLE_TOKEN=a` stops `voicebot` before anything starts, like the other settings."""
    from tests.cli_runs import CliRun, free_port

    run = CliRun("run", tmp_path, {"CONSOLE_TOKEN": "a", "METRICS_TOKEN": "short-but-not-20",
                                   "WEB_PORT": str(free_port())}).start()
    done = run.finish()
    assert done.code == 2
    lines = [line for line in done.stderr.splitlines() if "TOKEN" in line]
    assert len(lines) == 2 and "CONSOLE_TOKEN" in lines[0] and "METRICS_TOKEN" in lines[1], done.output
    assert "at least 20 characters" in lines[0] and "short-but-not-20" not in done.output
    assert "Traceback" not in done.output


async def test_provider_errors_on_the_console_go_through_the_redactor(services: Services) -> None:
    """Item 15: an engine's error text may quote a provider's answer (a key's pieces, the speaker)."""
    from bot.logs import install_redactor, redactor

    key = "sk-proj-Zq8xV3mK9pL2wR7tY4uN6bH1cD5eF0gA"
    before = redactor()
    install_redactor([key])
    console = Console(services, metrics=Metrics(process=False))
    client = await client_for(services, console)
    try:
        console.metrics.request("openai", "agent")
        console.metrics.error("openai", "agent", f"401 Incorrect API key provided: {key[:16]}...{key[-4:]} "
                                                 f"(speaker phone:+15557654321, user 123456789012345678)")
        state = await (await client.get("/console/state")).json()
        shown = state["providers"]["agent/openai"]["last_error"]["message"]
        assert key[:16] not in shown and "+15557654321" not in shown and "123456789012345678" not in shown
        assert shown.startswith("401 Incorrect API key provided: ") and "+1******4321" in shown
    finally:
        install_redactor(before.secrets)
        await client.close()


async def test_the_state_shows_memorys_write_queue(services: Services) -> None:
    """Issue 22: turns waiting for the database, dropped past the bound, and how long it has been away."""
    from bot.console.hub import Console
    from bot.console.metrics import Metrics

    console = Console(services, metrics=Metrics(process=False))
    try:
        storage = console.snapshot()["storage"]
        assert storage["bound"] == services.memory.queue_max and storage["dropped"] == 0
        assert storage["database_away_seconds"] is None
        services.memory.queue_max = 0  # a full queue: the next turn is dropped and counted
        services.memory.append(Turn(room="console", speaker_id="console:me", speaker_name="me", role="user",
                                    text="hello", modality=Modality.TEXT, created_at=0.0))
        assert console.snapshot()["storage"]["dropped"] == 1
    finally:
        await console.aclose()
