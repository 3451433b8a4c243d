"""The provider contract: the same scripted conversations, tool calls, faults and usage checks,
in every client format (chat completions, Messages, Responses), streamed and not, against
every provider. A new provider is done when it passes: add it to `PROVIDERS`, with what its
upstream can be scripted to do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from noroshi.app import App
from noroshi.config import Config
from tests.conftest import Serve, _serve_noroshi, write_config
from tests.fakes.upstream import FakeAnthropic, FakeOpenAI, Reply

MASTER = "sk-contract"
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
FORMATS = ["chat", "messages", "responses"]


@dataclass
class Gateway:
    base: str
    script: Callable[..., None] | None  # queues `Reply`s; None: the upstream is a real model
    disconnects: Callable[[], Any] | None = None
    thinking: bool = True  # whether the upstream can be scripted to think
    kinds: bool = True  # whether the upstream reports cached tokens


@dataclass
class Result:
    """What any client format said, in one shape."""

    status: int = 200
    text: str = ""
    thinking: str = ""
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    stop: str = ""  # "end", "tool" or "length"
    usage: tuple[int, int] = (0, 0)
    complete: bool = False  # ended with its format's success terminator
    error: str = ""


# --- the providers -------------------------------------------------------------------------


async def _openai(serve: Serve, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with FakeOpenAI() as fake:
        yield Gateway(
            await serve(write_config(tmp_path, _config("openai", fake.base_url))),
            fake.script,
            fake.wait_disconnect,
        )


async def _anthropic(serve: Serve, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with FakeAnthropic() as fake:
        yield Gateway(
            await serve(write_config(tmp_path, _config("anthropic", fake.origin))),
            fake.script,
            fake.wait_disconnect,
        )


async def _local(serve: Serve, tmp_path: Path) -> AsyncIterator[Gateway]:
    pytest.importorskip("llama_cpp")
    config = _config("local", "", "max_tokens = 8\ncontext_tokens = 1024\n")
    yield Gateway(await serve(write_config(tmp_path, config)), None, thinking=False, kinds=False)


async def _core(serve: Serve, tmp_path: Path) -> AsyncIterator[Gateway]:
    """An edge in front of a core in front of OpenAI: what a client sends the edge reaches
    the core as chat completions, thinking and all."""
    secret = f'[internal]\nsecret = "{"s" * 32}"\n'
    async with FakeOpenAI() as fake:
        core_dir, edge_dir = tmp_path / "core", tmp_path / "edge"
        core_dir.mkdir()
        edge_dir.mkdir()
        text = _config("openai", fake.base_url, tail=secret)
        core = await serve(write_config(core_dir, text, {"NOROSHI_SERVER__ROLE": "core"}))
        edge = await serve(
            write_config(
                edge_dir,
                text,
                {
                    "NOROSHI_SERVER__ROLE": "edge",
                    "NOROSHI_SERVER__CORES": f'["{core}"]',
                },
            )
        )
        yield Gateway(edge, fake.script, fake.wait_disconnect)


PROVIDERS = {"openai": _openai, "anthropic": _anthropic, "local": _local, "core": _core}


def _config(kind: str, base_url: str, extra: str = "", tail: str = "") -> str:
    url = f'base_url = "{base_url}"\n' if base_url else ""
    return f"""
[auth]
master_key = "{MASTER}"
[providers.up]
type = "{kind}"
{url}first_byte_timeout_s = 5
idle_timeout_s = 2
{extra}
[routing]
retries = 0
[[models]]
name = "m"
deployments = [{{ provider = "up", model = "up-model" }}]
{tail}"""


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """One transport here: the contract is the providers', the adapters have their own tests."""
    running: list[tuple[App, Callable[[], Any]]] = []

    async def start(config: Config) -> str:
        app = App(config)
        url, stop = await _serve_noroshi(app)
        running.append((app, stop))
        return url

    yield start
    for app, stop in running:
        await stop()
        await app.shutdown()


