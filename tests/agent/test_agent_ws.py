"""`/api/v1/agent/ws`: runs started and cancelled over a WebSocket, the same events as the SSE
stream arriving as JSON frames."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.agent.test_agent_api import AGENTS
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply

MASTER = "sk-ws"


@pytest.fixture
async def base(serve: Serve, tmp_path: Path, upstream: FakeOpenAI) -> str:
    text = openai_config(upstream.base_url, extra=AGENTS)
    return await serve(write_config(tmp_path, text, {"NOROSHI_MASTER_KEY": MASTER}))


async def frames_until(ws: aiohttp.ClientWebSocketResponse, *last: str) -> list[dict[str, Any]]:
    out = []
    while True:
        frame = await asyncio.wait_for(ws.receive_json(), 10)
        out.append(frame)
        if frame["type"] in last:
            return out


async def test_run_over_websocket(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(
        Reply(tool_calls=[{"name": "lookup_city", "arguments": {"city": "Kyoto"}}]),
        Reply(text="Kyoto has 1000 people."),
    )
    url = f"{base.replace('http', 'ws')}/api/v1/agent/ws?api_key={MASTER}"
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        await ws.send_json({"type": "run", "prompt": "Kyoto?", "agent": "helper"})
        frames = await frames_until(ws, "run.finished", "error")
        assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
        types = [f["type"] for f in frames]
        assert types[0] == "run.started" and types[-1] == "run.finished"
        assert "tool.call" in types and "tool.result" in types
        assert (
            "".join(f["text"] for f in frames if f["type"] == "text.delta")
            == "Kyoto has 1000 people."
        )
        session_id = frames[0]["session_id"]

        # a second turn on the same socket and session
        upstream.script(Reply(text="Yes."))
        await ws.send_json({"type": "run", "prompt": "Sure?", "session_id": session_id})
        frames = await frames_until(ws, "run.finished", "error")
        assert frames[-1]["type"] == "run.finished"

        # bad input is answered on the socket, which stays open
        await ws.send_json({"type": "run", "prompt": ""})
        error = await asyncio.wait_for(ws.receive_json(), 10)
        assert error["type"] == "error" and error["param"] == "prompt"


async def test_cancel_over_websocket(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(tool_calls=[{"name": "slow_tool", "arguments": {"seconds": 30}}]))
    url = f"{base.replace('http', 'ws')}/api/v1/agent/ws"
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(url, headers={"authorization": f"Bearer {MASTER}"}) as ws,
    ):
        await ws.send_json({"type": "run", "prompt": "Wait", "agent": "helper"})
        await frames_until(ws, "tool.call")
        await ws.send_json({"type": "cancel"})
        frames = await frames_until(ws, "run.finished", "error")
        assert frames[-1]["type"] == "error" and frames[-1]["code"] == "cancelled"


async def test_websocket_needs_a_key(base: str) -> None:
    url = f"{base.replace('http', 'ws')}/api/v1/agent/ws"
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(url)
        assert refused.value.status == 401


async def test_a_message_nested_too_deeply_is_refused_on_the_socket(base: str) -> None:
    url = f"{base.replace('http', 'ws')}/api/v1/agent/ws?api_key={MASTER}"
    deep = "[" * 5000 + "]" * 5000
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        await ws.send_str(f'{{"type": "run", "prompt": "Hi", "metadata": {deep}}}')
        error = await asyncio.wait_for(ws.receive_json(), 10)
        assert error["type"] == "error" and error["code"] == "json_too_deep"
        assert error["status"] == 400 and error["param"] == "metadata"
        await ws.send_json({"type": "run", "prompt": ""})  # the socket is still open
        assert (await asyncio.wait_for(ws.receive_json(), 10))["param"] == "prompt"
