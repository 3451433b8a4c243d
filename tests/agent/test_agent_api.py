"""The agent endpoints end to end: a real server, a fake upstream that scripts model turns
(tool calls, then an answer), real tools, sessions stored and reloaded. Through noroshi's own
client, and raw where the wire is what is tested: the native SSE framing, Last-Event-ID, a
socket that leaves, the AI SDK stream."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import msgspec
import pytest

from noroshi.client import (
    AsyncClient,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)
from noroshi.wire.admin import UsageRecord
from noroshi.wire.agent import (
    AgentEvent,
    ErrorEvent,
    RunFinished,
    RunStarted,
    ToolResult,
)
from tests.agent import loop_tools
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.wire.test_times import ISO_UTC

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


@pytest.fixture
async def client(base: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(base, max_retries=0) as c:
        yield c


def kind(event: AgentEvent) -> str:
    """An event's `type`: the tag of its Struct."""
    return str(type(event).__struct_config__.tag)


def role(message: Any) -> str:
    return str(type(message).__struct_config__.tag)


async def turn(c: AsyncClient, **body: Any) -> list[AgentEvent]:
    """One agent turn through the client, its events to the end."""
    return [event async for event in c.agent.stream(**body)]


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
    client: AsyncClient, upstream: FakeOpenAI
) -> None:
    upstream.script(
        Reply(
            tool_calls=[
                {"name": "lookup_city", "arguments": {"city": "Lyon"}},
                {"name": "lookup_city", "arguments": {"city": "Oslo"}},
            ]
        ),
        Reply(text="Lyon and Oslo have 1000 people each."),
    )
    events = await turn(client, prompt="How big are Lyon and Oslo?", agent="helper")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    types = [kind(e) for e in events]
    assert types[0] == "run.started" and types[-2:] == ["usage", "run.finished"]
    assert types.count("step.started") == 2 and types.count("tool.call") == 2
    results = [e for e in events if isinstance(e, ToolResult)]
    assert sorted(r.content for r in results) == ["Lyon: 1000 people", "Oslo: 1000 people"]
    assert sorted(loop_tools.CALLS[-2:]) == ["Lyon", "Oslo"]  # the tool really ran
    assert "".join(e.text for e in events) == "Lyon and Oslo have 1000 people each."
    # the second model call carried the tool results back
    second = upstream.requests[-1].body["messages"]
    assert second[0] == {"role": "system", "content": "You help."}
    assert [m["role"] for m in second[1:]] == ["user", "assistant", "tool", "tool"]
    assert {m["content"] for m in second[3:]} == {"Lyon: 1000 people", "Oslo: 1000 people"}

    started = events[0]
    assert isinstance(started, RunStarted) and started.agent == "helper"
    session = await client.sessions.get(started.session_id)
    assert [role(m) for m in session.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert session.runs[0].status == "completed" and session.runs[0].steps == 2
    assert session.runs[0].id == started.run_id

    # the next turn reloads the history
    upstream.script(Reply(text="You asked about two cities."))
    events = await turn(client, prompt="What did I ask?", session_id=started.session_id)
    assert isinstance(events[-1], RunFinished)
    assert len(upstream.requests[-1].body["messages"]) == 1 + 5 + 1


async def test_native_stream_framing(base: str, upstream: FakeOpenAI) -> None:
    """The bytes of `POST /api/v1/agent/chat`: each event's `id:` is its `seq`, its `event:`
    its `type`; the run's ids come as headers."""
    upstream.script(
        Reply(tool_calls=[{"name": "lookup_city", "arguments": {"city": "Lyon"}}]),
        Reply(text="Lyon has 1000 people."),
    )
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/api/v1/agent/chat", json={"prompt": "Lyon?", "agent": "helper"}) as r,
    ):
        assert r.status == 200 and r.content_type == "text/event-stream"
        session_id, run_id = r.headers["x-noroshi-session-id"], r.headers["x-noroshi-run-id"]
        events = parse_sse(await r.read())
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    assert all(data["seq"] == seq and data["type"] == name for seq, name, data in events)
    types = [t for _, t, _ in events]
    assert types[0] == "run.started" and types[-2:] == ["usage", "run.finished"]
    assert events[0][2]["session_id"] == session_id and events[0][2]["run_id"] == run_id
    # every event is one the client's types read
    decoded = [msgspec.json.decode(json.dumps(d), type=AgentEvent) for _, _, d in events]
    assert "".join(e.text for e in decoded) == "Lyon has 1000 people."


