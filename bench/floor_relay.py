"""The floor relay: how little CPU a streaming relay needs in Python, with no server framework.

uvloop protocols and llhttp (`httptools`) on both sides, a pool of upstream connections, and
every TCP read from the upstream re-framed (HTTP chunked) and written to the client in one
write: no per-chunk parsing, no task per request or chunk. The body is decoded and encoded
again, as the Bun peers do with JSON.parse and JSON.stringify.

It does none of a gateway's work (no auth, limits, usage, errors, timeouts, pipelining or
backpressure): it is what noroshi's p99 and instruction counts are compared with, not a
design to copy. After shared/reference/uvloop-relay/relay.py, the floor measured below Bun.

Run: BENCH_UPSTREAM=http://127.0.0.1:9100 python -m bench.floor_relay --port 8080
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import httptools
import msgspec
import uvloop

__all__ = ["main"]

UPSTREAM = urlsplit(os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9100"))
UP_HOST, UP_PORT = UPSTREAM.hostname or "127.0.0.1", UPSTREAM.port or 80
HEALTH = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n"
    b'{"status":"ok"}'
)
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: %b\r\n"
    b"content-type: application/json\r\ncontent-length: %d\r\n\r\n"
)
HEAD = (
    b"HTTP/1.1 %d OK\r\ncontent-type: %b\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


class Upstream(asyncio.Protocol):
    """One pooled connection to the upstream, lent to one client request at a time."""

    def __init__(self, pool: deque[Upstream]) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []  # what one read brings, re-framed, for one write

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it

    def send(self, client: Client, data: bytes) -> None:
        self.client = client
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        client = self.client  # the message's end in this read gives the connection back
        self.parser.feed_data(data)
        if self.out:
            if client is not None and not client.transport.is_closing():
                client.transport.write(b"".join(self.out))
            self.out.clear()

    def on_headers_complete(self) -> None:
        assert self.client is not None
        kind = b"text/event-stream" if self.client.stream else b"application/json"
        self.out.append(HEAD % (self.parser.get_status_code(), kind))

    def on_body(self, body: bytes) -> None:
        self.out.append(b"%x\r\n%b\r\n" % (len(body), body))

    def on_message_complete(self) -> None:
        self.out.append(b"0\r\n\r\n")
        self.client = None
        self.pool.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)


class Client(asyncio.Protocol):
    """One client connection: each request's body goes upstream on a pooled connection."""

    def __init__(self, pool: deque[Upstream]) -> None:
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.stream = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.url == b"/health":
            self.transport.write(HEALTH)
            return
        request = msgspec.json.decode(b"".join(self.body))
        self.body.clear()
        self.stream = bool(request.get("stream"))
        body = msgspec.json.encode(request)
        data = REQUEST % (UPSTREAM.netloc.encode(), len(body)) + body
        if self.pool:
            self.pool.pop().send(self, data)
        else:
            asyncio.get_running_loop().create_task(self._connect(data))

    async def _connect(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(lambda: Upstream(self.pool), UP_HOST, UP_PORT)
        upstream.send(self, data)


async def serve(port: int) -> None:
    pool: deque[Upstream] = deque()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(pool), "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
