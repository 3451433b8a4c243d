"""Upstream HTTP: requests through noroshi's own HTTP/1.1 client (`http1`), and WebSockets (an
edge to its core) through the `websockets` library's asyncio client, imported when the first
one opens: few servers bridge one.

The client raises noroshi's errors itself; the WebSocket library's are translated here,
chained with `from`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from noroshi.errors import UpstreamConnectError, UpstreamTimeout
from noroshi.providers.http1 import Client, Exchange

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

__all__ = ["MAX_ERROR_BODY", "HTTPTransport", "UpstreamResponse", "UpstreamSocket"]

MAX_ERROR_BODY = 64 * 1024
MAX_FRAME = 1 << 20  # a WebSocket message from the upstream, at most

UpstreamResponse = Exchange  # a started answer: status and headers known, the body coming


class UpstreamSocket:
    """Text frames to and from an upstream WebSocket; None from `receive` once it closed (or
    sent a binary frame, which this bridge does not carry)."""

    __slots__ = ("_ws",)

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    async def send(self, text: str) -> None:
        await self._ws.send(text)

    async def receive(self) -> str | None:
        from websockets.exceptions import ConnectionClosed

        try:
            message = await self._ws.recv()
        except ConnectionClosed:
            return None
        return message if isinstance(message, str) else None

    async def close(self) -> None:
        await self._ws.close()


class HTTPTransport(Client):
    """The HTTP/1.1 client (its `send` is the hot path, with no layer above it), and a
    WebSocket to the upstream when an edge bridges one."""

    async def websocket(self, url: str, headers: dict[str, str]) -> UpstreamSocket:
        """A WebSocket to the upstream (an edge to its core), opened within `connect_s`."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidURI

        if url.startswith(("http://", "https://")):  # the core's own address: its scheme
            url = "ws" + url.removeprefix("http")
        try:
            ws = await connect(
                url,
                additional_headers=headers,
                user_agent_header=None,
                compression=None,  # frames relayed as they come: deflate would cost CPU twice
                proxy=None,  # never one from the environment: the core is addressed directly
                open_timeout=self.connect_s,
                max_size=MAX_FRAME,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout("The upstream did not open the WebSocket in time.") from exc
        except (InvalidHandshake, InvalidURI, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise UpstreamConnectError(f"Could not open the upstream WebSocket: {reason}.") from exc
        return UpstreamSocket(ws)
