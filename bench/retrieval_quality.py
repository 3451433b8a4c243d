"""Recall@5 of knowledge-base search by mode, on the labelled set in
tests/data/kb_questions.json, with the local embedding model (e5-small) and the SQLite store.

    python -m bench.retrieval_quality [--postgres URL]

Prints one table: recall@5 per mode, overall and by kind of question.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from noroshi.config import Config, DeploymentConfig, ModelConfig, ProviderConfig, RetrievalConfig
from noroshi.metrics import Metrics
from noroshi.providers.base import Provider
from noroshi.providers.local_embeddings import LocalEmbeddingsProvider
from noroshi.providers.router import ProviderRouter
from noroshi.retrieval.service import Knowledge, open_store
from noroshi.store.database import open_database
from noroshi.wire.knowledge import DocumentUpload, KnowledgeBaseCreate, Mode

QUESTIONS = Path(__file__).parent.parent / "tests" / "data" / "kb_questions.json"
MODES: tuple[Mode, ...] = ("vector", "text", "hybrid")
K = 5


def local_router() -> ProviderRouter:
    config = Config(
        providers={"local-embeddings": ProviderConfig(type="local_embeddings")},
        models=[
            ModelConfig(
                name="e5-small",
                deployments=[DeploymentConfig(provider="local-embeddings", model="e5-small")],
            )
        ],
    )
    name = "local-embeddings"
    providers: dict[str, Provider] = {name: LocalEmbeddingsProvider(name, config.providers[name])}
    return ProviderRouter(config, providers, Metrics())


@asynccontextmanager
async def loaded(directory: Path, postgres: str | None = None) -> AsyncIterator[Knowledge]:
    """The labelled documents in a fresh knowledge base named "eval"."""
    db = await open_database(postgres, directory)
    retrieval = RetrievalConfig()
    knowledge = Knowledge(
        open_store(db, directory, retrieval), local_router(), retrieval, lambda: "e5-small"
    )
    await knowledge.open()
    try:
        await knowledge.store.delete("eval")
        await knowledge.create(KnowledgeBaseCreate(name="eval", embedding_model="e5-small"))
        for doc in json.loads(QUESTIONS.read_text())["documents"]:
            upload = DocumentUpload(source=doc["id"], text=doc["text"], format="markdown")
            await knowledge.add("eval", upload)
        yield knowledge
    finally:
        await knowledge.store.close()
        await db.close()


async def evaluate(knowledge: Knowledge) -> dict[str, dict[str, float]]:
    """recall@5 by mode, overall ("all") and per kind of question."""
    questions: list[dict[str, Any]] = json.loads(QUESTIONS.read_text())["queries"]
    found: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for mode in MODES:
        for q in questions:
            hits = await knowledge.search("eval", q["query"], K, mode)
            sources = {h.source for h in hits}
            recall = len(sources & set(q["relevant"])) / len(q["relevant"])
            found[mode]["all"].append(recall)
            found[mode][q["kind"]].append(recall)
    return {m: {kind: sum(v) / len(v) for kind, v in kinds.items()} for m, kinds in found.items()}


def table(scores: dict[str, dict[str, float]]) -> str:
    kinds = list(next(iter(scores.values())))
    lines = [
        "| mode | " + " | ".join(f"recall@5 {k}" for k in kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for mode, row in scores.items():
        lines.append(f"| {mode} | " + " | ".join(f"{row[k]:.3f}" for k in kinds) + " |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", help="a PostgreSQL URL with pgvector, instead of SQLite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        async with loaded(Path(tmp), args.postgres) as knowledge:
            print(table(await evaluate(knowledge)))


if __name__ == "__main__":
    asyncio.run(main())
