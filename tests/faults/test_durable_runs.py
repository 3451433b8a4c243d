"""Runs outlive the process that ran them: killed with SIGKILL mid-tool or mid-model-call, a
run is taken over by another replica, or by the same one restarted, and goes on from its kept
events; finished tools never run twice, joiners get the terminator, and the session is free.
SIGTERM lets background runs finish within the drain, then hands them over or ends them."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.agent.durable_tools import calls
from tests.agent.test_agent_api import parse_sse
from tests.conftest import openai_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.faults.conftest import figure
from tests.processes import kill_tree, start_server, stop
from tests.services import TCPProxy, shared_state

LEASE_S, RECOVER_S = 2.0, 0.5
AGENTS = f"""
[runs]
lease_s = {LEASE_S}
recover_every_s = {RECOVER_S}

[[agents]]
name = "worker"
model = "fast"
tools = ["tests.agent.durable_tools:quick", "tests.agent.durable_tools:slow",
         "tests.agent.durable_tools:slow_safe", "tests.agent.durable_tools:transfer"]
"""
Events = list[tuple[int, str, dict[str, Any]]]


async def start_run(s: aiohttp.ClientSession, base: str, **body: Any) -> tuple[str, str]:
    body = {"prompt": "Go", "agent": "worker", "background": True, **body}
    async with s.post(f"{base}/api/v1/runs", json=body) as r:
        answer = await r.json()
        assert r.status == 202, answer
        return answer["run_id"], answer["session_id"]


async def run_state(s: aiohttp.ClientSession, base: str, run_id: str) -> dict[str, Any]:
    async with s.get(f"{base}/api/v1/runs/{run_id}") as r:
        assert r.status == 200
        state: dict[str, Any] = await r.json()
        return state


async def join(s: aiohttp.ClientSession, base: str, run_id: str, after: int = 0) -> Events:
    headers = {"last-event-id": str(after)} if after else {}
    async with s.get(f"{base}/api/v1/runs/{run_id}/stream", headers=headers) as r:
        return parse_sse(await asyncio.wait_for(r.read(), 60))


async def second_turn(s: aiohttp.ClientSession, base: str, session_id: str) -> Events:
    """The session is free again: a turn on it runs to its end."""
    body = {"prompt": "And now?", "agent": "worker", "session_id": session_id}
    async with s.post(f"{base}/api/v1/agent/chat", json=body) as r:
        assert r.status == 200, await r.text()
        return parse_sse(await r.read())


def check_sequence(events: Events) -> None:
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))


async def test_a_replica_killed_mid_tool_hands_its_run_to_another(
    tmp_path: Path,
    upstream: FakeOpenAI,
    postgres_url: str,
    redis_url: str,
    redis_prefix: str,
    counted: Path,
) -> None:
    state = shared_state(postgres_url, redis_url, redis_prefix)
    config = openai_config(upstream.base_url, extra=state + AGENTS)
    (dying, a), (living, b) = await asyncio.gather(
        start_server(tmp_path, config, name="a"), start_server(tmp_path, config, name="b")
    )
    upstream.script(
        Reply(tool_calls=[{"id": "q", "name": "quick", "arguments": {"word": "one"}}]),
        Reply(
            tool_calls=[
                {"id": "s", "name": "slow", "arguments": {"seconds": 30}},
                {"id": "i", "name": "slow_safe", "arguments": {"seconds": 2}},
            ]
        ),
        Reply(text="All done."),
        Reply(text="Nothing more."),
    )
    try:
        async with aiohttp.ClientSession() as s:
            run_id, session_id = await start_run(s, a)
            async with s.get(f"{b}/api/v1/runs/{run_id}/stream") as joined:  # on the other
                head = await asyncio.wait_for(joined.content.readuntil(b'"slow_safe"'), 10)
                head += await joined.content.readuntil(b"\n\n")
                while len(calls(counted)) < 3:  # noqa: ASYNC110 - both slow tools are running
                    await asyncio.sleep(0.02)
                kill_tree(dying.pid)
                killed = time.monotonic()
                rest = await asyncio.wait_for(joined.content.read(), 60)
            events = parse_sse(head + rest)
            finished_after = time.monotonic() - killed
            run = await run_state(s, b, run_id)
            after = await second_turn(s, b, session_id)
    finally:
        kill_tree(dying.pid)
        living.terminate()
        await stop(living)
    figure(
        "kill -9 mid-tool, taken over by another replica",
        lease_s=LEASE_S,
        finished_within_s=round(finished_after, 1),
        tools_run=len(calls(counted)),
    )
    check_sequence(events)
    assert events[-1][1] == "run.finished" and run["status"] == "completed"
    results = {d["id"]: d for _, t, d in events if t == "tool.result"}
    assert results["q"]["content"] == "quick one"
    assert results["i"]["content"] == "slow_safe done"  # safe to repeat: run again
    assert results["s"]["is_error"] and "not run again" in results["s"]["content"]
    # the finished tool ran once; the one safe to repeat twice; the other was never repeated
    assert sorted(calls(counted)) == ["quick", "slow", "slow_safe", "slow_safe"]
    assert after[-1][1] == "run.finished"  # the session is free again
    # the lease, a sweep, the tool run again, and a margin for a busy machine
    assert finished_after <= LEASE_S + RECOVER_S + 2 + 5
    # the model was not asked the finished steps again: three calls, then the next turn's
    assert len(upstream.chats()) == 4


async def test_a_server_killed_mid_model_call_goes_on_after_a_restart(
    tmp_path: Path, upstream: FakeOpenAI, counted: Path
) -> None:
    config = openai_config(upstream.base_url, extra=AGENTS)  # alone: SQLite, no Redis
    proc, base = await start_server(tmp_path, config)
    upstream.script(
        Reply(tool_calls=[{"id": "q", "name": "quick", "arguments": {"word": "one"}}]),
        Reply(text=" ".join(["cut"] * 100), token_delay=0.05),
        Reply(text="The whole answer."),
    )
    async with aiohttp.ClientSession() as s:
        run_id, session_id = await start_run(s, base)
        async with s.get(f"{base}/api/v1/runs/{run_id}/stream") as r:
            await asyncio.wait_for(r.content.readuntil(b"event: text.delta"), 10)
        await asyncio.sleep(0.3)  # some of the cut answer is kept
        kill_tree(proc.pid)
        await proc.wait()
        proc, base = await start_server(tmp_path, config, name="restarted")
        try:
            events = await join(s, base, run_id)
            run = await run_state(s, base, run_id)
            async with s.get(f"{base}/api/v1/sessions/{session_id}") as r:
                messages = (await r.json())["messages"]
        finally:
            proc.terminate()
            await stop(proc)
    check_sequence(events)
    types = [t for _, t, _ in events]
    assert types[-1] == "run.finished" and run["status"] == "completed"
    assert types.count("run.resumed") == 1
    # the cut step started over; the one before it was not asked again, nor its tool run
    assert calls(counted) == ["quick"] and len(upstream.chats()) == 3
    assert [m.get("content") for m in messages if m["role"] == "assistant"][-1] == (
        "The whole answer."
    )
    assert not any("cut" in str(m.get("content")) for m in messages)


@pytest.mark.parametrize(
    ("rule", "reason"),
    [("resume = false", "runs.resume is off"), ("max_resumes = 0", "runs.max_resumes")],
)
async def test_a_run_that_cannot_go_on_ends_interrupted(
    tmp_path: Path, upstream: FakeOpenAI, counted: Path, rule: str, reason: str
) -> None:
    config = openai_config(upstream.base_url, extra=AGENTS.replace("[runs]", f"[runs]\n{rule}"))
    proc, base = await start_server(tmp_path, config)
    upstream.script(Reply(tool_calls=[{"id": "s", "name": "slow", "arguments": {"seconds": 30}}]))
    async with aiohttp.ClientSession() as s:
        run_id, session_id = await start_run(s, base)
        async with s.get(f"{base}/api/v1/runs/{run_id}/stream") as r:
            await asyncio.wait_for(r.content.readuntil(b"event: tool.call"), 10)
        for _ in range(100):  # until the tool is running
            if calls(counted):
                break
            await asyncio.sleep(0.05)
        kill_tree(proc.pid)
        await proc.wait()
        proc, base = await start_server(tmp_path, config, name="restarted")
        try:
            events = await join(s, base, run_id)
            run = await run_state(s, base, run_id)
            upstream.script(Reply(text="Fine."))
            after = await second_turn(s, base, session_id)
        finally:
            proc.terminate()
            await stop(proc)
    check_sequence(events)
    assert events[-1][1] == "error" and events[-1][2]["code"] == "interrupted"
    assert run["status"] == "interrupted" and reason in run["error"]
    assert calls(counted) == ["slow"]
    assert after[-1][1] == "run.finished"


async def test_a_run_waiting_for_approval_survives_a_restart(
    tmp_path: Path, upstream: FakeOpenAI, counted: Path
) -> None:
    config = openai_config(upstream.base_url, extra=AGENTS)
    proc, base = await start_server(tmp_path, config)
    upstream.script(
        Reply(tool_calls=[{"id": "t", "name": "transfer", "arguments": {"amount": 5}}]),
        Reply(text="Sent."),
    )
    async with aiohttp.ClientSession() as s:
        run_id, _ = await start_run(s, base)
        waited = await join(s, base, run_id)  # ends where the run waits
        kill_tree(proc.pid)
        await proc.wait()
        proc, base = await start_server(tmp_path, config, name="restarted")
        try:
            run = await run_state(s, base, run_id)
            body = {"tool_call_id": "t", "approved": True}
            async with s.post(f"{base}/api/v1/runs/{run_id}/approvals", json=body) as r:
                assert r.status == 200, await r.text()
            events = await join(s, base, run_id)
        finally:
            proc.terminate()
            await stop(proc)
    assert waited[-1][1] == "run.waiting" and run["status"] == "waiting"
    check_sequence(events)
    assert events[-1][1] == "run.finished" and calls(counted) == ["transfer"]


async def test_a_process_that_cannot_renew_its_leases_stops_its_runs(
    tmp_path: Path,
    upstream: FakeOpenAI,
    postgres_proxy: tuple[TCPProxy, str],
    redis_url: str,
    redis_prefix: str,
    counted: Path,
) -> None:
    """Cut off from the database past most of a lease, a replica stops its runs itself, for
    another (here: itself, once the database is back) may take them over: one run never runs
    in two places."""
    proxy, url = postgres_proxy
    state = shared_state(url, redis_url, redis_prefix, storage="timeout_s = 0.5\n")
    config = openai_config(upstream.base_url, extra=state + AGENTS)
    proc, base = await start_server(tmp_path, config)
    upstream.script(
        Reply(tool_calls=[{"id": "i", "name": "slow_safe", "arguments": {"seconds": 4}}]),
        Reply(text="Back."),
    )
    try:
        async with aiohttp.ClientSession() as s:
            run_id, _ = await start_run(s, base)
            async with s.get(f"{base}/api/v1/runs/{run_id}/stream") as r:
                await asyncio.wait_for(r.content.readuntil(b"event: tool.call"), 10)
            await proxy.cut()
            await asyncio.sleep(3.5)  # the lease is out; the tool would end at 4 s
            await proxy.heal()
            for _ in range(200):
                try:
                    run = await run_state(s, base, run_id)
                except AssertionError:  # 503 while the database comes back
                    run = {"status": "running"}
                if run["status"] != "running":
                    break
                await asyncio.sleep(0.1)
            events = await join(s, base, run_id)
    finally:
        proc.terminate()
        await stop(proc)
    check_sequence(events)
    assert run["status"] == "completed" and events[-1][1] == "run.finished"
    assert [t for _, t, _ in events].count("run.resumed") == 1
    # stopped mid-tool and run again once, by the one process holding the lease
    assert calls(counted) == ["slow_safe", "slow_safe"] and len(upstream.chats()) == 2


async def sigterm_during(
    proc: asyncio.subprocess.Process, base: str, s: aiohttp.ClientSession, run_id: str
) -> None:
    """SIGTERM once the run's tools are running; the process exits by itself."""
    async with s.get(f"{base}/api/v1/runs/{run_id}/stream") as r:
        await asyncio.wait_for(r.content.readuntil(b"event: tool.call"), 10)
    proc.send_signal(signal.SIGTERM)
    assert await stop(proc) == 0


