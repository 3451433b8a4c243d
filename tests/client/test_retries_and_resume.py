"""Retries on 429 and 503 against a small scripted server, and an agent stream that resumes by
itself through a proxy that cuts its first connection."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from noroshi.client import APIConnectionError, InternalServerError, RateLimitError
from noroshi.client._base import retry_after
from noroshi.wire import agent as ag
from noroshi.wire import openai as oa
from noroshi.wire.service import Health
from tests.client.conftest import EXTRA, MASTER, Connect
from tests.conftest import Serve, free_port, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply

HEALTH = {
    "status": "ok",
    "version": "0.0.0-test",
    "uptime_s": 1.5,
    "runtime": {"python": "3.11", "server": "fake", "role": "all"},
    "auth": "on",
    "models": {"chat": "fast", "embedding": None},
    "providers": {},
}
MODELS = {"object": "list", "data": [{"id": "fast", "object": "model", "created": 1}]}


class Flaky:
    """Answers `/health` and `/v1/models` with the scripted error statuses first, then 200;
    keeps when each request came (`time.monotonic()`) and its headers."""

    def __init__(self, *statuses: int, retry_after: str | None = "0.2") -> None:
        self.statuses = list(statuses)
        self.retry_after = retry_after
        self.seen: list[tuple[float, dict[str, str]]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _answer(self, request: web.Request) -> web.Response:
        self.seen.append((time.monotonic(), dict(request.headers)))
        if self.statuses:
            status = self.statuses.pop(0)
            headers = {"x-request-id": f"req-{len(self.seen)}"}
            if self.retry_after is not None:
                headers["Retry-After"] = self.retry_after
            error = {
                "message": f"try again ({status})",
                "type": "rate_limit_error",
                "code": "busy",
                "param": None,
            }
            return web.json_response({"error": error}, status=status, headers=headers)
        return web.json_response(HEALTH if request.path == "/health" else MODELS)

    async def __aenter__(self) -> Flaky:
        app = web.Application()
        app.add_routes([web.get("/health", self._answer), web.get("/v1/models", self._answer)])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def gaps(self) -> list[float]:
        times = [at for at, _ in self.seen]
        return [b - a for a, b in itertools.pairwise(times)]


@pytest.mark.parametrize("status", [429, 503])
async def test_retries_after_what_retry_after_asks(connect: Connect, status: int) -> None:
    async with Flaky(status) as fake:
        api = connect(fake.url, "sk-test")
        api.client.retry.base_s = 0.001  # the backoff is tiny: Retry-After decides the wait
        health = await api("health")
        assert isinstance(health, Health) and health.runtime.server == "fake"
        assert len(fake.seen) == 2
        assert fake.gaps()[0] >= 0.2
        assert all(h["Authorization"] == "Bearer sk-test" for _, h in fake.seen)

        fake.statuses = [status]
        models = await api("models.list")
        assert isinstance(models, oa.ModelList) and [m.id for m in models.data] == ["fast"]
        assert len(fake.seen) == 4 and fake.gaps()[2] >= 0.2


async def test_no_retries_raises_with_the_headers(connect: Connect) -> None:
    async with Flaky(429, 503) as fake:
        api = connect(fake.url, max_retries=0)
        with pytest.raises(RateLimitError) as limited:
            await api("health")
        error = limited.value
        assert (error.status, error.code, error.type) == (429, "busy", "rate_limit_error")
        assert error.headers["retry-after"] == "0.2" and error.request_id == "req-1"
        with pytest.raises(InternalServerError) as failed:
            await api("health")
        assert failed.value.status == 503 and failed.value.headers["retry-after"] == "0.2"
        assert len(fake.seen) == 2
        assert isinstance(await api("health"), Health)


async def test_gives_up_after_max_retries(connect: Connect) -> None:
    async with Flaky(429, 429, 429, 429, retry_after="0") as fake:
        api = connect(fake.url, max_retries=2)
        api.client.retry.base_s = 0.001
        with pytest.raises(RateLimitError):
            await api("health")
        assert len(fake.seen) == 3  # the first try and two retries
        assert isinstance(await api("health"), Health)  # the 4th 429, then 200
        assert len(fake.seen) == 5


async def test_an_unreadable_retry_after_is_ignored(connect: Connect) -> None:
    """`Retry-After: soon` is neither seconds nor a date: the client backs off by itself, and
    without retries raises the typed error, not the parser's ValueError."""
    async with Flaky(429, 429, retry_after="soon") as fake:
        api = connect(fake.url, max_retries=0)
        with pytest.raises(RateLimitError) as limited:
            await api("health")
        assert limited.value.headers["retry-after"] == "soon"
        api = connect(fake.url, max_retries=1)
        api.client.retry.base_s = 0.001
        assert isinstance(await api("health"), Health)
        assert len(fake.seen) == 3


