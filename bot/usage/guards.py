"""The engines wrapped at each paid call: the limit is checked before the request, the use counted after.

* :class:`LimitedSTT` — speech to a paid recognizer (Deepgram). Audio goes to the paid stream only
  out of a reservation: the first packets of a stretch of speech wait (held, not lost) for a slice
  (``SPEECH_SLICE`` seconds) to be reserved; what is left of it goes back at the end of the stretch.
  Refused: the paid stream is finalized (what was paid for is still transcribed) and closed, the
  person's audio goes to the local recognizer (``LIMITS_LOCAL_FALLBACK``) or nowhere, and they are
  told once. Others in the room have streams of their own and carry on.
* :class:`LimitedTTS` — characters to a paid voice (ElevenLabs), reserved exactly. Refused: a
  ``TTSError`` the session answers with its local voice.
* :class:`LimitedEngine` — model tokens: the prompt counted plus the reply's cap, reserved; settled
  with the API's own usage figures when it reports them, else counted. Refused: an ``AgentError``
  whose message tells the person once (later refusals are silent).

Local engines (Whisper, espeak, Piper, classic ELIZA) are counted, never limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from audio.stt.base import STTEngine, STTError, STTStream, Transcript, TranscriptQueue
from audio.tts.base import TTSEngine, TTSError, VoiceInfo, VoiceSpec
from bot.usage.meter import Grant, OverLimit, UsageMeter, Who, current_person, who_of_room

__all__ = ["LimitedEngine", "LimitedSTT", "LimitedTTS", "LOCAL_ENGINES", "count_tokens"]

log = logging.getLogger(__name__)

LOCAL_ENGINES = frozenset({"local", "whisper", "espeak", "piper", "eliza", "silent", "none"})
SPEECH_SLICE = 15.0  # seconds of speech reserved at a time (given back unused at the end of a stretch)
SPEECH_MIN = 0.5  # less than this left: the person is over their limit
HOLD_SECONDS = 3.0  # audio held while a reservation is made (more is dropped, oldest first)

Teller = Callable[[OverLimit, Who], Awaitable[None]]


def count_tokens(text: str) -> int:
    """Tokens when the API reports none: about four characters a token (OpenAI's rule of thumb for
    English; other scripts take more tokens per character, so this undercounts them)."""
    return max(1, (len(text) + 3) // 4) if text else 0


class _GuardedStream(STTStream):
    def __init__(self, guard: LimitedSTT, who: Who, speaker: str, sample_rate: int, options: dict[str, str]) -> None:
        self._guard = guard
        self._who = who
        self.speaker = speaker
        self.sample_rate = sample_rate
        self._options = options
        self._bytes_per_second = sample_rate * (1 if options.get("encoding") in ("mulaw", "alaw") else 2)
        self._queue = TranscriptQueue()
        self._paid: STTStream | None = None
        self._local: STTStream | None = None
        self._grants: list[Grant] = []
        self._allowance = 0.0  # seconds reserved and not yet sent
        self._sent = 0.0  # seconds sent out of the current grants
        self._local_seconds = 0.0
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._reserving: asyncio.Task[None] | None = None
        self._over: OverLimit | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- audio in ----------------------------------------------------------------------------

    def push(self, pcm: bytes) -> None:
        if self._closed or not pcm:
            return
        if self._over is not None and self._guard.meter.clock() >= self._over.until:
            self._over = None  # a new day: the person is heard again (if the new day's limits allow)
            self._close_local()
        if self._over is not None:
            self._to_local(pcm)
            return
        seconds = len(pcm) / self._bytes_per_second
        if not self._held and self._allowance >= seconds:
            self._send(pcm, seconds)
            return
        self._held.append(pcm)
        self._held_bytes += len(pcm)
        while self._held_bytes > HOLD_SECONDS * self._bytes_per_second and len(self._held) > 1:
            self._held_bytes -= len(self._held.pop(0))
        self._reserve_soon()

    def _send(self, pcm: bytes, seconds: float) -> None:
        if self._paid is None:
            self._paid = self._guard.inner.open_stream(speaker=self.speaker, sample_rate=self.sample_rate,
                                                       **self._options)
            self._pump(self._paid, paid=True)
        self._allowance -= seconds
        self._sent += seconds
        self._paid.push(pcm)

    def _to_local(self, pcm: bytes) -> None:
        local = self._guard.local
        if local is None:
            return
        if self._local is None:
            self._local = local.open_stream(speaker=self.speaker, sample_rate=self.sample_rate, **self._options)
            self._pump(self._local, paid=False)
        self._local_seconds += len(pcm) / self._bytes_per_second
        self._local.push(pcm)

    def _close_local(self) -> None:
        local, self._local = self._local, None
        if local is not None:
            task = asyncio.get_running_loop().create_task(self._finish(local), name=f"usage-stt-close-{self.speaker}")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def wait_sent(self) -> None:
        """Until the audio held for a reservation went to a recognizer or was dropped (tests, bench)."""
        while self._reserving is not None and not self._reserving.done():
            await asyncio.shield(self._reserving)

    @property
    def over(self) -> OverLimit | None:
        """The refusal this speaker is resting under (None: heard by the paid recognizer)."""
        return self._over

    def _reserve_soon(self) -> None:
        if self._reserving is None or self._reserving.done():
            self._reserving = asyncio.get_running_loop().create_task(self._reserve(), name=f"usage-stt-{self.speaker}")

    async def _reserve(self) -> None:
        meter = self._guard.meter
        while self._held and self._over is None and not self._closed:
            try:
                grant = await meter.reserve("speech", self._who, SPEECH_SLICE, engine=self._guard.name,
                                            minimum=SPEECH_MIN)
            except OverLimit as exc:
                self._go_over(exc)
                return
            except Exception:  # the store is down: listening goes on, counted when it is back
                log.exception("usage: could not reserve speech; counting it afterwards")
                grant = Grant("speech", meter.day(), self._guard.name, (), SPEECH_SLICE, reserved=False)
            self._grants.append(grant)
            self._allowance += grant.granted
            while self._held:
                seconds = len(self._held[0]) / self._bytes_per_second
                if self._allowance < seconds:
                    break
                pcm = self._held.pop(0)
                self._held_bytes -= len(pcm)
                self._send(pcm, seconds)

    def _go_over(self, exc: OverLimit) -> None:
        self._over = exc
        held, self._held, self._held_bytes = self._held, [], 0
        for pcm in held:
            self._to_local(pcm)
        paid, self._paid = self._paid, None
        if paid is not None:  # words already paid for are still transcribed; no more audio goes there
            task = asyncio.get_running_loop().create_task(self._finish(paid), name=f"usage-stt-close-{self.speaker}")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        self._settle()
        log.info("speech limit reached (%s) for a speaker; %s", exc.level,
                 "the local recognizer listens" if self._guard.local is not None else "not transcribed")
        self._guard.told(exc, self._who)

    async def _finish(self, stream: STTStream) -> None:
        with contextlib.suppress(Exception):
            await stream.finalize()
        with contextlib.suppress(Exception):
            await stream.aclose()

    # --- transcripts out -----------------------------------------------------------------------

    def _pump(self, stream: STTStream, *, paid: bool) -> None:
        async def run() -> None:
            try:
                async for transcript in stream:
                    self._queue.put(transcript)
            except STTError as exc:
                if paid and self._over is not None:
                    return  # closed by us on the way out
                self._queue.fail(exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("usage: transcript pump failed")
            finally:
                if paid and self._over is None and not self._closed:
                    # the paid stream ended by itself (the session reopens one on the next audio)
                    self._queue.close()

        task = asyncio.get_running_loop().create_task(run(), name=f"usage-stt-pump-{self.speaker}")
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

    def __aiter__(self) -> AsyncIterator[Transcript]:
        return self._queue.__aiter__()

    # --- the end of a stretch, and of the stream --------------------------------------------------

    async def finalize(self) -> None:
        if self._reserving is not None and not self._reserving.done():
            with contextlib.suppress(Exception):
                await self._reserving
        answered = False
        if self._paid is not None:
            await self._paid.finalize()
            answered = True
        if self._local is not None:
            await self._local.finalize()
            answered = True
        if not answered:
            # Nothing was sent anywhere (over the limit, no local engine): the end of speech is
            # answered here, so the session does not wait for a recognizer that never heard it.
            self._queue.put(Transcript("", is_final=True, end_of_turn=True, start=0.0, end=0.0))
        self._settle()

    def _settle(self) -> None:
        """Count what was sent out of the grants; what is left of them goes back."""
        meter = self._guard.meter
        sent = self._sent
        for grant in self._grants:
            part = min(sent, grant.granted) if grant.reserved else sent
            sent -= part
            meter.settle(grant, part)
        self._grants, self._allowance, self._sent = [], 0.0, 0.0
        if self._local_seconds and self._guard.local is not None:
            meter.record("speech", self._who, self._local_seconds, engine=self._guard.local.name)
            self._local_seconds = 0.0

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._guard._forget(self)
        if self._reserving is not None:
            self._reserving.cancel()
            with contextlib.suppress(BaseException):
                await self._reserving
        self._settle()
        for stream in (self._paid, self._local):
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
        if self._pumps:
            await asyncio.gather(*list(self._pumps), return_exceptions=True)
        self._queue.close()


class LimitedSTT(STTEngine):
    """A paid recognizer whose streams speak only out of a reservation (see the module docstring).

    ``who_of`` maps the session's speaker label (a Discord user id, or a call's) to whom it counts
    against; ``local`` is the recognizer that takes over for a person over the limit (or None);
    ``tell`` says once, where they spoke, that the bot rests for them."""

    def __init__(self, inner: STTEngine, meter: UsageMeter, who_of: Callable[[str], Who], *,
                 local: STTEngine | None = None, tell: Teller | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.meter = meter
        self.who_of = who_of
        self.local = local
        self._tell = tell
        self._telling: set[asyncio.Task[None]] = set()

    def __getattr__(self, item: str) -> Any:  # the engine's own attributes (language, model…)
        return getattr(self.inner, item)

    def open_stream(self, *, speaker: str, sample_rate: int = 16000, **options: str) -> STTStream:
        who = self.who_of(speaker)
        if self.name in LOCAL_ENGINES:
            return _CountedStream(self.inner.open_stream(speaker=speaker, sample_rate=sample_rate, **options),
                                  self.meter, who, self.name, sample_rate)
        return self._track(_GuardedStream(self, who, speaker, sample_rate, dict(options)))

    def told(self, exc: OverLimit, who: Who) -> None:
        if exc.first and self._tell is not None:
            task = asyncio.get_running_loop().create_task(self._tell(exc, who), name="usage-tell")
            self._telling.add(task)
            task.add_done_callback(self._telling.discard)

    async def check(self) -> str:
        return await self.inner.check()

    async def aclose(self) -> None:
        await self._close_streams()
        if self._telling:
            await asyncio.gather(*list(self._telling), return_exceptions=True)


class _CountedStream(STTStream):
    """A local recognizer's stream: passed through, its seconds counted at each end of speech."""

    def __init__(self, inner: STTStream, meter: UsageMeter, who: Who, engine: str, sample_rate: int) -> None:
        self._inner, self._meter, self._who, self._engine = inner, meter, who, engine
        self.sample_rate = sample_rate
        self.speaker = getattr(inner, "speaker", "")
        self._bytes = 0

    def push(self, pcm: bytes) -> None:
        self._bytes += len(pcm)
        self._inner.push(pcm)

    def _count(self) -> None:
        if self._bytes:
            self._meter.record("speech", self._who, self._bytes / (2 * self.sample_rate), engine=self._engine)
            self._bytes = 0

    async def finalize(self) -> None:
        await self._inner.finalize()
        self._count()

    async def aclose(self) -> None:
        self._count()
        await self._inner.aclose()

    def __aiter__(self) -> AsyncIterator[Transcript]:
        return self._inner.__aiter__()


