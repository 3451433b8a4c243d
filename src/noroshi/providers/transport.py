"""Upstream HTTP: requests through noroshi's own HTTP/1.1 client (`http1`), and WebSockets (an
edge to its core) through aiohttp, imported when the first one opens: few servers bridge one.

The client raises noroshi's errors itself; aiohttp's are translated here, chained with `from`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from noroshi.errors import UpstreamConnectError, UpstreamTimeout
from noroshi.providers.http1 import Client, Exchange

if TYPE_CHECKING:
    import aiohttp

__all__ = ["MAX_ERROR_BODY", "HTTPTransport", "UpstreamResponse", "UpstreamSocket"]

MAX_ERROR_BODY = 64 * 1024

UpstreamResponse = Exchange  # a started answer: status and headers known, the body coming


class UpstreamSocket:
    """Text frames to and from an upstream WebSocket; None from `receive` once it closed."""

    __slots__ = ("_text", "_ws")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, text: aiohttp.WSMsgType) -> None:
        self._ws = ws
        self._text = text  # the type of a text frame

    async def send(self, text: str) -> None:
        await self._ws.send_str(text)

    async def receive(self) -> str | None:
        message = await self._ws.receive()
        return message.data if message.type == self._text else None

    async def close(self) -> None:
        await self._ws.close()


class HTTPTransport(Client):
    """The HTTP/1.1 client (its `send` is the hot path, with no layer above it), and a
    WebSocket to the upstream when an edge bridges one."""

    def __init__(self, *, max_connections: int, connect_timeout: float) -> None:
        super().__init__(max_connections=max_connections, connect_timeout=connect_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def websocket(self, url: str, headers: dict[str, str]) -> UpstreamSocket:
        """A WebSocket to the upstream (an edge to its core)."""
        import aiohttp

        if self._session is None or self._session.closed:
            # made on first use, inside the running loop, which aiohttp requires
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_s),
                skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        try:
            ws = await self._session.ws_connect(url, headers=headers, max_msg_size=1 << 20)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout("The upstream did not open the WebSocket in time.") from exc
        except (aiohttp.ClientError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise UpstreamConnectError(f"Could not open the upstream WebSocket: {reason}.") from exc
        return UpstreamSocket(ws, aiohttp.WSMsgType.TEXT)

    async def close(self) -> None:
        await super().close()
        if self._session is not None:
            await self._session.close()
            self._session = None
