"""``voicebot simulate --call FILE.wav``: the real phone path on 127.0.0.1, with a loopback caller.

The bot's web server runs with the phone routes and the speech engines the settings choose (with no
keys: faster-whisper and espeak-ng); a :class:`~bot.phone.caller.LoopbackTwilio` rings it with a
signed webhook, opens the Media Streams socket from the TwiML, waits for the greeting, says the WAV
as μ-law in real time and listens to what comes back (playing it on Twilio's clock, echoing marks,
honouring ``clear``). Twilio settings are made up for the run: real ones are never used or needed.

The report has the same parts as a voice-channel simulation: what was heard, what was replied (and
how much of it reached the caller), the wait per turn, and problems.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.settings import Secret, Settings
from bot.simulate import (
    SimulationError,
    SpokenReply,
    Transcribed,
    TurnReport,
    _ms,
    attribute_heard,
    heard_and_replied_json,
    heard_and_replied_lines,
    save_replies,
)

if TYPE_CHECKING:
    from bot.phone.call import PhoneCall
    from bot.phone.caller import LoopbackCall, LoopbackTwilio
    from bot.phone.service import PhoneService
    from bot.services import Services
    from bot.voice.session import TurnTiming

__all__ = ["CallRig", "CallSimulationResult", "call_rig", "replies_heard", "simulate_call", "SIM_CALLER"]

log = logging.getLogger(__name__)

SIM_CALLER = "+15557650000"
SIM_PUBLIC_URL = "https://phone.simulation.invalid"  # what the webhook is signed against; never resolved
STEP_TIMEOUT = 30.0
SETTLE_TIMEOUT = 60.0


@dataclass
class CallRig:
    """The bot's web side with phone calls, and the loopback Twilio pointed at it."""

    twilio: LoopbackTwilio
    phone: PhoneService
    services: Services
    settings: Settings

    async def connect(self, caller: str = SIM_CALLER, *, timeout: float = STEP_TIMEOUT) -> tuple[LoopbackCall, PhoneCall]:
        """Place a call and wait until it is up and its opening (greeting, notice) has been heard."""
        call = await self.twilio.call(caller)
        async with asyncio.timeout(timeout):
            async with self.phone.changed:
                await self.phone.changed.wait_for(lambda: call.call_sid in self.phone.calls or call.ended)
        bot = self.phone.calls.get(call.call_sid)
        if bot is None:
            raise SimulationError("the bot dropped the call before it started")
        async with asyncio.timeout(timeout):
            await bot.started.wait()
        opening = sum(1 for text in (bot.options.greeting, bot.options.notice) if text)
        await call.wait_for(lambda: len(call.marks_echoed) >= opening or call.ended, timeout * 2)
        return call, bot


@contextlib.asynccontextmanager
async def call_rig(settings: Settings) -> AsyncIterator[CallRig]:
    """Start the bot's web side (phone calls on, made-up Twilio credentials) and a loopback Twilio."""
    from bot.phone.caller import LoopbackTwilio
    from bot.phone.service import build_phone
    from bot.services import build_services
    from bot.store import SqliteDatabase
    from bot.web import WebServer, create_app

    account, token = "AC" + secrets.token_hex(16), secrets.token_hex(16)
    async with LoopbackTwilio(bot_url="http://127.0.0.1:1", public_url=SIM_PUBLIC_URL, account_sid=account,
                              auth_token=token) as twilio:
        sim = settings.replace(twilio_account_sid=account, twilio_auth_token=Secret(token),
                               twilio_phone_number=twilio.number, twilio_api_base=twilio.api_base,
                               public_url=SIM_PUBLIC_URL, phone_calls=True, phone_allowed_callers=frozenset())
        services = await build_services(sim, db=SqliteDatabase.in_memory())
        phone: PhoneService | None = None
        server: WebServer | None = None
        try:
            phone = build_phone(sim, agent=services.agent, memory=services.memory, store=services.store,
                                languages=services.languages, usage=services.usage)
            if phone.stt is not None and phone.stt.name == "local":
                await phone.stt.check()  # load the model now, not during the first turn
            server = WebServer(create_app(phone=phone), "127.0.0.1", 0)
            await server.start()
            twilio.set_bot_url(server.url)
            yield CallRig(twilio, phone, services, sim)
        finally:
            if server is not None:
                await server.stop()
            if phone is not None:
                await phone.aclose()
            await services.aclose()


