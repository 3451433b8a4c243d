"""WebSockets over either server: one `WebSocket` for handlers, a small backend per server.

noroshi's own server (`http/upgrade.py`) and the ASGI adapter each supply a `Backend` of five
methods; everything that must behave the same on both, the size limit, the close codes and
the refusal of a handshake, lives here (routing and guards are `App.websocket`'s). An error
before `accept()` refuses the handshake with the error's HTTP status and JSON body, as a plain
request would get; after it the socket closes with 1008 for the client's fault and 1011 for
ours, since a status can no longer be sent. (Under an ASGI server without the
`websocket.http.response` extension, a refusal becomes a close with 1008 and the message as
its reason.)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, Protocol, TypeVar
from urllib.parse import parse_qsl

import msgspec

from noroshi.errors import Forbidden, NoroshiError
from noroshi.http.request import Request, decode_json

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Backend",
    "WebSocket",
    "WebSocketDisconnect",
    "WebSocketHandler",
    "close_reason",
    "no_body",
    "with_query_key",
]

log = logging.getLogger("noroshi.http")

T = TypeVar("T")
WebSocketHandler = Callable[[Request, "WebSocket"], Awaitable[None]]

MAX_MESSAGE_BYTES = 1 << 20
# a close frame's payload is at most 125 bytes, two of them the code
_MAX_REASON_BYTES = 120
# RFC 6455 close codes
NORMAL, UNSUPPORTED_DATA, POLICY_VIOLATION, TOO_BIG, SERVER_ERROR = 1000, 1003, 1008, 1009, 1011


class WebSocketDisconnect(Exception):
    """The connection is over: the client closed or left, or we closed it with `code`."""

    def __init__(self, code: int = NORMAL, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Backend(Protocol):
    """One server's side of a WebSocket. `receive` and `send` raise `WebSocketDisconnect`
    once the client has gone; `close` and `refuse` never raise for that."""

    async def accept(self) -> None: ...
    async def receive(self) -> str | bytes: ...
    async def send(self, data: str | bytes) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...
    async def refuse(self, error: NoroshiError) -> None: ...


class WebSocket:
    """A server-side WebSocket. Messages are bounded by `max_message` bytes: a larger one
    closes the socket with 1009, so neither a client nor a handler can buffer without end."""

    __slots__ = ("_backend", "max_message", "state")

    def __init__(self, backend: Backend, max_message: int = MAX_MESSAGE_BYTES) -> None:
        self._backend = backend
        self.max_message = max_message
        self.state: Literal["connecting", "open", "closed"] = "connecting"

    async def accept(self) -> None:
        if self.state != "connecting":
            raise RuntimeError(f"accept() on a WebSocket that is already {self.state}")
        try:
            await self._backend.accept()
        except WebSocketDisconnect:
            self.state = "closed"
            raise
        self.state = "open"

    async def receive(self) -> str | bytes:
        """The next message, text or binary; `WebSocketDisconnect` when the client closes."""
        self._ensure_open()
        try:
            data = await self._backend.receive()
        except WebSocketDisconnect:
            self.state = "closed"
            raise
        if _too_big(data, self.max_message):
            await self.close(TOO_BIG, f"The message exceeds the limit of {self.max_message} bytes.")
            raise WebSocketDisconnect(TOO_BIG, "message too big")
        return data

    async def receive_text(self) -> str:
        """The next text message; a binary one closes the socket with 1003."""
        data = await self.receive()
        if isinstance(data, bytes):
            await self.close(UNSUPPORTED_DATA, "This endpoint accepts text messages only.")
            raise WebSocketDisconnect(UNSUPPORTED_DATA, "binary message")
        return data

    async def receive_json(self, decoder: msgspec.json.Decoder[T]) -> T:
        """The next message, decoded and validated. Bad JSON raises `BadRequest` and leaves
        the socket open, so the handler can report it and read on."""
        data = await self.receive()
        return decode_json(decoder, data.encode() if isinstance(data, str) else data)

    async def send_text(self, text: str) -> None:
        await self._send(text)

    async def send_bytes(self, data: bytes) -> None:
        await self._send(data)

    async def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Close once; later calls do nothing. Before `accept()` this refuses the handshake."""
        if self.state == "closed":
            return
        was, self.state = self.state, "closed"
        if was == "connecting":
            await self._backend.refuse(Forbidden(reason or "The WebSocket was refused."))
        else:
            await self._backend.close(code, close_reason(reason))

    async def refuse(self, error: NoroshiError) -> None:
        """Refuse the handshake with the error's status; after `accept()`, close instead."""
        if self.state == "connecting":
            self.state = "closed"
            await self._backend.refuse(error)
        else:
            await self.close(
                SERVER_ERROR if error.status >= 500 else POLICY_VIOLATION, error.message
            )

    async def _send(self, data: str | bytes) -> None:
        self._ensure_open()
        try:
            await self._backend.send(data)
        except WebSocketDisconnect:
            self.state = "closed"
            raise

    def _ensure_open(self) -> None:
        if self.state == "connecting":
            raise RuntimeError("the WebSocket is not accepted yet; call accept() first")
        if self.state == "closed":
            raise WebSocketDisconnect(NORMAL, "the WebSocket is closed")


async def no_body() -> bytes:
    """A WebSocket handshake has no body; the adapters give its `Request` this reader."""
    return b""


def with_query_key(headers: Mapping[str, str], query: str) -> Mapping[str, str]:
    """Browsers cannot set headers on a WebSocket, so here, and only here, `?api_key=`
    stands in for `Authorization`. A key sent in a header wins."""
    if "api_key" not in query or "authorization" in headers or "x-api-key" in headers:
        return headers
    key = next((v for k, v in parse_qsl(query) if k == "api_key"), "")
    if not key:
        return headers
    return {**dict(headers.items()), "authorization": f"Bearer {key}"}


def _too_big(data: str | bytes, limit: int) -> bool:
    if isinstance(data, bytes):
        return len(data) > limit
    # a character is 1 to 4 bytes in UTF-8: encode only when the count alone cannot tell
    return len(data) > limit or (len(data) * 4 > limit and len(data.encode()) > limit)


def close_reason(reason: str) -> str:
    """`reason` cut to fit a close frame, on a UTF-8 character boundary."""
    return reason.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")
