"""HTTP tools: each call is one configured HTTP request, kept away from internal hosts.

Why the guard: the model writes the arguments, and what it reads can steer it (prompt
injection), so a templated URL must not become a way into the private network or a cloud
metadata endpoint. Before connecting, every address the host resolves to is checked; then the
connection goes to those addresses only, through a network backend that connects to what the
check found (the Host header and TLS's server name stay the host's), so a DNS answer that
changes between check and connect (rebinding) changes nothing. Redirects are
followed by hand, each hop checked the same way, and configured headers (which may hold
secrets) go to the configured origin only.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import http.cookiejar
import ipaddress
import re
import socket
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpcore2
import httpx2
import msgspec

from noroshi.agent.tools import CALL_KEY, Tool, ToolArgumentError, ToolError, load_approval
from noroshi.config import HTTPToolConfig

__all__ = ["HTTPTool", "PinnedBackend", "forbidden_reason"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_REDIRECTS = 5
MAX_CONNECTIONS = 32  # per tool
ERROR_BODY_CHARS = 500  # of a 4xx/5xx answer, shown to the model
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# what may stay unencoded in the configured URL's own text (its reserved characters and escapes)
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class HTTPTool(Tool):
    """A tool that is one HTTP request, built from an `[[http_tools]]` entry.

    `{arg}` in the URL is filled from the arguments (percent-encoded, "/" included) and taken
    out of them; the rest go as the query string (GET, DELETE) or a JSON body (POST, PUT,
    PATCH). The answer's body is the result, cut at `max_response_bytes`; a status of 400 or
    more is an error result.
    """

    def __init__(self, config: HTTPToolConfig) -> None:
        self.name = config.name
        self.description = config.description
        self.timeout_s = config.timeout_s
        self.idempotent = config.idempotent
        try:
            self.approval = load_approval(config.approval)
        except ValueError as exc:
            raise ValueError(f"http tool {config.name!r}: approval: {exc}") from None
        self.config = config
        self._template = _PLACEHOLDER.split(config.url)  # text, name, text, name, ..., text
        self._placeholders = tuple(dict.fromkeys(self._template[1::2]))
        self.parameters = _parameters(config.parameters, self._placeholders)
        scheme, sep, _ = config.url.partition("://")
        if not sep or ("{" not in scheme and scheme.lower() not in ("http", "https")):
            # a templated scheme is checked on each call
            raise ValueError(f"http tool {config.name!r}: the URL must be http or https")
        self._allowed = frozenset(_host_key(h.strip("[]")) for h in config.allow_hosts)
        self._backend = PinnedBackend()
        self._http: httpx2.AsyncClient | None = None

    async def call(self, arguments: dict[str, Any]) -> str:
        _check_value(arguments, self.parameters, "")
        rest = dict(arguments)
        url = self._url(rest)
        body: bytes | None = None
        if self.config.method in _BODY_METHODS:
            body = msgspec.json.encode(rest)
        elif pairs := _query(rest):
            query = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
            url = url.copy_with(query=(url.query + b"&" if url.query else b"") + query.encode())
        try:
            # `timeout_s` is read now: the agent may have lowered it after construction
            async with asyncio.timeout(self.timeout_s):
                return await self._send(url, body)
        except TimeoutError:
            raise ToolError(f"the request timed out after {self.timeout_s:g}s") from None
        except (httpx2.HTTPError, OSError, ValueError) as exc:
            raise ToolError(f"the request to {url.host} failed: {_describe(exc)}") from exc

    async def close(self) -> None:
        """Close the connection pool; the next call opens a new one."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def __repr__(self) -> str:
        return f"HTTPTool({self.name!r}, {self.config.method} {self.config.url})"

    def _url(self, rest: dict[str, Any]) -> httpx2.URL:
        """The URL with its placeholders filled, taking their arguments out of `rest`."""
        values = {name: rest.pop(name) for name in self._placeholders if name in rest}
        parts: list[str] = []
        for i, part in enumerate(self._template):
            if i % 2 == 0:
                parts.append(urllib.parse.quote(part, safe=_URL_SAFE))
            elif part not in values:
                raise ToolArgumentError(f"missing required argument `{part}`")
            else:
                text = urllib.parse.quote(_as_param(values[part]), safe="")
                # "." and ".." are unreserved, yet would climb the path: escape them too
                parts.append(text.replace(".", "%2E") if text in (".", "..") else text)
        # the text is final: an existing escape stays as written, never decoded
        return httpx2.URL("".join(parts))

    async def _send(self, url: httpx2.URL, body: bytes | None) -> str:
        method = self.config.method
        origin = _origin(url)
        http = self._client()
        for _ in range(MAX_REDIRECTS + 1):
            addresses = await self._checked_addresses(url)
            headers = dict(self.config.headers) if _origin(url) == origin else {}
            key = CALL_KEY.get()
            if self.idempotent and key:  # the same on a repeat after a restart
                headers["Idempotency-Key"] = key
            if body is not None and not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
            with self._backend.pin(url.raw_host.decode("ascii"), addresses):
                async with http.stream(method, url, headers=headers, content=body) as resp:
                    location = resp.headers.get("Location")
                    if resp.status_code not in _REDIRECTS or location is None:
                        return await self._answer(resp)
            url = url.join(location)
            if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                method, body = "GET", None  # as browsers do
        raise ToolError(f"more than {MAX_REDIRECTS} redirects")

    async def _checked_addresses(self, url: httpx2.URL) -> list[str]:
        """Where `url`'s host resolves to, refused if any address is not public (unless the
        host is allowed). Resolved on the loop's resolver, so the loop never blocks."""
        if url.scheme not in _DEFAULT_PORTS:
            raise ToolError(f"refused: only http and https URLs may be requested, not {url}")
        host = url.raw_host.decode("ascii")
        if not host:
            raise ToolError(f"refused: {url} has no host")
        addresses = await _resolve(host, url.port or _DEFAULT_PORTS[url.scheme])
        if _host_key(host) not in self._allowed:
            for ip in addresses:
                why = forbidden_reason(ipaddress.ip_address(ip))
                if why is not None:
                    where = f"{host} is" if ip == host else f"{host} resolves to {ip},"
                    raise ToolError(
                        f"refused: {where} a {why} address; an http tool may reach it only "
                        f"if its allow_hosts lists {host}"
                    )
        return addresses

    async def _answer(self, resp: httpx2.Response) -> str:
        limit = self.config.max_response_bytes
        if resp.status_code >= 400:
            limit = min(limit, 4 * ERROR_BODY_CHARS)
        # a longer body stays unread: closing the stream then drops its connection
        data, truncated = await _read_bounded(resp, limit)
        try:
            codec = codecs.lookup(resp.charset_encoding or "utf-8").name
        except LookupError:
            codec = "utf-8"
        text = data.decode(codec, errors="replace")
        status = f"HTTP {resp.status_code} {resp.reason_phrase}".rstrip()
        if resp.status_code >= 400:
            raise ToolError(f"{status}: {text[:ERROR_BODY_CHARS]}" if text else status)
        if truncated:
            text += f"\n[truncated: the response is longer than {limit} bytes]"
        return text or f"{status} (no body)"

    def _client(self) -> httpx2.AsyncClient:
        if self._http is None:
            self._http = httpx2.AsyncClient(
                transport=_PinnedTransport(self._backend),
                cookies=http.cookiejar.CookieJar(_NoCookies()),  # calls must not share state
                timeout=None,  # `call` bounds the whole request
                trust_env=False,  # no proxy from the environment: it would bypass the check
            )
        return self._http


