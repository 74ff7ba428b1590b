"""Vectors for recall (``MEMORY_EMBEDDINGS=local|openai``): an option beside the lexical ranker, never the default.

``local`` is WordLlama's ``l2_supercat`` model at 256 dimensions (PyPI ``wordllama``, MIT; its weights and
tokenizer file are inside the wheel, so nothing is fetched at run time — its own loader would try Hugging
Face for the tokenizer, because it looks in a ``tokenizer/`` folder while the wheel ships ``tokenizers/``,
so the files are opened here directly). The weights are the token-embedding matrices of several large
language models (Llama 2 among them, under their own licences) distilled into one 32,000 × 256 table;
a text's vector is the pooled vectors of its tokens: about 0.05 ms per question on one core, 16 MB in
memory. ``openai`` is any OpenAI-compatible ``/v1/embeddings`` (OPENAI_BASE_URL, OPENAI_API_KEY,
MEMORY_EMBEDDINGS_MODEL), metered as model tokens and refused when the daily model limit is spent.

Vectors are unit length and kept as little-endian float16 bytes (512 bytes a document at 256 dimensions)
in ``recall_vectors`` on either backend; bot/recall/index.py writes them in the background and uses them to
re-rank the lexical candidates and the turns around them (see its docstring for why not a vector index).
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bot.settings import Settings
    from bot.usage.meter import UsageMeter, Who

__all__ = ["Embedder", "EmbeddingError", "LocalEmbedder", "OpenAIEmbedder", "build_embedder", "to_blob", "from_blob"]

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 2000  # a document's start is what its vector stands for (a turn's index entry keeps 4,000)
LOCAL_NAME = "wordllama-l2_supercat-256"


class EmbeddingError(Exception):
    """The embedder could not give vectors (a one-line reason; recall goes on without them)."""


def to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f2").tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(bytes(blob), dtype="<f2").astype(np.float32)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return rows / norms


class Embedder(abc.ABC):
    """Texts to unit vectors. ``name`` is stored beside each vector: vectors of another model are not compared."""

    name: str

    async def start(self) -> None:
        """Load what is needed (may take a moment; called off the voice path)."""

    @abc.abstractmethod
    async def embed(self, texts: Sequence[str], *, who: Who | None = None) -> np.ndarray:
        """One unit-length float32 row per text (raises :class:`EmbeddingError`)."""

    async def aclose(self) -> None:
        pass


class LocalEmbedder(Embedder):
    """WordLlama from its wheel: no network, no GPU."""

    name = LOCAL_NAME

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = asyncio.Lock()

    @staticmethod
    def available() -> bool:
        import importlib.util

        return importlib.util.find_spec("wordllama") is not None

    @staticmethod
    def _load() -> Any:
        from importlib import resources

        from safetensors import safe_open
        from tokenizers import Tokenizer
        from wordllama.inference import WordLlamaInference

        root = resources.files("wordllama")
        weights = root / "weights" / "l2_supercat_256.safetensors"
        tokenizer = root / "tokenizers" / "l2_supercat_tokenizer_config.json"
        if not (weights.is_file() and tokenizer.is_file()):
            raise EmbeddingError("the installed wordllama does not carry l2_supercat_256 in its wheel")
        with safe_open(str(weights), framework="np", device="cpu") as f:
            table = f.get_tensor("embedding.weight")
        return WordLlamaInference(table, Tokenizer.from_file(str(tokenizer)), binary=False)

    async def start(self) -> None:
        async with self._lock:
            if self._model is None:
                try:
                    self._model = await asyncio.to_thread(self._load)
                except EmbeddingError:
                    raise
                except Exception as exc:  # a broken install: one line, recall stays lexical
                    raise EmbeddingError(f"cannot load the local embedding model: {exc}") from exc

    async def embed(self, texts: Sequence[str], *, who: Who | None = None) -> np.ndarray:
        if self._model is None:
            await self.start()
        clipped = [t[:MAX_TEXT_CHARS] or " " for t in texts]
        if len(clipped) <= 4:  # a question: well under a millisecond, not worth a thread hop
            return _unit(self._model.embed(clipped))
        return _unit(await asyncio.to_thread(self._model.embed, clipped))


class OpenAIEmbedder(Embedder):
    """An OpenAI-compatible ``/v1/embeddings`` through the ``openai`` SDK, metered as model tokens."""

    def __init__(self, *, model: str, api_key: str | None, base_url: str | None,
                 meter: UsageMeter | None = None, timeout: float = 20.0) -> None:
        from openai import AsyncOpenAI

        self.model = model
        self.name = f"openai:{model}"
        self.meter = meter
        self.client = AsyncOpenAI(api_key=api_key or "none", base_url=base_url, timeout=timeout, max_retries=1)

    async def embed(self, texts: Sequence[str], *, who: Who | None = None) -> np.ndarray:
        import openai

        from bot.usage.meter import OverLimit, Who

        clipped = [t[:MAX_TEXT_CHARS] or " " for t in texts]
        grant = None
        estimate = sum(len(t) for t in clipped) / 4 + len(clipped)
        if self.meter is not None:
            try:
                grant = await self.meter.reserve("model", who or Who(), estimate, engine="openai-embeddings")
            except OverLimit as exc:
                raise EmbeddingError(f"the daily model limit is reached ({exc.scope})") from None
        used = 0.0
        try:
            # A question waits within recall's budget: no retry there; the background batches retry once.
            client = self.client if who is None else self.client.with_options(max_retries=0)
            response = await client.embeddings.create(model=self.model, input=clipped, encoding_format="float")
            usage = getattr(response, "usage", None)
            # The API's own count; a server that reports none is charged the estimate (chars / 4).
            used = float(getattr(usage, "prompt_tokens", 0) or getattr(usage, "total_tokens", 0) or 0) or estimate
            rows = sorted(response.data, key=lambda d: d.index)
            if len(rows) != len(clipped):
                raise EmbeddingError(f"{len(rows)} vectors came back for {len(clipped)} texts")
            return _unit(np.array([r.embedding for r in rows], dtype=np.float32))
        except openai.OpenAIError as exc:
            raise EmbeddingError(f"the embeddings endpoint failed: {type(exc).__name__}: {str(exc)[:200]}") from None
        finally:
            if grant is not None and self.meter is not None:
                self.meter.settle(grant, used)  # a request that failed used nothing

    async def aclose(self) -> None:
        await self.client.close()


def build_embedder(settings: Settings, meter: UsageMeter | None = None) -> Embedder | None:
    """The embedder MEMORY_EMBEDDINGS names (None for ``off``)."""
    mode = settings.memory_embeddings
    if mode == "local":
        return LocalEmbedder()
    if mode == "openai":
        key = settings.openai_api_key.get() if settings.openai_api_key else None
        return OpenAIEmbedder(model=settings.memory_embeddings_model, api_key=key,
                              base_url=settings.openai_base_url, meter=meter)
    return None
