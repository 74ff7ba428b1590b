"""Prometheus metrics: the families the README documents, in a registry of their own.

Two kinds of source:

- events, counted when they happen: a voice turn's outcome and its wait by stage (from the
  :class:`VoiceSession`'s ``on_outcome`` hook and its :class:`TurnTiming`), a text or SMS turn
  (the agent's turn listeners: answered, failed, or ignored by its channel), provider requests and
  errors (the speech and reply engines, wrapped by :func:`meter_stt`, :func:`meter_tts`,
  :func:`meter_engine`);
- state read at scrape time by :class:`LiveCollector`: voice connections, people speaking, the
  receive counters each connection already keeps, and SMS messages by state from the database.

Nothing here is global: a :class:`Metrics` owns its ``CollectorRegistry`` and is passed to whoever
reports, so tests (and two servers in one process) never see each other's counts. Labels carry
no secrets and no conversation content; guild ids only with ``METRICS_GUILD_LABELS=true``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from audio.stt.base import STTEngine, STTError, STTStream, Transcript
from audio.tts.base import TTSEngine, TTSError, VoiceInfo, VoiceSpec
from bot.logs import scrub

if TYPE_CHECKING:
    from bot.agent.engines.base import Conversation, ReplyEngine
    from bot.voice.session import TurnTiming

__all__ = [
    "CHANNELS",
    "CONTENT_TYPE",
    "OUTCOMES",
    "STAGES",
    "LiveCollector",
    "LiveSource",
    "Metrics",
    "ReceiveSample",
    "channel_of",
    "meter_engine",
    "meter_stt",
    "meter_tts",
    "stage_seconds",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
CHANNELS = ("voice", "text", "sms", "call", "playground")
OUTCOMES = ("answered", "interrupted", "failed", "ignored")
STAGES = ("end_of_turn", "stt_final", "agent_first_text", "tts_first_audio", "first_packet")
# A person notices a wait from about 200 ms; past 5 s something is wrong.
WAIT_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)


def channel_of(room: str) -> str:
    """The ``channel`` label for a memory room (rooms name their transport by prefix)."""
    if room == "playground" or room.startswith("playground:"):
        return "playground"
    if room.startswith("discord:"):
        return "voice"
    if room.startswith("sms:"):
        return "sms"
    return "call"


def wait_start(timing: TurnTiming) -> float:
    """The person's last speech, which their wait runs from."""
    return timing.speech_end if timing.voice_end is None else timing.voice_end


def stage_seconds(timing: TurnTiming) -> dict[str, float]:
    """A spoken turn's wait split by stage (only the stages that happened), adding up to the wait.

    The wait, from the person's last speech to the reply's first audio, is walked in the order things
    happen, and each stage gets the time it held the person up: ``end_of_turn`` is the pause being
    noticed plus any wait after the final transcript until the turn was declared over (the smart
    rule's hold, 100-250 ms by default; the fixed rule's 600 ms gap); work done before the turn was
    over (a speculative reply) holds nobody up and counts zero.
    """
    order = (
        ("end_of_turn", timing.speech_end),
        ("stt_final", timing.final_transcript),
        ("end_of_turn", timing.turn_end),
        ("agent_first_text", timing.first_text),
        ("tts_first_audio", timing.first_tts_audio),
        ("first_packet", timing.first_frame),
    )
    spans: dict[str, float] = {}
    reached = wait_start(timing)
    for stage, at in order:
        if at is None:
            continue
        spans[stage] = spans.get(stage, 0.0) + max(0.0, at - reached)
        reached = max(reached, at)
    return spans


@dataclass(frozen=True)
class ReceiveSample:
    """One voice connection's receive counters, as :class:`audio.receive.ReceiveStats` keeps them."""

    key: object  # identifies the connection across scrapes (the stats owner)
    guild_id: int
    delivered: int
    lost: int
    dropped: dict[str, int]

    @property
    def rejected(self) -> int:
        """Dropped on purpose (filtered: not audio, our own packets, opted-out people, duplicates)."""
        return max(0, sum(self.dropped.values()) - self.lost)


class LiveSource:
    """What the live collector reads at scrape time; the console implements it over the bot."""

    def receive_samples(self) -> list[ReceiveSample]:
        return []

    def voice_connections(self) -> dict[int, int]:
        """guild id -> connections (0 or 1 each)."""
        return {}

    def active_speakers(self) -> dict[int | str, int]:
        """guild id (or ``"playground"``) -> people speaking now."""
        return {}

    def sms_states(self) -> dict[str, int]:
        return {}


