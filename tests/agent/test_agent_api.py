"""The agent endpoints end to end: a real server, a fake upstream that scripts model turns
(tool calls, then an answer), real tools, sessions stored and reloaded."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.agent import loop_tools
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply

AGENTS = """
[[agents]]
name = "helper"
model = "fast"
system = "You help."
tools = ["tests.agent.loop_tools:lookup_city", "tests.agent.loop_tools:slow_tool",
         "tests.agent.loop_tools:broken_tool"]
max_steps = 3
"""


@pytest.fixture
async def base(serve: Serve, tmp_path: Path, upstream: FakeOpenAI) -> str:
    return await serve(write_config(tmp_path, openai_config(upstream.base_url, extra=AGENTS)))


def parse_sse(raw: bytes) -> list[tuple[int, str, dict[str, Any]]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


async def agent_chat(
    base: str, **body: Any
) -> tuple[int, list[tuple[int, str, dict[str, Any]]], Any]:
    async with aiohttp.ClientSession() as s, s.post(f"{base}/api/v1/agent/chat", json=body) as r:
        raw = await r.read()
        if r.status != 200:
            return r.status, [], json.loads(raw)
        return r.status, parse_sse(raw), r.headers


async def test_tool_loop_streams_steps_and_stores_the_session(
    base: str, upstream: FakeOpenAI
) -> None:
    upstream.script(
        Reply(tool_calls=[{"name": "lookup_city", "arguments": {"city": "Lyon"}},
                          {"name": "lookup_city", "arguments": {"city": "Oslo"}}]),
        Reply(text="Lyon and Oslo have 1000 people each."),
    )  # fmt: skip
    status, events, headers = await agent_chat(base, prompt="How big are Lyon and Oslo?",
                                               agent="helper")  # fmt: skip
    assert status == 200
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    types = [t for _, t, _ in events]
    assert types[0] == "run.started" and types[-2:] == ["usage", "run.finished"]
    assert types.count("step.started") == 2 and types.count("tool.call") == 2
    results = [d for _, t, d in events if t == "tool.result"]
    assert sorted(r["content"] for r in results) == ["Lyon: 1000 people", "Oslo: 1000 people"]
    assert sorted(loop_tools.CALLS[-2:]) == ["Lyon", "Oslo"]  # the tool really ran
    text = "".join(d["text"] for _, t, d in events if t == "text.delta")
    assert text == "Lyon and Oslo have 1000 people each."
    # the second model call carried the tool results back
    second = upstream.requests[-1].body["messages"]
    assert second[0] == {"role": "system", "content": "You help."}
    assert [m["role"] for m in second[1:]] == ["user", "assistant", "tool", "tool"]
    assert {m["content"] for m in second[3:]} == {"Lyon: 1000 people", "Oslo: 1000 people"}

    session_id = headers["x-noroshi-session-id"]
    async with aiohttp.ClientSession() as s, s.get(f"{base}/api/v1/sessions/{session_id}") as r:
        session = await r.json()
    assert [m["role"] for m in session["messages"]] == ["user", "assistant", "tool", "tool",
                                                          "assistant"]  # fmt: skip
    assert session["runs"][0]["status"] == "completed" and session["runs"][0]["steps"] == 2

    # the next turn reloads the history
    upstream.script(Reply(text="You asked about two cities."))
    status, events, _ = await agent_chat(base, prompt="What did I ask?", session_id=session_id)
    assert status == 200 and events[-1][1] == "run.finished"
    assert len(upstream.requests[-1].body["messages"]) == 1 + 5 + 1


async def test_failing_tool_goes_back_to_the_model(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(tool_calls=[{"name": "broken_tool", "arguments": {}}]),
                    Reply(text="The tool failed, sorry."))  # fmt: skip
    status, events, _ = await agent_chat(base, prompt="Try it", agent="helper")
    assert status == 200 and events[-1][1] == "run.finished"
    result = next(d for _, t, d in events if t == "tool.result")
    assert result["is_error"] and "the tool broke" in result["content"]


async def test_max_steps(base: str, upstream: FakeOpenAI) -> None:
    call = Reply(tool_calls=[{"name": "lookup_city", "arguments": {"city": "Rome"}}])
    upstream.script(call, call, call)
    status, events, _ = await agent_chat(base, prompt="Loop", agent="helper")
    assert status == 200
    finished = events[-1][2]
    assert finished["finish_reason"] == "max_steps" and finished["steps"] == 3


async def test_upstream_failure_ends_with_error_and_no_finish(
    base: str, upstream: FakeOpenAI
) -> None:
    upstream.script(Reply(chunks=4, reset_after=2), *[Reply(status=500)] * 3)
    status, events, _ = await agent_chat(base, prompt="Hi", agent="helper")
    assert status == 200
    assert events[-1][1] == "error" and "run.finished" not in [t for _, t, _ in events]


async def test_busy_session_is_409_and_disconnect_cancels(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(tool_calls=[{"name": "slow_tool", "arguments": {"seconds": 30}}]))
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{base}/api/v1/agent/chat", json={"prompt": "Wait", "agent": "helper"})
        session_id = r.headers["x-noroshi-session-id"]
        run_id = r.headers["x-noroshi-run-id"]
        await r.content.readuntil(b"event: tool.call")
        async with s.post(f"{base}/api/v1/agent/chat",
                          json={"prompt": "Again", "session_id": session_id}) as busy:  # fmt: skip
            body = await busy.json()
            assert busy.status == 409 and run_id in body["error"]["message"]
            assert body["error"]["param"] == "session_id"
        r.close()  # the client leaves: the run is cancelled, the tool stops
        for _ in range(100):
            async with s.get(f"{base}/api/v1/runs/{run_id}") as got:
                run = await got.json()
            if run["status"] != "running":
                break
            await asyncio.sleep(0.05)
        assert run["status"] == "cancelled"


async def test_background_run_join_and_resume(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="one two three four", chunks=4, token_delay=0.05))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/api/v1/runs",
                          json={"prompt": "Count", "agent": "helper", "background": True}) as r:  # fmt: skip
            assert r.status == 202
            run_id = (await r.json())["run_id"]
        async with s.get(f"{base}/api/v1/runs/{run_id}/stream") as r:
            events = parse_sse(await r.read())
        assert events[-1][1] == "run.finished"
        # resume after event 3: exactly the events after it
        async with s.get(f"{base}/api/v1/runs/{run_id}/stream",
                         headers={"last-event-id": "3"}) as r:  # fmt: skip
            rest = parse_sse(await r.read())
        assert rest == events[3:]
        async with s.get(f"{base}/api/v1/runs/{run_id}") as r:
            run = await r.json()
        assert run["status"] == "completed" and run["completion_tokens"] > 0
        # billed when the run ended, with what it used, though no request waited for it
        async with s.get(f"{base}/admin/usage") as r:
            rows = [u for u in (await r.json())["data"] if u["route"] == "/api/v1/runs"]
        assert len(rows) == 1 and rows[0]["outcome"] == "ok"
        assert rows[0]["completion_tokens"] == run["completion_tokens"]


async def test_bad_input(base: str) -> None:
    status, _, body = await agent_chat(base, prompt="")
    assert status == 400 and body["error"]["param"] == "prompt"
    status, _, body = await agent_chat(base, prompt="Hi", agent="nobody")
    assert status == 404 and body["error"]["param"] == "agent"
    status, _, body = await agent_chat(base, prompt="Hi", session_id="ses_missing")
    assert status == 404 and body["error"]["param"] == "session_id"


async def test_sessions_list_and_delete(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="Hello."))
    status, _, headers = await agent_chat(base, prompt="Hi there")
    assert status == 200
    session_id = headers["x-noroshi-session-id"]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/api/v1/sessions") as r:
            listed = (await r.json())["data"]
        assert [x["id"] for x in listed] == [session_id] and listed[0]["title"] == "Hi there"
        async with s.delete(f"{base}/api/v1/sessions/{session_id}") as r:
            assert r.status == 200
        async with s.get(f"{base}/api/v1/sessions/{session_id}") as r:
            assert r.status == 404


def ui_chunks(raw: bytes) -> list[Any]:
    """The data of each SSE event; `[DONE]` kept as a string."""
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            out.append("[DONE]" if data[0] == "[DONE]" else json.loads(data[0]))
    return out


def check_ui_protocol(chunks: list[Any]) -> None:
    """The UI message stream's rules: one start first; steps balanced; text parts opened before
    their deltas and closed before their step ends; a tool's output after its input; a
    successful stream ends with finish then [DONE]."""
    assert chunks[0]["type"] == "start"
    open_text: str | None = None
    in_step = False
    inputs: set[str] = set()
    for chunk in chunks[1:-2]:
        kind = chunk["type"]
        if kind == "start-step":
            assert not in_step
            in_step = True
        elif kind == "finish-step":
            assert in_step and open_text is None
            in_step = False
        elif kind == "text-start":
            assert in_step and open_text is None
            open_text = chunk["id"]
        elif kind == "text-delta":
            assert chunk["id"] == open_text and isinstance(chunk["delta"], str)
        elif kind == "text-end":
            assert chunk["id"] == open_text
            open_text = None
        elif kind == "tool-input-available":
            assert in_step and open_text is None
            inputs.add(chunk["toolCallId"])
        elif kind in ("tool-output-available", "tool-output-error"):
            assert chunk["toolCallId"] in inputs
        else:
            raise AssertionError(f"unexpected chunk {chunk}")
    assert chunks[-2:] == [{"type": "finish"}, "[DONE]"]


async def test_ai_sdk_stream_for_use_chat(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(
        Reply(tool_calls=[{"name": "lookup_city", "arguments": {"city": "Nice"}}]),
        Reply(text="Nice has 1000 people."),
    )  # fmt: skip
    body = {  # what useChat's default transport sends
        "id": "chat-123",
        "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Nice?"}]}],
        "trigger": "submit-message",
        "agent": "helper",
    }
    async with aiohttp.ClientSession() as s, s.post(f"{base}/api/v1/agent/chat", json=body) as r:
        assert r.status == 200
        assert r.headers["x-vercel-ai-ui-message-stream"] == "v1"
        assert r.headers["x-noroshi-session-id"] == "chat-123"
        chunks = ui_chunks(await r.read())
    check_ui_protocol(chunks)
    kinds = [c["type"] if isinstance(c, dict) else c for c in chunks]
    assert kinds.count("start-step") == 2
    tool_input = next(
        c for c in chunks if isinstance(c, dict) and c["type"] == "tool-input-available"
    )
    assert tool_input["toolName"] == "lookup_city" and tool_input["input"] == {"city": "Nice"}
    output = next(c for c in chunks if isinstance(c, dict) and c["type"] == "tool-output-available")
    assert output["output"] == "Nice: 1000 people"
    text = "".join(c["delta"] for c in chunks if isinstance(c, dict) and c["type"] == "text-delta")
    assert text == "Nice has 1000 people."

    # the same chat id continues the same session
    upstream.script(Reply(text="Still 1000."))
    body["messages"].append(
        {"id": "m2", "role": "user", "parts": [{"type": "text", "text": "Sure?"}]}
    )
    async with aiohttp.ClientSession() as s, s.post(f"{base}/api/v1/agent/chat", json=body) as r:
        check_ui_protocol(ui_chunks(await r.read()))
    assert len(upstream.requests[-1].body["messages"]) == 1 + 4 + 1  # system, history, new


async def test_ai_sdk_stream_error_has_no_finish(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(*[Reply(status=500)] * 3)
    body = {
        "id": "chat-err",
        "messages": [{"role": "user", "parts": [{"type": "text", "text": "Hi"}]}],
    }
    async with aiohttp.ClientSession() as s, s.post(f"{base}/api/v1/agent/chat", json=body) as r:
        chunks = ui_chunks(await r.read())
    assert chunks[-1]["type"] == "error" and chunks[-1]["errorText"]
    assert "[DONE]" not in chunks and {"type": "finish"} not in chunks


async def test_agent_uses_an_mcp_servers_tools(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    server = Path(__file__).parent / "mcp_server.py"
    extra = f"""
