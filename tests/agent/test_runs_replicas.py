"""A run on one replica is joined, resumed and cancelled through another that shares Redis
and PostgreSQL with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.agent.test_agent_api import parse_sse
from tests.conftest import openai_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.processes import serve_replicas
from tests.services import shared_state

AGENTS = """
[[agents]]
name = "helper"
model = "fast"
tools = ["tests.agent.loop_tools:slow_tool"]
"""


@pytest.fixture
async def replicas(
    tmp_path: Path, upstream: FakeOpenAI, postgres_url: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[list[str]]:
    extra = AGENTS + shared_state(postgres_url, redis_url, redis_prefix)
    async with serve_replicas(tmp_path, openai_config(upstream.base_url, extra=extra), 2) as bases:
        yield bases


async def test_join_resume_and_cancel_from_another_replica(
    replicas: list[str], upstream: FakeOpenAI
) -> None:
    a, b = replicas
    upstream.script(Reply(text="one two three four five six", chunks=6, token_delay=0.1))
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{a}/api/v1/runs", json={"prompt": "Count", "agent": "helper", "background": True}
        ) as r:
            assert r.status == 202
            run_id = (await r.json())["run_id"]
        # joined on the other replica while it runs: a replay, then the rest, to the end
        async with s.get(f"{b}/api/v1/runs/{run_id}/stream") as r:
            assert r.status == 200
            events = parse_sse(await r.read())
        assert events[0][1] == "run.started" and events[-1][1] == "run.finished"
        assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
        text = "".join(d["text"] for _, t, d in events if t == "text.delta")
        assert text == "one two three four five six"
        # a client that lost its connection after event 4 resumes there, on either replica
        async with s.get(f"{b}/api/v1/runs/{run_id}/stream", headers={"last-event-id": "4"}) as r:
            assert parse_sse(await r.read()) == events[4:]

        # a run on replica a, cancelled through replica b, stops there
        upstream.script(Reply(tool_calls=[{"name": "slow_tool", "arguments": {"seconds": 60}}]))
        async with s.post(
            f"{a}/api/v1/runs", json={"prompt": "Wait", "agent": "helper", "background": True}
        ) as r:
            run_id = (await r.json())["run_id"]
        async with s.get(f"{b}/api/v1/runs/{run_id}/stream") as r:  # until the tool runs
            await asyncio.wait_for(r.content.readuntil(b"event: tool.call"), 10)
        async with s.post(f"{b}/api/v1/runs/{run_id}/cancel") as r:
            assert (await r.json())["cancelled"] is True
        for _ in range(100):
            async with s.get(f"{b}/api/v1/runs/{run_id}") as r:
                status = (await r.json())["status"]
            if status != "running":
                break
            await asyncio.sleep(0.05)
        assert status == "cancelled"
        async with s.get(f"{b}/api/v1/runs/{run_id}/stream") as r:
            last = parse_sse(await r.read())[-1]
        assert last[1] == "error" and last[2]["code"] == "cancelled"


async def test_a_session_id_the_client_chose_across_replicas(
    replicas: list[str], upstream: FakeOpenAI
) -> None:
    upstream.script(Reply(text="Noted: blue."), Reply(text="You said blue."))
    async with aiohttp.ClientSession() as s:
        for base, prompt in zip(
            replicas, ("My colour is blue.", "What is my colour?"), strict=True
        ):
            body = {"prompt": prompt, "session_id": "team-chat", "agent": "helper"}
            async with s.post(f"{base}/api/v1/agent/chat", json=body) as r:
                assert r.status == 200 and r.headers["x-noroshi-session-id"] == "team-chat"
                assert parse_sse(await r.read())[-1][1] == "run.finished"
        async with s.get(f"{replicas[1]}/api/v1/sessions/team-chat") as r:
            detail = await r.json()
    assert [m["content"] for m in detail["messages"]] == [
        "My colour is blue.",
        "Noted: blue.",
        "What is my colour?",
        "You said blue.",
    ]
    # the second turn, on the other replica, sent the first one's history to the model
    assert [m["content"] for m in upstream.chats()[1]][-3:] == [
        "My colour is blue.",
        "Noted: blue.",
        "What is my colour?",
    ]