class PinnedBackend(httpcore2.AsyncNetworkBackend):
    """Connects only to addresses that were checked, for the hosts being requested now.

    The connection pool asks its network backend to connect to a URL's host; this one never
    asks DNS but connects to the addresses `pin` holds for that host, in their order, so the
    connection goes exactly where the check said it may. A host that is not pinned is not
    connected to at all. TLS then names the host itself, as the Host header does.
    """

    def __init__(self) -> None:
        self._pins: dict[str, tuple[list[str], int]] = {}
        self._network = httpcore2.AnyIOBackend()

    @contextlib.contextmanager
    def pin(self, host: str, addresses: list[str]) -> Iterator[None]:
        """Let `host` be connected to at `addresses` inside the block. Concurrent pins of one
        host are counted; the latest addresses serve them all (every one of them was checked)."""
        key = _host_key(host)
        held = self._pins.get(key)
        self._pins[key] = (addresses, held[1] + 1 if held else 1)
        try:
            yield
        finally:
            latest, count = self._pins[key]
            if count == 1:
                del self._pins[key]
            else:
                self._pins[key] = (latest, count - 1)

    def addresses(self, host: str) -> list[str]:
        """The checked addresses of `host`; none pinned raises `httpcore2.ConnectError`."""
        held = self._pins.get(_host_key(host))
        if held is None:
            raise httpcore2.ConnectError(f"{host} was not checked before connecting")
        return held[0]

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (the interface httpcore2 calls)
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        failed: Exception | None = None
        for ip in self.addresses(host):
            try:
                return await self._network.connect_tcp(
                    ip, port, timeout, local_address, socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failed = exc  # the next address may answer
        assert failed is not None  # a pin holds at least one address
        raise failed

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("an http tool connects over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._network.sleep(seconds)


class _PinnedTransport(httpx2.AsyncHTTPTransport):
    """httpx2's own transport (its requests, answers and errors) over a pool whose connections
    `backend` makes. (The transport takes no backend, so its pool is replaced.)"""

    def __init__(self, backend: PinnedBackend) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            max_connections=MAX_CONNECTIONS,
            keepalive_expiry=5.0,
            network_backend=backend,
        )


class _NoCookies(http.cookiejar.CookiePolicy):
    """Takes no cookie and sends none."""

    netscape = True
    rfc2965 = hide_cookie2 = False

    def set_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: urllib.request.Request) -> bool:
        return False

    def path_return_ok(self, path: str, request: urllib.request.Request) -> bool:
        return False


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why `ip` is no place for a tool to connect to by default; None for a public address.
    IPv4 addresses carried inside IPv6 ones (mapped, 6to4, NAT64, Teredo) count as themselves."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None]
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        for inner in embedded:
            if inner is not None and (why := forbidden_reason(inner)) is not None:
                return why
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("non-public", not ip.is_global),
    )
    return next((why for why, hit in checks if hit), None)


