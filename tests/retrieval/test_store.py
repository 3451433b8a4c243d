"""Both knowledge stores, the same cases: SQLite (sqlite-vec, FTS5) and PostgreSQL (pgvector,
tsvector). A small corpus with hand-made 4-d vectors, chosen so that vector and text rankings
disagree and hybrid search has to fuse them.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlean
import sqlite_vec

from noroshi.retrieval.base import Chunk, KnowledgeBase, KnowledgeStore, StoredDocument
from noroshi.retrieval.postgres_store import PgvectorMissing, PostgresKnowledge
from noroshi.retrieval.ranking import (
    MAX_K,
    Weights,
    candidate_depth,
    fts5_query,
    fuse,
    query_terms,
    tsquery_text,
)
from noroshi.retrieval.sqlite_store import SQLiteKnowledge, vector_table
from noroshi.store.database import PostgresDatabase, open_database

# the fusion arithmetic below is checked with equal weights; the default weighs text lower
PLAIN_RRF = Weights(vector=1.0, text=1.0)


def unit(*xs: float) -> list[float]:
    norm = math.sqrt(sum(x * x for x in xs))
    return [x / norm for x in xs]


# chunk: (text, heading, vector). The query below is "rate limits budgets" with QUERY_VECTOR:
#   by vector: embeddings (X) first, budgets (H) second, key limits (Y) last
#   by text:   key limits (Y) first, budgets (H) second, the rest do not match
#   hybrid:    H (second in both) beats Y and X (first in one, far or absent in the other)
CORPUS: dict[str, tuple[dict[str, Any], list[tuple[str, str, list[float]]]]] = {
    "a.md": (
        {"lang": "en", "team": "infra", "public": True, "version": 2},
        [
            ("Install the gateway on Debian with apt", "Install > Debian", unit(1, 0, 0, 0)),
            (
                "Rate limits and budgets: rate limits per key, budgets per team",
                "Rate limits",
                unit(0, -0.6, 0.8, 0),
            ),  # Y
        ],
    ),
    "b.md": (
        {"lang": "pt", "team": "infra", "public": False, "version": 3},
        [
            ("Instale o gateway no Debian", "Instalar", unit(0.8, 0.6, 0, 0)),
            ("Streaming responses arrive as server-sent events", "Streaming", unit(0, 0, 1, 0)),
        ],
    ),
    "c.md": (
        {"lang": "en", "team": "ml"},
        [
            (
                "Embeddings turn text into vectors for semantic search",
                "Embeddings",
                unit(0, 0, 0, 1),
            ),  # X
            ("Budgets protect upstream providers", "Budgets", unit(0, 0.6, 0, 0.8)),  # H
        ],
    ),
}
QUERY = "rate limits budgets"
QUERY_VECTOR = unit(0, 0.3, 0, 0.95)
X, Y, H = "doc-c.md:0", "doc-a.md:1", "doc-c.md:1"

HOSTILE = [
    'what\'s "C++" -- OR (x',
    '"',
    "'",
    "*",
    "-",
    "^",
    "NEAR(",
    "AND",
    "OR",
    "or or or",
    "NOT",
    ":",
    "a:b",
    "col:rate",
    "rate*",
    "(((",
    ")",
    "!@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "\\",
    "\x00rate\x00",
    "rate\u0000limits",
    "日本語のテキスト",
    "émoji 🚀 rate",
    "a" * 5000,
    "rate " * 2000,
    "x' OR '1'='1",
    "); DROP TABLE kb_chunks; --",
    "<->",
    "!!rate & | limits",
]


def base(name: str = "docs", dimensions: int = 4) -> KnowledgeBase:
    return KnowledgeBase(
        name=name, embedding_model="hand-made", dimensions=dimensions, created_at=time.time()
    )


def document(
    source: str, kb: str = "docs", metadata: dict[str, Any] | None = None, id: str = ""
) -> StoredDocument:
    return StoredDocument(
        id=id or f"doc-{source}",
        kb=kb,
        source=source,
        title=source.upper(),
        content_hash=f"hash-{source}",
        format="markdown",
        metadata=metadata or {},
        created_at=time.time(),
    )


def chunks(parts: Sequence[tuple[str, str, list[float]]]) -> tuple[list[Chunk], list[list[float]]]:
    return (
        [
            Chunk(index=i, text=t, heading=h, tokens=len(t.split()))
            for i, (t, h, _) in enumerate(parts)
        ],
        [v for _, _, v in parts],
    )


async def load(store: KnowledgeStore, kb: str = "docs") -> None:
    for source, (metadata, parts) in CORPUS.items():
        await store.put_document(document(source, kb, metadata), *chunks(parts))


def unavailable(reason: str) -> None:
    """Skip, or fail under CI=true (like a missing service: CI must not pass by skipping)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true needs it)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return "sqlite"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(target: str, tmp_path: Path) -> AsyncIterator[KnowledgeStore]:
    if target == "sqlite":
        sqlite = SQLiteKnowledge(tmp_path / "knowledge.sqlite3", PLAIN_RRF)
        await sqlite.open()
        yield sqlite
        await sqlite.close()
        return
    db = await open_database(target, tmp_path)
    assert isinstance(db, PostgresDatabase)
    pg = PostgresKnowledge(db, PLAIN_RRF)
    try:
        await pg.open()
    except PgvectorMissing as exc:
        await db.close()
        unavailable(f"pgvector is not installed in PostgreSQL: {exc.__cause__!r}")
    yield pg
    await pg.close()
    await db.close()


