"""Knowledge bases in the main PostgreSQL database: vectors in a pgvector column, text in a
generated tsvector column with a GIN index.

Bases differ in dimensions, so the vector column has none fixed, which rules out an ANN
index: vector search is exact (a scan of the base's chunks, ordered by cosine distance).
pgvector's type and operators are named with the schema the extension lives in, so a
connection whose search_path is a tenant's schema alone still finds them.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Sequence

import asyncpg
import msgspec

from noroshi.retrieval.base import (
    Chunk,
    Filter,
    Hit,
    KnowledgeBase,
    KnowledgeStore,
    Mode,
    StoredDocument,
    base_from_row,
    document_from_row,
    hits_in_order,
)
from noroshi.retrieval.ranking import (
    DEFAULT_WEIGHTS,
    Weights,
    check_vector,
    rank,
    tsquery_text,
    vector_text,
)
from noroshi.store.database import PostgresDatabase

__all__ = ["PgvectorMissing", "PostgresKnowledge"]

Ranked = list[tuple[str, float]]  # chunk ids, best first, with their scores
MAX_DIMENSIONS = 16000  # pgvector's bound
MAX_PAGE = 1000
# pg_advisory_xact_lock keys (the two-int form's first half): any constants unlikely elsewhere
_SCHEMA_LOCK = 0x6B6E6F77  # "know"
_SOURCE_LOCK = 0x6B6E7372  # "knsr", with a hash of the base and source as the second half

_KB_COLUMNS = (
    "k.name, k.embedding_model, k.dimensions, k.description, k.chunk_tokens, k.overlap_tokens, "
    "k.created_at, (SELECT COUNT(*) FROM kb_documents d WHERE d.kb = k.name), "
    "(SELECT COALESCE(SUM(d.chunks), 0) FROM kb_documents d WHERE d.kb = k.name)"
)
_DOC_COLUMNS = (
    "d.id, d.kb, d.source, d.title, d.content_hash, d.format, d.metadata::text, d.chunks, "
    "d.created_at"
)


class PgvectorMissing(RuntimeError):
    """The server has no pgvector to create the extension from."""


def _schema(vector: str) -> list[str]:
    """The tables, `vector` being pgvector's type, schema-qualified."""
    return [
        """CREATE TABLE IF NOT EXISTS kb (
            name TEXT PRIMARY KEY,
            embedding_model TEXT NOT NULL,
            dimensions INTEGER NOT NULL,
            description TEXT NOT NULL,
            chunk_tokens INTEGER NOT NULL,
            overlap_tokens INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS kb_documents (
            id TEXT PRIMARY KEY,
            kb TEXT NOT NULL REFERENCES kb (name) ON DELETE CASCADE,
            source TEXT NOT NULL,
            title TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            format TEXT NOT NULL,
            metadata JSONB NOT NULL,
            chunks INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            UNIQUE (kb, source)
        )""",
        "CREATE INDEX IF NOT EXISTS kb_documents_created ON kb_documents (kb, created_at, id)",
        f"""CREATE TABLE IF NOT EXISTS kb_chunks (
            id TEXT PRIMARY KEY,
            kb TEXT NOT NULL,
            document_id TEXT NOT NULL REFERENCES kb_documents (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            text TEXT NOT NULL,
            heading TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            embedding {vector} NOT NULL,
            tsv tsvector GENERATED ALWAYS AS
                (to_tsvector('english', translate(heading || ' ' || text, '-', ' '))) STORED
        )""",
        "CREATE INDEX IF NOT EXISTS kb_chunks_kb ON kb_chunks (kb)",
        "CREATE INDEX IF NOT EXISTS kb_chunks_document ON kb_chunks (document_id)",
        "CREATE INDEX IF NOT EXISTS kb_chunks_tsv ON kb_chunks USING GIN (tsv)",
    ]


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _missing(exc: asyncpg.PostgresError) -> bool:
    """Whether `exc` says the server has no pgvector files (PostgreSQL 15 words it "is not
    available", with the control file in the detail; older ones name the file)."""
    detail = getattr(exc, "detail", None) or ""
    return "extension control file" in f"{exc} {detail}".lower()


def _texts(vectors: Sequence[Sequence[float]], dimensions: int) -> list[str]:
    """The vectors checked, in pgvector's text form."""
    return [vector_text(check_vector(v, dimensions)) for v in vectors]


