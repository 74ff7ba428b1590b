"""Issue 10 item 3: no command prints any piece of a secret, even when every service echoes them.

Every command (`voicebot`, `chat`, `check`, `serve`, `simulate`) runs as a real process at
LOG_LEVEL=DEBUG with fake secrets in every secret setting and a password in OPENAI_BASE_URL, against
one loopback service (tests/fakes/echo_server.py) standing in for Discord's REST API, the OpenAI-compatible
server, Deepgram, ElevenLabs and Twilio, which answers each request with 401, 429 or 500 and quotes the
credentials it received in the body and the headers. Everything each process printed (stdout,
stderr, and for `serve` the TwiML an SMS sender receives) is searched for every 8-character window
of every secret. `voicebot` runs twice per fault: once against the echoing service as Discord's REST
API (login fails), once logged in to the loopback Discord (bot/loopback) where Alice mentions it and
its agent fails: what it posts in the channel is searched too.

The 18 processes overlap, in an order that keeps the machine's cores busy rather than crowded: the
three `simulate` runs start first (their Deepgram reconnects back off for about 11 s of sleeps), the
others once each has reached the echoing service as Deepgram (about 4 s of start-up); then `serve`
and `gateway`, which wait to be texted or mentioned; then `voicebot`, `chat` and `check`, two at a
time. Started all at once, every process crawled through its start-up together and the back-off came
after it all.

Coverage: 7 secret settings x 6 runs (5 commands, `voicebot` two ways) x 3 faults = 126 combinations
searched; in 31 of them the run really sent that secret and had it echoed back (which secrets a run
sends depends on what it contacts: `voicebot` logs in to Discord or asks the agent, `chat` and `serve`
ask the agent, `check` probes every service, `simulate` opens Deepgram). On the code before this
test, 8 of the 15 runs without the loopback Discord printed a secret.

Discord's "500" is 503: discord.py retries a 500 at login five times over 25 s and then raises the
same DiscordServerError a 503 raises at once (test_startup_errors has a real 500).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.loopback.server import ChannelHandle, LocalDiscord, MemberHandle
from tests.cli_runs import CliRun, Finished, free_port
from tests.fakes.echo_server import EchoServer
from tests.fakes.twilio_server import sign_webhook

WINDOW = 8
ACCOUNT_SID = "AC" + "4b" * 16
PUBLIC_URL = "https://bot.example.com"
LLM_USER, LLM_PASSWORD = "llmuser", "Pq7Zx3Lm9Vr2Kt8W"

# Random-looking values: a fake secret made of ordinary words would "leak" through log text.
SECRETS: dict[str, str] = {
    "DISCORD_TOKEN": "MTAwMDAwMDAwMDAwMDAwMDAx.GzXq7P.kV9wR2mT8yL4nB6cJ1hF3sD5gA0eU7iO",
    "OPENAI_API_KEY": "sk-9fQm2LxR7vT4kW8nZ3bY6hJ1cP5dG0aE",
    "OPENAI_BASE_URL (password)": LLM_PASSWORD,
    "ELIZAOS_API_KEY": "ez4Tn8Qw2Rk6Yp9Lm3Xv7Bc1Hd5Fg0Js",
    "DEEPGRAM_API_KEY": "7d3f9a2c8e1b6f4a0c5e9d2b7a1f8c3e6b4d0a9f",
    "ELEVENLABS_API_KEY": "sk_4e8a1c7f2b9d6e3a0f5c8b1d4e7a2f9c6b3d0e8a1c5f",
    "TWILIO_AUTH_TOKEN": "f3a9c1e7b5d2f8a4c6e0b9d3f1a7c5e2",
}
# The same secrets as they travel (Authorization: Basic), also searched for.
WIRE_FORMS: dict[str, str] = {
    "OPENAI_BASE_URL (password)": base64.b64encode(f"{LLM_USER}:{LLM_PASSWORD}".encode()).decode(),
    "TWILIO_AUTH_TOKEN": base64.b64encode(f"{ACCOUNT_SID}:{SECRETS['TWILIO_AUTH_TOKEN']}".encode()).decode(),
}
# "gateway": `voicebot` logged in to the loopback Discord (bot/loopback), someone mentions it and the
# agent fails against the echoing service: what the bot posts in the channel is searched too.
COMMANDS = ("run", "gateway", "chat", "check", "serve", "simulate")
FAULTS = (401, 429, 500)


def windows(value: str) -> list[str]:
    return [value[i:i + WINDOW] for i in range(len(value) - WINDOW + 1)]


def leaked(text: str) -> list[tuple[str, str]]:
    found = []
    for name, value in [*SECRETS.items(), *WIRE_FORMS.items()]:
        found.extend((name, w) for w in windows(value) if w in text)
    return found


def _wav(path: Path) -> Path:
    import math
    import struct
    import wave

    with wave.open(str(path), "wb") as w:  # one second of a tone: enough to open the recognizer
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"".join(struct.pack("<h", int(6000 * math.sin(i / 8))) for i in range(16000)))
    return path


def settings_for(base: str, command: str, run: str, fault: int, web_port: int) -> dict[str, str]:
    at = f"{base}/{run}"
    ws = at.replace("http://", "ws://", 1)
    with_password = at.replace("http://", f"http://{LLM_USER}:{LLM_PASSWORD}@", 1)
    # A URL password replaces the key on the wire (the HTTP client sends Basic auth from it), so one
    # fault in three carries it in ELEVENLABS_BASE_URL instead, and the OpenAI key is sent and echoed.
    llm, eleven = (at, with_password) if fault == 429 else (with_password, at)
    # serve (and check with 429) answer through an ElizaOS agent, so its key is sent too.
    engine = "elizaos" if command == "serve" or (command == "check" and fault == 429) else "openai"
    return {
        "LOG_LEVEL": "DEBUG",
        "AGENT_ENGINE": engine,
        "DISCORD_TOKEN": SECRETS["DISCORD_TOKEN"],
        "DISCORD_API_BASE": f"{at}/{503 if fault == 500 else fault}/api/v10",
        "OPENAI_API_KEY": SECRETS["OPENAI_API_KEY"],
        "OPENAI_BASE_URL": f"{llm}/{fault}/v1",
        "ELIZAOS_URL": f"{at}/{fault}/eliza",
        "ELIZAOS_AGENT_ID": "00000000-0000-0000-0000-000000000001",
        "ELIZAOS_API_KEY": SECRETS["ELIZAOS_API_KEY"],
        "DEEPGRAM_API_KEY": SECRETS["DEEPGRAM_API_KEY"],
        "DEEPGRAM_URL": f"{ws}/{fault}",
        "ELEVENLABS_API_KEY": SECRETS["ELEVENLABS_API_KEY"],
        "ELEVENLABS_BASE_URL": f"{eleven}/{fault}",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": SECRETS["TWILIO_AUTH_TOKEN"],
        "TWILIO_PHONE_NUMBER": "+15550001111",
        "TWILIO_API_BASE": f"{at}/{fault}",
        "PUBLIC_URL": PUBLIC_URL,
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": str(web_port),
    }


@dataclass
class Outcome:
    command: str
    fault: int
    run: str
    finished: Finished
    extra: str  # what people got besides the process's output (the SMS TwiML for serve)
    echoed: list[str]  # credentials the echo service received in this run
    people: tuple[str, ...] = ()  # the texter's number (serve): never whole in the output


def _wait_listening(port: int, run: CliRun, guard: float = 90.0) -> None:
    deadline = time.monotonic() + guard  # failure guard only: returns as soon as /healthz answers
    while time.monotonic() < deadline:
        assert run.proc is not None and run.proc.poll() is None, "serve exited before it listened"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                return
        except urllib.error.HTTPError:
            return  # 503 is an answer too
        except OSError:
            time.sleep(0.1)  # polling a predicate, not synchronising on time
    raise AssertionError("serve did not listen")


TEXTER = "+15557654321"


def _text_the_bot(port: int) -> str:
    form = {"MessageSid": "SM" + "7" * 32, "SmsSid": "SM" + "7" * 32, "AccountSid": ACCOUNT_SID,
            "From": TEXTER, "To": "+15550001111", "Body": "hello, are you there?", "NumMedia": "0"}
    body = urllib.parse.urlencode(form).encode()
    signature = sign_webhook(SECRETS["TWILIO_AUTH_TOKEN"], PUBLIC_URL + "/twilio/sms", form)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/twilio/sms", data=body, method="POST", headers={
        "X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return f"HTTP {response.status}\n{response.read().decode()}"


class LoopThread:
    """An event loop in a thread of its own, for the loopback Discords the subprocesses talk to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="loopback-discords", daemon=True)
        self._thread.start()

    def run(self, coro: object, timeout: float = 120.0) -> object:  # failure guard only
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


