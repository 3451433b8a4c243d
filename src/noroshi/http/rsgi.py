"""RSGI transport adapter: Granian's native interface, the fast path.

Granian's stream has no backpressure and raises `ProtocolClosed` once the client is gone, so
a watcher on `client_disconnect()` cancels the request task: that is what stops the upstream
call within milliseconds, streaming or not.

WebSockets (`scope.proto == "ws"`) go to `serve_websocket` through `_WebSocketBackend`. RSGI's
`close(status)` sends that status as the HTTP answer before the handshake, and ignores it after:
Granian then closes without a code.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from granian._granian import RSGIProtocolClosed as ProtocolClosed
from granian._granian import RSGIProtocolError as ProtocolError

from noroshi.errors import BadRequest, NoroshiError, PayloadTooLarge
from noroshi.http.request import Request
from noroshi.http.websocket import WebSocket, WebSocketDisconnect, no_body, serve_websocket
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


class _WebSocketBackend:
    __slots__ = ("_proto", "_tx")

    def __init__(self, proto: Any) -> None:
        self._proto = proto
        self._tx: Any = None

    async def accept(self) -> None:
        try:
            self._tx = await self._proto.accept()
        except (ProtocolClosed, ProtocolError) as exc:  # the client left during the handshake
            raise WebSocketDisconnect(1006) from exc

    async def receive(self) -> str | bytes:
        try:
            message = await self._tx.receive()
        except ProtocolClosed as exc:
            raise WebSocketDisconnect(1006) from exc
        if message.kind == 0:  # a close frame; Granian does not tell its code
            raise WebSocketDisconnect(1005)
        data: str | bytes = message.data
        return data

    async def send(self, data: str | bytes) -> None:
        try:
            if isinstance(data, str):
                await self._tx.send_str(data)
            else:
                await self._tx.send_bytes(data)
        except ProtocolClosed as exc:
            raise WebSocketDisconnect(1006) from exc

    async def close(self, code: int, reason: str) -> None:
        self._proto.close(code)
        # Granian finishes the close only once the transport is freed, and a logged
        # traceback can keep this backend alive long after
        self._tx = None

    async def refuse(self, error: NoroshiError) -> None:
        self._proto.close(error.status)  # becomes the HTTP status; Granian sends no body


async def serve_rsgi(app: App, scope: Any, proto: Any) -> None:
    if scope.proto == "ws":
        await _serve_websocket(app, scope, proto)
        return
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


async def _serve_websocket(app: App, scope: Any, proto: Any) -> None:
    app.server = "granian (rsgi)"
    request = Request("GET", scope.path, scope.query_string, scope.headers, no_body, scope.client)
    request.task = asyncio.current_task()
    await serve_websocket(app, request, WebSocket(_WebSocketBackend(proto)))
