"""Benchmark: long-term recall — does the ranker find the evidence, and how fast at scale.

``python -m bench.memory --data FILE --json [--scale 10000,100000,1000000] [--backends sqlite,postgresql]``

Reads conversations in the issue's format (``bench/memory_data.py`` writes a synthetic set;
``bench/data/memory_sample.json`` ships one). Each conversation is stored as one Discord channel of
one guild, its speakers as members, its sessions at their dates with turns 5 seconds apart, through
the same ``Recall.add_turn`` the bot uses. Each question is asked in that channel by a third person,
"now" being a day after the conversation's last session. recall@k is the share of a question's
evidence turns among the top k turns recalled (a fact or summary counts for the turns it cites);
hit@5 whether any is in the top 5.

Baseline, measured in the same run on the same index: plain single-turn BM25 (FTS5 ``bm25()`` on
SQLite, ``ts_rank_cd`` on PostgreSQL), the top k of the lexical query alone (``lexical_only``).

``--scale`` adds synthetic turns (a Zipf-distributed vocabulary mixed with common English and the
topic words of the set) in other guilds' channels until the index holds each size, then asks every
question again: ``scale[backend][size]`` has ``query_ms`` p50/p95 and recall@5 at that size. The
extra turns are outside every asker's audience (``outside_audience_hits`` counts hits from another
room: it must stay 0); they lengthen every posting list the search reads, and on SQLite they shift
BM25's document frequencies (FTS5 counts them over the whole index), which moves recall a little. ``max_seconds`` bounds the filling per backend: a size not reached
in time is reported as ``"reached"`` with the count it got to.

``--embeddings local`` (or ``openai``) also stores a vector per turn and ranks again with them:
``backends[backend]["embeddings"]`` beside the lexical ranker's figures, measured on the same index in
the same run, with ``embed_turns_per_s``. The top-level figures stay the default's (``off``).

Left out: the prompt (see tests/test_recall_*), the network
between the bot and a remote PostgreSQL (this one is on the same machine), and concurrency (one
search at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.memory import Modality, Turn
from bot.recall import Audience, Recall, RecallConfig
from bot.store import Database, PostgresDatabase, SqliteDatabase

GUILD = "1"
ASKER = "discord:999999999"


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def _stamp(date: str) -> float:
    return datetime.fromisoformat(date).replace(tzinfo=UTC).timestamp()


class Loaded:
    """One data set stored in one index: turn ids both ways and each question's place and time."""

    def __init__(self) -> None:
        self.turn_of: dict[int, tuple[str, str]] = {}  # turn_id -> (conversation id, turn id)
        self.questions: list[dict[str, Any]] = []
        self.turns = 0
        self.ingest_seconds = 0.0


async def load(recall: Recall, data: dict[str, Any]) -> Loaded:
    loaded = Loaded()
    next_id = 1
    started = time.perf_counter()
    for ci, conv in enumerate(data["conversations"]):
        room = f"discord:{GUILD}:{1000 + ci}"
        ids = {name: f"discord:{100000 + ci * 100 + i}" for i, name in enumerate(conv.get("speakers", []))}
        last = 0.0
        for session in conv["sessions"]:
            base = _stamp(session["date"])
            for k, t in enumerate(session["turns"]):
                speaker = str(t["speaker"])
                when = base + 5.0 * k
                last = max(last, when)
                turn = Turn(room=room, speaker_id=ids.setdefault(speaker, f"discord:{100000 + ci * 100 + len(ids)}"),
                            speaker_name=speaker, role="user", text=str(t["text"]), modality=Modality.TEXT,
                            created_at=when)
                await recall.add_turn(turn, turn_id=next_id)
                loaded.turn_of[next_id] = (conv["id"], str(t["id"]))
                next_id += 1
        for q in conv.get("questions", []):
            loaded.questions.append({**q, "conversation": conv["id"], "room": room, "now": last + 86400.0,
                                     "split": conv.get("split", "all")})
    loaded.turns = next_id - 1
    loaded.ingest_seconds = time.perf_counter() - started
    return loaded


