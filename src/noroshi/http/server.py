"""noroshi's own HTTP/1.1 server: one asyncio protocol per connection, requests parsed by llhttp
(httptools), each handed to a dispatch callable with its connection as the `Sink`.

It is the measured hot path. A request costs one parse, one `Request` and one task (whose
cancellation is how a client that leaves stops the upstream call); an answer's head is encoded
once and leaves with its first bytes, a stream's end with its last, each streamed piece in one
write framed with HTTP/1.1 chunked encoding. Timeouts are deadlines read by one sweep a tick,
not timers armed per request.

What it owes its clients, and how:

- keep-alive, closed after `keepalive_timeout_s` idle; pipelined requests answered in order,
  the socket not read while one waits its turn;
- bodies read on demand (`Request.body()`) within `max_body_bytes` (413); reading pauses while
  more than `BODY_HOLD` bytes wait for a handler that has not asked yet; `Expect: 100-continue`
  answered when the handler asks;
- a head within `header_timeout_s` of its first byte (slowloris), within `MAX_URL_BYTES` (414)
  and `MAX_HEADERS` / `MAX_HEAD_BYTES` (431); a malformed one gets 400 and the connection ends;
- writes that wait while the socket's buffer is past its high-water mark, so a slow reader stops
  the relay reading its upstream; a client that reads nothing for `send_timeout_s` is dropped;
- past `max_connections`, a new connection's first request gets 503 and the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import unquote

import httptools

from noroshi.errors import (
    BadRequest,
    HeaderFieldsTooLarge,
    NoroshiError,
    PayloadTooLarge,
    Unavailable,
    URITooLong,
)
from noroshi.http.request import Request
from noroshi.http.response import ClientGone, Response, Sink, StreamWriter
from noroshi.types import Headers

if TYPE_CHECKING:
    from noroshi.http.upgrade import Session
    from noroshi.http.websocket import WebSocket

__all__ = ["Dispatch", "HttpConnection", "Limits", "Server", "WebSocketDispatch"]

log = logging.getLogger("noroshi.http")

Dispatch = Callable[[Request, Sink], Awaitable[None]]
WebSocketDispatch = Callable[[Request, "WebSocket"], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]

MAX_URL_BYTES = 8 * 1024
MAX_HEADERS = 100
MAX_HEAD_BYTES = 32 * 1024
BODY_HOLD = 64 * 1024  # body bytes taken from the socket before its handler asks for them
BACKLOG = 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
_NO_BODY = (204, 304)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may take; `[server]` in the config sets them."""

    max_body_bytes: int = 1024 * 1024
    max_connections: int = 10_000
    keepalive_timeout_s: float = 75.0
    header_timeout_s: float = 10.0
    send_timeout_s: float = 60.0


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_STATUS = {status.value: _status_line(status.value) for status in HTTPStatus}


def _date() -> bytes:
    return f"date: {formatdate(usegmt=True)}\r\n".encode()


class _Exchange:
    """One request on a connection: what its head said, and its body as it arrives."""

    __slots__ = (
        "chunks",
        "complete",
        "conn",
        "continued",
        "failure",
        "head_only",
        "http10",
        "keep_alive",
        "request",
        "size",
        "target",
        "upgrade",
        "waiter",
    )

    request: Request

    def __init__(self, conn: HttpConnection, keep_alive: bool) -> None:
        self.conn = conn
        self.keep_alive = keep_alive  # what the client asked for; the answer may still close
        self.http10 = False
        self.head_only = False
        self.continued = True  # False while an `Expect: 100-continue` waits for its answer
        self.upgrade = False  # a WebSocket handshake
        self.target = b""  # the raw request target, kept for a handshake only
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False  # the whole body arrived
        self.failure: NoroshiError | None = None  # what reading the body must raise
        self.waiter: asyncio.Future[None] | None = None

    async def read(self) -> bytes:
        """The whole body, once it arrived; 413 past the limit, without reading it."""
        conn = self.conn
        limit = conn.server.limits.max_body_bytes
        length = self.request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
        if not self.continued and conn.state == 0:
            self.continued = True
            conn.transport.write(CONTINUE)
        while not self.complete and self.failure is None:
            if conn.lost:
                raise asyncio.CancelledError  # the task is being cancelled as well
            self.waiter = conn.loop.create_future()
            conn.deadline = time.monotonic() + conn.server.limits.header_timeout_s
            conn.flow()
            try:
                await self.waiter
            finally:
                self.waiter = None
                conn.deadline = 0.0
        if self.failure is not None:
            raise self.failure
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _Discard:
    """What the socket's bytes go to once nothing more may be read from them as HTTP."""

    def feed(self, data: bytes) -> None:
        pass

    def lost(self) -> None:
        pass

    def going_away(self) -> None:
        pass


