"""The ``voicebot`` command line: run the bot, chat in the terminal, print the invite URL, check services."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import errno
import getpass
import logging
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bot.logs import RedactingStream, install_excepthooks, install_redactor, setup_logging
from bot.settings import (
    VOICE_MODES,
    Settings,
    SettingsError,
    env_file_in_use,
    load_settings,
    requested_log_level,
    secret_values,
)

if TYPE_CHECKING:
    import discord

__all__ = ["main", "run_command", "describe_failure", "invite_url", "application_id_from_token", "PERMISSIONS"]

log = logging.getLogger(__name__)


def _permissions() -> discord.Permissions:
    import discord

    # Exactly what the bot uses: read and answer text, join and speak in voice, set the voice
    # channel status that says it is listening.
    return discord.Permissions(
        view_channel=True,
        send_messages=True,
        send_messages_in_threads=True,
        read_message_history=True,
        connect=True,
        speak=True,
        use_voice_activation=True,
        set_voice_channel_status=True,
    )


def __getattr__(name: str) -> Any:
    # PERMISSIONS is built on first use so `voicebot chat` never imports discord.py.
    if name == "PERMISSIONS":
        return _permissions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

NO_TOKEN_HELP = """\
voicebot: DISCORD_TOKEN is not set, so the bot cannot log in to Discord.

To run it on Discord:
  1. Open https://discord.com/developers/applications, create an application, open its "Bot" page
     and press "Reset Token"; copy the token.
  2. On the same page enable "Message Content Intent" (the bot reads messages that mention it).
  3. Put the token in {env_file} (or name another file with --env-file):
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
    import discord.utils

    return discord.utils.oauth_url(
        application_id, permissions=_permissions(), scopes=("bot", "applications.commands")
    )


# --------------------------------------------------------------------------------------------- run


async def _run_bot(settings: Settings) -> None:
    from bot.client import VoiceBot
    from bot.services import build_services

    from bot.cluster import ClusterMember, process_info

    services = await build_services(settings)
    assert services.store is not None
    # Every process registers with the database it shares with the others (PostgreSQL across
    # machines, the SQLite file on one), and paces its logins and claims its shards there.
    member = ClusterMember(services.store, process_info(settings.process_name), heartbeat=settings.cluster_heartbeat,
                           down_after=settings.cluster_down_after)
    bot = VoiceBot(services, cluster=member)
    assert settings.discord_token is not None
    from bot.console import console_mount
    from bot.console.run import report_web_failure
    from bot.web import serve

    web_task: asyncio.Task[None] | None = None
    stop_web = asyncio.Event()
    # SIGTERM (a platform's restart or deploy) closes the bot like Ctrl-C, so the web side drains
    # its SMS replies below instead of the process dying with them.
    start: asyncio.Task[None] | None = None
    stopping = asyncio.Event()

    def on_sigterm() -> None:
        stopping.set()
        if start is not None and not start.done():
            start.cancel()  # login, setup_hook or the gateway: `async with bot` then closes it fully

    async def lost_shards(_lost: list[int]) -> None:
        on_sigterm()  # another process holds our shards now: stop as for SIGTERM
    member.on_lost = lost_shards
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        # The console (always) and SMS (when configured) answer through the same agent and memory;
        # the web server lives beside the gateway.
        hub, console = console_mount(services, voice=lambda: getattr(bot.get_cog("Voice"), "manager", None),
                                     process_label=member.info.name)
        hub.process_id = member.info.process_id
        listening = asyncio.Event()
        web_task = asyncio.create_task(
            serve(settings, agent=services.agent, memory=services.memory, store=services.store,
                  languages=services.languages, usage=services.usage, stop=stop_web,
                  health={"discord": bot.is_ready}, mounts=[console], ready=lambda _server: listening.set()),
            name="web-server",
        )
        if settings.sms_enabled:
            # Twilio's webhooks need the port: bind before logging in, so a WEB_PORT in use ends
            # start-up with its own line, not later.
            await _until_listening(listening, web_task)
        else:
            web_task.add_done_callback(report_web_failure)  # the console alone: logged, the bot goes on
        if stopping.is_set():
            return  # SIGTERM while binding the web server: never log in
        async with bot:
            start = asyncio.create_task(bot.start(settings.discord_token.get()), name="discord")
            try:
                await start
            except asyncio.CancelledError:
                if not stopping.is_set() or not start.cancelled():
                    raise
    finally:
        if web_task is not None:
            stop_web.set()
            await asyncio.gather(web_task, return_exceptions=True)
        await member.leave()
        await services.aclose()


