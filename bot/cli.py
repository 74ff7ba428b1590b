"""The ``voicebot`` command line: run the bot, chat in the terminal, print the invite URL, check services."""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

import discord

from bot.logs import setup_logging
from bot.settings import Settings, SettingsError, load_settings

__all__ = ["main", "invite_url", "application_id_from_token", "PERMISSIONS"]

log = logging.getLogger(__name__)

# Exactly what the bot uses: read and answer text, join and speak in voice, set the voice channel
# status that says it is listening.
PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    read_message_history=True,
    connect=True,
    speak=True,
    use_voice_activation=True,
    set_voice_channel_status=True,
)

NO_TOKEN_HELP = """\
voicebot: DISCORD_TOKEN is not set, so the bot cannot log in to Discord.

To run it on Discord:
  1. Open https://discord.com/developers/applications, create an application, open its "Bot" page
     and press "Reset Token"; copy the token.
  2. On the same page enable "Message Content Intent" (the bot reads messages that mention it).
  3. Put the token in a file named .env next to where you run voicebot:
         DISCORD_TOKEN=your-token-here
     (see .env.example for every other setting), then run `voicebot invite` for the invite link.

Meanwhile you can talk to the agent right here, no configuration needed:
  voicebot chat
"""


def application_id_from_token(token: str) -> int | None:
    """A bot token's first part is the bot user's id in base64; for bots it equals the application id."""
    head = token.split(".", 1)[0]
    try:
        decoded = base64.b64decode(head + "=" * (-len(head) % 4), validate=False).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return int(decoded) if decoded.isdigit() else None


def invite_url(application_id: int) -> str:
    return discord.utils.oauth_url(
        application_id, permissions=PERMISSIONS, scopes=("bot", "applications.commands")
    )


# --------------------------------------------------------------------------------------------- run


async def _run_bot(settings: Settings) -> None:
    from bot.client import VoiceBot
    from bot.services import build_services

    services = await build_services(settings)
    bot = VoiceBot(services)
    assert settings.discord_token is not None
    web_task: asyncio.Task[None] | None = None
    stop_web = asyncio.Event()
    if settings.sms_enabled:
        from bot.web import serve

        # SMS answers through the same agent and memory; the web server lives beside the gateway.
        web_task = asyncio.create_task(
            serve(settings, agent=services.agent, memory=services.memory, db=services.db, stop=stop_web,
                  health={"discord": bot.is_ready}),
            name="web-server",
        )
    try:
        async with bot:
            await bot.start(settings.discord_token.get())
    finally:
        if web_task is not None:
            stop_web.set()
            await asyncio.gather(web_task, return_exceptions=True)
        await services.aclose()


def cmd_run(settings: Settings, out: TextIO) -> int:
    if settings.discord_token is None:
        out.write(NO_TOKEN_HELP)
        return 2
    try:
        asyncio.run(_run_bot(settings))
    except discord.LoginFailure:
        log.error("Discord rejected DISCORD_TOKEN: reset the token on the Bot page and update .env")
        return 1
    except discord.PrivilegedIntentsRequired:
        log.error('Enable "Message Content Intent" on the Bot page of your application, then start again')
        return 1
    except KeyboardInterrupt:
        pass
    return 0


# -------------------------------------------------------------------------------------------- chat


async def _chat(settings: Settings, stdin: TextIO, out: TextIO, name: str) -> int:
    from bot.agent import AgentError, Incoming
    from bot.memory import Modality
    from bot.services import build_services

    services = await build_services(settings)
    agent = services.agent
    try:
        out.write(f"Talking with {agent.character.name} ({agent.engine_name}). Ctrl-D or /quit to leave.\n")
        out.flush()
        loop = asyncio.get_running_loop()
        while True:
            out.write("you> ")
            out.flush()
            line = await loop.run_in_executor(None, stdin.readline)
            if not line:
                out.write("\n")
                break
            text = line.rstrip("\n")
            if text.strip() in ("/quit", "/exit"):
                break
            reply = agent.reply(Incoming(room="console", speaker_id=f"console:{name}", speaker_name=name,
                                         text=text, modality=Modality.TEXT))
            out.write(f"{agent.character.name}> ")
            try:
                async for delta in reply:
                    out.write(delta)
                    out.flush()
            except AgentError as exc:
                out.write(f"[{exc.user_message}]\n")
                log.warning("reply failed: %s", exc)
                continue
            out.write("\n")
            reply.finish()
    finally:
        await services.aclose()
    return 0