class _DiscardWriter:
    """The writer of a streamed answer to HEAD: its head is sent, its body is not."""

    async def send_bytes(self, data: bytes) -> None:
        pass

    async def end(self, data: bytes) -> None:
        pass


_DISCARD = _Discard()
_HEAD_WRITER = _DiscardWriter()


class HttpConnection(asyncio.Protocol):
    """One client's connection: its parser, the requests it sent, and the `Sink` (and stream
    writer) of the one being answered, which it is itself: answers leave in order, one at a
    time."""

    __slots__ = (
        "active",
        "chunked",
        "client",
        "deadline",
        "draining",
        "head_bytes",
        "head_size",
        "header_count",
        "headers",
        "idle",
        "keep",
        "loop",
        "lost",
        "parser",
        "parsing",
        "pending",
        "queue",
        "reading",
        "reading_head",
        "refused",
        "server",
        "stalled",
        "state",
        "task",
        "transport",
        "upgraded",
        "url",
        "writable",
        "writes",
    )

    gone: tuple[type[BaseException], ...] = (ClientGone,)

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set on connect
        self.client = ""
        self.lost = False
        self.refused = False  # over the connection cap: its first request gets 503
        self.upgraded: Session | _Discard | None = None  # takes the bytes once HTTP is over
        # the head being read
        self.url = b""
        self.headers: dict[str, str] = {}
        self.head_size = 0
        self.header_count = 0
        self.head_bytes = 0  # bytes read while a head is incomplete, whatever llhttp holds
        self.reading_head = True
        self.parsing: _Exchange | None = None  # the request whose body is arriving
        # the requests: one answered, the others waiting their turn
        self.active: _Exchange | None = None
        self.task: asyncio.Task[None] | None = None
        self.queue: deque[_Exchange | NoroshiError] = deque()
        # the answer: 0 nothing sent, 1 streaming, 2 sent
        self.state = 0
        self.pending = b""  # a stream's head, held to leave with its first bytes
        self.chunked = False
        self.keep = True
        # flow and time
        self.reading = True
        self.writable = True
        self.writes: asyncio.Future[None] | None = None  # resolved when writing may go on
        self.idle = False  # between requests, a keep-alive wait
        self.draining = False
        self.deadline = 0.0  # a head (or a body being read) must arrive by then; 0: none
        self.stalled = 0.0  # the client must read again by then; 0: it does

    # --- the transport's events ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        if len(server.connections) >= server.limits.max_connections:
            self.refused = True
        server.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client = f"{peer[0]}:{peer[1]}"
        self.deadline = time.monotonic() + server.limits.header_timeout_s

    def data_received(self, data: bytes) -> None:
        if self.upgraded is not None:
            self.upgraded.feed(data)
            return
        if self.reading_head:
            if self.idle:
                self.idle = False
                self.deadline = time.monotonic() + self.server.limits.header_timeout_s
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._switch(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, NoroshiError):
                self._refuse(cause)
            else:
                if cause is not None:
                    log.error("failed to read a request", exc_info=cause)
                self._refuse(BadRequest(f"The request is not valid HTTP/1.1: {exc}."))
            return
        if self.reading_head and self.head_bytes > MAX_HEAD_BYTES:
            self._refuse(HeaderFieldsTooLarge(f"The request head exceeds {MAX_HEAD_BYTES} bytes."))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.forget(self)
        if self.task is not None and self.state != 2 and self.upgraded is None:
            self.task.cancel()  # the client left: stop the work done for it
        if self.active is not None:
            self.active.wake()
        if self.writes is not None and not self.writes.done():
            self.writes.set_result(None)
        if self.upgraded is not None:
            self.upgraded.lost()
        self.queue.clear()

    def pause_writing(self) -> None:
        self.writable = False
        self.stalled = time.monotonic() + self.server.limits.send_timeout_s

    def resume_writing(self) -> None:
        self.writable = True
        self.stalled = 0.0
        if self.writes is not None and not self.writes.done():
            self.writes.set_result(None)

    async def drain(self) -> None:
        """Wait until the client has read enough of what was written; `ClientGone` if it left."""
        if not self.writable and not self.lost:
            if self.writes is None or self.writes.done():
                self.writes = self.loop.create_future()
            await self.writes
        if self.lost:
            raise ClientGone

    # --- llhttp's callbacks ---

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_URL_BYTES:
            raise URITooLong(f"The request target exceeds {MAX_URL_BYTES} bytes.")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value)
        self.header_count += 1
        if self.header_count > MAX_HEADERS or self.head_size > MAX_HEAD_BYTES:
            raise HeaderFieldsTooLarge(
                f"The request has more than {MAX_HEADERS} headers or {MAX_HEAD_BYTES} bytes "
                "of them."
            )
        key = name.decode("latin-1").lower()
        headers = self.headers
        if key in headers:
            headers[key] = f"{headers[key]}, {value.decode('latin-1')}"
        else:
            headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        parser = self.parser
        url, self.url = self.url, b""
        headers, self.headers = self.headers, {}
        self.reading_head = False
        self.head_bytes = self.head_size = self.header_count = 0
        self.deadline = 0.0
        if self.refused:
            raise Unavailable(
                "The server has too many open connections; try again.", code="too_many_connections"
            )
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
        else:  # absolute-form, or `*`
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise BadRequest("The request target is not a valid URL.") from None
            path, query = parsed.path or b"/", parsed.query or b""
        text = path.decode("latin-1")
        if "%" in text:
            text = unquote(text)
        ex = _Exchange(self, parser.should_keep_alive())
        method = parser.get_method().decode("latin-1")
        request = ex.request = Request(
            method, text, query.decode("latin-1"), headers, ex.read, self.client
        )
        ex.head_only = request.method == "HEAD"
        if parser.get_http_version() == "1.0":
            ex.http10 = True
        if "expect" in headers and headers["expect"].lower() == "100-continue":
            ex.continued = False
        if parser.should_upgrade():
            ex.keep_alive = False  # whatever it becomes, no other request follows on HTTP
            if headers.get("upgrade", "").lower() == "websocket":
                ex.upgrade = self.server.websocket is not None
                ex.target = url
        self.parsing = ex
        if self.active is None:
            self._start(ex)
        else:
            self.queue.append(ex)
            self.flow()

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.size += len(body)
        if ex.failure is not None:
            return
        if ex.size > (limit := self.server.limits.max_body_bytes):
            ex.failure = PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
            ex.chunks.clear()
            ex.wake()
            self.flow()
            return
        ex.chunks.append(body)
        if ex.waiter is not None:
            self.deadline = time.monotonic() + self.server.limits.header_timeout_s
        elif ex.size > BODY_HOLD and self.reading:
            self.flow()

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is not None:
            self.parsing = None
            ex.complete = True
            ex.wake()
        self.reading_head = True

    # --- the requests, in turn ---

    def flow(self) -> None:
        """Read the socket unless a request waits its turn or a body waits for its handler."""
        if self.upgraded is not None:
            return  # the session, or nothing, reads from now on
        ex = self.parsing
        hold = bool(self.queue) or (
            ex is not None
            and (ex.failure is not None or (ex.waiter is None and ex.size > BODY_HOLD))
        )
        if hold == self.reading and not self.lost:
            self.reading = not hold
            if hold:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _start(self, ex: _Exchange) -> None:
        self.active = ex
        self.state = 0
        self.chunked = False
        run = self._upgrade(ex) if ex.upgrade else self._dispatch(ex)
        self.task = ex.request.task = self.loop.create_task(run)

    async def _dispatch(self, ex: _Exchange) -> None:
        try:
            await self.server.dispatch(ex.request, self)
        except asyncio.CancelledError:
            if not self.lost:
                raise
        except Exception:  # the dispatcher answers every error: this one is the transport's
            log.exception("failed to answer %s %s", ex.request.method, ex.request.path)
        finally:
            self._done(ex)

    async def _upgrade(self, ex: _Exchange) -> None:
        from noroshi.http.upgrade import Session
        from noroshi.http.websocket import WebSocket

        session = self.upgraded
        assert isinstance(session, Session) and self.server.websocket is not None
        try:
            await self.server.websocket(ex.request, WebSocket(session))
        except Exception:
            log.exception("failed to serve the WebSocket %s", ex.request.path)
        finally:
            self._done(ex)

    def _done(self, ex: _Exchange) -> None:
        """The answer is over: end it, then serve the next request or close."""
        self.task = None
        if self.lost:
            return
        if self.state == 0 and not (ex.upgrade and self.upgraded is not None):
            # the dispatcher always answers; if it could not, say so rather than hang
            self._write_plain(Response.error(NoroshiError("The gateway failed to answer.")), ex)
        elif self.state == 1:  # a stream that did not end itself: cut by an error, or HEAD
            self.state = 2
            self._flush(LAST_CHUNK if self.chunked else b"")
        self.active = None
        if self.keep and self.queue:
            following = self.queue.popleft()
            if isinstance(following, NoroshiError):
                self._answer_and_close(following)
                return
            self._start(following)
        elif not self.keep or self.upgraded is not None:
            self.transport.close()
            return
        elif self.head_bytes:  # the next head has begun: it gets the head's time, not more
            self.deadline = time.monotonic() + self.server.limits.header_timeout_s
        else:
            self.idle = True
            self.deadline = time.monotonic() + self.server.limits.keepalive_timeout_s
        self.flow()

    def _switch(self, rest: bytes) -> None:
        """llhttp stopped after an `Upgrade` request, the last one read: a WebSocket gets a
        session that takes the bytes from now on; no other protocol is spoken here, so then
        the bytes are dropped and the connection ends after the answer."""
        ex = self.queue[-1] if self.queue else self.active
        if isinstance(ex, _Exchange) and ex.upgrade:
            from noroshi.http.upgrade import Session

            self.upgraded = Session(self, ex.request, ex.target, rest)
        else:
            self.upgraded = _DISCARD

    def _refuse(self, error: NoroshiError) -> None:
        """Bytes that cannot be read as a request: nothing after them on this connection can be
        trusted. A body's fault is its request's (reading it raises the error); a head's is
        answered in its turn; then the connection closes."""
        self.upgraded = _DISCARD
        if self.reading:
            self.reading = False
            self.transport.pause_reading()
        ex, self.parsing = self.parsing, None
        if ex is not None:
            ex.failure = error
            ex.wake()
        elif self.active is None:
            self._answer_and_close(error)
        else:
            self.queue.append(error)

    def _answer_and_close(self, error: NoroshiError) -> None:
        self.keep = False
        self._write_plain(Response.error(error), None)
        self.transport.close()

    # --- the Sink: the answer of the active request ---

    async def send(self, status: int, headers: Headers, body: bytes) -> None:
        if self.lost:
            raise ClientGone
        ex = self.active
        assert ex is not None and self.state == 0
        self.keep = ex.keep_alive and ex.complete and not self.draining
        if status in _NO_BODY:
            framing, body = b"", b""
        else:
            framing = b"content-length: %d\r\n" % len(body)
            if ex.head_only:
                body = b""
        self.transport.write(self._head(status, headers, framing, ex.http10) + body)
        self.state = 2
        if not self.writable:
            await self.drain()

    async def start(self, status: int, headers: Headers) -> StreamWriter:
        if self.lost:
            raise ClientGone
        ex = self.active
        assert ex is not None and self.state == 0
        # HTTP/1.0 has no chunks: the body ends with the connection
        self.keep = ex.keep_alive and ex.complete and not self.draining and not ex.http10
        self.chunked = not ex.http10 and not ex.head_only
        framing = b"" if ex.http10 else b"transfer-encoding: chunked\r\n"
        # held for the first bytes of the body, which mostly follow at once: one write for both;
        # if they do not, it leaves on the loop's next turn
        self.pending = self._head(status, headers, framing, ex.http10)
        self.state = 1
        self.loop.call_soon(self._flush, b"")
        return _HEAD_WRITER if ex.head_only else self

    async def send_bytes(self, data: bytes) -> None:
        if self.state != 1 or self.lost:
            raise ClientGone  # gone, or the answer has ended: nothing more may be written
        if data:
            if self.chunked:
                data = b"%x\r\n%s\r\n" % (len(data), data)
            if self.pending:
                data, self.pending = self.pending + data, b""
            self.transport.write(data)
        if not self.writable:
            await self.drain()

    async def end(self, data: bytes) -> None:
        if self.state != 1 or self.lost:
            raise ClientGone
        self.state = 2
        if self.chunked:
            data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data) if data else LAST_CHUNK
        self._flush(data)
        if not self.writable:
            await self.drain()

    def _flush(self, data: bytes) -> None:
        """Write `data` after a head still held, if any."""
        if self.pending:
            data, self.pending = self.pending + data, b""
        if data and not self.lost:
            self.transport.write(data)

    def _head(self, status: int, headers: Headers, framing: bytes, http10: bool) -> bytes:
        line = _STATUS.get(status) or _status_line(status)
        text = "\r\n".join(map(": ".join, headers))
        breaks = len(headers) - 1 if headers else 0
        if text.count("\n") != breaks or text.count("\r") != breaks:
            raise ValueError("a response header holds a line break")
        if not self.keep:
            framing += b"connection: close\r\n"
        elif http10:
            framing += b"connection: keep-alive\r\n"
        end = b"\r\n" if headers else b""
        return b"".join((line, text.encode("latin-1"), end, framing, self.server.date, b"\r\n"))

    def _write_plain(self, response: Response, ex: _Exchange | None) -> None:
        """An answer the server makes itself, written at once."""
        if ex is not None:
            self.keep = ex.keep_alive and ex.complete and not self.draining
        body = response.body
        framing = b"content-length: %d\r\n" % len(body)
        self.transport.write(self._head(response.status, response.headers, framing, False) + body)
        self.state = 2

    # --- the server's sweep and drain ---

    def expire(self, now: float) -> None:
        """Close a connection past one of its deadlines: a head or body too slow, a
        keep-alive wait over, or a client that stopped reading."""
        if (self.deadline and now > self.deadline) or (self.stalled and now > self.stalled):
            if self.stalled or self.transport.get_write_buffer_size():
                self.transport.abort()
            else:
                self.transport.close()

    def close_when_idle(self) -> None:
        """The server drains: a connection between requests closes now, a busy one after its
        answer, which says `connection: close`."""
        self.draining = True
        if self.upgraded is not None:
            return  # a WebSocket runs on until the drain's end
        if self.active is None:
            self.transport.close()

    def cut(self) -> None:
        """The drain's time is over."""
        if self.upgraded is not None:
            self.upgraded.going_away()
        self.transport.abort()


