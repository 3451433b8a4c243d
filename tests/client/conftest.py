"""Fixtures for the client tests: a gateway with a master key, agents and an embedding model,
and the client, sync or async, driven the same way from an async test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from noroshi.client import AsyncClient, Client
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI

MASTER = "sk-master-client"
HI = [{"role": "user", "content": "Hi"}]
EXTRA = """
[[models]]
name = "embed"
deployments = [{ provider = "up", model = "fake-embedding" }]

[[agents]]
name = "helper"
model = "fast"
system = "You help."
tools = ["tests.agent.loop_tools:lookup_city", "tests.agent.loop_tools:slow_tool"]
max_steps = 3

[defaults]
embedding_model = "embed"
"""


class Api:
    """One client, sync or async, called the same way: a sync client's blocking calls (and a
    stream's whole iteration) run in a worker thread, an async client's are awaited."""

    def __init__(self, client: Client | AsyncClient) -> None:
        self.client = client
        self.sync = isinstance(client, Client)

    def method(self, name: str) -> Callable[..., Any]:
        target: Any = self.client
        for part in name.split("."):
            target = getattr(target, part)
        return target  # type: ignore[no-any-return]

    async def __call__(self, name: str, /, *args: Any, **kw: Any) -> Any:
        """`await api("chat.create", model=…)`: the method's answer."""
        method = self.method(name)
        if self.sync:
            return await asyncio.to_thread(method, *args, **kw)
        return await method(*args, **kw)

    async def events(self, name: str, /, *args: Any, **kw: Any) -> list[Any]:
        """Every event of the stream the method opens."""
        method = self.method(name)
        if self.sync:
            return await asyncio.to_thread(lambda: list(method(*args, **kw)))
        return [event async for event in method(*args, **kw)]

    async def first(self, name: str, /, *args: Any, **kw: Any) -> Any:
        """The stream's first event, leaving the loop there: the stream is dropped, not closed."""
        method = self.method(name)
        if self.sync:

            def one() -> Any:
                for event in method(*args, **kw):
                    return event
                raise AssertionError("the stream was empty")

            return await asyncio.to_thread(one)
        async for event in method(*args, **kw):
            return event
        raise AssertionError("the stream was empty")

    async def close(self) -> None:
        if isinstance(self.client, Client):
            await asyncio.to_thread(self.client.close)
        else:
            await self.client.aclose()


Connect = Callable[..., Api]


@pytest.fixture(params=["sync", "async"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """`connect(base_url, api_key=MASTER, **kw)`: a client of the parametrised kind."""
    made: list[Api] = []

    def make(base_url: str, api_key: str | None = MASTER, **kw: Any) -> Api:
        kind = Client if request.param == "sync" else AsyncClient
        api = Api(kind(base_url, api_key, **kw))
        made.append(api)
        return api

    yield make
    for api in made:
        await api.close()


@pytest.fixture
async def base(serve: Serve, tmp_path: Path, upstream: FakeOpenAI) -> str:
    text = openai_config(upstream.base_url, extra=EXTRA)
    return await serve(write_config(tmp_path, text, {"NOROSHI_MASTER_KEY": MASTER}))


@pytest.fixture
def api(connect: Connect, base: str) -> Api:
    """A client of the gateway with the master key."""
    return connect(base)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Poll `check` until it holds; fail after a generous `timeout`."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not so after {timeout} s")
        await asyncio.sleep(0.02)


async def active_streams(base: str) -> float:
    async with httpx2.AsyncClient() as http:
        text = (await http.get(f"{base}/metrics")).text
    line = next(x for x in text.splitlines() if x.startswith("noroshi_active_streams "))
    return float(line.split()[1])