async def test_failing_tool_goes_back_to_the_model(
    client: AsyncClient, upstream: FakeOpenAI
) -> None:
    upstream.script(
        Reply(tool_calls=[{"name": "broken_tool", "arguments": {}}]),
        Reply(text="The tool failed, sorry."),
    )
    events = await turn(client, prompt="Try it", agent="helper")
    assert isinstance(events[-1], RunFinished)
    result = next(e for e in events if isinstance(e, ToolResult))
    assert result.is_error and "the tool broke" in result.content


async def test_max_steps(client: AsyncClient, upstream: FakeOpenAI) -> None:
    call = Reply(tool_calls=[{"name": "lookup_city", "arguments": {"city": "Rome"}}])
    upstream.script(call, call, call)
    events = await turn(client, prompt="Loop", agent="helper")
    finished = events[-1]
    assert isinstance(finished, RunFinished)
    assert finished.finish_reason == "max_steps" and finished.steps == 3


async def test_upstream_failure_ends_with_error_and_no_finish(
    client: AsyncClient, upstream: FakeOpenAI
) -> None:
    upstream.script(Reply(chunks=4, reset_after=2), *[Reply(status=500)] * 3)
    events = await turn(client, prompt="Hi", agent="helper")
    assert isinstance(events[-1], ErrorEvent) and events[-1].message
    assert not any(isinstance(e, RunFinished) for e in events)


async def test_busy_session_is_409_and_disconnect_cancels(
    base: str, client: AsyncClient, upstream: FakeOpenAI
) -> None:
    upstream.script(Reply(tool_calls=[{"name": "slow_tool", "arguments": {"seconds": 30}}]))
    # raw: the socket itself leaves, mid-stream
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{base}/api/v1/agent/chat", json={"prompt": "Wait", "agent": "helper"})
        session_id = r.headers["x-noroshi-session-id"]
        run_id = r.headers["x-noroshi-run-id"]
        await r.content.readuntil(b"event: tool.call")
        async with s.post(
            f"{base}/api/v1/agent/chat", json={"prompt": "Again", "session_id": session_id}
        ) as busy:
            body = await busy.json()
            assert busy.status == 409 and run_id in body["error"]["message"]
            assert body["error"]["param"] == "session_id"
        # the client is refused the same way
        with pytest.raises(ConflictError) as err:
            await turn(client, prompt="Again", session_id=session_id)
        assert err.value.status == 409 and run_id in err.value.message
        assert err.value.param == "session_id"
        r.close()  # the client leaves: the run is cancelled, the tool stops
    for _ in range(100):
        run = await client.runs.get(run_id)
        if run.status != "running":
            break
        await asyncio.sleep(0.05)
    assert run.status == "cancelled"


async def test_background_run_join_and_resume(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="one two three four", chunks=4, token_delay=0.05))
    statuses: list[int] = []

    async def keep(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    http = httpx2.AsyncClient(base_url=base, event_hooks={"response": [keep]})
    async with AsyncClient(base, http_client=http, max_retries=0) as c:
        accepted = await c.runs.start(prompt="Count", agent="helper")
        assert statuses == [202] and accepted.status == "running"
        run_id = accepted.run_id
        events = [e async for e in c.runs.join(run_id)]
        assert isinstance(events[-1], RunFinished)
        # resume after event 3: exactly the events after it
        assert [e async for e in c.runs.join(run_id, after=3)] == events[3:]
        # the same through the Last-Event-ID header itself, raw
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{base}/api/v1/runs/{run_id}/stream", headers={"last-event-id": "3"}) as r,
        ):
            rest = parse_sse(await r.read())
        assert [seq for seq, _, _ in rest] == [e.seq for e in events[3:]]
        assert [msgspec.json.decode(json.dumps(d), type=AgentEvent) for _, _, d in rest] == (
            events[3:]
        )
        run = await c.runs.get(run_id)
        assert run.status == "completed" and run.completion_tokens > 0 and run.background
        # billed when the run ended, with what it used, though no request waited for it
        usage = await c.admin.usage()
        rows = [u for u in usage.data if isinstance(u, UsageRecord) and u.route == "/api/v1/runs"]
        assert len(rows) == 1 and rows[0].outcome == "ok"
        assert rows[0].completion_tokens == run.completion_tokens


