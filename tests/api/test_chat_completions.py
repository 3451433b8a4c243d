"""`/v1/chat/completions` end to end: the official openai SDK, the gateway, a fake upstream."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply

HI = [{"role": "user", "content": "Hi"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
async def base(serve: Serve, tmp_path: Path, upstream: FakeOpenAI) -> str:
    return await serve(write_config(tmp_path, openai_config(upstream.base_url)))


@pytest.fixture
async def client(base: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as c:
        yield c


async def raw_stream(base: str, payload: dict) -> tuple[int, bytes]:
    """The stream's bytes as sent, to check framing the SDK would hide."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/v1/chat/completions", json=payload) as r,
    ):
        return r.status, await r.read()


async def test_non_streaming(client: openai.AsyncOpenAI, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="Hello there, friend."))
    answer = await client.chat.completions.create(model="fast", messages=HI)  # type: ignore[arg-type]
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content == "Hello there, friend."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.prompt_tokens == 7
    sent = upstream.requests[-1]
    assert sent.body["model"] == "m1"
    assert sent.body["messages"] == HI
    assert sent.headers["Authorization"] == "Bearer test-key"


async def test_streaming(client: openai.AsyncOpenAI, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="one two three four"))
    stream = await client.chat.completions.create(model="fast", messages=HI, stream=True)  # type: ignore[arg-type]
    chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # not asked for: the upstream's usage is kept back
    assert upstream.requests[-1].body["stream_options"] == {"include_usage": True}


async def test_streaming_include_usage(client: openai.AsyncOpenAI, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="a b c", completion_tokens=3))
    stream = await client.chat.completions.create(
        model="fast",
        messages=HI,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 3)


async def test_stream_framing_ends_with_done(base: str) -> None:
    status, body = await raw_stream(base, {"model": "fast", "messages": HI, "stream": True})
    assert status == 200
    events = body.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert all(e.startswith(b"data: ") for e in events[:-1])


async def test_tools_pass_through_and_tool_call_deltas_stream(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    upstream.script(Reply(tool_calls=[call]))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "-3 C"},
        {"role": "user", "content": "And Paris?"},
    ]
    stream = await client.chat.completions.create(
        model="fast",
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="auto",
        stream=True,
    )
    chunks = [c async for c in stream]
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(deltas) >= 2  # the name first, then the arguments in pieces
    assert (
        deltas[0].id == "call_1" and deltas[0].function and deltas[0].function.name == "get_weather"
    )
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    sent = upstream.requests[-1].body
    assert sent["tools"] == [WEATHER_TOOL]
    assert sent["tool_choice"] == "auto"
    assert sent["messages"] == messages


async def test_tool_calls_non_streaming(client: openai.AsyncOpenAI, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(tool_calls=[{"id": "c9", "name": "get_weather", "arguments": "{}"}]))
    answer = await client.chat.completions.create(
        model="fast",
        messages=HI,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    calls = answer.choices[0].message.tool_calls
    assert calls is not None and calls[0].id == "c9"
    assert answer.choices[0].finish_reason == "tool_calls"


async def test_unknown_fields_reach_the_upstream(base: str, upstream: FakeOpenAI) -> None:
    payload = {"model": "fast", "messages": HI, "top_k": 20, "temperature": 0.2}
    async with aiohttp.ClientSession() as s, s.post(f"{base}/v1/chat/completions", json=payload):
        pass
    assert upstream.requests[-1].body["top_k"] == 20
    assert upstream.requests[-1].body["temperature"] == 0.2


# --- errors before the first byte ----------------------------------------------------------


async def test_validation_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="fast",
            messages=[{"role": "wizard", "content": "x"}],  # type: ignore[list-item]
        )
    assert info.value.status_code == 400
    assert info.value.param == "messages.0.role"
    assert info.value.response.headers["x-request-id"]


def nested(depth: int) -> str:
    """JSON arrays `depth` deep: text, since Python's json cannot write much past 990."""
    return "[" * depth + "]" * depth


def chat_body(field: str, value: str) -> bytes:
    """A chat request with `value` (JSON text) in one untyped field."""
    inner = {
        "tools": '[{"type": "function", "function": {"name": "f", "parameters": {"x": @}}}]',
        "response_format": '{"type": "json_schema", "json_schema": {"name": "s", "schema": @}}',
        "top_k_hints": "@",  # a field the gateway does not know, passed to the upstream
    }[field].replace("@", value)
    return f'{{"model": "fast", "messages": {json.dumps(HI)}, "{field}": {inner}}}'.encode()