@pytest.fixture
async def corpus(store: KnowledgeStore) -> KnowledgeStore:
    assert await store.create(base())
    await load(store)
    return store


async def indexed(store: KnowledgeStore, kb: str, word: str) -> tuple[int, int, int]:
    """What the store holds for a base, index by index: chunk rows, vectors, and chunks the
    text index finds `word` in."""
    if isinstance(store, SQLiteKnowledge):

        def count() -> tuple[int, int, int]:
            conn = sqlean.connect(str(store.path))
            try:
                conn.enable_load_extension(True)
                sqlite_vec.load(conn)
                (kb_id,) = conn.execute("SELECT id FROM kb WHERE name = ?", (kb,)).fetchone()
                (rows,) = conn.execute(
                    "SELECT COUNT(*) FROM kb_chunks WHERE kb_id = ?", (kb_id,)
                ).fetchone()
                (vectors,) = conn.execute(f"SELECT COUNT(*) FROM {vector_table(kb_id)}").fetchone()
                (text,) = conn.execute(
                    "SELECT COUNT(*) FROM kb_fts JOIN kb_chunks c ON c.rowid = kb_fts.rowid "
                    "WHERE kb_fts MATCH ? AND c.kb_id = ?",
                    (f'"{word}"', kb_id),
                ).fetchone()
                # the external-content index agrees with its rows, entry for entry
                conn.execute("INSERT INTO kb_fts (kb_fts) VALUES ('integrity-check')")
                return rows, vectors, text
            finally:
                conn.close()

        return await asyncio.to_thread(count)
    assert isinstance(store, PostgresKnowledge)
    row = await store.db.fetchone(
        "SELECT COUNT(*), COUNT(embedding), "
        "COUNT(*) FILTER (WHERE tsv @@ plainto_tsquery('english', ?)) FROM kb_chunks WHERE kb = ?",
        (word, kb),
    )
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def ids(hits: Sequence[Any]) -> list[str]:
    return [h.chunk_id for h in hits]


# -- bases ----------------------------------------------------------------------------------


