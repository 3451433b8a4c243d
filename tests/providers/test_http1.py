"""The upstream HTTP/1.1 client on the wire: raw-socket upstreams that answer exactly the bytes
a test scripts, faults included."""

from __future__ import annotations

import asyncio
import gc
import gzip
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from noroshi.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from noroshi.providers.http1 import HIGH_WATER, Client

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Raw:
    """A loopback server that runs `answer` for each request on each connection, and counts
    the connections and the requests it read."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                self.requests.append(head + await reader.readexactly(length))
                await self.answer(reader, writer, len(self.requests))
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


@asynccontextmanager
async def raw(answer: Answer) -> AsyncIterator[Raw]:
    server = Raw(answer)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


@asynccontextmanager
async def client(limit: int = 8) -> AsyncIterator[Client]:
    c = Client(max_connections=limit, connect_timeout=2)
    try:
        yield c
    finally:
        await c.close()


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


async def json_answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
    body = b'{"n": %d}' % n
    w.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    await w.drain()


async def test_a_connection_read_to_the_end_serves_the_next_request() -> None:
    async with raw(json_answer) as up, client() as c:
        bodies = []
        for _ in range(3):
            answer = await c.send("POST", up.url, {"content-type": "application/json"}, b"{}")
            assert answer.status == 200 and answer.header("content-type") == "application/json"
            bodies.append(await answer.read(1024))
            answer.release()
    assert bodies == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    assert up.connections == 1
    first = up.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"content-type: application/json\r\n" in first and first.endswith(b"\r\n\r\n{}")


async def test_a_stream_arrives_part_by_part_as_sent() -> None:
    go_on = asyncio.Event()

    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(SSE_HEAD + chunked(b"data: 1\n\n"))
        await w.drain()
        await go_on.wait()  # the second part waits until the first was read
        w.write(chunked(b"data: 2\n\n", b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await w.drain()

    async with raw(answer) as up, client() as c:
        stream = await c.send("POST", up.url, {}, b"{}")
        parts = []
        async for part in stream.chunks():
            parts.append(part)
            go_on.set()
        stream.finish(True)
    assert parts[0] == b"data: 1\n\n"
    assert b"".join(parts) == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"


async def test_an_answer_without_a_length_ends_with_its_connection() -> None:
    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nall of it"
        )
        await w.drain()
        w.close()

    async with raw(answer) as up, client() as c:
        for _ in range(2):
            answer_ = await c.send("GET", up.url, {}, None)
            assert await answer_.read(1024) == b"all of it"
            answer_.release()
    assert up.connections == 2  # "connection: close" is honoured: nothing goes back to the pool


async def test_an_early_hints_answer_is_passed_over_for_the_real_one() -> None:
    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        w.write(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n")
        await json_answer(r, w, n)

    async with raw(answer) as up, client() as c:
        for n in (1, 2):
            answer_ = await c.send("POST", up.url, {}, b"{}")
            assert answer_.status == 200 and answer_.header("link") is None
            assert await answer_.read(1024) == b'{"n": %d}' % n
            answer_.release()
    assert up.connections == 1


async def test_a_gzip_answer_is_decoded() -> None:
    body = gzip.compress(b'{"ok": true}' * 100)

    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await w.drain()

    async with raw(answer) as up, client() as c:
        answer_ = await c.send("GET", up.url, {}, None)
        assert await answer_.read(1 << 20) == b'{"ok": true}' * 100
        answer_.release()


@pytest.mark.parametrize("fault", ["reset", "no_terminator"])
async def test_a_stream_cut_mid_answer_fails_after_what_arrived(fault: str) -> None:
    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(SSE_HEAD + chunked(b"data: 1\n\n"))
        await w.drain()
        await asyncio.sleep(0.05)
        if fault == "reset":
            w.transport.abort()
        else:
            w.close()  # a clean close, but the chunked body never ended

    async with raw(answer) as up, client() as c:
        stream = await c.send("POST", up.url, {}, b"{}")
        parts = []
        with pytest.raises(UpstreamConnectError, match="closed the connection mid-answer"):
            async for part in stream.chunks():
                parts.append(part)
        stream.finish(False)
    assert parts == [b"data: 1\n\n"]


async def test_malformed_http_is_a_protocol_error() -> None:
    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nnot hex\r\n")
        await w.drain()

    async with raw(answer) as up, client() as c:
        with pytest.raises(UpstreamProtocolError, match="malformed HTTP"):
            stream = await c.send("POST", up.url, {}, b"{}")
            await stream.read(1024)  # if the head arrived alone


async def test_an_idle_connection_the_upstream_closed_leaves_the_pool() -> None:
    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await json_answer(r, w, n)
        w.close()  # keeps nothing alive, though the answer did not say so

    async with raw(answer) as up, client() as c:
        for _ in range(2):
            first = await c.send("POST", up.url, {}, b"{}")
            await first.read(1024)
            first.release()
            await asyncio.sleep(0.05)  # the close reaches the client first
        pool = next(iter(c._pools.values()))
        assert len(pool.idle) == 0
    assert len(up.requests) == 2 and up.connections == 2


async def test_a_request_on_a_connection_closed_in_flight_is_sent_again_once() -> None:
    closes = []

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        if n == 2:  # the second request meets a connection closing as it arrives
            closes.append(n)
            w.transport.abort()
            return
        await json_answer(r, w, n)

    async with raw(answer) as up, client() as c:
        first = await c.send("POST", up.url, {}, b"{}")
        await first.read(1024)
        first.release()
        second = await c.send("POST", up.url, {}, b"{}")
        assert await second.read(1024) == b'{"n": 3}'
        second.release()
    assert closes == [2] and up.connections == 2


async def test_past_the_limit_a_request_waits_for_a_connection() -> None:
    async with raw(json_answer) as up, client(limit=1) as c:
        first = await c.send("POST", up.url, {}, b"{}")
        second = asyncio.ensure_future(c.send("POST", up.url, {}, b"{}"))
        await asyncio.sleep(0.05)
        assert not second.done()  # the only connection is still reading the first answer
        await first.read(1024)
        first.release()
        answer = await asyncio.wait_for(second, 2)
        assert await answer.read(1024) == b'{"n": 2}'
        answer.release()
    assert up.connections == 1


async def test_an_answer_left_half_read_never_serves_another_request() -> None:
    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(SSE_HEAD + chunked(b"data: 1\n\n"))
        await w.drain()
        await asyncio.sleep(0.2)
        w.write(b"0\r\n\r\n")
        await w.drain()

    async with raw(answer) as up, client() as c:
        for _ in range(2):
            stream = await c.send("POST", up.url, {}, b"{}")
            assert await stream.chunks().__anext__() == b"data: 1\n\n"
            stream.finish(False)
    assert up.connections == 2


@pytest.mark.parametrize("then", [b"0\r\n\r\n", chunked(b"data: more\n\n")])
async def test_a_stream_released_at_its_terminator_waits_a_moment_for_the_http_end(
    then: bytes,
) -> None:
    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(SSE_HEAD + chunked(b"data: [DONE]\n\n"))
        await w.drain()
        await asyncio.sleep(0.05)  # HTTP's end comes in a later read, as it often does
        w.write(then)
        await w.drain()
        if then != b"0\r\n\r\n":
            await asyncio.sleep(1)

    async with raw(answer) as up, client() as c:
        for _ in range(2):
            stream = await c.send("POST", up.url, {}, b"{}")
            assert await stream.chunks().__anext__() == b"data: [DONE]\n\n"
            stream.finish(True)  # the caller saw its terminator; HTTP's end is yet to come
            await asyncio.sleep(0.2)
    # the connection is reused when the answer ended as it should, and dropped when it went on
    assert up.connections == (1 if then == b"0\r\n\r\n" else 2)


async def test_a_header_with_a_line_break_is_refused_before_sending() -> None:
    async with raw(json_answer) as up, client() as c:
        with pytest.raises(ValueError, match="line break"):
            await c.send("POST", up.url, {"x-evil": "a\r\nx-injected: 1"}, b"{}")
    assert up.requests == []


async def test_a_read_timeout_bounds_the_wait_for_the_answer() -> None:
    async def answer(_r: asyncio.StreamReader, _w: asyncio.StreamWriter, _n: int) -> None:
        await asyncio.sleep(5)

    async with raw(answer) as up, client() as c:
        with pytest.raises(UpstreamTimeout):
            await c.send("GET", up.url, {}, None, read_timeout=0.2)


async def test_an_upstream_that_refuses_connections_is_a_connect_error() -> None:
    async with raw(json_answer) as up:
        url = up.url
    async with client() as c:
        with pytest.raises(UpstreamConnectError, match="Could not connect"):
            await c.send("GET", url, {}, None)


async def test_a_reader_that_falls_behind_pauses_the_socket() -> None:
    size = 16 * HIGH_WATER
    sent = asyncio.Event()

    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            w.write(b"x" * 65536)
            await w.drain()
        sent.set()

    async with raw(answer) as up, client() as c:
        answer_ = await c.send("GET", up.url, {}, None)
        await asyncio.sleep(0.3)  # reading nothing meanwhile
        assert not sent.is_set()  # the upstream is held back by TCP
        assert answer_._buffered <= 2 * HIGH_WATER
        assert len(await answer_.read(size)) == size
        answer_.release()


class Frame:
    """Stands for what a server's frame holds while it relays a stream (its writer)."""


async def test_a_failed_answer_holds_nothing_of_its_reader_once_closed() -> None:
    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(SSE_HEAD + chunked(b"data: 1\n\n"))
        await w.drain()
        w.transport.abort()

    async def relay(c: Client, url: str) -> weakref.ref[Frame]:
        held = Frame()
        stream = await c.send("POST", url, {}, b"{}")
        try:
            async for _ in stream.chunks():
                pass
        except UpstreamConnectError:
            pass
        finally:
            stream.finish(False)
        return weakref.ref(held)

    gc.disable()
    try:
        async with raw(answer) as up, client() as c:
            held = await relay(c, up.url)
            # freed by reference counting alone, with no collection
            assert held() is None
    finally:
        gc.enable()
