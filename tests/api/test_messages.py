"""Anthropic's Messages API end to end: the official `anthropic` SDK against noroshi, in front
of a fake Anthropic (passed through as it is) and a fake OpenAI (translated)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest

from tests.conftest import Serve, write_config
from tests.fakes.upstream import FakeAnthropic, FakeOpenAI, Reply

MASTER = "sk-master-messages"
HI = [{"role": "user", "content": "Hi"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key="ant-key") as fake:
        yield fake


@pytest.fixture
async def gpt() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="oai-key") as fake:
        yield fake


@pytest.fixture
async def base(serve: Serve, tmp_path: Path, claude: FakeAnthropic, gpt: FakeOpenAI) -> str:
    config = f"""
[providers.claude]
type = "anthropic"
base_url = "{claude.origin}"
api_key = "ant-key"
first_byte_timeout_s = 1
idle_timeout_s = 1
[providers.oai]
type = "openai"
base_url = "{gpt.base_url}"
api_key = "oai-key"
first_byte_timeout_s = 1
idle_timeout_s = 1
[routing]
retries = 0
[[models]]
name = "claude"
deployments = [{{ provider = "claude", model = "claude-sonnet-4-5" }}]
[[models]]
name = "gpt"
deployments = [{{ provider = "oai", model = "gpt-4o" }}]
[[models]]
name = "claude-then-gpt"
deployments = [{{ provider = "claude", model = "claude-sonnet-4-5" }}]
fallbacks = ["gpt"]
"""
    return await serve(write_config(tmp_path, config, {"NOROSHI_MASTER_KEY": MASTER}))


@pytest.fixture
async def client(base: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=base, api_key=MASTER, max_retries=0) as c:
        yield c


# --- passed through to Anthropic -----------------------------------------------------------


async def test_create_passes_the_request_through(
    client: anthropic.AsyncAnthropic, claude: FakeAnthropic
) -> None:
    claude.script(Reply(text="Hello there.", completion_tokens=3, cache_read_tokens=5))
    message = await client.messages.create(
        model="claude",
        max_tokens=100,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=HI,  # type: ignore[arg-type]
        extra_headers={"anthropic-beta": "some-beta-2025-01-01"},
        extra_body={"service_tier": "auto"},
    )
    assert message.content[0].type == "text" and message.content[0].text == "Hello there."
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 3)
    assert message.usage.cache_read_input_tokens == 5
    sent = claude.requests[-1]
    assert sent.body["model"] == "claude-sonnet-4-5"
    assert sent.body["service_tier"] == "auto"  # an unknown field reaches Anthropic
    assert sent.body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent.headers["anthropic-beta"] == "some-beta-2025-01-01"
    assert sent.headers["x-api-key"] == "ant-key"  # the provider's key, not the client's


async def test_stream_passes_thinking_and_its_signature_through(
    client: anthropic.AsyncAnthropic, claude: FakeAnthropic
) -> None:
    claude.script(Reply(text="The answer is 4.", reasoning="2 and 2 make 4.", signature="sig-1"))
    async with client.messages.stream(
        model="claude",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "2+2?"}],
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start"
    assert "content_block_start" in kinds and "message_stop" in kinds
    thinking, text = final.content
    assert thinking.type == "thinking" and thinking.thinking == "2 and 2 make 4."
    assert thinking.signature == "sig-1"
    assert text.type == "text" and text.text == "The answer is 4."
    assert claude.requests[-1].body["thinking"] == {"type": "enabled", "budget_tokens": 1024}


async def test_beta_messages_keep_their_query(
    client: anthropic.AsyncAnthropic, claude: FakeAnthropic
) -> None:
    await client.beta.messages.create(model="claude", max_tokens=10, messages=HI)  # type: ignore[arg-type]
    assert claude.requests[-1].path == "/v1/messages"
    assert claude.requests[-1].body["model"] == "claude-sonnet-4-5"


# --- translated for an OpenAI-compatible upstream ------------------------------------------


async def test_create_in_front_of_openai(client: anthropic.AsyncAnthropic, gpt: FakeOpenAI) -> None:
    gpt.script(Reply(text="Hi, human.", completion_tokens=3, cache_read_tokens=4))
    message = await client.messages.create(
        model="gpt",
        max_tokens=50,
        system="Be brief.",
        messages=HI,  # type: ignore[arg-type]
        stop_sequences=["END"],
        extra_body={"temperature": 0.3},
    )
    assert message.content[0].type == "text" and message.content[0].text == "Hi, human."
    assert message.stop_reason == "end_turn" and message.model == "gpt-4o"
    assert message.id.startswith("msg_")
    # OpenAI's 11 prompt tokens, 4 of them cached: Anthropic counts those apart
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (7, 4)
    sent = gpt.requests[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert (sent["max_tokens"], sent["temperature"], sent["stop"]) == (50, 0.3, ["END"])


async def test_stream_in_front_of_openai(client: anthropic.AsyncAnthropic, gpt: FakeOpenAI) -> None:
    gpt.script(Reply(text="one two three", reasoning="counting", completion_tokens=3))
    async with client.messages.stream(model="gpt", max_tokens=50, messages=HI) as stream:  # type: ignore[arg-type]
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "one two three"
    # the upstream's reasoning stays thinking (unsigned: OpenAI signs nothing), never text
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "counting"  # type: ignore[union-attr]
    assert final.usage.output_tokens == 3 and final.usage.input_tokens == 7
    assert gpt.requests[-1].body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("model", ["claude", "gpt"])
async def test_tools_round_trip(
    client: anthropic.AsyncAnthropic, claude: FakeAnthropic, gpt: FakeOpenAI, model: str
) -> None:
    upstream = claude if model == "claude" else gpt
    call = {"id": "toolu_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    upstream.script(Reply(tool_calls=[call]), Reply(text="It is cold in Oslo."))
    question = {"role": "user", "content": "Weather in Oslo?"}
    async with client.messages.stream(
        model=model,
        max_tokens=100,
        messages=[question],
        tools=[WEATHER],  # type: ignore[list-item]
    ) as stream:
        first = await stream.get_final_message()
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert (use.id, use.name, use.input) == ("toolu_1", "get_weather", {"city": "Oslo"})
    answer = await client.messages.create(
        model=model,
        max_tokens=100,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            question,
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3 C"},
                ],
            },
        ],
    )
    assert answer.content[0].text == "It is cold in Oslo."  # type: ignore[union-attr]
    sent = upstream.requests[-1].body
    if model == "gpt":
        assert sent["tools"][0]["function"]["name"] == "get_weather"
        assert sent["messages"][1]["tool_calls"][0]["id"] == "toolu_1"
        assert json.loads(sent["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {
            "city": "Oslo"
        }
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "-3 C"}
    else:
        assert sent["messages"][2]["content"][0]["tool_use_id"] == "toolu_1"


async def test_count_tokens(client: anthropic.AsyncAnthropic, claude: FakeAnthropic) -> None:
    counted = await client.messages.count_tokens(model="claude", messages=HI)  # type: ignore[arg-type]
    assert claude.requests[-1].path == "/v1/messages/count_tokens"
    assert counted.input_tokens == claude_count(claude.requests[-1].body)
    estimated = await client.messages.count_tokens(model="gpt", messages=HI)  # type: ignore[arg-type]
    assert estimated.input_tokens > 0


def claude_count(body: dict[str, Any]) -> int:
    text = json.dumps(
        [body.get("system"), body["messages"], body.get("tools")],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return len(text) // 4 + 1


# --- gateway duties ------------------------------------------------------------------------


async def test_errors_in_anthropics_envelope_and_classes(
    base: str, client: anthropic.AsyncAnthropic, claude: FakeAnthropic
) -> None:
    async with anthropic.AsyncAnthropic(base_url=base, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as unauthorized:
            await bad.messages.create(model="claude", max_tokens=5, messages=HI)  # type: ignore[arg-type]
    assert unauthorized.value.body["type"] == "error"  # type: ignore[index]
    assert unauthorized.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as unknown:
        await client.messages.create(model="nope", max_tokens=5, messages=HI)  # type: ignore[arg-type]
    assert "nope" in unknown.value.message
    with pytest.raises(anthropic.BadRequestError) as bad_block:
        await client.messages.create(
            model="claude",
            max_tokens=5,
            messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "x"}}]}],  # type: ignore[list-item, typeddict-item]
        )
    assert "messages.0.content.0.source.type" in bad_block.value.message
    claude.script(Reply(status=500))
    with pytest.raises(anthropic.InternalServerError) as failed:
        await client.messages.create(model="claude", max_tokens=5, messages=HI)  # type: ignore[arg-type]
    assert failed.value.status_code == 500
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    claude.script(Reply(status=429, retry_after=7, error_message="slow down"))
    with pytest.raises(anthropic.RateLimitError) as limited:
        await client.messages.create(model="claude", max_tokens=5, messages=HI)  # type: ignore[arg-type]
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


async def test_missing_max_tokens_names_the_field(base: str) -> None:
    headers = {"x-api-key": MASTER}
    payload = {"model": "claude", "messages": HI}
    async with (
        aiohttp.ClientSession(headers=headers) as s,
        s.post(f"{base}/v1/messages", json=payload) as r,
    ):
        body = await r.json()
    assert r.status == 400
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


@pytest.mark.parametrize("model", ["claude", "gpt"])
async def test_an_error_mid_stream_is_an_error_event_without_message_stop(
    base: str, claude: FakeAnthropic, gpt: FakeOpenAI, model: str
) -> None:
    if model == "claude":
        claude.script(Reply(text="a b c d", token_delay=0.02, mid_stream_error="Overloaded"))
    else:
        gpt.script(Reply(text="a b c d", token_delay=0.02, malformed_after=2))
    payload = {"model": model, "max_tokens": 20, "messages": HI, "stream": True}
    async with (
        aiohttp.ClientSession(headers={"x-api-key": MASTER}) as s,
        s.post(f"{base}/v1/messages", json=payload) as r,
    ):
        body = (await r.read()).decode()
    assert r.status == 200
    assert "message_stop" not in body
    last = body.rstrip("\n").rsplit("\n\n", 1)[-1]
    assert last.startswith("event: error\n")
    error = json.loads(last.split("data: ", 1)[1])
    # Anthropic's own overloaded error stays one; a broken OpenAI stream is an API error
    kind = "overloaded_error" if model == "claude" else "api_error"
    assert error["type"] == "error" and error["error"]["type"] == kind


async def test_a_client_that_leaves_cancels_the_upstream(
    client: anthropic.AsyncAnthropic, gpt: FakeOpenAI
) -> None:
    gpt.script(Reply(text=" ".join(["w"] * 50), token_delay=0.05))
    async with client.messages.stream(model="gpt", max_tokens=100, messages=HI) as stream:  # type: ignore[arg-type]
        async for event in stream:
            if event.type == "content_block_delta":
                break
    await gpt.wait_disconnect()


async def test_a_failed_anthropic_falls_back_to_openai(
    client: anthropic.AsyncAnthropic, claude: FakeAnthropic, gpt: FakeOpenAI
) -> None:
    claude.script(Reply(status=500))
    gpt.script(Reply(text="from the fallback"))
    message = await client.messages.create(model="claude-then-gpt", max_tokens=20, messages=HI)  # type: ignore[arg-type]
    assert message.content[0].text == "from the fallback"  # type: ignore[union-attr]


async def test_a_keys_limits_hold_and_refusals_are_anthropics(
    base: str, claude: FakeAnthropic
) -> None:
    admin = {"authorization": f"Bearer {MASTER}"}
    async with (
        aiohttp.ClientSession(headers=admin) as s,
        s.post(f"{base}/admin/keys", json={"name": "one", "models": ["claude"], "rpm": 1}) as r,
    ):
        key = (await r.json())["key"]
    async with anthropic.AsyncAnthropic(base_url=base, api_key=key, max_retries=0) as c:
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            await c.messages.create(model="gpt", max_tokens=5, messages=HI)  # type: ignore[arg-type]
        assert denied.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
        with pytest.raises(anthropic.PermissionDeniedError):
            await c.messages.count_tokens(model="gpt", messages=HI)  # type: ignore[arg-type]
        await c.messages.create(model="claude", max_tokens=5, messages=HI)  # type: ignore[arg-type]
        with pytest.raises(anthropic.RateLimitError) as limited:
            await c.messages.create(model="claude", max_tokens=5, messages=HI)  # type: ignore[arg-type]
        assert int(limited.value.response.headers["retry-after"]) >= 1
    async with aiohttp.ClientSession(headers=admin) as s:
        for _ in range(100):
            async with s.get(f"{base}/admin/usage") as r:
                rows = [row for row in (await r.json())["data"] if row["route"] == "/v1/messages"]
            if any(row["status"] == 200 for row in rows):
                break
            await asyncio.sleep(0.02)
    assert {row["status"] for row in rows} >= {200, 403, 429}