class LimitedTTS(TTSEngine):
    """A voice whose every request is reserved first (characters) and counted after."""

    def __init__(self, inner: TTSEngine, meter: UsageMeter, *, guild: int | None = None, person: str | None = None,
                 tell: Teller | None = None, language: Callable[[], str | None] = lambda: None) -> None:
        self.inner = inner
        self.name = inner.name
        self.format = inner.format
        self.meter = meter
        self.guild = guild
        self.person = person
        self._tell = tell
        self._language = language
        self._telling: set[asyncio.Task[None]] = set()

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    async def synthesize(self, text: str, voice: VoiceSpec | None = None) -> AsyncIterator[bytes]:  # type: ignore[override]
        who = Who(person=self.person or current_person.get(), guild=self.guild)
        if self.name in LOCAL_ENGINES:
            self.meter.record("voice", who, len(text), engine=self.name)
            async for chunk in self.inner.synthesize(text, voice):
                yield chunk
            return
        try:
            grant = await self.meter.reserve("voice", who, len(text), engine=self.name)
        except OverLimit as exc:
            if exc.first and self._tell is not None:
                task = asyncio.get_running_loop().create_task(self._tell(exc, who), name="usage-tell")
                self._telling.add(task)
                task.add_done_callback(self._telling.discard)
            from bot.usage.messages import resting_text

            raise TTSError(f"daily voice limit reached ({exc.level})", retryable=False, kind="usage_limit",
                           user_message=resting_text(exc.level, exc.until, self._language())) from None
        produced = False
        try:
            async for chunk in self.inner.synthesize(text, voice):
                produced = produced or bool(chunk)
                yield chunk
        finally:
            # Characters are paid once the request is made; a request refused before any audio is not.
            self.meter.settle(grant, len(text) if produced else 0)

    async def list_voices(self) -> list[VoiceInfo]:
        return await self.inner.list_voices()

    async def check(self) -> str:
        return await self.inner.check()

    async def aclose(self) -> None:
        if self._telling:
            await asyncio.gather(*list(self._telling), return_exceptions=True)


