"""RSGI transport adapter: Granian's native interface, the fast path.

Granian's stream has no backpressure and raises `ProtocolClosed` once the client is gone, so
a watcher on `client_disconnect()` cancels the request task: that is what stops the upstream
call within milliseconds, streaming or not.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from granian._granian import RSGIProtocolClosed as ProtocolClosed

from noroshi.errors import BadRequest, PayloadTooLarge
from noroshi.http.request import Request
from noroshi.types import Headers

if TYPE_CHECKING:
    from noroshi.app import App

__all__ = ["serve_rsgi"]


class _Sink:
    __slots__ = ("_proto",)
    gone: tuple[type[BaseException], ...] = (ProtocolClosed,)

    def __init__(self, proto: Any) -> None:
        self._proto = proto

    async def send(self, status: int, headers: Headers, body: bytes) -> None:
        self._proto.response_bytes(status, headers, body)

    async def start(self, status: int, headers: Headers) -> Any:
        # Granian's stream transport has send_bytes already: no wrapper on the hot path
        return self._proto.response_stream(status, headers)


def _body_reader(proto: Any, headers: Any, limit: int) -> Any:
    async def read() -> bytes:
        length = headers.get("content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                raise BadRequest(
                    "Content-Length is not a number.", param="content-length"
                ) from None
            if size > limit:
                raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
            body: bytes = await proto()
            return body
        buf = bytearray()
        async for chunk in proto:
            buf += chunk
            if len(buf) > limit:
                raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
        return bytes(buf)

    return read


async def serve_rsgi(app: App, scope: Any, proto: Any) -> None:
    if scope.proto != "http":
        return
    app.server = "granian (rsgi)"
    headers = scope.headers
    request = Request(
        scope.method,
        scope.path,
        scope.query_string,
        headers,
        _body_reader(proto, headers, app.config.server.max_body_bytes),
        scope.client,
    )
    request.task = task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.ensure_future(proto.client_disconnect())

    def on_disconnect(_: object) -> None:
        task.cancel()

    watcher.add_done_callback(on_disconnect)
    try:
        await app.dispatch(request, _Sink(proto))
    except asyncio.CancelledError:
        if not watcher.done():
            raise
    finally:
        watcher.remove_done_callback(on_disconnect)
        watcher.cancel()
