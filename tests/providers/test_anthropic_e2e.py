"""An Anthropic deployment behind the OpenAI API: the openai SDK talks to a fake Messages API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.conftest import Serve, write_config
from tests.fakes.upstream import FakeAnthropic, Reply

HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture
async def upstream() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key="ant-key") as fake:
        yield fake


@pytest.fixture
async def base(serve: Serve, tmp_path: Path, upstream: FakeAnthropic) -> str:
    config = f"""
[providers.claude]
type = "anthropic"
base_url = "{upstream.base_url.removesuffix("/v1")}"
api_key = "ant-key"
first_byte_timeout_s = 0.5
idle_timeout_s = 0.5

[routing]
retries = 0

[[models]]
name = "smart"
deployments = [{{ provider = "claude", model = "claude-x" }}]
"""
    return await serve(write_config(tmp_path, config))


@pytest.fixture
async def client(base: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as c:
        yield c


async def test_non_streaming(client: openai.AsyncOpenAI, upstream: FakeAnthropic) -> None:
    upstream.script(Reply(text="Hello, human.", completion_tokens=4))
    answer = await client.chat.completions.create(model="smart", messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Hello, human."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (7, 4)
    sent = upstream.requests[-1]
    assert sent.headers["x-api-key"] == "ant-key"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body["system"] == "Be brief."
    assert sent.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


async def test_streaming_text_and_usage(
    client: openai.AsyncOpenAI, upstream: FakeAnthropic
) -> None:
    upstream.script(Reply(text="one two three", completion_tokens=3))
    stream = await client.chat.completions.create(
        model="smart",
        messages=HI,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 3)


async def test_streaming_tool_use(client: openai.AsyncOpenAI, upstream: FakeAnthropic) -> None:
    upstream.script(
        Reply(tool_calls=[{"id": "tu_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}])
    )
    stream = await client.chat.completions.create(
        model="smart",
        messages=HI,  # type: ignore[arg-type]
        tools=[TOOL],  # type: ignore[list-item]
        stream=True,
    )
    chunks = [c async for c in stream]
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert (
        deltas[0].id == "tu_1" and deltas[0].function and deltas[0].function.name == "get_weather"
    )
    assert json.loads("".join(d.function.arguments or "" for d in deltas if d.function)) == {
        "city": "Paris"
    }
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert upstream.requests[-1].body["tools"][0]["name"] == "get_weather"


async def test_tool_results_go_back_as_tool_result_blocks(
    client: openai.AsyncOpenAI, upstream: FakeAnthropic
) -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "tu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "tu_1", "content": "sunny"},
    ]
    await client.chat.completions.create(model="smart", messages=messages, tools=[TOOL])  # type: ignore[arg-type, list-item]
    sent = upstream.requests[-1].body["messages"]
    assert sent[1]["content"] == [
        {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {}}
    ]
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "sunny"}],
    }


async def test_max_tokens_stop_reason(client: openai.AsyncOpenAI, upstream: FakeAnthropic) -> None:
    upstream.script(Reply(text="cut", finish_reason="length"))
    answer = await client.chat.completions.create(model="smart", messages=HI, max_tokens=1)  # type: ignore[arg-type]
    assert answer.choices[0].finish_reason == "length"
    assert upstream.requests[-1].body["max_tokens"] == 1


async def test_rate_limit_passes_through(
    client: openai.AsyncOpenAI, upstream: FakeAnthropic
) -> None:
    upstream.script(Reply(status=429, retry_after=30, error_message="too many"))
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="smart", messages=HI)  # type: ignore[arg-type]
    assert info.value.response.headers["retry-after"] == "30"
    assert "too many" in info.value.message


async def test_mid_stream_error_event(base: str, upstream: FakeAnthropic) -> None:
    upstream.script(Reply(text="a b c", token_delay=0.05, mid_stream_error="Overloaded"))
    payload = {"model": "smart", "messages": HI, "stream": True}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/v1/chat/completions", json=payload) as r,
    ):
        body = await r.read()
    assert b"[DONE]" not in body
    last = json.loads(body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].removeprefix(b"data: "))
    assert "Overloaded" in last["error"]["message"]


async def test_stream_without_message_stop_is_cut(base: str, upstream: FakeAnthropic) -> None:
    upstream.script(Reply(text="a b c", token_delay=0.05, no_terminator=True))
    payload = {"model": "smart", "messages": HI, "stream": True}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/v1/chat/completions", json=payload) as r,
    ):
        body = await r.read()
    assert b"[DONE]" not in body
    assert b"message_stop" in body
