"""The simple endpoints and `/v1/embeddings` over an OpenAI-compatible fake upstream: through
noroshi's own client, and raw where the wire itself is what is tested."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from noroshi.client import (
    APIStatusError,
    AsyncClient,
    BadRequestError,
    InvalidRequestError,
    NotFoundError,
)
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.posting import post

EMBED_MODEL = """
[[models]]
name = "embed"
deployments = [{ provider = "up", model = "fake-embedding" }]

[defaults]
embedding_model = "embed"
"""


@pytest.fixture
async def base(serve: Serve, tmp_path: Path, upstream: FakeOpenAI) -> str:
    return await serve(write_config(tmp_path, openai_config(upstream.base_url, EMBED_MODEL)))


@pytest.fixture
async def client(base: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(base, max_retries=0) as c:
        yield c


async def send(c: AsyncClient, path: str, payload: dict[str, Any]) -> None:
    """`payload` to the simple endpoint at `path` through the client, streams read to the end."""
    streams = {
        "/api/chat": c.simple.api_chat,
        "/api/generate": c.generate,
        "/chat/stream": c.simple.chat_stream,
    }
    if path in streams:
        async for _ in streams[path](**payload):
            pass
    elif path == "/api/embed":
        await c.embed(**payload)
    elif path == "/chat":
        await c.simple.chat(**payload)
    else:
        await c.embeddings.create(**payload)


async def test_api_chat_streams_text_events(client: AsyncClient, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="hello there world"))
    # the client raises if the stream ends without its `[DONE]`
    events = [
        e
        async for e in client.simple.api_chat(
            messages=[
                {"role": "system", "content": "x"},
                {"role": "user", "content": "hi"},
            ]
        )
    ]
    assert "".join(e.text for e in events) == "hello there world"
    assert upstream.requests[-1].body["model"] == "m1"  # the default chat model, `fast`
    assert [m["role"] for m in upstream.requests[-1].body["messages"]] == ["system", "user"]


async def test_api_chat_sse_framing(base: str, upstream: FakeOpenAI) -> None:
    """The bytes themselves: `data: {text}` events, then `data: [DONE]`."""
    upstream.script(Reply(text="hello there world"))
    status, headers, body = await post(
        base + "/api/chat", {"messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = [e for e in body.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events)
    assert events[-1] == b"data: [DONE]"
    assert "".join(json.loads(e[6:])["text"] for e in events[:-1]) == "hello there world"


async def test_api_generate(client: AsyncClient, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="generated words"))
    events = [e async for e in client.generate(prompt="Write", max_tokens=7)]
    assert "".join(e.text for e in events) == "generated words"
    assert upstream.requests[-1].body["max_tokens"] == 7


async def test_api_chat_error_after_first_byte(
    base: str, client: AsyncClient, upstream: FakeOpenAI
) -> None:
    # on the wire: an `event: error` with a message, and no `[DONE]`
    upstream.script(Reply(text="a b c d", token_delay=0.05, stall_after=2))
    status, _, body = await post(
        base + "/api/chat", {"messages": [{"role": "user", "content": "x"}]}
    )
    assert status == 200
    assert b"[DONE]" not in body
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    name, data = last.split(b"\n")
    assert name == b"event: error"
    assert "idle timeout" in json.loads(data.removeprefix(b"data: "))["message"]

    # through the client: the text before it, then the error raised
    upstream.script(Reply(text="a b c d", token_delay=0.05, stall_after=2))
    texts: list[str] = []
    with pytest.raises(APIStatusError) as err:
        async for event in client.simple.api_chat(messages=[{"role": "user", "content": "x"}]):
            texts.append(event.text)
    assert texts and "idle timeout" in err.value.message


async def test_chat_and_chat_stream(client: AsyncClient, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="short answer", completion_tokens=2))
    answer = await client.simple.chat(prompt="q", model="fast")
    assert answer.message == "short answer"
    assert answer.model == "m1"
    assert (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
        answer.usage.total_tokens,
    ) == (7, 2, 9)

    upstream.script(Reply(text="streamed answer"))
    chunks = [
        c async for c in client.simple.chat_stream(messages=[{"role": "user", "content": "q"}])
    ]
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed answer"
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
async def test_simple_validation(
    base: str, client: AsyncClient, path: str, payload: dict, param: str
) -> None:
    # the server's own check, raw: the client would refuse most of these before sending
    status, _, body = await post(base + path, payload)
    error = json.loads(body)["error"]
    assert status == (404 if param == "model" else 400)
    assert error["param"] == param
    # the client refuses the same body naming the same field, itself or by the server's answer
    kinds = NotFoundError if param == "model" else (InvalidRequestError, BadRequestError)
    with pytest.raises(kinds) as err:
        await send(client, path, payload)
    assert err.value.param == param
    if param == "model":
        assert isinstance(err.value, NotFoundError)
        assert err.value.code == "model_not_found" and err.value.status == 404


async def test_api_embed(client: AsyncClient, upstream: FakeOpenAI) -> None:
    answer = await client.embed(text="hello")
    assert answer.dimensions == len(answer.embedding) == 8
    assert upstream.requests[-1].body["input"] == ["hello"]


async def test_v1_embeddings_float_and_base64(base: str, client: AsyncClient) -> None:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as c:
        floats = await c.embeddings.create(model="embed", input=["a", "b"], encoding_format="float")
        assert [d.index for d in floats.data] == [0, 1]
        assert len(floats.data[0].embedding) == 8
        one = await c.embeddings.create(model="embed", input="a")  # the SDK asks for base64
        assert one.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
        short = await c.embeddings.create(model="embed", input="a", dimensions=4)
        assert len(short.data[0].embedding) == 4
    # noroshi's client: floats by default
    ours = await client.embeddings.create(model="embed", input=["a", "b"])
    assert [d.index for d in ours.data] == [0, 1]
    assert ours.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    # the base64 text itself, raw
    status, _, body = await post(
        base + "/v1/embeddings", {"model": "embed", "input": "a", "encoding_format": "base64"}
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
async def test_v1_embeddings_validation(
    base: str, client: AsyncClient, payload: dict, param: str
) -> None:
    status, _, body = await post(base + "/v1/embeddings", payload)
    assert status == (404 if param == "model" else 400)
    assert json.loads(body)["error"]["param"] == param
    kinds = NotFoundError if param == "model" else (InvalidRequestError, BadRequestError)
    with pytest.raises(kinds) as err:
        await send(client, "/v1/embeddings", payload)
    assert err.value.param == param