async def test_bases_create_get_list_delete(store: KnowledgeStore) -> None:
    assert await store.list() == []
    assert await store.get("docs") is None
    assert await store.create(base("docs"))
    assert not await store.create(base("docs", dimensions=8))  # left as it is
    assert await store.create(base("other", dimensions=3))
    docs = await store.get("docs")
    assert docs is not None
    assert (docs.name, docs.dimensions, docs.documents, docs.chunks) == ("docs", 4, 0, 0)
    assert docs.embedding_model == "hand-made" and docs.chunk_tokens == 256
    await load(store)
    docs = await store.get("docs")
    assert docs is not None and (docs.documents, docs.chunks) == (3, 6)
    listed = {kb.name: (kb.documents, kb.chunks) for kb in await store.list()}
    assert listed == {"docs": (3, 6), "other": (0, 0)}
    assert await store.delete("docs")
    assert not await store.delete("docs")
    assert await store.get("docs") is None
    assert [kb.name for kb in await store.list()] == ["other"]
    # a base of the same name starts empty: nothing of the old one is left anywhere
    assert await store.create(base("docs"))
    assert await indexed(store, "docs", "budgets") == (0, 0, 0)
    assert await store.search("docs", QUERY_VECTOR, QUERY, 10) == []


async def test_bad_dimensions_are_refused(store: KnowledgeStore) -> None:
    with pytest.raises(ValueError):
        await store.create(base("zero", dimensions=0))
    assert await store.get("zero") is None


async def test_open_again_is_harmless(store: KnowledgeStore, corpus: KnowledgeStore) -> None:
    await store.open()
    docs = await store.get("docs")
    assert docs is not None and docs.chunks == 6
    assert ids(await store.search("docs", QUERY_VECTOR, QUERY, 1))[0] == H


# -- documents ------------------------------------------------------------------------------


async def test_documents(corpus: KnowledgeStore) -> None:
    store = corpus
    doc = await store.get_document("docs", "doc-a.md")
    assert doc is not None
    assert (doc.kb, doc.source, doc.title, doc.chunks) == ("docs", "a.md", "A.MD", 2)
    assert doc.metadata == {"lang": "en", "team": "infra", "public": True, "version": 2}
    assert await store.get_document("docs", "nope") is None
    assert await store.get_document("other", "doc-a.md") is None
    found = await store.find_source("docs", "b.md")
    assert found is not None and found.id == "doc-b.md"
    assert await store.find_source("docs", "z.md") is None
    listed = await store.list_documents("docs")
    assert [d.source for d in listed] == ["a.md", "b.md", "c.md"]
    assert [d.source for d in await store.list_documents("docs", limit=1, offset=1)] == ["b.md"]
    assert await store.list_documents("docs", limit=0) == []
    assert await store.list_documents("docs", limit=-5, offset=-5) == []
    assert await store.list_documents("nope") == []


async def test_put_into_a_missing_base_fails(store: KnowledgeStore) -> None:
    with pytest.raises(LookupError):
        await store.put_document(document("a.md", kb="nope"), *chunks(CORPUS["a.md"][1]))


async def test_bad_vectors_are_refused(corpus: KnowledgeStore) -> None:
    store = corpus
    parts = [Chunk(index=0, text="t", heading="", tokens=1)]
    for bad in ([1.0, 0.0, 0.0], [0.0] * 4, [math.nan, 1, 0, 0], [math.inf, 0, 0, 0]):
        with pytest.raises(ValueError):
            await store.put_document(document("a.md"), parts, [bad])
    with pytest.raises(ValueError):
        await store.put_document(document("a.md"), parts, [])
    # the refused puts changed nothing
    doc = await store.find_source("docs", "a.md")
    assert doc is not None and doc.chunks == 2
    assert await indexed(store, "docs", "debian") == (6, 6, 2)


