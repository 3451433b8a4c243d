"""Knowledge bases as the API, the CLI and agents use them: a document in, extracted, cut,
embedded and stored; a query in, embedded and searched. Extraction and cutting are CPU work,
so they run in a worker thread."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from noroshi.config import RetrievalConfig
from noroshi.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, Unavailable
from noroshi.providers.base import Routed
from noroshi.providers.router import ProviderRouter
from noroshi.retrieval.base import Chunk, KnowledgeStore, TokenCounter
from noroshi.retrieval.chunking import approximate_tokens, chunk, local_token_counter
from noroshi.retrieval.documents import detect_format, extract
from noroshi.retrieval.ranking import Weights
from noroshi.store.database import Database, PostgresDatabase
from noroshi.wire.knowledge import (
    DocumentUpload,
    Filter,
    Hit,
    KnowledgeBase,
    KnowledgeBaseCreate,
    Mode,
    StoredDocument,
)
from noroshi.wire.times import Timestamp

__all__ = ["Knowledge", "content_hash", "open_store"]

log = logging.getLogger("noroshi.knowledge")

KNOWLEDGE_FILE = "knowledge.sqlite3"


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Knowledge:
    def __init__(
        self,
        store: KnowledgeStore,
        models: ProviderRouter,
        config: RetrievalConfig,
        default_model: Callable[[], str],
    ) -> None:
        self.store = store
        self.models = models
        self.config = config
        self.default_model = default_model
        self._count: TokenCounter | None = None
        self.unavailable: str | None = None  # why the store could not open, if it could not

    async def open(self) -> None:
        """Open the store; a failure (PostgreSQL without pgvector) leaves the rest of the
        server working and every knowledge request answering 503 with the reason."""
        try:
            await self.store.open()
        except Exception as exc:
            self.unavailable = f"Knowledge bases are unavailable: {exc}"
            log.error("%s", self.unavailable)

    def _check(self) -> None:
        if self.unavailable is not None:
            raise Unavailable(self.unavailable, code="knowledge_unavailable")

    @property
    def count(self) -> TokenCounter:
        """The local embedding model's own tokenizer when it is installed, else an estimate."""
        if self._count is None:
            self._count = local_token_counter() or approximate_tokens
        return self._count

    async def create(
        self, spec: KnowledgeBaseCreate, routed: Routed | None = None
    ) -> KnowledgeBase:
        self._check()
        model = spec.embedding_model or self.default_model()
        if model not in self.models:
            raise NotFound(f"No model named '{model}'.", param="embedding_model")
        if await self.store.get(spec.name) is not None:
            raise Conflict(f"A knowledge base named '{spec.name}' exists.", param="name")
        probe = await self._embed(routed or Routed(model), model, ["dimensions"])
        chunk_tokens = spec.chunk_tokens or self.config.chunk_tokens
        overlap = self.config.overlap_tokens if spec.overlap_tokens is None else spec.overlap_tokens
        if overlap >= chunk_tokens // 2:
            raise BadRequest(
                f"overlap_tokens must be under half of chunk_tokens ({chunk_tokens}).",
                param="overlap_tokens",
            )
        kb = KnowledgeBase(
            name=spec.name,
            embedding_model=model,
            dimensions=len(probe[0]),
            description=spec.description,
            chunk_tokens=chunk_tokens,
            overlap_tokens=overlap,
            created_at=Timestamp.now(),
        )
        if not await self.store.create(kb):
            raise Conflict(f"A knowledge base named '{spec.name}' exists.", param="name")
        return kb

    async def base(self, name: str) -> KnowledgeBase:
        self._check()
        kb = await self.store.get(name)
        if kb is None:
            raise NotFound(f"No knowledge base named '{name}'.", param="name")
        return kb

    async def add(
        self, name: str, upload: DocumentUpload, routed: Routed | None = None
    ) -> tuple[StoredDocument, bool]:
        """The document as stored, and whether it changed: an upload whose bytes match the
        stored document of the same source is skipped, so a re-run ingests only what is new."""
        kb = await self.base(name)
        if (upload.text is None) == (upload.data is None):
            raise BadRequest("Send either `text` or `data`, not both or neither.", param="text")
        data = upload.data if upload.data is not None else (upload.text or "").encode()
        if len(data) > self.config.max_document_bytes:
            raise PayloadTooLarge(
                f"The document is over {self.config.max_document_bytes} bytes.", param="data"
            )
        digest = content_hash(data)
        stored = await self.store.find_source(name, upload.source)
        if stored is not None and stored.content_hash == digest:
            return stored, False
        fmt: str = upload.format or ("text" if upload.text is not None else "")
        title, chunks, fmt = await asyncio.to_thread(self._cut, kb, upload.source, data, fmt)
        if not chunks:
            raise BadRequest("The document has no text to index.", param="source")
        vectors = await self._embed(
            routed or Routed(kb.embedding_model),
            kb.embedding_model,
            [_embedded_text(c) for c in chunks],
        )
        doc = StoredDocument(
            id=stored.id if stored is not None else f"doc_{secrets.token_hex(8)}",
            kb=name,
            source=upload.source,
            title=upload.title or title or upload.source,
            content_hash=digest,
            format=fmt,
            metadata=dict(upload.metadata),
            chunks=len(chunks),
            created_at=Timestamp.now(),
        )
        await self.store.put_document(doc, chunks, vectors)
        return doc, True

    async def search(
        self,
        base: KnowledgeBase | str,
        query: str,
        k: int = 5,
        mode: Mode = "hybrid",
        filter: Filter | None = None,
        routed: Routed | None = None,
    ) -> list[Hit]:
        """`base` as read already (the API reads it to bill the query's embedding), or its
        name."""
        kb = await self.base(base) if isinstance(base, str) else base
        vector = None
        if mode != "text":
            model = kb.embedding_model
            vector = (await self._embed(routed or Routed(model), model, [query]))[0]
        return await self.store.search(kb.name, vector, query, k, mode, filter)

    def _cut(
        self, kb: KnowledgeBase, source: str, data: bytes, fmt: str
    ) -> tuple[str, list[Chunk], str]:
        """Title, chunks and format; what cannot be read is a 400 on `data`."""
        try:
            fmt = fmt or detect_format(source, None, data)
            title, sections = extract(data, fmt)
        except ValueError as exc:
            raise BadRequest(str(exc), param="data") from None
        return title, chunk(sections, self.count, kb.chunk_tokens, kb.overlap_tokens), fmt

    async def _embed(self, routed: Routed, model: str, texts: Sequence[str]) -> list[list[float]]:
        """Vectors of `texts`, in batches; the tokens of every batch count on `routed`."""
        routed.model = model
        vectors: list[list[float]] = []
        tokens = 0
        step = self.config.embed_batch
        for start in range(0, len(texts), step):
            embedded = await self.models.embed(routed, list(texts[start : start + step]), None)
            vectors += embedded.vectors
            tokens += embedded.prompt_tokens
        if routed.usage is not None:
            routed.usage.prompt_tokens = tokens
        return vectors


def _embedded_text(c: Chunk) -> str:
    """What is embedded for a chunk: its heading path gives it context."""
    return f"{c.heading}\n{c.text}" if c.heading else c.text


def open_store(db: Database, directory: Path, config: RetrievalConfig) -> KnowledgeStore:
    """pgvector in the same PostgreSQL as the rest; without one, sqlite-vec in a file beside
    the SQLite store."""
    weights = Weights(config.vector_weight, config.text_weight)
    if isinstance(db, PostgresDatabase):
        from noroshi.retrieval.postgres_store import PostgresKnowledge

        return PostgresKnowledge(db, weights)
    from noroshi.retrieval.sqlite_store import SQLiteKnowledge

    return SQLiteKnowledge(directory / KNOWLEDGE_FILE, weights)
