"""Knowledge bases: the types every part shares, and the store interface.

A document is extracted into sections (text under one heading path), cut into chunks of a
bounded number of tokens, embedded, and kept with a full-text index beside its vectors. A
search ranks by vector and by text and fuses the two by rank.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from msgspec import Struct

from noroshi.wire.knowledge import Filter, Hit, KnowledgeBase, Mode, StoredDocument
from noroshi.wire.times import Timestamp

__all__ = [
    "Chunk",
    "Filter",
    "Hit",
    "KnowledgeBase",
    "KnowledgeStore",
    "Mode",
    "Section",
    "StoredDocument",
    "TokenCounter",
    "base_from_row",
    "document_from_row",
    "hits_in_order",
]

TokenCounter = Callable[[str], int]


class Section(Struct, kw_only=True):
    """Text under one heading path, e.g. ["Install", "On Debian"]; paragraphs split by a
    blank line."""

    headings: list[str] = []
    text: str


class Chunk(Struct, kw_only=True):
    index: int  # its order in the document, from 0
    text: str
    heading: str  # the heading path, " > " between levels; "" before the first heading
    tokens: int


def document_from_row(row: Sequence[Any]) -> StoredDocument:
    """A document from its columns, in the order both stores select them: id, kb, source,
    title, content_hash, format, metadata (JSON), chunks, created_at."""
    return StoredDocument(
        id=row[0],
        kb=row[1],
        source=row[2],
        title=row[3],
        content_hash=row[4],
        format=row[5],
        metadata=msgspec.json.decode(row[6]),
        chunks=row[7],
        created_at=Timestamp(row[8]),
    )


def base_from_row(row: Sequence[Any]) -> KnowledgeBase:
    """A base from its columns: name, embedding_model, dimensions, description,
    chunk_tokens, overlap_tokens, created_at, then its document and chunk counts."""
    return KnowledgeBase(
        name=row[0],
        embedding_model=row[1],
        dimensions=row[2],
        description=row[3],
        chunk_tokens=row[4],
        overlap_tokens=row[5],
        created_at=Timestamp(row[6]),
        documents=row[7],
        chunks=row[8],
    )


def hits_in_order(
    ranked: Sequence[tuple[Any, float]], rows: Sequence[Sequence[Any]]
) -> builtins.list[Hit]:
    """The ranked chunks as hits, best first. Each row: the ranking's key, then chunk id,
    document id, text, heading, source, title, metadata (JSON). A chunk deleted since it was
    ranked has no row and is left out."""
    found = {r[0]: r for r in rows}
    return [
        Hit(
            chunk_id=r[1],
            document_id=r[2],
            text=r[3],
            heading=r[4],
            source=r[5],
            title=r[6],
            metadata=msgspec.json.decode(r[7]),
            score=score,
        )
        for key, score in ranked
        if (r := found.get(key)) is not None
    ]


class KnowledgeStore(abc.ABC):
    """Where knowledge bases live: SQLite with sqlite-vec and FTS5, or PostgreSQL with
    pgvector and tsvector. Every method is safe to call concurrently."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Create what is missing (tables, indexes, extensions)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def create(self, kb: KnowledgeBase) -> bool:
        """False when a knowledge base of that name exists (it is left as it is)."""

    @abc.abstractmethod
    async def get(self, name: str) -> KnowledgeBase | None:
        """With its current document and chunk counts."""

    @abc.abstractmethod
    async def list(self) -> list[KnowledgeBase]: ...

    @abc.abstractmethod
    async def delete(self, name: str) -> bool:
        """The knowledge base and everything in it; False when there was none."""

    @abc.abstractmethod
    async def put_document(
        self, doc: StoredDocument, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]
    ) -> None:
        """Store a document with its chunks and their vectors (same order), in one
        transaction, replacing any document with the same source in that knowledge base."""

    @abc.abstractmethod
    async def get_document(self, kb: str, document_id: str) -> StoredDocument | None: ...

    @abc.abstractmethod
    async def find_source(self, kb: str, source: str) -> StoredDocument | None: ...

    @abc.abstractmethod
    async def list_documents(
        self, kb: str, limit: int = 100, offset: int = 0
    ) -> builtins.list[StoredDocument]: ...

    @abc.abstractmethod
    async def delete_document(self, kb: str, document_id: str) -> bool: ...

    @abc.abstractmethod
    async def search(
        self,
        kb: str,
        vector: Sequence[float] | None,
        text: str,
        k: int,
        mode: Mode = "hybrid",
        filter: Filter | None = None,
    ) -> builtins.list[Hit]:
        """The `k` best chunks. `vector` ranks by cosine similarity, `text` by full-text
        relevance; "hybrid" fuses both rankings by reciprocal rank. `filter` keeps chunks
        whose document metadata has each key equal to the value."""
