"""One voice channel's conversation: decoded speech in, spoken replies out.

The session owns one speech-to-text stream per active speaker, decides with :class:`TurnPolicy`
which complete turns to answer, streams the agent's reply sentence by sentence into text-to-speech
while the rest is still being generated, and stops talking when someone talks over it (barge-in,
decided on a non-empty interim transcript, so the bot's own voice leaking through a speaker does not
cut it off). Memory gets only what was actually played, marked as interrupted when it was.

When a person has finished is decided with :class:`~bot.voice.endpointing.TurnDetection`: a short
packet gap asks the recognizer for a final at once, and the words decide how long to wait before
the turn ends (a finished question: hardly at all; "I was thinking about…": long enough to go on).
With ``speculate``, the reply (agent and the first sentence's speech) starts as soon as that final
is in, while the turn is not yet over; nothing of it is played or stored until the turn ends, and
it is thrown away if the person goes on (``speculations_wasted`` counts those).

It knows nothing about Discord: it is the receive pipeline's ``SpeechConsumer``
(``on_speech_start``/``on_audio``/``on_speech_end`` per user id), resolves names through
``name_of``, and plays through an :class:`AudioOut`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from audio.playback import Speaker, Utterance, spoken_prefix
from audio.speech import SentenceSplitter, normalize_for_speech
from audio.stt.base import STTEngine, STTError, STTStream, Transcript
from audio.stt.invented import InventedTextFilter
from audio.tts.base import AudioFormat, TTSEngine, TTSError, VoiceSpec
from bot.agent import Agent, AgentError, Incoming, Reply
from bot.agent.forget import forget_request
from bot.i18n.places import Choice
from bot.i18n.voices import speaks, voice_for_language
from bot.memory import Memory, Modality, Turn
from bot.usage.meter import current_person
from bot.voice.echo import EchoGuard
from bot.voice.endpointing import TurnDetection
from bot.voice.turns import PendingTurn, TurnPolicy

__all__ = ["AudioOut", "PlayResult", "SpeakerOut", "TurnTiming", "VoiceSession", "Participant"]

log = logging.getLogger(__name__)

# Faster than anyone speaks (about 15 characters a second is usual): reply text past
# VOICE_REPLY_MAX_SECONDS at this pace can never be spoken, so the agent is stopped there.
_FASTEST_CHARS_PER_SECOND = 50
FIRST_CLAUSE_CHARS = 5  # a reply's first words may go to synthesis at their first comma...
MIN_CLAUSE_CHARS = 4  # ...when the clause is at least this long ("Sure," "Well," but not "So,")


@dataclass(frozen=True)
class PlayResult:
    """How one utterance went out."""

    played_seconds: float
    total_seconds: float
    interrupted: bool
    first_frame_at: float | None  # clock time the first audio frame was handed to Discord

    @property
    def fraction(self) -> float:
        if not self.interrupted:
            return 1.0
        return 0.0 if self.total_seconds <= 0 else min(1.0, self.played_seconds / self.total_seconds)


class AudioOut(Protocol):
    """Where the session's speech goes (a voice connection's playback queue)."""

    async def play(self, text: str, chunks: AsyncIterator[bytes], fmt: AudioFormat) -> PlayResult:
        """Play one utterance as its chunks arrive; return when it ends or is stopped."""

    def stop(self) -> None:
        """Stop what is playing now (barge-in): the pending ``play`` returns ``interrupted``."""


class SpeakerOut:
    """:class:`AudioOut` over a voice connection's playback queue (:class:`audio.playback.Speaker`)."""

    def __init__(self, speaker: Speaker) -> None:
        self.speaker = speaker
        self._stopping: set[asyncio.Task[object]] = set()

    async def play(self, text: str, chunks: AsyncIterator[bytes], fmt: AudioFormat) -> PlayResult:
        handle = self.speaker.enqueue(Utterance(text, chunks, fmt))
        played = await asyncio.shield(handle.done)
        total = played.total_seconds if played.total_seconds is not None else played.played_seconds
        return PlayResult(played.played_seconds, total, played.interrupted, played.first_frame_at)

    def stop(self) -> None:
        task = asyncio.get_running_loop().create_task(self.speaker.stop(), name="speaker-stop")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def aclose(self) -> None:
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        await self.speaker.aclose()


