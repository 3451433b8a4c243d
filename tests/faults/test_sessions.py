"""One run at a time per session holds across replicas: a second turn sent to another replica
while the first runs is refused with 409, and the turn after it sees the first one's answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests import posting
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.faults.conftest import MASTER, figure, start_fleet

AGENTS = """
[[agents]]
name = "helper"
model = "fast"
tools = ["tests.agent.loop_tools:slow_tool"]
"""
AUTH = {"authorization": f"Bearer {MASTER}"}


async def post(s: aiohttp.ClientSession, url: str, **body: Any) -> tuple[int, Any]:
    answer = await posting.post(url, body, headers=AUTH, session=s)
    return answer.status, answer.json()


async def test_a_second_turn_on_another_replica_waits_its_turn(
    tmp_path: Path, upstream: FakeOpenAI, postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    async with start_fleet(
        tmp_path, upstream, postgres_url, redis_url, redis_prefix, extra=AGENTS
    ) as fleet:
        upstream.script(
            Reply(tool_calls=[{"name": "slow_tool", "arguments": {"seconds": 1.5}}]),
            Reply(text="The first answer."),
        )
        async with aiohttp.ClientSession() as s:
            status, first = await post(
                s, fleet.url(0, "/api/v1/runs"), prompt="One", agent="helper", background=True
            )
            assert status == 202
            session = first["session_id"]
            tries = [
                await post(
                    s,
                    fleet.url(i, "/api/v1/runs"),
                    prompt="Two",
                    agent="helper",
                    session_id=session,
                    background=True,
                )
                for i in (1, 2)
            ]
            async with s.delete(fleet.url(2, f"/api/v1/sessions/{session}"), headers=AUTH) as r:
                deleted = r.status  # not while it runs, wherever it runs
            while True:  # the first run ends
                async with s.get(
                    fleet.url(1, f"/api/v1/runs/{first['run_id']}"), headers=AUTH
                ) as r:
                    if (await r.json())["status"] != "running":
                        break
                await asyncio.sleep(0.1)
            upstream.script(Reply(text="The second answer."))
            status, _ = await post(
                s,
                fleet.url(1, "/api/v1/runs"),
                prompt="Two",
                agent="helper",
                session_id=session,
                background=True,
            )
            assert status == 202
            while True:
                async with s.get(fleet.url(2, f"/api/v1/sessions/{session}"), headers=AUTH) as r:
                    detail = await r.json()
                if all(run["status"] != "running" for run in detail["runs"]):
                    break
                await asyncio.sleep(0.1)
    refused = [body["error"]["code"] for status, body in tries if status == 409]
    figure(
        "second turns on other replicas", tried=2, refused=len(refused), ran_both=2 - len(refused)
    )
    assert refused == ["session_busy", "session_busy"]
    assert deleted == 409
    # the second run saw the first one's answer: its request held the whole history
    last_request = upstream.chats()[-1]
    assert any(m.get("content") == "The first answer." for m in last_request)
    assert [run["status"] for run in detail["runs"]] == ["completed", "completed"]