@dataclass(frozen=True)
class CallSimulationResult:
    transcripts: tuple[Transcribed, ...]
    replies: tuple[SpokenReply, ...]
    turns: tuple[TurnReport, ...]
    media: dict[str, int]  # frames: sent by the caller, dropped by the bot, sent by the bot; clears
    problems: tuple[str, ...] = ()
    ended_by: str = ""
    saved: tuple[Path, ...] = ()
    completed: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            **heard_and_replied_json(self.transcripts, self.replies),
            "turns": [{"speaker": t.speaker, "first_audio_ms": t.first_audio_ms, "breakdown": t.breakdown}
                      for t in self.turns],
            "media": dict(self.media),
            "ended_by": self.ended_by,
            "problems": list(self.problems),
        }

    def format_text(self) -> str:
        lines = heard_and_replied_lines(self.transcripts, self.replies, show_to=False)
        if self.turns:
            lines.append("Latency per turn (ms): end of speech → final transcript → first reply text → "
                         "first TTS audio → first media sent; heard = end of speech → first audio played")
            for t in self.turns:
                b = t.breakdown
                steps = " → ".join(_ms(b.get(k)) for k in (
                    "end_of_speech_to_final_transcript", "final_transcript_to_first_text",
                    "first_text_to_first_tts_audio", "first_tts_audio_to_first_frame"))
                lines.append(f"  {t.speaker}: {steps} (total {_ms(b.get('end_of_speech_to_first_frame'))}, "
                             f"heard {_ms(t.first_audio_ms)})")
        m = self.media
        lines.append(f"Media: caller sent {m['caller_frames']} frames, bot dropped {m['dropped']}, "
                     f"bot sent {m['bot_messages']} messages, {m['clears']} clear(s); call ended by {self.ended_by}")
        if self.problems:
            lines.append("Problems:")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("Problems: none")
        lines += [f"Saved {path}" for path in self.saved]
        return "\n".join(lines) + "\n"


def replies_heard(call: LoopbackCall, timings: list[TurnTiming], spoke_until: float | None
                  ) -> tuple[list[SpokenReply], list[TurnReport]]:
    """Match what the caller heard to each answered turn; the wait is measured from the caller's side."""
    from bot.phone.audio import MULAW_RATE, mulaw_decode

    groups = call.utterances()
    owners = attribute_heard([t.first_frame for t in timings], [g[0].start for g in groups])
    replies: list[SpokenReply] = []
    turns: list[TurnReport] = []
    for timing, indices in zip(timings, owners):
        heard = [groups[i] for i in indices]
        ended = spoke_until if spoke_until is not None and spoke_until <= timing.speech_end else timing.speech_end
        first = heard[0][0].start if heard else None
        turns.append(TurnReport("caller", None if first is None else round((first - ended) * 1000, 1),
                                timing.breakdown_ms()))
        mulaw = b"".join(seg.mulaw for group in heard for seg in group)
        if timing.reply or heard:
            replies.append(SpokenReply(timing.reply, round(len(mulaw) / MULAW_RATE, 2), to="caller",
                                       interrupted=timing.interrupted, pcm=mulaw_decode(mulaw)))
    return replies, turns


async def simulate_call(wav: Path, settings: Settings, *, out_dir: Path | None = None,
                        settle_timeout: float = SETTLE_TIMEOUT) -> CallSimulationResult:
    """Run one loopback phone call saying ``wav`` (see the module docstring) and report it."""
    from bot.phone.caller import CallRefused, load_wav_8k
    from bot.simulate import check_recognizer, check_wav

    check_recognizer(settings)
    check_wav(wav)
    loop = asyncio.get_running_loop()
    try:
        pcm = await loop.run_in_executor(None, load_wav_8k, wav)
    except (OSError, ValueError, EOFError, wave.Error) as exc:
        raise SimulationError(f"cannot read {wav}: {exc}", setup=True) from None
    problems: list[str] = []
    completed = True
    try:
        async with call_rig(settings) as rig:
            try:
                call, bot = await rig.connect()
            except CallRefused as exc:
                raise SimulationError(f"the call was not connected: {exc}") from None
            await call.speak_pcm(pcm, trailing_silence=1.5)
            spoke_until = call.speech_sent_until
            session = bot.session
            assert session is not None
            try:
                async with asyncio.timeout(settle_timeout):
                    await session.wait_settled()
                await call.wait_quiet(STEP_TIMEOUT)
            except TimeoutError:
                completed = False
                problems.append(f"simulate: gave up after {settle_timeout:.0f} s waiting for the reply")
            timings = list(session.timings)
            heard = list(bot.heard)
            if not call.ended:
                await call.hang_up()
            await rig.phone.wait_ended(1, STEP_TIMEOUT)
            await call.close()
            problems += rig.twilio.problems + bot.report.problems
            replies, turns = replies_heard(call, timings, spoke_until)
            media = {"caller_frames": call.sent_frames, "dropped": bot.report.flood_dropped,
                     "bot_messages": bot.report.media_out, "clears": bot.report.clears}
            ended_by = bot.report.ended_by
    except TimeoutError:
        raise SimulationError("gave up: the loopback call took too long to connect") from None
    saved: list[Path] = []
    if out_dir is not None:
        saved = await loop.run_in_executor(None, _save, out_dir, replies)
    return CallSimulationResult(
        transcripts=tuple(Transcribed("caller", t.text) for t in heard), replies=tuple(replies),
        turns=tuple(turns), media=media, problems=tuple(problems), ended_by=ended_by, saved=tuple(saved),
        completed=completed,
    )


def _save(directory: Path, replies: list[SpokenReply]) -> list[Path]:
    """The caller's side of each reply (μ-law decoded: mono 8 kHz) as ``call-reply-NN.wav``."""
    return save_replies(directory, replies, prefix="call-reply", channels=1, rate=8000)