[[mcp_servers]]
name = "calc"
command = ["{sys.executable}", "{server}", "stdio"]

[[agents]]
name = "maths"
model = "fast"
tools = ["mcp:calc"]
"""
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url, extra=extra)))
    upstream.script(Reply(tool_calls=[{"name": "calc__add", "arguments": {"a": 2, "b": 3}}]),
                    Reply(text="2 + 3 = 5"))  # fmt: skip
    status, events, _ = await agent_chat(base, prompt="2 + 3?", agent="maths")
    assert status == 200 and events[-1][1] == "run.finished"
    offered = {t["function"]["name"] for t in upstream.requests[0].body["tools"]}
    assert {"calc__add", "calc__echo"} <= offered
    result = next(d for _, t, d in events if t == "tool.result")
    assert result == {"type": "tool.result", "seq": result["seq"], "id": "call_fake0",
                      "name": "calc__add", "content": "5", "is_error": False}  # fmt: skip


async def test_sessions_belong_to_the_key_that_made_them(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    text = openai_config(upstream.base_url, extra=AGENTS)
    base = await serve(write_config(tmp_path, text, {"NOROSHI_MASTER_KEY": "sk-m"}))
    keys = []
    async with aiohttp.ClientSession() as s:
        for name in ("alice", "bob"):
            async with s.post(f"{base}/admin/keys", json={"name": name},
                              headers={"authorization": "Bearer sk-m"}) as r:  # fmt: skip
                keys.append((await r.json())["key"])
        alice, bob = ({"authorization": f"Bearer {k}"} for k in keys)
        upstream.script(Reply(text="Hi Alice."))
        async with s.post(f"{base}/api/v1/agent/chat", json={"prompt": "Hi"}, headers=alice) as r:
            session_id, run_id = r.headers["x-noroshi-session-id"], r.headers["x-noroshi-run-id"]
            await r.read()
        for path in (f"/api/v1/sessions/{session_id}", f"/api/v1/runs/{run_id}",
                     f"/api/v1/runs/{run_id}/stream"):  # fmt: skip
            async with s.get(f"{base}{path}", headers=bob) as r:
                assert r.status == 404, path
            async with s.get(f"{base}{path}", headers=alice) as r:
                assert r.status == 200, path
        async with s.get(f"{base}/api/v1/sessions", headers=bob) as r:
            assert (await r.json())["data"] == []
        async with s.post(f"{base}/api/v1/agent/chat", headers=bob,
                          json={"prompt": "Hi", "session_id": session_id}) as r:  # fmt: skip
            assert r.status == 404
        async with s.delete(f"{base}/api/v1/sessions/{session_id}", headers=bob) as r:
            assert r.status == 404
        # useChat's client-chosen id cannot reach into another key's session either
        ui = {
            "id": session_id,
            "messages": [{"role": "user", "parts": [{"type": "text", "text": "x"}]}],
        }
        async with s.post(f"{base}/api/v1/agent/chat", headers=bob, json=ui) as r:
            assert r.status == 404