async def evaluate(recall: Recall, loaded: Loaded, *, lexical_only: bool) -> dict[str, Any]:
    per: list[dict[str, Any]] = []
    times: list[float] = []
    outside = 0  # hits from a room the asker was not in: must stay 0
    for q in loaded.questions:
        started = time.perf_counter()
        hits = await recall.search(q["question"], asker=ASKER, place=q["room"], limit=10, now=q["now"],
                                   lexical_only=lexical_only)
        times.append((time.perf_counter() - started) * 1000)
        ranked: list[str] = []
        outside += sum(1 for h in hits if h.place != q["room"])
        for h in hits:
            for source in h.sources or ((h.turn_id,) if h.turn_id is not None else ()):
                conv_turn = loaded.turn_of.get(int(source))
                if conv_turn is not None and conv_turn[0] == q["conversation"] and conv_turn[1] not in ranked:
                    ranked.append(conv_turn[1])
        evidence = [str(e) for e in q.get("evidence", [])]
        if not evidence:
            continue
        per.append({
            "type": q.get("type", "?"), "split": q["split"],
            "r5": len(set(ranked[:5]) & set(evidence)) / len(evidence),
            "r10": len(set(ranked[:10]) & set(evidence)) / len(evidence),
            "h5": 1.0 if set(ranked[:5]) & set(evidence) else 0.0,
        })

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        if not rows:
            return {"questions": 0}
        return {"questions": len(rows), "recall_at_5": round(statistics.fmean(r["r5"] for r in rows), 3),
                "recall_at_10": round(statistics.fmean(r["r10"] for r in rows), 3),
                "hit_at_5": round(statistics.fmean(r["h5"] for r in rows), 3)}

    out = summary(per)
    out["outside_audience_hits"] = outside
    out["query_ms"] = {"p50": _pct(times, 0.5), "p95": _pct(times, 0.95)}
    splits = sorted({r["split"] for r in per})
    if len(splits) > 1:
        out["by_split"] = {s: summary([r for r in per if r["split"] == s]) for s in splits}
    out["by_type"] = {t: summary([r for r in per if r["type"] == t]) for t in sorted({r["type"] for r in per})}
    return out


_COMMON = ("the a and i to you it is was we that my for on in of with have so just but this like what do "
           "not be are at can all about get if know really going think one time good day today week yeah "
           "new name city job book reading sister married wedding moved holiday summer lessons evenings "
           "dog cat puppy kitten work team flights trip music play learning relax living now before").split()


