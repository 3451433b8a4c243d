"""Tool calls a person approves first: the run pauses (`waiting`), the answer (HTTP, WebSocket,
or useChat's own flow through the AI SDK's client) takes it up again, a denial goes back to the
model as the tool's result, and an unanswered call is denied when its time is up."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from noroshi.agent.build import build_agents
from noroshi.client import AsyncClient
from noroshi.config import ConfigError
from noroshi.wire import times
from noroshi.wire.agent import RunFinished, RunResumed, RunWaiting, ToolApprovalRequested
from tests.agent.durable_tools import calls
from tests.agent.test_agent_api import parse_sse
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.wire.test_times import ISO_UTC

AGENTS = """
[runs]
recover_every_s = 0.1
approval_timeout_s = {timeout}

[[agents]]
name = "bank"
model = "fast"
tools = ["tests.agent.durable_tools:transfer", "tests.agent.durable_tools:pay",
         "tests.agent.durable_tools:quick"]
approval = {{ quick = "never" }}
"""
AISDK = Path(__file__).parent.parent / "aisdk"
TRANSFER = {"id": "t1", "name": "transfer", "arguments": {"amount": 5}}
Events = list[tuple[int, str, dict[str, Any]]]


async def bank(serve: Serve, tmp_path: Path, upstream: FakeOpenAI, expire_s: float = 60) -> str:
    extra = AGENTS.format(timeout=expire_s)
    return await serve(write_config(tmp_path, openai_config(upstream.base_url, extra=extra)))


async def chat(s: aiohttp.ClientSession, base: str, **body: Any) -> tuple[Events, str]:
    async with s.post(f"{base}/api/v1/agent/chat", json={"agent": "bank", **body}) as r:
        assert r.status == 200, await r.text()
        return parse_sse(await r.read()), r.headers["x-noroshi-run-id"]


async def answer(s: aiohttp.ClientSession, base: str, run_id: str, **body: Any) -> Any:
    async with s.post(f"{base}/api/v1/runs/{run_id}/approvals", json=body) as r:
        return r.status, await r.json()


async def rest(s: aiohttp.ClientSession, base: str, run_id: str, after: int) -> Events:
    async with s.get(
        f"{base}/api/v1/runs/{run_id}/stream", headers={"last-event-id": str(after)}
    ) as r:
        return parse_sse(await asyncio.wait_for(r.read(), 10))


async def test_a_call_waits_for_approval_then_runs(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, counted: Path
) -> None:
    base = await bank(serve, tmp_path, upstream)
    upstream.script(Reply(tool_calls=[TRANSFER]), Reply(text="Sent."))
    async with aiohttp.ClientSession() as s:
        events, run_id = await chat(s, base, prompt="Send 5")
        # the stream ends where the run waits; nothing ran
        assert [t for _, t, _ in events][-3:] == [
            "tool.call",
            "tool.approval_requested",
            "run.waiting",
        ]
        assert events[-1][2]["tool_call_ids"] == ["t1"] and calls(counted) == []
        async with s.get(f"{base}/api/v1/runs/{run_id}") as r:
            waiting = await r.json()
        assert waiting["status"] == "waiting"
        # times as ISO 8601: it expires approval_timeout_s (60 s) after it started
        expires = events[-1][2]["expires_at"]
        assert ISO_UTC.fullmatch(expires) and waiting["approvals"][0]["expires_at"] == expires
        assert ISO_UTC.fullmatch(waiting["created_at"]) and waiting["finished_at"] is None
        asked = times.parse(expires) - times.parse(waiting["created_at"])
        assert 59 < asked < 70
        assert [(a["tool_call_id"], a["name"]) for a in waiting["approvals"]] == [
            ("t1", "transfer")
        ]
        status, answered = await answer(s, base, run_id, tool_call_id="t1", approved=True)
        assert status == 200 and answered["status"] == "running"
        after = await rest(s, base, run_id, events[-1][0])
        # a second answer finds nothing waiting
        status, again = await answer(s, base, run_id, tool_call_id="t1", approved=False)
    types = [t for _, t, _ in after]
    assert types[:3] == ["run.resumed", "tool.approval", "tool.result"]
    assert types[-1] == "run.finished"
    assert after[2][2]["content"] == "sent 5" and calls(counted) == ["transfer"]
    assert status == 409 and again["error"]["code"] == "not_waiting"
    async with aiohttp.ClientSession() as s, s.get(f"{base}/api/v1/runs/{run_id}") as r:
        done = await r.json()
    assert done["status"] == "completed" and ISO_UTC.fullmatch(done["finished_at"])


async def test_a_denial_is_the_tools_result(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, counted: Path
) -> None:
    base = await bank(serve, tmp_path, upstream)
    upstream.script(Reply(tool_calls=[TRANSFER]), Reply(text="I did not send it."))
    async with aiohttp.ClientSession() as s:
        events, run_id = await chat(s, base, prompt="Send 5")
        await answer(s, base, run_id, tool_call_id="t1", approved=False, reason="not today")
        after = await rest(s, base, run_id, events[-1][0])
    result = next(d for _, t, d in after if t == "tool.result")
    assert result["is_error"] and result["content"].endswith("not today")
    assert after[-1][1] == "run.finished" and calls(counted) == []
    # the model read the denial as the tool's answer
    assert upstream.chats()[-1][-1] == {
        "role": "tool",
        "tool_call_id": "t1",
        "content": result["content"],
    }


async def test_a_predicate_asks_only_for_some_calls(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, counted: Path
) -> None:
    base = await bank(serve, tmp_path, upstream)
    small = {"id": "p1", "name": "pay", "arguments": {"amount": 50}}
    large = {"id": "p2", "name": "pay", "arguments": {"amount": 500}}
    upstream.script(Reply(tool_calls=[small, large]), Reply(text="Paid."))
    async with aiohttp.ClientSession() as s:
        events, run_id = await chat(s, base, prompt="Pay")
        asked = [d["id"] for _, t, d in events if t == "tool.approval_requested"]
        ran_first = calls(counted)
        await answer(s, base, run_id, tool_call_id="p2", approved=True)
        after = await rest(s, base, run_id, events[-1][0])
    assert asked == ["p2"] and ran_first == ["pay"]  # the small one ran, the large one waited
    assert calls(counted) == ["pay", "pay"] and after[-1][1] == "run.finished"


async def test_an_unanswered_call_expires_as_a_denial(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, counted: Path
) -> None:
    base = await bank(serve, tmp_path, upstream, expire_s=0.3)
    upstream.script(Reply(tool_calls=[TRANSFER]), Reply(text="It expired."))
    async with aiohttp.ClientSession() as s:
        events, run_id = await chat(s, base, prompt="Send 5")
        for _ in range(100):  # until nobody has answered in time, and it went on
            async with s.get(f"{base}/api/v1/runs/{run_id}") as r:
                run = await r.json()
            if run["status"] not in ("waiting", "running"):
                break
            await asyncio.sleep(0.1)
        after = await rest(s, base, run_id, events[-1][0])
    decision = next(d for _, t, d in after if t == "tool.approval")
    assert decision == {
        "type": "tool.approval",
        "seq": decision["seq"],
        "id": "t1",
        "approved": False,
        "reason": "expired",
    }
    assert after[-1][1] == "run.finished" and calls(counted) == []
    assert run["status"] == "completed"


async def test_a_waiting_run_is_cancelled_and_frees_its_session(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, counted: Path
) -> None:
    base = await bank(serve, tmp_path, upstream)
    upstream.script(Reply(tool_calls=[TRANSFER]), Reply(text="Next."))
    async with aiohttp.ClientSession() as s:
        events, run_id = await chat(s, base, prompt="Send 5", session_id="bank-chat")
        async with s.post(
            f"{base}/api/v1/agent/chat",
            json={"agent": "bank", "prompt": "x", "session_id": "bank-chat"},
        ) as r:
            busy = r.status
        async with s.post(f"{base}/api/v1/runs/{run_id}/cancel") as r:
            cancelled = (await r.json())["cancelled"]
        after = await rest(s, base, run_id, events[-1][0])
        following, _ = await chat(s, base, prompt="Next", session_id="bank-chat")
    assert busy == 409 and cancelled is True  # a waiting run holds its session
    assert after[-1][1] == "error" and after[-1][2]["code"] == "cancelled"
    assert following[-1][1] == "run.finished" and calls(counted) == []


async def test_approval_over_the_websocket(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, counted: Path
) -> None:
    base = await bank(serve, tmp_path, upstream)
    upstream.script(Reply(tool_calls=[TRANSFER]), Reply(text="Sent."))
    seen: list[str] = []
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{base}/api/v1/agent/ws") as ws:
        await ws.send_json({"type": "run", "prompt": "Send 5", "agent": "bank"})
        while not seen or seen[-1] != "run.waiting":
            seen.append(json.loads(await asyncio.wait_for(ws.receive_str(), 10))["type"])
        await ws.send_json({"type": "approve", "tool_call_id": "t1", "approved": True})
        while seen[-1] != "run.finished":
            seen.append(json.loads(await asyncio.wait_for(ws.receive_str(), 10))["type"])
    assert "tool.approval_requested" in seen and "run.resumed" in seen
    assert calls(counted) == ["transfer"]


@pytest.mark.parametrize("approved", [True, False])
async def test_use_chat_approval_flow_through_the_ai_sdk_client(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, counted: Path, approved: bool
) -> None:
    if shutil.which("node") is None or not (AISDK / "node_modules" / "ai").exists():
        pytest.skip("the AI SDK client is not installed: npm ci --prefix tests/aisdk")
    base = await bank(serve, tmp_path, upstream)
    upstream.script(Reply(tool_calls=[TRANSFER]), Reply(text="Done."))
    node = await asyncio.create_subprocess_exec(
        "node",
        "approval.mjs",
        f"{base}/api/v1/agent/chat",
        "chat-ui",
        str(approved).lower(),
        "bank",
        cwd=AISDK,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(node.communicate(), 30)
    assert node.returncode == 0, err.decode()
    seen = json.loads(out)
    assert seen["asked"]["state"] == "approval-requested"
    assert seen["asked"]["approval"]["id"] == "t1" and seen["asked"]["input"] == {"amount": 5}
    assert seen["resend"] is True  # useChat's own rule sends the answer back
    assert seen["second"]["id"] == seen["first"]["id"]  # the same message, taken up again
    tool = next(p for p in seen["second"]["parts"] if p["type"] == "tool-transfer")
    texts = [p["text"] for p in seen["second"]["parts"] if p["type"] == "text"]
    if approved:
        assert tool["state"] == "output-available" and tool["output"] == "sent 5"
        assert calls(counted) == ["transfer"]
    else:
        assert tool["state"] == "output-denied" and calls(counted) == []
    assert texts[-1] == "Done."


async def test_the_typed_client_answers_and_follows(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, counted: Path
) -> None:
    base = await bank(serve, tmp_path, upstream)
    upstream.script(Reply(tool_calls=[TRANSFER]), Reply(text="Sent."))
    async with AsyncClient(base, max_retries=0) as client:
        events = [e async for e in client.agent.stream(prompt="Send 5", agent="bank")]
        waiting = events[-1]
        assert isinstance(waiting, RunWaiting) and waiting.tool_call_ids == ["t1"]
        asked = [e for e in events if isinstance(e, ToolApprovalRequested)]
        assert [(e.id, e.name) for e in asked] == [("t1", "transfer")]
        answer = await client.runs.approve(waiting.run_id, "t1")
        assert answer.status == "running"
        rest = [e async for e in client.runs.join(waiting.run_id, after=waiting.seq)]
    assert isinstance(rest[0], RunResumed) and isinstance(rest[-1], RunFinished)
    assert calls(counted) == ["transfer"]


@pytest.mark.parametrize(
    ("rule", "where"),
    [('{ nothing = "always" }', "no tool 'nothing'"), ('{ quick = "maybe" }', "approval.quick")],
)
async def test_an_agents_approval_rules_are_checked_at_start(
    tmp_path: Path, rule: str, where: str
) -> None:
    extra = f"""
[[agents]]
name = "a"
tools = ["tests.agent.durable_tools:quick"]
approval = {rule}
"""
    config = write_config(tmp_path, openai_config("http://127.0.0.1:1/v1", extra=extra))
    with pytest.raises(ConfigError, match=where):
        await build_agents(config, lambda: "fast")
