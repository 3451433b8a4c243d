"""ASGI transport adapter, so the same app runs under uvicorn and other ASGI servers.

It behaves as noroshi's own server does: the body is read within the limit, and an
`http.disconnect` cancels the request task so the upstream call stops.

WebSockets go to the application's WebSocket entry through `_WebSocketBackend`. A refused
handshake gets its real status and JSON body where the server offers the
`websocket.http.response` extension (uvicorn does), and a close with 1008 and the message as
its reason where it does not.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from noroshi.errors import BadRequest, NoroshiError, PayloadTooLarge
from noroshi.http.request import Request
from noroshi.http.response import ClientGone, Response, Sink
from noroshi.http.websocket import WebSocket, WebSocketDisconnect, close_reason, no_body
from noroshi.types import Headers

__all__ = ["ASGIAdapter", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Writer:
    __slots__ = ("_send", "_sink")

    def __init__(self, send: Send, sink: _Sink) -> None:
        self._send = send
        self._sink = sink

    async def send_bytes(self, data: bytes) -> None:
        await self._body(data, True)

    async def end(self, data: bytes) -> None:
        self._sink.streaming = False  # ended here: nothing for `finish` to send
        await self._body(data, False)

    async def _body(self, data: bytes, more: bool) -> None:
        try:
            await self._send({"type": "http.response.body", "body": data, "more_body": more})
        except OSError as exc:
            raise ClientGone from exc


class _Sink:
    __slots__ = ("_send", "streaming")
    gone: tuple[type[BaseException], ...] = (ClientGone,)

    def __init__(self, send: Send) -> None:
        self._send = send
        self.streaming = False

    async def send(self, status: int, headers: Headers, body: bytes) -> None:
        await self._send(
            {"type": "http.response.start", "status": status, "headers": _encode_headers(headers)}
        )
        await self._send({"type": "http.response.body", "body": body})

    async def start(self, status: int, headers: Headers) -> _Writer:
        self.streaming = True
        await self._send(
            {"type": "http.response.start", "status": status, "headers": _encode_headers(headers)}
        )
        return _Writer(self._send, self)

    async def finish(self) -> None:
        if self.streaming:
            try:
                await self._send({"type": "http.response.body", "body": b""})
            except OSError:
                pass


def _encode_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def _decode_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for k, v in raw:
        name, value = k.decode("latin-1").lower(), v.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


Dispatch = Callable[[Request, Sink], Awaitable[None]]
WebSocketEntry = Callable[[Request, WebSocket], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


class ASGIAdapter:
    """An ASGI application over a dispatch callable, as noroshi's own server is: the body is
    read within `max_body_bytes`, and an `http.disconnect` cancels the request's task so the
    upstream call stops."""

    def __init__(
        self,
        dispatch: Dispatch,
        websocket: WebSocketEntry,
        startup: Hook,
        shutdown: Hook,
        max_body_bytes: int,
    ) -> None:
        self.dispatch = dispatch
        self.websocket = websocket
        self.startup = startup
        self.shutdown = shutdown
        self.max_body_bytes = max_body_bytes
        self.name = "uvicorn (asgi)" if "uvicorn" in sys.modules else "asgi"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _decode_headers(scope["headers"])
        limit = self.max_body_bytes
        disconnected = asyncio.Event()
        task = asyncio.current_task()
        assert task is not None
        watchers: list[asyncio.Future[None]] = []

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()
            task.cancel()

        async def read() -> bytes:
            length = headers.get("content-length")
            if length is not None:
                try:
                    if int(length) > limit:
                        raise PayloadTooLarge(
                            f"The request body exceeds the limit of {limit} bytes."
                        )
                except ValueError:
                    raise BadRequest(
                        "Content-Length is not a number.", param="content-length"
                    ) from None
            buf = bytearray()
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    raise asyncio.CancelledError
                buf += message.get("body", b"")
                if len(buf) > limit:
                    raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
                if not message.get("more_body", False):
                    # only once the body is consumed does receive() report a disconnect
                    watchers.append(asyncio.ensure_future(watch()))
                    return bytes(buf)

        client = scope.get("client")
        request = Request(
            scope["method"],
            scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
            headers,
            read,
            f"{client[0]}:{client[1]}" if client else "",
        )
        request.task = task
        sink = _Sink(send)
        try:
            await self.dispatch(request, sink)
            await sink.finish()
        except asyncio.CancelledError:
            if not disconnected.is_set():
                raise
        finally:
            for watcher in watchers:
                watcher.cancel()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        client = scope.get("client")
        request = Request(
            "GET",
            scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
            _decode_headers(scope["headers"]),
            no_body,
            f"{client[0]}:{client[1]}" if client else "",
        )
        request.task = asyncio.current_task()
        respond = "websocket.http.response" in (scope.get("extensions") or {})
        await self.websocket(request, WebSocket(_WebSocketBackend(receive, send, respond)))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


class _WebSocketBackend:
    __slots__ = ("_receive", "_respond", "_send")

    def __init__(self, receive: Receive, send: Send, respond: bool) -> None:
        self._receive = receive
        self._send = send
        self._respond = respond  # the server can answer a refused handshake with a response

    async def accept(self) -> None:
        await self._emit({"type": "websocket.accept"})

    async def receive(self) -> str | bytes:
        while True:
            message = await self._receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text: str | None = message.get("text")
                if text is not None:
                    return text
                data: bytes = message.get("bytes") or b""
                return data
            if kind == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1005), message.get("reason") or "")

    async def send(self, data: str | bytes) -> None:
        key = "text" if isinstance(data, str) else "bytes"
        await self._emit({"type": "websocket.send", key: data})

    async def close(self, code: int, reason: str) -> None:
        try:
            await self._emit({"type": "websocket.close", "code": code, "reason": reason})
        except WebSocketDisconnect:
            pass

    async def refuse(self, error: NoroshiError) -> None:
        try:
            if not self._respond:
                reason = close_reason(error.message)
                await self._emit({"type": "websocket.close", "code": 1008, "reason": reason})
                return
            response = Response.error(error)
            await self._emit(
                {
                    "type": "websocket.http.response.start",
                    "status": response.status,
                    "headers": _encode_headers(response.headers),
                }
            )
            await self._emit({"type": "websocket.http.response.body", "body": response.body})
        except WebSocketDisconnect:
            pass

    async def _emit(self, message: Message) -> None:
        try:
            await self._send(message)
        except OSError as exc:  # uvicorn's ClientDisconnected is one
            raise WebSocketDisconnect(1006) from exc
