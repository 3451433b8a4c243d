"""noroshi's own HTTP/1.1 server at the protocol's edges, on a real listening socket: raw bytes
where clients would not send them, a small dispatch callable where the app is not the point,
the whole gateway where it is."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from noroshi.app import App
from noroshi.errors import NoroshiError
from noroshi.http.request import Request
from noroshi.http.response import Response, Sink, StreamResponse
from noroshi.http.server import (
    BODY_HOLD,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_URL_BYTES,
    HttpConnection,
    Limits,
    Server,
)
from noroshi.providers import http1
from noroshi.serve import listen, make_server
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI

Start = Callable[..., Awaitable[tuple[Server, int]]]


class Raw:
    """A client on a plain socket, for what HTTP clients will not send or will not show."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, rcvbuf: int = 0) -> Raw:
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(self) -> tuple[int, dict[str, str]]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        line, *fields = raw.decode("latin-1").split("\r\n")[:-2]
        headers: dict[str, str] = {}
        for field in fields:
            name, _, value = field.partition(":")
            headers[name.lower()] = value.strip()
        return int(line.split()[1]), headers

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """One whole answer, framed however the server framed it."""
        status, headers = await self.head()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            body = await self.chunks()
        else:
            body = await asyncio.wait_for(self.reader.read(), 10)  # to the end of the connection
        return status, headers, body

    async def chunks(self) -> bytes:
        parts = []
        while size := int(await self.reader.readuntil(b"\r\n"), 16):
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)
        assert await self.reader.readexactly(2) == b"\r\n"
        return b"".join(parts)

    async def closed(self) -> bool:
        """Whether the server ends the connection, reading whatever is left."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), 10):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.writer.close()


class Dispatch:
    """`/echo` answers the body; `/stream?n` streams n chunks; `/hang` waits until cancelled;
    `/bad-header` answers a header with a line break; anything else, its method and path."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()
        self.produced = 0  # chunks `/flood` made

    async def __call__(self, request: Request, sink: Sink) -> None:
        try:
            await self.answer(request, sink)
        except NoroshiError as exc:  # as the app's dispatch does
            response = Response.error(exc)
            await sink.send(response.status, response.headers, response.body)

    async def answer(self, request: Request, sink: Sink) -> None:
        if request.path == "/echo":
            body = await request.body()
            await sink.send(200, [("content-type", "text/plain")], body)
        elif request.path == "/stream":
            writer = await sink.start(200, [("content-type", "text/plain")])
            for i in range(int(request.query or 3)):
                await writer.send_bytes(b"chunk %d;" % i)
        elif request.path == "/flood":
            writer = await sink.start(200, [("content-type", "text/plain")])
            self.started.set()
            try:
                while True:
                    await writer.send_bytes(b"x" * 16384)
                    self.produced += 1
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        elif request.path == "/hang":
            self.started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        elif request.path == "/bad-header":
            await sink.send(200, [("x-evil", "a\r\nset-cookie: b")], b"")
        else:
            text = f"{request.method} {request.path} {request.query}".encode()
            await sink.send(200, [("x-id", request.headers.get("x-id", ""))], text)


@pytest.fixture
def dispatch() -> Dispatch:
    return Dispatch()


@pytest.fixture
async def start(dispatch: Dispatch) -> AsyncIterator[Start]:
    servers: list[Server] = []

    async def run(**limits: Any) -> tuple[Server, int]:
        sockets = listen("127.0.0.1", 0)
        server = Server(dispatch, limits=Limits(**limits))
        await server.start(sockets)
        servers.append(server)
        return server, sockets[0].getsockname()[1]

    yield run
    for server in servers:
        await server.stop(1.0)


async def test_pipelined_requests_are_answered_in_order(start: Start) -> None:
    _, port = await start()
    raw = await Raw.open(port)
    await raw.send(
        b"GET /stream?2 HTTP/1.1\r\nhost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello"
        b"GET /last HTTP/1.1\r\nhost: x\r\nx-id: 3\r\n\r\n"
    )
    assert (await raw.response())[2] == b"chunk 0;chunk 1;"
    assert (await raw.response())[2] == b"hello"
    status, headers, body = await raw.response()
    assert (status, headers["x-id"], body) == (200, "3", b"GET /last ")
    raw.close()


