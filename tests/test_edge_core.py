"""An edge and two cores as real processes: requests relayed and billed at the edge, cores
that refuse what the edge did not sign, a core killed mid-stream and taken back later."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from noroshi.edge.signing import Signer
from tests.agent.test_agent_api import parse_sse
from tests.conftest import free_port, openai_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.processes import kill_tree, start_server, stop

SECRET = "internal-secret-for-tests-0123456789"
MASTER = "sk-edge-master"
HI = [{"role": "user", "content": "Hi"}]


class Cluster:
    def __init__(self, tmp_path: Path, upstream: FakeOpenAI) -> None:
        self.tmp_path = tmp_path
        self.config = openai_config(upstream.base_url, extra=f'[internal]\nsecret = "{SECRET}"\n')
        self.ports = [free_port(), free_port()]
        self.cores: list[Any] = [None, None]
        self.edge: Any = None
        self.base = ""

    async def start_core(self, i: int) -> None:
        env = {"NOROSHI_SERVER__ROLE": "core"}
        self.cores[i], _ = await start_server(
            self.tmp_path, self.config, env, f"core{i}", self.ports[i]
        )

    async def start(self) -> None:
        await asyncio.gather(self.start_core(0), self.start_core(1))
        cores = ",".join(f"http://127.0.0.1:{p}" for p in self.ports)
        env = {
            "NOROSHI_SERVER__ROLE": "edge",
            "NOROSHI_SERVER__CORES": "[" + ",".join(f'"{c}"' for c in cores.split(",")) + "]",
            "NOROSHI_MASTER_KEY": MASTER,
        }
        self.edge, self.base = await start_server(self.tmp_path, self.config, env, "edge")

    async def close(self) -> None:
        for proc in (self.edge, *self.cores):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await stop(proc)


@pytest.fixture
async def cluster(tmp_path: Path, upstream: FakeOpenAI) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, upstream)
    await c.start()
    yield c
    await c.close()


def auth(key: str = MASTER) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def served(port: int) -> int:
    """How many chat completions a core has answered, from its own metrics."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(
        int(float(n))
        for n in re.findall(
            r'noroshi_requests_total\{model="",route="/v1/chat/completions",status="200"\} (\S+)',
            text,
        )
    )


async def test_edge_relays_and_bills(cluster: Cluster, upstream: FakeOpenAI) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{cluster.base}/v1/chat/completions",
            headers=auth(),
            json={"model": "fast", "messages": HI},
        ) as r:
            assert r.status == 200
            assert (await r.json())["choices"][0]["message"]["content"] == upstream.default.text
        upstream.default = Reply(chunks=5, token_delay=0.05)
        bodies = await asyncio.gather(*(_stream(s, cluster.base) for _ in range(6)))
        assert all(b.endswith(b"data: [DONE]\n\n") for b in bodies)
        # unauthenticated at the edge: refused there
        async with s.post(
            f"{cluster.base}/v1/chat/completions", json={"model": "fast", "messages": HI}
        ) as r:
            assert r.status == 401
        async with s.get(f"{cluster.base}/admin/usage?group_by=model", headers=auth()) as r:
            usage = await r.json()
    assert usage["data"][0]["requests"] == 7  # billed once, at the edge
    # least outstanding: concurrent streams went to both cores
    assert await served(cluster.ports[0]) >= 1 and await served(cluster.ports[1]) >= 1


async def _chat(s: aiohttp.ClientSession, base: str) -> int:
    async with s.post(
        f"{base}/v1/chat/completions", headers=auth(), json={"model": "fast", "messages": HI}
    ) as r:
        await r.read()
        return r.status


async def _stream(s: aiohttp.ClientSession, base: str) -> bytes:
    async with s.post(
        f"{base}/v1/chat/completions",
        headers=auth(),
        json={"model": "fast", "messages": HI, "stream": True},
    ) as r:
        assert r.status == 200
        return await r.read()