@pytest.mark.parametrize("same_id", [True, False])
async def test_replace_leaves_no_old_chunks(corpus: KnowledgeStore, same_id: bool) -> None:
    store = corpus
    assert await indexed(store, "docs", "debian") == (6, 6, 2)
    new_id = "doc-a.md" if same_id else "doc-a2"
    replacement = [("Upgrading noroshi keeps the data directory", "Upgrade", unit(0, 0, 0.6, 0.8))]
    await store.put_document(
        document("a.md", metadata={"lang": "en"}, id=new_id), *chunks(replacement)
    )
    # a.md had two chunks, one about Debian; now it has one, about upgrades
    assert await indexed(store, "docs", "debian") == (5, 5, 1)
    assert await indexed(store, "docs", "upgrading") == (5, 5, 1)
    docs = await store.get("docs")
    assert docs is not None and (docs.documents, docs.chunks) == (3, 5)
    assert [d.id for d in await store.list_documents("docs") if d.source == "a.md"] == [new_id]
    if not same_id:
        assert await store.get_document("docs", "doc-a.md") is None
    # nothing old in any ranking: the old Debian chunk's own vector finds other chunks
    hits = await store.search("docs", unit(1, 0, 0, 0), "", 10, "vector")
    assert len(hits) == 5 and hits[0].chunk_id == "doc-b.md:0"
    assert "Install the gateway on Debian with apt" not in [h.text for h in hits]
    assert ids(await store.search("docs", None, "apt debian install", 10, "text")) == ["doc-b.md:0"]
    assert ids(await store.search("docs", None, "upgrading", 10, "text")) == [f"{new_id}:0"]


async def test_delete_document(corpus: KnowledgeStore) -> None:
    store = corpus
    assert await store.delete_document("docs", "doc-c.md")
    assert not await store.delete_document("docs", "doc-c.md")
    assert not await store.delete_document("other", "doc-a.md")
    assert await store.get_document("docs", "doc-c.md") is None
    assert await indexed(store, "docs", "budgets") == (4, 4, 1)
    assert await indexed(store, "docs", "embeddings") == (4, 4, 0)
    hits = await store.search("docs", QUERY_VECTOR, QUERY, 10)
    assert not {X, H} & set(ids(hits))
    docs = await store.get("docs")
    assert docs is not None and (docs.documents, docs.chunks) == (2, 4)


# -- search ---------------------------------------------------------------------------------


async def test_each_mode_ranks_its_own_way(corpus: KnowledgeStore) -> None:
    store = corpus
    by_vector = await store.search("docs", QUERY_VECTOR, QUERY, 6, "vector")
    assert ids(by_vector)[:2] == [X, H] and ids(by_vector)[-1] == Y and len(by_vector) == 6
    assert by_vector[0].score == pytest.approx(0.953, abs=0.01)  # cosine similarity
    assert [h.score for h in by_vector] == sorted((h.score for h in by_vector), reverse=True)
    by_text = await store.search("docs", QUERY_VECTOR, QUERY, 6, "text")
    assert ids(by_text) == [Y, H]
    assert by_text[0].score >= by_text[1].score
    hybrid = await store.search("docs", QUERY_VECTOR, QUERY, 6, "hybrid")
    assert ids(hybrid)[:3] == [H, Y, X]
    assert hybrid[0].score == pytest.approx(2 / 62)
    assert hybrid[1].score == pytest.approx(1 / 61 + 1 / 66)
    assert hybrid[2].score == pytest.approx(1 / 61)
    assert len(hybrid) == 6  # every chunk has a vector rank
    top = hybrid[0]
    assert (top.document_id, top.source, top.title, top.heading) == (
        "doc-c.md",
        "c.md",
        "C.MD",
        "Budgets",
    )
    assert top.text == "Budgets protect upstream providers"
    assert top.metadata == {"lang": "en", "team": "ml"}


async def test_hybrid_without_a_vector_is_text_alone(corpus: KnowledgeStore) -> None:
    hits = await corpus.search("docs", None, QUERY, 5)
    assert ids(hits) == [Y, H]
    assert [h.score for h in hits] == pytest.approx([1 / 61, 1 / 62])
    # and without text, vector alone
    assert ids(await corpus.search("docs", QUERY_VECTOR, "", 2))[:2] == [X, H]