class PostgresKnowledge(KnowledgeStore):
    """Knowledge bases in the schema of `db` (which the caller owns and closes)."""

    def __init__(self, db: PostgresDatabase, weights: Weights = DEFAULT_WEIGHTS) -> None:
        self.db = db
        self.weights = weights
        self._vector = "vector"  # the type and operator, schema-qualified once open
        self._distance = "<=>"

    async def open(self) -> None:
        """Create pgvector (in `public`: a tenant's schema may be dropped with everything in
        it) and the tables; PgvectorMissing when the server cannot."""
        for attempt in range(2):
            try:
                await self._create()
                return
            except (asyncpg.UniqueViolationError, asyncpg.DuplicateObjectError):
                # someone beside noroshi created the extension at the same moment
                if attempt:
                    raise
            except asyncpg.PostgresError as exc:
                if _missing(exc):
                    raise PgvectorMissing(
                        "PostgreSQL has no pgvector extension (CREATE EXTENSION vector "
                        "failed: could not open extension control file); install it on the "
                        "database server"
                    ) from exc
                raise

    async def _create(self) -> None:
        async with self.db.transaction() as tx:
            # concurrent openers take turns: CREATE … IF NOT EXISTS alone races
            await tx.execute("SELECT pg_advisory_xact_lock(?, 0)", (_SCHEMA_LOCK,))
            await tx.execute("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
            rows = await tx.fetch(
                "SELECT n.nspname FROM pg_extension e "
                "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
            )
            schema = _quote(rows[0][0])
            self._vector = f"{schema}.vector"
            self._distance = f"OPERATOR({schema}.<=>)"
            for statement in _schema(self._vector):
                await tx.execute(statement)
            # pgvector stores vectors EXTERNAL: out of line once a row passes 2 kB, and every
            # distance then reads the TOAST table. MAIN keeps them in the row while it fits.
            storage = await tx.fetch(
                "SELECT attstorage::text FROM pg_attribute "
                "WHERE attrelid = 'kb_chunks'::regclass AND attname = 'embedding'"
            )
            if storage[0][0] != "m":
                await tx.execute("ALTER TABLE kb_chunks ALTER COLUMN embedding SET STORAGE MAIN")

    async def close(self) -> None:
        """Nothing of its own to close: the database is the caller's."""

    async def create(self, kb: KnowledgeBase) -> bool:
        dimensions = int(kb.dimensions)
        if not 0 < dimensions <= MAX_DIMENSIONS:
            raise ValueError(f"dimensions must be 1 to {MAX_DIMENSIONS}, not {dimensions}")
        row = await self.db.fetchone(
            "INSERT INTO kb (name, embedding_model, dimensions, description, chunk_tokens, "
            "overlap_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO NOTHING RETURNING name",
            (
                kb.name,
                kb.embedding_model,
                dimensions,
                kb.description,
                kb.chunk_tokens,
                kb.overlap_tokens,
                kb.created_at,
            ),
        )
        return row is not None

    async def get(self, name: str) -> KnowledgeBase | None:
        row = await self.db.fetchone(f"SELECT {_KB_COLUMNS} FROM kb k WHERE k.name = ?", (name,))
        return base_from_row(row) if row else None

    async def list(self) -> builtins.list[KnowledgeBase]:
        rows = await self.db.fetch(f"SELECT {_KB_COLUMNS} FROM kb k ORDER BY k.name")
        return [base_from_row(r) for r in rows]

    async def delete(self, name: str) -> bool:
        # documents and their chunks go with it (ON DELETE CASCADE)
        row = await self.db.fetchone("DELETE FROM kb WHERE name = ? RETURNING name", (name,))
        return row is not None

    async def put_document(
        self, doc: StoredDocument, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]
    ) -> None:
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        metadata = msgspec.json.encode(doc.metadata).decode()
        row = await self.db.fetchone("SELECT dimensions FROM kb WHERE name = ?", (doc.kb,))
        if row is None:
            raise LookupError(f"no knowledge base named {doc.kb!r}")
        # CPU work in proportion to the document: off the event loop, and before the locks
        texts = await asyncio.to_thread(_texts, vectors, row[0])
        async with self.db.transaction() as tx:
            # FOR SHARE: the base cannot be deleted under us
            rows = await tx.fetch("SELECT dimensions FROM kb WHERE name = ? FOR SHARE", (doc.kb,))
            if not rows:
                raise LookupError(f"no knowledge base named {doc.kb!r}")
            if rows[0][0] != row[0]:  # deleted and made again meanwhile
                raise ValueError(f"knowledge base {doc.kb!r} changed to {rows[0][0]} dimensions")
            # two puts of one source take turns, or both would find nothing to replace
            await tx.execute(
                "SELECT pg_advisory_xact_lock(?, hashtext(?::text || chr(10) || ?::text))",
                (_SOURCE_LOCK, doc.kb, doc.source),
            )
            # the old chunks go with it (ON DELETE CASCADE), from the rows and both indexes
            await tx.execute(
                "DELETE FROM kb_documents WHERE kb = ? AND (source = ? OR id = ?)",
                (doc.kb, doc.source, doc.id),
            )
            await tx.execute(
                "INSERT INTO kb_documents (id, kb, source, title, content_hash, format, "
                "metadata, chunks, created_at) VALUES (?, ?, ?, ?, ?, ?, ?::jsonb, ?, ?)",
                (
                    doc.id,
                    doc.kb,
                    doc.source,
                    doc.title,
                    doc.content_hash,
                    doc.format,
                    metadata,
                    len(chunks),
                    doc.created_at,
                ),
            )
            await tx.executemany(
                "INSERT INTO kb_chunks (id, kb, document_id, idx, text, heading, tokens, "
                f"embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?::text::{self._vector})",
                [
                    (f"{doc.id}:{c.index}", doc.kb, doc.id, c.index, c.text, c.heading, c.tokens, v)
                    for c, v in zip(chunks, texts, strict=True)
                ],
            )

    async def get_document(self, kb: str, document_id: str) -> StoredDocument | None:
        row = await self.db.fetchone(
            f"SELECT {_DOC_COLUMNS} FROM kb_documents d WHERE d.kb = ? AND d.id = ?",
            (kb, document_id),
        )
        return document_from_row(row) if row else None

    async def find_source(self, kb: str, source: str) -> StoredDocument | None:
        row = await self.db.fetchone(
            f"SELECT {_DOC_COLUMNS} FROM kb_documents d WHERE d.kb = ? AND d.source = ?",
            (kb, source),
        )
        return document_from_row(row) if row else None

    async def list_documents(
        self, kb: str, limit: int = 100, offset: int = 0
    ) -> builtins.list[StoredDocument]:
        rows = await self.db.fetch(
            f"SELECT {_DOC_COLUMNS} FROM kb_documents d WHERE d.kb = ? "
            "ORDER BY d.created_at, d.id LIMIT ? OFFSET ?",
            (kb, max(0, min(limit, MAX_PAGE)), max(0, offset)),
        )
        return [document_from_row(r) for r in rows]

    async def delete_document(self, kb: str, document_id: str) -> bool:
        row = await self.db.fetchone(
            "DELETE FROM kb_documents WHERE kb = ? AND id = ? RETURNING id", (kb, document_id)
        )
        return row is not None

    async def search(
        self,
        kb: str,
        vector: Sequence[float] | None,
        text: str,
        k: int,
        mode: Mode = "hybrid",
        filter: Filter | None = None,
    ) -> builtins.list[Hit]:
        row = await self.db.fetchone("SELECT dimensions FROM kb WHERE name = ?", (kb,))
        if row is None:
            return []
        query = check_vector(vector, row[0]) if vector is not None else None
        # the search is exact, so the filter goes inside it: no candidate limit here
        where, where_args = "", []
        if filter:
            where = "AND d.metadata @> ?::jsonb"
            where_args = [msgspec.json.encode(filter).decode()]

        async def by_vector(values: builtins.list[float], n: int) -> Ranked:
            rows = await self.db.fetch(
                # MATERIALIZED: the query vector is parsed once, not once a row (which a
                # generic plan of this prepared statement would do)
                f"WITH q AS MATERIALIZED (SELECT ?::text::{self._vector} AS v) "
                f"SELECT c.id, c.embedding {self._distance} q.v AS distance "
                "FROM q, kb_chunks c "
                f"JOIN kb_documents d ON d.id = c.document_id WHERE c.kb = ? {where} "
                "ORDER BY distance, c.id LIMIT ?",
                [vector_text(values), kb, *where_args, n],
            )
            return [(r[0], 1.0 - float(r[1])) for r in rows]

        async def by_text(terms: builtins.list[str], n: int) -> Ranked:
            rows = await self.db.fetch(
                "SELECT c.id, ts_rank_cd(c.tsv, q.q) AS score "
                "FROM websearch_to_tsquery('english', ?) q (q), kb_chunks c "
                "JOIN kb_documents d ON d.id = c.document_id "
                f"WHERE c.kb = ? AND c.tsv @@ q.q {where} "
                "ORDER BY score DESC, c.id LIMIT ?",
                [tsquery_text(terms) or "", kb, *where_args, n],
            )
            return [(r[0], float(r[1])) for r in rows]

        ranked = await rank(
            k=k,
            mode=mode,
            vector=query,
            text=text,
            by_vector=by_vector,
            by_text=by_text,
            weights=self.weights,
        )
        if not ranked:
            return []
        rows = await self.db.fetch(
            "SELECT c.id, c.id, c.document_id, c.text, c.heading, d.source, d.title, "
            "d.metadata::text FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id "
            "WHERE c.id = ANY(?::text[])",
            [[key for key, _ in ranked]],
        )
        return hits_in_order(ranked, rows)
