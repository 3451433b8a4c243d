"""The fake upstreams speak the providers' wire formats and misbehave exactly on cue."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.fakes import FakeAnthropic, FakeOpenAI, Reply
from tests.fakes.upstream import split_text
from tests.posting import post

HI = [{"role": "user", "content": "Hi"}]
CALL = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
ANTHROPIC_HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


def sse_data(body: bytes) -> list[bytes]:
    """The `data:` payloads of an SSE body, in order."""
    return [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e]


def sse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, parsed data) pairs of an Anthropic-style SSE body."""
    out = []
    for block in body.decode().split("\n\n"):
        if not block:
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((fields["event"], json.loads(fields["data"])))
    return out


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll `condition` every 10 ms until it holds."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_split_text_keeps_spaces() -> None:
    text = "Hello from  the fake upstream. "
    assert split_text(text) == ["Hello ", "from  ", "the ", "fake ", "upstream. "]
    for n in (1, 2, 3, 5, 8, 100):
        pieces = split_text(text, n)
        assert "".join(pieces) == text
        assert len(pieces) == min(n, len(text))


async def test_openai_stream_ends_with_usage_and_done() -> None:
    async with FakeOpenAI() as fake:
        fake.script(Reply(text="one two three"))
        payload = {"model": "m1", "messages": HI, "stream": True}
        payload["stream_options"] = {"include_usage": True}
        status, headers, body = await post(f"{fake.base_url}/chat/completions", payload)
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        data = sse_data(body)
        assert data[-1] == b"[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert all(c["model"] == "m1" and c["id"].startswith("chatcmpl-fake") for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
        assert text == "one two three"
        assert len(chunks) == 1 + 3 + 1 + 1  # role, 3 words, finish, usage
        assert chunks[-2]["choices"][0] == {
            "index": 0,
            "delta": {},
            "logprobs": None,
            "finish_reason": "stop",
        }
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == {
            "prompt_tokens": 7,
            "completion_tokens": 3,
            "total_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }

        # without include_usage: no usage chunk, and the echo: convention sets the text
        payload = {
            "model": "m1",
            "messages": [{"role": "user", "content": "echo: a b"}],
            "stream": True,
        }
        _, _, body = await post(f"{fake.base_url}/chat/completions", payload)
        chunks = [json.loads(d) for d in sse_data(body)[:-1]]
        assert all("usage" not in c and c["choices"] for c in chunks)
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "a b"
        assert len(fake.requests) == 2 and fake.requests[0].body["stream"] is True


async def test_openai_non_stream_auth_models_and_embeddings() -> None:
    async with FakeOpenAI(api_key="k") as fake:
        status, _, body = await post(f"{fake.base_url}/chat/completions", {"messages": HI})
        assert status == 401
        assert json.loads(body)["error"]["type"] == "invalid_request_error"

        auth = {"Authorization": "Bearer k"}
        fake.script(Reply(text="Fine, thanks.", finish_reason="length"))
        status, _, body = await post(
            f"{fake.base_url}/chat/completions", {"model": "m1", "messages": HI}, headers=auth
        )
        answer = json.loads(body)
        assert status == 200 and answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"]["content"] == "Fine, thanks."
        assert answer["choices"][0]["finish_reason"] == "length"
        assert answer["usage"]["completion_tokens"] == 2
        assert fake.requests[-1].headers["authorization"] == "Bearer k"
        assert fake.requests[-1].headers["Authorization"] == "Bearer k"

        fake.script(Reply(tool_calls=[CALL]))
        _, _, body = await post(
            f"{fake.base_url}/chat/completions", {"model": "m1", "messages": HI}, headers=auth
        )
        choice = json.loads(body)["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        assert choice["message"]["tool_calls"] == [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ]

        async with aiohttp.ClientSession(headers=auth) as s:
            async with s.get(f"{fake.base_url}/models") as r:
                models = await r.json()
            assert models["object"] == "list" and models["data"][0]["object"] == "model"
            payload = {"model": "e", "input": ["a", "b", "a"]}
            async with s.post(f"{fake.base_url}/embeddings", json=payload) as r:
                emb = await r.json()
        vectors = [d["embedding"] for d in emb["data"]]
        assert len(vectors) == 3 and len(vectors[0]) == 8
        assert vectors[0] == vectors[2] != vectors[1]


async def test_openai_tool_call_stream() -> None:
    async with FakeOpenAI() as fake:
        fake.script(Reply(tool_calls=[CALL, {"id": "call_2", "name": "now", "arguments": "{}"}]))
        payload = {"model": "m1", "messages": HI, "stream": True}
        _, _, body = await post(f"{fake.base_url}/chat/completions", payload)
        data = sse_data(body)
        assert data[-1] == b"[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        deltas = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
        assert deltas[0] == {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
        for index, call in ((0, CALL), (1, {"id": "call_2", "arguments": "{}"})):
            mine = [d for d in deltas if d["index"] == index]
            assert mine[0]["id"] == call["id"]
            pieces = [d["function"]["arguments"] for d in mine[1:]]
            assert len(pieces) >= 2 and "".join(pieces) == call["arguments"]
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_openai_429_has_retry_after_and_error_envelope() -> None:
    async with FakeOpenAI() as fake:
        fake.script(Reply(status=429, retry_after=7, error_message="slow down"))
        status, headers, body = await post(f"{fake.base_url}/chat/completions", {"messages": HI})
        assert status == 429
        assert headers["Retry-After"] == "7"
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["message"] == "slow down" and error["param"] is None
        # the queue is empty again: the default answer follows
        status, _, _ = await post(f"{fake.base_url}/chat/completions", {"messages": HI})
        assert status == 200


async def test_openai_no_terminator() -> None:
    async with FakeOpenAI() as fake:
        fake.script(Reply(text="a b", no_terminator=True))
        payload = {"model": "m1", "messages": HI, "stream": True}
        status, _, body = await post(f"{fake.base_url}/chat/completions", payload)
        assert status == 200
        assert b"[DONE]" not in body
        chunks = [json.loads(d) for d in sse_data(body)]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_openai_malformed_chunk_then_continues() -> None:
    async with FakeOpenAI() as fake:
        fake.script(Reply(text="a b c", malformed_after=1))
        payload = {"model": "m1", "messages": HI, "stream": True}
        _, _, body = await post(f"{fake.base_url}/chat/completions", payload)
        data = sse_data(body)
        bad = [d for d in data if d != b"[DONE]" and not d.endswith(b"}")]
        assert bad == [b'{"choices": [']
        assert data.index(bad[0]) == 2  # role chunk, "a ", then the broken line
        assert data[-1] == b"[DONE]"


async def test_openai_reset_aborts_the_connection() -> None:
    async with FakeOpenAI() as fake:
        fake.script(Reply(text="a b c d", reset_after=2))
        payload = {"model": "m1", "messages": HI, "stream": True}
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{fake.base_url}/chat/completions", json=payload) as r,
        ):
            assert r.status == 200
            received = b""
            with pytest.raises(aiohttp.ClientError):
                async for part in r.content.iter_any():
                    received += part
        assert b'"content":"b "' in received and b'"content":"c "' not in received
        assert fake.disconnects == 0  # our own abort is not a client disconnect
        assert fake.in_flight == 0


async def test_stall_then_client_disconnect_is_noticed() -> None:
    async with FakeOpenAI() as fake:
        fake.script(Reply(text="a b c d", stall_after=1))
        payload = {"model": "m1", "messages": HI, "stream": True}
        async with aiohttp.ClientSession() as s:
            r = await s.post(f"{fake.base_url}/chat/completions", json=payload)
            await r.content.readuntil(b"\n\n")  # role chunk
            await r.content.readuntil(b"\n\n")  # "a "
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(r.content.readuntil(b"\n\n"), 0.2)
            assert fake.in_flight == 1 and fake.disconnects == 0
            waiter = asyncio.ensure_future(fake.wait_disconnect())
            closed_at = time.monotonic()
            r.close()
            noticed_at = await waiter
        assert 0 <= noticed_at - closed_at < 0.1
        assert fake.disconnects == 1
        await until(lambda: fake.in_flight == 0)


async def test_delay_then_client_disconnect_is_noticed() -> None:
    async with FakeOpenAI() as fake:
        fake.script(Reply(delay=30))
        async with aiohttp.ClientSession() as s:
            task = asyncio.ensure_future(
                s.post(f"{fake.base_url}/chat/completions", json={"messages": HI})
            )
            await until(lambda: fake.in_flight == 1)
            closed_at = time.monotonic()
            task.cancel()
            noticed_at = await fake.wait_disconnect()
        assert 0 <= noticed_at - closed_at < 0.1
        assert fake.disconnects == 1
        assert await fake.wait_disconnect() == noticed_at  # it may be asked after the fact

        fake.script(Reply())  # a new request moves the baseline: nothing to wait for now
        status, _, _ = await post(f"{fake.base_url}/chat/completions", {"messages": HI})
        assert status == 200
        with pytest.raises(TimeoutError):
            await fake.wait_disconnect(timeout=0.05)


async def test_close_ends_stalled_answers_quickly() -> None:
    fake = await FakeOpenAI().start()
    fake.script(Reply(stall_after=0))
    payload = {"model": "m1", "messages": HI, "stream": True}
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{fake.base_url}/chat/completions", json=payload)
        await r.content.readuntil(b"\n\n")
        started = time.monotonic()
        await fake.close()
        assert time.monotonic() - started < 1.5
        r.close()


async def test_anthropic_stream_event_sequence() -> None:
    async with FakeAnthropic(api_key="k") as fake:
        fake.script(Reply(text="Hi there", prompt_tokens=11))
        payload = {"model": "claude-x", "max_tokens": 64, "messages": HI, "stream": True}
        status, headers, body = await post(
            f"{fake.base_url}/messages", payload, headers=ANTHROPIC_HEADERS
        )
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(body)
        names = [name for name, _ in events]
        assert names == [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        assert all(data["type"] == name for name, data in events)
        message = events[0][1]["message"]
        assert message["id"].startswith("msg_fake") and message["model"] == "claude-x"
        assert message["usage"]["input_tokens"] == 11
        assert events[1][1]["content_block"] == {"type": "text", "text": ""}
        text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
        assert text == "Hi there"
        assert events[6][1]["delta"]["stop_reason"] == "end_turn"
        assert events[6][1]["usage"]["output_tokens"] == 2

        fake.script(Reply(tool_calls=[CALL]))
        _, _, body = await post(f"{fake.base_url}/messages", payload, headers=ANTHROPIC_HEADERS)
        events = sse_events(body)
        assert events[1][1]["content_block"] == {
            "type": "tool_use",
            "id": "call_1",
            "name": "get_weather",
            "input": {},
        }
        parts = [d["delta"] for n, d in events if n == "content_block_delta"]
        assert len(parts) >= 2 and all(p["type"] == "input_json_delta" for p in parts)
        assert json.loads("".join(p["partial_json"] for p in parts)) == {"city": "Paris"}
        assert (
            next(d for n, d in events if n == "message_delta")["delta"]["stop_reason"] == "tool_use"
        )
        assert events[-1][0] == "message_stop"

        fake.script(Reply(text="a b c", mid_stream_error="Overloaded"))
        _, _, body = await post(f"{fake.base_url}/messages", payload, headers=ANTHROPIC_HEADERS)
        events = sse_events(body)
        assert events[-1] == (
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )
        assert "message_stop" not in [n for n, _ in events]

        fake.script(Reply(text="a b", no_terminator=True))
        _, _, body = await post(f"{fake.base_url}/messages", payload, headers=ANTHROPIC_HEADERS)
        assert [n for n, _ in sse_events(body)][-1] == "message_delta"


async def test_anthropic_non_stream_shape_and_errors() -> None:
    async with FakeAnthropic(api_key="k") as fake:
        payload = {
            "model": "claude-x",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "echo: pong"}]}],
        }
        status, _, body = await post(
            f"{fake.base_url}/messages", payload, headers=ANTHROPIC_HEADERS
        )
        answer = json.loads(body)
        assert status == 200
        assert set(answer) == {
            "id",
            "type",
            "role",
            "model",
            "content",
            "stop_reason",
            "stop_sequence",
            "usage",
        }
        assert answer["type"] == "message" and answer["role"] == "assistant"
        assert answer["content"] == [{"type": "text", "text": "pong"}]
        assert answer["stop_reason"] == "end_turn" and answer["stop_sequence"] is None
        assert answer["usage"] == {
            "input_tokens": 7,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 1,
        }

        fake.script(Reply(tool_calls=[CALL]))
        _, _, body = await post(f"{fake.base_url}/messages", payload, headers=ANTHROPIC_HEADERS)
        answer = json.loads(body)
        assert answer["content"] == [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
        ]
        assert answer["stop_reason"] == "tool_use"

        fake.script(Reply(status=529, error_message="busy", retry_after=0.5))
        status, headers, body = await post(
            f"{fake.base_url}/messages", payload, headers=ANTHROPIC_HEADERS
        )
        assert status == 529 and headers["Retry-After"] == "0.5"
        assert json.loads(body) == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "busy"},
        }

        status, _, body = await post(
            f"{fake.base_url}/messages", payload, headers={"anthropic-version": "2023-06-01"}
        )
        assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"


async def test_anthropic_missing_version_is_400() -> None:
    async with FakeAnthropic() as fake:
        fake.script(Reply(text="unused"))
        payload = {"model": "claude-x", "max_tokens": 64, "messages": HI}
        status, _, body = await post(f"{fake.base_url}/messages", payload)
        assert status == 400
        error = json.loads(body)
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
        assert "anthropic-version" in error["error"]["message"]
        assert len(fake.requests) == 1  # recorded, but the scripted reply is still queued
        status, _, body = await post(
            f"{fake.base_url}/messages", payload, headers={"anthropic-version": "2023-06-01"}
        )
        assert status == 200 and json.loads(body)["content"][0]["text"] == "unused"


async def test_requests_are_timestamped() -> None:
    async with FakeOpenAI() as fake:
        before = time.monotonic()
        await post(f"{fake.base_url}/chat/completions", {"messages": HI})
        await asyncio.sleep(0.05)
        await post(f"{fake.base_url}/chat/completions", {"messages": HI})
        first, second = fake.requests
        assert before <= first.received_at and second.received_at - first.received_at >= 0.05