async def test_bad_input(base: str, client: AsyncClient) -> None:
    for body, status, param in [
        ({"prompt": ""}, 400, "prompt"),
        ({"prompt": "Hi", "agent": "nobody"}, 404, "agent"),
        ({"prompt": "Hi", "session_id": "no spaces"}, 400, "session_id"),
        ({"prompt": "Hi", "session_id": "x" * 129}, 400, "session_id"),
    ]:
        # the server's own answer, raw: the client refuses an empty prompt before sending
        got, _, error = await agent_chat(base, **body)
        assert got == status and error["error"]["param"] == param, body
        kinds = InvalidRequestError if status == 400 else NotFoundError
        with pytest.raises(kinds) as err:
            await turn(client, **body)
        assert err.value.param == param, body


async def test_sessions_list_and_delete(
    base: str, client: AsyncClient, upstream: FakeOpenAI
) -> None:
    upstream.script(Reply(text="Hello."))
    started = (await turn(client, prompt="Hi there"))[0]
    assert isinstance(started, RunStarted)
    session_id = started.session_id
    listed = (await client.sessions.list()).data
    assert [x.id for x in listed] == [session_id] and listed[0].title == "Hi there"
    # raw: every time is ISO 8601, and the typed client reads them back as the same moments
    async with httpx2.AsyncClient(base_url=base) as raw:
        shown = (await raw.get("/api/v1/sessions")).json()["data"][0]
        detail = (await raw.get(f"/api/v1/sessions/{session_id}")).json()
    assert ISO_UTC.fullmatch(shown["created_at"]) and ISO_UTC.fullmatch(shown["updated_at"])
    assert listed[0].updated_at.iso() == shown["updated_at"]
    (run,) = detail["runs"]
    assert ISO_UTC.fullmatch(run["created_at"]) and ISO_UTC.fullmatch(run["finished_at"])
    assert run["created_at"] <= run["finished_at"]
    deleted = await client.sessions.delete(session_id)
    assert deleted.id == session_id and deleted.deleted
    with pytest.raises(NotFoundError):
        await client.sessions.get(session_id)


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
    )
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
    upstream.script(
        Reply(tool_calls=[{"name": "calc__add", "arguments": {"a": 2, "b": 3}}]),
        Reply(text="2 + 3 = 5"),
    )
    async with AsyncClient(base, max_retries=0) as c:
        events = await turn(c, prompt="2 + 3?", agent="maths")
    assert isinstance(events[-1], RunFinished)
    offered = {t["function"]["name"] for t in upstream.requests[0].body["tools"]}
    assert {"calc__add", "calc__echo"} <= offered
    result = next(e for e in events if isinstance(e, ToolResult))
    assert result == ToolResult(
        seq=result.seq, id="call_fake0", name="calc__add", content="5", is_error=False
    )


async def test_sessions_belong_to_the_key_that_made_them(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    text = openai_config(upstream.base_url, extra=AGENTS)
    base = await serve(write_config(tmp_path, text, {"NOROSHI_MASTER_KEY": "sk-m"}))
    async with AsyncClient(base, api_key="sk-m", max_retries=0) as admin:
        keys = [(await admin.admin.keys.create(name=name)).key for name in ("alice", "bob")]
    upstream.script(Reply(text="Hi Alice."))
    async with (
        AsyncClient(base, api_key=keys[0], max_retries=0) as alice,
        AsyncClient(base, api_key=keys[1], max_retries=0) as bob,
    ):
        started = (await turn(alice, prompt="Hi"))[0]
        assert isinstance(started, RunStarted)
        session_id, run_id = started.session_id, started.run_id
        assert (await alice.sessions.get(session_id)).id == session_id
        assert (await alice.runs.get(run_id)).id == run_id
        assert isinstance([e async for e in alice.runs.join(run_id)][-1], RunFinished)
        with pytest.raises(NotFoundError):
            await bob.sessions.get(session_id)
        with pytest.raises(NotFoundError):
            await bob.runs.get(run_id)
        with pytest.raises(NotFoundError):
            await anext(bob.runs.join(run_id))
        assert (await bob.sessions.list()).data == []
        with pytest.raises(NotFoundError) as err:
            await turn(bob, prompt="Hi", session_id=session_id)
        assert err.value.param == "session_id"
        with pytest.raises(NotFoundError):
            await bob.sessions.delete(session_id)
        assert (await alice.sessions.get(session_id)).id == session_id
    # useChat's client-chosen id cannot reach into another key's session either (raw: the AI
    # SDK's own body, to the streaming endpoint)
    ui = {
        "id": session_id,
        "messages": [{"role": "user", "parts": [{"type": "text", "text": "x"}]}],
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{base}/api/v1/agent/chat", json=ui, headers={"authorization": f"Bearer {keys[1]}"}
        ) as r,
    ):
        assert r.status == 404


