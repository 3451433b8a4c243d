"""WebSockets under both servers (noroshi's own and uvicorn): echo, JSON, disconnects, the size
limit, auth, errors, close codes and refusals with their JSON body."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest

from noroshi.app import App
from noroshi.errors import BadRequest, NoroshiError, NotFound
from noroshi.http.asgi import Message
from noroshi.http.request import Request
from noroshi.http.router import Router
from noroshi.http.websocket import (
    MAX_MESSAGE_BYTES,
    WebSocket,
    WebSocketDisconnect,
    close_reason,
    no_body,
)
from tests.conftest import _serve_asgi, _serve_noroshi, openai_config, write_config

MASTER = "sk-master-ws"


class Ping(msgspec.Struct):
    n: int


class Gateway:
    """Serves an `App` with the test routes below, under one adapter; `url` is ws://…"""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.disconnects: asyncio.Queue[int] = asyncio.Queue()
        self.running: list[tuple[App, Callable[[], Awaitable[None]]]] = []

    async def start(self, environ: dict[str, str] | None = None) -> str:
        config = write_config(self.tmp_path, openai_config("http://127.0.0.1:9"), environ)
        app = App(config)
        install(app.router, self.disconnects)
        url, stop = await (_serve_noroshi if self.kind == "noroshi" else _serve_asgi)(app)
        self.running.append((app, stop))
        return url.replace("http://", "ws://")

    async def stop(self) -> None:
        for app, stop in self.running:
            await stop()
            await app.shutdown()


