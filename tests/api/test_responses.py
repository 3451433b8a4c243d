"""OpenAI's Responses API end to end: the official `openai` SDK's `responses` against noroshi,
in front of a fake OpenAI (chat completions upstream) and a fake Anthropic."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import Serve, write_config
from tests.fakes.upstream import FakeAnthropic, FakeOpenAI, Reply
from tests.processes import serve_replicas

MASTER = "sk-master-responses"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def config_text(claude: FakeAnthropic, gpt: FakeOpenAI, extra: str = "") -> str:
    return f"""
[auth]
master_key = "{MASTER}"
[providers.claude]
type = "anthropic"
base_url = "{claude.origin}"
first_byte_timeout_s = 1
idle_timeout_s = 1
[providers.oai]
type = "openai"
base_url = "{gpt.base_url}"
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
{extra}
"""


@pytest.fixture
async def base(serve: Serve, tmp_path: Path, claude: FakeAnthropic, gpt: FakeOpenAI) -> str:
    return await serve(write_config(tmp_path, config_text(claude, gpt)))


@pytest.fixture
async def client(base: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=MASTER, max_retries=0) as c:
        yield c


async def test_create_text(client: openai.AsyncOpenAI, gpt: FakeOpenAI) -> None:
    gpt.script(Reply(text="Hello there.", completion_tokens=3, cache_read_tokens=2))
    response = await client.responses.create(
        model="gpt", input="Hi", instructions="Be brief.", max_output_tokens=50
    )
    assert response.output_text == "Hello there."
    assert response.status == "completed" and response.id.startswith("resp_")
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (9, 3)
    assert response.usage.input_tokens_details.cached_tokens == 2
    sent = gpt.requests[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert sent["max_tokens"] == 50


async def test_stream_events_each_have_a_sequence_number(
    client: openai.AsyncOpenAI, claude: FakeAnthropic
) -> None:
    claude.script(Reply(text="one two three"))
    async with client.responses.stream(model="claude", input="Count") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert kind in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == "one two three"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "one two three"
    )


@pytest.mark.parametrize("model", ["gpt", "claude"])
async def test_function_tools_round_trip_with_previous_response_id(
    client: openai.AsyncOpenAI, gpt: FakeOpenAI, claude: FakeAnthropic, model: str
) -> None:
    upstream = gpt if model == "gpt" else claude
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    upstream.script(Reply(tool_calls=[call]), Reply(text="Cold."))
    async with client.responses.stream(
        model=model,
        input="Weather in Oslo?",
        tools=[WEATHER],  # type: ignore[list-item]
    ) as stream:
        kinds = [event.type async for event in stream]
        first = await stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    (fc,) = [item for item in first.output if item.type == "function_call"]
    assert (fc.call_id, fc.name, json.loads(fc.arguments)) == (
        "call_1",
        "get_weather",
        {"city": "Oslo"},
    )
    second = await client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "-3 C"}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.output_text == "Cold." and second.previous_response_id == first.id
    sent = upstream.requests[-1].body["messages"]
    if model == "gpt":
        assert sent[0] == {"role": "user", "content": "Weather in Oslo?"}
        assert sent[1]["tool_calls"][0]["id"] == "call_1"
        assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"}
    else:
        assert sent[1]["content"][0]["type"] == "tool_use"
        assert sent[2]["content"][0] == {
            "type": "tool_result",
            "tool_use_id": "call_1",
            "content": "-3 C",
        }


class Weather(BaseModel):
    city: str
    degrees: int


@pytest.mark.parametrize("model", ["gpt", "claude"])
async def test_structured_output(
    client: openai.AsyncOpenAI, gpt: FakeOpenAI, claude: FakeAnthropic, model: str
) -> None:
    upstream = gpt if model == "gpt" else claude
    upstream.script(Reply(text='{"city": "Oslo", "degrees": -3}'))
    parsed = await client.responses.parse(model=model, input="Oslo?", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Oslo", degrees=-3)
    sent = upstream.requests[-1]
    if model == "gpt":
        fmt = sent.body["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Weather"
        assert fmt["json_schema"]["schema"]["properties"]["degrees"] == {
            "title": "Degrees",
            "type": "integer",
        }
    else:
        assert sent.body["output_format"]["type"] == "json_schema"
        assert "degrees" in sent.body["output_format"]["schema"]["properties"]
        assert sent.headers["anthropic-beta"] == "structured-outputs-2025-11-13"


async def test_reasoning_keeps_its_signature_across_turns(
    client: openai.AsyncOpenAI, claude: FakeAnthropic
) -> None:
    claude.script(Reply(text="4", reasoning="2+2 is 4", signature="sig-xyz"), Reply(text="8"))
    first = await client.responses.create(
        model="claude", input="2+2?", reasoning={"effort": "low"}, max_output_tokens=3000
    )
    reasoning = first.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.encrypted_content == "sig-xyz"
    assert reasoning.content is not None and reasoning.content[0].text == "2+2 is 4"
    assert claude.requests[-1].body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    await client.responses.create(model="claude", input="Double it", previous_response_id=first.id)
    assistant = claude.requests[-1].body["messages"][1]
    assert assistant["content"][0] == {
        "type": "thinking",
        "thinking": "2+2 is 4",
        "signature": "sig-xyz",
    }


async def test_stored_responses_are_the_keys_own(base: str, client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model="gpt", input="Hi")
    assert (await client.responses.retrieve(response.id)).output_text == response.output_text
    items = await client.responses.input_items.list(response.id)
    assert [i.type for i in items.data] == ["message"]
    async with (
        aiohttp.ClientSession(headers={"authorization": f"Bearer {MASTER}"}) as s,
        s.post(f"{base}/admin/keys", json={"name": "other"}) as r,
    ):
        other_key = (await r.json())["key"]
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=other_key, max_retries=0) as o:
        with pytest.raises(openai.NotFoundError):
            await o.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError) as unknown:
            await o.responses.create(model="gpt", input="Hi", previous_response_id=response.id)
        assert unknown.value.body["param"] == "previous_response_id"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            await o.responses.delete(response.id)
    await client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)


async def test_store_false_keeps_nothing(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model="gpt", input="Hi", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)


async def test_background_runs_and_can_be_cancelled(
    client: openai.AsyncOpenAI, gpt: FakeOpenAI
) -> None:
    gpt.script(Reply(text="done later"), Reply(text="never", delay=5))
    queued = await client.responses.create(model="gpt", input="Hi", background=True)
    assert queued.status == "queued" and queued.background is True
    for _ in range(200):
        polled = await client.responses.retrieve(queued.id)
        if polled.status == "completed":
            break
        await asyncio.sleep(0.02)
    assert polled.output_text == "done later"
    slow = await client.responses.create(model="gpt", input="Hi", background=True)
    cancelled = await client.responses.cancel(slow.id)
    assert cancelled.status == "cancelled"
    await gpt.wait_disconnect()  # the upstream call was cancelled too
    assert (await client.responses.retrieve(slow.id)).status == "cancelled"


async def test_a_fault_mid_stream_fails_the_response_never_completes_it(
    base: str, client: openai.AsyncOpenAI, gpt: FakeOpenAI
) -> None:
    gpt.script(Reply(text="a b c d", token_delay=0.02, reset_after=2))
    payload = {"model": "gpt", "input": "Hi", "stream": True}
    async with (
        aiohttp.ClientSession(headers={"authorization": f"Bearer {MASTER}"}) as s,
        s.post(f"{base}/v1/responses", json=payload) as r,
    ):
        raw = (await r.read()).decode()
    events = [json.loads(b.split("data: ", 1)[1]) for b in raw.strip().split("\n\n")]
    kinds = [e["type"] for e in events]
    assert "response.completed" not in kinds
    assert kinds[-2:] == ["error", "response.failed"]
    error = events[-2]
    # OpenAI's fields, and the Open Responses specification's nested error
    assert error["code"] == error["error"]["code"] and error["error"]["type"] == "upstream_error"
    # stored as it failed, with the text answered until then
    stored = await client.responses.retrieve(events[0]["response"]["id"])
    assert stored.status == "failed" and stored.error is not None
    assert stored.output[0].content[0].text == "a b "  # type: ignore[union-attr]
    # the official SDK raises on the error event, as it does for OpenAI's own
    gpt.script(Reply(text="a b c d", token_delay=0.02, reset_after=2))
    with pytest.raises(openai.APIError, match="closed the connection"):
        async with client.responses.stream(model="gpt", input="Hi") as stream:
            async for _ in stream:
                pass


async def test_bad_input_names_the_field(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await client.responses.create(
            model="gpt",
            input=[{"type": "function_call_output", "output": "x"}],  # type: ignore[list-item]
        )
    assert bad.value.body["param"] == "input.0.call_id"  # type: ignore[index]


async def test_previous_response_id_across_two_processes_sharing_postgresql(
    tmp_path: Path, claude: FakeAnthropic, gpt: FakeOpenAI, postgres_url: str
) -> None:
    extra = f'[storage]\nurl = "{postgres_url}"\n'
    gpt.script(Reply(text="I am one."), Reply(text="I am two."))
    async with serve_replicas(tmp_path, config_text(claude, gpt, extra), 2) as (one, two):
        async with openai.AsyncOpenAI(base_url=f"{one}/v1", api_key=MASTER) as a:
            first = await a.responses.create(model="gpt", input="Who are you?")
        async with openai.AsyncOpenAI(base_url=f"{two}/v1", api_key=MASTER) as b:
            second = await b.responses.create(
                model="gpt", input="And now?", previous_response_id=first.id
            )
    assert second.output_text == "I am two."
    assert gpt.chats()[-1] == [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am one."},
        {"role": "user", "content": "And now?"},
    ]


def _json(body: Any) -> Any:
    return json.loads(body) if isinstance(body, str | bytes) else body


async def test_compaction_folds_a_conversation_into_one_item(
    client: openai.AsyncOpenAI, gpt: FakeOpenAI
) -> None:
    gpt.script(Reply(text="Launch on Tuesday; tell support first."), Reply(text="Tuesday."))
    history = [
        {"type": "message", "role": "user", "content": "We launch on Tuesday."},
        {"type": "message", "role": "assistant", "content": "Noted: Tuesday."},
    ]
    compacted = await client.responses.compact(model="gpt", input=history)  # type: ignore[arg-type]
    assert compacted.object == "response.compaction"
    (item,) = compacted.output
    assert item.type == "compaction"
    asked = gpt.chats()[-1]
    assert asked[:2] == [
        {"role": "user", "content": "We launch on Tuesday."},
        {"role": "assistant", "content": "Noted: Tuesday."},
    ]
    assert "Summarize the conversation" in asked[-1]["content"]
    answer = await client.responses.create(
        model="gpt",
        input=[item.model_dump(), {"role": "user", "content": "When do we launch?"}],  # type: ignore[list-item]
    )
    assert answer.output_text == "Tuesday."
    system = gpt.chats()[-1][0]
    assert system["role"] == "system"
    assert "Launch on Tuesday; tell support first." in system["content"]


async def test_a_compaction_item_from_elsewhere_is_refused(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await client.responses.create(
            model="gpt",
            input=[
                {"type": "compaction", "encrypted_content": "opaque"},  # type: ignore[list-item]
                {"role": "user", "content": "Hi"},
            ],
        )
    assert bad.value.body["param"] == "input.0.encrypted_content"  # type: ignore[index]


async def turn(ws: aiohttp.ClientWebSocketResponse, **body: Any) -> list[dict[str, Any]]:
    """One `response.create` and its frames, up to the terminal one."""
    await ws.send_json({"type": "response.create", "model": "gpt", **body})
    frames: list[dict[str, Any]] = []
    while True:
        frame = json.loads(await ws.receive_str())
        frames.append(frame)
        # a refused turn is one `error` envelope (with a status); a failed one ends failed
        if frame["type"] in ("response.completed", "response.failed") or "status" in frame:
            return frames


async def test_websocket_mode_continues_unstored_responses_on_its_connection(
    base: str, gpt: FakeOpenAI
) -> None:
    gpt.script(Reply(text="OK."), Reply(text="cobalt"))
    url = f"{base.replace('http', 'ws')}/v1/responses"
    headers = {"authorization": f"Bearer {MASTER}"}
    async with aiohttp.ClientSession() as s, s.ws_connect(url, headers=headers) as ws:
        first = await turn(ws, store=False, input="The code word is cobalt.")
        assert [f["sequence_number"] for f in first] == list(range(len(first)))
        assert first[0]["type"] == "response.created" and first[-1]["type"] == "response.completed"
        response_id = first[-1]["response"]["id"]
        second = await turn(ws, store=False, previous_response_id=response_id, input="Code?")
        assert second[-1]["response"]["output"][0]["content"][0]["text"] == "cobalt"
        assert gpt.chats()[-1][:2] == [
            {"role": "user", "content": "The code word is cobalt."},
            {"role": "assistant", "content": "OK."},
        ]
        # a continuation that fails forgets the response it continued
        bad = [{"type": "function_call_output", "call_id": "call_nope", "output": "x"}]
        failed = await turn(ws, store=False, previous_response_id=response_id, input=bad)
        assert failed[-1]["status"] == 400 and "call_nope" in failed[-1]["error"]["message"]
        gone = await turn(ws, store=False, previous_response_id=response_id, input="Again?")
        assert gone[-1]["error"]["code"] == "previous_response_not_found"
    async with aiohttp.ClientSession() as s, s.ws_connect(url, headers=headers) as ws:
        # an unstored response lives on its connection only
        elsewhere = await turn(ws, store=False, previous_response_id=response_id, input="Hi")
        assert elsewhere[-1]["error"]["code"] == "previous_response_not_found"
        bad_message = await turn(ws, stream=True, input="Hi")
        assert bad_message[-1]["error"]["param"] == "stream"
    async with aiohttp.ClientSession(headers=headers) as s:  # every answered turn is billed
        for _ in range(100):
            async with s.get(f"{base}/admin/usage") as r:
                rows = [u for u in (await r.json())["data"] if u["route"] == "/v1/responses"]
            if len(rows) >= 2:
                break
            await asyncio.sleep(0.02)
    assert sorted((u["status"], u["completion_tokens"]) for u in rows)[:2] == [(200, 1), (200, 1)]