async def _until_listening(listening: asyncio.Event, web_task: asyncio.Task[None]) -> None:
    """Return once the web server listens; raise its error if it stopped before that."""
    waiter = asyncio.create_task(listening.wait(), name="web-listening")
    try:
        await asyncio.wait({waiter, web_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    if not listening.is_set():
        web_task.result()  # the bind error
        raise RuntimeError("the web server stopped before it listened")


def cmd_run(settings: Settings, out: TextIO, env_file: Path) -> int:
    if settings.discord_token is None:
        out.write(NO_TOKEN_HELP.format(env_file=env_file))
        from bot.console.run import run_console

        return run_console(settings, out)  # the console and its voice playground, until Ctrl-C
    try:
        asyncio.run(_run_bot(settings))
    except KeyboardInterrupt:
        pass
    return 0


# ----------------------------------------------------------------------------------------- cluster


def cmd_cluster(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from bot.cluster.supervisor import run_cluster

    try:
        processes = int(args.processes)
    except ValueError:
        sys.stderr.write(f"voicebot cluster: --processes: expected a whole number, got {args.processes!r}\n")
        return CONFIG
    if not 1 <= processes <= 256:
        sys.stderr.write(f"voicebot cluster: --processes: must be from 1 to 256, got {processes}\n")
        return CONFIG
    if settings.discord_token is None:
        sys.stderr.write("voicebot cluster: DISCORD_TOKEN is not set: the workers have nothing to log in as\n")
        return CONFIG
    env_file = Path(args.env_file).absolute() if args.env_file else None
    try:
        return asyncio.run(run_cluster(settings, processes, out, env_file))
    except ValueError as exc:
        sys.stderr.write(f"voicebot cluster: {exc}\n")
        return CONFIG


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
            choice = services.languages.choose("console", text)
            if choice is not None and choice.notice:
                out.write(f"[{choice.notice}]\n")
            reply = agent.reply(Incoming(room="console", speaker_id=f"console:{name}", speaker_name=name,
                                         text=text, modality=Modality.TEXT,
                                         language=choice.language if choice is not None else None))
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
        async with asyncio.timeout(15):
            detail = await probe()
        return name, True, detail, time.perf_counter() - start
    except asyncio.TimeoutError:
        return name, False, "no answer within 15 s", time.perf_counter() - start
    except Exception as exc:  # each service's own error, already log-safe
        return name, False, str(exc) or type(exc).__name__, time.perf_counter() - start


async def _check_discord(settings: Settings) -> str:
    import discord

    from bot.client import apply_api_base, discord_connector

    assert settings.discord_token is not None
    apply_api_base(settings)
    http = discord.http.HTTPClient(asyncio.get_running_loop(), connector=discord_connector(settings))
    try:
        data = await http.static_login(settings.discord_token.get())
        return f"logged in as {data['username']} ({data['id']})"
    except discord.LoginFailure:
        raise RuntimeError("DISCORD_TOKEN was rejected (401): reset it on the Bot page") from None
    except discord.HTTPException as exc:
        raise RuntimeError(f"Discord answered HTTP {exc.status} at login: try again later") from None
    except OSError as exc:
        raise RuntimeError(f"cannot reach Discord: {exc}") from None
    finally:
        await http.close()


async def run_checks(settings: Settings) -> list[CheckResult]:
    """Contact each configured service once; one result per service."""
    from bot import providers
    from bot.agent.factory import build_agent
    from bot.memory import Memory
    from bot.store import SqliteDatabase

    results: list[CheckResult] = []
    if settings.discord_token is not None:
        results.append(await _timed("discord", lambda: _check_discord(settings)))
    else:
        results.append(("discord", False, "DISCORD_TOKEN is not set", 0.0))
    db = SqliteDatabase.in_memory()
    try:
        agent = await build_agent(settings, Memory(db))
        try:
            results.append(await _timed(f"agent ({agent.engine_name})", agent.check))
        finally:
            await agent.aclose()
    except Exception as exc:
        results.append(("agent", False, str(exc), 0.0))
    finally:
        await db.close()
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
    from bot.simulate import SimulateArgumentError, build_options, simulate

    if args.call is not None:
        return _simulate_call(args, settings, out)
    try:
        options = build_options(args.speak or [], args.at or [], args.mode, args.out)
    except SimulateArgumentError as exc:
        sys.stderr.write(f"voicebot simulate: {exc}\n")
        return 2
    return _report_simulation(simulate(options, settings), args, out)


def _simulate_call(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """``voicebot simulate --call FILE.wav``: a loopback phone call through Twilio Media Streams."""
    from pathlib import Path

    from bot.phone.simulate import simulate_call
    from bot.simulate import SimulateArgumentError, check_wav

    if args.at:
        sys.stderr.write("voicebot simulate: --at is for --speak; a --call has one caller\n")
        return 2
    wav = Path(args.call).expanduser()
    try:
        check_wav(wav)
    except SimulateArgumentError as exc:
        sys.stderr.write(f"voicebot simulate: --call {exc}\n")
        return 2
    return _report_simulation(simulate_call(wav, settings, out_dir=Path(args.out).expanduser() if args.out else None),
                              args, out)


def _report_simulation(run: Any, args: argparse.Namespace, out: TextIO) -> int:
    """Run a simulation (a voice channel's or a call's) and print its report: 0 when it ran to the
    end, 1 when it gave up waiting, 2 when it could not start."""
    import json

    from bot.simulate import SimulationError

    try:
        result = asyncio.run(run)
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


def _shard_flags(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: `voicebot --shard-ids 1` and `voicebot run --shard-ids 1` both work, neither
    # parser's default overwriting the other's value.
    parser.add_argument("--shard-ids", metavar="IDS", default=argparse.SUPPRESS,
                        help="run only these Discord shards: 0-3, 0,2,5 or both (overrides SHARD_IDS)")
    parser.add_argument("--shard-count", metavar="N", default=argparse.SUPPRESS,
                        help="shards across all processes (overrides SHARD_COUNT)")


def _with_shard_flags(args: argparse.Namespace, settings: Settings) -> Settings:
    """``settings`` with ``--shard-ids``/``--shard-count`` applied; ValueError names the bad flag."""
    from bot.shards import MAX_SHARD_COUNT, parse_shard_ids, shard_problems

    ids, count = settings.shard_ids, settings.shard_count
    if getattr(args, "shard_count", None) is not None:
        try:
            count = int(args.shard_count)
        except ValueError:
            raise ValueError(f"--shard-count: expected a whole number, got {args.shard_count!r}") from None
        if not 1 <= count <= MAX_SHARD_COUNT:
            raise ValueError(f"--shard-count: must be from 1 to {MAX_SHARD_COUNT}, got {count}")
    if getattr(args, "shard_ids", None) is not None:
        try:
            ids = parse_shard_ids(args.shard_ids)
        except ValueError as exc:
            raise ValueError(f"--shard-ids: {exc}") from None
    problems = shard_problems(ids, count, ids_name="--shard-ids" if getattr(args, "shard_ids", None) else "SHARD_IDS",
                              count_name="--shard-count" if getattr(args, "shard_count", None) else "SHARD_COUNT")
    if problems:
        raise ValueError(problems[0])
    return settings.replace(shard_ids=ids, shard_count=count)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebot", description="A Discord voice agent.")
    parser.add_argument("--env-file", help="settings file to read; it must exist (default: .env in the current "
                        "directory, when there is one)")
    _shard_flags(parser)
    sub = parser.add_subparsers(dest="command")
    _shard_flags(sub.add_parser("run", help="run the bot (the default)"))
    chat = sub.add_parser("chat", help="talk to the agent in this terminal")
    chat.add_argument("--language", metavar="CODE", help="answer in this language (de, ja, …) or auto (each "
                      "message in its own); default: LANGUAGE")
    sub.add_parser("invite", help="print the URL that adds the bot to a server")
    sub.add_parser("check", help="validate settings and contact each configured service")
    sub.add_parser("serve", help="run only the web server (health check and Twilio SMS webhooks)")
    from bot.db_cli import add_db_parser

    add_db_parser(sub)
    cluster = sub.add_parser("cluster", help="run N bot workers on this machine, each with its share of the "
                             "Discord shards; restart one that dies")
    cluster.add_argument("--processes", metavar="N", required=True,
                         help="how many worker processes (each runs SHARD_COUNT / N shards, on WEB_PORT + its number)")
    cluster.add_argument("--shard-count", metavar="N", default=argparse.SUPPRESS,
                         help="shards across all workers (overrides SHARD_COUNT; default: Discord's recommendation)")
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
    simulate.add_argument("--mode", choices=VOICE_MODES, default="always",
                          help="when the bot answers (default: always)")
    simulate.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    simulate.add_argument("--language", metavar="CODE", help="the server's language (de, ja, …) or auto; "
                          "default: LANGUAGE")
    simulate.add_argument("--out", metavar="DIR", help="save what the bot said as WAV files in DIR")
    return parser



# ------------------------------------------------------------------------- failures and main
#
# Every command runs inside run_command: a problem that stops it becomes one line naming the setting
# or file, what is wrong and what to do, with exit status 2 for configuration and 1 for everything
# else. The traceback is logged only at LOG_LEVEL=DEBUG. All output passes the process's redactor.

CONFIG = 2
RUNTIME = 1


@dataclass(frozen=True)
class Failure:
    """What a person is told when a command cannot go on, and the exit status."""

    line: str
    status: int


def _pg_where(url: str) -> str:
    """``host:port/database`` of a PostgreSQL URL: what a line may say of it (the redactor masks user names)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port or 5432}/{parts.path.lstrip('/')}"
    except ValueError:
        return "the configured server"


def _database_failure(exc: BaseException, settings: Settings) -> Failure:
    if settings.database_url:  # the server by host and database only: no user, no password
        from bot.store import redact_url

        text = " ".join(str(exc).split()).replace(redact_url(settings.database_url), _pg_where(settings.database_url))
        return Failure(f"DATABASE_URL: {text}: check the URL, the password and that the server runs", CONFIG)
    cause = exc if isinstance(exc, sqlite3.Error) else exc.__context__
    name = getattr(cause, "sqlite_errorname", "")
    where = f"DATA_DIR {str(settings.data_dir)!r}"
    db_file = settings.data_dir / "voicebot.sqlite3"
    if name == "SQLITE_NOTADB":
        return Failure(f"{where}: {str(db_file)!r} is not a SQLite database: move that file away "
                       "or point DATA_DIR at another directory", CONFIG)
    if name in ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH") or name.startswith("SQLITE_READONLY"):
        return Failure(f"{where}: cannot write the database there ({cause}): make the directory writable "
                       "by this user or point DATA_DIR at one that is", CONFIG)
    if isinstance(cause, sqlite3.Error):
        return Failure(f"{where}: the database {str(db_file)!r} cannot be used ({cause}): "
                       "point DATA_DIR at another directory, or restore the file", CONFIG)
    return Failure(f"{where}: {exc}", CONFIG)


def _path_failure(exc: OSError, settings: Settings) -> Failure:
    path = Path(str(exc.filename))
    data_dir = settings.data_dir
    under_data_dir = path == data_dir or data_dir in path.parents or path in data_dir.parents
    if not under_data_dir:  # no setting to name: the file, and the system's reason
        return Failure(f"{str(path)!r}: {exc.strerror or exc}: check that this user can use it", CONFIG)
    what = f"DATA_DIR {str(data_dir)!r}"
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return Failure(f"{what}: {str(path)!r} is a file, not a directory: point DATA_DIR at a directory", CONFIG)
    if isinstance(exc, PermissionError) or exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return Failure(f"{what}: not writable ({exc.strerror}): make it writable by this user or point "
                       "DATA_DIR at a directory that is", CONFIG)
    return Failure(f"{what}: {exc.strerror or exc}: point DATA_DIR at a usable directory", CONFIG)


# Gateway close codes that end a login for good (discord.py does not reconnect after them).
_GATEWAY_REFUSALS = {
    4004: "DISCORD_TOKEN is no longer valid (reset, e.g. after the day's session starts ran out): put the "
          "new token from the Bot page in .env",
    4010: "invalid shard: every SHARD_IDS entry must be below SHARD_COUNT, and SHARD_COUNT must be what "
          "Discord allows this bot",
    4011: "sharding required: a shard would hold too many guilds; raise SHARD_COUNT, or leave it empty for "
          "Discord's recommended count",
}


def _discord_failure(exc: BaseException, settings: Settings) -> Failure | None:
    """Discord's answer at login, when discord.py is loaded (``voicebot`` only)."""
    discord = sys.modules.get("discord")
    aiohttp = sys.modules.get("aiohttp")
    if discord is None:
        return None
    where = settings.discord_api_base or "discord.com"
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return Failure('DISCORD_TOKEN: the bot needs "Message Content Intent": enable it on the Bot page '
                       "of your application, then start again", CONFIG)
    if isinstance(exc, discord.LoginFailure):
        return Failure("DISCORD_TOKEN was rejected by Discord (401): reset the token on the Bot page "
                       "and update .env", CONFIG)
    if isinstance(exc, discord.ConnectionClosed) and exc.code in _GATEWAY_REFUSALS:
        return Failure(f"Discord's gateway closed with {exc.code}: {_GATEWAY_REFUSALS[exc.code]}", CONFIG)
    if isinstance(exc, discord.DiscordServerError):
        return Failure(f"Discord ({where}) answered HTTP {exc.status} at login: Discord is having trouble; "
                       "try again in a few minutes", RUNTIME)
    if isinstance(exc, discord.HTTPException):
        return Failure(f"Discord ({where}) answered HTTP {exc.status} at login: try again later "
                       "(429 means this token is rate limited)", RUNTIME)
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
        reason = getattr(exc, "os_error", None) or exc
        return Failure(f"cannot reach Discord at {where} ({getattr(reason, 'strerror', None) or reason}): "
                       "check the network connection (or DISCORD_API_BASE), then start again", RUNTIME)
    if isinstance(exc, discord.GatewayNotFound):
        return Failure("Discord's gateway could not be found: Discord is having trouble; try again later", RUNTIME)
    return None


def describe_failure(exc: BaseException, settings: Settings) -> Failure:
    """The one line (and exit status) for an exception that ended a command (pure)."""
    from bot.agent import AgentError
    from bot.agent.character import CharacterError
    from bot.cluster import ShardsHeld
    from bot.store import DatabaseError

    if isinstance(exc, CharacterError):
        setting = "CHARACTER_FILE " if settings.character_file is not None else ""
        return Failure(f"{setting}{exc}: fix the file, or unset CHARACTER_FILE to use the shipped character", CONFIG)
    if isinstance(exc, ShardsHeld):
        return Failure(str(exc), CONFIG)
    if isinstance(exc, (DatabaseError, sqlite3.Error)):
        return _database_failure(exc, settings)
    discord_failure = _discord_failure(exc, settings)
    if discord_failure is not None:
        return discord_failure
    if isinstance(exc, socket.gaierror):  # binding the web server: the only name lookup at start-up
        return Failure(f"WEB_HOST {settings.web_host!r} cannot be resolved ({exc.strerror}): use an address "
                       "of this machine, such as 0.0.0.0 (everywhere) or 127.0.0.1", CONFIG)
    if isinstance(exc, OSError) and exc.filename is not None:
        return _path_failure(exc, settings)
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return Failure(f"WEB_PORT {settings.web_port} is already in use on {settings.web_host} (another voicebot?): "
                       "stop that program or choose another WEB_PORT", CONFIG)
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return Failure(f"WEB_HOST {settings.web_host!r} is not an address of this machine: use one that is, "
                       "such as 0.0.0.0 (everywhere) or 127.0.0.1", CONFIG)
    if isinstance(exc, OSError) and exc.errno == errno.EACCES:
        return Failure(f"WEB_PORT {settings.web_port}: not allowed to listen there (ports below 1024 need "
                       "privileges): choose a WEB_PORT above 1024", CONFIG)
    if isinstance(exc, AgentError):
        return Failure(f"the agent cannot start: {exc}", CONFIG)
    detail = " ".join(str(exc).split())[:300]
    return Failure(f"unexpected {type(exc).__name__}{': ' + detail if detail else ''} "
                   "(set LOG_LEVEL=DEBUG to see where)", RUNTIME)


def _log_level(command: str, settings: Settings) -> str:
    # Terminal commands print their own results; logs would clutter them, unless asked for DEBUG.
    if command in ("chat", "invite", "check", "simulate", "db") and settings.log_level != "DEBUG":
        return "ERROR" if settings.log_level == "ERROR" else "WARNING"
    return settings.log_level


def where_line(command: str, env_file: Path, settings: Settings) -> str:
    """Which settings file and data folder this command uses: both depend on the current directory."""
    found = env_file_in_use(env_file)
    source = f"settings from {found} and the environment" if found else \
        f"settings from the environment only (no {env_file})"
    if command == "invite":
        return source
    if command == "simulate":
        return f"{source}; nothing is kept (the simulation's database is in memory)"
    if command == "db":
        from bot.db_cli import configured_location
        from bot.store.copy import describe_location

        return f"{source}; the bot's database: {describe_location(configured_location(settings))}"
    if settings.database_url:
        return f"{source}; data in PostgreSQL at {_pg_where(settings.database_url)}"
    return f"{source}; data in {settings.data_dir.absolute()}"


def run_command(command: str, args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    """Load settings, set up logging and run ``command``; every failure becomes one line and a status."""
    prog = "voicebot" if command == "run" else f"voicebot {command}"
    if command == "db":
        prog = f"voicebot db {args.db_command}"
    env_file = Path(args.env_file or ".env").absolute()
    if args.env_file is not None and not env_file.exists():
        # Named on purpose, so not optional like the default .env: running without it would be a surprise.
        sys.stderr.write(f"{prog}: --env-file {args.env_file!r}: no such file ({env_file}): check the name, "
                         "or leave --env-file out to read .env in the current directory\n")
        return CONFIG
    try:
        settings = load_settings(env_file=env_file)
    except SettingsError as exc:
        install_redactor(exc.secrets)
        if requested_log_level() == "DEBUG":
            setup_logging("DEBUG")
            log.debug("settings did not load", exc_info=exc)
        # One problem is one line; several are listed, one line each.
        text = exc.problems[0] if len(exc.problems) == 1 else str(exc)
        sys.stderr.write(f"{prog}: {text}\n")
        return CONFIG
    install_redactor(secret_values(settings))
    setup_logging(_log_level(command, settings))
    if getattr(args, "language", None):
        from audio.languages import parse_setting

        try:
            settings = settings.replace(language=parse_setting(args.language))
        except ValueError as exc:
            sys.stderr.write(f"{prog}: --language: {exc}\n")
            return CONFIG
    if command in ("run", "cluster"):
        try:
            settings = _with_shard_flags(args, settings)
        except ValueError as exc:
            sys.stderr.write(f"{prog}: {exc}\n")
            return CONFIG
    sys.stderr.write(f"{prog}: {where_line(command, env_file, settings)}\n")
    try:
        if command == "run":
            return cmd_run(settings, out, env_file)
        if command == "chat":
            return cmd_chat(settings, stdin, out)
        if command == "invite":
            return cmd_invite(settings, out)
        if command == "check":
            return cmd_check(settings, out)
        if command == "serve":
            from bot.web import run_web_forever

            return run_web_forever(settings)
        if command == "simulate":
            return cmd_simulate(args, settings, out)
        if command == "db":
            from bot.db_cli import cmd_db

            return cmd_db(args, settings, out, prog)
        if command == "cluster":
            return cmd_cluster(args, settings, out)
        raise AssertionError(command)
    except Exception as exc:
        failure = describe_failure(exc, settings)
        if settings.log_level == "DEBUG":
            log.debug("%s failed", prog, exc_info=exc)
        sys.stderr.write(f"{prog}: {failure.line}\n")
        return failure.status


@contextlib.contextmanager
def redacted_output(out: TextIO) -> Iterator[TextIO]:
    """``out``, ``sys.stdout`` and ``sys.stderr`` through the process's redactor for the duration."""
    saved = sys.stdout, sys.stderr
    streams = [RedactingStream(out)]
    if out is sys.stdout:
        sys.stdout = streams[0]
    else:
        sys.stdout = RedactingStream(sys.stdout)
        streams.append(sys.stdout)
    sys.stderr = RedactingStream(sys.stderr)
    streams.append(sys.stderr)
    install_excepthooks()
    try:
        yield streams[0]
    finally:
        for stream in streams:
            with contextlib.suppress(Exception):
                stream.release()
        sys.stdout, sys.stderr = saved


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    with redacted_output(out or sys.stdout) as redacted:
        return run_command(args.command or "run", args, stdin or sys.stdin, redacted)
