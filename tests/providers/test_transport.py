"""The upstream transport: one pooled session that many callers share."""

from __future__ import annotations

from aiohttp import web

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
            # by name: aiohttp's cookie jar ignores cookies from bare IP addresses
            url = f"http://localhost:{upstream.port}/v1/chat/completions"
            for _ in range(3):
                resp = await transport.send("POST", url, {}, b"{}")
                assert resp.header("set-cookie") is not None
                await resp.read(1024)
                resp.release()
            assert upstream.cookies == [None, None, None]
    finally:
        await transport.close()