async def _open_discord() -> tuple[LocalDiscord, ChannelHandle, MemberHandle]:
    discord_ = LocalDiscord(token=SECRETS["DISCORD_TOKEN"])
    await discord_.start()
    guild = discord_.add_guild("Loopback")
    return discord_, guild.add_text_channel("general"), guild.add_member("Alice")


async def _mention_and_wait(discord_: LocalDiscord, channel: ChannelHandle, alice: MemberHandle) -> str:
    await discord_.wait_until_identified(timeout=120)
    await alice.send_message(channel, f"<@{discord_.bot_user_id}> hello, are you there?")
    await discord_.wait_bot_message(channel, timeout=120)
    return "\n".join(m.content for m in channel.messages)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, int], Outcome]]:
    echo = EchoServer()
    base = echo.start()
    root = tmp_path_factory.mktemp("secrets")
    wav = _wav(root / "hello.wav")
    runs: dict[tuple[str, int], tuple[CliRun, int]] = {}
    loops = LoopThread()
    discords: dict[int, tuple[LocalDiscord, ChannelHandle, MemberHandle]] = {}
    try:
        def prepare(command: str, fault: int) -> CliRun:
            name = f"{command}-{fault}"
            port = free_port()
            args: tuple[str, ...] = ("--speak", f"Alice={wav}") if command == "simulate" else ()
            settings = settings_for(base, command, name, fault, port)
            if command == "gateway":
                discords[fault] = loops.run(_open_discord())  # type: ignore[assignment]
                settings.update(DISCORD_API_BASE=discords[fault][0].api_base,
                                DISCORD_CA_FILE=str(discords[fault][0].ca_file))
            run = CliRun("run" if command == "gateway" else command, root / name, settings, args=args,
                         stdin="hello, are you there?\n/quit\n")
            runs[(command, fault)] = (run, port)
            return run

        for fault in FAULTS:
            for command in COMMANDS:
                prepare(command, fault)
        results: dict[tuple[str, int], Outcome] = {}

        def outcome(command: str, fault: int, extra: str = "", people: tuple[str, ...] = ()) -> None:
            finished = runs[(command, fault)][0].finish(timeout=180)
            results[(command, fault)] = Outcome(command, fault, f"{command}-{fault}", finished, extra,
                                                echo.credentials(f"{command}-{fault}"), people)

        # The order (the module docstring): simulate, then serve and gateway, then the rest two at a time.
        for fault in FAULTS:
            runs[("simulate", fault)][0].start()
        for fault in FAULTS:
            simulating = runs[("simulate", fault)][0]
            echo.wait_for_request(f"simulate-{fault}", gone=lambda run=simulating: run.proc is None
                                  or run.proc.poll() is not None)
        waiting = [key for key in runs if key[0] in ("serve", "gateway")]
        for key in waiting:
            runs[key][0].start()
        with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="secrets-runs") as pool:
            by_themselves = [pool.submit(lambda key=key: (runs[key][0].start(), outcome(*key)))
                             for key in runs if key[0] in ("run", "chat", "check")]
            for command, fault in waiting:
                run, port = runs[(command, fault)]
                assert run.proc is not None
                if command == "serve":
                    _wait_listening(port, run)
                    extra = _text_the_bot(port)
                    run.proc.send_signal(signal.SIGTERM)
                    outcome(command, fault, extra, (TEXTER, TEXTER[1:]))
                else:
                    extra = str(loops.run(_mention_and_wait(*discords[fault]), timeout=180))
                    run.proc.send_signal(signal.SIGINT)
                    outcome(command, fault, extra)
            for future in by_themselves:
                future.result()
        for fault in FAULTS:
            outcome("simulate", fault)
        yield results
    finally:
        for run, _ in runs.values():
            if run.proc is not None and run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
        for discord_, _, _ in discords.values():
            loops.run(discord_.stop())
        loops.stop()
        echo.stop()


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("command", COMMANDS)
def test_no_piece_of_any_secret_is_printed(outcomes: dict[tuple[str, int], Outcome], command: str,
                                           fault: int) -> None:
    outcome = outcomes[(command, fault)]
    text = outcome.finished.output + outcome.extra
    assert not leaked(text), f"{command} with {fault}: {leaked(text)[:5]}\n{text[-3000:]}"
    assert outcome.echoed, f"{command} with {fault} never reached the echoing service\n{text[-3000:]}"
    # Each run did what it exists for and ended on its own terms, not on a traceback.
    assert "Traceback" not in outcome.finished.stdout
    if command == "run":
        assert outcome.finished.code in (1, 2) and "voicebot: " in outcome.finished.stderr
        assert "Discord" in outcome.finished.stderr.splitlines()[-1]
    elif command == "gateway":
        alice, *answers = outcome.extra.splitlines()  # Alice's mention, then what the bot posted
        assert alice.startswith("<@") and answers and outcome.finished.code == 0
        assert any(word in answers[0] for word in ("Sorry", "I can't", "overwhelmed")), answers  # the kind error
    elif command == "chat":
        assert outcome.finished.code == 0 and "Wren> [" in outcome.finished.stdout
    elif command == "check":
        assert outcome.finished.code == 1 and outcome.finished.stdout.count("FAIL") == 5
    elif command == "serve":
        assert outcome.extra.startswith("HTTP 200") and outcome.finished.code == 0