async def usage_of(s: aiohttp.ClientSession, base: str) -> list[dict[str, Any]]:
    for _ in range(50):
        async with s.get(f"{base}/admin/usage?limit=100") as r:
            rows: list[dict[str, Any]] = (await r.json())["data"]
        if rows:
            return [row for row in rows if row["route"] == "/api/v1/runs"]
        await asyncio.sleep(0.1)
    return []


@pytest.mark.parametrize("drain_s", [10.0, 0.5])
async def test_sigterm_lets_a_background_run_finish_or_ends_it_interrupted(
    tmp_path: Path, upstream: FakeOpenAI, counted: Path, drain_s: float
) -> None:
    """Alone (SQLite): the drain lets the run finish when it can, else ends it `interrupted`,
    billed for what it used."""
    config = f"[server]\ndrain_timeout_s = {drain_s}\n" + openai_config(
        upstream.base_url, extra=AGENTS
    )
    proc, base = await start_server(tmp_path, config)
    upstream.script(
        Reply(
            tool_calls=[{"id": "s", "name": "slow", "arguments": {"seconds": 2}}],
            prompt_tokens=11,
            completion_tokens=5,
        ),
        Reply(text="Done."),
    )
    async with aiohttp.ClientSession() as s:
        run_id, _ = await start_run(s, base)
        await sigterm_during(proc, base, s, run_id)
        proc, base = await start_server(tmp_path, config, name="restarted")
        try:
            run = await run_state(s, base, run_id)
            events = await join(s, base, run_id)
            rows = await usage_of(s, base)
        finally:
            proc.terminate()
            await stop(proc)
    if drain_s > 2:
        assert run["status"] == "completed" and events[-1][1] == "run.finished"
        assert calls(counted) == ["slow"] and len(upstream.chats()) == 2
        assert [r["outcome"] for r in rows] == ["ok"]
    else:
        assert run["status"] == "interrupted"
        assert events[-1][1] == "error" and events[-1][2]["code"] == "interrupted"
        # billed once, for the model call it made before the drain ran out
        assert [(r["outcome"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
            ("cut", 11, 5)
        ]
        assert run["prompt_tokens"] == 11


async def test_sigterm_hands_a_run_over_to_another_replica(
    tmp_path: Path,
    upstream: FakeOpenAI,
    postgres_url: str,
    redis_url: str,
    redis_prefix: str,
    counted: Path,
) -> None:
    state = shared_state(postgres_url, redis_url, redis_prefix)
    config = "[server]\ndrain_timeout_s = 0.5\n" + openai_config(
        upstream.base_url, extra=state + AGENTS
    )
    (leaving, a), (staying, b) = await asyncio.gather(
        start_server(tmp_path, config, name="a"), start_server(tmp_path, config, name="b")
    )
    upstream.script(
        Reply(
            tool_calls=[{"id": "i", "name": "slow_safe", "arguments": {"seconds": 3}}],
            prompt_tokens=11,
            completion_tokens=5,
        ),
        Reply(text="Done.", prompt_tokens=13, completion_tokens=2),
    )
    try:
        async with aiohttp.ClientSession() as s:
            run_id, _ = await start_run(s, a)
            handed = time.monotonic()
            await sigterm_during(leaving, a, s, run_id)
            events = await join(s, b, run_id)
            taken_after = time.monotonic() - handed
            run = await run_state(s, b, run_id)
            rows = await usage_of(s, b)
    finally:
        staying.terminate()
        await stop(staying)
    figure(
        "SIGTERM with a background run, another replica",
        drain_s=0.5,
        finished_after_s=round(taken_after, 1),
    )
    check_sequence(events)
    assert events[-1][1] == "run.finished" and run["status"] == "completed"
    assert [t for _, t, _ in events].count("run.resumed") == 1
    assert calls(counted) == ["slow_safe", "slow_safe"]  # cut off, and safe to repeat
    # each replica billed its own part, once
    assert sorted((r["outcome"], r["prompt_tokens"]) for r in rows) == [("cut", 11), ("ok", 13)]
    assert (run["prompt_tokens"], run["completion_tokens"]) == (24, 7)
