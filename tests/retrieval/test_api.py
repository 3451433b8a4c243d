"""Knowledge bases end to end: the API through the client, an agent's `search_knowledge`
with its source events, and `noroshi ingest` as a process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from noroshi.client import (
    AsyncClient,
    BadRequestError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from noroshi.wire.agent import RunFinished, SourceCited, ToolResult
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.wire.test_times import ISO_UTC

MASTER = "sk-master-kb"
EXTRA = f"""
[auth]
master_key = "{MASTER}"

[[models]]
name = "embed"
deployments = [{{ provider = "up", model = "fake-embedding" }}]

[defaults]
embedding_model = "embed"

[[agents]]
name = "librarian"
model = "fast"
knowledge = ["handbook"]
"""

HANDBOOK = """# Handbook

## Holidays

Everyone gets twenty-five days of paid holiday a year.

## Expenses

Travel is booked through the travel desk; receipts go in within thirty days.
"""


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request: pytest.FixtureRequest) -> str:
    """The `[storage]` section for the store under test: SQLite, or the machine's PostgreSQL."""
    if request.param == "sqlite":
        return ""
    url = request.getfixturevalue("postgres_url")
    return f'\n[storage]\nurl = "{url}"\n'


@pytest.fixture
async def base(serve: Serve, tmp_path: Path, upstream: FakeOpenAI, storage: str) -> str:
    return await serve(write_config(tmp_path, openai_config(upstream.base_url, EXTRA + storage)))


@pytest.fixture
async def admin(base: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(base, api_key=MASTER, max_retries=0) as client:
        yield client


@pytest.mark.parametrize("serve", ["noroshi"], indirect=True)
async def test_knowledge_base_lifecycle(base: str, admin: AsyncClient) -> None:
    kb = await admin.kb.create(name="handbook", description="The staff handbook")
    assert (kb.name, kb.embedding_model, kb.chunk_tokens) == ("handbook", "embed", 256)
    assert kb.dimensions == 8  # what the fake upstream embeds by default
    with pytest.raises(ConflictError):
        await admin.kb.create(name="handbook")
    with pytest.raises(InvalidRequestError) as bad:
        await admin.kb.create(name="Bad Name!")
    assert bad.value.param == "name"

    added = await admin.kb.add(
        "handbook",
        source="handbook.md",
        text=HANDBOOK,
        format="markdown",
        metadata={"team": "people"},
    )
    assert added.changed and added.document.chunks == 2
    assert added.document.title == "Handbook" and added.document.format == "markdown"
    again = await admin.kb.add("handbook", source="handbook.md", text=HANDBOOK, format="markdown")
    assert not again.changed and again.document.id == added.document.id

    html = b"<html><title>Desk</title><body><h1>Desk</h1><p>The travel desk is on floor 2.</p>"
    page = await admin.kb.add(
        "handbook", source="desk.html", data=html, metadata={"team": "travel"}
    )
    assert page.document.format == "html" and page.document.title == "Desk"

    docs = await admin.kb.documents("handbook")
    assert {d.source for d in docs.data} == {"handbook.md", "desk.html"}
    auth = {"authorization": f"Bearer {MASTER}"}
    async with aiohttp.ClientSession(base, headers=auth) as raw:
        async with raw.get("/api/v1/kb/handbook/documents") as r:
            assert all(ISO_UTC.fullmatch(d["created_at"]) for d in (await r.json())["data"])
        async with raw.get("/api/v1/kb/handbook") as r:
            assert ISO_UTC.fullmatch((await r.json())["created_at"])
    assert (await admin.kb.get("handbook")).documents == 2

    found = await admin.kb.search("handbook", query="paid holiday days", k=3, mode="text")
    assert found.results and "twenty-five days" in found.results[0].text
    assert found.results[0].heading == "Handbook > Holidays"
    assert found.results[0].source == "handbook.md"
    hybrid = await admin.kb.search("handbook", query="travel desk floor", k=5)
    assert page.document.id in {r.document_id for r in hybrid.results}
    text_first = await admin.kb.search("handbook", query="travel desk floor", k=5, mode="text")
    assert text_first.results[0].document_id == page.document.id
    assert [r.score for r in hybrid.results] == sorted(
        (r.score for r in hybrid.results), reverse=True
    )
    filtered = await admin.kb.search("handbook", query="travel", filter={"team": "people"})
    assert filtered.results and {r.source for r in filtered.results} == {"handbook.md"}

    deleted = await admin.kb.delete_document("handbook", page.document.id)
    assert deleted.deleted
    with pytest.raises(NotFoundError):
        await admin.kb.document("handbook", page.document.id)
    gone = await admin.kb.search("handbook", query="travel desk floor", k=5, mode="text")
    assert all(r.document_id != page.document.id for r in gone.results)

    assert (await admin.kb.delete("handbook")).deleted
    with pytest.raises(NotFoundError) as missing:
        await admin.kb.search("handbook", query="x")
    assert missing.value.param == "name"


@pytest.mark.parametrize("serve", ["noroshi"], indirect=True)
async def test_bad_documents_and_keys(admin: AsyncClient, base: str) -> None:
    await admin.kb.create(name="handbook")
    with pytest.raises(BadRequestError) as both:
        await admin.kb.add("handbook", source="x.txt", text="a", data=b"a")
    assert both.value.param == "text"
    with pytest.raises(BadRequestError) as broken:
        await admin.kb.add("handbook", source="x.pdf", data=b"%PDF-1.4 not really a pdf")
    assert broken.value.param == "data"
    with pytest.raises(BadRequestError) as binary:
        await admin.kb.add("handbook", source="x.bin", data=bytes(range(256)) * 4)
    assert binary.value.param == "data"
    key = await admin.admin.keys.create(name="reader")
    async with AsyncClient(base, api_key=key.key, max_retries=0) as reader:
        assert [b.name for b in (await reader.kb.list()).data] == ["handbook"]
        await reader.kb.search("handbook", query="anything")
        with pytest.raises(PermissionDeniedError):
            await reader.kb.create(name="mine")
        with pytest.raises(PermissionDeniedError):
            await reader.kb.add("handbook", source="x.txt", text="hello")
    async with aiohttp.ClientSession() as http:  # the raw wire: base64 `data` in JSON
        body = {"source": "raw.txt", "data": base64.b64encode(b"plain words").decode()}
        async with http.post(
            f"{base}/api/v1/kb/handbook/documents",
            json=body,
            headers={"authorization": f"Bearer {MASTER}"},
        ) as r:
            assert r.status == 200 and (await r.json())["document"]["format"] == "text"


@pytest.mark.parametrize("serve", ["noroshi"], indirect=True)
async def test_agent_searches_and_cites_sources(
    admin: AsyncClient, base: str, upstream: FakeOpenAI
) -> None:
    await admin.kb.create(name="handbook")
    await admin.kb.add("handbook", source="handbook.md", text=HANDBOOK, format="markdown")
    upstream.script(
        Reply(tool_calls=[{"name": "search_knowledge", "arguments": {"query": "holiday days"}}]),
        Reply(text="Twenty-five days [1]."),
    )
    events = [e async for e in admin.agent.stream(prompt="How much holiday?", agent="librarian")]
    result = next(e for e in events if isinstance(e, ToolResult))
    assert not result.is_error and "twenty-five days" in result.content
    sources = [e for e in events if isinstance(e, SourceCited)]
    assert sources and sources[0].source == "handbook.md"
    assert sources[0].tool_call_id == result.id
    assert events.index(sources[0]) == events.index(result) + 1
    assert isinstance(events[-1], RunFinished)
    chats = [r.body for r in upstream.requests if "messages" in r.body]
    offered = {t["function"]["name"] for t in chats[0]["tools"]}
    assert offered == {"search_knowledge"}
    told = chats[-1]["messages"][-1]
    assert told["role"] == "tool" and "[1] Handbook — Handbook > Holidays" in told["content"]

    upstream.script(
        Reply(tool_calls=[{"name": "search_knowledge", "arguments": {"query": "expenses"}}]),
        Reply(text="Thirty days."),
    )
    body = {
        "messages": [{"role": "user", "parts": [{"type": "text", "text": "Receipts?"}]}],
        "agent": "librarian",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/api/v1/agent/chat", json=body, headers={"authorization": f"Bearer {MASTER}"}
        ) as r,
    ):
        raw = (await r.read()).decode()
    chunks = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    docs = [c for c in chunks if c["type"] == "source-document"]
    assert docs and docs[0]["filename"] == "handbook.md" and docs[0]["title"] == "Handbook"


