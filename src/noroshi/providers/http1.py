"""A lean HTTP/1.1 client for upstream requests: keep-alive connections pooled per origin,
responses parsed by llhttp (httptools), bodies handed over as they arrive.

It is on the measured hot path: every relayed request makes one call through it. In the
bench's profile a general client (aiohttp) took about 120 µs of the event loop per streamed
request, much of it in layers an upstream call does not use (cookies, redirects, tracing,
multidict headers, timers); with this one, noroshi's CPU per request fell by about a third.

A body is buffered up to `HIGH_WATER` bytes, past which the socket stops being read until the
reader catches up. A connection goes back to its pool only once its answer was read to the end
and the upstream allows keep-alive; an answer abandoned half-way closes its connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import httptools

from noroshi.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

__all__ = ["Client", "Exchange"]

HIGH_WATER = 256 * 1024  # bytes buffered before the socket is paused
KEEPALIVE_S = 15.0  # an idle connection older than this is closed rather than reused
LINGER_S = 0.5  # how long a released answer may take to reach its HTTP end, for reuse
LOOKS = 4  # how often, per idle timeout, the stall watchdog looks for new bytes
MAX_CACHED_URLS = 1024  # an edge's URLs carry session ids: past this, split them every time
MAX_HEAD_BYTES = 64 * 1024
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class Exchange:
    """One request and its answer: the connection's parser hands it the answer's parts, and
    the caller reads them as they come."""

    __slots__ = (
        "_body",
        "_buffered",
        "_decoder",
        "_done",
        "_error",
        "_head",
        "_head_size",
        "_headers",
        "_idle_s",
        "_interim",
        "_lingering",
        "_paused",
        "_quiet",
        "_raw_headers",
        "_seen",
        "_timer",
        "_waiter",
        "_watchdog",
        "conn",
        "keep_alive",
        "parser",
        "read_timeout",
        "received",
        "started",
        "status",
    )

    def __init__(self, conn: Connection, read_timeout: float | None) -> None:
        self.conn = conn
        # a parser of its own, whose callbacks are this exchange's methods: no hop through
        # the connection for each part of the body
        self.parser = httptools.HttpResponseParser(self)
        self.read_timeout = read_timeout  # bounds each wait for data, when set
        self.status = 0
        self.keep_alive = False  # the upstream allows another request on the connection
        self.received = 0  # body bytes so far
        self.started = False  # any byte of the answer arrived
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._headers: dict[str, str] | None = None
        self._head: asyncio.Future[None] | None = None
        self._body: list[bytes] = []
        self._buffered = 0  # bytes in `_body`
        self._decoder: Any = None
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._paused = False
        self._interim = False  # reading a 1xx answer, which the real one follows
        self._lingering = False  # released before its HTTP end: reused if that comes soon
        self._timer: asyncio.TimerHandle | None = None
        self._idle_s = 0.0
        self._seen = 0
        self._quiet = 0
        self._watchdog: asyncio.TimerHandle | None = None

    # --- the answer's parts, from its parser ---

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEAD_BYTES:
            raise UpstreamProtocolError("The upstream answer's headers are too large.")
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser  # keep-alive is known only until the answer's end resets it
        status, keep_alive = parser.get_status_code(), parser.should_keep_alive()
        if status < 200:  # 103 Early Hints and the like: not the answer yet
            self._interim = True
            self._raw_headers.clear()
            return
        self.status = status
        self.keep_alive = keep_alive
        encoding = self.header("content-encoding")
        if encoding and encoding != "identity":
            wbits = _DECODERS.get(encoding.lower())
            if wbits is None:
                raise UpstreamProtocolError(f"The upstream sent an unknown encoding: {encoding}.")
            self._decoder = zlib.decompressobj(wbits)
        _wake(self._head)

    def on_body(self, body: bytes) -> None:
        """A part of the body. Upstreams send a stream as one HTTP chunk per event, so this
        runs for every token of every stream: the common case is a few operations."""
        size = len(body)
        self.received += size
        if self._decoder is not None:
            body = self._decoder.decompress(body)
            size = len(body)
            if not size:
                return
        if self._lingering:  # more than the caller wanted: the connection's state is unknown
            self._give_up()
            return
        self._body.append(body)
        self._buffered += size
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self.conn.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._decoder is not None and (rest := self._decoder.flush()):
            self._body.append(rest)
        self._done = True
        _wake(self._waiter)
        if self._lingering:
            self._lingering = False
            self.release()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done:
            return
        if self.status and self._until_close():
            self.on_message_complete()  # an answer without a length ends with its connection
            return
        self._fail(UpstreamConnectError("The upstream closed the connection mid-answer."))

    def _until_close(self) -> bool:
        """Whether the answer (a final one: `status` is set from 200 on) has no length."""
        return (
            self.header("content-length") is None
            and self.header("transfer-encoding") is None
            and self.status not in (204, 304)
        )

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self._done:
            # raised by the reader once woken, not set on its future: a future holding the
            # error would make a cycle with the frames of its traceback
            self._error = exc
            _wake(self._head)
            _wake(self._waiter)
        if self._lingering:
            self._give_up()
        elif self.conn.exchange is self:
            self.conn.abort()

    # --- the caller's side ---

    async def head(self) -> None:
        if not self.status:
            self._raise()
            self._head = self.conn.loop.create_future()
            await self._wait(self._head)
        self._raise()

    async def _wait(self, future: asyncio.Future[None]) -> None:
        if self.read_timeout is None:
            await future
            return
        self._timer = self.conn.loop.call_later(self.read_timeout, self._timed_out)
        try:
            await future
        finally:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._fail(UpstreamTimeout("The upstream stopped sending data."))

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def header(self, name: str) -> str | None:
        headers = self._headers
        if headers is None:
            headers = {}
            for key, value in self._raw_headers:
                headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
            if self.status:
                self._headers = headers
        return headers.get(name)

    def take(self) -> bytes:
        body = self._body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            if not self.conn.lost:
                self.conn.transport.resume_reading()
        return data

    def __aiter__(self) -> Exchange:
        return self

    async def __anext__(self) -> bytes:
        """What arrived since the last step, as one piece; the end stops the iteration."""
        while not self._body:
            if self._done:
                raise StopAsyncIteration
            self._raise()
            self._waiter = self.conn.loop.create_future()
            try:
                await self._wait(self._waiter)
            finally:
                self._waiter = None
        return self.take()

    async def read(self, limit: int) -> bytes:
        """The whole body, refused past `limit` bytes."""
        parts: list[bytes] = []
        size = 0
        async for part in self:
            parts.append(part)
            size += len(part)
            if size > limit:
                raise UpstreamError(f"The upstream answer exceeded {limit} bytes.")
        return b"".join(parts)

    def chunks(self) -> Exchange:
        """The body as it arrives, each step all that arrived since the last."""
        return self

    def finish(self, complete: bool) -> None:
        """Release a connection read to its end; drop one left half-read."""
        if complete:
            self.release()
        else:
            self.close()

    def release(self) -> None:
        """Done with the answer: its connection serves another request if the answer was read
        to its end and the upstream keeps connections alive, else it is closed."""
        if self.conn.exchange is not self or self._lingering:
            return  # already let go
        if not self._done and self._error is None and not self._body and self.keep_alive:
            # the caller saw its answer end (an event stream's terminator) before HTTP's end,
            # which often comes in the next read: wait a moment for it rather than reconnect
            self.unwatch()
            self._lingering = True
            self._timer = self.conn.loop.call_later(LINGER_S, self._give_up)
            return
        reusable = self._done and not self._body and self.keep_alive
        self._let_go()
        if reusable:
            self.conn.pool.release(self.conn)
        else:
            self.conn.pool.discard(self.conn)

    def close(self) -> None:
        """Drop the connection: an answer left half-read must not serve another request."""
        if self.conn.exchange is self:
            self._let_go()
            self.conn.pool.discard(self.conn)

    def _give_up(self) -> None:
        self._lingering = False
        self.close()

    def _let_go(self) -> None:
        """Break the cycle of a raised error, whose traceback holds the frames that held the
        exchange. Freed by reference counting, not by a later collection, the error lets go
        of those frames at once: a server ends a response stream only once nothing refers to
        its writer any more."""
        self.unwatch()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._head = None
        if not self._done:
            self._error = UpstreamConnectError("The upstream answer was closed unread.")

    def set_idle_timeout(self, seconds: float) -> None:
        """From now on, no data for longer than `seconds` (at most a quarter more) fails the
        answer as a stall. Checked a few times per period by counting bytes, not by a timer
        re-armed for every TCP segment."""
        self._idle_s = seconds
        self._seen = self.received
        self._quiet = 0
        self.unwatch()
        self._watchdog = self.conn.loop.call_later(seconds / LOOKS, self._look)

    def _look(self) -> None:
        self._watchdog = None
        if self._done or self._error is not None:
            return
        if self.received != self._seen or self._paused:
            # a socket we stopped reading (its reader is behind: a slow client) is not a stall
            self._seen, self._quiet = self.received, 0
        else:
            self._quiet += 1
            if self._quiet >= LOOKS:
                self._fail(UpstreamTimeout("The upstream stopped sending data (idle timeout)."))
                return
        self._watchdog = self.conn.loop.call_later(self._idle_s / LOOKS, self._look)

    def unwatch(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class Connection(asyncio.Protocol):
    """A socket to one origin, which carries one exchange after another; what it reads goes
    to the parser of the exchange it carries."""

    __slots__ = ("exchange", "idle_since", "loop", "lost", "pool", "transport")

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set on connect
        self.exchange: Exchange | None = None
        self.lost = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self.abort()  # bytes nobody asked for: the connection can no longer be trusted
            return
        exchange.started = True
        try:
            exchange.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            exchange._fail(UpstreamProtocolError("The upstream switched protocols unasked."))
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, UpstreamError) else None
            message = f"The upstream sent malformed HTTP: {exc}."
            exchange._fail(cause or UpstreamProtocolError(message))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.lost(self)
        if self.exchange is not None:
            self.exchange.connection_lost(exc)

    def abort(self) -> None:
        if not self.lost:
            self.transport.abort()


class Pool:
    """Keep-alive connections to one origin, at most `limit` open (0: no limit); a caller past
    the limit waits for one to come back."""

    def __init__(
        self, host: str, port: int, tls: ssl.SSLContext | None, limit: int, connect_s: float
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.limit = limit
        self.connect_s = connect_s
        self.idle: list[Connection] = []
        self.open = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> tuple[Connection, bool]:
        """A connection and whether it was reused (a reused one may have been closed by the
        upstream just now)."""
        while True:
            now = time.monotonic()
            while self.idle:
                conn = self.idle.pop()
                if not conn.lost and now - conn.idle_since < KEEPALIVE_S:
                    return conn, True
                self.discard(conn)
            if not self.limit or self.open < self.limit:
                return await self._connect(), False
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)

    async def _connect(self) -> Connection:
        self.open += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_s):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, loop),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls else None,
                )
        except TimeoutError:
            self._closed()
            raise UpstreamConnectError(
                f"Could not connect to the upstream within {self.connect_s:g} s."
            ) from None
        except (OSError, ssl.SSLError) as exc:
            self._closed()
            raise UpstreamConnectError(f"Could not connect to the upstream: {exc}.") from exc
        except BaseException:
            self._closed()
            raise
        return conn

    def release(self, conn: Connection) -> None:
        conn.exchange = None
        if conn.lost:
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        self._wake_one()

    def discard(self, conn: Connection) -> None:
        conn.exchange = None
        conn.abort()

    def lost(self, conn: Connection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        self._closed()

    def _closed(self) -> None:
        self.open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for conn in list(self.idle):
            conn.abort()
        self.idle.clear()


class _Target:
    __slots__ = ("host_header", "key", "path", "tls")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        port = parts.port or (443 if self.tls else 80)
        self.key = (parts.hostname, port, self.tls)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        default = port == (443 if self.tls else 80)
        self.host_header = host if default else f"{host}:{port}"
        path = parts.path or "/"
        self.path = f"{path}?{parts.query}" if parts.query else path


class Client:
    """Pools by origin; `send` writes a request and returns once its status and headers
    arrived, the body still to be read from the `Exchange`."""

    def __init__(self, *, max_connections: int, connect_timeout: float) -> None:
        self.limit = max_connections
        self.connect_s = connect_timeout
        self._pools: dict[tuple[str, int, bool], Pool] = {}
        self._targets: dict[str, _Target] = {}
        self._tls: ssl.SSLContext | None = None

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = _Target(url)
            if len(self._targets) < MAX_CACHED_URLS:
                self._targets[url] = target
        return target

    def _pool(self, target: _Target) -> Pool:
        pool = self._pools.get(target.key)
        if pool is None:
            if target.tls and self._tls is None:
                self._tls = ssl.create_default_context()
            host, port, tls = target.key
            pool = Pool(host, port, self._tls if tls else None, self.limit, self.connect_s)
            self._pools[target.key] = pool
        return pool

    async def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        read_timeout: float | None = None,
    ) -> Exchange:
        target = self._target(url)
        head = _encode_head(method, target, headers, body)
        pool = self._pool(target)
        while True:
            conn, reused = await pool.acquire()
            exchange = Exchange(conn, read_timeout)
            conn.exchange = exchange
            conn.transport.write(head + body if body else head)
            try:
                await exchange.head()
            except UpstreamConnectError:
                if reused and not exchange.started:
                    continue  # the upstream had closed the idle connection: it saw nothing
                raise
            except BaseException:
                pool.discard(conn)
                raise
            return exchange

    async def close(self) -> None:
        """Close the idle connections; those in use close as their answers end."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _encode_head(
    method: str, target: _Target, headers: dict[str, str], body: bytes | None
) -> bytes:
    lines = [f"{method} {target.path} HTTP/1.1\r\nhost: {target.host_header}\r\n"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(body) if body else 0}\r\n")
    lines.append("\r\n")
    head = "".join(lines)
    breaks = len(lines) + 1  # the request line and host share the first piece
    if head.count("\n") != breaks or head.count("\r") != breaks:
        raise ValueError("a request header holds a line break")
    return head.encode("latin-1")
