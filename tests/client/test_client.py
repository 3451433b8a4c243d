"""Every surface through `noroshi.client`, sync and async, against the real server on loopback
(noroshi's own server and ASGI) with a fake OpenAI upstream behind it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest

from noroshi.client import (
    APIStatusError,
    AsyncClient,
    AuthenticationError,
    Client,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from noroshi.wire import admin as adm
from noroshi.wire import agent as ag
from noroshi.wire import openai as oa
from noroshi.wire import simple as sp
from noroshi.wire.service import Health
from tests.agent import loop_tools
from tests.client.conftest import HI, MASTER, Api, Connect, active_streams, eventually
from tests.fakes.upstream import FakeOpenAI, Reply


async def test_health(api: Api) -> None:
    health = await api("health")
    assert isinstance(health, Health)
    assert health.status == "ok" and health.auth == "on"
    assert health.models.embedding == "embed"


async def test_chat_create_and_stream(api: Api, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="Typed all the way."), Reply(text="one two three four"))
    answer = await api("chat.create", model="fast", messages=HI, max_tokens=9)
    assert isinstance(answer, oa.ChatCompletion)
    assert answer.text == "Typed all the way." and answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.prompt_tokens == 7
    sent = upstream.requests[-1].body
    assert sent["model"] == "m1" and sent["max_tokens"] == 9 and not sent.get("stream")

    events = await api.events("chat.stream", model="fast", messages=HI)
    assert events and all(isinstance(e, oa.ChatCompletionChunk) for e in events)
    assert "".join(e.text for e in events) == "one two three four"
    assert upstream.requests[-1].body["stream"] is True


async def test_simple_surfaces(api: Api, upstream: FakeOpenAI) -> None:
    upstream.script(
        Reply(text="a plain answer"),
        Reply(text="streamed as chunks"),
        Reply(text="text events here"),
        Reply(text="generated words"),
    )
    answer = await api("simple.chat", prompt="Hi")
    assert isinstance(answer, sp.SimpleAnswer)
    assert answer.message == "a plain answer" and answer.model == "m1"  # as the upstream named it

    chunks = await api.events("simple.chat_stream", prompt="Hi")
    assert all(isinstance(c, oa.ChatCompletionChunk) for c in chunks)
    assert "".join(c.text for c in chunks) == "streamed as chunks"

    texts = await api.events("simple.api_chat", messages=[{"role": "user", "content": "Hi"}])
    assert all(isinstance(t, sp.TextEvent) for t in texts)
    assert "".join(t.text for t in texts) == "text events here"

    generated = await api.events("generate", prompt="Write", max_tokens=7)
    assert "".join(t.text for t in generated) == "generated words"
    assert upstream.requests[-1].body["max_tokens"] == 7


async def test_embeddings(api: Api, upstream: FakeOpenAI) -> None:
    listed = await api("embeddings.create", model="embed", input=["one", "two"], dimensions=4)
    assert isinstance(listed, oa.EmbeddingList)
    assert [e.index for e in listed.data] == [0, 1] and listed.usage.prompt_tokens == 7
    assert all(isinstance(e.embedding, list) and len(e.embedding) == 4 for e in listed.data)
    assert upstream.requests[-1].body["model"] == "fake-embedding"

    single = await api("embed", text="one")
    assert isinstance(single, sp.EmbedAnswer)
    assert single.dimensions == len(single.embedding) > 0


async def test_models(api: Api) -> None:
    models = await api("models.list")
    assert isinstance(models, oa.ModelList)
    assert {m.id for m in models.data} == {"fast", "embed"}
    model = await api("models.get", "fast")
    assert isinstance(model, oa.Model) and model.id == "fast"


async def test_agent_stream_with_a_tool(api: Api, upstream: FakeOpenAI) -> None:
    upstream.script(
        Reply(tool_calls=[{"name": "lookup_city", "arguments": {"city": "Lyon"}}]),
        Reply(text="Lyon has 1000 people."),
    )
    events = await api.events("agent.stream", prompt="How big is Lyon?", agent="helper")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert isinstance(events[0], ag.RunStarted) and events[0].agent == "helper"
    assert isinstance(events[-1], ag.RunFinished) and events[-1].status == "completed"
    assert sum(isinstance(e, ag.RunFinished) for e in events) == 1
    called = [e for e in events if isinstance(e, ag.ToolCalled)]
    results = [e for e in events if isinstance(e, ag.ToolResult)]
    assert [c.name for c in called] == ["lookup_city"] and '"Lyon"' in called[0].arguments
    assert [(r.id, r.content, r.is_error) for r in results] == [
        (called[0].id, "Lyon: 1000 people", False)
    ]
    assert loop_tools.CALLS[-1] == "Lyon"
    assert "".join(e.text for e in events if isinstance(e, ag.TextDelta)) == "Lyon has 1000 people."
    assert events.index(results[0]) < next(
        i for i, e in enumerate(events) if isinstance(e, ag.TextDelta)
    )


async def test_runs_start_get_join_cancel(api: Api, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="one two three four", chunks=4, token_delay=0.02))
    accepted = await api("runs.start", prompt="Count", agent="helper")
    assert isinstance(accepted, ag.RunAccepted) and accepted.status == "running"
    events = await api.events("runs.join", accepted.run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert isinstance(events[-1], ag.RunFinished) and events[-1].run_id == accepted.run_id
    assert "".join(e.text for e in events) == "one two three four"
    assert await api.events("runs.join", accepted.run_id, after=3) == events[3:]
    run = await api("runs.get", accepted.run_id)
    assert isinstance(run, ag.Run)
    assert run.status == "completed" and run.background and run.completion_tokens > 0

    upstream.script(Reply(tool_calls=[{"name": "slow_tool", "arguments": {"seconds": 30}}]))
    slow = await api("runs.start", prompt="Wait", agent="helper")
    cancelled = await api("runs.cancel", slow.run_id)
    assert cancelled == ag.RunCancelled(run_id=slow.run_id, cancelled=True)

    async def stopped() -> bool:
        return (await api("runs.get", slow.run_id)).status != "running"

    await eventually(stopped)
    assert (await api("runs.get", slow.run_id)).status == "cancelled"
    ended = await api.events("runs.join", slow.run_id)
    assert isinstance(ended[-1], ag.ErrorEvent) and ended[-1].code == "cancelled"

    with pytest.raises(NotFoundError) as info:
        await api("runs.get", "run_missing")
    assert info.value.param == "id"


async def test_sessions_list_get_delete(api: Api, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(text="Hello."))
    events = await api.events("agent.stream", prompt="Hi there")
    started = events[0]
    assert isinstance(started, ag.RunStarted)
    listed = await api("sessions.list")
    assert isinstance(listed, ag.SessionList)
    assert [(s.id, s.title) for s in listed.data] == [(started.session_id, "Hi there")]
    detail = await api("sessions.get", started.session_id)
    assert isinstance(detail, ag.SessionDetail)
    assert [type(m) for m in detail.messages] == [oa.UserMessage, oa.AssistantMessage]
    assert [r.id for r in detail.runs] == [started.run_id]
    assert detail.runs[0].status == "completed"
    assert await api("sessions.delete", started.session_id) == ag.Deleted(id=started.session_id)
    with pytest.raises(NotFoundError):
        await api("sessions.get", started.session_id)
    assert (await api("sessions.list")).data == []


async def test_admin_keys_and_usage(api: Api, connect: Connect, base: str) -> None:
    created = await api(
        "admin.keys.create", name="app", models=["fast"], rpm=100, metadata={"team": "a"}
    )
    assert isinstance(created, adm.CreatedKey)
    assert created.key.startswith("nrs-") and created.metadata == {"team": "a"}
    listed = await api("admin.keys.list")
    assert isinstance(listed, adm.KeyList)
    assert [k.id for k in listed.data] == [created.id]
    assert not isinstance(listed.data[0], adm.CreatedKey)  # the secret is never shown again
    got = await api("admin.keys.get", created.id)
    assert isinstance(got, adm.ApiKey) and got.name == "app" and got.rpm == 100
    updated = await api("admin.keys.update", created.id, rpm=5, metadata={"team": "b"})
    assert (updated.rpm, updated.name, updated.metadata) == (5, "app", {"team": "b"})

    user = connect(base, created.key)
    assert (await user("chat.create", model="fast", messages=HI)).text
    with pytest.raises(PermissionDeniedError) as denied:
        await user("admin.keys.list")
    assert denied.value.status == 403

    async def billed() -> bool:
        return bool((await api("admin.usage", key=created.id)).data)

    await eventually(billed)
    records = await api("admin.usage", key=created.id)
    assert isinstance(records, adm.UsageList) and records.group_by is None
    [record] = records.data
    assert isinstance(record, adm.UsageRecord)
    assert (record.model, record.route, record.outcome) == ("fast", "/v1/chat/completions", "ok")
    totals = await api("admin.usage", group_by="model")
    assert totals.group_by == "model"
    assert all(isinstance(t, adm.UsageTotals) for t in totals.data)
    fast = next(t for t in totals.data if t.model == "fast")
    assert fast.requests >= 1 and fast.total_tokens == fast.prompt_tokens + fast.completion_tokens
    by_key = await api("admin.usage", group_by="key", limit=10)
    assert created.id in {t.key_id for t in by_key.data}

    revoked = await api("admin.keys.revoke", created.id)
    assert isinstance(revoked, adm.ApiKey) and revoked.revoked_at is not None
    assert (await api("admin.keys.list")).data == []
    assert [k.id for k in (await api("admin.keys.list", include_revoked=True)).data] == [created.id]
    with pytest.raises(AuthenticationError):
        await user("chat.create", model="fast", messages=HI)


# --- typed errors ----------------------------------------------------------------------------


async def test_unknown_model_is_not_found(api: Api) -> None:
    with pytest.raises(NotFoundError) as info:
        await api("chat.create", model="nope", messages=HI)
    error = info.value
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")
    assert error.type == "invalid_request_error" and "nope" in error.message
    assert error.request_id and error.headers["x-request-id"] == error.request_id
    with pytest.raises(NotFoundError) as info:
        await api("models.get", "nope")
    assert info.value.status == 404 and info.value.request_id


async def test_request_id_is_the_servers(connect: Connect, base: str) -> None:
    api = connect(base, headers={"x-request-id": "req-client-test-1"})
    with pytest.raises(NotFoundError) as info:
        await api("chat.create", model="nope", messages=HI)
    assert info.value.request_id == "req-client-test-1"


@pytest.mark.parametrize("key", ["nrs-wrong", None])
async def test_bad_key_is_authentication_error(
    connect: Connect, base: str, key: str | None
) -> None:
    api = connect(base, key)
    with pytest.raises(AuthenticationError) as info:
        await api("chat.create", model="fast", messages=HI)
    assert info.value.status == 401 and info.value.type == "authentication_error"
    assert info.value.code == ("missing_api_key" if key is None else "invalid_api_key")
    with pytest.raises(AuthenticationError):
        await api("models.list")
    assert (await api("health")).status == "ok"  # public


@pytest.mark.parametrize(
    ("method", "kw", "param"),
    [
        ("chat.create", {"model": "m", "messages": []}, "messages"),
        ("chat.create", {"messages": HI}, "model"),
        ("chat.create", {"model": "m", "messages": HI, "temperature": 5}, "temperature"),
        (
            "chat.create",
            {"model": "m", "messages": [{"role": "wizard", "content": "x"}]},
            "messages.0.role",
        ),
        ("simple.chat", {}, "prompt"),
        ("embed", {"text": ""}, "text"),
        ("admin.keys.create", {"name": "k", "rpm": 0}, "rpm"),
        ("admin.keys.update", {"key_id": "key_1", "budget": {"tokens": 5}}, "budget"),
        ("admin.usage", {"group_by": "week"}, "group_by"),
        ("admin.keys.list", {"include_revoked": "maybe"}, "include_revoked"),
        ("chat.stream", {"model": "m", "messages": []}, "messages"),
        ("generate", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("agent.stream", {"prompt": ""}, "prompt"),
        ("runs.start", {"prompt": "x", "session_id": "no spaces"}, "session_id"),
    ],
)
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_invalid_request_is_refused_before_sending(
    kind: str, method: str, kw: dict[str, object], param: str
) -> None:
    sent: list[httpx2.Request] = []

    def record(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(500)

    transport = httpx2.MockTransport(record)
    client: Client | AsyncClient
    if kind == "sync":
        client = Client("http://test", "k", http_client=httpx2.Client(transport=transport))
    else:
        client = AsyncClient(
            "http://test", "k", http_client=httpx2.AsyncClient(transport=transport)
        )
    api = Api(client)
    try:
        with pytest.raises(InvalidRequestError) as info:
            if method.endswith("stream") or method == "generate":
                await api.events(method, **kw)
            else:
                await api(method, **kw)
        assert info.value.param == param and param in info.value.message
        assert isinstance(info.value, ValueError)
    finally:
        await api.close()
    assert sent == []


# --- streams close their connection when the caller stops --------------------------------------


LONG = " ".join(f"w{i}" for i in range(200))


async def test_leaving_a_chat_stream_closes_it(api: Api, upstream: FakeOpenAI, base: str) -> None:
    upstream.script(Reply(text=LONG, token_delay=0.05))
    first = await api.first("chat.stream", model="fast", messages=HI)
    assert isinstance(first, oa.ChatCompletionChunk)
    await upstream.wait_disconnect(timeout=10)  # the gateway stopped the upstream call

    async def idle() -> bool:
        return await active_streams(base) == 0

    await eventually(idle)
    assert len(upstream.requests) == 1


async def test_closing_a_chat_stream_closes_it(api: Api, upstream: FakeOpenAI) -> None:
    """`with` / `async with` closes the stream when left, whatever was read."""
    upstream.script(Reply(text=LONG, token_delay=0.05))
    client = api.client
    if isinstance(client, Client):

        def read_one() -> oa.ChatCompletionChunk:
            with client.chat.stream(model="fast", messages=HI) as stream:
                return next(stream)

        first = await asyncio.to_thread(read_one)
    else:
        async with client.chat.stream(model="fast", messages=HI) as stream:
            first = await anext(stream)
    assert isinstance(first, oa.ChatCompletionChunk)
    await upstream.wait_disconnect(timeout=10)


async def test_leaving_an_agent_stream_cancels_the_run(api: Api, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(tool_calls=[{"name": "slow_tool", "arguments": {"seconds": 30}}]))
    started = await api.first("agent.stream", prompt="Wait", agent="helper")
    assert isinstance(started, ag.RunStarted)

    async def stopped() -> bool:
        return (await api("runs.get", started.run_id)).status != "running"

    await eventually(stopped)
    assert (await api("runs.get", started.run_id)).status == "cancelled"


async def test_closing_an_agent_stream_cancels_before_the_client_closes(
    connect: Connect, base: str, upstream: FakeOpenAI
) -> None:
    """The cancel is sent before the stream's `close()` returns, so closing the client right
    after (leaving both `with` blocks at once) cannot lose it."""
    upstream.script(Reply(tool_calls=[{"name": "slow_tool", "arguments": {"seconds": 30}}]))
    api = connect(base)
    client = api.client
    if isinstance(client, Client):

        def leave() -> ag.AgentEvent:
            with (
                Client(base, MASTER) as own,
                own.agent.stream(prompt="Wait", agent="helper") as stream,
            ):
                return next(stream)

        started = await asyncio.to_thread(leave)
    else:
        async with (
            AsyncClient(base, MASTER) as own,
            own.agent.stream(prompt="Wait", agent="helper") as stream,
        ):
            started = await anext(stream)
    assert isinstance(started, ag.RunStarted)

    async def stopped() -> bool:
        return (await api("runs.get", started.run_id)).status != "running"

    await eventually(stopped, timeout=5)
    assert (await api("runs.get", started.run_id)).status == "cancelled"


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("chat.stream", {"model": "fast", "messages": HI}),
        ("simple.chat_stream", {"prompt": "Hi"}),
        ("simple.api_chat", {"messages": HI}),
        ("generate", {"prompt": "Write"}),
    ],
)
async def test_an_error_inside_a_stream_raises(
    api: Api, upstream: FakeOpenAI, method: str, body: dict[str, Any]
) -> None:
    """After the 200 the gateway can only report a failure as an error event: the stream
    yields what came before it, then raises it as a status error."""
    upstream.script(Reply(text="a b c d", reset_after=2))
    stream = api.method(method)(**body)  # nothing is sent before the first event is asked for
    got: list[str] = []

    def read() -> None:
        got.extend(event.text for event in stream)

    with pytest.raises(APIStatusError) as info:
        if api.sync:
            await asyncio.to_thread(read)
        else:
            async for event in stream:
                got.append(event.text)
    assert "".join(got) == "a b "
    error = info.value
    assert isinstance(error, InternalServerError)  # whichever way the endpoint frames it
    assert error.status == 502 and "closed the connection" in error.message
    if method in ("chat.stream", "simple.chat_stream"):  # OpenAI's envelope: type and code too
        assert (error.type, error.code) == ("upstream_error", "upstream_unreachable")