class LiveCollector:
    """Scrape-time families over a :class:`LiveSource`.

    Receive counters live on each connection and vanish with it; the last values seen of a
    connection that went away are kept in ``_retired`` so the totals stay monotonic (a counter that
    drops reads as a restart to Prometheus). Counts between the last look and the leave are lost;
    the console looks every second.
    """

    def __init__(self, source: LiveSource, *, guild_labels: bool = False) -> None:
        self.source = source
        self.guild_labels = guild_labels
        self._last: dict[object, ReceiveSample] = {}
        self._retired: dict[tuple[str, str], int] = {}  # (guild or "", "result:x"/"reason:y") -> count

    def describe(self) -> Iterable[Metric]:
        return []  # families are built at collect time; names are fixed and documented

    def _guild(self, guild_id: int | str) -> str:
        return str(guild_id) if self.guild_labels else ""

    def observe_receive(self) -> list[ReceiveSample]:
        """Read the connections' counters, retiring connections that went away; returns the live ones."""
        samples = self.source.receive_samples()
        live = {s.key: s for s in samples}
        for key, old in list(self._last.items()):
            if key not in live:
                for name, n in _receive_counts(old):
                    k = (self._guild(old.guild_id), name)
                    self._retired[k] = self._retired.get(k, 0) + n
                del self._last[key]
        self._last.update(live)
        return samples

    def collect(self) -> Iterator[Metric]:
        labels = ["guild"] if self.guild_labels else []
        try:
            samples = self.observe_receive()
        except Exception:  # a scrape never fails because one source did
            log.exception("reading receive counters failed")
            samples = []
        totals: dict[tuple[str, str], int] = dict(self._retired)
        for s in samples:
            for name, n in _receive_counts(s):
                k = (self._guild(s.guild_id), name)
                totals[k] = totals.get(k, 0) + n
        packets = CounterMetricFamily("voicebot_receive_packets", "Received voice packets by result "
                                      "(delivered to the decoder, lost, or rejected by a filter).",
                                      labels=labels + ["result"])
        drops = CounterMetricFamily("voicebot_receive_drops", "Received voice packets dropped, by reason.",
                                    labels=labels + ["reason"])
        for result in ("delivered", "lost", "rejected"):
            guilds = {g for g, _ in totals} or {""}
            for g in sorted(guilds):
                packets.add_metric(([g] if labels else []) + [result], totals.get((g, f"result:{result}"), 0))
        for (g, name), n in sorted(totals.items()):
            if name.startswith("reason:"):
                drops.add_metric(([g] if labels else []) + [name[7:]], n)
        yield packets
        yield drops

        connections = GaugeMetricFamily("voicebot_voice_connections", "Voice channels the bot is in.",
                                        labels=labels)
        speakers = GaugeMetricFamily("voicebot_active_speakers", "People speaking now (voice and playground).",
                                     labels=labels)
        try:
            conns = self.source.voice_connections()
            active = self.source.active_speakers()
        except Exception:
            log.exception("reading voice state failed")
            conns, active = {}, {}
        if labels:
            for gid, n in sorted(conns.items()):
                connections.add_metric([str(gid)], n)
            for gid, n in sorted(active.items(), key=lambda kv: str(kv[0])):
                speakers.add_metric([str(gid)], n)
        else:
            connections.add_metric([], sum(conns.values()))
            speakers.add_metric([], sum(active.values()))
        yield connections
        yield speakers

        # A gauge, though its name ends in _total (the README's interface): messages move between
        # states (received -> accepted -> answered), and the store keeps a week of them.
        sms = GaugeMetricFamily("voicebot_sms_messages_total", "SMS messages in the store, by state.",
                                labels=["state"])
        try:
            states = self.source.sms_states()
        except Exception:
            log.exception("reading SMS states failed")
            states = {}
        for state, n in sorted(states.items()):
            sms.add_metric([state], n)
        yield sms


def _receive_counts(s: ReceiveSample) -> Iterator[tuple[str, int]]:
    yield "result:delivered", s.delivered
    yield "result:lost", s.lost
    yield "result:rejected", s.rejected
    for reason, n in s.dropped.items():
        yield f"reason:{reason}", n


async def sms_states_from(db: Any) -> dict[str, int]:
    """SMS messages by state, read from the store's table (empty when SMS never ran)."""
    if "sms_messages" not in await db.tables():  # the SMS store never migrated this database
        return {}
    rows = await db.query("SELECT state, COUNT(*) AS n FROM sms_messages GROUP BY state")
    out: dict[str, int] = {}
    for row in rows:
        # "keyword:STOP" -> "keyword": the label set stays small and says nothing of the message.
        state = str(row["state"]).split(":", 1)[0]
        out[state] = out.get(state, 0) + int(row["n"])
    return out