async def test_ingest_cli_resumes_by_content_hash(tmp_path: Path, upstream: FakeOpenAI) -> None:
    config = tmp_path / "noroshi.toml"
    config.write_text(
        openai_config(upstream.base_url, EXTRA.replace(f'master_key = "{MASTER}"', ""))
    )
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text(HANDBOOK)
    (folder / "b.txt").write_text("Plain notes about the office plants.")
    (folder / "sub" / "c.html").write_text("<h1>Parking</h1><p>Bays are on level -1.</p>")
    (folder / ".hidden.md").write_text("# secret")
    (folder / "image.png").write_bytes(b"\x89PNG")

    async def ingest() -> tuple[int, str, str]:
        env = {**os.environ, "NOROSHI_SERVER__DATA_DIR": str(tmp_path / "data")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "noroshi",
            "ingest",
            str(folder),
            "--kb",
            "handbook",
            "--config",
            str(config),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await ingest()
    assert code == 0, err
    assert "3 added or updated, 0 unchanged, 0 failed" in out
    assert "ingesting into handbook" in err  # the progress bar
    embedded = len(upstream.requests)
    code, out, _ = await ingest()
    assert code == 0 and "0 added or updated, 3 unchanged" in out
    assert len(upstream.requests) == embedded  # nothing embedded again
    (folder / "b.txt").write_text("Plain notes about the office plants, watered on Fridays.")
    code, out, _ = await ingest()
    assert "1 added or updated, 2 unchanged" in out
    (folder / "bad.pdf").write_bytes(b"%PDF-1.4 broken")
    code, out, err = await ingest()
    assert code == 1 and "1 failed" in out and "bad.pdf" in err
