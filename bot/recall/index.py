"""The recall index: its own tables on bot/store's database, lexical search inside the audience, re-ranked.

SQLite: ``recall_docs`` holds each document (text, speaker, room, audience, time) and ``recall_fts`` is an
FTS5 index over it (external content, ``porter unicode61``), kept in step by triggers. Each document's
audience is also written as one token in the index's ``tags`` column, so a search asks FTS5 for
``tags:(room tokens) AND text:(words)``: the audience is applied inside the index, before ranking.

PostgreSQL: ``recall_docs`` with a generated ``tsvector`` (the ``english`` configuration: Snowball
stemming, the porter's successor) under a GIN index, and a b-tree on the room; a search is
``tsv @@ query AND room = ANY(scope)``, ranked by ``ts_rank_cd``.

Everything is async and never blocks the loop; a search is one or two index queries plus one query
for the turns around the best hits.

Vectors (``MEMORY_EMBEDDINGS=local|openai``, bot/recall/embed.py): ``recall_vectors`` holds one per
document (float16 bytes, the model's name beside it), removed with its document by ``ON DELETE CASCADE``
(forget, retention, ``/memory forget``). A background task embeds documents in id order after they are
stored; a search embeds the question while the lexical query runs and adds the cosine similarity of each
candidate and each turn around a hit to the ranker (``semantic``). There is no vector index and no
nearest-neighbour search over the whole store: an exact scan of a million 256-dimension vectors is
hundreds of megabytes per question, far over the 25 ms a search may take, and the issue's own figures
put dense retrieval and its fusion below BM25 on conversation (0.35 and 0.48 against 0.51 recall@5).
So vectors re-rank what the words, the dates and the turns around a hit found; they cannot find a
memory that shares no word with the question and was not said around one that does.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.recall import ranker
from bot.recall.audience import Audience, Scope, scope_for
from bot.recall.embed import Embedder, EmbeddingError, from_blob, to_blob
from bot.store import Database, DatabaseError
from bot.store.erase import Erasure, ForgetReport, Who, register

__all__ = ["Hit", "Recall", "RecallConfig", "MAX_DOC_CHARS"]

log = logging.getLogger(__name__)

MAX_DOC_CHARS = 4000  # a 100,000-character paste is indexed by its start; the turn itself keeps it all
CANDIDATES = 40  # lexical candidates per index query before re-ranking
NEIGHBOUR_SECONDS = 180.0  # turns this close to a hit, in its room, are "around" it
NEIGHBOURS_OF = 8  # the best hits whose surroundings are fetched
NEIGHBOURS_EACH_SIDE = 2
EMBED_BATCH = 64  # documents embedded per round by the background task
EMBED_RETRY_SECONDS = 30.0  # after the embedder failed (its endpoint away, a limit reached)
QUERY_EMBED_SHARE = 0.5  # of RECALL_BUDGET_MS a search waits for the question's vector, at most

_SQLITE_STEPS: list[Any] = [
    """
    CREATE TABLE recall_docs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        ref TEXT,
        turn_id INTEGER,
        room TEXT NOT NULL,
        scope TEXT NOT NULL,
        speaker_id TEXT NOT NULL,
        speaker_name TEXT NOT NULL,
        role TEXT NOT NULL,
        modality TEXT NOT NULL,
        text TEXT NOT NULL,
        tags TEXT NOT NULL,
        sources TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX recall_docs_room ON recall_docs (room, created_at);
    CREATE INDEX recall_docs_speaker ON recall_docs (speaker_id);
    CREATE INDEX recall_docs_ref ON recall_docs (kind, ref);
    CREATE INDEX recall_docs_turn ON recall_docs (turn_id);
    CREATE INDEX recall_docs_created ON recall_docs (created_at);
    CREATE VIRTUAL TABLE recall_fts USING fts5(
        text, tags, content='recall_docs', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER recall_docs_ai AFTER INSERT ON recall_docs BEGIN
        INSERT INTO recall_fts (rowid, text, tags) VALUES (new.id, new.text, new.tags);
    END;
    CREATE TRIGGER recall_docs_ad AFTER DELETE ON recall_docs BEGIN
        INSERT INTO recall_fts (recall_fts, rowid, text, tags) VALUES ('delete', old.id, old.text, old.tags);
    END;
    """,
    """
    CREATE TABLE recall_vectors (
        doc_id INTEGER PRIMARY KEY REFERENCES recall_docs (id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        vec BLOB NOT NULL
    );
    """,
]

_POSTGRES_STEPS: list[Any] = [
    """
    CREATE TABLE recall_docs (
        id BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        ref TEXT,
        turn_id BIGINT,
        room TEXT NOT NULL,
        scope TEXT NOT NULL,
        speaker_id TEXT NOT NULL,
        speaker_name TEXT NOT NULL,
        role TEXT NOT NULL,
        modality TEXT NOT NULL,
        text TEXT NOT NULL,
        tags TEXT NOT NULL,
        sources TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED
    );
    CREATE INDEX recall_docs_room ON recall_docs (room, created_at);
    CREATE INDEX recall_docs_speaker ON recall_docs (speaker_id);
    CREATE INDEX recall_docs_ref ON recall_docs (kind, ref);
    CREATE INDEX recall_docs_turn ON recall_docs (turn_id);
    CREATE INDEX recall_docs_created ON recall_docs (created_at);
    CREATE INDEX recall_docs_tsv ON recall_docs USING GIN (tsv);
    """,
    """
    CREATE TABLE recall_vectors (
        doc_id BIGINT PRIMARY KEY REFERENCES recall_docs (id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        vec BYTEA NOT NULL
    );
    """,
]

MIGRATIONS: list[Any] = [{"sqlite": s, "postgresql": p} for s, p in zip(_SQLITE_STEPS, _POSTGRES_STEPS, strict=True)]
TABLES = ("recall_docs", "recall_vectors", "recall_fts", "recall_fts_data", "recall_fts_idx", "recall_fts_docsize",
          "recall_fts_config")

_COLUMNS = ("id, kind, ref, turn_id, room, scope, speaker_id, speaker_name, role, modality, text, sources, "
            "created_at")


@dataclass(frozen=True)
class RecallConfig:
    """How recall behaves (from settings: MEMORY_RECALL, RECALL_BUDGET_MS, MEMORY_RECALL_COUNT,
    MEMORY_PROMPT_TOKENS, MEMORY_EMBEDDINGS)."""

    enabled: bool = True
    budget_ms: int = 50
    count: int = 5
    prompt_tokens: int = 400
    embeddings: str = "off"
    retention_days: int = 0  # TRANSCRIPT_RETENTION_DAYS: turn entries older than this are pruned (0 keeps all)


@dataclass(frozen=True)
class Hit:
    """One recalled document.

    ``place`` is the room it was said in (``discord:{guild}:{channel}``, ``discord:dm:{user}``,
    ``sms:…``, ``phone:…``, ``console``; empty for knowledge said to everyone); ``sources`` the turn
    ids a fact or summary was drawn from (a turn's own id for a turn).
    """

    id: int
    kind: str
    text: str
    speaker_id: str
    speaker_name: str
    role: str
    place: str
    modality: str
    created_at: float
    score: float
    turn_id: int | None = None
    ref: str | None = None
    sources: tuple[int, ...] = ()
    features: dict[str, float] = field(default_factory=dict, compare=False, repr=False)


def room_token(room: str) -> str:
    """The index token that stands for one room's audience (everyone: ``rall``)."""
    if not room:
        return "rall"
    return "r" + hashlib.sha1(room.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def kind_token(kind: str) -> str:
    return "k" + "".join(ch for ch in kind.lower() if ch.isalnum())[:24]


def _sources_text(sources: Iterable[int]) -> str:
    return " ".join(str(int(s)) for s in sources)


def _sources_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split() if s.lstrip("-").isdigit())


class Recall:
    """The index and the ranker over it. One instance per database; safe to share between tasks.

    ``linked`` resolves an identity to all identities of the same person (``Memory.identities_of``,
    sync or async); without it an identity stands alone.
    """

    def __init__(self, db: Database, config: RecallConfig | None = None, *,
                 linked: Callable[[str], Iterable[str] | Awaitable[Iterable[str]]] | None = None,
                 clock: Callable[[], float] = time.time, embedder: Embedder | None = None) -> None:
        self.db = db
        self.embedder = embedder
        self._embed_wake = asyncio.Event()
        self._embed_lock = asyncio.Lock()
        self._embedding: asyncio.Task[None] | None = None
        self._embedded_upto = 0  # documents with an id at most this have a vector (or were tried)
        self.embed_failures = 0
        self.config = config or RecallConfig()
        self.linked = linked
        self.clock = clock
        self._started = False
        self._start_lock = asyncio.Lock()
        # Turns handed over by the synchronous append path, indexed before the next read or write.
        self._pending: collections.deque[tuple[Any, int | None]] = collections.deque()
        self._flusher: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        # Told how each recall before a reply went: (outcome, seconds); outcome is "found", "none",
        # "over_budget" or "failed". The console counts them (voicebot_recall_total).
        self.listeners: list[Callable[[str, float], None]] = []
        self.outcomes: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"<Recall {self.db.describe()} enabled={self.config.enabled}>"

    async def start(self) -> None:
        """Create or upgrade the index's tables (idempotent)."""
        async with self._start_lock:
            if not self._started:
                await self.db.migrate("recall", MIGRATIONS)
                register(self.db, RecallErasure())  # forget and retention reach the index too
                self._started = True
                if self.embedder is not None:
                    await self._start_embedding()

    # ------------------------------------------------------------------------------- vectors

    async def _start_embedding(self) -> None:
        assert self.embedder is not None
        try:
            await self.embedder.start()
        except EmbeddingError as exc:
            log.warning("MEMORY_EMBEDDINGS: %s; recall goes on without vectors", exc)
            self.embedder = None
            return
        stale = await self.db.execute("DELETE FROM recall_vectors WHERE model <> ?", (self.embedder.name,))
        if stale:
            log.info("Removed %d recall vectors of another embedding model; they are made again with %s",
                     stale, self.embedder.name)
        # Documents stored while embeddings were off (or before a crash) get theirs too; below the
        # newest vector every document was embedded already.
        self._embedded_upto = int(await self.db.scalar("SELECT MAX(doc_id) FROM recall_vectors") or 0)
        self._embed_wake.set()
        self._embedding = asyncio.get_running_loop().create_task(self._embed_loop(), name="recall-embed")

    async def _embed_loop(self) -> None:
        while True:
            await self._embed_wake.wait()
            self._embed_wake.clear()
            try:
                while await self.embed_pending(EMBED_BATCH) == EMBED_BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except EmbeddingError as exc:
                self.embed_failures += 1
                if self.embed_failures == 1 or self.embed_failures % 100 == 0:
                    log.warning("Embedding recall documents failed (%s); retrying in %.0f s", exc, EMBED_RETRY_SECONDS)
                await asyncio.sleep(EMBED_RETRY_SECONDS)  # a back-off, not synchronisation
                self._embed_wake.set()
            except Exception:
                log.exception("Embedding recall documents failed")
                await asyncio.sleep(EMBED_RETRY_SECONDS)
                self._embed_wake.set()

    async def embed_pending(self, batch: int = EMBED_BATCH) -> int:
        """Give the next ``batch`` documents without a vector theirs; returns how many were tried."""
        if self.embedder is None:
            return 0
        async with self._embed_lock:  # the background task and a caller never embed one document twice
            return await self._embed_next(self.embedder, batch)

    async def _embed_next(self, embedder: Embedder, batch: int) -> int:
        rows = await self.db.query(
            "SELECT d.id, d.text FROM recall_docs d LEFT JOIN recall_vectors v ON v.doc_id = d.id "
            "WHERE d.id > ? AND v.doc_id IS NULL ORDER BY d.id LIMIT ?", (self._embedded_upto, int(batch)))
        if not rows:
            return 0
        vectors = await embedder.embed([str(r["text"]) for r in rows])
        name = embedder.name
        params = [(int(r["id"]), name, to_blob(v), int(r["id"])) for r, v in zip(rows, vectors, strict=True)]
        # A document removed meanwhile (forget) gets no vector: the insert needs it to exist.
        await self.db.executemany(
            "INSERT INTO recall_vectors (doc_id, model, vec) SELECT ?, ?, ? WHERE EXISTS "
            "(SELECT 1 FROM recall_docs WHERE id = ?) ON CONFLICT (doc_id) DO NOTHING", params)
        self._embedded_upto = max(self._embedded_upto, int(rows[-1]["id"]))
        self.embed_failures = 0
        return len(rows)

    async def embed_all(self) -> int:
        """Embed every document still without a vector (tests, benchmarks, ``voicebot db``)."""
        total = 0
        while (n := await self.embed_pending(EMBED_BATCH)) > 0:
            total += n
        return total

    async def _similarity(self, question: asyncio.Task[Any], hits: Iterable[Hit], wait: float
                          ) -> dict[int, float] | None:
        """Cosine similarity of the question to each hit with a vector (None when the question's vector
        is not there within ``wait`` seconds, or failed)."""
        ids = sorted({h.id for h in hits})
        if not ids:
            question.cancel()
            return None
        try:
            async with asyncio.timeout(max(0.0, wait)):
                q = (await asyncio.shield(question))[0]
        except TimeoutError:
            question.cancel()
            self.outcomes["embedding_late"] += 1
            return None
        except EmbeddingError as exc:
            log.info("recall ranks without vectors this time: %s", exc)
            return None
        assert self.embedder is not None
        marks = ", ".join("?" for _ in ids)
        rows = await self.db.query(f"SELECT doc_id, vec FROM recall_vectors WHERE model = ? AND doc_id IN ({marks})",
                                   [self.embedder.name, *ids])
        return {int(r["doc_id"]): float(from_blob(r["vec"]) @ q) for r in rows}

    # ------------------------------------------------------------------------------- writing

    def on_stored(self, turn: Any, turn_id: int | None = None) -> None:
        """The turn-append hook (``Memory.on_stored``): index ``turn`` before any later search reads.

        Called synchronously by the store; the insert runs on the loop (at once when one is running,
        else before the next search), and every search first waits for the turns handed over before it.
        """
        self._pending.append((turn, turn_id))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="recall-index")

    async def _flush(self) -> None:
        while self._pending:
            turn, turn_id = self._pending[0]
            try:
                await self.add_turn(turn, turn_id)
            except asyncio.CancelledError:
                raise
            except DatabaseError as exc:  # unreachable: the turn is kept by memory, not its index entry
                log.warning("Indexing a turn for recall failed (room=%s): %s", getattr(turn, "room", "?"), exc)
            except Exception:
                log.exception("Indexing a turn for recall failed (room=%s)", getattr(turn, "room", "?"))
            finally:
                if self._pending and self._pending[0] == (turn, turn_id):
                    self._pending.popleft()
        try:
            await self._retention()
        except DatabaseError as exc:
            log.warning("Pruning the recall index failed: %s", exc)

    async def aclose(self) -> None:
        """Index what was handed over (the database closes after this); documents still without a
        vector get theirs when the bot next starts."""
        try:
            await self.flush()
        except Exception:
            log.exception("Indexing the last turns for recall failed")
        task, self._embedding = self._embedding, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.embedder is not None:
            await self.embedder.aclose()

    def report(self, outcome: str, seconds: float) -> None:
        """Count one recall before a reply (``found``, ``none``, ``over_budget``, ``failed``)."""
        self.outcomes[outcome] += 1
        for listener in list(self.listeners):
            try:
                listener(outcome, seconds)
            except Exception:
                log.exception("recall listener failed")

    async def flush(self) -> None:
        """Index every turn handed over so far (searches call it first)."""
        flusher = self._flusher
        if flusher is not None and not flusher.done() and flusher is not asyncio.current_task():
            await asyncio.shield(flusher)
        if self._pending:
            await self._flush()

    async def _retention(self) -> None:
        days = self.config.retention_days
        now = self.clock()
        if days <= 0 or now - self._last_prune < 3600.0:
            return
        self._last_prune = now
        removed = await self.prune(now - days * 86400.0)
        if removed:
            log.info("Pruned %d recall index entries older than %d days", removed, days)

    async def add_turn(self, turn: Any, turn_id: int | None = None) -> int:
        """Index one stored turn (a :class:`bot.memory.Turn`); returns the document id."""
        return await self.add_document(
            "turn", turn.text, audience=Audience.of_room(turn.room), speaker_id=turn.speaker_id,
            speaker_name=turn.speaker_name, role=turn.role, modality=str(getattr(turn.modality, "value", turn.modality)),
            created_at=float(turn.created_at), turn_id=turn_id,
            sources=(turn_id,) if turn_id is not None else (), ref=f"turn:{turn_id}" if turn_id is not None else None,
        )

    async def add_document(self, kind: str, text: str, *, audience: Audience, speaker_id: str = "",
                           speaker_name: str = "", role: str = "user", modality: str = "", created_at: float | None = None,
                           sources: Sequence[int] = (), ref: str | None = None, turn_id: int | None = None) -> int:
        """Store one searchable document with its audience; returns its id (searchable at once)."""
        await self.start()
        room = audience.room if audience.scope != "everyone" else ""
        tags = f"{room_token(room)} {kind_token(kind)}"
        body = text if len(text) <= MAX_DOC_CHARS else text[:MAX_DOC_CHARS]
        when = float(self.clock() if created_at is None else created_at)
        doc_id = await self.db.scalar(
            "INSERT INTO recall_docs (kind, ref, turn_id, room, scope, speaker_id, speaker_name, role, modality, "
            "text, tags, sources, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (kind, ref, None if turn_id is None else int(turn_id), room, audience.scope, speaker_id, speaker_name,
             role, modality, body, tags, _sources_text(sources), when),
        )
        self._embed_wake.set()
        return int(doc_id)

    async def add_documents(self, docs: Sequence[dict[str, Any]]) -> None:
        """Store many documents in one transaction (knowledge files, imports): each dict holds
        :meth:`add_document`'s arguments (``kind``, ``text``, ``audience`` required)."""
        await self.start()
        rows = []
        for d in docs:
            audience: Audience = d["audience"]
            room = audience.room if audience.scope != "everyone" else ""
            text = str(d["text"])[:MAX_DOC_CHARS]
            when = float(self.clock() if d.get("created_at") is None else d["created_at"])
            turn_id = d.get("turn_id")
            rows.append((str(d["kind"]), d.get("ref"), None if turn_id is None else int(turn_id), room, audience.scope,
                         str(d.get("speaker_id", "")), str(d.get("speaker_name", "")), str(d.get("role", "user")),
                         str(d.get("modality", "")), text, f"{room_token(room)} {kind_token(str(d['kind']))}",
                         _sources_text(d.get("sources", ())), when))
        await self.db.executemany(
            "INSERT INTO recall_docs (kind, ref, turn_id, room, scope, speaker_id, speaker_name, role, modality, "
            "text, tags, sources, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self._embed_wake.set()

    async def remove_document(self, doc_id: int) -> bool:
        return await self.db.execute("DELETE FROM recall_docs WHERE id = ?", (int(doc_id),)) > 0

    async def remove(self, *, kind: str, ref: str) -> int:
        """Remove every document of ``kind`` stored with ``ref``; returns how many."""
        return await self.db.execute("DELETE FROM recall_docs WHERE kind = ? AND ref = ?", (kind, ref))

    async def remove_turns(self, turn_ids: Iterable[int]) -> int:
        ids = [int(i) for i in turn_ids]
        removed = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            removed += await self.db.execute(f"DELETE FROM recall_docs WHERE turn_id IN ({marks})", chunk)
        return removed

    async def forget_identities(self, identities: Iterable[str]) -> int:
        """Remove what these identities said anywhere and everything in their private rooms."""
        from bot.recall.audience import private_rooms_of

        ids = sorted(set(identities))
        rooms = sorted(private_rooms_of(ids))
        removed = 0
        if ids:
            marks = ", ".join("?" for _ in ids)
            removed += await self.db.execute(f"DELETE FROM recall_docs WHERE speaker_id IN ({marks})", ids)
        if rooms:
            marks = ", ".join("?" for _ in rooms)
            removed += await self.db.execute(f"DELETE FROM recall_docs WHERE room IN ({marks})", rooms)
        return removed

    async def prune(self, older_than: float) -> int:
        """Remove turn documents stored before ``older_than`` (epoch seconds): retention."""
        return await self.db.execute("DELETE FROM recall_docs WHERE kind = 'turn' AND created_at < ?",
                                     (float(older_than),))

    async def scrub(self) -> None:
        """Rewrite the index so deleted words leave its pages too (FTS5 ``optimize``; VACUUM on PostgreSQL)."""
        await self.start()
        if self.db.dialect == "sqlite":
            await self.db.execute("INSERT INTO recall_fts (recall_fts) VALUES ('optimize')")
            await self.db.scrub(["recall_docs", "recall_vectors"])
        else:
            await self.db.scrub(["recall_docs", "recall_vectors"])

    async def count(self) -> int:
        await self.start()
        return int(await self.db.scalar("SELECT COUNT(*) FROM recall_docs") or 0)

    # ------------------------------------------------------------------------------- reading

    async def identities_of(self, identity: str) -> set[str]:
        if self.linked is None:
            return {identity}
        found = self.linked(identity)
        if inspect.isawaitable(found):
            found = await found
        return {identity, *found}

    async def search(self, query: str, *, asker: str | Iterable[str], place: str, visible: Iterable[str] | None = None,
                     limit: int = 5, kinds: Sequence[str] | None = None, now: float | None = None,
                     lexical_only: bool = False) -> list[Hit]:
        """The best ``limit`` documents for ``query`` that ``asker`` may be reminded of at ``place``.

        ``asker`` is an identity (its linked identities are looked up) or a set of identities;
        ``visible`` the guild rooms the asker can see (None: ``place`` only). ``lexical_only`` ranks
        by the lexical score alone (the benchmark's baseline).
        """
        await self.start()
        # Turns handed over but not yet indexed: waited for, unless all are from ``place`` itself (what
        # was just said here is in the recent turns, which memories leave out anyway).
        if any(getattr(t, "room", None) != place for t, _ in list(self._pending)):
            await self.flush()
        if isinstance(asker, str):
            identities = await self.identities_of(asker)
        else:
            identities = set(asker)
        scope = scope_for(identities, place, visible)
        if not scope.rooms and not scope.everyone:
            return []
        now = self.clock() if now is None else now
        plan = ranker.plan(query, now)
        if not plan.terms and plan.when is None:
            return []
        question: asyncio.Task[Any] | None = None
        # The question's vector is made while the index is read (an embeddings endpoint's round trip
        # overlaps the queries); a search waits for it at most QUERY_EMBED_SHARE of the budget.
        vector_deadline = time.monotonic() + self.config.budget_ms / 1000.0 * QUERY_EMBED_SHARE
        if self.embedder is not None and not lexical_only:
            question = asyncio.get_running_loop().create_task(
                self.embedder.embed([query], who=_who(identities, place)), name="recall-question-vector")
            question.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            return await self._search(query, plan, identities, scope, place, limit, kinds, now, lexical_only,
                                       question, vector_deadline)
        finally:
            if question is not None and not question.done():
                question.cancel()

    async def _search(self, query: str, plan: ranker.Plan, identities: set[str], scope: Scope, place: str,
                      limit: int, kinds: Sequence[str] | None, now: float, lexical_only: bool,
                      question: asyncio.Task[Any] | None, vector_deadline: float) -> list[Hit]:
        rooms = sorted(scope.rooms) + ([""] if scope.everyone else [])
        kind_list = list(kinds) if kinds else None
        candidates: dict[int, Hit] = {}
        neighbours: list[Hit] = []
        if plan.terms:
            found, neighbours = await self._lexical(plan.terms, rooms, kind_list, None,
                                                    limit if lexical_only else CANDIDATES, around=not lexical_only)
            candidates = {hit.id: hit for hit in found}
        if lexical_only:
            return sorted(candidates.values(), key=lambda h: -h.score)[:limit]
        if plan.when is not None:
            if plan.terms:
                dated, _ = await self._lexical(plan.terms, rooms, kind_list, plan.when, CANDIDATES)
            else:
                dated = await self._in_period(rooms, kind_list, plan.when, CANDIDATES)
            for hit in dated:
                candidates.setdefault(hit.id, hit)
            if not plan.terms:
                neighbours = await self._neighbours(candidates.values(), rooms)
        if not candidates:
            return []
        semantic: dict[int, float] | None = None
        if question is not None:
            semantic = await self._similarity(question, [*candidates.values(), *neighbours],
                                              vector_deadline - time.monotonic())
        ranked = ranker.rank(plan, list(candidates.values()), neighbours, identities=identities, now=now,
                             semantic=semantic)
        return ranked[:limit]

    async def _lexical(self, terms: Sequence[str], rooms: Sequence[str], kinds: Sequence[str] | None,
                       when: tuple[float, float] | None, limit: int, *, around: bool = False
                       ) -> tuple[list[Hit], list[Hit]]:
        """The ``limit`` best lexical matches inside ``rooms`` and, with ``around``, the turns said just
        before and after the best of them (same room, within NEIGHBOUR_SECONDS): one statement, so one
        trip to the database on the voice path."""
        if self.db.dialect == "sqlite":
            words = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
            tags = " OR ".join(room_token(r) for r in rooms)
            match = f"tags:({tags}) AND text:({words})"
            if kinds:
                match += " AND tags:(" + " OR ".join(kind_token(k) for k in kinds) + ")"
            hits = (f"SELECT {', '.join('d.' + c.strip() for c in _COLUMNS.split(','))}, "
                    "-bm25(recall_fts, 1.0, 0.0) AS lex FROM recall_fts JOIN recall_docs d ON d.id = recall_fts.rowid "
                    "WHERE recall_fts MATCH ?")
            params: list[Any] = [match]
            if when is not None:
                hits += " AND d.created_at >= ? AND d.created_at < ?"
                params += [float(when[0]), float(when[1])]
            hits += " ORDER BY bm25(recall_fts, 1.0, 0.0) LIMIT ?"
            params.append(int(limit))
        else:
            hits = (f"SELECT {_COLUMNS}, ts_rank_cd(tsv, q, 1) AS lex FROM recall_docs, "
                    "to_tsquery('english', ?) AS q WHERE tsv @@ q AND room = ANY(?)")
            params = [" | ".join(terms), list(rooms)]
            if kinds:
                hits += " AND kind = ANY(?)"
                params.append(list(kinds))
            if when is not None:
                hits += " AND created_at >= ? AND created_at < ?"
                params += [float(when[0]), float(when[1])]
            hits += " ORDER BY lex DESC LIMIT ?"
            params.append(int(limit))
        if not around:
            rows = await self.db.query(hits, params)
            return [_hit(r, float(r["lex"])) for r in rows], []
        n_cols = ", ".join("n." + c.strip() for c in _COLUMNS.split(","))
        sql = (
            f"WITH hits AS ({hits}), "
            f"best AS (SELECT id, room, created_at FROM hits WHERE kind = 'turn' ORDER BY lex DESC LIMIT {NEIGHBOURS_OF}), "
            f"near AS (SELECT {n_cols}, ROW_NUMBER() OVER (PARTITION BY b.id, n.created_at < b.created_at "
            "ORDER BY abs(n.created_at - b.created_at), n.id) AS k FROM best b JOIN recall_docs n "
            "ON n.room = b.room AND n.created_at >= b.created_at - ? AND n.created_at <= b.created_at + ? "
            "AND n.kind = 'turn' AND n.id <> b.id) "
            f"SELECT {_COLUMNS}, lex, 1 AS hit FROM hits UNION ALL "
            f"SELECT {_COLUMNS}, 0.0 AS lex, 0 AS hit FROM near WHERE k <= {NEIGHBOURS_EACH_SIDE}"
        )
        rows = await self.db.query(sql, [*params, NEIGHBOUR_SECONDS, NEIGHBOUR_SECONDS])
        found = [_hit(r, float(r["lex"])) for r in rows if int(r["hit"]) == 1]
        near = [_hit(r, 0.0) for r in rows if int(r["hit"]) == 0]
        return found, near

    async def _in_period(self, rooms: Sequence[str], kinds: Sequence[str] | None, when: tuple[float, float],
                         limit: int) -> list[Hit]:
        marks = ", ".join("?" for _ in rooms)
        sql = f"SELECT {_COLUMNS} FROM recall_docs WHERE room IN ({marks}) AND created_at >= ? AND created_at < ?"
        params: list[Any] = [*rooms, float(when[0]), float(when[1])]
        if kinds:
            sql += f" AND kind IN ({', '.join('?' for _ in kinds)})"
            params += list(kinds)
        sql += " ORDER BY created_at DESC LIMIT ?"
        params.append(int(limit))
        return [_hit(r, 0.0) for r in await self.db.query(sql, params)]

    async def _neighbours(self, hits: Iterable[Hit], rooms: Sequence[str]) -> list[Hit]:
        """The two turns before and after each of the best hits, in the same room (one statement of
        small index range scans on (room, created_at))."""
        allowed = set(rooms)
        best = sorted((h for h in hits if h.kind == "turn" and h.place in allowed), key=lambda h: -h.score)
        best = best[:NEIGHBOURS_OF]
        if not best:
            return []
        parts, params = [], []
        cols = _COLUMNS
        for i, h in enumerate(best):
            parts.append(f"SELECT * FROM (SELECT {cols} FROM recall_docs WHERE room = ? AND kind = 'turn' "
                         f"AND created_at <= ? AND created_at >= ? AND id <> ? ORDER BY created_at DESC, id DESC "
                         f"LIMIT {NEIGHBOURS_EACH_SIDE}) AS b{i}")
            parts.append(f"SELECT * FROM (SELECT {cols} FROM recall_docs WHERE room = ? AND kind = 'turn' "
                         f"AND created_at >= ? AND created_at <= ? AND id <> ? ORDER BY created_at, id "
                         f"LIMIT {NEIGHBOURS_EACH_SIDE}) AS a{i}")
            params += [h.place, h.created_at, h.created_at - NEIGHBOUR_SECONDS, h.id,
                       h.place, h.created_at, h.created_at + NEIGHBOUR_SECONDS, h.id]
        rows = await self.db.query(" UNION ALL ".join(parts), params)
        return [_hit(r, 0.0) for r in rows]


def _who(identities: set[str], place: str) -> Any:
    """Whom a question's vector counts against (bot/usage): the asker and the guild of ``place``."""
    from bot.usage.meter import who_of_room

    person = min((i for i in identities if i.startswith(("discord:", "phone:", "sms:"))), default=None)
    return who_of_room(place, person)


def _hit(row: Any, lex: float) -> Hit:
    return Hit(
        id=int(row["id"]), kind=str(row["kind"]), text=str(row["text"]), speaker_id=str(row["speaker_id"]),
        speaker_name=str(row["speaker_name"]), role=str(row["role"]), place=str(row["room"]),
        modality=str(row["modality"]), created_at=float(row["created_at"]), score=lex,
        turn_id=None if row["turn_id"] is None else int(row["turn_id"]), ref=row["ref"],
        sources=_sources_tuple(str(row["sources"])),
    )


class RecallErasure(Erasure):
    """The recall index's part in forget: what the person said anywhere, everything in their private rooms,
    and the agent's replies whose turns the forget removed. (Its retention runs with the index.)"""

    component = "recall"
    cleans = {
        "recall_docs": "the recall index (bot/recall): copies of turns, facts and summaries with speaker and room",
        "recall_vectors": "each recall document's vector (MEMORY_EMBEDDINGS), removed with it (ON DELETE CASCADE)",
        "recall_fts": "the recall index's FTS5 table (its content is recall_docs)",
        "recall_fts_data": "FTS5 shadow table: the recall index's terms (rewritten by 'optimize' after a forget)",
        "recall_fts_idx": "FTS5 shadow table: the recall index's segment directory",
        "recall_fts_docsize": "FTS5 shadow table: token counts per recall document",
        "recall_fts_config": "FTS5 shadow table: the recall index's settings",
    }
    order = 30  # after the turns' erasure: replies whose turns are gone go with them

    async def forget(self, tx: Database, who: Who, report: ForgetReport) -> None:
        from bot.recall.audience import private_rooms_of

        ids = sorted(who.identities)
        rooms = sorted(private_rooms_of(ids))
        if ids:
            await tx.execute(f"DELETE FROM recall_docs WHERE speaker_id IN ({', '.join('?' for _ in ids)})", ids)
        if rooms:
            await tx.execute(f"DELETE FROM recall_docs WHERE room IN ({', '.join('?' for _ in rooms)})", rooms)
        await tx.execute("DELETE FROM recall_docs WHERE kind = 'turn' AND turn_id IS NOT NULL AND "
                         "NOT EXISTS (SELECT 1 FROM turns WHERE turns.id = recall_docs.turn_id)")
        if tx.dialect == "sqlite":  # rewrite the index so the deleted words leave its pages
            await tx.execute("INSERT INTO recall_fts (recall_fts) VALUES ('optimize')")
        report.touched.update(("recall_docs", "recall_vectors"))


from bot.store import registry as _schemas  # noqa: E402  (tools that open a database know this schema)

_schemas.register("recall", MIGRATIONS)