def install(router: Router, disconnects: asyncio.Queue[int]) -> None:
    decoder = msgspec.json.Decoder(Ping)

    async def echo(request: Request, ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                await ws.send_text(await ws.receive_text())
        except WebSocketDisconnect as exc:
            disconnects.put_nowait(exc.code)
            raise

    async def json(request: Request, ws: WebSocket) -> None:
        await ws.accept()
        while True:
            try:
                ping = await ws.receive_json(decoder)
            except BadRequest as exc:  # reported in the stream; the socket stays open
                await ws.send_bytes(exc.body())
                continue
            await ws.send_text(msgspec.json.encode({"n": ping.n + 1}).decode())

    async def item(request: Request, ws: WebSocket) -> None:
        if request.params["name"] == "missing":
            raise NotFound("No such item.")  # before accept: the handshake is refused
        await ws.accept()
        await ws.send_text(f"{request.params['name']} {request.principal is not None}")
        await ws.close()

    async def boom(request: Request, ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_text()
        raise RuntimeError("boom")

    async def silent(request: Request, ws: WebSocket) -> None:
        return  # never accepts: the handshake is refused

    async def bad(request: Request, ws: WebSocket) -> None:
        await ws.accept()
        raise BadRequest("nope")

    router.add_websocket("/ws/silent", silent)
    router.add_websocket("/ws/bad", bad)
    router.add_websocket("/ws/echo", echo)
    router.add_websocket("/ws/json", json)
    router.add_websocket("/ws/items/{name}", item)
    router.add_websocket("/ws/boom", boom)


@pytest.fixture(params=["noroshi", "asgi"])
async def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = Gateway(request.param, tmp_path)
    yield gw
    await gw.stop()


async def handshake_status(url: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(url, headers=headers)
    return info.value.status


async def closed(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    return msg


async def test_echo_text(gateway: Gateway) -> None:
    url = await gateway.start()
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{url}/ws/echo") as ws:
        for text in ("hello", "", "naïve ✓"):
            await ws.send_str(text)
            assert await asyncio.wait_for(ws.receive_str(), 5) == text


async def test_json_and_bad_json_keeps_the_socket_open(gateway: Gateway) -> None:
    url = await gateway.start()
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{url}/ws/json") as ws:
        await ws.send_str('{"n": 1}')
        assert await asyncio.wait_for(ws.receive_json(), 5) == {"n": 2}
        await ws.send_str("{not json")
        error = msgspec.json.decode(await asyncio.wait_for(ws.receive_bytes(), 5))
        assert error["error"]["code"] == "invalid_json"
        await ws.send_str('{"n": "x"}')
        error = msgspec.json.decode(await asyncio.wait_for(ws.receive_bytes(), 5))
        assert error["error"]["param"] == "n"
        await ws.send_bytes(b'{"n": 41}')  # a binary message decodes the same
        assert await asyncio.wait_for(ws.receive_json(), 5) == {"n": 42}


async def test_client_close_reaches_the_handler(gateway: Gateway) -> None:
    url = await gateway.start()
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{url}/ws/echo")
        await ws.send_str("hi")
        assert await ws.receive_str() == "hi"
        await ws.close(code=4001)
    assert await asyncio.wait_for(gateway.disconnects.get(), 5) == 4001


async def test_message_over_the_limit_closes_with_1009(gateway: Gateway) -> None:
    url = await gateway.start()
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{url}/ws/echo") as ws:
        await ws.send_str("x" * MAX_MESSAGE_BYTES)  # at the limit: fine
        assert len(await asyncio.wait_for(ws.receive_str(), 5)) == MAX_MESSAGE_BYTES
        await ws.send_str("é" * (MAX_MESSAGE_BYTES // 2 + 1))  # over it, counted in bytes
        await closed(ws)
        assert ws.close_code == 1009
    assert await asyncio.wait_for(gateway.disconnects.get(), 5) == 1009


async def test_binary_to_a_text_endpoint_closes_with_1003(gateway: Gateway) -> None:
    url = await gateway.start()
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{url}/ws/echo") as ws:
        await ws.send_bytes(b"\x00")
        await closed(ws)
        assert ws.close_code == 1003


async def test_unknown_path_is_refused_with_404(gateway: Gateway) -> None:
    url = await gateway.start()
    assert await handshake_status(f"{url}/ws/nowhere") == 404
    # an HTTP route is not a WebSocket route
    assert await handshake_status(f"{url}/health") == 404


async def test_path_params_and_refusal_from_the_handler(gateway: Gateway) -> None:
    url = await gateway.start()
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{url}/ws/items/abc") as ws:
        assert await asyncio.wait_for(ws.receive_str(), 5) == "abc True"
        await closed(ws)
    assert await handshake_status(f"{url}/ws/items/missing") == 404


async def test_refusal_carries_the_error_envelope(gateway: Gateway) -> None:
    url = await gateway.start({"NOROSHI_MASTER_KEY": MASTER})
    # a plain GET with the upgrade headers shows the refusal's body
    headers = {
        "connection": "upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{url.replace('ws://', 'http://')}/ws/echo", headers=headers) as r,
    ):
        assert r.status == 401
        body = await r.json()
    assert body["error"]["code"] == "missing_api_key"


async def test_master_key_by_header_or_query(gateway: Gateway) -> None:
    url = await gateway.start({"NOROSHI_MASTER_KEY": MASTER})
    assert await handshake_status(f"{url}/ws/echo") == 401
    assert await handshake_status(f"{url}/ws/echo?api_key=wrong") == 401
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{url}/ws/echo?api_key={MASTER}") as ws:
            await ws.send_str("by query")
            assert await asyncio.wait_for(ws.receive_str(), 5) == "by query"
        headers = {"authorization": f"Bearer {MASTER}"}
        async with s.ws_connect(f"{url}/ws/echo", headers=headers) as ws:
            await ws.send_str("by header")
            assert await asyncio.wait_for(ws.receive_str(), 5) == "by header"
        async with s.ws_connect(f"{url}/ws/echo", headers={"x-api-key": MASTER}) as ws:
            await ws.send_str("by x-api-key")
            assert await asyncio.wait_for(ws.receive_str(), 5) == "by x-api-key"
    # a header wins over the query string
    assert (
        await handshake_status(f"{url}/ws/echo?api_key={MASTER}", headers={"x-api-key": "no"})
        == 401
    )


async def test_handler_exception_closes_with_1011(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    url = await gateway.start()
    with caplog.at_level(logging.ERROR, logger="noroshi.http"):
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{url}/ws/boom") as ws:
            await ws.send_str("go")
            msg = await closed(ws)
            assert ws.close_code == 1011
            assert msg.extra == "The gateway failed to handle the WebSocket."
    assert any("unhandled error in WebSocket /ws/boom" in r.getMessage() for r in caplog.records)


async def test_client_error_after_accept_closes_with_1008(gateway: Gateway) -> None:
    url = await gateway.start()
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{url}/ws/bad") as ws:
        msg = await closed(ws)
        assert (ws.close_code, msg.extra) == (1008, "nope")


async def test_handler_that_never_accepts_is_refused(gateway: Gateway) -> None:
    url = await gateway.start()
    assert await handshake_status(f"{url}/ws/silent") == 403


async def test_draining_refuses_new_sockets(gateway: Gateway) -> None:
    url = await gateway.start()
    gateway.running[-1][0].draining = True
    assert await handshake_status(f"{url}/ws/echo") == 503


# --- in process: the parts no real server reaches --------------------------------------


class FakeBackend:
    """Records what a `WebSocket` asks of its transport; `inbox` feeds `receive`."""

    def __init__(self, *inbox: str | bytes) -> None:
        self.inbox = list(inbox)
        self.calls: list[tuple[str, object]] = []

    async def accept(self) -> None:
        self.calls.append(("accept", None))

    async def receive(self) -> str | bytes:
        if not self.inbox:
            raise WebSocketDisconnect(1001)
        return self.inbox.pop(0)

    async def send(self, data: str | bytes) -> None:
        self.calls.append(("send", data))

    async def close(self, code: int, reason: str) -> None:
        self.calls.append(("close", (code, reason)))

    async def refuse(self, error: NoroshiError) -> None:
        self.calls.append(("refuse", error.status))


async def test_websocket_state_rules() -> None:
    backend = FakeBackend("a")
    ws = WebSocket(backend, max_message=4)
    with pytest.raises(RuntimeError, match="not accepted"):
        await ws.receive()
    await ws.accept()
    with pytest.raises(RuntimeError, match="already open"):
        await ws.accept()
    assert await ws.receive_text() == "a"
    with pytest.raises(WebSocketDisconnect) as info:
        await ws.receive()
    assert info.value.code == 1001 and ws.state == "closed"
    with pytest.raises(WebSocketDisconnect):
        await ws.send_text("late")
    await ws.close()  # closed already: nothing more is sent
    assert backend.calls == [("accept", None)]


async def test_size_limit_counts_bytes_not_characters() -> None:
    backend = FakeBackend("éé", "ééé")
    ws = WebSocket(backend, max_message=4)
    await ws.accept()
    assert await ws.receive() == "éé"  # 4 bytes
    with pytest.raises(WebSocketDisconnect) as info:
        await ws.receive()  # 6 bytes
    assert info.value.code == 1009
    assert backend.calls[-1] == ("close", (1009, "The message exceeds the limit of 4 bytes."))


async def test_close_before_accept_refuses_and_reasons_are_cut() -> None:
    backend = FakeBackend()
    await WebSocket(backend).close()
    assert backend.calls == [("refuse", 403)]
    assert close_reason("é" * 100) == "é" * 60
    assert len(close_reason("ab" + "€" * 60).encode()) == 119  # never half a character


async def test_asgi_refusal_without_the_response_extension(tmp_path: Path) -> None:
    app = App(write_config(tmp_path, openai_config("http://127.0.0.1:9")))
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/" + "x" * 200, "query_string": b"", "headers": []}
    try:
        await app(scope, receive, send)
    finally:
        await app.shutdown()
    [message] = sent
    assert message["type"] == "websocket.close" and message["code"] == 1008
    assert message["reason"].startswith("Unknown WebSocket route: /xxx")
    assert len(message["reason"].encode()) == 120
    assert await no_body() == b""
