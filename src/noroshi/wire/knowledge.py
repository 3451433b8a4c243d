"""Knowledge base API types: bases, documents, search. The stores keep bases and documents in
these same types."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from noroshi.wire.times import Timestamp

__all__ = [
    "DocumentAdded",
    "DocumentList",
    "DocumentQuery",
    "DocumentUpload",
    "Filter",
    "Hit",
    "KnowledgeBase",
    "KnowledgeBaseCreate",
    "KnowledgeBaseList",
    "Mode",
    "SearchAnswer",
    "SearchBody",
    "StoredDocument",
]

Mode = Literal["hybrid", "vector", "text"]
Filter = dict[str, str | int | float | bool]
KBName = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
MAX_K = 100


class KnowledgeBase(Struct, kw_only=True, tag_field="object", tag="kb"):
    name: str
    embedding_model: str
    dimensions: int
    description: str = ""
    chunk_tokens: int = 256
    overlap_tokens: int = 32
    created_at: Timestamp
    documents: int = 0
    chunks: int = 0


class StoredDocument(Struct, kw_only=True, tag_field="object", tag="kb.document"):
    id: str
    kb: str
    source: str  # a path, URL or name; unique within a knowledge base
    title: str
    content_hash: str  # SHA-256 of the original bytes: a re-ingest skips an unchanged file
    format: str  # "text" | "markdown" | "html" | "pdf"
    metadata: dict[str, Any] = {}
    chunks: int = 0
    created_at: Timestamp


class Hit(Struct, kw_only=True):
    """One search result, best first; `score` is the fused (or single) ranking score."""

    chunk_id: str
    document_id: str
    text: str
    heading: str
    source: str
    title: str
    metadata: dict[str, Any]
    score: float


class KnowledgeBaseCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    name: KBName
    embedding_model: str | None = None  # default: defaults.embedding_model
    description: Annotated[str, Meta(max_length=2000)] = ""
    chunk_tokens: Annotated[int, Meta(ge=16, le=8192)] | None = None  # default: [retrieval]
    overlap_tokens: Annotated[int, Meta(ge=0, le=4096)] | None = None


class KnowledgeBaseList(Struct, kw_only=True):
    data: list[KnowledgeBase]
    object: Literal["list"] = "list"


class DocumentUpload(Struct, kw_only=True, forbid_unknown_fields=True):
    """A document as text (`text`) or as a file's bytes (`data`, base64 in JSON); `format`
    is found from the source's extension or the bytes when not given."""

    source: Annotated[str, Meta(min_length=1, max_length=1024)]
    text: str | None = None
    data: bytes | None = None
    format: Literal["text", "markdown", "html", "pdf"] | None = None
    title: Annotated[str, Meta(max_length=500)] | None = None
    metadata: dict[str, str | int | float | bool] = {}


class DocumentAdded(Struct, kw_only=True):
    """`changed` is false when the same source had the same bytes: nothing was redone."""

    document: StoredDocument
    changed: bool


class DocumentQuery(Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    offset: Annotated[int, Meta(ge=0)] = 0


class DocumentList(Struct, kw_only=True):
    data: list[StoredDocument]
    object: Literal["list"] = "list"


class SearchBody(Struct, kw_only=True, forbid_unknown_fields=True):
    query: Annotated[str, Meta(min_length=1, max_length=4000)]
    k: Annotated[int, Meta(ge=1, le=MAX_K)] = 5
    mode: Mode = "hybrid"
    filter: Filter | None = None


class SearchAnswer(Struct, kw_only=True):
    results: list[Hit]
    object: Literal["list"] = "list"