async def test_text_matches_headings_and_stems(corpus: KnowledgeStore) -> None:
    assert ids(await corpus.search("docs", None, "streaming", 5, "text")) == ["doc-b.md:1"]
    # "Instalar" only in the heading; "protecting" stems to what "protect" does
    assert ids(await corpus.search("docs", None, "instalar", 5, "text")) == ["doc-b.md:0"]
    assert ids(await corpus.search("docs", None, "protecting", 5, "text")) == [H]


async def test_filters(corpus: KnowledgeStore) -> None:
    store = corpus

    async def find(filter: dict[str, Any], mode: Any = "hybrid") -> set[str]:
        return set(ids(await store.search("docs", QUERY_VECTOR, QUERY, 10, mode, filter)))

    a = {"doc-a.md:0", "doc-a.md:1"}
    b = {"doc-b.md:0", "doc-b.md:1"}
    c = {X, H}
    assert await find({"lang": "pt"}) == b
    assert await find({"lang": "pt"}, "vector") == b
    assert await find({"lang": "pt"}, "text") == set()
    assert await find({"team": "infra"}) == a | b
    assert await find({"team": "infra", "lang": "en"}) == a
    assert await find({"team": "ml"}, "text") == {H}
    assert await find({"public": True}) == a
    assert await find({"public": False}) == b
    assert await find({"public": 1}) == set()  # true is not 1
    assert await find({"version": 2}) == a
    assert await find({"version": 2.0}) == a  # numbers compare as numbers
    assert await find({"version": "2"}) == set()
    assert await find({"missing": "x"}) == set()
    assert await find({"a'b\"c) --": "x'); DROP TABLE kb; --"}) == set()
    assert await find({}) == a | b | c
    # the ranking order holds within a filter
    ranked = ids(await store.search("docs", QUERY_VECTOR, QUERY, 10, "vector", {"lang": "en"}))
    assert ranked[0] == X and len(ranked) == 4


async def test_k_bounds(corpus: KnowledgeStore) -> None:
    store = corpus
    for mode in ("vector", "text", "hybrid"):
        assert await store.search("docs", QUERY_VECTOR, QUERY, 0, mode) == []  # type: ignore[arg-type]
        assert await store.search("docs", QUERY_VECTOR, QUERY, -3, mode) == []  # type: ignore[arg-type]
        assert len(await store.search("docs", QUERY_VECTOR, QUERY, 1, mode)) == 1  # type: ignore[arg-type]
    assert len(await store.search("docs", QUERY_VECTOR, QUERY, 10**9, "vector")) == 6
    assert len(await store.search("docs", QUERY_VECTOR, QUERY, 10**9, "hybrid")) == 6
    assert len(await store.search("docs", QUERY_VECTOR, QUERY, 3, "hybrid")) == 3


async def test_search_mistakes(corpus: KnowledgeStore) -> None:
    store = corpus
    assert await store.search("nope", QUERY_VECTOR, QUERY, 5) == []
    with pytest.raises(ValueError):
        await store.search("docs", None, QUERY, 5, "vector")
    with pytest.raises(ValueError):
        await store.search("docs", [1.0, 0.0], QUERY, 5)
    with pytest.raises(ValueError):
        await store.search("docs", [0.0] * 4, QUERY, 5)
    with pytest.raises(ValueError):
        await store.search("docs", QUERY_VECTOR, QUERY, 5, "fuzzy")  # type: ignore[arg-type]


async def test_hostile_queries_never_raise(corpus: KnowledgeStore) -> None:
    for query in HOSTILE:
        for mode in ("text", "hybrid"):
            hits = await corpus.search("docs", None, query, 5, mode)  # type: ignore[arg-type]
            assert all(h.chunk_id for h in hits), query
    # the words inside survive; the syntax does not
    assert ids(await corpus.search("docs", None, 'what\'s "rate" -- OR (x', 5, "text"))[0] == Y
    assert ids(await corpus.search("docs", None, "!!rate & | limits", 5, "text"))[0] == Y
    # all punctuation: no text hits rather than an error
    assert await corpus.search("docs", None, "!@#$%^&*()\"'-", 5, "text") == []
    assert await corpus.search("docs", None, "", 5, "text") == []
    # the tables are still there
    docs = await corpus.get("docs")
    assert docs is not None and docs.chunks == 6