async def test_expect_100_continue_is_answered_when_the_body_is_read(start: Start) -> None:
    _, port = await start()
    raw = await Raw.open(port)
    await raw.send(
        b"POST /echo HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n"
    )
    assert (await raw.head())[0] == 100
    await raw.send(b"ping")
    assert (await raw.response())[::2] == (200, b"ping")
    # a body over the limit is refused without the 100, and the connection ends
    await raw.send(
        b"POST /echo HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 99999999\r\n\r\n"
    )
    status, headers, body = await raw.response()
    assert status == 413 and headers["connection"] == "close"
    assert msgspec.json.decode(body)["error"]["code"] == "payload_too_large"
    assert await raw.closed()


async def test_a_chunked_upload_is_read_whole(start: Start) -> None:
    _, port = await start()
    raw = await Raw.open(port)
    await raw.send(
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    await raw.send(b"1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n")
    assert (await raw.response())[::2] == (200, b"hello world!")


async def test_a_body_past_the_limit_is_413_and_not_read(start: Start) -> None:
    _, port = await start(max_body_bytes=10)
    raw = await Raw.open(port)
    await raw.send(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
    await raw.send(b"8\r\n12345678\r\n8\r\n12345678\r\n")
    status, headers, _ = await raw.response()
    assert status == 413 and headers["connection"] == "close"
    assert await raw.closed()


@pytest.mark.parametrize(
    ("head", "status", "code"),
    [
        (b"GET /" + b"a" * MAX_URL_BYTES + b" HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
        (
            b"GET / HTTP/1.1\r\n" + b"x-a: b\r\n" * (MAX_HEADERS + 1) + b"\r\n",
            431,
            "headers_too_large",
        ),
        (
            b"GET / HTTP/1.1\r\nx-big: " + b"b" * MAX_HEAD_BYTES + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        (b"GET / HTTP/1.1\r\nhost x\r\n\r\n", 400, "invalid_request"),
        (
            b"GET / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            400,
            "invalid_request",
        ),
        (b"BREW / HTCPCP/1.0\r\n\r\n", 400, "invalid_request"),
    ],
    ids=["long-url", "many-headers", "big-header", "no-colon", "smuggling", "not-http"],
)
async def test_a_head_past_the_limits_or_malformed_is_refused_and_closed(
    start: Start, head: bytes, status: int, code: str
) -> None:
    _, port = await start()
    raw = await Raw.open(port)
    await raw.send(head)
    answer, headers, body = await raw.response()
    assert (answer, headers["connection"]) == (status, "close")
    assert msgspec.json.decode(body)["error"]["code"] == code
    assert await raw.closed()


async def test_a_head_that_never_ends_is_refused_before_it_grows(start: Start) -> None:
    """llhttp keeps a header being read whole; bytes of an unfinished head are counted too."""
    _, port = await start()
    raw = await Raw.open(port)
    await raw.send(b"GET / HTTP/1.1\r\nx-endless: ")
    for _ in range(MAX_HEAD_BYTES // 1024 + 1):
        await raw.send(b"b" * 1024)
    status, _, _ = await raw.response()
    assert status == 431
    assert await raw.closed()


async def test_slowloris_is_closed_while_others_are_served(start: Start) -> None:
    _, port = await start(header_timeout_s=0.2)
    slow = await Raw.open(port)
    await slow.send(b"GET / HTTP/1.1\r\nhost: x\r\n")  # and never the end of the head
    other = await Raw.open(port)
    await other.send(b"GET /other HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await other.response())[0] == 200
    assert await slow.closed()
    assert await slow.reader.read() == b""  # nothing was answered: the head never ended
    # the client served before stays open
    await other.send(b"GET /again HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await other.response())[2] == b"GET /again "


async def test_an_idle_keep_alive_connection_is_closed(start: Start) -> None:
    server, port = await start(keepalive_timeout_s=0.2)
    raw = await Raw.open(port)
    await raw.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await raw.response())[0] == 200
    assert await raw.closed()
    while server.connections:  # noqa: ASYNC110 - the server forgets it on its next turn
        await asyncio.sleep(0.01)


async def test_http10_and_connection_close_end_the_connection(start: Start) -> None:
    _, port = await start()
    raw = await Raw.open(port)
    await raw.send(b"GET /stream?2 HTTP/1.0\r\n\r\n")
    status, headers, body = await raw.response()  # no chunks in HTTP/1.0: the end is the close
    assert (status, body) == (200, b"chunk 0;chunk 1;")
    assert "transfer-encoding" not in headers and headers["connection"] == "close"
    raw = await Raw.open(port)
    await raw.send(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET /two HTTP/1.0\r\n\r\n")
    status, headers, _ = await raw.response()
    assert headers["connection"] == "keep-alive"
    assert (await raw.response())[1]["connection"] == "close"
    assert await raw.closed()
    raw = await Raw.open(port)
    await raw.send(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert (await raw.response())[1]["connection"] == "close"
    assert await raw.closed()


async def test_head_gets_the_headers_without_the_body(start: Start) -> None:
    _, port = await start()
    raw = await Raw.open(port)
    await raw.send(
        b"HEAD /thing HTTP/1.1\r\nhost: x\r\n\r\nHEAD /stream HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    status, headers = await raw.head()
    assert (status, headers["content-length"]) == (200, str(len(b"HEAD /thing ")))
    status, headers = await raw.head()
    assert headers["transfer-encoding"] == "chunked"
    await raw.send(b"GET /after HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await raw.response())[2] == b"GET /after "  # no stray body bytes came before it


async def test_a_header_with_a_line_break_is_never_sent(start: Start) -> None:
    _, port = await start()
    raw = await Raw.open(port)
    await raw.send(b"GET /bad-header HTTP/1.1\r\nhost: x\r\n\r\n")
    status, headers, _ = await raw.response()
    assert status == 500 and "set-cookie" not in headers


async def test_connections_past_the_cap_get_503(start: Start) -> None:
    server, port = await start(max_connections=2)
    first, second = await Raw.open(port), await Raw.open(port)
    for raw in (first, second):
        await raw.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await raw.response())[0] == 200
    third = await Raw.open(port)
    await third.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    status, headers, body = await third.response()
    assert (status, headers["connection"]) == (503, "close")
    assert msgspec.json.decode(body)["error"]["code"] == "too_many_connections"
    assert await third.closed()
    first.close()
    while len(server.connections) > 1:  # noqa: ASYNC110 - the server sees the close soon
        await asyncio.sleep(0.01)
    again = await Raw.open(port)
    await again.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await again.response())[0] == 200


async def test_a_client_that_leaves_cancels_its_request(start: Start, dispatch: Dispatch) -> None:
    _, port = await start()
    raw = await Raw.open(port)
    await raw.send(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
    await asyncio.wait_for(dispatch.started.wait(), 10)
    raw.close()
    await asyncio.wait_for(dispatch.cancelled.wait(), 10)


async def test_a_client_that_does_not_read_stops_the_stream(
    start: Start, dispatch: Dispatch
) -> None:
    """Writes wait while the socket's buffer is full: the source is not iterated meanwhile,
    so nothing piles up in the process; a client that reads again resumes it."""
    server, port = await start(send_timeout_s=30)
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:  # a plain socket: nothing reads it behind our back
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, b"GET /flood HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.wait_for(dispatch.started.wait(), 10)
        [conn] = server.connections
        while conn.writable:  # noqa: ASYNC110 - the transport tells the protocol, not us
            await asyncio.sleep(0.01)
        produced = dispatch.produced
        for _ in range(20):
            await asyncio.sleep(0.01)
            assert dispatch.produced == produced  # paused, however long we wait
        assert conn.transport.get_write_buffer_size() <= 64 * 1024 + 16384 + 16
        while dispatch.produced == produced:  # reading again resumes it
            await loop.sock_recv(sock, 1 << 20)


async def test_a_client_that_never_reads_is_dropped(start: Start, dispatch: Dispatch) -> None:
    _, port = await start(send_timeout_s=0.2)
    raw = await Raw.open(port, rcvbuf=4096)
    await raw.send(b"GET /flood HTTP/1.1\r\nhost: x\r\n\r\n")
    await asyncio.wait_for(dispatch.started.wait(), 10)
    # stuck writing to a client that reads nothing: the connection is cut, the task cancelled
    await asyncio.wait_for(dispatch.cancelled.wait(), 10)
    assert await raw.closed()


async def test_a_body_nobody_reads_stops_the_reading(start: Start, dispatch: Dispatch) -> None:
    """Until its handler asks for it, a body is not read past `BODY_HOLD` bytes."""
    server, port = await start(max_body_bytes=BODY_HOLD * 64)
    raw = await Raw.open(port)
    await raw.send(
        b"POST /hang HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (BODY_HOLD * 64)
    )
    await asyncio.wait_for(dispatch.started.wait(), 10)
    [conn] = server.connections
    sending = asyncio.ensure_future(raw.send(b"b" * BODY_HOLD * 64))
    while conn.reading:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert conn.active is not None and conn.active.size <= BODY_HOLD + 256 * 1024
    sending.cancel()
    raw.close()


class RecordingTransport(asyncio.Transport):
    """What a connection writes, each call kept apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_a_stream_head_and_end_ride_with_its_bytes() -> None:
    """The head leaves with the first bytes, the end with the last: each write to a socket is a
    system call, and on loopback a whole delivery."""

    done = False

    async def answer(request: Request, sink: Sink) -> None:
        async def rest() -> AsyncIterator[bytes]:
            nonlocal done
            done = True  # the upstream's end arrived with this last piece
            yield b"b"

        await StreamResponse(rest(), head=b"a", tail=b"[DONE]", ended=lambda: done).send(sink)

    server = Server(answer)
    server.loop = asyncio.get_running_loop()
    conn = HttpConnection(server)
    transport = RecordingTransport()
    conn.connection_made(transport)
    conn.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert conn.task is not None
    await conn.task
    first, last = transport.writes
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n1\r\na\r\n")
    assert last == b"7\r\nb[DONE]\r\n0\r\n\r\n"


async def test_stop_drains_then_cuts(start: Start, dispatch: Dispatch) -> None:
    server, port = await start()
    idle, busy = await Raw.open(port), await Raw.open(port)
    await idle.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    await idle.response()
    await busy.send(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
    await asyncio.wait_for(dispatch.started.wait(), 10)
    await server.stop(0.1)
    assert await idle.closed()  # at once, between requests
    assert dispatch.cancelled.is_set()  # the busy one, at the end of the drain
    with pytest.raises(OSError):
        await Raw.open(port)


# --- the whole gateway on the new server ----------------------------------------------------


@pytest.fixture
async def gateway(tmp_path: Path, upstream: FakeOpenAI) -> AsyncIterator[tuple[App, int]]:
    config = write_config(
        tmp_path, openai_config(upstream.base_url), {"NOROSHI_MASTER_KEY": "sk-m"}
    )
    app = App(config)
    sockets = listen("127.0.0.1", 0)
    server = make_server(app)
    await server.start(sockets)
    yield app, sockets[0].getsockname()[1]
    await server.stop(1.0)
    await app.shutdown()


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/../admin/keys",
        b"/v1/%2e%2e/admin/keys",
        b"//admin/keys",
        b"/admin%2Fkeys",
        b"/ADMIN/keys",
        b"http://evil.example/admin/keys",
        b"/admin/keys%00",
        b"/playground/..%2F..%2Fapi%2Fplayground.py",
        b"/playground/%2e%2e/%2e%2e/etc/passwd",
        b"/playground/../../etc/passwd",
    ],
)
async def test_path_tricks_never_reach_an_admin_route_or_a_file(
    gateway: tuple[App, int], target: bytes
) -> None:
    _, port = gateway
    raw = await Raw.open(port)
    await raw.send(b"GET %s HTTP/1.1\r\nhost: x\r\n\r\n" % target)
    status, _, body = await raw.response()
    assert status in (400, 401, 404), (target, body)
    assert b"nrs-" not in body and b"import" not in body


async def test_the_health_check_names_the_server(gateway: tuple[App, int]) -> None:
    _, port = gateway
    raw = await Raw.open(port)
    await raw.send(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
    status, headers, body = await raw.response()
    assert status == 200 and "date" in headers
    loop = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
    assert msgspec.json.decode(body)["runtime"]["server"] == f"noroshi http/1.1 ({loop})"


async def test_a_handshake_that_is_not_one_gets_400(gateway: tuple[App, int]) -> None:
    _, port = gateway
    raw = await Raw.open(port)
    await raw.send(
        b"GET /api/v1/agent/ws?api_key=sk-m HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n"
        b"upgrade: websocket\r\n\r\n"  # no key, no version
    )
    status, _, _ = await raw.response()
    assert status == 400
    assert await raw.closed()


async def test_a_security_probe_runs_on_both_servers(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    """The preflight and traversal probes of the other modules run on `serve`, both servers;
    this one checks a raw `..` path there too."""
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url)))
    port = int(base.rsplit(":", 1)[1])
    raw = await Raw.open(port)
    await raw.send(b"GET /playground/../../pyproject.toml HTTP/1.1\r\nhost: x\r\n\r\n")
    status, _, body = await raw.response()
    assert status == 404 and b"noroshi" not in body


CHUNKS = 20_000


class Flood(asyncio.Protocol):
    """A fake OpenAI upstream that streams `chunks` content chunks of 1 KB as fast as its
    socket takes them, and counts the bytes it could send."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.sent = 0
        self.paused = asyncio.Event()  # the gateway stopped reading: our buffer is full
        self.writable = asyncio.Event()
        self.writable.set()
        self.received = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)

    def data_received(self, data: bytes) -> None:
        self.received += data
        head, sep, body = self.received.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]) if sep else -1
        if sep and len(body) >= length:
            asyncio.get_running_loop().create_task(self.stream())

    def widen(self) -> None:
        assert self.transport is not None
        self.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22
        )

    def pause_writing(self) -> None:
        self.paused.set()
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    async def stream(self) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        delta = {"content": "x" * 1000}
        for i in range(self.chunks + 2):
            if i == self.chunks:
                delta = {}
            event = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "m1",
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "finish_reason": "stop" if i == self.chunks else None,
                    }
                ],
            }
            data = (
                b"data: %s\n\n" % msgspec.json.encode(event)
                if i <= self.chunks
                else b"data: [DONE]\n\n"
            )
            await self.writable.wait()
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.sent += len(data)
        self.transport.write(b"0\r\n\r\n")


async def test_a_slow_reader_pauses_the_upstream(tmp_path: Path) -> None:
    """The relay stops reading its upstream while its client does not read: the upstream is
    held at its socket, the gateway's buffers stay bounded, and the upstream's idle timeout
    (0.5 s here) does not mistake the pause for a stall."""
    loop = asyncio.get_running_loop()
    flood = Flood(chunks=CHUNKS)
    upstream = await loop.create_server(lambda: flood, "127.0.0.1", 0)
    up_port = upstream.sockets[0].getsockname()[1]
    config = openai_config(f"http://127.0.0.1:{up_port}/v1")
    config = config.replace("total_timeout_s = 10", "total_timeout_s = 120")
    app = App(write_config(tmp_path, config))
    sockets = listen("127.0.0.1", 0)
    server = make_server(app)
    await server.start(sockets)
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
            sock.setblocking(False)
            await loop.sock_connect(sock, sockets[0].getsockname())
            body = b'{"model": "fast", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
            await loop.sock_sendall(
                sock,
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body),
            )
            held = await asyncio.wait_for(_held(flood), 30)
            assert held < CHUNKS * 1000 / 2  # the rest waits at the upstream
            [conn] = server.connections
            assert not conn.writable
            # its high-water mark, plus one piece of what the upstream client held
            assert conn.transport.get_write_buffer_size() <= 64 * 1024 + 2 * http1.HIGH_WATER
            await asyncio.sleep(1.0)  # two of the upstream's idle timeouts
            assert flood.sent < CHUNKS * 1000 / 2
            flood.widen()  # its small buffer made the pause come early; now it slows the rest
            received = bytearray()
            while not received.endswith(b"0\r\n\r\n"):
                received += await loop.sock_recv(sock, 1 << 20)
    finally:
        await server.stop(1.0)
        await app.shutdown()
        upstream.close()
    assert b"data: [DONE]" in received and b'"error"' not in received
    assert received.count(b"x" * 1000) == CHUNKS


async def _held(flood: Flood) -> int:
    """What the upstream sent once it can send no more (or sent everything)."""
    await flood.paused.wait()
    before = -1
    while flood.sent != before:
        before = flood.sent
        await asyncio.sleep(0.2)
    return before