async def _no_body() -> bytes:  # replaced by the exchange's reader before anyone can call it
    return b""


class Server:
    """Serves `dispatch` (and `websocket`, for upgrades) on listening sockets.

    `startup` runs before the first connection is accepted; `drain` when `stop` begins, at the
    moment the sockets stop accepting (the app then starts its own drain timer).
    """

    def __init__(
        self,
        dispatch: Dispatch,
        *,
        websocket: WebSocketDispatch | None = None,
        limits: Limits | None = None,
        startup: Hook | None = None,
        drain: Callable[[], None] | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.websocket = websocket
        self.limits = limits or Limits()
        self.connections: set[HttpConnection] = set()
        self.date = _date()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # on start
        self._startup = startup
        self._drain = drain
        self._listeners: list[asyncio.Server] = []
        self._sockets: list[socket.socket] = []
        self._ticker: asyncio.TimerHandle | None = None
        self._empty: asyncio.Event | None = None
        limits_s = (
            self.limits.header_timeout_s,
            self.limits.keepalive_timeout_s,
            self.limits.send_timeout_s,
        )
        self._tick_s = max(0.05, min(1.0, *(t / 4 for t in limits_s)))

    @property
    def name(self) -> str:
        """What `/health` reports as the server."""
        running = self.loop or asyncio.get_running_loop()
        loop = "uvloop" if type(running).__module__.startswith("uvloop") else "asyncio"
        return f"noroshi http/1.1 ({loop})"

    async def start(self, sockets: Sequence[socket.socket]) -> None:
        """Run the start-up hook, then accept connections on `sockets` (bound and listening)."""
        self.loop = asyncio.get_running_loop()
        if self._startup is not None:
            await self._startup()
        self._sockets = list(sockets)
        for sock in sockets:
            listener = await self.loop.create_server(
                lambda: HttpConnection(self), sock=sock, backlog=BACKLOG
            )
            self._listeners.append(listener)
        self._ticker = self.loop.call_later(self._tick_s, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        self.date = _date()
        for conn in [c for c in self.connections if c.deadline or c.stalled]:
            conn.expire(now)
        self._ticker = self.loop.call_later(self._tick_s, self._tick)

    def forget(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if self._empty is not None and not self.connections:
            self._empty.set()

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let open requests finish for up to `grace_s` seconds, then cut the
        connections still open and wait for their tasks to end."""
        for listener in self._listeners:
            listener.close()
        for sock in self._sockets:
            sock.close()
        if self._drain is not None:
            self._drain()
        self._empty = asyncio.Event()
        for conn in list(self.connections):
            conn.close_when_idle()
        if self.connections:
            try:
                await asyncio.wait_for(self._empty.wait(), grace_s)
            except TimeoutError:
                pass
        tasks = [c.task for c in self.connections if c.task is not None]
        for conn in list(self.connections):
            conn.cut()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        if self._ticker is not None:
            self._ticker.cancel()