@pytest.mark.parametrize("fault", FAULTS)
def test_no_texters_number_is_logged_even_at_debug(outcomes: dict[tuple[str, int], Outcome], fault: int) -> None:
    """Issue 21 item 15: at LOG_LEVEL=DEBUG the reply's room (``sms:+1…``) and the agent service's
    error (which quotes the speaker) are logged; the texter's number appears masked, never whole."""
    outcome = outcomes[("serve", fault)]
    for whole in outcome.people:
        assert whole not in outcome.finished.output, f"serve with {fault} logged {whole}"
    assert "+1******4321" in outcome.finished.output  # it was logged, masked


def test_coverage(outcomes: dict[tuple[str, int], Outcome], capsys: pytest.CaptureFixture[str]) -> None:
    """Which (secret x command x fault) combinations really had the secret sent to and echoed back
    by the service: every secret in at least one run (a secret never echoed would be searched for
    only in output that could not hold it), and at least the 31 measured."""
    echoed = {name: 0 for name in SECRETS}
    for outcome in outcomes.values():
        received = " ".join(outcome.echoed)
        for name, value in SECRETS.items():
            if value in received or WIRE_FORMS.get(name, value) in received:
                echoed[name] += 1
    with capsys.disabled():
        print(f"\nredaction coverage: {len(SECRETS) * len(outcomes)} (secret x command x fault) combinations "
              f"searched, {sum(echoed.values())} of them with the secret sent to and echoed back by the service")
    assert [name for name, runs in echoed.items() if not runs] == []
    assert sum(echoed.values()) >= 31  # measured: 31 (see the module docstring for which secret each run sends)