@dataclass
class TurnTiming:
    """One answered turn's latency breakdown (clock times; ``None`` where a step did not happen),
    with what was asked and what was actually said back (``reply``: only the played part)."""

    user_id: int
    speech_end: float  # the session noticed the end of speech (a packet gap, the talk button released)
    final_transcript: float | None = None
    first_text: float | None = None
    first_sentence: float | None = None
    first_tts_audio: float | None = None
    first_frame: float | None = None
    turn_end: float | None = None  # the turn was known to be over (answering could be heard from here)
    speculative: bool = False  # the reply was started before the turn was over
    speaker_name: str = ""
    text: str = ""
    reply: str = ""
    interrupted: bool = False
    # The person's last speech, as the transport measured it (None: taken as ``speech_end``): the
    # wait a person hears runs from here. ``typed``: the turn came from a text box, not a voice.
    voice_end: float | None = None
    typed: bool = False

    def breakdown_ms(self) -> dict[str, float | None]:
        def ms(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 1)

        return {
            "end_of_speech_to_final_transcript": ms(self.speech_end, self.final_transcript),
            "final_transcript_to_first_text": ms(self.final_transcript, self.first_text),
            "first_text_to_first_tts_audio": ms(self.first_text, self.first_tts_audio),
            "first_tts_audio_to_first_frame": ms(self.first_tts_audio, self.first_frame),
            "end_of_speech_to_first_frame": ms(self.speech_end, self.first_frame),
        }

    def stages_ms(self, voice_end: float | None, heard_at: float | None) -> dict[str, float | None]:
        """The wait a person hears, split up: ``voice_end`` (their last packet) → ``heard_at`` (the
        reply's first packet at a listener), both on this clock.

        ``end_of_speech`` (→ the pause noticed), ``stt`` (→ final transcript), ``agent`` (→ first
        piece of the reply), ``tts`` (→ first audio), ``playback`` (the later of first audio and end
        of turn → first frame handed to the player), ``send`` (→ heard). ``turn_end`` (last packet →
        the turn known to be over) overlaps stt/agent/tts when the reply was started speculatively.
        """
        def ms(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 1)

        audio = self.first_tts_audio
        ready = max(audio, self.turn_end) if audio is not None and self.turn_end is not None else audio
        first_piece = self.first_sentence or self.first_text
        return {
            "wait": ms(voice_end, heard_at),
            "end_of_speech": ms(voice_end, self.speech_end),
            "stt": ms(self.speech_end, self.final_transcript),
            "agent": ms(self.final_transcript, first_piece),
            "tts": ms(first_piece, audio),
            "turn_end": ms(voice_end, self.turn_end),
            "playback": ms(ready, self.first_frame),
            "send": ms(self.first_frame, heard_at),
        }


@dataclass
class Participant:
    user_id: int
    name: str
    stream: STTStream | None = None
    reader: asyncio.Task[None] | None = None
    finals: list[str] = field(default_factory=list)
    speaking: bool = False
    started_at: float | None = None  # when the current (or last) stretch of speech began
    humans_at_start: int | None = None  # people in the room when that stretch began
    language: str | None = None  # the language the recognizer heard in the current turn
    ended_at: float | None = None
    voice_at: float | None = None  # the transport's voice activity detector last heard them (see mark_voice)
    speech_ends: int = 0  # ends of speech handed to the recognizer (finalize requested)
    turn_ends: int = 0  # end-of-turn finals the recognizer gave back
    candidate: PendingTurn | None = None  # words in, waiting to see whether the person goes on
    confirm: asyncio.TimerHandle | None = None  # ends the candidate turn if they stay quiet
    interim: str = ""  # the recognizer's latest guess at the words after ``finals``

    @property
    def awaiting_recognizer(self) -> bool:
        """An end of speech has not been answered by an end-of-turn final yet.

        Counted, not paired: an engine may end a turn on its own pause before the receive path
        notices the end of speech, and then answers the later ``finalize`` with nothing.
        """
        return self.turn_ends < self.speech_ends


