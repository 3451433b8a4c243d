"""HTTP tools against a real aiohttp server on 127.0.0.1: templating, bodies, limits, and the
guard that keeps them off private addresses."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpcore2
import httpx2
import msgspec
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from noroshi.agent import HTTPTool, ToolResult, run_tool
from noroshi.agent.http_tools import PinnedBackend, forbidden_reason
from noroshi.agent.tools import CALL_KEY
from noroshi.config import HTTPToolConfig

MakeTool = Callable[..., HTTPTool]


class Upstream:
    """The server the tools call; it remembers every request."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.base = ""

    async def echo(self, request: web.Request) -> web.Response:
        self.hits.append(request.raw_path)
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path.partition("?")[0],
                "query": list(request.query.items()),
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body.decode(),
            }
        )

    async def status(self, request: web.Request) -> web.Response:
        self.hits.append(request.raw_path)
        code = int(request.match_info["code"])
        return web.Response(status=code, text="nope " * 1000)

    async def big(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(20):  # in pieces, as a real server sends a large body
            await resp.write(b"x" * 1000)
        await resp.write_eof()
        return resp

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def empty(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def redirect(self, request: web.Request) -> web.Response:
        self.hits.append(request.raw_path)
        status = int(request.query.get("status", "302"))
        raise _redirect(status, request.query.get("to", "/redirect"))  # no "to": a loop


def _redirect(status: int, location: str) -> web.HTTPException:
    redirects: dict[int, type[web.HTTPMove]] = {
        301: web.HTTPMovedPermanently,
        302: web.HTTPFound,
        303: web.HTTPSeeOther,
        307: web.HTTPTemporaryRedirect,
        308: web.HTTPPermanentRedirect,
    }
    return redirects[status](location=location)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_route("*", "/echo/{tail:.*}", up.echo)
    app.router.add_get("/status/{code}", up.status)
    app.router.add_get("/big", up.big)
    app.router.add_get("/slow", up.slow)
    app.router.add_get("/empty", up.empty)
    app.router.add_route("*", "/redirect", up.redirect)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    up.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield up
    await runner.cleanup()


@pytest.fixture
async def make_tool() -> AsyncIterator[MakeTool]:
    made: list[HTTPTool] = []

    def make(url: str, **options: Any) -> HTTPTool:
        made.append(HTTPTool(HTTPToolConfig(name="t", url=url, **options)))
        return made[-1]

    yield make
    for t in made:
        await t.close()


def echoed(result: ToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    decoded: dict[str, Any] = msgspec.json.decode(result.content)
    return decoded


LOCAL = ["127.0.0.1"]


# --- the guard -------------------------------------------------------------------------------


async def test_loopback_is_refused_by_default(upstream: Upstream, make_tool: MakeTool) -> None:
    result = await run_tool(make_tool(f"{upstream.base}/echo/x"), "{}")
    assert result.is_error
    assert result.content.startswith("error: refused: 127.0.0.1 is a loopback address")
    assert "allow_hosts" in result.content
    assert upstream.hits == []


async def test_allowed_host_is_reached(upstream: Upstream, make_tool: MakeTool) -> None:
    result = await run_tool(make_tool(f"{upstream.base}/echo/x", allow_hosts=LOCAL), "{}")
    assert echoed(result)["path"] == "/echo/x"
    assert upstream.hits == ["/echo/x"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]:8080/", "loopback"),
        ("http://localhost:9/", "loopback"),  # a name that resolves to loopback
        ("http://127.1.2.3/", "loopback"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped IPv6
        ("http://[::ffff:a9fe:a9fe]/", "link-local"),
        ("http://[64:ff9b::a00:1]/", "private"),  # NAT64 of 10.0.0.1
        ("http://224.0.0.1/", "multicast"),
        ("http://100.64.0.1/", "non-public"),  # carrier-grade NAT
    ],
)
async def test_internal_hosts_are_refused(url: str, reason: str, make_tool: MakeTool) -> None:
    result = await run_tool(make_tool(url, timeout_s=2), "{}")
    assert result.is_error
    assert result.content.startswith("error: refused: ")
    assert f"a {reason} address" in result.content


async def test_a_name_is_refused_for_what_it_resolves_to(make_tool: MakeTool) -> None:
    result = await run_tool(make_tool("http://localhost:9/"), {})
    assert result.content.startswith(
        "error: refused: localhost resolves to 127.0.0.1, a loopback address; an http tool may "
        "reach it only if its allow_hosts lists localhost"
    )


async def test_allow_hosts_match_any_spelling_of_an_ip(make_tool: MakeTool) -> None:
    with socket.socket(socket.AF_INET6) as s:  # a port nobody listens on
        try:
            s.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        port = s.getsockname()[1]
    result = await run_tool(make_tool(f"http://[::1]:{port}/", allow_hosts=["[0:0::1]"]), {})
    assert result.content.startswith("error: the request to ::1 failed: ")


async def test_only_http_and_https(make_tool: MakeTool) -> None:
    with pytest.raises(ValueError, match="http or https"):
        make_tool("ftp://example.com/file")
    with pytest.raises(ValueError, match="http or https"):
        make_tool("{target}")  # percent-encoded, "/" and ":" included: it can never work
    result = await run_tool(make_tool("{scheme}://example.com/"), {"scheme": "file"})
    assert result.is_error
    assert result.content.startswith("error: refused: only http and https URLs")


def test_forbidden_reason() -> None:
    def why(address: str) -> str | None:
        return forbidden_reason(ipaddress.ip_address(address))

    assert why("93.184.216.34") is None
    assert why("2606:4700:4700::1111") is None
    assert why("127.0.0.2") == "loopback"
    assert why("192.168.1.1") == "private"
    assert why("fd00::1") == "private"
    assert why("fe80::1") == "link-local"
    assert why("::") == "unspecified"
    assert why("2002:7f00:1::") == "loopback"  # 6to4 of 127.0.0.1
    assert why("240.0.0.1") == "reserved"


# --- requests --------------------------------------------------------------------------------


async def test_url_template_is_filled_and_encoded(upstream: Upstream, make_tool: MakeTool) -> None:
    weather = make_tool(
        f"{upstream.base}/echo/{{city}}/days/{{days}}?v=2",
        allow_hosts=LOCAL,
        parameters={"properties": {"days": {"type": "integer"}}},
    )
    # placeholders become required parameters, strings unless the schema says otherwise
    assert weather.parameters == {
        "type": "object",
        "properties": {"days": {"type": "integer"}, "city": {"type": "string"}},
        "required": ["city", "days"],
    }
    result = echoed(
        await run_tool(weather, '{"city": "São Paulo/../x?y=1#z", "days": 3, "unit": "c"}')
    )
    assert result["path"] == "/echo/S%C3%A3o%20Paulo%2F..%2Fx%3Fy%3D1%23z/days/3"
    assert result["query"] == [["v", "2"], ["unit", "c"]]  # placeholders are not repeated
    # "." and ".." alone would climb the path
    result = echoed(await run_tool(weather, {"city": "..", "days": 1}))
    assert result["path"] == "/echo/%2E%2E/days/1"


async def test_get_sends_a_query(upstream: Upstream, make_tool: MakeTool) -> None:
    search = make_tool(f"{upstream.base}/echo/search", method="GET", allow_hosts=LOCAL)
    result = echoed(
        await run_tool(
            search, {"q": "a b&c", "tag": ["x", "y"], "exact": True, "n": 2, "skip": None}
        )
    )
    assert result["method"] == "GET"
    assert result["query"] == [
        ["q", "a b&c"],
        ["tag", "x"],
        ["tag", "y"],
        ["exact", "true"],
        ["n", "2"],
    ]
    assert result["body"] == ""


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_body_methods_send_json(upstream: Upstream, make_tool: MakeTool, method: str) -> None:
    create = make_tool(f"{upstream.base}/echo/items/{{kind}}", method=method, allow_hosts=LOCAL)
    result = echoed(await run_tool(create, {"kind": "book", "title": "Dune", "tags": {"x": [1]}}))
    assert result["method"] == method
    assert result["path"] == "/echo/items/book"
    assert result["query"] == []
    assert msgspec.json.decode(result["body"]) == {"title": "Dune", "tags": {"x": [1]}}
    assert result["headers"]["content-type"] == "application/json"


async def test_delete_sends_a_query(upstream: Upstream, make_tool: MakeTool) -> None:
    remove = make_tool(f"{upstream.base}/echo/items", method="DELETE", allow_hosts=LOCAL)
    result = echoed(await run_tool(remove, {"id": 7}))
    assert (result["method"], result["query"], result["body"]) == ("DELETE", [["id", "7"]], "")


async def test_configured_headers_are_sent(upstream: Upstream, make_tool: MakeTool) -> None:
    tool = make_tool(
        f"{upstream.base}/echo/h",
        method="POST",
        allow_hosts=LOCAL,
        headers={"Authorization": "Bearer s3cret", "X-Team": "blue", "content-type": "text/x"},
    )
    headers = echoed(await run_tool(tool, {}))["headers"]
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["x-team"] == "blue"
    assert headers["content-type"] == "text/x"  # the configured one wins
    assert headers["host"] == upstream.base.removeprefix("http://")


async def test_arguments_are_checked_against_the_schema(make_tool: MakeTool) -> None:
    tool = make_tool(
        "https://example.com/{id}",
        parameters={
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "mode": {"enum": ["fast", "slow"]},
                "ids": {"type": "array", "items": {"type": "integer"}},
                "filter": {
                    "type": "object",
                    "properties": {"name": {"type": ["string", "null"]}},
                    "required": ["name"],
                    "additionalProperties": False,
                },
                "either": {"anyOf": [{"type": "string"}, {"type": "boolean"}]},
            },
        },
    )
    cases = {
        "{}": "missing required argument `id`",
        '{"id": "7"}': "argument `id`: expected integer, got string",
        '{"id": true}': "argument `id`: expected integer, got boolean",
        '{"id": 1, "mode": "x"}': 'argument `mode`: must be one of "fast", "slow"',
        '{"id": 1, "ids": [1, 2.5]}': "argument `ids[1]`: expected integer, got number",
        '{"id": 1, "filter": {}}': "missing required argument `filter.name`",
        '{"id": 1, "filter": {"name": 1}}': "argument `filter.name`: expected string or null",
        '{"id": 1, "filter": {"name": null, "x": 1}}': "unknown argument `filter.x`",
        '{"id": 1, "either": 3}': "argument `either`: matches none of its forms",
    }
    for arguments, message in cases.items():
        result = await run_tool(tool, arguments)
        assert result.is_error
        assert result.content.startswith(f"error: invalid arguments: {message}"), result.content


# --- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [404, 422, 500, 503])
async def test_error_statuses_are_error_results(
    upstream: Upstream, make_tool: MakeTool, code: int
) -> None:
    result = await run_tool(make_tool(f"{upstream.base}/status/{code}", allow_hosts=LOCAL), {})
    assert result.is_error
    assert result.content.startswith(f"error: HTTP {code} ")
    assert "nope nope" in result.content
    assert len(result.content) < 600  # a short body, not all 5000 bytes


async def test_a_large_answer_is_truncated(upstream: Upstream, make_tool: MakeTool) -> None:
    tool = make_tool(f"{upstream.base}/big", allow_hosts=LOCAL, max_response_bytes=1500)
    result = await run_tool(tool, {})
    assert not result.is_error
    assert result.content == "x" * 1500 + "\n[truncated: the response is longer than 1500 bytes]"
    # whole, when it fits
    tool = make_tool(f"{upstream.base}/big", allow_hosts=LOCAL, max_response_bytes=20_000)
    assert (await run_tool(tool, {})).content == "x" * 20_000


async def test_an_empty_answer_says_so(upstream: Upstream, make_tool: MakeTool) -> None:
    result = await run_tool(make_tool(f"{upstream.base}/empty", allow_hosts=LOCAL), {})
    assert result == ToolResult("HTTP 204 No Content (no body)")


async def test_timeout(upstream: Upstream, make_tool: MakeTool) -> None:
    tool = make_tool(f"{upstream.base}/slow", allow_hosts=LOCAL, timeout_s=0.2)
    result = await run_tool(tool, {})
    assert result.is_error
    assert "timed out after 0.2s" in result.content
    # the agent may lower the timeout after construction; the next call obeys it
    tool.timeout_s = 0.05
    result = await run_tool(tool, {})
    assert "timed out after 0.05s" in result.content


async def test_unreachable_host_is_an_error_result(make_tool: MakeTool) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await run_tool(make_tool(f"http://127.0.0.1:{port}/", allow_hosts=LOCAL), {})
    assert result.is_error
    assert result.content.startswith("error: the request to 127.0.0.1 failed: ")


# --- redirects -------------------------------------------------------------------------------


async def test_redirects_are_followed_and_checked(upstream: Upstream, make_tool: MakeTool) -> None:
    tool = make_tool(f"{upstream.base}/redirect", allow_hosts=LOCAL)
    assert echoed(await run_tool(tool, {"to": "/echo/moved"}))["path"] == "/echo/moved"
    result = await run_tool(tool, {"to": "http://169.254.169.254/latest/meta-data/"})
    assert result.is_error
    assert "refused: 169.254.169.254 is a link-local address" in result.content
    result = await run_tool(tool, {"to": "/redirect?to=/redirect"})
    assert result == ToolResult("error: more than 5 redirects", is_error=True)


async def test_redirect_method_and_headers(upstream: Upstream, make_tool: MakeTool) -> None:
    port = upstream.base.rsplit(":", 1)[1]
    tool = make_tool(
        f"{upstream.base}/redirect?status={{status}}&to={{to}}",
        method="POST",
        allow_hosts=["127.0.0.1", "localhost"],
        headers={"Authorization": "Bearer s3cret"},
    )
    # 307 keeps the method and body, and the same origin keeps the headers
    result = echoed(await run_tool(tool, {"to": "/echo/a", "status": "307", "note": "hi"}))
    assert result["method"] == "POST"
    assert msgspec.json.decode(result["body"]) == {"note": "hi"}
    assert result["headers"]["authorization"] == "Bearer s3cret"
    # 303 turns into a GET without a body; another origin gets none of the configured headers
    to = f"http://localhost:{port}/echo/b"
    result = echoed(await run_tool(tool, {"to": to, "status": "303", "note": "hi"}))
    assert (result["method"], result["body"]) == ("GET", "")
    assert "authorization" not in result["headers"]
    assert result["headers"]["host"] == f"localhost:{port}"


# --- rebinding -------------------------------------------------------------------------------


async def test_the_pinned_backend_knows_only_what_was_checked() -> None:
    backend = PinnedBackend()
    with pytest.raises(httpcore2.ConnectError, match="not checked"):
        backend.addresses("example.com")
    with backend.pin("example.com", ["93.184.216.34", "2606:2800::1"]):
        assert backend.addresses("EXAMPLE.com.") == ["93.184.216.34", "2606:2800::1"]
        # a second call's pin of the same host: counted, and both were checked
        with backend.pin("example.com", ["93.184.216.34"]):
            assert backend.addresses("example.com") == ["93.184.216.34"]
        assert backend.addresses("example.com") == ["93.184.216.34"]
    with pytest.raises(httpcore2.ConnectError, match="not checked"):
        await backend.connect_tcp("example.com", 443)


async def test_the_tool_connects_only_through_its_pins(
    upstream: Upstream, make_tool: MakeTool
) -> None:
    """The client never asks DNS: a name that does not exist still reaches the pinned
    address, and outside a pin even a real name cannot be connected to."""
    tool = make_tool(f"{upstream.base}/echo/x", allow_hosts=LOCAL)
    http = tool._client()
    port = upstream.base.rsplit(":", 1)[1]
    with tool._backend.pin("rebound.invalid", ["127.0.0.1"]):
        resp = await http.get(f"http://rebound.invalid:{port}/echo/pinned")
        assert resp.json()["headers"]["host"] == f"rebound.invalid:{port}"
    with pytest.raises(httpx2.ConnectError, match="not checked"):
        await http.get(f"http://localhost:{port}/echo/unpinned")
    assert upstream.hits == ["/echo/pinned"]


async def test_a_call_resolves_once_and_connects_where_it_checked(
    upstream: Upstream, make_tool: MakeTool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name's second answer would be another address, but the connection
    goes to the first one, the one checked."""
    port = int(upstream.base.rsplit(":", 1)[1])
    answers = ["127.0.0.1", "10.255.255.1"]
    asked: list[str] = []

    async def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        address = answers[min(len(asked), 2) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    tool = make_tool(
        f"http://rebind.invalid:{port}/echo/x", allow_hosts=["rebind.invalid"], timeout_s=2
    )
    assert echoed(await run_tool(tool, {}))["headers"]["host"] == f"rebind.invalid:{port}"
    assert asked == ["rebind.invalid"]
    assert upstream.hits == ["/echo/x"]
    # a name that resolves to a private address is refused before any connection
    refused = make_tool(f"http://rebind.invalid:{port}/echo/y", timeout_s=2)
    result = await run_tool(refused, {})
    assert result.content.startswith(
        "error: refused: rebind.invalid resolves to 10.255.255.1, a private address"
    )
    assert upstream.hits == ["/echo/x"]


async def test_tls_names_the_host_while_connecting_to_the_pinned_address(
    make_tool: MakeTool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The connection goes to the checked address, yet TLS asks for the host by name (SNI)
    and checks the certificate against it, as it would without the pin."""
    cert, key = _self_signed("pinned.test", tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)

    async def shut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(shut, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]

    async def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    async with server:
        tool = make_tool(f"https://pinned.test:{port}/", allow_hosts=["pinned.test"], timeout_s=2)
        result = await run_tool(tool, {})
    assert names == ["pinned.test"]
    # a certificate nobody vouches for is refused, as without the pin
    assert result.content.startswith("error: the request to pinned.test failed: ")
    assert "CERTIFICATE_VERIFY_FAILED" in result.content


def _self_signed(host: str, where: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = where / "cert.pem", where / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_close_and_reopen(upstream: Upstream, make_tool: MakeTool) -> None:
    tool = make_tool(f"{upstream.base}/echo/x", allow_hosts=LOCAL)
    assert not (await run_tool(tool, {})).is_error
    await tool.close()
    await tool.close()
    assert not (await run_tool(tool, {})).is_error
    assert repr(tool) == f"HTTPTool('t', GET {upstream.base}/echo/x)"


async def test_a_tool_safe_to_repeat_sends_the_calls_idempotency_key(
    upstream: Upstream, make_tool: MakeTool
) -> None:
    safe = make_tool(f"{upstream.base}/echo/pay", method="POST", allow_hosts=LOCAL, idempotent=True)
    plain = make_tool(f"{upstream.base}/echo/pay", method="POST", allow_hosts=LOCAL)
    CALL_KEY.set("run_1:call_9")  # what the loop sets for each call it runs
    sent = [echoed(await run_tool(t, {"amount": 5}))["headers"] for t in (safe, plain)]
    assert sent[0]["idempotency-key"] == "run_1:call_9" and safe.idempotent
    assert "idempotency-key" not in sent[1] and not plain.idempotent


def test_approval_rules_from_the_config(make_tool: MakeTool) -> None:
    assert make_tool("http://x/", approval="always").approval == "always"
    assert make_tool("http://x/").approval == "never"
    rule = make_tool("http://x/", approval="tests.agent.durable_tools:large").approval
    assert callable(rule) and rule({"amount": 500}) and not rule({"amount": 5})
    with pytest.raises(ValueError, match="approval"):
        make_tool("http://x/", approval="sometimes")
