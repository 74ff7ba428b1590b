"""A character's knowledge, chunked and recalled for each message instead of picked by shared words.

What is read, as ElizaOS reads a character's ``knowledge``:

- a string is one piece of knowledge, except that a string ending in ``.md``, ``.txt`` or ``.pdf`` names a
  file under the knowledge folder (ElizaOS's RAG mode does the same);
- ``{"path": "notes/a.md"}`` is one file under the knowledge folder (``.md``, ``.txt``; ``.pdf`` is skipped
  with one line: we carry no PDF reader);
- ``{"directory": "guides"}`` is every ``.md``/``.txt``/``.pdf`` file below that folder, recursively (``..``
  removed from the name, as ElizaOS does).

The knowledge folder is ElizaOS's ``characters/knowledge``: the ``knowledge`` folder beside the character
file, or ``KNOWLEDGE_DIR``. Nothing outside it is read (a link pointing out is skipped). Bounded: at most
``MAX_FILES`` files, ``MAX_FILE_BYTES`` each, ``MAX_TOTAL_BYTES`` in all; a file that is not UTF-8 text
(a binary) is skipped with one line naming it. Each piece is cut into chunks of about ``CHUNK_CHARS``
characters at paragraph and sentence boundaries.

Recall: the chunks go into the recall index as documents for everyone (kind ``knowledge``) when it is
there, so the same ranker that finds turns finds them; otherwise this module's own BM25 over the chunks
ranks them. :meth:`KnowledgeIndex.prompt_note` is an agent context provider.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.agent.character import Character

__all__ = ["Chunk", "KnowledgeIndex", "chunk_text", "knowledge_root", "load_knowledge"]

log = logging.getLogger(__name__)

FILE_EXTENSIONS = ("md", "txt", "pdf")
MAX_FILES = 2000
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_TOTAL_BYTES = 32 * 1024 * 1024
CHUNK_CHARS = 900
MAX_PROMPT_CHUNKS = 5
MAX_PROMPT_CHARS = 3000


@dataclass(frozen=True)
class Chunk:
    source: str  # "character" for a string, else the file's path under the knowledge folder
    index: int
    text: str

    @property
    def ref(self) -> str:
        return f"knowledge:{self.source}:{self.index}"


def knowledge_root(character: Character, override: Path | None = None) -> Path | None:
    """The folder ``{"path": ...}`` entries are read from (None: the packaged character has none)."""
    if override is not None:
        return override
    if character.source.startswith("<") or character.source.startswith("bot/characters/"):
        return None
    return Path(character.source).resolve().parent / "knowledge"


_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def chunk_text(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """``text`` cut into pieces of at most about ``size`` characters, at paragraphs, then sentences, then words."""
    text = text.replace("\r\n", "\n").strip()
    if not text:
        return []
    pieces: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        if len(paragraph) <= size:
            pieces.append(paragraph)
            continue
        for sentence in _SENTENCE_END.split(paragraph):
            while len(sentence) > size:
                cut = sentence.rfind(" ", 0, size)
                cut = cut if cut > size // 2 else size
                pieces.append(sentence[:cut].strip())
                sentence = sentence[cut:].strip()
            if sentence:
                pieces.append(sentence)
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 1 + len(piece) > size:
            chunks.append(current)
            current = piece
        else:
            current = f"{current} {piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def _is_file_name(item: str) -> bool:
    return "\n" not in item and item.rsplit(".", 1)[-1].lower() in FILE_EXTENSIONS and "." in item


class _Reader:
    def __init__(self, root: Path | None) -> None:
        self.root = root.resolve() if root is not None else None
        self.files = 0
        self.total = 0
        self.skipped: list[str] = []
        self.capped = False

    def read(self, relative: str) -> str | None:
        if self.root is None:
            self.skipped.append(f"{relative} (no knowledge folder: set KNOWLEDGE_DIR)")
            return None
        if self.files >= MAX_FILES or self.total >= MAX_TOTAL_BYTES:
            self.capped = True
            return None
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            self.skipped.append(f"{relative} (outside the knowledge folder)")
            return None
        if path.suffix.lower() == ".pdf":
            self.skipped.append(f"{relative} (PDF: not read)")
            return None
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                self.skipped.append(f"{relative} (larger than {MAX_FILE_BYTES // (1024 * 1024)} MB)")
                return None
            raw = path.read_bytes()
        except OSError as exc:
            self.skipped.append(f"{relative} ({exc.strerror or exc})")
            return None
        if b"\x00" in raw:
            self.skipped.append(f"{relative} (a binary file, not text)")
            return None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            self.skipped.append(f"{relative} (not UTF-8 text at byte {exc.start})")
            return None
        self.files += 1
        self.total += len(raw)
        return unicodedata.normalize("NFC", text)

    def directory(self, name: str) -> list[str]:
        """The files below ``name`` (".." removed), relative to the root, in a stable order."""
        if self.root is None:
            self.skipped.append(f"{name}/ (no knowledge folder: set KNOWLEDGE_DIR)")
            return []
        clean = name.replace("..", "")
        base = (self.root / clean).resolve()
        if not base.is_relative_to(self.root) or not base.is_dir():
            self.skipped.append(f"{name}/ (not a folder under the knowledge folder)")
            return []
        out: list[str] = []
        for path in sorted(base.rglob("*")):
            if path.suffix.lower().lstrip(".") in FILE_EXTENSIONS and path.is_file():
                out.append(str(path.relative_to(self.root)))
                if len(out) > MAX_FILES:
                    break
        return out


def load_knowledge(character: Character, root: Path | None = None) -> list[Chunk]:
    """Every chunk of ``character``'s knowledge (strings and files), bounded; problems are logged once each."""
    reader = _Reader(knowledge_root(character, root))
    chunks: list[Chunk] = []

    def add(source: str, text: str) -> None:
        for i, piece in enumerate(chunk_text(text)):
            chunks.append(Chunk(source, i, piece))

    strings = 0
    for item in character.knowledge:
        if _is_file_name(item):
            text = reader.read(item)
            if text is not None:
                add(item, text)
        else:
            strings += 1
            for i, piece in enumerate(chunk_text(item)):
                chunks.append(Chunk("character", len(chunks), piece))
    for src in character.knowledge_sources:
        names = reader.directory(src.value) if src.kind == "directory" else [src.value]
        for name in names:
            if src.kind == "path" and not _is_file_name(name):
                reader.skipped.append(f"{name} (not a .md, .txt or .pdf file)")
                continue
            text = reader.read(name)
            if text is not None:
                add(name, text)
    for problem in reader.skipped[:20]:
        log.warning("knowledge: skipped %s", problem)
    if len(reader.skipped) > 20:
        log.warning("knowledge: skipped %d more files", len(reader.skipped) - 20)
    if reader.capped:
        log.warning("knowledge: read the first %d files / %d MB and left the rest out", reader.files,
                    reader.total // (1024 * 1024))
    if character.knowledge or character.knowledge_sources:
        log.info("knowledge: %d chunks from %d strings and %d files", len(chunks), strings, reader.files)
    return chunks


_TOKEN = re.compile(r"\w+", re.UNICODE)
_STOP = frozenset(
    "a an and are as at be but by can do does for from has have how i if in is it its me my no not of on or "
    "so that the their them there they this to was we what when where which who why will with you your".split())


def _terms(text: str) -> list[str]:
    return [w for w in _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold()) if w not in _STOP]


