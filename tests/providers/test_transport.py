"""The upstream transport: pooled connections that many callers share."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from noroshi.errors import NoroshiError, UpstreamConnectError, UpstreamTimeout
from noroshi.providers.transport import HTTPTransport
from tests.fakes.loopback import LoopbackServer


class CookieSetter(LoopbackServer):
    """Sets a session cookie on every answer and records the Cookie header of each request."""

    def __init__(self) -> None:
        super().__init__()
        self.cookies: list[str | None] = []

    def _routes(self) -> list[web.RouteDef]:
        async def answer(request: web.Request) -> web.Response:
            self.cookies.append(request.headers.get("cookie"))
            resp = web.json_response({"ok": True})
            resp.set_cookie("session", f"caller-{len(self.cookies)}")
            return resp

        return [web.post("/v1/chat/completions", answer)]


async def test_an_upstream_cookie_never_reaches_the_next_caller() -> None:
    transport = HTTPTransport(max_connections=4, connect_timeout=2)
    try:
        async with CookieSetter() as upstream:
            # by name: a cookie jar would ignore cookies from bare IP addresses
            url = f"http://localhost:{upstream.port}/v1/chat/completions"
            for _ in range(3):
                resp = await transport.send("POST", url, {}, b"{}")
                assert resp.header("set-cookie") is not None
                await resp.read(1024)
                resp.release()
            assert upstream.cookies == [None, None, None]
    finally:
        await transport.close()


class Trickle(LoopbackServer):
    """Streams `parts` chunks, `gap_s` apart, then stalls for `stall_s` before ending."""

    def __init__(self, parts: int, gap_s: float, stall_s: float) -> None:
        super().__init__()
        self.parts, self.gap_s, self.stall_s = parts, gap_s, stall_s

    def _routes(self) -> list[web.RouteDef]:
        async def answer(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(self.parts):
                await resp.write(b"data: %d\n\n" % i)
                await asyncio.sleep(self.gap_s)
            await asyncio.sleep(self.stall_s)
            await resp.write_eof()
            return resp

        return [web.post("/v1/chat/completions", answer)]


async def read_all(upstream: Trickle, idle_s: float) -> tuple[list[bytes], float, Exception | None]:
    """The chunks read with an idle timeout set after the first; how long; what it raised."""
    transport = HTTPTransport(max_connections=4, connect_timeout=2)
    chunks: list[bytes] = []
    started = time.monotonic()
    try:
        resp = await transport.send("POST", f"{upstream.origin}/v1/chat/completions", {}, b"{}")
        try:
            async for chunk in resp.chunks():
                if not chunks:
                    resp.set_idle_timeout(idle_s)
                chunks.append(chunk)
        except NoroshiError as exc:
            return chunks, time.monotonic() - started, exc
        finally:
            resp.finish(False)
            assert resp._watchdog is None  # no timer outlives the answer
        return chunks, time.monotonic() - started, None
    finally:
        await transport.close()


async def test_a_stall_after_the_first_byte_is_cut_within_the_idle_timeout() -> None:
    async with Trickle(parts=2, gap_s=0.0, stall_s=5.0) as upstream:
        chunks, took, error = await read_all(upstream, idle_s=0.4)
    assert isinstance(error, UpstreamTimeout)
    assert b"".join(chunks) == b"data: 0\n\ndata: 1\n\n"
    # at most a quarter of the idle timeout late, and far from the 5 s stall
    assert 0.4 <= took < 2.0


async def test_data_that_keeps_coming_is_never_a_stall() -> None:
    # each gap is half the idle timeout; the whole answer takes four idle timeouts
    async with Trickle(parts=8, gap_s=0.1, stall_s=0.0) as upstream:
        chunks, took, error = await read_all(upstream, idle_s=0.2)
    assert error is None
    assert b"".join(chunks) == b"".join(b"data: %d\n\n" % i for i in range(8))
    assert took >= 0.8


class Sockets(LoopbackServer):
    """`/echo` returns each text frame upper-cased and ends on "bye" with a binary frame;
    `/refuse` answers 403; `/mute` never answers the handshake."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[dict[str, str]] = []

    def _routes(self) -> list[web.RouteDef]:
        async def echo(request: web.Request) -> web.WebSocketResponse:
            self.headers.append(dict(request.headers))
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for message in ws:
                if message.data == "bye":
                    await ws.send_bytes(b"binary")
                else:
                    await ws.send_str(message.data.upper())
            return ws

        async def refuse(request: web.Request) -> web.Response:
            return web.Response(status=403, text="no")

        async def mute(request: web.Request) -> web.Response:
            await asyncio.sleep(5)
            return web.Response()

        return [web.get("/echo", echo), web.get("/refuse", refuse), web.get("/mute", mute)]


async def test_a_websocket_to_the_upstream_carries_text_frames() -> None:
    transport = HTTPTransport(max_connections=4, connect_timeout=2)
    try:
        async with Sockets() as upstream:
            # the core's address is an http URL: the socket takes the matching ws scheme
            ws = await transport.websocket(f"{upstream.origin}/echo", {"x-signed": "yes"})
            await ws.send("hi")
            assert await ws.receive() == "HI"
            await ws.send("bye")
            assert await ws.receive() is None  # a binary frame: not carried
            await ws.close()
            assert await ws.receive() is None
            assert upstream.headers[0]["x-signed"] == "yes"
            assert "User-Agent" not in upstream.headers[0]
    finally:
        await transport.close()


async def test_a_websocket_that_cannot_open_is_a_noroshi_error() -> None:
    transport = HTTPTransport(max_connections=4, connect_timeout=0.3)
    try:
        async with Sockets() as upstream:
            with pytest.raises(UpstreamConnectError, match="403"):
                await transport.websocket(f"{upstream.origin}/refuse", {})
            with pytest.raises(UpstreamTimeout, match="in time"):
                await transport.websocket(f"{upstream.origin}/mute", {})
            port = upstream.port
        with pytest.raises(UpstreamConnectError, match="Could not open"):
            await transport.websocket(f"ws://127.0.0.1:{port}/echo", {})  # nobody listens now
    finally:
        await transport.close()