class _Labelled:
    """A registry's families with ``labels`` added to every sample (what ``generate_latest`` reads)."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]) -> None:
        self.registry = registry
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            copy = Metric(family.name, family.documentation, family.type, family.unit)
            copy.samples = [s._replace(labels={**s.labels, **self.labels}) for s in family.samples]
            yield copy


class Metrics:
    """The registry and the event families; pass one instance to everything that reports."""

    def __init__(self, *, registry: CollectorRegistry | None = None, process: bool = True,
                 process_label: str | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # PROCESS_NAME (or host:pid): every sample /metrics shows carries process="...", so one
        # Prometheus scraping every process of a cluster tells them apart (added at exposition, so
        # the registry's own label sets stay as they are).
        self.process_label = process_label
        r = self.registry
        self.turns = Counter("voicebot_turns", "Turns people took, by channel and how they ended.",
                             ["channel", "outcome"], registry=r)
        self.wait = Histogram("voicebot_wait_seconds", "End of a person's speech to the first reply audio "
                              "(text channels: message received to the first reply text).", ["channel"],
                              buckets=WAIT_BUCKETS, registry=r)
        self.stage = Histogram("voicebot_stage_seconds", "A voice turn's wait, split by stage.", ["stage"],
                               buckets=STAGE_BUCKETS, registry=r)
        self.requests = Counter("voicebot_provider_requests", "Requests to speech and reply providers.",
                                ["provider", "kind"], registry=r)
        self.errors = Counter("voicebot_provider_errors", "Failed requests to speech and reply providers.",
                              ["provider", "kind"], registry=r)
        self.recall = Counter("voicebot_recall", "Memory recalls before a reply, by outcome: found, none, "
                              "over_budget (the reply went on without memories), failed.", ["outcome"], registry=r)
        for outcome in ("found", "none", "over_budget", "failed"):
            self.recall.labels(outcome)
        self.learning = Counter("voicebot_facts_requests", "Background learning requests (facts and summaries), "
                                "by outcome: sent, over_budget (not sent: the hour's budget is spent), failed.",
                                ["outcome"], registry=r)
        for outcome in ("sent", "over_budget", "failed"):
            self.learning.labels(outcome)
        self.learning_tokens = Counter("voicebot_facts_tokens", "Tokens spent on background learning.", registry=r)
        for channel in CHANNELS:  # every series exists from the start, so rates work from the first scrape
            for outcome in OUTCOMES:
                self.turns.labels(channel, outcome)
        for stage in STAGES:
            self.stage.labels(stage)
        if process:
            ProcessCollector(registry=r)
        self.live: LiveCollector | None = None
        self.last_errors: dict[str, tuple[float, str]] = {}  # "kind/provider" -> (unix time, message)
        # Told of every turn counted: (channel, outcome, timing, wait by stage, wait in seconds).
        self.listeners: list[Callable[[str, str, TurnTiming | None, dict[str, float], float | None], None]] = []

    def attach_live(self, source: LiveSource, *, guild_labels: bool = False) -> LiveCollector:
        self.live = LiveCollector(source, guild_labels=guild_labels)
        self.registry.register(self.live)
        return self.live

    def render(self) -> bytes:
        if self.process_label is None:
            return generate_latest(self.registry)
        return generate_latest(_Labelled(self.registry, {"process": self.process_label}))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ events

    def learning_event(self, outcome: str, tokens: int) -> None:
        """One background learning request (bot.facts.FactsService.listeners)."""
        self.learning.labels(outcome).inc()
        if tokens:
            self.learning_tokens.inc(tokens)

    def recall_outcome(self, outcome: str, seconds: float) -> None:
        """One recall before a reply (bot.recall.Recall.listeners)."""
        self.recall.labels(outcome).inc()

    def turn(self, channel: str, outcome: str, timing: TurnTiming | None = None, *, wait: float | None = None) -> None:
        """One turn ended. Voice turns pass their timing (stages); text turns pass ``wait``.

        A turn typed into a voice session (the playground's text box) is a text turn: its wait is
        the message's arrival to the reply's first text, and it has no stages.
        """
        stages: dict[str, float] = {}
        if timing is not None and timing.typed:
            channel = "text"
            if outcome in ("answered", "interrupted") and timing.first_text is not None:
                wait = max(0.0, timing.first_text - timing.speech_end)
        elif timing is not None and outcome in ("answered", "interrupted"):
            if timing.first_frame is not None:
                stages = stage_seconds(timing)
                wait = max(0.0, timing.first_frame - wait_start(timing))
                for stage, seconds in stages.items():
                    self.stage.labels(stage).observe(seconds)
        self.turns.labels(channel, outcome).inc()
        if wait is not None:
            self.wait.labels(channel).observe(wait)
        for listener in list(self.listeners):
            try:
                listener(channel, outcome, timing, stages, wait)
            except Exception:
                log.exception("turn listener failed")

    def request(self, provider: str, kind: str) -> None:
        self.requests.labels(provider, kind).inc()

    def error(self, provider: str, kind: str, message: str) -> None:
        self.errors.labels(provider, kind).inc()
        # The console shows it: through the redactor, as a log line would be (an engine's error
        # text may quote a provider's answer, key pieces and all), and without people's numbers.
        self.last_errors[f"{kind}/{provider}"] = (time.time(), scrub(message)[:300])


# ---------------------------------------------------------------------------------------------
# Engine wrappers: count requests and errors, delegate everything else


class _MeteredSTTStream(STTStream):
    def __init__(self, inner: STTStream, metrics: Metrics, provider: str) -> None:
        self._inner = inner
        self._metrics = metrics
        self._provider = provider
        self.sample_rate = getattr(inner, "sample_rate", 16000)
        self.speaker = getattr(inner, "speaker", "")

    def push(self, pcm: bytes) -> None:
        self._inner.push(pcm)

    async def finalize(self) -> None:
        await self._inner.finalize()

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aiter__(self) -> AsyncIterator[Transcript]:  # type: ignore[override]
        try:
            async for transcript in self._inner:
                yield transcript
        except STTError as exc:
            self._metrics.error(self._provider, "stt", str(exc))
            raise


class _MeteredSTT(STTEngine):
    def __init__(self, inner: STTEngine, metrics: Metrics) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self._metrics = metrics

    def open_stream(self, *, speaker: str, sample_rate: int = 16000, **options: str) -> STTStream:
        # ``options``: what an engine takes per stream (Deepgram: a guild's language, a call's encoding).
        self._metrics.request(self.name, "stt")
        try:
            stream = self.inner.open_stream(speaker=speaker, sample_rate=sample_rate, **options)
        except STTError as exc:
            self._metrics.error(self.name, "stt", str(exc))
            raise
        return _MeteredSTTStream(stream, self._metrics, self.name)

    async def check(self) -> str:
        return await self.inner.check()

    async def aclose(self) -> None:
        return None  # the wrapped engine belongs to whoever built it


class _MeteredTTS(TTSEngine):
    def __init__(self, inner: TTSEngine, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self.format = inner.format
        self._metrics = metrics

    async def synthesize(self, text: str, voice: VoiceSpec | None = None) -> AsyncIterator[bytes]:  # type: ignore[override]
        self._metrics.request(self.name, "tts")
        try:
            async for chunk in self.inner.synthesize(text, voice):
                yield chunk
        except TTSError as exc:
            self._metrics.error(self.name, "tts", str(exc))
            raise

    async def list_voices(self) -> list[VoiceInfo]:
        return await self.inner.list_voices()

    async def check(self) -> str:
        return await self.inner.check()

    async def aclose(self) -> None:
        return None


class _MeteredEngine:
    """A reply engine that counts requests and errors (every request: people's turns and the
    agent's own work, such as a call's summary). Turns are counted where they are decided: the
    agent's turn listeners (text, SMS) and the voice sessions (voice, call, playground)."""

    def __init__(self, inner: ReplyEngine, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self._metrics = metrics

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    async def stream(self, conversation: Conversation) -> AsyncIterator[str]:
        from bot.agent.engines.base import AgentError

        self._metrics.request(self.name, "agent")
        try:
            async for delta in self.inner.stream(conversation):
                yield delta
        except AgentError as exc:
            self._metrics.error(self.name, "agent", str(exc))
            raise
        except Exception as exc:  # a crashing engine is an error of this provider too
            self._metrics.error(self.name, "agent", type(exc).__name__)
            raise

    async def check(self) -> str:
        return await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()


# Wrapping twice for the same Metrics is a no-op; for another Metrics the new one takes over.


def meter_stt(engine: STTEngine | None, metrics: Metrics) -> STTEngine | None:
    if isinstance(engine, _MeteredSTT):
        if engine._metrics is metrics:
            return engine
        engine = engine.inner
    return None if engine is None else _MeteredSTT(engine, metrics)


def meter_tts(engine: TTSEngine | None, metrics: Metrics) -> TTSEngine | None:
    if isinstance(engine, _MeteredTTS):
        if engine._metrics is metrics:
            return engine
        engine = engine.inner
    return None if engine is None else _MeteredTTS(engine, metrics)


def meter_engine(engine: ReplyEngine, metrics: Metrics) -> ReplyEngine:
    """Wrap an agent's reply engine (``agent.engine = meter_engine(agent.engine, metrics)``)."""
    if isinstance(engine, _MeteredEngine):
        if engine._metrics is metrics:
            return engine  # type: ignore[return-value]
        engine = engine.inner
    return _MeteredEngine(engine, metrics)  # type: ignore[return-value]