async def test_bases_are_isolated(corpus: KnowledgeStore) -> None:
    store = corpus
    assert await store.create(base("other", dimensions=3))
    await store.put_document(
        document("limits.md", kb="other", metadata={"lang": "pt"}),
        *chunks(
            [("Rate limits and budgets, rate limits budgets", "Rate limits budgets", unit(1, 0, 0))]
        ),
    )
    # the same source in two bases: two documents
    await store.put_document(
        document("a.md", kb="other", id="other-a"), *chunks([("x", "", unit(0, 1, 0))])
    )
    other = await store.get("other")
    docs = await store.get("docs")
    assert other is not None and (other.documents, other.chunks) == (2, 2)
    assert docs is not None and (docs.documents, docs.chunks) == (3, 6)
    assert ids(await store.search("docs", None, QUERY, 10, "text")) == [Y, H]
    assert ids(await store.search("other", None, QUERY, 10, "text")) == ["doc-limits.md:0"]
    assert set(ids(await store.search("docs", QUERY_VECTOR, "", 10, "vector", {"lang": "pt"}))) == {
        "doc-b.md:0",
        "doc-b.md:1",
    }
    with pytest.raises(ValueError):  # 4-d into a 3-d base
        await store.search("other", QUERY_VECTOR, "", 10, "vector")
    assert await store.get_document("other", "doc-a.md") is None
    assert await store.delete("other")
    docs = await store.get("docs")
    assert docs is not None and (docs.documents, docs.chunks) == (3, 6)
    assert ids(await store.search("docs", QUERY_VECTOR, QUERY, 1))[0] == H


async def test_concurrent_puts_all_land(corpus: KnowledgeStore) -> None:
    store = corpus

    async def put(i: int) -> None:
        parts = [
            (f"note {i} part {j} about concurrency", f"Note {i}", unit(1, i, j, 1))
            for j in range(3)
        ]
        await store.put_document(document(f"n{i}.md", metadata={"n": i}), *chunks(parts))

    await asyncio.gather(*(put(i) for i in range(20)))
    docs = await store.get("docs")
    assert docs is not None and (docs.documents, docs.chunks) == (23, 66)
    assert await indexed(store, "docs", "concurrency") == (66, 66, 60)
    for i in (0, 7, 19):
        hits = await store.search("docs", None, "concurrency", 10, "text", {"n": i})
        assert sorted(ids(hits)) == [f"doc-n{i}.md:{j}" for j in range(3)]


async def test_concurrent_replaces_of_one_source(corpus: KnowledgeStore) -> None:
    store = corpus

    async def put(i: int) -> None:
        parts = [(f"version {i} of the page", "", unit(1, 1, i, 0))] * (1 + i % 3)
        await store.put_document(document("page.md", id=f"page-{i}"), *chunks(parts))

    await asyncio.gather(*(put(i) for i in range(10)))
    pages = [d for d in await store.list_documents("docs") if d.source == "page.md"]
    assert len(pages) == 1
    rows, vectors, text = await indexed(store, "docs", "version")
    assert rows == vectors == 6 + pages[0].chunks and text == pages[0].chunks


async def test_searches_during_ingest(corpus: KnowledgeStore) -> None:
    store = corpus

    async def put(i: int) -> None:
        parts = [(f"filler {i}", "", unit(1, 0, i, 1))]
        await store.put_document(document(f"f{i}.md"), *chunks(parts))

    async def search() -> list[str]:
        return ids(await store.search("docs", QUERY_VECTOR, QUERY, 1))

    results = await asyncio.gather(*(put(i) for i in range(10)), *(search() for _ in range(10)))
    assert all(r == [H] for r in results[10:])


