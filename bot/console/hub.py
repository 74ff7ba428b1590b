"""The console's live state: what the bot is doing now, the last turns, and receive counters over time.

One :class:`Console` per web server. It reads the bot (the Discord voice manager when there is one,
the playground's sessions, the SMS table) and keeps two short histories: the last turns (wait by
stage) and the receive counters sampled once a second. The page gets all of it as one JSON
snapshot over server-sent events. Conversation content (what people and the bot said) appears
only with ``CONSOLE_SHOW_CONTENT=true``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.console.metrics import (
    LiveSource,
    Metrics,
    ReceiveSample,
    channel_of,
    meter_engine,
    meter_stt,
    meter_tts,
    sms_states_from,
)
from bot.memory import Modality
from bot.usage.report import UsageCollector, UsagePanel
from bot.shards import describe_shards

if TYPE_CHECKING:
    from bot.cluster.store import ProcessRow
    from audio.stt.base import STTEngine
    from audio.tts.base import TTSEngine
    from bot.console.playground import Playground
    from bot.services import Services
    from bot.voice.manager import VoiceManager
    from bot.voice.session import TurnTiming, VoiceSession

__all__ = ["Console", "TurnRecord"]

log = logging.getLogger(__name__)

HISTORY_TURNS = 50
HISTORY_SAMPLES = 120  # two minutes of receive counters at one sample a second
# The rooms whose turns the agent reports (the others' sessions report theirs, with timing).
TEXT_CHANNELS = {Modality.TEXT: "text", Modality.SMS: "sms"}


@dataclass
class TurnRecord:
    at: float  # unix time the turn ended
    channel: str
    outcome: str
    stages_ms: dict[str, float]
    wait_ms: float | None
    text: str = ""
    reply: str = ""

    def to_json(self, content: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"at": round(self.at, 3), "channel": self.channel, "outcome": self.outcome,
                               "stages_ms": self.stages_ms, "wait_ms": self.wait_ms}
        if content:
            out["text"], out["reply"] = self.text, self.reply
        return out


@dataclass
class _Engines:
    stt: STTEngine | None = None
    tts: TTSEngine | None = None
    fallback_tts: TTSEngine | None = None
    owned: list[Any] = field(default_factory=list)


class Console(LiveSource):
    """Live state for the console page and ``/metrics``. Start with :meth:`start`, end with :meth:`aclose`."""

    def __init__(
        self,
        services: Services,
        *,
        metrics: Metrics | None = None,
        voice: Callable[[], VoiceManager | None] = lambda: None,
        clock: Callable[[], float] = time.time,
        tick: float = 1.0,
        engines: tuple[STTEngine | None, TTSEngine | None, TTSEngine | None] | None = None,
    ) -> None:
        self.services = services
        self.settings = services.settings
        self.metrics = metrics or Metrics()
        self.metrics.attach_live(self, guild_labels=self.settings.metrics_guild_labels)
        self.metrics.listeners.append(self._on_metric_turn)
        self.voice = voice
        self.clock = clock
        self.tick = tick
        self.show_content = self.settings.console_show_content
        self.turns: collections.deque[TurnRecord] = collections.deque(maxlen=HISTORY_TURNS)
        self.receive_history: collections.deque[dict[str, float]] = collections.deque(maxlen=HISTORY_SAMPLES)
        self.playground: Playground | None = None
        self.changed = asyncio.Condition()  # notified when the snapshot changed (a turn, a tick)
        self.version = 0
        self._watched: set[int] = set()  # ids of sessions already hooked
        # The playground's engines: given (tests; not closed here), else built on first use.
        self._engines: _Engines | None = _Engines(*engines) if engines is not None else None
        self._engines_lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False
        self._sms_states: dict[str, int] = {}
        # Every process of the bot as the shared database knows it (bot/cluster), read once per
        # heartbeat; ``process_id`` marks this one.
        self.process_id: str | None = None
        self.cluster_rows: list[ProcessRow] = []
        self._cluster_read_at = float("-inf")
        self._cluster_ready = False
        self._cluster_failing = False
        # The agent's reply engine counts requests and errors from now on, its turn listeners the
        # text and SMS turns (voice-like rooms count in their sessions, see watch).
        agent = services.agent
        agent.engine = meter_engine(agent.engine, self.metrics)  # type: ignore[assignment]
        agent.turn_listeners.append(self._on_agent_turn)
        recall = getattr(services, "recall", None)
        if recall is not None:
            recall.listeners.append(self.metrics.recall_outcome)
        facts = getattr(services, "facts", None)
        if facts is not None:
            facts.listeners.append(self.metrics.learning_event)
        # Use and spend per day (bot/usage): the panel reads the store, /metrics the meter's counters.
        self.usage_panel: UsagePanel | None = None
        if services.usage is not None:
            self.usage_panel = UsagePanel(services.usage)
            self.metrics.registry.register(UsageCollector(services.usage))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick_loop(), name="console-ticker")

    async def aclose(self) -> None:
        self._closed = True
        with contextlib.suppress(ValueError):
            self.services.agent.turn_listeners.remove(self._on_agent_turn)
        recall = getattr(self.services, "recall", None)
        if recall is not None:
            with contextlib.suppress(ValueError):
                recall.listeners.remove(self.metrics.recall_outcome)
        facts = getattr(self.services, "facts", None)
        if facts is not None:
            with contextlib.suppress(ValueError):
                facts.listeners.remove(self.metrics.learning_event)
        if self.usage_panel is not None:
            self.usage_panel.close()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self.playground is not None:
            await self.playground.aclose()
        engines, self._engines = self._engines, None
        if engines is not None:
            for engine in engines.owned:
                try:
                    await engine.aclose()
                except Exception:
                    log.exception("closing a playground speech engine failed")
        async with self.changed:
            self.changed.notify_all()  # event streams notice the close and end

    async def _tick_loop(self) -> None:
        while not self._closed:  # besides the cancel aclose sends: a tick must not outlive its console
            try:
                self._watch_sessions()
                self._sample_receive()
                if self.usage_panel is not None:
                    await self.usage_panel.refresh()
            except Exception:
                log.exception("console tick failed")
            await self.refresh_sms_states()
            await self.read_cluster()
            await self._bump()
            await asyncio.sleep(self.tick)

    async def _bump(self) -> None:
        self.version += 1
        async with self.changed:
            self.changed.notify_all()

    async def read_cluster(self, *, force: bool = False) -> None:
        """The cluster's processes from the database, at most once per heartbeat (``force``: now)."""
        store = self.services.store
        now = time.monotonic()
        if store is None or (not force and now - self._cluster_read_at < self.settings.cluster_heartbeat):
            return
        self._cluster_read_at = now
        from bot.cluster.store import ClusterStore

        cluster = ClusterStore(store, heartbeat=self.settings.cluster_heartbeat,
                               down_after=self.settings.cluster_down_after)
        try:
            if not self._cluster_ready:
                await cluster.migrate()
                self._cluster_ready = True
            self.cluster_rows = await cluster.processes()
            self._cluster_failing = False
        except Exception as exc:  # the database is away: the panel keeps its last rows and says so
            if not self._cluster_failing:
                log.warning("console: cannot read the cluster from the database: %s", exc)
            self._cluster_failing = True

    def cluster_snapshot(self) -> dict[str, Any]:
        rows = [{
            "name": r.name, "host": r.host, "pid": r.pid, "shards": describe_shards(r.shard_ids) or "–",
            "shard_count": r.shard_count, "guilds": r.guilds, "voice": r.voice_sessions, "version": r.version,
            "state": r.state, "beat_age": round(r.beat_age, 1), "this": r.process_id == self.process_id,
        } for r in self.cluster_rows]
        return {"processes": rows, "down": sum(1 for r in self.cluster_rows if r.state == "down"),
                "stale": self._cluster_failing}

    # ------------------------------------------------------------------ sessions

    def watch(self, session: VoiceSession) -> None:
        """Hook a voice session's turn outcomes and meter its engines (idempotent). Each turn's
        timing says when the person last spoke and when the turn was declared over."""
        if id(session) in self._watched:
            return
        self._watched.add(id(session))
        channel = channel_of(session.room)
        session.stt = meter_stt(session.stt, self.metrics)
        same = session.fallback_tts is session.tts  # the session compares them by identity
        tts = meter_tts(session.tts, self.metrics)
        if tts is not None:
            session.tts = tts
        session.fallback_tts = session.tts if same else meter_tts(session.fallback_tts, self.metrics)

        def on_outcome(outcome: str, timing: TurnTiming | None) -> None:
            self.metrics.turn(channel, outcome, timing)

        session.on_outcome = on_outcome

    def _watch_sessions(self) -> None:
        manager = self.voice()
        if manager is None:
            return
        live: set[int] = set()
        for gv in manager.connections():
            live.add(id(gv.session))
            self.watch(gv.session)
        if self.playground is not None:
            live |= {id(s) for s in self.playground.sessions()}
        self._watched &= live  # forget closed sessions (ids may be reused)

    def _on_agent_turn(self, modality: Modality, outcome: str, wait: float | None) -> None:
        channel = TEXT_CHANNELS.get(modality)
        if channel is not None:
            self.metrics.turn(channel, outcome, wait=wait)

    def _on_metric_turn(self, channel: str, outcome: str, timing: TurnTiming | None,
                        stages: dict[str, float], wait: float | None) -> None:
        record = TurnRecord(at=self.clock(), channel=channel, outcome=outcome,
                            stages_ms={k: round(v * 1000, 1) for k, v in stages.items()},
                            wait_ms=None if wait is None else round(wait * 1000, 1),
                            text=timing.text if timing is not None else "",
                            reply=timing.reply if timing is not None else "")
        self.turns.append(record)
        self.version += 1
        with contextlib.suppress(RuntimeError):  # no running loop: a synchronous caller (tests)
            asyncio.get_running_loop().create_task(self._bump(), name="console-bump")

    # ------------------------------------------------------------------ playground engines

    async def playground_engines(self) -> tuple[STTEngine | None, TTSEngine | None, TTSEngine | None]:
        """The engines the playground talks with: the voice manager's when the bot runs, else its own."""
        async with self._engines_lock:
            if self._engines is None:
                self._engines = await asyncio.get_running_loop().run_in_executor(None, self._build_engines)
            e = self._engines
            return e.stt, e.tts, e.fallback_tts

    def _build_engines(self) -> _Engines:
        manager = self.voice()
        if manager is not None:
            return _Engines(stt=manager.stt, tts=manager.tts, fallback_tts=manager.local_tts)
        from bot.providers import build_local_tts, build_stt, build_tts

        settings = self.settings
        stt = build_stt(settings, keyterms=(self.services.agent.character.name,))
        tts = build_tts(settings)
        local: TTSEngine | None = None
        if settings.tts_engine != "none":
            local = tts if tts is not None and tts.name in ("espeak", "piper") else build_local_tts(settings)
        owned = [e for e in dict.fromkeys((stt, tts, local)) if e is not None]
        return _Engines(stt=stt, tts=tts or local, fallback_tts=local, owned=owned)

    # ------------------------------------------------------------------ LiveSource (for /metrics)

    def receive_samples(self) -> list[ReceiveSample]:
        manager = self.voice()
        if manager is None:
            return []
        out = []
        for gv in manager.connections():
            stats = gv.vc.stats
            out.append(ReceiveSample(key=gv.vc, guild_id=gv.guild_id, delivered=stats.delivered, lost=stats.lost,
                                     dropped=dict(stats.dropped)))
        return out

    def voice_connections(self) -> dict[int, int]:
        manager = self.voice()
        if manager is None:
            return {}
        return {gv.guild_id: 1 if gv.vc.is_connected() else 0 for gv in manager.connections()}

    def active_speakers(self) -> dict[int | str, int]:
        out: dict[int | str, int] = {}
        manager = self.voice()
        if manager is not None:
            for gv in manager.connections():
                out[gv.guild_id] = sum(1 for p in gv.session.participants.values() if p.speaking)
        if self.playground is not None:
            out["playground"] = sum(1 for s in self.playground.sessions()
                                    for p in s.participants.values() if p.speaking)
        return out

    def sms_states(self) -> dict[str, int]:
        """SMS messages by state as last read (the tick reads them: a metrics scrape never waits on the database)."""
        return self._sms_states

    async def refresh_sms_states(self) -> None:
        try:
            async with asyncio.timeout(self.tick):
                self._sms_states = await sms_states_from(self.services.store)
        except Exception as exc:  # the database is away: the last counts stay, the storage state says why
            log.debug("reading SMS states failed: %s", exc)

    def _sample_receive(self) -> None:
        live = self.metrics.live
        samples = live.observe_receive() if live is not None else []
        totals = {"delivered": 0.0, "lost": 0.0, "rejected": 0.0}
        if live is not None:
            for (_, name), n in live._retired.items():
                if name.startswith("result:"):
                    totals[name[7:]] += n
        for s in samples:
            totals["delivered"] += s.delivered
            totals["lost"] += s.lost
            totals["rejected"] += s.rejected
        self.receive_history.append({"t": round(self.clock(), 3), **totals})

    # ------------------------------------------------------------------ the snapshot

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data (no conversation content unless enabled)."""
        agent = self.services.agent
        settings = self.settings
        from bot.providers import stt_choice, tts_choice

        guilds: list[dict[str, Any]] = []
        manager = self.voice()
        if manager is not None:
            for gv in manager.connections():
                speaking = sum(1 for p in gv.session.participants.values() if p.speaking)
                entry: dict[str, Any] = {
                    "guild": str(gv.guild_id), "channel": gv.channel.name, "connected": gv.vc.is_connected(),
                    "speaking": speaking, "present": len(gv.session.participants),
                }
                mirror = manager.guild_settings.get(gv.guild_id).mirror_transcripts
                if mirror:  # that guild already shows who says what in its own chat
                    entry["speaking_names"] = [p.name for p in gv.session.participants.values() if p.speaking]
                guilds.append(entry)
        errors = {key: {"at": round(at, 3), "message": msg} for key, (at, msg) in self.metrics.last_errors.items()}
        sms = self.sms_states()
        engines = {"agent": agent.engine_name, "stt": stt_choice(settings) or "off", "tts": tts_choice(settings) or "off"}
        requests = {f"{s.labels['kind']}/{s.labels['provider']}": s.value
                    for m in self.metrics.requests.collect() for s in m.samples if s.name.endswith("_total")}
        failures = {f"{s.labels['kind']}/{s.labels['provider']}": s.value
                    for m in self.metrics.errors.collect() for s in m.samples if s.name.endswith("_total")}
        return {
            "version": self.version,
            "bot": agent.character.name,
            "discord": manager is not None,
            "engines": engines,
            "providers": {k: {"requests": v, "errors": failures.get(k, 0.0),
                              "last_error": errors.get(k)} for k, v in requests.items()},
            "guilds": guilds,
            "sms": {"waiting": sms.get("received", 0) + sms.get("accepted", 0), "failed": sms.get("failed", 0),
                    "states": sms},
            "playground": self.playground.count() if self.playground is not None else 0,
            # Turns waiting for the database, dropped over the bound, and how long it has been away.
            "storage": self.services.memory.queue_state(),
            "turns": [t.to_json(self.show_content) for t in self.turns],
            "receive": list(self.receive_history),
            "show_content": self.show_content,
            "usage": self.usage_panel.data if self.usage_panel is not None else None,
            "cluster": self.cluster_snapshot(),
        }
