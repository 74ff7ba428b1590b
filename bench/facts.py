"""Benchmark: what background learning costs, and that it adds nothing to the voice wait.

Two measurements in one run, each against a baseline measured in the same run:

``cost``: an hour of talk in a busy server (``--rooms`` rooms, a person's turn and the agent's reply every
``--every`` seconds in each, five speakers), learnt by the real facts service with the real OpenAI client
against the loopback OpenAI server, whose scripted model answers every extraction request (one fact per
line of a person). Time is virtual: the service's clock is set to each turn's time, and each room is read
when its quiet-period rule (``FACTS_DEBOUNCE_SECONDS`` after the last reply, at most ``max_delay`` after
the first) would fire, by calling the same ``extract_room`` the scheduler calls; the rooms' last unread
turns are read just after the hour (``spent_after_it``, the next hour's budget). Reported: tokens spent
(the server's usage counts), requests, facts kept and the most kept for one person, with the hourly budget
(``FACTS_TOKENS_PER_HOUR``) and the bound per person (``FACTS_PER_PERSON``), with the bound alone, and
with neither (the baseline: the same talk, budget 10^9, no bound).

``voice``: bench.latency's ``cloud`` configuration (the whole bot on the loopback Discord, Deepgram,
OpenAI-compatible and ElevenLabs fakes timed like the services) with facts off (the baseline), with facts
on as configured by default (30 s quiet period: during talk only the speaker's facts are read into each
prompt), and the worst case for the wait: no quiet period, so an extraction request is sent right after
every reply while the person speaks the next utterance. Each variant runs twice, interleaved. Reported:
each variant's wait p50/p95, the providers' floor, the stages' p50s and the difference of the p50s.

What it leaves out: the cost of a real model's answers (the scripted model writes one short fact per
line; a real one writes fewer and longer), the tokenizer (usage is counted at four characters a token by
the fake server), and voice waits on a quieter machine (the host is shared: compare the two runs, not
the absolute figures).

Usage: python -m bench.facts [--json] [--parts cost,voice] [--rooms N] [--every S] [--utterances N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "measure_cost", "measure_voice"]

HOUR = 3600.0
SPEAKERS = ("Maya", "Ben", "Ines", "Tomas", "Yuki")
LINES = (
    "I like {thing}", "my sister is getting married in {place} in June", "I moved to {place}",
    "I work as a {job}", "we should meet on Saturday", "I have a dog named {name}", "haha yes",
)
THINGS = ("tea", "chess", "jazz", "kites", "rain", "trains", "figs", "sailing")
PLACES = ("Lisbon", "Porto", "Berlin", "Kyoto", "Lima", "Oslo")
JOBS = ("nurse", "baker", "pilot", "teacher")
NAMES = ("Rex", "Pixel", "Bolt", "Miso")


def _line(i: int) -> str:
    template = LINES[i % len(LINES)]
    return template.format(thing=THINGS[i % len(THINGS)], place=PLACES[i % len(PLACES)], job=JOBS[i % len(JOBS)],
                           name=NAMES[i % len(NAMES)])


def _rules() -> list[Any]:
    from tests.fakes.fact_model import FactRule

    return [FactRule(r"I like (\w+)", "{name} likes {1}"),
            FactRule(r"my sister is getting married in (\w+) in (\w+)",
                     "{name}'s sister is getting married in {1} in {2}", "sister's wedding"),
            FactRule(r"I moved to (\w+)", "{name} lives in {1}", "home city"),
            FactRule(r"I work as a (\w+)", "{name} works as a {1}", "job"),
            FactRule(r"I have a dog named (\w+)", "{name} has a dog named {1}")]


async def _one_hour(label: str, budget: int, *, rooms: int, every: float, debounce: float, max_delay: float,
                    per_person: int, workdir: Path) -> dict[str, Any]:
    from bot.agent.engines.openai_engine import OpenAIEngine
    from bot.store import SqliteDatabase as Database
    from bot.facts.service import FactsConfig, FactsService, MemoryTurns
    from bot.facts.store import FactStore
    from bot.memory import Memory, Modality, Turn
    from bot.store import SqliteDatabase
    from tests.fakes.fact_model import ScriptedFactModel
    from tests.fakes.openai_server import FakeOpenAI

    model = ScriptedFactModel(_rules())
    usage: list[int] = []

    def answer(body: dict[str, Any]) -> str:
        text = model(body)
        usage.append(sum(len(m["content"]) for m in body["messages"]) // 4 + 1 + len(text) // 4 + 1)
        return text

    db = Database(workdir / f"{label}.sqlite3")  # a database of its own per run
    store = SqliteDatabase(workdir / f"{label}.sqlite3")
    async with FakeOpenAI(responder=answer) as fake:
        llm = OpenAIEngine(api_key=fake.api_key, base_url=fake.base_url, model="gpt-test", temperature=0.0)
        memory = (await Memory.open(db))
        config = FactsConfig(debounce=debounce, max_delay=max_delay, per_person=per_person, tokens_per_hour=budget)
        clock = [float(1_780_000_000 // 3600 * 3600)]  # the hour of talk is one clock hour
        service = FactsService(FactStore(store), llm, MemoryTurns(memory), config, agent_name="Wren",
                               clock=lambda: clock[0])
        await service.start()
        start = clock[0]
        pending: dict[str, tuple[float, float]] = {}  # room -> (first reply, last reply) not yet read
        turns = 0
        events = sorted((start + r * every / rooms + k * every, r, k) for r in range(rooms)
                        for k in range(int(HOUR / every)))
        for when, r, k in events:
            room = f"discord:1:{100 + r}"
            for other, (first, last) in list(pending.items()):
                if when - last >= debounce or when - first >= max_delay:
                    clock[0] = last + debounce if when - last >= debounce else first + max_delay
                    await service.extract_room(other)
                    del pending[other]
            clock[0] = when
            speaker = (r + k) % len(SPEAKERS)
            memory.append(Turn(room, f"discord:{1000 + speaker}", SPEAKERS[speaker], "user", _line(k + r), Modality.VOICE,
                               when))
            memory.append(Turn(room, "agent", "Wren", "assistant", "Oh, tell me more.", Modality.VOICE, when + 1))
            turns += 1
            first, _ = pending.get(room, (when, when))
            pending[room] = (first, when)
        for other, (first, last) in pending.items():
            clock[0] = min(last + debounce, first + max_delay)
            await service.extract_room(other)
        per = [len((await service.about(f"discord:{1000 + i}"))[0]) for i in range(len(SPEAKERS))]
        spent, calls = await service.store.spent(int(start // 3600))
        spent_next, _ = await service.store.spent(int(start // 3600) + 1)
        stats = service.stats
        await service.aclose()
    await store.close()
    await db.close()
    return {"turns": turns, "requests": stats.requests, "tokens": sum(usage), "tokens_per_turn":
            round(sum(usage) / turns, 1), "spent_in_the_hour": spent, "spent_after_it": spent_next,
            "over_budget": stats.over_budget, "facts_kept": sum(per), "most_for_one_person": max(per),
            "dropped": stats.dropped}


async def measure_cost(*, rooms: int, every: float, budget: int, per_person: int, debounce: float,
                       max_delay: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-facts-") as tmp:
        bounded = await _one_hour("bounded", budget, rooms=rooms, every=every, debounce=debounce, max_delay=max_delay,
                                  per_person=per_person, workdir=Path(tmp))
        bound_only = await _one_hour("bound-only", 10**9, rooms=rooms, every=every, debounce=debounce, max_delay=max_delay,
                                     per_person=per_person, workdir=Path(tmp))
        unbounded = await _one_hour("unbounded", 10**9, rooms=rooms, every=every, debounce=debounce, max_delay=max_delay,
                                    per_person=10**6, workdir=Path(tmp))
    return {"rooms": rooms, "turn_every_s": every, "debounce_s": debounce, "max_delay_s": max_delay,
            "budget_tokens_per_hour": budget, "per_person_bound": per_person,
            "bounded": bounded, "per_person_bound_only": bound_only, "baseline_unbounded": unbounded,
            "within_budget": bounded["spent_in_the_hour"] <= budget}


async def measure_voice(utterances: int) -> dict[str, Any]:
    from bench import latency
    from tests.fakes.fact_model import FactRule, ScriptedFactModel

    cfg = latency.BenchConfig(configs=("cloud",), utterances=latency.UTTERANCES[:utterances], overrides={})
    loop = asyncio.get_running_loop()
    speech = await loop.run_in_executor(None, latency.prepare_speech, cfg.utterances)
    warm = (await loop.run_in_executor(None, latency.prepare_speech, [latency.WARMUP]))[0]
    model = ScriptedFactModel([FactRule(r"^(.{8,100}?)[.?!]?$", "{name} said: {1}")])
    variants = {
        "facts_off": {"memory_facts": False},
        # The defaults: learning waits for 30 s of quiet, so during talk only the prompt's read of facts runs.
        "facts_on": {"memory_facts": True},
        # The worst case: an extraction request right after every reply, while the next utterance is spoken.
        "facts_on_no_quiet_period": {"memory_facts": True, "facts_debounce_seconds": 0.0},
    }
    runs: dict[str, list[Any]] = {name: [] for name in variants}
    requests: dict[str, int] = {name: 0 for name in variants}
    logging.getLogger("bot.loopback").setLevel(logging.ERROR)
    with latency.Providers() as providers:
        providers.openai.responder = model
        # Each variant twice, interleaved, so a change in the shared machine's load hits all of them.
        for name in [*variants, *variants]:
            before = len(model.extraction_requests)
            settings = latency._settings_for("cloud", providers, variants[name])
            runs[name] += await latency.run_config("cloud", settings, speech, cfg, providers, warm=warm)
            requests[name] += len(model.extraction_requests) - before
    out: dict[str, Any] = {"turns_each": len(runs["facts_off"])}
    for name, samples in runs.items():
        summary = latency.summarize_config(samples, cloud=True)
        out[name] = {"wait_ms": summary["wait_ms"], "floor_ms": summary["floor_ms"],
                     "breakdown_p50_ms": {k: v["p50"] for k, v in summary["breakdown_ms"].items()},
                     "extraction_requests": requests[name]}
    base = out["facts_off"]["wait_ms"]["p50"]
    for name in ("facts_on", "facts_on_no_quiet_period"):
        p50 = out[name]["wait_ms"]["p50"]
        out[name]["p50_minus_facts_off_ms"] = None if base is None or p50 is None else round(p50 - base, 1)
    return out


async def run(parts: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    out: dict[str, Any] = {"bench": "facts"}
    if "cost" in parts:
        out["cost"] = await measure_cost(rooms=args.rooms, every=args.every, budget=args.budget,
                                         per_person=args.per_person, debounce=args.debounce, max_delay=300.0)
    if "voice" in parts:
        out["voice"] = await measure_voice(args.utterances)
    out["wall_s"] = round(time.monotonic() - started, 1)
    out["leaves_out"] = ("a real model's answers and tokenizer (the fake counts 4 characters a token, the scripted "
                         "model writes one fact per line); voice waits on a quiet machine (compare the two runs)")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    parser.add_argument("--parts", default="cost,voice", help="comma-separated: cost, voice")
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between a room's turns")
    parser.add_argument("--budget", type=int, default=20_000, help="FACTS_TOKENS_PER_HOUR")
    parser.add_argument("--per-person", type=int, default=50, help="FACTS_PER_PERSON")
    parser.add_argument("--debounce", type=float, default=30.0, help="FACTS_DEBOUNCE_SECONDS")
    parser.add_argument("--utterances", type=int, default=6, help="voice: utterances per run (4 runs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in ("cost", "voice")]
    if bad or not parts:
        parser.error(f"--parts: unknown {bad or 'nothing'}; use cost and/or voice")
    result = asyncio.run(run(parts, args))
    if not args.json:
        print(json.dumps(result, indent=2), file=sys.stderr)
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