@pytest.mark.parametrize(
    "error",
    [
        # PostgreSQL 15 and later: the file in the detail
        asyncpg.FeatureNotSupportedError('extension "vector" is not available'),
        # before: the file in the message
        asyncpg.exceptions.UndefinedFileError(
            'could not open extension control file "/usr/share/postgresql/14/extension/'
            'vector.control": No such file or directory'
        ),
    ],
)
async def test_missing_pgvector_is_named(error: asyncpg.PostgresError) -> None:
    """Without a server: how open() words a PostgreSQL that has no pgvector files."""
    if isinstance(error, asyncpg.FeatureNotSupportedError):
        error.detail = 'Could not open extension control file "/usr/share/postgresql/15/..."'

    class NoPgvector:
        @asynccontextmanager
        async def transaction(self) -> AsyncIterator[None]:
            raise error
            yield

    with pytest.raises(PgvectorMissing, match="pgvector") as caught:
        await PostgresKnowledge(NoPgvector()).open()  # type: ignore[arg-type]
    assert caught.value.__cause__ is error


# -- the shared ranking logic ---------------------------------------------------------------


def test_fuse_by_reciprocal_rank() -> None:
    assert fuse(["a", "b"], ["b", "c"], PLAIN_RRF) == [
        ("b", pytest.approx(1 / 62 + 1 / 61)),
        ("a", pytest.approx(1 / 61)),
        ("c", pytest.approx(1 / 62)),
    ]
    # a tie goes to the better vector rank
    assert [k for k, _ in fuse(["a", "b"], ["b", "a"], PLAIN_RRF)] == ["a", "b"]
    assert [k for k, _ in fuse(["x"], ["y"], PLAIN_RRF)] == ["x", "y"]
    # by default the text ranking counts less: a text-only first place trails a vector one
    assert fuse(["x"], ["y"])[1] == ("y", pytest.approx(0.3 / 61))
    # weights
    assert [k for k, _ in fuse(["x"], ["y"], Weights(vector=1.0, text=2.0))] == ["y", "x"]
    assert fuse([], []) == []


def test_query_terms_are_safe() -> None:
    # English function words ("what", "or", "this") are left out
    assert query_terms('what\'s "C++" -- OR (x') == ["s", "c", "x"]
    assert fts5_query(query_terms('what\'s "C++" -- OR (x')) == '"s" OR "c" OR "x"'
    assert tsquery_text(["this", "or", "that"]) == "this or that"
    assert query_terms("this or that") == []
    assert tsquery_text(query_terms("Or")) is None
    assert fts5_query(query_terms("!@#$ -- ()")) is None
    assert query_terms("Rate RATE rate_limit") == ["rate", "limit"]
    assert len(query_terms(" ".join(f"w{i}" for i in range(1000)))) == 32
    assert max(map(len, query_terms("a" * 5000))) == 64


async def test_weights_shape_the_fusion(corpus: KnowledgeStore) -> None:
    async def hybrid(weights: Weights) -> list[str]:
        if isinstance(corpus, SQLiteKnowledge):
            other: KnowledgeStore = SQLiteKnowledge(corpus.path, weights)
        else:
            assert isinstance(corpus, PostgresKnowledge)
            other = PostgresKnowledge(corpus.db, weights)
        await other.open()
        try:
            return ids(await other.search("docs", QUERY_VECTOR, QUERY, 6))
        finally:
            await other.close()

    assert (await hybrid(Weights(vector=1.0, text=0.0)))[:2] == [X, H]
    assert (await hybrid(Weights(vector=0.0, text=1.0)))[:2] == [Y, H]
    assert (await hybrid(PLAIN_RRF))[:3] == [H, Y, X]


def test_candidate_depth_stays_within_sqlite_vec() -> None:
    assert candidate_depth(1) == 200
    assert candidate_depth(50) == 1000
    assert candidate_depth(MAX_K * 4) == 4096