class KnowledgeIndex:
    """The chunks, ranked for a message by the recall index when given one, else by BM25 here."""

    def __init__(self, chunks: Sequence[Chunk], *, recall: Any = None) -> None:
        self.chunks = list(chunks)
        self.recall = recall
        self._postings: dict[str, list[tuple[int, int]]] = {}
        self._lengths: list[int] = []
        for i, chunk in enumerate(self.chunks):
            terms = Counter(_terms(chunk.text))
            self._lengths.append(sum(terms.values()))
            for term, tf in terms.items():
                self._postings.setdefault(term, []).append((i, tf))
        self._avg = (sum(self._lengths) / len(self._lengths)) if self._lengths else 0.0

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def version(self) -> str:
        """A name for exactly these chunks: the recall documents' ``ref``, so a changed knowledge base
        replaces the old one and an unchanged one is not indexed again."""
        digest = hashlib.sha256()
        for chunk in self.chunks:
            digest.update(f"{chunk.source}\x1f{chunk.index}\x1f{chunk.text}\x1e".encode("utf-8", "surrogatepass"))
        return f"knowledge:{digest.hexdigest()[:24]}"

    async def index_into_recall(self, recall: Any, marks: Any) -> int:
        """Put the chunks into ``recall`` as documents for everyone (kind ``knowledge``), replacing what
        an earlier start indexed under another version; ``marks`` (a FactStore) remembers which version
        the index holds. Returns the chunks added (0: already there)."""
        from bot.recall import Audience

        version = self.version
        held = await marks.marks("knowledge-index:")
        if f"knowledge-index:{version}" in held:
            self.recall = recall
            return 0
        for old in held:
            await recall.remove(kind="knowledge", ref=old.removeprefix("knowledge-index:"))
            await marks.unmark(old)
        for chunk in self.chunks:
            await recall.add_document("knowledge", chunk.text, audience=Audience.everyone(), ref=version,
                                      speaker_name="knowledge", role="knowledge")
        await marks.mark(f"knowledge-index:{version}")
        self.recall = recall  # from now on the recall index ranks them
        log.info("knowledge: %d chunks indexed for recall", len(self.chunks))
        return len(self.chunks)

    def search(self, query: str, limit: int = MAX_PROMPT_CHUNKS) -> list[Chunk]:
        """BM25 (k1 1.2, b 0.75) over the chunks; only chunks sharing a term with ``query``."""
        n = len(self.chunks)
        if not n:
            return []
        scores: dict[int, float] = {}
        for term in set(_terms(query)):
            postings = self._postings.get(term)
            if not postings:
                continue
            idf = math.log(1 + (n - len(postings) + 0.5) / (len(postings) + 0.5))
            for i, tf in postings:
                norm = tf + 1.2 * (1 - 0.75 + 0.75 * self._lengths[i] / (self._avg or 1))
                scores[i] = scores.get(i, 0.0) + idf * tf * 2.2 / norm
        best = sorted(scores, key=lambda i: (-scores[i], i))[:limit]
        return [self.chunks[i] for i in sorted(best)]

    async def recalled(self, query: str, limit: int = MAX_PROMPT_CHUNKS) -> list[str]:
        """The chunks for ``query`` by this module's BM25 (all of them when there are few)."""
        if len(self.chunks) <= limit:
            return [c.text for c in self.chunks]
        return [c.text for c in self.search(query, limit)]

    async def prompt_note(self, incoming: Any) -> str | None:
        """The system prompt's "Things you know" for this message (an agent context provider)."""
        if self.recall is not None and len(self.chunks) > MAX_PROMPT_CHUNKS:
            hits = await self.recall.search(incoming.text[:2000], asker=incoming.speaker_id, place=incoming.room,
                                            limit=MAX_PROMPT_CHUNKS, kinds=("knowledge",))
            texts = [h.text for h in hits]
        else:
            texts = await self.recalled(incoming.text)
        lines: list[str] = []
        size = 0
        for text in texts:
            if size + len(text) > MAX_PROMPT_CHARS and lines:
                break
            lines.append(f"- {text}")
            size += len(text)
        return "Things you know:\n" + "\n".join(lines) if lines else None


def chunks_of(strings: Iterable[str]) -> list[Chunk]:
    """Chunks of plain strings (tests, and characters built in code)."""
    out: list[Chunk] = []
    for text in strings:
        for piece in chunk_text(text):
            out.append(Chunk("character", len(out), piece))
    return out
