"""The edge's relay of agent requests: the request goes, signed, to the least busy healthy core,
and its answer comes back as it arrives, a stream chunk by chunk, never buffered whole.

The agent loop, its tools and its sessions run on the core; the edge has already checked the
caller, its limits and budgets, and the core learns who the caller is from the signed context.
A core that cannot be reached is skipped for the next one, which is safe because nothing has
reached the client yet. A client that leaves closes the connection to the core, which cancels
the run there as it would on a single process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from noroshi.errors import NoDeployment, UpstreamError, UpstreamTimeout
from noroshi.http.request import Request
from noroshi.http.response import Response, StreamResponse
from noroshi.http.websocket import WebSocket, WebSocketDisconnect
from noroshi.providers.core import CALLER, CoreProvider
from noroshi.providers.router import least_busy
from noroshi.providers.transport import UpstreamResponse

__all__ = ["Relay"]

PASSED_REQUEST_HEADERS = ("content-type", "accept", "last-event-id")
PASSED_ANSWER_HEADERS = (
    "content-type",
    "cache-control",
    "retry-after",
    "x-vercel-ai-ui-message-stream",
    "x-noroshi-run-id",
    "x-noroshi-session-id",
)
MAX_ANSWER_BYTES = 32 * 1024 * 1024


class Relay:
    def __init__(self, cores: list[CoreProvider], max_stream_bytes: int) -> None:
        self.cores = cores
        self.max_stream_bytes = max_stream_bytes

    def _pick(self, tried: set[CoreProvider]) -> CoreProvider | None:
        ready = [c for c in self.cores if c.healthy and c not in tried]
        return least_busy(ready, lambda c: c.outstanding)

    async def forward(self, request: Request) -> Response:
        body = await request.body()
        target = f"{request.path}?{request.query}" if request.query else request.path
        passed = {h: v for h in PASSED_REQUEST_HEADERS if (v := request.headers.get(h))}
        tried: set[CoreProvider] = set()
        last: Exception | None = None
        while (core := self._pick(tried)) is not None:
            tried.add(core)
            assert core.signer is not None
            headers = {**passed, **core.signer.sign(request.method, target, body, CALLER.get())}
            try:
                resp = await core.transport.send(
                    request.method,
                    core.root + target,
                    headers,
                    body or None,
                    core.config.total_timeout_s,
                )
            except (UpstreamError, UpstreamTimeout) as exc:
                last = exc
                continue
            return await self._answer(core, resp)
        if last is not None:
            raise last
        raise NoDeployment("No core is available.")

    async def bridge(self, request: Request, ws: WebSocket) -> None:
        """A client's WebSocket joined to one on a core, frames passed both ways as they come;
        either side closing closes the other, which cancels the run on the core."""
        target = f"{request.path}?{request.query}" if request.query else request.path
        core = self._pick(set())
        if core is None:
            raise NoDeployment("No core is available.")
        assert core.signer is not None
        headers = core.signer.sign("GET", target, b"", CALLER.get())
        upstream = await core.transport.websocket(core.root + target, headers)
        await ws.accept()
        core.outstanding += 1

        async def up() -> None:
            while True:
                await upstream.send(await ws.receive_text())

        async def down() -> None:
            while (text := await upstream.receive()) is not None:
                await ws.send_text(text)

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            core.outstanding -= 1
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
            with contextlib.suppress(WebSocketDisconnect):
                await ws.close()

    async def _answer(self, core: CoreProvider, resp: UpstreamResponse) -> Response:
        headers = [(h, v) for h in PASSED_ANSWER_HEADERS if (v := resp.header(h))]
        if not (resp.header("content-type") or "").startswith("text/event-stream"):
            try:
                body = await resp.read(MAX_ANSWER_BYTES)
            finally:
                resp.close()
            return Response(body, resp.status, headers)

        async def chunks() -> AsyncIterator[bytes]:
            core.outstanding += 1
            complete = False
            try:
                async for chunk in resp.chunks():
                    yield chunk
                complete = True
            finally:
                core.outstanding -= 1
                resp.finish(complete)

        return StreamResponse(chunks(), resp.status, headers, max_bytes=self.max_stream_bytes)