class LimitedEngine:
    """A reply engine whose requests reserve their tokens first (prompt counted + the reply's cap)."""

    def __init__(self, inner: Any, meter: UsageMeter) -> None:
        self.inner = inner
        self.name = inner.name
        self.meter = meter

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    async def stream(self, conversation: Any) -> AsyncIterator[str]:
        from bot.agent.engines.base import AgentError

        incoming = conversation.incoming
        who = who_of_room(incoming.room, incoming.speaker_id)
        prompt = sum(count_tokens(str(m.get("content", ""))) + 4 for m in conversation.messages) or count_tokens(
            conversation.text)
        text = ""
        if self.name in LOCAL_ENGINES:
            async for delta in self.inner.stream(conversation):
                text += delta
                yield delta
            self.meter.record("model", who, prompt + count_tokens(text), engine=self.name)
            return
        cap = int(getattr(self.inner, "max_tokens", 0) or 400)
        try:
            grant = await self.meter.reserve("model", who, prompt + cap, engine=self.name)
        except OverLimit as exc:
            from bot.usage.messages import resting_text

            # Told once; by SMS every text is answered with the one line (an SMS left unanswered
            # reads as a failure, and the SMS pipeline sends no empty message).
            again = str(getattr(incoming.modality, "value", incoming.modality)) == "sms"
            told = resting_text(exc.level, exc.until, incoming.language) if exc.first or again else ""
            error = AgentError(f"daily model limit reached ({exc.level})", user_message=told or "-")
            error.user_message = told  # empty after the first time: they were told once, nothing is said
            raise error from None
        figures: dict[str, int] = {}
        conversation = dataclasses.replace(conversation, usage=figures)  # the API's own figures land here
        try:
            async for delta in self.inner.stream(conversation):
                text += delta
                yield delta
        finally:
            if "prompt_tokens" in figures or "completion_tokens" in figures:
                used = figures.get("prompt_tokens", 0) + figures.get("completion_tokens", 0)
            elif text:
                used = prompt + count_tokens(text)
            else:
                used = 0  # refused or failed before a word (a 4xx is not billed); the reservation goes back
            self.meter.settle(grant, used)

    async def check(self) -> str:
        return await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()