def cmd_chat(settings: Settings, stdin: TextIO, out: TextIO) -> int:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "you"
    try:
        return asyncio.run(_chat(settings, stdin, out, name))
    except KeyboardInterrupt:
        out.write("\n")
        return 0


# ------------------------------------------------------------------------------------------ invite


def cmd_invite(settings: Settings, out: TextIO) -> int:
    app_id = settings.discord_application_id
    if app_id is None and settings.discord_token is not None:
        app_id = application_id_from_token(settings.discord_token.get())
    if app_id is None:
        out.write("voicebot invite: set DISCORD_APPLICATION_ID (or DISCORD_TOKEN) so the link can name your bot.\n")
        return 2
    out.write(invite_url(app_id) + "\n")
    return 0


# ------------------------------------------------------------------------------------------- check

CheckResult = tuple[str, bool, str, float]


async def _timed(name: str, probe: Callable[[], Awaitable[str]]) -> CheckResult:
    start = time.perf_counter()
    try:
        detail = await asyncio.wait_for(probe(), timeout=15)
        return name, True, detail, time.perf_counter() - start
    except asyncio.TimeoutError:
        return name, False, "no answer within 15 s", time.perf_counter() - start
    except Exception as exc:  # each service's own error, already log-safe
        return name, False, str(exc) or type(exc).__name__, time.perf_counter() - start


async def _check_discord(settings: Settings) -> str:
    from bot.client import apply_api_base, discord_connector

    assert settings.discord_token is not None
    apply_api_base(settings)
    http = discord.http.HTTPClient(asyncio.get_running_loop(), connector=discord_connector(settings))
    try:
        data = await http.static_login(settings.discord_token.get())
        return f"logged in as {data['username']} ({data['id']})"
    except discord.LoginFailure:
        raise RuntimeError("DISCORD_TOKEN was rejected (401): reset it on the Bot page") from None
    except (discord.HTTPException, OSError) as exc:
        raise RuntimeError(f"cannot reach Discord: {exc}") from None
    finally:
        await http.close()


async def run_checks(settings: Settings) -> list[CheckResult]:
    """Contact each configured service once; one result per service."""
    from bot import providers
    from bot.agent.factory import build_agent
    from bot.db import Database
    from bot.memory import Memory

    results: list[CheckResult] = []
    if settings.discord_token is not None:
        results.append(await _timed("discord", lambda: _check_discord(settings)))
    else:
        results.append(("discord", False, "DISCORD_TOKEN is not set", 0.0))
    db = Database.in_memory()
    try:
        agent = await build_agent(settings, Memory(db))
        try:
            results.append(await _timed(f"agent ({agent.engine_name})", agent.check))
        finally:
            await agent.aclose()
    except Exception as exc:
        results.append(("agent", False, str(exc), 0.0))
    finally:
        db.close()
    for name, probe in providers.checks(settings):  # speech engines and SMS, as configured
        results.append(await _timed(name, probe))
    return results


def cmd_check(settings: Settings, out: TextIO) -> int:
    results = asyncio.run(run_checks(settings))
    width = max(len(r[0]) for r in results)
    for name, ok, detail, seconds in results:
        rtt = f"{seconds * 1000:6.0f} ms" if seconds else "       -"
        out.write(f"{'ok  ' if ok else 'FAIL'} {name:<{width}} {rtt}  {detail}\n")
    return 0 if all(ok for _, ok, _, _ in results) else 1


# ---------------------------------------------------------------------------------------- simulate