async def test_a_session_id_the_client_chose(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    text = openai_config(upstream.base_url, extra=AGENTS)
    base = await serve(write_config(tmp_path, text, {"NOROSHI_MASTER_KEY": "sk-m"}))
    async with AsyncClient(base, api_key="sk-m", max_retries=0) as admin:
        keys = [(await admin.admin.keys.create(name=name)).key for name in ("alice", "bob")]
    upstream.script(Reply(text="First."), Reply(text="Second."))
    async with (
        AsyncClient(base, api_key=keys[0], max_retries=0) as alice,
        AsyncClient(base, api_key=keys[1], max_retries=0) as bob,
    ):
        first = (await turn(alice, prompt="One", session_id="chat-7.a:b"))[0]
        assert isinstance(first, RunStarted) and first.session_id == "chat-7.a:b"
        await turn(alice, prompt="Two", session_id="chat-7.a:b")
        detail = await alice.sessions.get("chat-7.a:b")
        assert [m.content for m in detail.messages] == ["One", "First.", "Two", "Second."]
        with pytest.raises(NotFoundError) as err:  # taken by alice: bob cannot have it
            await turn(bob, prompt="Hi", session_id="chat-7.a:b")
        assert err.value.param == "session_id"
    assert len(upstream.chats()) == 2  # bob's turn never reached the model


async def test_agents_are_listed_with_their_tools(base: str) -> None:
    async with AsyncClient(base) as client:
        agents = {a.name: a for a in (await client.agents.list()).data}
    assert set(agents) >= {"default"}
    assert agents["default"].model == "fast" and agents["default"].tools == []
    helper = agents["helper"]
    assert (helper.model, helper.knowledge) == ("fast", [])
    assert helper.tools == ["lookup_city", "slow_tool", "broken_tool"]


async def test_another_keys_running_session_is_not_found(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    """While a run goes on, another key gets 404 from every session and run route, as for a
    session that does not exist: no 409 naming the run, and nothing of it is touched."""
    text = openai_config(upstream.base_url, extra=AGENTS)
    base = await serve(write_config(tmp_path, text, {"NOROSHI_MASTER_KEY": "sk-m"}))
    async with AsyncClient(base, api_key="sk-m", max_retries=0) as admin:
        keys = [(await admin.admin.keys.create(name=name)).key for name in ("alice", "bob")]
    upstream.script(Reply(tool_calls=[{"name": "slow_tool", "arguments": {"seconds": 30}}]))
    async with (
        AsyncClient(base, api_key=keys[0], max_retries=0) as alice,
        AsyncClient(base, api_key=keys[1], max_retries=0) as bob,
    ):
        accepted = await alice.runs.start(prompt="Wait", agent="helper", background=True)
        session_id, run_id = accepted.session_id, accepted.run_id
        assert (await alice.runs.get(run_id)).status == "running"
        attempts: dict[str, Callable[[str, str], Awaitable[object]]] = {
            "delete session": lambda sid, rid: bob.sessions.delete(sid),
            "get session": lambda sid, rid: bob.sessions.get(sid),
            "get run": lambda sid, rid: bob.runs.get(rid),
            "cancel run": lambda sid, rid: bob.runs.cancel(rid),
            "join run": lambda sid, rid: anext(bob.runs.join(rid)),
        }
        unknown = ("ses_0000000000000000", "run_0000000000000000")
        for what, attempt in attempts.items():
            answers = []
            for sid, rid in ((session_id, run_id), unknown):
                with pytest.raises(NotFoundError) as err:
                    await attempt(sid, rid)
                e = err.value
                message = e.message.replace(sid, "<session>").replace(rid, "<run>")
                answers.append((e.status, e.code, e.param, message))
            assert answers[0] == answers[1], what
        # an unknown id would make a session of bob's own; alice's is just not there for him
        with pytest.raises(NotFoundError) as err:
            await turn(bob, prompt="Hi", session_id=session_id)
        assert err.value.status == 404 and run_id not in err.value.message
        assert (await alice.runs.get(run_id)).status == "running"
        assert (await alice.sessions.get(session_id)).id == session_id
        with pytest.raises(ConflictError):  # the owner is told why
            await alice.sessions.delete(session_id)
        assert (await alice.runs.cancel(run_id)).cancelled