class Filler:
    """Synthetic turns: a Zipf vocabulary of 50,000 words mixed with common English and topic words."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.vocab = [f"w{n}x" for n in range(50_000)]
        weights = [1.0 / (r + 1) for r in range(len(self.vocab))]
        total = sum(weights)
        acc, self.cum = 0.0, []
        for w in weights:
            acc += w / total
            self.cum.append(acc)

    def text(self) -> str:
        import bisect

        words = []
        for _ in range(self.rng.randint(6, 18)):
            if self.rng.random() < 0.55:
                words.append(self.rng.choice(_COMMON))
            else:
                words.append(self.vocab[min(len(self.vocab) - 1, bisect.bisect(self.cum, self.rng.random()))])
        return " ".join(words)


async def fill(recall: Recall, filler: Filler, upto: int, *, deadline: float, batch: int = 5000) -> int:
    """Add filler turns in other guilds until the index holds ``upto`` documents (or time runs out)."""
    have = await recall.count()
    t0 = 1.6e9
    while have < upto and time.monotonic() < deadline:
        n = min(batch, upto - have)
        docs = []
        for i in range(n):
            k = have + i
            room = f"discord:{2 + k % 97}:{5000 + k % 1009}"
            docs.append({"kind": "turn", "text": filler.text(), "audience": Audience.of_room(room),
                         "speaker_id": f"discord:{7000 + k % 5003}", "speaker_name": f"Member{k % 5003}",
                         "created_at": t0 + k * 3.0, "turn_id": 10_000_000 + k})
        await recall.add_documents(docs)
        have += n
    return have


@contextlib.asynccontextmanager
async def _opened(backend: str, where: Path) -> AsyncIterator[Database]:
    """The backend's database for one run: a SQLite file in ``where``, or a scratch PostgreSQL database
    (bench.store_voice.fresh_postgres: created, then dropped)."""
    async with contextlib.AsyncExitStack() as stack:
        if backend == "sqlite":
            db: Database = SqliteDatabase(where / "bench-memory.sqlite3")
        else:
            from bench.store_voice import fresh_postgres

            db = await PostgresDatabase.connect(await stack.enter_async_context(fresh_postgres()))
        try:
            yield db
        finally:
            await db.close()


async def run(data: dict[str, Any], backends: Sequence[str], scales: Sequence[int], max_seconds: float,
              embeddings: str = "off") -> dict[str, Any]:
    result: dict[str, Any] = {"backends": {}, "scale": {}}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for backend in backends:
            async with _opened(backend, Path(tmp)) as db:
                recall = Recall(db)
                await recall.start()
                loaded = await load(recall, data)
                ranker = await evaluate(recall, loaded, lexical_only=False)
                bm25 = await evaluate(recall, loaded, lexical_only=True)
                result["backends"][backend] = {
                    "ranker": ranker, "bm25_single_turn": bm25,
                    "ingest_turns_per_s": round(loaded.turns / loaded.ingest_seconds, 1) if loaded.ingest_seconds else None,
                }
                if embeddings != "off":
                    result["backends"][backend]["embeddings"] = await _with_vectors(db, embeddings, loaded)
                sizes: dict[str, Any] = {}
                filler = Filler()
                deadline = time.monotonic() + max_seconds
                for size in scales:
                    started = time.monotonic()
                    reached = await fill(recall, filler, size, deadline=deadline)
                    fill_s = time.monotonic() - started
                    if backend == "postgresql":
                        await db.execute("ANALYZE recall_docs")
                    at = await evaluate(recall, loaded, lexical_only=False)
                    sizes[str(size)] = {"reached": reached, "query_ms": at["query_ms"], "recall_at_5": at["recall_at_5"],
                                        "outside_audience_hits": at["outside_audience_hits"],
                                        "fill_seconds": round(fill_s, 1)}
                    if reached < size:
                        break
                if sizes:
                    result["scale"][backend] = sizes
    first = result["backends"][backends[0]]
    result.update({  # the top-level figures: the first backend's ranker
        "recall_at_5": first["ranker"]["recall_at_5"], "recall_at_10": first["ranker"]["recall_at_10"],
        "hit_at_5": first["ranker"]["hit_at_5"], "questions": first["ranker"]["questions"],
        "query_ms": first["ranker"]["query_ms"], "ingest_turns_per_s": first["ingest_turns_per_s"],
        "baseline_bm25": {k: first["bm25_single_turn"][k] for k in ("recall_at_5", "recall_at_10", "hit_at_5")},
    })
    return result


async def _with_vectors(db: Database, mode: str, loaded: Loaded) -> dict[str, Any]:
    """The same index ranked again with vectors (``mode``: local or openai, from the environment)."""
    from bot.recall.embed import build_embedder
    from bot.settings import Settings, load_settings

    settings = load_settings() if mode == "openai" else Settings()
    embedder = build_embedder(dataclasses.replace(settings, memory_embeddings=mode))
    recall = Recall(db, RecallConfig(budget_ms=10_000), embedder=embedder)
    await recall.start()
    started = time.perf_counter()
    embedded = await recall.embed_all()
    seconds = time.perf_counter() - started
    try:
        out = await evaluate(recall, loaded, lexical_only=False)
    finally:
        await recall.aclose()
    out["model"] = embedder.name if embedder is not None else None
    out["embed_turns_per_s"] = round(embedded / seconds, 1) if seconds > 0 else None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--scale", default="", help="comma-separated index sizes, e.g. 10000,100000,1000000")
    parser.add_argument("--backends", default="sqlite", help="sqlite, postgresql or both (comma-separated)")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="time allowed to fill each backend")
    parser.add_argument("--embeddings", choices=("off", "local", "openai"), default="off",
                        help="also rank with vectors (local: voicebot[embeddings]; openai: OPENAI_* settings)")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.data.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("conversations"), list):
            raise ValueError("expected {\"conversations\": [...]}")
    except (OSError, ValueError) as exc:
        print(f"bench.memory: cannot read {args.data}: {exc}", file=sys.stderr)
        return 2
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or set(backends) - {"sqlite", "postgresql"}:
        print("bench.memory: --backends takes sqlite and/or postgresql", file=sys.stderr)
        return 2
    scales = sorted(int(s) for s in args.scale.split(",") if s.strip())
    result = asyncio.run(run(data, backends, scales, args.max_seconds, args.embeddings))
    print(json.dumps(result))
    if not args.json:
        print(json.dumps(result, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
