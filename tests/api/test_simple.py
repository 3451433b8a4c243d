"""The simple endpoints and `/v1/embeddings` over an OpenAI-compatible fake upstream."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply

EMBED_MODEL = """
[[models]]
name = "embed"
deployments = [{ provider = "up", model = "fake-embedding" }]

[defaults]
embedding_model = "embed"
"""


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="test-key") as fake:
        yield fake


@pytest.fixture
async def base(serve: Serve, tmp_path: Path, upstream: FakeOpenAI) -> str:
    return await serve(write_config(tmp_path, openai_config(upstream.base_url, EMBED_MODEL)))


async def post(base: str, path: str, payload: Any) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as s, s.post(f"{base}{path}", json=payload) as r:
        return r.status, r.headers.copy(), await r.read()


def sse_data(body: bytes) -> list[bytes]:
    return [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e]


async def test_api_chat_streams_text_events(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="hello there world"))
    status, headers, body = await post(
        base,
        "/api/chat",
        {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]},
    )
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = sse_data(body)
    assert events[-1] == b"[DONE]"
    assert "".join(json.loads(e)["text"] for e in events[:-1]) == "hello there world"
    assert upstream.requests[-1].body["model"] == "m1"  # the default chat model, `fast`
    assert [m["role"] for m in upstream.requests[-1].body["messages"]] == ["system", "user"]


async def test_api_generate(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="generated words"))
    status, _, body = await post(base, "/api/generate", {"prompt": "Write", "max_tokens": 7})
    assert status == 200
    events = sse_data(body)
    assert "".join(json.loads(e)["text"] for e in events[:-1]) == "generated words"
    assert upstream.requests[-1].body["max_tokens"] == 7


async def test_api_chat_error_after_first_byte(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="a b c d", token_delay=0.05, stall_after=2))
    status, _, body = await post(
        base, "/api/chat", {"messages": [{"role": "user", "content": "x"}]}
    )
    assert status == 200
    assert b"[DONE]" not in body
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    name, data = last.split(b"\n")
    assert name == b"event: error"
    assert "idle timeout" in json.loads(data.removeprefix(b"data: "))["message"]


async def test_chat_and_chat_stream(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="short answer", completion_tokens=2))
    status, _, body = await post(base, "/chat", {"prompt": "q", "model": "fast"})
    assert status == 200
    answer = json.loads(body)
    assert answer["message"] == "short answer"
    assert answer["model"] == "m1"
    assert answer["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}

    upstream.script(Reply(text="streamed answer"))
    status, _, body = await post(
        base, "/chat/stream", {"messages": [{"role": "user", "content": "q"}]}
    )
    events = sse_data(body)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == "streamed answer"
    )


@pytest.mark.parametrize(
    ("path", "payload", "param"),
    [
        ("/api/chat", {"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ("/api/chat", {"messages": []}, "messages"),
        ("/api/chat", {}, "messages"),
        ("/api/generate", {"prompt": ""}, "prompt"),
        ("/api/generate", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/api/embed", {"text": ""}, "text"),
        ("/chat", {"prompt": 3}, "prompt"),
        ("/chat/stream", {}, "prompt"),
        ("/chat/stream", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "prompt"),
        ("/chat", {"prompt": "x", "model": "nope"}, "model"),
    ],
)
async def test_simple_validation(base: str, path: str, payload: dict, param: str) -> None:
    status, _, body = await post(base, path, payload)
    error = json.loads(body)["error"]
    assert status == (404 if param == "model" else 400)
    assert error["param"] == param


async def test_api_embed(base: str, upstream: FakeOpenAI) -> None:
    status, _, body = await post(base, "/api/embed", {"text": "hello"})
    assert status == 200
    answer = json.loads(body)
    assert answer["dimensions"] == len(answer["embedding"]) == 8
    assert upstream.requests[-1].body["input"] == ["hello"]


async def test_v1_embeddings_float_and_base64(base: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as c:
        floats = await c.embeddings.create(model="embed", input=["a", "b"], encoding_format="float")
        assert [d.index for d in floats.data] == [0, 1]
        assert len(floats.data[0].embedding) == 8
        one = await c.embeddings.create(model="embed", input="a")  # the SDK asks for base64
        assert one.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
        short = await c.embeddings.create(model="embed", input="a", dimensions=4)
        assert len(short.data[0].embedding) == 4
    status, _, body = await post(
        base, "/v1/embeddings", {"model": "embed", "input": "a", "encoding_format": "base64"}
    )
    assert status == 200
    raw = base64.b64decode(json.loads(body)["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(
        floats.data[0].embedding, abs=1e-6
    )


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"model": "embed"}, "input"),
        ({"model": "embed", "input": []}, "input"),
        ({"model": "embed", "input": [""]}, "input"),
        ({"model": "embed", "input": "a", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "embed", "input": "a", "dimensions": 0}, "dimensions"),
        ({"model": "nope", "input": "a"}, "model"),
    ],
)
async def test_v1_embeddings_validation(base: str, payload: dict, param: str) -> None:
    status, _, body = await post(base, "/v1/embeddings", payload)
    assert status == (404 if param == "model" else 400)
    assert json.loads(body)["error"]["param"] == param