class VoiceSession:
    """The conversation in one voice channel."""

    def __init__(
        self,
        *,
        room: str,
        agent: Agent,
        memory: Memory,
        stt: STTEngine | None,
        tts: TTSEngine,
        out: AudioOut,
        policy: TurnPolicy,
        voice: VoiceSpec | None = None,
        fallback_tts: TTSEngine | None = None,
        sample_rate: int = 16000,
        name_of: Callable[[int], str] = str,
        humans_present: Callable[[], int] = lambda: 1,
        notify: Callable[[str], Awaitable[None]] | None = None,
        mirror: Callable[[str, str], Awaitable[None]] | None = None,
        max_reply_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        speaker_id: Callable[[int], str] = lambda user_id: f"discord:{user_id}",
        modality: Modality = Modality.VOICE,
        turn_detection: TurnDetection | None = None,
        speculate: bool = False,
        choose_language: Callable[[str, str | None], Choice] | None = None,
        stream_options: dict[str, str] | None = None,
        visible: Callable[[int], frozenset[str] | None] | None = None,
    ) -> None:
        self.room = room
        # The transport's answer to "which rooms of this guild can this person see" (recall searches
        # those besides this room); None: this room only.
        self.visible = visible
        # None: the recognizer's end-of-turn final ends the turn at once (the fixed rule).
        self.turn_detection = turn_detection if turn_detection is not None and turn_detection.smart else None
        self.speculate = speculate and self.turn_detection is not None
        # How long after the person's last sound the receive path reports the end of speech (the
        # packet gap of either mode); a transport that hears the voice itself calls mark_voice.
        self.end_gap = turn_detection.gap_ms / 1000 if turn_detection is not None else 0.0
        self._speculations: dict[int, _Speculation] = {}
        self._held_notices: dict[int, str] = {}  # user id -> a notice whose reply was thrown away
        self.speculations_started = 0
        self.speculations_wasted = 0  # speculative replies thrown away (the person went on, or it failed)
        self.agent = agent
        self.memory = memory
        warm = getattr(memory, "warm", None)
        if warm is not None:
            try:
                warm(room)  # the room's recent turns, read before the first reply needs them
            except RuntimeError:  # built outside a running loop: the first reply reads them
                pass
        self.stt = stt
        self.tts = tts
        self.fallback_tts = fallback_tts
        self.out = out
        self.policy = policy
        self.voice = voice
        self.sample_rate = sample_rate
        self.name_of = name_of
        self.humans_present = humans_present
        self._notify = notify
        self._mirror = mirror
        self.max_reply_seconds = max_reply_seconds  # VOICE_REPLY_MAX_SECONDS: past it, stop at a sentence
        # The place's language (bot.i18n): (utterance, language heard) -> the language to answer in.
        self.choose_language = choose_language
        self.stream_options = dict(stream_options or {})  # e.g. Deepgram's language for this guild
        self.reply_language: str | None = None  # the language of the reply being spoken
        self._tts_chars_per_second = 14.0  # the main voice's pace, learnt from each whole sentence
        self.clock = clock
        # Memory identity and modality of the people heard (a phone call: ``phone:+E164``, "call").
        self.speaker_id = speaker_id
        self.modality = modality
        self.participants: dict[int, Participant] = {}
        self.timings: list[TurnTiming] = []
        self.last_timing: TurnTiming | None = None
        self._responder: asyncio.Task[None] | None = None
        self._speaking = False  # the bot is playing audio right now
        self._speaking_since = 0.0
        self._barge_in = asyncio.Event()
        self._stt_failed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.answered = asyncio.Condition()  # notified after each answered or dropped turn (tests, simulate)
        self.turns_done = 0
        # Called with every complete turn heard (answered or not); for `voicebot simulate` and tests.
        self.on_turn: Callable[[PendingTurn], None] | None = None
        # Called with each turn's outcome ("answered", "interrupted", "failed", "ignored") and its
        # timing (None when ignored); the console's metrics and live chart.
        self.on_outcome: Callable[[str, TurnTiming | None], None] | None = None
        self._changed = asyncio.Event()  # set on every change that can make the session settled
        # The bot's own voice heard back through someone's speakers, and text the recognizer made up:
        # neither barges in nor becomes a turn; both are counted.
        self.echo = EchoGuard(clock=clock)
        self.invented = InventedTextFilter()

    # ------------------------------------------------------------------ state, for simulate and tests

    @property
    def settled(self) -> bool:
        """Nothing in flight: nobody mid-speech, every end of speech answered by the recognizer,
        no turn waiting or being answered, nothing playing."""
        return (
            not any(p.speaking or p.awaiting_recognizer or p.candidate is not None
                    for p in self.participants.values())
            and len(self.policy) == 0
            and (self._responder is None or self._responder.done())
            and not self._speaking
        )

    async def wait_settled(self) -> None:
        """Return once :attr:`settled` holds (the caller bounds the wait with a timeout)."""
        while not self.settled:
            self._changed.clear()
            await self._changed.wait()

    def _touch(self) -> None:
        self._changed.set()

    # ------------------------------------------------------------------ input from the receive path

    def on_speech_start(self, user_id: int) -> None:
        """A person started speaking (first packet after silence)."""
        if self._closed:
            return
        person = self._participant(user_id)
        person.speaking = True
        person.started_at = self.clock()
        if person.humans_at_start is None or not person.finals:  # a new turn, not its continuation
            person.humans_at_start = self.humans_present()
        if person.candidate is not None:
            # They went on: the pause was not the end of their turn. Their words so far stay and
            # the turn continues; a reply started on them is thrown away unheard.
            self._drop_candidate(person)
        self._ensure_stream(person)
        self._touch()

    def on_audio(self, user_id: int, pcm: bytes) -> None:
        """Decoded PCM (s16le mono at ``sample_rate``) from one person. Must run on the event loop."""
        if self._closed or self._stt_failed:
            return
        person = self._participant(user_id)
        stream = self._ensure_stream(person)
        if stream is not None:
            stream.push(pcm)

    def mark_voice(self, user_id: int, at: float | None = None) -> None:
        """The transport's voice activity detector heard this person (now, or at clock time ``at``;
        the playground, whose talk button may stay down through silence): their turn's wait runs
        from the last mark."""
        person = self.participants.get(user_id)
        if person is not None and not self._closed:
            at = self.clock() if at is None else at
            person.voice_at = at if person.voice_at is None else max(person.voice_at, at)

    def on_speech_end(self, user_id: int) -> None:
        """The person stopped (packet gap + VAD): flush their recognizer now."""
        person = self.participants.get(user_id)
        if person is None or self._closed:
            return
        person.speaking = False
        person.ended_at = self.clock()
        if person.stream is not None:
            person.speech_ends += 1
            self._spawn(person.stream.finalize(), f"stt-finalize-{user_id}")
        words = " ".join([*person.finals, person.interim]).strip()
        if words:  # long-term recall starts on the words heard so far, while the final is on its way
            self.agent.prefetch_memories(Incoming(room=self.room, speaker_id=self.speaker_id(user_id),
                                                  speaker_name=person.name, text=words, modality=self.modality,
                                                  visible=self._visible(user_id)))
        self._touch()

    def on_leave(self, user_id: int) -> None:
        """The person left the channel (or opted out): drop everything about them."""
        person = self.participants.pop(user_id, None)
        self.policy.forget(user_id)
        if person is not None:
            self._drop_candidate(person)
            if person.reader is not None:
                person.reader.cancel()
            self._spawn(self._close_participant(person), f"stt-close-{user_id}")
        self._touch()

    def hear_text(self, user_id: int, text: str) -> None:
        """A complete turn typed rather than spoken (the console's playground text box)."""
        if self._closed or not text.strip():
            return
        now = self.clock()
        self._complete_turn(PendingTurn(user_id, self._participant(user_id).name, text.strip(),
                                        ended_at=now, final_at=now, typed=True))

    def _report(self, outcome: str, timing: TurnTiming | None) -> None:
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome, timing)
            except Exception:
                log.exception("on_outcome hook failed", extra={"room": self.room})

    # ------------------------------------------------------------------ speaking on request

    async def say(self, text: str, *, language: str | None = None) -> PlayResult | None:
        """Speak ``text`` now (``/say``), queued behind anything already being said; with
        ``language``, normalised for and spoken in that language's voice (a phone call's own words
        in the caller's language), else in the default voice."""
        spoken = normalize_for_speech(text) if language is None else normalize_for_speech(text, language=language)
        if not spoken:
            return None
        return await self._play(spoken, _Prefetch(self, spoken, None, language=language), None)

    # ------------------------------------------------------------------ STT

    def _participant(self, user_id: int) -> Participant:
        person = self.participants.get(user_id)
        if person is None:
            person = self.participants[user_id] = Participant(user_id, self.name_of(user_id))
        return person

    def _ensure_stream(self, person: Participant) -> STTStream | None:
        if self.stt is None or self._stt_failed:
            return None
        if person.stream is None:
            person.stream = self.stt.open_stream(speaker=str(person.user_id), sample_rate=self.sample_rate,
                                                 **self.stream_options)
            person.reader = asyncio.get_running_loop().create_task(
                self._read_transcripts(person, person.stream), name=f"stt-read-{person.user_id}"
            )
        return person.stream

    async def _read_transcripts(self, person: Participant, stream: STTStream) -> None:
        try:
            async for transcript in stream:
                self._on_transcript(person, transcript)
        except STTError as exc:
            log.error("speech recognition failed for the channel: %s", exc, extra={"room": self.room})
            if not exc.retryable:
                self._stt_failed = True  # no reconnect loop on a rejected key or quota
            await self._tell(exc.user_message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("transcript reader crashed", extra={"room": self.room, "user_id": person.user_id})
        finally:
            if person.stream is stream:
                person.stream, person.reader = None, None
            person.turn_ends = person.speech_ends  # this stream will answer nothing more
            self._touch()

    def _on_transcript(self, person: Participant, transcript: Transcript) -> None:
        text = transcript.text.strip()
        if text and self.echo.is_echo(text, speech_started=person.started_at):
            log.info("dropped the bot's own voice heard back from %s", person.user_id, extra={"room": self.room})
            text = ""
        elif text and transcript.is_final:
            reason = self.invented.check(text, confidence=transcript.confidence,
                                         speech_ratio=transcript.speech_ratio)
            if reason is not None:
                log.info("dropped invented text (%s) from %s", reason, person.user_id, extra={"room": self.room})
                text = ""
        if transcript.turn_event:
            self._on_turn_event(person, transcript.turn_event, text, transcript.received_at or self.clock(),
                                transcript.language)
        if not transcript.is_final:
            if text:
                person.interim = text
            if text and self._talking_over(person):
                self._barge(person)
            return
        person.interim = ""
        if text:
            person.finals.append(text)
            person.language = transcript.language or person.language
            if self._talking_over(person):
                self._barge(person)
        if transcript.end_of_turn:
            person.turn_ends += 1
            self._touch()
        if transcript.end_of_turn and not person.finals and person.candidate is None:
            self._discard_speculation(person.user_id)  # an eager guess whose words turned out to be nothing
        if transcript.end_of_turn and person.finals:
            now = transcript.received_at or self.clock()
            # A recognizer that endpoints on silence the VAD still counts as speech (a phone line's
            # silence, the fixed 600 ms rule) ends the turn before on_speech_end: it ended now, not
            # at the previous pause (which would make the turn look stale and get it dropped).
            noticed = person.ended_at is not None and not person.speaking
            ended = person.ended_at if noticed and person.ended_at is not None else now
            turn = PendingTurn(person.user_id, person.name, " ".join(person.finals), ended_at=ended, final_at=now,
                               humans_present=person.humans_at_start, language=person.language,
                               voice_end=self._voice_end(person, ended, noticed=noticed))
            if self.turn_detection is None:
                person.finals.clear()
                person.language = None
                self._complete_turn(turn)
            elif not person.speaking and not person.awaiting_recognizer:
                self._hold_turn(person, turn)
            # else: they are talking again, or a later pause's words are still coming (a slow
            # recognizer): these words stay, and the turn ends on the last pause's final

    # ------------------------------------------------------------------ end of turn

    def _on_turn_event(self, person: Participant, event: str, text: str, now: float,
                       heard: str | None = None) -> None:
        """Flux's own turn guesses: ``eager`` prepares a reply (played only when the turn ends),
        ``resumed`` throws it away."""
        if event == "resumed":
            if person.candidate is None:
                self._discard_speculation(person.user_id)
            return
        if (event == "eager" and text and self.speculate and person.candidate is None
                and person.user_id not in self._speculations
                and self.policy.wants(person.user_id, text, humans_present=self._room_of(person))):
            ended = person.ended_at if person.ended_at is not None else now
            turn = PendingTurn(person.user_id, person.name, " ".join([*person.finals, text]), ended_at=ended,
                               final_at=now, humans_present=person.humans_at_start, language=heard or person.language,
                               voice_end=self._voice_end(person, ended, noticed=person.ended_at is not None))
            self._speculations[person.user_id] = _Speculation(self, turn)
            self.speculations_started += 1

    def _voice_end(self, person: Participant, ended: float, *, noticed: bool) -> float:
        """When the person last made a sound, for a turn whose speech ended at ``ended``: the
        transport's voice mark when it made one in this stretch of speech; else, when the receive
        path ``noticed`` the end, that moment less its packet gap; else (the recognizer ended the
        turn on its own pause, mid-speech) ``ended`` is all that is known."""
        if person.voice_at is not None and person.started_at is not None and person.voice_at >= person.started_at:
            return min(person.voice_at, ended)
        return ended - self.end_gap if noticed else ended

    def _room_of(self, person: Participant) -> int:
        """People present when this person began the turn (``auto`` decides by that room)."""
        return person.humans_at_start if person.humans_at_start is not None else self.humans_present()

    def _hold_turn(self, person: Participant, turn: PendingTurn) -> None:
        """The words of a pause are in: end the turn when the rule says, unless the person goes on."""
        assert self.turn_detection is not None
        early = self._speculations.get(person.user_id)
        if early is not None and _same_words(early.turn.text, turn.text) and early.turn.language == turn.language:
            self._speculations.pop(person.user_id)  # an eager guess with these words: keep its reply
        else:
            early = None
        self._drop_candidate(person)
        person.candidate = turn
        if early is not None:
            early.turn = turn
            self._speculations[person.user_id] = early
        elif self.speculate and self.policy.wants(turn.user_id, turn.text, humans_present=self._room_of(person)):
            self._speculations[person.user_id] = _Speculation(self, turn)
            self.speculations_started += 1
        # ended_at is when the gap was noticed, pause_ms after the last packet; the hold counts from that packet.
        last_voice = turn.ended_at - self.turn_detection.pause_ms / 1000
        delay = last_voice + self.turn_detection.hold_seconds(turn.text) - self.clock()
        person.confirm = asyncio.get_running_loop().call_later(max(0.0, delay), self._end_turn, person.user_id)
        self._touch()

    def _end_turn(self, user_id: int) -> None:
        person = self.participants.get(user_id)
        if person is None or person.candidate is None or self._closed:
            return
        turn, person.candidate, person.confirm = person.candidate, None, None
        person.finals.clear()
        person.language = None
        self._complete_turn(turn)
        self._touch()

    def _drop_candidate(self, person: Participant) -> None:
        """Forget a turn that has not ended (the person went on, or left) and any reply started on it."""
        if person.confirm is not None:
            person.confirm.cancel()
        person.candidate, person.confirm = None, None
        self._discard_speculation(person.user_id)

    def _discard_speculation(self, user_id: int) -> None:
        spec = self._speculations.pop(user_id, None)
        if spec is not None:
            self._keep_notice(spec)
            self.speculations_wasted += 1
            log.debug("speculative reply to %s thrown away", user_id, extra={"room": self.room})
            self._spawn(self._cancel_speculation(spec), f"speculation-cancel-{user_id}")

    def _keep_notice(self, spec: _Speculation) -> None:
        """A one-time notice (an unsupported language) chosen for a reply that is thrown away is
        posted with this person's next answer instead of being lost."""
        if spec.notice:
            self._held_notices[spec.turn.user_id] = spec.notice

    async def _cancel_speculation(self, spec: _Speculation) -> None:
        streaming = not spec.produce.done()
        await spec.cancel()
        warm = getattr(self.agent.engine, "warm", None)
        if streaming and warm is not None:
            await warm()  # the cancelled stream took its connection with it; the next reply needs one

    # ------------------------------------------------------------------ turns

    def _complete_turn(self, turn: PendingTurn) -> None:
        if self.on_turn is not None:
            try:
                self.on_turn(turn)
            except Exception:
                log.exception("on_turn hook failed", extra={"room": self.room})
        if self._mirror is not None:
            self._spawn(self._mirror(turn.name, turn.text), "mirror-user")
        humans = turn.humans_present if turn.humans_present is not None else self.humans_present()
        dropped = self.policy.dropped_count
        if self.policy.offer(turn, humans_present=humans):
            self._forget_dropped(dropped)  # a full queue let an older turn go
            self._kick()
            return
        self._report("ignored", None)
        self._discard_speculation(turn.user_id)
        # Not for the bot, but part of the room's conversation: the agent should know it was said.
        self._keep_said(turn)

    def _keep_said(self, turn: PendingTurn) -> None:
        """Store words no reply will store (not for the bot, dropped, or heard as the session closed)."""
        if forget_request(turn.text, getattr(self.agent, "names", ())) is not None:
            return  # "forget what I just said": a request, never a remark to keep
        self.memory.append(Turn(room=self.room, speaker_id=self.speaker_id(turn.user_id), speaker_name=turn.name,
                                role="user", text=turn.text, modality=self.modality, created_at=time.time()))

    def _kick(self) -> None:
        if self._responder is None or self._responder.done():
            self._responder = asyncio.get_running_loop().create_task(self._respond_loop(), name=f"respond-{self.room}")
            self._responder.add_done_callback(lambda _: self._touch())

    async def _respond_loop(self) -> None:
        while not self._closed:
            dropped = self.policy.dropped_count
            turn = self.policy.next_turn()
            self._forget_dropped(dropped)
            if turn is None:
                return
            try:
                await self._answer(turn)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("answering a voice turn failed", extra={"room": self.room, "user_id": turn.user_id})
            self.reply_language = None  # /say between turns speaks in the default voice
            async with self.answered:
                self.turns_done += 1
                self.answered.notify_all()
            self._touch()

    def _forget_dropped(self, before: int) -> None:
        """Turns the policy dropped as stale (or for a full queue) since it held ``before``: no
        reply was started for them after all, and the console counts them as ignored."""
        new = min(self.policy.dropped_count - before, len(self.policy.dropped))
        for turn, _reason in self.policy.dropped[len(self.policy.dropped) - new:]:
            spec = self._speculations.get(turn.user_id)
            if spec is not None and spec.turn.text == turn.text:  # not a newer turn's
                self._discard_speculation(turn.user_id)
            self._report("ignored", None)
            self._keep_said(turn)  # unanswered, still said

    def _visible(self, user_id: int) -> frozenset[str] | None:
        if self.visible is None:
            return None
        try:
            return self.visible(user_id)
        except Exception:  # a member gone from the cache: recall reads this room only
            log.debug("visible rooms of %s unknown", user_id, extra={"room": self.room})
            return None

    def _choose_language(self, turn: PendingTurn) -> tuple[str | None, str | None]:
        """The language to answer ``turn`` in (None: the default) and a notice to post first, if any."""
        if self.choose_language is None:
            return None, None
        choice = self.choose_language(turn.text, turn.language)
        return choice.language, choice.notice or None

    async def _answer(self, turn: PendingTurn) -> None:
        spec = self._speculations.pop(turn.user_id, None)
        if spec is not None and spec.turn.text != turn.text:
            # Merged with earlier words in the queue (or otherwise changed): not this answer.
            self.speculations_wasted += 1
            self._keep_notice(spec)
            await self._cancel_speculation(spec)
            spec = None
        first: tuple[str, _Prefetch] | None = None
        self._barge_in.clear()
        if spec is not None:
            timing, reply, produce = spec.timing, spec.reply, spec.produce
            language, notice = spec.language, spec.notice or self._held_notices.pop(turn.user_id, None)
            self.reply_language = language
            try:
                if notice:
                    await self._tell(notice)
                timing.turn_end = self.clock()
                timing.voice_end = turn.voice_end  # the turn answered may have grown since the guess
                reply.remember_incoming()  # the turn is over: what they said is now part of the conversation
                first = await spec.first_audio()
            except BaseException:  # closed meanwhile: the speculative stream must not outlive the session
                await spec.cancel()
                raise
        else:
            timing = TurnTiming(turn.user_id, speech_end=turn.ended_at, final_transcript=turn.final_at,
                                speaker_name=turn.name, text=turn.text, turn_end=self.clock(),
                                voice_end=turn.voice_end, typed=turn.typed)
            language, notice = self._choose_language(turn)
            notice = notice or self._held_notices.pop(turn.user_id, None)
            self.reply_language = language
            if notice:
                await self._tell(notice)
            reply = self.agent.reply(Incoming(room=self.room, speaker_id=self.speaker_id(turn.user_id),
                                              speaker_name=turn.name, text=turn.text, modality=self.modality,
                                              language=language, visible=self._visible(turn.user_id)))
            sentences: asyncio.Queue[str | None] = asyncio.Queue()
            produce = asyncio.get_running_loop().create_task(
                self._produce_sentences(reply, _reply_splitter(), sentences, timing), name=f"reply-text-{self.room}"
            )
        self.timings.append(timing)
        del self.timings[:-100]
        self.last_timing = timing
        queue = spec.sentences if spec is not None else sentences
        spoken: list[str] = []
        interrupted = False
        try:
            interrupted = await self._speak_sentences(queue, timing, spoken, first)
            if not interrupted:
                interrupted = await produce  # re-raises an agent failure; True if it stopped the agent
        except AgentError as exc:
            log.warning("voice reply failed: %s", exc, extra={"room": self.room, "user_id": turn.user_id})
            self._report("failed", timing)
            if not spoken and exc.user_message:  # empty: told once already (a daily limit, bot/usage)
                await self._speak_or_post(exc.user_message)
            return
        finally:
            if not produce.done():
                produce.cancel()
                with contextlib.suppress(asyncio.CancelledError, AgentError):
                    await produce
        self.policy.answered(turn.user_id)
        said = " ".join(spoken).strip()
        timing.reply, timing.interrupted = said, interrupted
        self._report("interrupted" if interrupted else "answered", timing)
        if interrupted:
            if said:  # only what was actually played, marked so the agent knows it was cut off
                reply.finish(said, interrupted=True)
        elif said:
            reply.finish(said)
        if self._mirror is not None and said:
            self._spawn(self._mirror(self.agent.character.name, said + (" …" if interrupted else "")), "mirror-bot")

    async def _produce_sentences(self, reply: Reply, splitter: SentenceSplitter,
                                 sentences: asyncio.Queue[str | None], timing: TurnTiming) -> bool:
        """Queue the reply's sentences; True when it outgrew what will be spoken and was stopped."""
        produced, most = 0, self.max_reply_seconds * _FASTEST_CHARS_PER_SECOND
        try:
            async for delta in reply:
                produced += len(delta)
                if produced > most:
                    await reply.aclose()
                    return True
                if timing.first_text is None and delta.strip():
                    timing.first_text = self.clock()
                for sentence in splitter.feed(delta):
                    if timing.first_sentence is None:
                        timing.first_sentence = self.clock()
                    sentences.put_nowait(sentence)
            for sentence in splitter.flush():
                sentences.put_nowait(sentence)
            return False
        finally:
            sentences.put_nowait(None)

    async def _first_audio(self, sentences: asyncio.Queue[str | None], timing: TurnTiming, *,
                           wait: bool, language: str | None = None) -> tuple[str, _Prefetch] | None:
        """Start synthesizing the first speakable sentence (waiting for it with ``wait``), in
        ``language`` (a speculative reply's, chosen before it is the reply being spoken)."""
        sentence = await self._take_speakable(sentences, wait=wait, language=language)
        return None if sentence is None else (sentence, _Prefetch(self, sentence, timing, language=language))

    async def _speak_sentences(self, sentences: asyncio.Queue[str | None], timing: TurnTiming,
                               spoken: list[str], first: tuple[str, _Prefetch] | None = None) -> bool:
        """Synthesize and play sentences as they come (``first`` already synthesizing); True when
        interrupted or shortened."""
        next_audio: tuple[str, _Prefetch] | None = first
        played = 0.0
        try:
            while True:
                if next_audio is None:
                    sentence = await self._take_speakable(sentences, wait=True)
                    if sentence is None:
                        return False
                    next_audio = (sentence, _Prefetch(self, sentence, timing))
                text, audio = next_audio
                next_audio = None
                if played >= self.max_reply_seconds:  # long enough: end on the last whole sentence
                    log.info("voice reply shortened after %.0f s", played, extra={"room": self.room})
                    audio.cancel()
                    return True
                # Start synthesizing the following sentence while this one plays.
                follower = await self._take_speakable(sentences, wait=False)
                if follower is not None:
                    next_audio = (follower, _Prefetch(self, follower, timing))
                result = await self._play(text, audio, timing)
                if result is None:
                    continue  # nothing could be synthesized for this sentence
                prefix = ""
                if audio.unspoken and not (result.interrupted or self._barge_in.is_set()):
                    # The voice failed part-way through: the local voice says the rest.
                    played += result.played_seconds
                    prefix, text = audio.heard, audio.unspoken
                    result = await self._play(text, _Prefetch(self, text, timing, local_only=True), timing)
                    if result is None:  # no other voice: memory keeps only what was heard
                        spoken.append(prefix)
                        return True
                elif audio.unspoken:
                    text = audio.heard  # stopped within the part that was synthesized
                played += result.played_seconds
                if result.interrupted or self._barge_in.is_set():
                    spoken.append(f"{prefix} {spoken_prefix(text, result.fraction)}".strip())
                    return True
                spoken.append(f"{prefix} {text}".strip())
        finally:
            if next_audio is not None:
                next_audio[1].cancel()

    async def _take_speakable(self, sentences: asyncio.Queue[str | None], *, wait: bool,
                              language: str | None = None) -> str | None:
        """The next sentence with something to say, normalised for speech.

        None at the end of the reply, or, with ``wait=False``, when no sentence is ready yet.
        """
        while wait or not sentences.empty():
            sentence = await sentences.get() if wait else sentences.get_nowait()
            if sentence is None:
                sentences.put_nowait(None)  # keep the end marker for later reads
                return None
            speakable = normalize_for_speech(sentence, language=language or self.reply_language or "en")
            if speakable:
                return speakable
        return None

    async def _play(self, text: str, audio: _Prefetch, timing: TurnTiming | None) -> PlayResult | None:
        fmt = await audio.format()
        if fmt is None:
            return None
        self._speaking = True
        self._speaking_since = self.clock()
        playing = self.echo.playing(text)
        result: PlayResult | None = None
        try:
            result = await self.out.play(text, audio.chunks(), fmt)
        finally:
            self._speaking = False
            self.echo.said(text if result is None else spoken_prefix(text, result.fraction), playing=playing)
            self._touch()
            audio.cancel()
        if timing is not None and timing.first_frame is None and result.first_frame_at is not None:
            timing.first_frame = result.first_frame_at
        return result

    async def _speak_sentence(self, text: str, timing: TurnTiming | None) -> PlayResult | None:
        return await self._play(text, _Prefetch(self, text, timing), timing)

    async def _speak_or_post(self, text: str) -> None:
        if await self._speak_sentence(text, None) is None:
            await self._tell(text)

    def _talking_over(self, person: Participant) -> bool:
        """Whether this person is speaking over the bot now.

        Words can arrive while the bot talks that were said before it began (a recognizer
        working through an earlier utterance): those are not an interruption.
        """
        if not self._speaking:
            return False
        if person.speaking:
            return True
        return person.ended_at is not None and person.ended_at >= self._speaking_since

    def _barge(self, person: Participant) -> None:
        if self._barge_in.is_set():
            return
        log.info("barge-in by %s", person.user_id, extra={"room": self.room})
        self._barge_in.set()
        self.out.stop()

    async def _tell(self, text: str) -> None:
        if self._notify is not None:
            try:
                await self._notify(text)
            except Exception:
                log.exception("could not post a note to the channel", extra={"room": self.room})

    # ------------------------------------------------------------------ lifecycle

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    async def _close_participant(self, person: Participant) -> None:
        if person.stream is not None:
            with contextlib.suppress(STTError):
                await person.stream.aclose()
        if person.reader is not None:
            person.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await person.reader

    async def aclose(self) -> None:
        """Stop talking and listening; cancel and await every task. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.out.stop()
        # Words heard that no reply has stored yet — a turn waiting to end (a speculative reply's too)
        # and turns queued behind the answer in progress — are kept as said: a process stopping (a
        # deploy, SIGTERM) must not lose them. The answer in progress stored its turn when it began.
        unanswered = [p.candidate for p in self.participants.values() if p.candidate is not None]
        for turn in sorted([*unanswered, *self.policy.drain()], key=lambda t: t.ended_at):
            self._keep_said(turn)
        for person in self.participants.values():
            if person.confirm is not None:
                person.confirm.cancel()
            person.candidate = person.confirm = None
        for spec in list(self._speculations.values()):
            await spec.cancel()
        self._speculations.clear()
        if self._responder is not None:
            self._responder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._responder
        for person in list(self.participants.values()):
            await self._close_participant(person)
        self.participants.clear()
        # Closers (finalize, stream close) finish quickly; give them a moment, then cancel the rest.
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=5)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)


class _Speculation:
    """A reply started before the turn is known to be over: the agent's text streams into a queue
    and the first sentence is synthesized into a buffer, but nothing is played, and the person's
    words are not stored, until :meth:`VoiceSession._answer` adopts it. :meth:`cancel` throws it
    all away (the agent's request is closed, the synthesis stopped).
    """

    def __init__(self, session: VoiceSession, turn: PendingTurn) -> None:
        self.turn = turn
        self.timing = TurnTiming(turn.user_id, speech_end=turn.ended_at, final_transcript=turn.final_at,
                                 speaker_name=turn.name, text=turn.text, speculative=True, voice_end=turn.voice_end)
        self.language, self.notice = session._choose_language(turn)
        self.reply = session.agent.reply(
            Incoming(room=session.room, speaker_id=session.speaker_id(turn.user_id), speaker_name=turn.name,
                     text=turn.text, modality=session.modality, language=self.language,
                     visible=session._visible(turn.user_id)),
            remember=False,
        )
        self.sentences: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.produce = loop.create_task(
            session._produce_sentences(self.reply, _reply_splitter(), self.sentences, self.timing),
            name=f"speculative-text-{session.room}",
        )
        self._first = loop.create_task(session._first_audio(self.sentences, self.timing, wait=True,
                                                            language=self.language),
                                       name=f"speculative-audio-{session.room}")

    async def first_audio(self) -> tuple[str, _Prefetch] | None:
        """The first sentence and its synthesis in progress (None: the reply had nothing to say)."""
        return await self._first

    async def cancel(self) -> None:
        for task in (self.produce, self._first):
            task.cancel()
        results = await asyncio.gather(self.produce, self._first, return_exceptions=True)
        first = results[1]
        if isinstance(first, tuple):
            first[1].cancel()
        with contextlib.suppress(Exception):
            await self.reply.aclose()


class _Prefetch:
    """Starts synthesizing a sentence at once and buffers its audio until playback takes it.

    Falls back to the local engine when the main one fails before any audio came out. When it
    fails part-way, ``heard`` is the start its audio covered (whole words, at the voice's pace)
    and ``unspoken`` the rest, for the caller to finish in the local voice.
    """

    def __init__(self, session: VoiceSession, text: str, timing: TurnTiming | None, *,
                 local_only: bool = False, language: str | None = None) -> None:
        self._session = session
        self._language = language or session.reply_language  # the reply's, fixed when synthesis starts
        self._text = text
        self._timing = timing
        self._local_only = local_only
        self.heard = ""
        self.unspoken = ""
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: the sentence's audio ended
        self._format: asyncio.Future[AudioFormat | None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tts-prefetch")
        # Owned by the session too: a cancelled synthesis may still be finishing on a worker thread.
        session._tasks.add(self._task)  # type: ignore[arg-type]
        self._task.add_done_callback(session._tasks.discard)  # type: ignore[arg-type]

    async def format(self) -> AudioFormat | None:
        return await asyncio.shield(self._format)

    def _set_format(self, fmt: AudioFormat | None) -> None:
        if not self._format.done():
            self._format.set_result(fmt)

    async def _run(self) -> None:
        session = self._session
        if self._timing is not None:  # whose reply this is, for the voice's usage (bot/usage); this task only
            current_person.set(session.speaker_id(self._timing.user_id))
        engines = [] if self._local_only else [session.tts]
        if session.fallback_tts is not None and session.fallback_tts is not session.tts:
            engines.append(session.fallback_tts)
        # A voice that cannot speak the reply's language (Piper's English voice) gives way.
        engines = [e for e in engines if speaks(e.name, self._language)] or engines
        try:
            for i, engine in enumerate(engines):
                started = False
                produced = 0  # bytes of audio
                voice = self._session.voice if engine is self._session.tts else None
                voice = voice_for_language(voice, engine.name, self._language, session.agent.character)
                try:
                    async with contextlib.aclosing(engine.synthesize(self._text, voice)) as chunks:
                        async for chunk in chunks:
                            if not chunk:
                                continue
                            produced += len(chunk)
                            if not started:
                                started = True
                                if self._timing is not None and self._timing.first_tts_audio is None:
                                    self._timing.first_tts_audio = self._session.clock()
                                self._set_format(engine.format)
                            self._queue.put_nowait(chunk)
                    rate = engine.format.bytes_per_second
                    if engine is session.tts and rate and produced:
                        session._tts_chars_per_second = len(self._text) * rate / produced
                    return  # done, or nothing speakable came out (the format stays None)
                except TTSError as exc:
                    log.warning("speech synthesis failed (%s): %s", engine.name, exc)
                    if started or i == len(engines) - 1:
                        # Mid-sentence failure: end this audio here; the caller finishes the words.
                        if started and engine is session.tts:
                            rate = engine.format.bytes_per_second
                            said = produced / rate * session._tts_chars_per_second if rate else 0.0
                            self.heard = spoken_prefix(self._text, said / max(1, len(self._text)))
                            self.unspoken = self._text[len(self.heard):].strip()
                        if not started:
                            self._set_format(None)
                            await self._session._tell(f"{exc.user_message} ({self._text})")
                        return
        finally:
            self._set_format(None)
            self._queue.put_nowait(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    def cancel(self) -> None:
        if not self._task.done():
            self._task.cancel()


def _same_words(a: str, b: str) -> bool:
    """Whether two transcripts say the same words (case and punctuation aside)."""
    def words(text: str) -> list[str]:
        return ["".join(ch for ch in w if ch.isalnum()) for w in text.lower().split()]

    return words(a) == words(b)


def _reply_splitter() -> SentenceSplitter:
    """Sentences for speech; a reply's first clause ("Sure, …") goes to synthesis on its own, so the
    first sound does not wait for the whole first sentence."""
    return SentenceSplitter(first_clause_chars=FIRST_CLAUSE_CHARS, min_clause_chars=MIN_CLAUSE_CHARS,
                            clause_at_end=True)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("voice session task %s failed", task.get_name(), exc_info=task.exception())