def cmd_simulate(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """``voicebot simulate``: the bot in a loopback voice call with scripted speakers (no Discord needed)."""
    import json

    from bot.simulate import SimulateArgumentError, SimulationError, build_options, simulate

    if args.call is not None:
        return _simulate_call(args, settings, out)
    try:
        options = build_options(args.speak or [], args.at or [], args.mode, args.out)
    except SimulateArgumentError as exc:
        sys.stderr.write(f"voicebot simulate: {exc}\n")
        return 2
    try:
        result = asyncio.run(simulate(options, settings))
    except SimulationError as exc:
        sys.stderr.write(f"voicebot simulate: {exc}\n")
        return 2 if exc.setup else 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        out.write(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(result.format_text())
    return 0 if result.completed else 1


def _simulate_call(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """``voicebot simulate --call FILE.wav``: a loopback phone call through Twilio Media Streams."""
    import json
    from pathlib import Path

    from bot.phone.simulate import simulate_call
    from bot.simulate import SimulateArgumentError, SimulationError, check_wav

    if args.at:
        sys.stderr.write("voicebot simulate: --at is for --speak; a --call has one caller\n")
        return 2
    wav = Path(args.call).expanduser()
    try:
        check_wav(wav)
    except SimulateArgumentError as exc:
        sys.stderr.write(f"voicebot simulate: --call {exc}\n")
        return 2
    try:
        result = asyncio.run(simulate_call(wav, settings, out_dir=Path(args.out).expanduser() if args.out else None))
    except SimulationError as exc:
        sys.stderr.write(f"voicebot simulate: {exc}\n")
        return 2 if exc.setup else 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        out.write(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(result.format_text())
    return 0 if result.completed else 1


# -------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebot", description="A Discord voice agent.")
    parser.add_argument("--env-file", default=".env", help="settings file to read (default: .env)")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the bot (the default)")
    sub.add_parser("chat", help="talk to the agent in this terminal")
    sub.add_parser("invite", help="print the URL that adds the bot to a server")
    sub.add_parser("check", help="validate settings and contact each configured service")
    sub.add_parser("serve", help="run only the web server (health check and Twilio SMS webhooks)")
    simulate = sub.add_parser(
        "simulate", help="try the voice pipeline on a local stand-in for Discord: scripted speakers talk to the bot")
    who = simulate.add_mutually_exclusive_group(required=True)
    who.add_argument("--speak", action="append", metavar="NAME=FILE.wav",
                     help="a speaker and the 16-bit WAV they say (repeat for more speakers)")
    who.add_argument("--call", metavar="FILE.wav",
                     help="instead of a voice channel, phone the bot (Twilio Media Streams on 127.0.0.1) "
                          "and say this WAV")
    simulate.add_argument("--at", action="append", metavar="NAME=SECONDS",
                          help="start NAME's speech this many seconds after the others (default: together)")
    simulate.add_argument("--mode", choices=("always", "addressed", "push-to-talk"), default="always",
                          help="when the bot answers (default: always)")
    simulate.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    simulate.add_argument("--out", metavar="DIR", help="save what the bot said as WAV files in DIR")
    return parser


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    try:
        settings = load_settings(env_file=args.env_file)
    except SettingsError as exc:
        sys.stderr.write(f"voicebot: {exc}\n")
        return 2
    secrets = [s.get() for s in (settings.discord_token, settings.openai_api_key, settings.elizaos_api_key,
                                 settings.deepgram_api_key, settings.elevenlabs_api_key,
                                 settings.twilio_auth_token) if s is not None]
    setup_logging("WARNING" if args.command in ("chat", "invite", "check", "simulate") else settings.log_level,
                  secrets=secrets)
    command = args.command or "run"
    if command == "run":
        return cmd_run(settings, out)
    if command == "chat":
        return cmd_chat(settings, stdin or sys.stdin, out)
    if command == "invite":
        return cmd_invite(settings, out)
    if command == "check":
        return cmd_check(settings, out)
    if command == "serve":
        from bot.web import run_web_forever

        return run_web_forever(settings)
    if command == "simulate":
        return cmd_simulate(args, settings, out)
    raise AssertionError(command)
