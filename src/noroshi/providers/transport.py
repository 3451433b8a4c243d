"""Upstream HTTP: one pooled aiohttp session per provider, and aiohttp's errors translated.

This is the only module that imports aiohttp. Each aiohttp failure becomes the most specific
noroshi error, chained with `from`, so the router can decide what to retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from noroshi.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout

__all__ = ["TRANSPORT_ERRORS", "HTTPTransport", "UpstreamResponse", "UpstreamSocket", "translate"]

MAX_ERROR_BODY = 64 * 1024
MAX_CACHED_URLS = 1024  # an edge's URLs carry session ids: past this, parse them every time
LOOKS = 4  # how often, per idle timeout, the stall watchdog looks for new bytes


class UpstreamResponse:
    """A started upstream answer: its status and headers are known, its body is still coming.

    A stall is caught by a watchdog that looks at how many bytes have arrived a few times per
    idle timeout, rather than by aiohttp's read timeout, which cancels and re-arms a timer for
    every TCP segment: that was 23 timers for a 20-token answer, a tenth of the relay's cost.
    """

    __slots__ = ("_idle_s", "_quiet", "_resp", "_seen", "_watchdog")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self._idle_s = 0.0
        self._seen = 0  # bytes received when the watchdog last looked
        self._quiet = 0  # looks in a row that found no new bytes
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def status(self) -> int:
        return self._resp.status

    def header(self, name: str) -> str | None:
        return self._resp.headers.get(name)

    async def read(self, limit: int) -> bytes:
        """The whole body; a read returns what has arrived so far, so read until the end."""
        content = self._resp.content
        parts: list[bytes] = []
        size = 0
        try:
            while part := await content.read(limit + 1 - size):
                parts.append(part)
                size += len(part)
                if size > limit:
                    raise UpstreamError(f"The upstream answer exceeded {limit} bytes.")
        except TRANSPORT_ERRORS as exc:
            raise translate(exc) from exc
        return b"".join(parts)

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives. Iterate inside `except TRANSPORT_ERRORS` and raise
        `translate(exc)`: no wrapper generator sits on the hot path."""
        return self._resp.content.iter_any()

    def set_idle_timeout(self, seconds: float) -> None:
        """From now on, no data for longer than this (at most a quarter more) is a stall: the
        read waiting for it fails as aiohttp's own read timeout would."""
        self._idle_s = seconds
        self._seen = self._resp.content.total_bytes
        self._quiet = 0
        self._stop_watchdog()
        self._watchdog = asyncio.get_running_loop().call_later(seconds / LOOKS, self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        content = self._resp.content
        if content.is_eof():
            return
        if content.total_bytes != self._seen:
            self._seen, self._quiet = content.total_bytes, 0
        else:
            self._quiet += 1
            if self._quiet >= LOOKS:
                content.set_exception(aiohttp.ServerTimeoutError("The upstream stalled."))
                return
        self._watchdog = asyncio.get_running_loop().call_later(self._idle_s / LOOKS, self._watch)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def finish(self, complete: bool) -> None:
        """Release a connection read to its end; drop one left half-read."""
        if complete:
            self.release()
        else:
            self.close()

    def release(self) -> None:
        """The answer was read to its end: the connection can serve another request."""
        self._stop_watchdog()
        self._resp.release()

    def close(self) -> None:
        """Drop the connection: an answer left half-read must not go back to the pool."""
        self._stop_watchdog()
        self._resp.close()


class UpstreamSocket:
    """Text frames to and from an upstream WebSocket; None from `receive` once it closed."""

    __slots__ = ("_ws",)

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    async def send(self, text: str) -> None:
        await self._ws.send_str(text)

    async def receive(self) -> str | None:
        message = await self._ws.receive()
        return message.data if message.type == aiohttp.WSMsgType.TEXT else None

    async def close(self) -> None:
        await self._ws.close()


class HTTPTransport:
    def __init__(self, *, max_connections: int, connect_timeout: float) -> None:
        self._limit = max_connections
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=connect_timeout, sock_read=None
        )
        self._session: aiohttp.ClientSession | None = None
        self._read_timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._urls: dict[str, URL] = {}  # a provider calls a handful of URLs: parse each once

    def _read_timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=self._timeout.sock_connect, sock_read=seconds
        )
        self._read_timeouts[seconds] = timeout
        return timeout

    def _client(self) -> aiohttp.ClientSession:
        # made on first use, inside the running loop, which aiohttp requires
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300),
                timeout=self._timeout,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                # one session serves every caller: an upstream's cookie must not reach another
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def websocket(self, url: str, headers: dict[str, str]) -> UpstreamSocket:
        """A WebSocket to the upstream (an edge to its core)."""
        try:
            ws = await self._client().ws_connect(url, headers=headers, max_msg_size=1 << 20)
        except TRANSPORT_ERRORS as exc:
            raise translate(exc) from exc
        return UpstreamSocket(ws)

    async def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        read_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send the request; `read_timeout` bounds each wait for data until changed."""
        timeout = self._timeout
        if read_timeout is not None:
            timeout = self._read_timeouts.get(read_timeout) or self._read_timeout(read_timeout)
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = URL(url)
            if len(self._urls) < MAX_CACHED_URLS:
                self._urls[url] = parsed
        try:
            resp = await self._client().request(
                method, parsed, data=body, headers=headers, timeout=timeout
            )
        except TRANSPORT_ERRORS as exc:
            raise translate(exc) from exc
        return UpstreamResponse(resp)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


TRANSPORT_ERRORS = (aiohttp.ClientError, OSError)


def translate(exc: BaseException) -> UpstreamError | UpstreamTimeout:
    """The most specific noroshi error for a failure of the upstream connection."""
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return UpstreamTimeout("The upstream stopped sending data (idle timeout).")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(f"Could not connect to the upstream: {exc.os_error}.")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return UpstreamConnectError("The upstream closed the connection mid-answer.")
    return UpstreamConnectError(f"The upstream connection failed: {_describe(exc)}.")


def _describe(exc: Any) -> str:
    return str(exc) or type(exc).__name__