@pytest.mark.parametrize("field", ["tools", "response_format", "top_k_hints"])
@pytest.mark.parametrize("depth", [200, 1000, 50_000])
async def test_json_nested_too_deeply_is_400_naming_the_field(
    base: str, field: str, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{base}/v1/chat/completions",
            data=chat_body(field, nested(depth)),
            headers={"content-type": "application/json"},
        ) as r,
    ):
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "json_too_deep"
    assert error["param"] == field
    assert "nested too deeply" in error["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_json_nested_within_the_limit_is_served(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    deep: Any = {}
    for _ in range(61):  # with the body, the tool and `function` around it: 127 levels
        deep = {"type": "object", "properties": {"x": deep}}
    tool = {"type": "function", "function": {"name": "f", "parameters": deep}}
    answer = await client.chat.completions.create(model="fast", messages=HI, tools=[tool])
    assert answer.choices[0].message.content == upstream.default.text
    assert upstream.requests[-1].body["tools"][0]["function"]["parameters"] == deep


async def test_json_nested_too_deeply_through_the_sdk(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="fast",
            messages=HI,
            response_format={"type": "json_object", "x": json.loads(nested(300))},  # type: ignore[typeddict-unknown-key]
        )
    assert info.value.status_code == 400 and info.value.param == "response_format"


async def test_unknown_model(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="nope", messages=HI)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"


async def test_upstream_429_passes_through_with_retry_after(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    upstream.default = Reply(status=429, retry_after=7, error_message="slow down")
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="fast", messages=HI)  # type: ignore[arg-type]
    assert info.value.response.headers["retry-after"] == "7"
    assert "slow down" in info.value.message
    assert len(upstream.requests) == 1  # Retry-After past max_retry_after_s: no retry here


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_500_is_502_after_retries(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI, stream: bool
) -> None:
    upstream.default = Reply(status=500)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="fast", messages=HI, stream=stream)  # type: ignore[call-overload]
    assert info.value.status_code == 502
    assert len(upstream.requests) == 3  # one try and two retries


async def test_upstream_400_is_passed_on_without_retry(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    upstream.default = Reply(status=400, error_message="context too long")
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="fast", messages=HI)  # type: ignore[arg-type]
    assert "context too long" in info.value.message
    assert len(upstream.requests) == 1


async def test_first_byte_timeout_is_504(client: openai.AsyncOpenAI, upstream: FakeOpenAI) -> None:
    upstream.default = Reply(first_token_delay=30)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="fast", messages=HI, stream=True)  # type: ignore[arg-type]
    assert info.value.status_code == 504
    assert len(upstream.requests) == 3  # a timeout is retried, like a 5xx


async def test_total_timeout_non_streaming(serve: Serve, tmp_path: Path) -> None:
    async with FakeOpenAI() as fake:
        fake.default = Reply(delay=30)
        text = openai_config(fake.base_url, routing="retries = 0").replace(
            "total_timeout_s = 10", "total_timeout_s = 0.5"
        )
        base = await serve(write_config(tmp_path, text))
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as c:
            with pytest.raises(openai.APIStatusError) as info:
                await c.chat.completions.create(model="fast", messages=HI)  # type: ignore[arg-type]
        assert info.value.status_code == 504
        assert await fake.wait_disconnect()  # the stalled upstream call was dropped


async def test_malformed_answer_is_502(client: openai.AsyncOpenAI, upstream: FakeOpenAI) -> None:
    upstream.default = Reply(malformed_after=0)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="fast", messages=HI, stream=True)  # type: ignore[arg-type]
    assert info.value.status_code == 502


# --- errors after the first byte -----------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (Reply(text="a b c d e", token_delay=0.05, stall_after=2), "idle timeout"),
        (Reply(text="a b c d e", token_delay=0.05, reset_after=2), "closed the connection"),
        (Reply(text="a b c d e", token_delay=0.05, malformed_after=2), "malformed"),
        (Reply(text="a b c d e", token_delay=0.05, no_terminator=True), "terminator"),
    ],
    ids=["stall", "reset", "malformed", "no-terminator"],
)
async def test_mid_stream_failure_is_an_error_event_without_done(
    base: str, client: openai.AsyncOpenAI, upstream: FakeOpenAI, reply: Reply, words: str
) -> None:
    # the token delay makes the first chunk reach the client before the fault does
    upstream.script(reply)
    status, body = await raw_stream(base, {"model": "fast", "messages": HI, "stream": True})
    assert status == 200
    events = [e for e in body.split(b"\n\n") if e]
    assert b"[DONE]" not in body
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert words in last["error"]["message"]
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert len(upstream.requests) == 1  # nothing is retried once the client has bytes

    upstream.script(reply)
    stream = await client.chat.completions.create(model="fast", messages=HI, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


# --- cancellation --------------------------------------------------------------------------


async def test_client_disconnect_cancels_streaming_upstream(
    base: str, upstream: FakeOpenAI
) -> None:
    upstream.script(Reply(text="a b c d e f", stall_after=1))
    upstream_timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=upstream_timeout) as s:
        r = await s.post(
            f"{base}/v1/chat/completions", json={"model": "fast", "messages": HI, "stream": True}
        )
        await r.content.readuntil(b"\n\n")  # the first chunk is here; the upstream now stalls
        waiter = asyncio.ensure_future(upstream.wait_disconnect())
        closed_at = time.monotonic()
        r.close()
        noticed_at = await waiter
    assert noticed_at - closed_at < 0.1


async def test_client_disconnect_cancels_non_streaming_upstream(
    base: str, upstream: FakeOpenAI
) -> None:
    upstream.script(Reply(delay=30))
    async with aiohttp.ClientSession() as s:
        task = asyncio.ensure_future(
            s.post(f"{base}/v1/chat/completions", json={"model": "fast", "messages": HI})
        )
        while upstream.in_flight == 0:  # noqa: ASYNC110 - the fake offers no event for this
            await asyncio.sleep(0.01)
        waiter = asyncio.ensure_future(upstream.wait_disconnect())
        closed_at = time.monotonic()
        task.cancel()
        noticed_at = await waiter
    assert noticed_at - closed_at < 0.1


async def test_large_answer_is_read_whole(client: openai.AsyncOpenAI, upstream: FakeOpenAI) -> None:
    """A body that arrives in many pieces is read to its end, not to the first piece."""
    text = "word " * 400_000  # 2 MB
    upstream.script(Reply(text=text))
    answer = await client.chat.completions.create(model="fast", messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == text
