"""The knowledge stores at scale: ingest rate and search latency at 100,000 chunks.

Usage:

    python bench/retrieval_scale.py                  # 100,000 chunks into each store (minutes)
    python bench/retrieval_scale.py --chunks 5000    # the quick mode: seconds
    python bench/retrieval_scale.py --stores sqlite --json

The point is the store, not the model: texts are drawn from a synthetic vocabulary (Zipf
distributed, like words are) and vectors are deterministic random unit vectors of 384
dimensions. Chunks go in as documents of --batch chunks, one put_document each, one at a
time; then --queries searches of each mode (vector, text, hybrid), one at a time, k=10.

SQLite goes to a file in a temporary folder. PostgreSQL comes from NOROSHI_BENCH_PG (default
postgresql://postgres@127.0.0.1:5432/test), in a schema of its own that is dropped after; it
is skipped, with the reason printed, when the server is away or has no pgvector. Timings are
wall clock on whatever else the machine is doing: repeat runs and compare medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from noroshi.retrieval.base import Chunk, KnowledgeBase, KnowledgeStore, Mode, StoredDocument
from noroshi.retrieval.postgres_store import PgvectorMissing, PostgresKnowledge
from noroshi.retrieval.sqlite_store import SQLiteKnowledge
from noroshi.store.database import PostgresDatabase
from noroshi.wire.times import Timestamp

PG_URL = os.environ.get("NOROSHI_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
MODES: tuple[Mode, ...] = ("vector", "text", "hybrid")
VOCABULARY = 20_000
WORDS_PER_CHUNK = 120  # about what a 256-token chunk holds
K = 10


class Skipped(Exception):
    """This store cannot run here; the message says why."""


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile, as bench/loadgen.py takes it."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(p * 10) - 1]


def vocabulary(rng: np.random.Generator) -> list[str]:
    """Pronounceable made-up words, distinct, in a fixed order (rank 1 the most common)."""
    consonants, vowels = list("bdfgklmnprstvz"), list("aeiou")
    words: dict[str, None] = {}
    while len(words) < VOCABULARY:
        syllables = int(rng.integers(1, 4))
        word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))
        words[word + str(rng.choice(consonants))] = None
    return list(words)


class Corpus:
    """Deterministic synthetic chunks, queries and vectors."""

    def __init__(self, seed: int, dims: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.dims = dims
        self.words = vocabulary(self.rng)
        ranks = np.arange(1, VOCABULARY + 1, dtype=np.float64)
        self.weights = (1 / ranks) / (1 / ranks).sum()

    def texts(self, n: int, length: int) -> list[str]:
        picks = self.rng.choice(VOCABULARY, size=(n, length), p=self.weights)
        return [" ".join(self.words[i] for i in row) for row in picks]

    def vectors(self, n: int) -> list[list[float]]:
        v = self.rng.standard_normal((n, self.dims), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        rows: list[list[float]] = v.tolist()
        return rows

    def batches(
        self, chunks: int, batch: int
    ) -> Iterator[tuple[int, list[Chunk], list[list[float]]]]:
        for start in range(0, chunks, batch):
            n = min(batch, chunks - start)
            texts = self.texts(n, WORDS_PER_CHUNK)
            headings = self.texts(n, 3)
            parts = [
                Chunk(index=i, text=t, heading=h, tokens=WORDS_PER_CHUNK * 2)
                for i, (t, h) in enumerate(zip(texts, headings, strict=True))
            ]
            yield start // batch, parts, self.vectors(n)

    def queries(self, n: int) -> list[tuple[list[float], str]]:
        # three words from the middle of the distribution: common enough to match, rare
        # enough to rank
        words = self.rng.integers(50, 5000, size=(n, 3))
        texts = [" ".join(self.words[i] for i in row) for row in words]
        return list(zip(self.vectors(n), texts, strict=True))


@asynccontextmanager
async def sqlite_store() -> AsyncIterator[KnowledgeStore]:
    with tempfile.TemporaryDirectory(prefix="noroshi-bench-") as folder:
        store = SQLiteKnowledge(Path(folder) / "knowledge.sqlite3")
        await store.open()
        try:
            yield store
        finally:
            await store.close()


@asynccontextmanager
async def postgres_store() -> AsyncIterator[KnowledgeStore]:
    schema = f"bench_{secrets.token_hex(6)}"
    try:
        admin = await asyncio.wait_for(asyncpg.connect(PG_URL), 5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise Skipped(f"PostgreSQL is not reachable at {PG_URL}: {exc!r}") from exc
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in PG_URL else "?"
        db = await PostgresDatabase.connect(f"{PG_URL}{sep}search_path={schema}")
        try:
            store = PostgresKnowledge(db)
            try:
                await store.open()
            except PgvectorMissing as exc:
                raise Skipped(f"{exc} ({exc.__cause__})") from exc
            yield store
        finally:
            await db.close()
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def measure(store: KnowledgeStore, args: argparse.Namespace) -> dict[str, Any]:
    corpus = Corpus(args.seed, args.dims)
    kb = KnowledgeBase(
        name="bench", embedding_model="random", dimensions=args.dims, created_at=Timestamp.now()
    )
    assert await store.create(kb)
    ingest = 0.0
    for n, parts, vectors in corpus.batches(args.chunks, args.batch):
        doc = StoredDocument(
            id=f"doc-{n}",
            kb="bench",
            source=f"doc-{n}.txt",
            title=f"Document {n}",
            content_hash=str(n),
            format="text",
            metadata={"part": n % 10},
            created_at=Timestamp.now(),
        )
        start = time.perf_counter()
        await store.put_document(doc, parts, vectors)
        ingest += time.perf_counter() - start
    stored = await store.get("bench")
    assert stored is not None and stored.chunks == args.chunks, stored
    result: dict[str, Any] = {
        "chunks": args.chunks,
        "ingest_s": round(ingest, 3),
        "ingest_chunks_per_s": round(args.chunks / ingest, 1),
    }
    queries = corpus.queries(args.queries)
    for mode in MODES:
        latencies: list[float] = []
        found = 0
        for vector, text in queries:
            start = time.perf_counter()
            hits = await store.search("bench", vector, text, K, mode)
            latencies.append(time.perf_counter() - start)
            found += len(hits)
        result[mode] = {
            "p50_ms": round(percentile(latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 99) * 1000, 2),
            "hits_per_query": round(found / len(queries), 2),
        }
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    header = ["store", "chunks", "ingest chunks/s"]
    header += [f"{m} {p} ms" for m in MODES for p in ("p50", "p99")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} |")
            continue
        cells = [name, f"{r['chunks']:,}", f"{r['ingest_chunks_per_s']:,.0f}"]
        cells += [f"{r[m][p]:.2f}" for m in MODES for p in ("p50_ms", "p99_ms")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    openers = {"sqlite": sqlite_store, "postgresql": postgres_store}
    results: dict[str, dict[str, Any]] = {}
    for name in args.stores.split(","):
        if name not in openers:
            raise SystemExit(f"unknown store {name!r}: sqlite, postgresql")
        try:
            async with openers[name]() as store:
                results[name] = await measure(store, args)
        except Skipped as exc:
            results[name] = {"skipped": str(exc)}
            print(f"{name}: skipped: {exc}", file=sys.stderr)
    return {
        "plan": {
            "chunks": args.chunks,
            "batch": args.batch,
            "dims": args.dims,
            "queries": args.queries,
            "k": K,
            "seed": args.seed,
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "stores": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000, help="chunks to ingest")
    parser.add_argument("--batch", type=int, default=500, help="chunks per document")
    parser.add_argument("--dims", type=int, default=384, help="vector dimensions")
    parser.add_argument("--queries", type=int, default=200, help="searches per mode")
    parser.add_argument("--stores", default="sqlite,postgresql", help="comma separated")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    if args.chunks < 1 or args.batch < 1 or args.queries < 1:
        parser.error("--chunks, --batch and --queries must be positive")
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report))
    else:
        plan = report["plan"]
        print(
            f"{plan['chunks']:,} chunks of {WORDS_PER_CHUNK} words, {plan['dims']} dims, "
            f"{plan['batch']} per document; {plan['queries']} queries per mode, k={K}\n"
        )
        print(table(report["stores"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
