"""The client guide's FastAPI app (examples/fastapi_app.py), run against a real gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from examples import fastapi_app

from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply


@pytest.fixture
async def app_client(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx2.AsyncClient]:
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url)))
    monkeypatch.setenv("NOROSHI_URL", base)
    app = fastapi_app.app
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


async def test_ask(app_client: httpx2.AsyncClient, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="Paris, of course.", prompt_tokens=7, completion_tokens=4))
    r = await app_client.post("/ask", json={"question": "Capital of France?"})
    assert r.status_code == 200
    assert r.json() == {"answer": "Paris, of course.", "tokens": 11}
    assert upstream.requests[0].body["messages"][-1]["content"] == "Capital of France?"


async def test_ask_passes_noroshi_errors_on(app_client: httpx2.AsyncClient) -> None:
    r = await app_client.post("/ask", json={"question": "Hi", "model": "no-such-model"})
    assert r.status_code == 404 and "no-such-model" in r.json()["detail"]


async def test_ask_stream_relays_text(app_client: httpx2.AsyncClient, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="one two three"))
    async with app_client.stream("POST", "/ask/stream", json={"question": "Count"}) as r:
        assert r.status_code == 200
        text = "".join([part async for part in r.aiter_text()])
    assert text == "one two three"


async def test_agent(app_client: httpx2.AsyncClient, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="I am the agent."))
    r = await app_client.post("/agent", json={"question": "Who are you?"})
    assert r.status_code == 200
    body = r.json()
    assert body["answer"] == "I am the agent." and body["tools"] == []
    assert body["run_id"].startswith("run_")