def test_retry_after_as_seconds_or_an_http_date() -> None:
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert retry_after({"retry-after": "0.2"}) == 0.2
    assert 25 < (retry_after({"retry-after": soon}) or 0) <= 30
    assert 25 < (retry_after({"retry-after": soon.removesuffix(" GMT")}) or 0) <= 30
    for ignored in ("soon", "-1", "nan", "3600", "Wed, 21 Oct 2015 07:28:00 GMT", ""):
        assert retry_after({"retry-after": ignored}) is None


async def test_retries_a_refused_connection_then_raises(connect: Connect) -> None:
    api = connect(f"http://127.0.0.1:{free_port()}", max_retries=2)
    api.client.retry.base_s = 0.001
    with pytest.raises(APIConnectionError, match="Could not connect"):
        await api("health")


# --- resume ----------------------------------------------------------------------------------


@dataclass
class Head:
    method: str
    target: str
    headers: dict[str, str]


@dataclass
class CuttingProxy:
    """A TCP proxy to `port` that cuts the first connection carrying `GET …/stream` right after
    `events` SSE events of its answer went through; later connections pass through whole."""

    port: int
    events: int = 3
    heads: list[Head] = field(default_factory=list)
    passed: bytes = b""  # what the cut connection let through of the stream's answer
    cut_at: float | None = None  # time.time() of the cut
    url: str = ""
    _armed: bool = False
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return server

    async def _connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.port)
        this = {"cut": False}

        async def up() -> None:
            buffer, body_left = b"", 0
            while data := await client_r.read(65536):
                buffer += data
                while True:
                    skip = min(body_left, len(buffer))
                    buffer, body_left = buffer[skip:], body_left - skip
                    end = buffer.find(b"\r\n\r\n")
                    if body_left or end < 0:
                        break
                    line, *fields = buffer[:end].decode("latin-1").split("\r\n")
                    buffer = buffer[end + 4 :]
                    method, target, _ = line.split(" ", 2)
                    headers = {
                        k.strip().lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)
                    }
                    body_left = int(headers.get("content-length", "0"))
                    self.heads.append(Head(method, target, headers))
                    if target.endswith("/stream") and self.cut_at is None and not self._armed:
                        self._armed = this["cut"] = True  # before the server sees it
                server_w.write(data)
                await server_w.drain()

        async def down() -> None:
            while data := await server_r.read(65536):
                if this["cut"]:
                    self.passed += data
                    ends = [m.end() for m in re.finditer(b"\n\n", self.passed)]
                    if len(ends) >= self.events:
                        keep = len(data) - (len(self.passed) - ends[self.events - 1])
                        self.passed = self.passed[: ends[self.events - 1]]
                        client_w.write(data[:keep])
                        await client_w.drain()
                        self.cut_at = time.time()
                        return
                client_w.write(data)
                await client_w.drain()

        pipes = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            for writer in (client_w, server_w):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            await asyncio.gather(*pipes, return_exceptions=True)


@pytest.fixture
async def proxied(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> AsyncIterator[tuple[str, CuttingProxy]]:
    text = openai_config(upstream.base_url, extra=EXTRA)
    base = await serve(write_config(tmp_path, text, {"NOROSHI_MASTER_KEY": MASTER}))
    proxy = CuttingProxy(int(base.rsplit(":", 1)[1]))
    server = await proxy.start()
    async with server:
        yield base, proxy


async def test_a_dropped_agent_stream_resumes_by_itself(
    proxied: tuple[str, CuttingProxy], connect: Connect, upstream: FakeOpenAI
) -> None:
    base, proxy = proxied
    words = " ".join(f"w{i}" for i in range(12))
    upstream.script(Reply(text=words, token_delay=0.05))  # ~0.55 s: still running at the cut
    api = connect(proxy.url)
    api.client.resume.base_s = 0.05

    events = await api.events("agent.stream", prompt="Count", agent="helper")

    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # each once, in order
    assert isinstance(events[0], ag.RunStarted) and isinstance(events[-1], ag.RunFinished)
    assert "".join(e.text for e in events) == words
    # the first join was cut after 3 events; the second asked for what came after the 3rd
    assert proxy.cut_at is not None
    seen = [int(n) for n in re.findall(rb"^id: (\d+)$", proxy.passed, re.MULTILINE)]
    assert seen == [1, 2, 3]
    joins = [h for h in proxy.heads if h.method == "GET" and h.target.endswith("/stream")]
    assert len(joins) == 2
    assert "last-event-id" not in joins[0].headers
    assert joins[1].headers["last-event-id"] == str(seen[-1])
    assert [h.method for h in proxy.heads] == ["POST", "GET", "GET"]
    # the run went on at the server meanwhile, and finished after the cut
    run = await connect(base)("runs.get", events[0].run_id)
    assert run.status == "completed"
    assert run.finished_at is not None and run.finished_at > proxy.cut_at
