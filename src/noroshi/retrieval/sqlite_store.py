"""Knowledge bases in a SQLite file of their own: rows in plain tables, text in one FTS5
index, vectors in one sqlite-vec table per base (each base has its own dimensions).

Python's sqlite3 may not load extensions, so the connections are sqlean's (a drop-in
sqlite3 built with extension loading), run by aiosqlite on their own threads. One connection
writes, in transactions that take turns; another reads, so a search never waits behind an
ingest (WAL lets it read the last commit).
"""

from __future__ import annotations

import asyncio
import builtins
import importlib.util
import os
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec
import sqlean  # type: ignore[import-untyped]

from noroshi.files import private_file
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
    candidate_depth,
    check_vector,
    fts5_query,
    rank,
)

__all__ = ["SQLiteKnowledge"]

Row = tuple[Any, ...]
Ranked = list[tuple[int, float]]  # chunk rowids, best first, with their scores
MAX_DIMENSIONS = 8192  # sqlite-vec's own bound for float vectors
MAX_PAGE = 1000

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS kb (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- names its vector table, kb_vec_<id>: never reused
        name TEXT NOT NULL UNIQUE,
        embedding_model TEXT NOT NULL,
        dimensions INTEGER NOT NULL,
        description TEXT NOT NULL,
        chunk_tokens INTEGER NOT NULL,
        overlap_tokens INTEGER NOT NULL,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS kb_documents (
        id TEXT PRIMARY KEY,
        kb_id INTEGER NOT NULL REFERENCES kb (id),
        source TEXT NOT NULL,
        title TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        format TEXT NOT NULL,
        metadata TEXT NOT NULL,
        chunks INTEGER NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (kb_id, source)
    )""",
    "CREATE INDEX IF NOT EXISTS kb_documents_created ON kb_documents (kb_id, created_at, id)",
    """CREATE TABLE IF NOT EXISTS kb_chunks (
        rowid INTEGER PRIMARY KEY,  -- shared with the FTS5 index and the vector table
        id TEXT NOT NULL UNIQUE,
        kb_id INTEGER NOT NULL REFERENCES kb (id),
        document_id TEXT NOT NULL REFERENCES kb_documents (id),
        idx INTEGER NOT NULL,
        text TEXT NOT NULL,
        heading TEXT NOT NULL,
        tokens INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS kb_chunks_document ON kb_chunks (document_id)",
    # external content: the index keeps no copy of the text; triggers keep it in step
    """CREATE VIRTUAL TABLE IF NOT EXISTS kb_fts USING fts5(
        text, heading, content='kb_chunks', content_rowid='rowid',
        tokenize='porter unicode61'
    )""",
    """CREATE TRIGGER IF NOT EXISTS kb_chunks_indexed AFTER INSERT ON kb_chunks BEGIN
        INSERT INTO kb_fts (rowid, text, heading) VALUES (new.rowid, new.text, new.heading);
    END""",
    """CREATE TRIGGER IF NOT EXISTS kb_chunks_unindexed AFTER DELETE ON kb_chunks BEGIN
        INSERT INTO kb_fts (kb_fts, rowid, text, heading)
        VALUES ('delete', old.rowid, old.text, old.heading);
    END""",
]

_KB_COLUMNS = (
    "k.name, k.embedding_model, k.dimensions, k.description, k.chunk_tokens, k.overlap_tokens, "
    "k.created_at, (SELECT COUNT(*) FROM kb_documents d WHERE d.kb_id = k.id), "
    "(SELECT COALESCE(SUM(d.chunks), 0) FROM kb_documents d WHERE d.kb_id = k.id)"
)
_DOC_COLUMNS = (
    "d.id, k.name, d.source, d.title, d.content_hash, d.format, d.metadata, d.chunks, d.created_at"
)


def vector_table(kb_id: int) -> str:
    """The base's vector table: named from its integer id, never from user text."""
    return f"kb_vec_{int(kb_id)}"


def _vec_extension() -> str:
    """The sqlite-vec extension's path, found without importing its package, which imports
    numpy when numpy is there (a tenth of a second and 15 MiB at every start)."""
    spec = importlib.util.find_spec("sqlite_vec")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("sqlite-vec is not installed")
    return os.path.join(spec.submodule_search_locations[0], "vec0")


def _float32(vector: Sequence[float]) -> bytes:
    """sqlite-vec's float32 form of a vector."""
    return struct.pack(f"{len(vector)}f", *vector)


def _connect(path: Path) -> Any:
    conn = sqlean.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        conn.enable_load_extension(True)
        conn.load_extension(_vec_extension())
        conn.enable_load_extension(False)
        conn.execute("PRAGMA busy_timeout=5000")  # first: switching to WAL waits for others
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable enough in WAL
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


async def _open(path: Path) -> aiosqlite.Connection:
    return await aiosqlite.Connection(lambda: _connect(path), 64)


def filter_sql(filter: Filter | None) -> tuple[str, list[Any]]:
    """Conditions on `d` (kb_documents) that keep documents whose metadata has each key equal
    to its value, JSON type included (true is not 1); keys and values are parameters."""
    conditions: list[str] = []
    args: list[Any] = []
    for key, value in (filter or {}).items():
        if isinstance(value, bool):
            conditions.append("j.type = ?")
            args += [key, "true" if value else "false"]
        elif isinstance(value, int | float):
            conditions.append("j.type IN ('integer', 'real') AND j.value = ?")
            args += [key, value]
        else:
            conditions.append("j.type = 'text' AND j.value = ?")
            args += [key, str(value)]
    sql = "".join(
        f" AND EXISTS (SELECT 1 FROM json_each(d.metadata) j WHERE j.key = ? AND {c})"
        for c in conditions
    )
    return sql, args


def _blobs(vectors: Sequence[Sequence[float]], dimensions: int) -> list[bytes]:
    """The vectors checked, in sqlite-vec's float32 form."""
    return [_float32(check_vector(v, dimensions)) for v in vectors]


class SQLiteKnowledge(KnowledgeStore):
    """Knowledge bases in the SQLite file at `path`, beside (not inside) the main store."""

    def __init__(self, path: Path, weights: Weights = DEFAULT_WEIGHTS) -> None:
        self.path = path
        self.weights = weights
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        if self._writer is not None:  # open already: its connections stay the only ones
            return
        await asyncio.to_thread(private_file, self.path)
        self._writer = await _open(self.path)
        try:
            async with self._transaction() as tx:
                for statement in SCHEMA:
                    await tx.execute(statement)
            self._reader = await _open(self.path)
        except BaseException:
            await self.close()  # so that a later open() starts again
            raise

    async def close(self) -> None:
        async with self._write_lock:
            for conn in (self._reader, self._writer):
                if conn is not None:
                    await conn.close()
            self._reader = self._writer = None

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer, in a write transaction that no other caller's statement enters.
        IMMEDIATE takes the file's write lock at once, so two writers never deadlock."""
        async with self._write_lock:
            conn = self._writer
            if conn is None:
                raise RuntimeError("the knowledge store is not open")
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                await conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> builtins.list[Row]:
        if self._reader is None:
            raise RuntimeError("the knowledge store is not open")
        return [tuple(r) for r in await self._reader.execute_fetchall(sql, args)]

    async def _fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        rows = await self._fetch(sql, args)
        return rows[0] if rows else None

    async def create(self, kb: KnowledgeBase) -> bool:
        dimensions = int(kb.dimensions)
        if not 0 < dimensions <= MAX_DIMENSIONS:
            raise ValueError(f"dimensions must be 1 to {MAX_DIMENSIONS}, not {dimensions}")
        async with self._transaction() as tx:
            rows = await tx.execute_fetchall(
                "INSERT INTO kb (name, embedding_model, dimensions, description, chunk_tokens, "
                "overlap_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING RETURNING id",
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
            rows = list(rows)
            if not rows:
                return False
            await tx.execute(
                f"CREATE VIRTUAL TABLE {vector_table(rows[0][0])} USING vec0("
                f"embedding float[{dimensions}] distance_metric=cosine)"
            )
        return True

    async def get(self, name: str) -> KnowledgeBase | None:
        row = await self._fetchone(f"SELECT {_KB_COLUMNS} FROM kb k WHERE k.name = ?", (name,))
        return base_from_row(row) if row else None

    async def list(self) -> builtins.list[KnowledgeBase]:
        rows = await self._fetch(f"SELECT {_KB_COLUMNS} FROM kb k ORDER BY 1")
        return [base_from_row(r) for r in rows]

    async def delete(self, name: str) -> bool:
        async with self._transaction() as tx:
            rows = list(await tx.execute_fetchall("SELECT id FROM kb WHERE name = ?", (name,)))
            if not rows:
                return False
            kb_id = rows[0][0]
            await tx.execute(f"DROP TABLE IF EXISTS {vector_table(kb_id)}")
            await tx.execute("DELETE FROM kb_chunks WHERE kb_id = ?", (kb_id,))
            await tx.execute("DELETE FROM kb_documents WHERE kb_id = ?", (kb_id,))
            await tx.execute("DELETE FROM kb WHERE id = ?", (kb_id,))
        return True

    async def put_document(
        self, doc: StoredDocument, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]
    ) -> None:
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        metadata = msgspec.json.encode(doc.metadata).decode()
        row = await self._fetchone("SELECT dimensions FROM kb WHERE name = ?", (doc.kb,))
        if row is None:
            raise LookupError(f"no knowledge base named {doc.kb!r}")
        # CPU work in proportion to the document: off the event loop, and before the lock
        blobs = await asyncio.to_thread(_blobs, vectors, row[0])
        async with self._transaction() as tx:
            rows = list(
                await tx.execute_fetchall("SELECT id, dimensions FROM kb WHERE name = ?", (doc.kb,))
            )
            if not rows:
                raise LookupError(f"no knowledge base named {doc.kb!r}")
            kb_id, dimensions = rows[0]
            if dimensions != row[0]:  # deleted and made again meanwhile
                raise ValueError(f"knowledge base {doc.kb!r} changed to {dimensions} dimensions")
            old = await tx.execute_fetchall(
                "SELECT id FROM kb_documents WHERE kb_id = ? AND (source = ? OR id = ?)",
                (kb_id, doc.source, doc.id),
            )
            for (old_id,) in old:
                await self._remove(tx, kb_id, old_id)
            await tx.execute(
                "INSERT INTO kb_documents (id, kb_id, source, title, content_hash, format, "
                "metadata, chunks, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    doc.id,
                    kb_id,
                    doc.source,
                    doc.title,
                    doc.content_hash,
                    doc.format,
                    metadata,
                    len(chunks),
                    doc.created_at,
                ),
            )
            # rowids of our own, so the vectors can be written beside them in one batch: the
            # write lock is ours, nobody else takes one
            ((top,),) = await tx.execute_fetchall("SELECT COALESCE(MAX(rowid), 0) FROM kb_chunks")
            await tx.executemany(
                "INSERT INTO kb_chunks (rowid, id, kb_id, document_id, idx, text, heading, tokens) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        top + i,
                        f"{doc.id}:{c.index}",
                        kb_id,
                        doc.id,
                        c.index,
                        c.text,
                        c.heading,
                        c.tokens,
                    )
                    for i, c in enumerate(chunks, 1)
                ],
            )
            await tx.executemany(
                f"INSERT INTO {vector_table(kb_id)} (rowid, embedding) VALUES (?, ?)",
                [(top + i, blob) for i, blob in enumerate(blobs, 1)],
            )

    @staticmethod
    async def _remove(tx: aiosqlite.Connection, kb_id: int, document_id: str) -> None:
        """A document and its chunks, from the rows and both indexes (the trigger does FTS)."""
        rowids = await tx.execute_fetchall(
            "SELECT rowid FROM kb_chunks WHERE document_id = ?", (document_id,)
        )
        # one rowid at a time: vec0 looks a rowid up, but scans for `rowid IN (SELECT …)`
        await tx.executemany(f"DELETE FROM {vector_table(kb_id)} WHERE rowid = ?", list(rowids))
        await tx.execute("DELETE FROM kb_chunks WHERE document_id = ?", (document_id,))
        await tx.execute("DELETE FROM kb_documents WHERE id = ?", (document_id,))

    async def get_document(self, kb: str, document_id: str) -> StoredDocument | None:
        row = await self._fetchone(
            f"SELECT {_DOC_COLUMNS} FROM kb_documents d JOIN kb k ON k.id = d.kb_id "
            "WHERE k.name = ? AND d.id = ?",
            (kb, document_id),
        )
        return document_from_row(row) if row else None

    async def find_source(self, kb: str, source: str) -> StoredDocument | None:
        row = await self._fetchone(
            f"SELECT {_DOC_COLUMNS} FROM kb_documents d JOIN kb k ON k.id = d.kb_id "
            "WHERE k.name = ? AND d.source = ?",
            (kb, source),
        )
        return document_from_row(row) if row else None

    async def list_documents(
        self, kb: str, limit: int = 100, offset: int = 0
    ) -> builtins.list[StoredDocument]:
        rows = await self._fetch(
            f"SELECT {_DOC_COLUMNS} FROM kb_documents d JOIN kb k ON k.id = d.kb_id "
            "WHERE k.name = ? ORDER BY d.created_at, d.id LIMIT ? OFFSET ?",
            (kb, max(0, min(limit, MAX_PAGE)), max(0, offset)),
        )
        return [document_from_row(r) for r in rows]

    async def delete_document(self, kb: str, document_id: str) -> bool:
        async with self._transaction() as tx:
            rows = list(
                await tx.execute_fetchall(
                    "SELECT k.id FROM kb_documents d JOIN kb k ON k.id = d.kb_id "
                    "WHERE k.name = ? AND d.id = ?",
                    (kb, document_id),
                )
            )
            if not rows:
                return False
            await self._remove(tx, rows[0][0], document_id)
        return True

    async def search(
        self,
        kb: str,
        vector: Sequence[float] | None,
        text: str,
        k: int,
        mode: Mode = "hybrid",
        filter: Filter | None = None,
    ) -> builtins.list[Hit]:
        row = await self._fetchone("SELECT id, dimensions FROM kb WHERE name = ?", (kb,))
        if row is None:
            return []
        kb_id, dimensions = row
        query = check_vector(vector, dimensions) if vector is not None else None
        where, where_args = filter_sql(filter)

        async def by_vector(values: builtins.list[float], n: int) -> Ranked:
            # sqlite-vec's KNN takes no join condition: with a filter, ask for more neighbours
            # and keep those that pass (fewer than n may)
            knn = candidate_depth(n) if where else n
            rows = await self._fetch(
                f"WITH knn AS MATERIALIZED (SELECT rowid, distance FROM {vector_table(kb_id)} "
                "WHERE embedding MATCH ? AND k = ?) "
                "SELECT knn.rowid, 1.0 - knn.distance FROM knn "
                "JOIN kb_chunks c ON c.rowid = knn.rowid "
                f"JOIN kb_documents d ON d.id = c.document_id WHERE 1 {where} "
                "ORDER BY knn.distance, knn.rowid LIMIT ?",
                [_float32(values), knn, *where_args, n],
            )
            return [(r[0], r[1]) for r in rows]

        async def by_text(terms: builtins.list[str], n: int) -> Ranked:
            rows = await self._fetch(
                "SELECT c.rowid, -kb_fts.rank FROM kb_fts "
                "JOIN kb_chunks c ON c.rowid = kb_fts.rowid "
                "JOIN kb_documents d ON d.id = c.document_id "
                f"WHERE kb_fts MATCH ? AND c.kb_id = ? {where} "
                "ORDER BY kb_fts.rank, c.rowid LIMIT ?",
                [fts5_query(terms), kb_id, *where_args, n],
            )
            return [(r[0], r[1]) for r in rows]

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
        rows = await self._fetch(
            "SELECT c.rowid, c.id, c.document_id, c.text, c.heading, d.source, d.title, "
            "d.metadata FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id "
            f"WHERE c.rowid IN ({', '.join('?' * len(ranked))})",
            [key for key, _ in ranked],
        )
        return hits_in_order(ranked, rows)