@pytest.fixture(params=list(PROVIDERS))
async def gateway(
    request: pytest.FixtureRequest, serve: Serve, tmp_path: Path
) -> AsyncIterator[Gateway]:
    async for gw in PROVIDERS[request.param](serve, tmp_path):
        yield gw


def scripted(gw: Gateway) -> Callable[..., None]:
    if gw.script is None:
        pytest.skip("this provider's upstream is a real model: it cannot be scripted")
    return gw.script


# --- the client formats --------------------------------------------------------------------


def _request(fmt: str, prompt: str, stream: bool, tools: bool) -> tuple[str, dict[str, Any]]:
    if fmt == "chat":
        body: dict[str, Any] = {
            "model": "m",
            "messages": [{"role": "user", "content": prompt}],
            "stream": stream,
            "max_tokens": 64,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if tools:
            body["tools"] = [{"type": "function", "function": WEATHER}]
        return "/v1/chat/completions", body
    if fmt == "messages":
        body = {
            "model": "m",
            "max_tokens": 64,
            "stream": stream,
            "messages": [{"role": "user", "content": prompt}],
        }
        if tools:
            body["tools"] = [
                {
                    "name": WEATHER["name"],
                    "description": WEATHER["description"],
                    "input_schema": WEATHER["parameters"],
                }
            ]
        return "/v1/messages", body
    body = {"model": "m", "input": prompt, "stream": stream, "max_output_tokens": 64}
    if tools:
        body["tools"] = [{"type": "function", **WEATHER}]
    return "/v1/responses", body


async def ask(
    gw: Gateway, fmt: str, prompt: str = "Hi", *, stream: bool = False, tools: bool = False
) -> Result:
    path, body = _request(fmt, prompt, stream, tools)
    headers = {"authorization": f"Bearer {MASTER}"}
    async with (
        aiohttp.ClientSession(headers=headers) as s,
        s.post(f"{gw.base}{path}", json=body) as r,
    ):
        raw = await r.read()
    if r.status != 200:
        return Result(status=r.status, error=raw.decode())
    if not stream:
        return PARSE[fmt](json.loads(raw))
    return FOLD[fmt](_events(raw))


def _events(raw: bytes) -> list[tuple[str, Any]]:
    out = []
    for block in raw.decode().split("\n\n"):
        name, data = "message", ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data:
            out.append((name, data if data == "[DONE]" else json.loads(data)))
    return out


def _chat(body: dict[str, Any]) -> Result:
    message = body["choices"][0]["message"]
    calls = [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in message.get("tool_calls") or ()
    ]
    stop = {"stop": "end", "tool_calls": "tool", "length": "length"}[
        body["choices"][0]["finish_reason"]
    ]
    usage = body["usage"]
    return Result(
        text=message.get("content") or "",
        thinking=message.get("reasoning_content", ""),
        calls=calls,
        stop=stop,
        complete=True,
        usage=(usage["prompt_tokens"], usage["completion_tokens"]),
    )


def _fold_chat(events: list[tuple[str, Any]]) -> Result:
    result = Result(complete=events[-1][1] == "[DONE]")
    args: dict[int, list[str]] = {}
    heads: dict[int, tuple[str, str]] = {}
    for _, data in events:
        if data == "[DONE]":
            continue
        if "error" in data:
            result.error = data["error"]["message"]
            continue
        if data.get("usage"):
            result.usage = (data["usage"]["prompt_tokens"], data["usage"]["completion_tokens"])
        for choice in data["choices"]:
            delta = choice["delta"]
            result.text += delta.get("content") or ""
            result.thinking += delta.get("reasoning_content") or ""
            for tc in delta.get("tool_calls") or ():
                if tc.get("id"):
                    heads[tc["index"]] = (tc["id"], tc["function"]["name"])
                args.setdefault(tc["index"], []).append(tc["function"].get("arguments") or "")
            if choice.get("finish_reason"):
                result.stop = {"stop": "end", "tool_calls": "tool", "length": "length"}[
                    choice["finish_reason"]
                ]
    result.calls = [(*heads[i], json.loads("".join(args[i]))) for i in sorted(heads)]
    return result


def _messages(body: dict[str, Any]) -> Result:
    result = Result(complete=True, usage=_anthropic_usage(body["usage"]))
    for block in body["content"]:
        if block["type"] == "text":
            result.text += block["text"]
        elif block["type"] == "thinking":
            result.thinking += block["thinking"]
        elif block["type"] == "tool_use":
            result.calls.append((block["id"], block["name"], block["input"]))
    result.stop = {"end_turn": "end", "tool_use": "tool", "max_tokens": "length"}[
        body["stop_reason"]
    ]
    return result


def _anthropic_usage(usage: dict[str, Any]) -> tuple[int, int]:
    prompt = usage["input_tokens"] + usage.get("cache_read_input_tokens", 0)
    return prompt + usage.get("cache_creation_input_tokens", 0), usage["output_tokens"]


def _fold_messages(events: list[tuple[str, Any]]) -> Result:
    result = Result(complete=events[-1][0] == "message_stop")
    blocks: dict[int, dict[str, Any]] = {}
    usage: dict[str, Any] = {}
    for name, data in events:
        if name == "error":
            result.error = data["error"]["message"]
        elif name == "message_start":
            usage = data["message"]["usage"]
            result.usage = _anthropic_usage(usage)
        elif name == "content_block_start":
            blocks[data["index"]] = {**data["content_block"], "json": ""}
        elif name == "content_block_delta":
            block, delta = blocks[data["index"]], data["delta"]
            block["text"] = block.get("text", "") + delta.get("text", "")
            block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
            block["json"] += delta.get("partial_json", "")
        elif name == "message_delta":  # counts it names replace those of message_start
            usage = {**usage, **data["usage"]}
            result.usage = _anthropic_usage(usage)
            result.stop = {"end_turn": "end", "tool_use": "tool", "max_tokens": "length"}[
                data["delta"]["stop_reason"]
            ]
    for _, block in sorted(blocks.items()):
        if block["type"] == "text":
            result.text += block["text"]
        elif block["type"] == "thinking":
            result.thinking += block["thinking"]
        elif block["type"] == "tool_use":
            result.calls.append((block["id"], block["name"], json.loads(block["json"] or "{}")))
    return result


def _responses(body: dict[str, Any]) -> Result:
    result = Result(complete=body["status"] in ("completed", "incomplete"))
    for item in body["output"]:
        if item["type"] == "message":
            result.text += "".join(c["text"] for c in item["content"])
        elif item["type"] == "reasoning":
            result.thinking += "".join(c["text"] for c in item.get("content") or ())
        elif item["type"] == "function_call":
            result.calls.append((item["call_id"], item["name"], json.loads(item["arguments"])))
    result.stop = "tool" if result.calls else "end"
    if body["status"] == "incomplete":
        result.stop = "length"
    usage = body.get("usage") or {}
    result.usage = (usage.get("input_tokens", 0), usage.get("output_tokens", 0))
    if body.get("error"):
        result.error = body["error"]["message"]
    return result


def _fold_responses(events: list[tuple[str, Any]]) -> Result:
    numbers = [data["sequence_number"] for _, data in events]
    assert numbers == list(range(len(events))), "every event has the next sequence number"
    final = events[-1][1]
    result = _responses(final["response"])
    result.complete = final["type"] in ("response.completed", "response.incomplete")
    deltas = "".join(d["delta"] for _, d in events if d["type"] == "response.output_text.delta")
    assert deltas == result.text, "the deltas add up to the final text"
    return result


PARSE = {"chat": _chat, "messages": _messages, "responses": _responses}
FOLD = {"chat": _fold_chat, "messages": _fold_messages, "responses": _fold_responses}


# --- the contract --------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_text_answer(gateway: Gateway, fmt: str, stream: bool) -> None:
    if gateway.script is not None:
        gateway.script(Reply(text="The sky is blue.", prompt_tokens=9, completion_tokens=5))
    result = await ask(gateway, fmt, "What colour is the sky?", stream=stream)
    assert result.status == 200 and result.complete and not result.error
    assert result.text and result.stop in ("end", "length")
    prompt, completion = result.usage
    assert prompt > 0 and completion > 0
    if gateway.script is not None:
        assert (result.text, result.stop, result.usage) == ("The sky is blue.", "end", (9, 5))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
async def test_parallel_tool_calls(gateway: Gateway, fmt: str, stream: bool) -> None:
    scripted(gateway)(
        Reply(
            tool_calls=[
                {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
                {"id": "call_b", "name": "get_weather", "arguments": '{"city": "Lima"}'},
            ]
        )
    )
    result = await ask(gateway, fmt, "Oslo and Lima?", stream=stream, tools=True)
    assert result.complete and result.stop == "tool"
    assert result.calls == [
        ("call_a", "get_weather", {"city": "Oslo"}),
        ("call_b", "get_weather", {"city": "Lima"}),
    ]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
async def test_thinking_stays_thinking(gateway: Gateway, fmt: str, stream: bool) -> None:
    if not gateway.thinking:
        pytest.skip("this provider's upstream does not think")
    scripted(gateway)(Reply(text="4", reasoning="two and two"))
    result = await ask(gateway, fmt, "2+2?", stream=stream)
    assert (result.text, result.thinking) == ("4", "two and two")


@pytest.mark.parametrize("fmt", FORMATS)
async def test_an_upstream_refusal_before_the_first_byte_is_a_status(
    gateway: Gateway, fmt: str
) -> None:
    scripted(gateway)(Reply(status=500, error_message="boom"))
    result = await ask(gateway, fmt, stream=True)
    assert result.status == 500 if fmt == "messages" else result.status == 502
    assert "boom" in result.error


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_cut_upstream_is_an_error_event_never_a_success(gateway: Gateway, fmt: str) -> None:
    scripted(gateway)(Reply(text="a b c d e f", token_delay=0.02, reset_after=2))
    result = await ask(gateway, fmt, stream=True)
    assert result.status == 200 and result.error and not result.complete


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_client_that_leaves_cancels_the_upstream(gateway: Gateway, fmt: str) -> None:
    scripted(gateway)(Reply(text=" ".join(["w"] * 60), token_delay=0.05))
    assert gateway.disconnects is not None
    path, body = _request(fmt, "Hi", True, False)
    async with (
        aiohttp.ClientSession(headers={"authorization": f"Bearer {MASTER}"}) as s,
        s.post(f"{gateway.base}{path}", json=body) as r,
    ):
        await r.content.readuntil(b"\n\n")
    await gateway.disconnects()


@pytest.mark.parametrize("fmt", FORMATS)
async def test_usage_is_recorded_by_kind(gateway: Gateway, fmt: str) -> None:
    if gateway.script is not None:
        gateway.script(
            Reply(text="ok", prompt_tokens=10, cache_read_tokens=30, completion_tokens=4)
        )
    result = await ask(gateway, fmt)
    assert result.status == 200
    headers = {"authorization": f"Bearer {MASTER}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        for _ in range(100):
            async with s.get(f"{gateway.base}/admin/usage") as r:
                rows = (await r.json())["data"]
            if rows:
                break
            await asyncio.sleep(0.02)
    (row,) = rows
    assert (
        row["route"]
        == {
            "chat": "/v1/chat/completions",
            "messages": "/v1/messages",
            "responses": "/v1/responses",
        }[fmt]
    )
    assert (row["prompt_tokens"], row["completion_tokens"]) == result.usage
    if gateway.script is not None and gateway.kinds:
        assert (row["prompt_tokens"], row["cache_read_tokens"]) == (40, 30)