async def test_cores_refuse_what_the_edge_did_not_sign(cluster: Cluster) -> None:
    core = f"http://127.0.0.1:{cluster.ports[0]}"
    body = b'{"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}'
    path = "/v1/chat/completions"
    json_type = {"content-type": "application/json"}
    good = {**json_type, **Signer(SECRET).sign("POST", path, body, {"key_id": None, "admin": True})}
    cases = {
        "unsigned_request": {},
        "bad_signature": Signer("another-secret-that-is-long-enough").sign("POST", path, body),
        "stale_request": Signer(SECRET).sign("POST", path, body, now=time.time() - 120),
    }
    async with aiohttp.ClientSession() as s:
        for code, headers in cases.items():
            async with s.post(core + path, data=body, headers=headers) as r:
                assert r.status == 401 and (await r.json())["error"]["code"] == code
        tampered = {**good}
        async with s.post(core + path, data=body.replace(b"Hi", b"Ho"), headers=tampered) as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "bad_signature"
        async with s.post(core + path, data=body, headers=good) as r:
            assert r.status == 200
        async with s.post(core + path, data=body, headers=good) as r:  # the same again
            assert r.status == 401 and (await r.json())["error"]["code"] == "replayed_request"
        async with s.get(f"{core}/admin/keys", headers=good) as r:
            assert r.status == 404  # cores serve no admin routes


async def test_core_killed_mid_stream_then_taken_back(
    cluster: Cluster, upstream: FakeOpenAI
) -> None:
    upstream.default = Reply(chunks=40, token_delay=0.1)
    async with aiohttp.ClientSession() as s:
        r = await s.post(
            f"{cluster.base}/v1/chat/completions",
            headers=auth(),
            json={"model": "fast", "messages": HI, "stream": True},
        )
        first = await r.content.readuntil(b"\n\n")
        assert first.startswith(b"data: {")
        # the core serving it is the one with an active stream
        busy = None
        for i, port in enumerate(cluster.ports):
            async with s.get(f"http://127.0.0.1:{port}/metrics") as m:
                if "noroshi_active_streams 1.0" in await m.text():
                    busy = i
        assert busy is not None
        kill_tree(cluster.cores[busy].pid)
        await cluster.cores[busy].wait()
        rest = await r.read()
        r.close()
        assert b'"error"' in rest and not rest.endswith(b"data: [DONE]\n\n")

        # new requests go to the other core
        upstream.default = Reply()
        for _ in range(4):
            async with s.post(
                f"{cluster.base}/v1/chat/completions",
                headers=auth(),
                json={"model": "fast", "messages": HI},
            ) as r2:
                assert r2.status == 200

        # restarted, it is taken back once its health check passes
        await cluster.start_core(busy)
        deadline = time.monotonic() + 15
        while await served(cluster.ports[busy]) == 0:
            assert time.monotonic() < deadline, "the restarted core got no request"
            await asyncio.gather(*(_chat(s, cluster.base) for _ in range(4)))
            await asyncio.sleep(0.5)


async def test_agent_requests_run_on_a_core(cluster: Cluster, upstream: FakeOpenAI) -> None:
    upstream.default = Reply(text="Hello from a core.", chunks=3)
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{cluster.base}/api/v1/agent/chat", headers=auth(), json={"prompt": "Hi"}
        ) as r:
            assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
            session_id = r.headers["x-noroshi-session-id"]
            run_id = r.headers["x-noroshi-run-id"]
            raw = await r.read()
        events = parse_sse(raw)
        assert events[-1][1] == "run.finished"
        assert "".join(d["text"] for _, t, d in events if t == "text.delta") == "Hello from a core."
        async with s.get(f"{cluster.base}/api/v1/sessions/{session_id}", headers=auth()) as r:
            session = await r.json()
        assert [m["role"] for m in session["messages"]] == ["user", "assistant"]
        async with s.get(f"{cluster.base}/api/v1/runs/{run_id}/stream", headers=auth()) as r:
            assert b"event: run.finished" in await r.read()
        # another key of the edge does not see the session, though the core is shared
        async with s.post(
            f"{cluster.base}/admin/keys", headers=auth(), json={"name": "other"}
        ) as r:
            other = (await r.json())["key"]
        async with s.get(f"{cluster.base}/api/v1/sessions/{session_id}", headers=auth(other)) as r:
            assert r.status == 404


async def test_agent_websocket_through_the_edge(cluster: Cluster, upstream: FakeOpenAI) -> None:
    upstream.default = Reply(text="Over the socket.", chunks=2)
    url = f"{cluster.base.replace('http', 'ws')}/api/v1/agent/ws?api_key={MASTER}"
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        await ws.send_json({"type": "run", "prompt": "Hi"})
        frames = []
        while not frames or frames[-1]["type"] not in ("run.finished", "error"):
            frames.append(await asyncio.wait_for(ws.receive_json(), 10))
    assert frames[-1]["type"] == "run.finished"
    assert "".join(f["text"] for f in frames if f["type"] == "text.delta") == "Over the socket."
