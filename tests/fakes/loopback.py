"""The lifecycle every fake server shares: an aiohttp app on 127.0.0.1 at a free port, used
as `async with Fake() as fake`, and a way to wait until it has seen what a test expects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TypeVar

from aiohttp import web

__all__ = ["LoopbackServer"]

T = TypeVar("T")


class LoopbackServer:
    client_max_size = 1024 * 1024

    def __init__(self) -> None:
        self.port = 0
        self._closing = False  # long answers in progress end at once when set
        self._runner: web.AppRunner | None = None

    def _routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Self:
        """Listen on 127.0.0.1 at a free port, which `port` then holds."""
        app = web.Application(client_max_size=self.client_max_size)
        app.add_routes(self._routes())
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        self._closing = False
        self.port = int(runner.addresses[0][1])
        return self

    async def close(self) -> None:
        self._closing = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 10) -> T:  # noqa: ASYNC109
        """Poll `predicate()` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            await asyncio.sleep(0.01)
        return value