async def _resolve(host: str, port: int) -> list[str]:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [host]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except OSError as exc:
        raise ToolError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    # no IPv6 zone: it is no part of the check
    found = dict.fromkeys(str(sockaddr[0]).partition("%")[0] for *_, sockaddr in infos)
    if not found:
        raise ToolError(f"cannot resolve {host}: no address")
    return list(found)


async def _read_bounded(resp: httpx2.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether there was more."""
    buf = bytearray()
    async for chunk in resp.aiter_bytes():
        buf += chunk
        if len(buf) > limit:
            break
    return bytes(buf[:limit]), len(buf) > limit


def _origin(url: httpx2.URL) -> tuple[str, bytes, int | None]:
    return url.scheme, url.raw_host, url.port or _DEFAULT_PORTS.get(url.scheme)


def _host_key(host: str) -> str:
    """A host as compared: no trailing dot, lower case, an IP literal in its one spelling."""
    host = host.rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _as_param(value: Any) -> str:
    """One argument as it goes into a URL: JSON's spelling for true, false and containers."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool | list | dict):
        return msgspec.json.encode(value).decode()
    return str(value)


def _query(args: dict[str, Any]) -> list[tuple[str, str]]:
    """The arguments as query pairs: a list repeats its key, a null is left out."""
    pairs: list[tuple[str, str]] = []
    for key, value in args.items():
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                pairs.append((key, _as_param(item)))
    return pairs


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# --- arguments -------------------------------------------------------------------------------


def _parameters(schema: dict[str, Any], placeholders: tuple[str, ...]) -> dict[str, Any]:
    """The configured schema as a JSON object schema, with every URL placeholder required."""
    out = dict(schema)
    if out.setdefault("type", "object") != "object":
        raise ValueError("an http tool's parameters must be a JSON schema of type object")
    properties = dict(out.get("properties") or {})
    required = list(out.get("required") or [])
    for name in placeholders:
        properties.setdefault(name, {"type": "string"})
        if name not in required:
            required.append(name)
    out["properties"] = properties
    if required:
        out["required"] = required
    return out


def _is_integer(v: Any) -> bool:
    if isinstance(v, float):
        return v.is_integer()
    return isinstance(v, int) and not isinstance(v, bool)


_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": _is_integer,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _check_value(value: Any, schema: Any, path: str) -> None:
    """A small JSON-schema check: type, enum, anyOf/oneOf, required, properties,
    additionalProperties and items. Enough to catch what models get wrong."""
    if not isinstance(schema, dict):
        return
    types = schema.get("type")
    names = [types] if isinstance(types, str) else list(types or [])
    known = [t for t in names if t in _TYPES]
    if known and not any(_TYPES[t](value) for t in known):
        raise ToolArgumentError(
            f"argument `{path or '$'}`: expected {' or '.join(known)}, got {_json_type(value)}"
        )
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(msgspec.json.encode(v).decode() for v in schema["enum"])
        raise ToolArgumentError(f"argument `{path or '$'}`: must be one of {allowed}")
    forms = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(forms, list) and forms and not any(_fits(value, f, path) for f in forms):
        raise ToolArgumentError(f"argument `{path or '$'}`: matches none of its forms")
    if isinstance(value, dict):
        _check_object(value, schema, path)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _check_value(item, schema["items"], f"{path}[{i}]")


def _check_object(value: dict[str, Any], schema: dict[str, Any], path: str) -> None:
    prefix = f"{path}." if path else ""
    for name in schema.get("required") or ():
        if name not in value:
            raise ToolArgumentError(f"missing required argument `{prefix}{name}`")
    properties = schema.get("properties") or {}
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            _check_value(item, properties[name], f"{prefix}{name}")
        elif extra is False:
            raise ToolArgumentError(f"unknown argument `{prefix}{name}`")
        else:
            _check_value(item, extra, f"{prefix}{name}")


def _fits(value: Any, schema: Any, path: str) -> bool:
    try:
        _check_value(value, schema, path)
    except ToolArgumentError:
        return False
    return True


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"
