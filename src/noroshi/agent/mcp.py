"""MCP servers as agent tools, through the official `mcp` SDK (stdio and streamable HTTP).

The SDK's transports and `ClientSession` are anyio context managers whose cancel scopes must be
entered and left by one task, so each connection runs in a task of its own that holds them open
(`_Connection`). Tool calls come from the agent's tasks and go straight through the session,
which supports that: each request waits on its own stream, and only the receive loop lives in
the connection's task.

A connection that drops (the process died, the HTTP server went away or forgot our session) is
noticed when its read stream ends or when a call fails; the next call connects again, lists the
tools again and retries once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from collections import deque
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, BinaryIO, Self

import anyio
import httpx2
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client, types
from mcp.client._transport import ReadStream, TransportStreams
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage

from noroshi import __version__
from noroshi.agent.tools import Tool, ToolError, load_approval
from noroshi.config import ConfigError, MCPServerConfig

__all__ = ["MCPConnectError", "MCPServer", "MCPTool", "ToolError"]

log = logging.getLogger("noroshi.mcp")

_CLIENT_INFO = types.Implementation(name="noroshi", version=__version__)
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
_NAME_MAX = 64
_MAX_PAGES = 100  # of tools/list: a server that pages forever cannot hang start()
_CLOSE_TIMEOUT_S = 10.0  # the SDK's stdio shutdown takes at most ~6.5 s (stdin, SIGTERM, SIGKILL)
_HTTP_READ_TIMEOUT_S = 300.0  # the server-to-client SSE stream may idle this long
_STDERR_LINE_MAX = 2000
_STDERR_LINES_PER_MINUTE = 100
_STDERR_TAIL = 20  # a server's last stderr lines, logged at WARNING when it fails


class MCPConnectError(ConnectionError):
    """An MCP server could not be reached, started or initialized, or dropped the connection
    and did not come back."""


class MCPTool(Tool):
    """One tool of an MCP server, named `<server>__<tool>`; calls go through its server."""

    def __init__(
        self,
        server: MCPServer,
        remote_name: str,
        name: str,
        description: str,
        parameters: dict[str, Any],
        timeout_s: float,
    ) -> None:
        self.server = server
        self.remote_name = remote_name
        self.name = name
        self.description = description
        self.parameters = parameters
        self.timeout_s = timeout_s

    async def call(self, arguments: dict[str, Any]) -> str:
        return await self.server.call_tool(self.remote_name, arguments, self.timeout_s)


class MCPServer:
    """One configured MCP server: connected at start, its tools listed, reconnected if it drops."""

    def __init__(self, config: MCPServerConfig) -> None:
        if bool(config.command) == bool(config.url):
            raise ConfigError(f"mcp_servers '{config.name}': set one of `command` or `url`")
        self.config = config
        self.name = config.name
        try:
            self.approval = load_approval(config.approval)
        except ValueError as exc:
            raise ConfigError(f"mcp_servers '{config.name}'.approval: {exc}") from None
        self._tools: dict[str, MCPTool] = {}
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()  # one connect at a time
        self._closed = False

    @property
    def tools(self) -> list[Tool]:
        """The tools of the last listing (kept while the server is down)."""
        return list(self._tools.values())

    async def start(self) -> None:
        """Connect, initialize and list the tools; raise `MCPConnectError` if that fails."""
        async with self._lock:
            if self._closed:
                raise MCPConnectError(f"MCP server '{self.name}' is closed")
            await self._connect()

    async def call_tool(self, name: str, arguments: dict[str, Any], timeout_s: float) -> str:
        """Call the server's tool `name` (its own name, not namespaced) and return its text.

        Raises `ToolError` when the tool reports an error, `TimeoutError` past `timeout_s`, and
        `MCPConnectError` when the server cannot be reached. A dropped connection is made again
        once and the call retried once.
        """
        conn = await self._live()
        try:
            return await conn.call(name, arguments, timeout_s)
        except _Dropped:
            conn = await self._live(stale=conn)
        try:
            return await conn.call(name, arguments, timeout_s)
        except _Dropped as exc:
            raise MCPConnectError(f"MCP server '{self.name}': connection lost: {exc}") from exc

    async def close(self) -> None:
        """Stop the connection (and the process, for stdio); later calls fail."""
        async with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    async def _live(self, stale: _Connection | None = None) -> _Connection:
        """The current connection, or a new one if it is over or is `stale` (it just failed)."""
        conn = self._conn
        if conn is not None and conn.alive and conn is not stale:
            return conn
        async with self._lock:
            if self._closed:
                raise MCPConnectError(f"MCP server '{self.name}' is closed")
            conn = self._conn
            if conn is not None and conn.alive and conn is not stale:
                return conn
            self._conn = None
            if conn is not None:
                await conn.close()
            conn = await self._connect()
            log.info("MCP server %s: reconnected", self.name)
            return conn

    async def _connect(self) -> _Connection:
        conn = _Connection(self.config)
        await conn.wait_ready()
        self._conn = conn
        self._list(conn.listing)
        return conn

    def _list(self, listing: list[types.Tool]) -> None:
        """Make the tools from a listing, keeping the objects of tools already known (an agent
        may hold them, with its own timeout set)."""
        tools: dict[str, MCPTool] = {}
        for spec in listing:
            name = _tool_name(self.name, spec.name)
            if name in tools:
                log.warning(
                    "MCP server %s: tool %r skipped: its name clashes", self.name, spec.name
                )
                continue
            parameters = {"type": "object", **spec.input_schema}
            description = spec.description or spec.title or ""
            tool = self._tools.get(name)
            if tool is not None and tool.remote_name == spec.name:
                tool.description, tool.parameters = description, parameters
            else:
                tool = MCPTool(
                    self, spec.name, name, description, parameters, self.config.timeout_s
                )
            # a server that says a tool is idempotent (or only reads) lets a resumed run
            # repeat a call of it that was cut off
            hints = spec.annotations
            tool.idempotent = hints is not None and bool(
                hints.idempotent_hint or hints.read_only_hint
            )
            tool.approval = self.approval
            tools[name] = tool
        self._tools = tools


class _Dropped(Exception):
    """The connection ended under a call: worth one reconnect and one retry."""


class _Connection:
    """One connection, run by a task of its own that holds the SDK's context managers open."""

    def __init__(self, config: MCPServerConfig) -> None:
        self.config = config
        self.session: ClientSession | None = None
        self.listing: list[types.Tool] = []
        self.error: BaseException | None = None
        self.ready = asyncio.Event()  # connected, or failed to
        self.over = asyncio.Event()  # the transport is gone, or we stop it
        self._why = "the server closed the connection"
        self._stopping = False
        self.stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL)  # shown when it fails
        self._scope = anyio.CancelScope()
        self._task = asyncio.create_task(self._run(), name=f"mcp:{config.name}")

    @property
    def alive(self) -> bool:
        return self.session is not None and not self.over.is_set()

    async def wait_ready(self) -> None:
        """Wait until connected; on failure or timeout stop the task and raise MCPConnectError."""
        config, timeout_s = self.config, self.config.timeout_s
        # the program or the address, not its arguments or query (they may hold secrets)
        where = config.command[0] if config.command else config.url.partition("?")[0]
        server = f"MCP server '{config.name}' ({where})"
        try:
            async with asyncio.timeout(timeout_s):
                await self.ready.wait()
        except TimeoutError:
            await asyncio.shield(self.close())
            raise MCPConnectError(f"{server} did not answer within {timeout_s}s") from None
        except BaseException:
            await asyncio.shield(self.close())
            raise
        if self.session is None:
            await asyncio.shield(self.close())
            for line in self.stderr_tail:  # INFO while it works; the reason it failed, now
                log.warning("MCP server %s: %s", config.name, line)
            reason = _describe(self.error) if self.error else "it closed the connection"
            raise MCPConnectError(f"{server} cannot be reached: {reason}") from self.error

    async def call(self, name: str, arguments: dict[str, Any], timeout_s: float) -> str:
        """Call a tool on this connection; `_Dropped` if the connection ended under the call."""
        if self.session is None or self.over.is_set():
            raise _Dropped("the connection is over")
        try:
            async with asyncio.timeout(timeout_s):
                result = await self.session.call_tool(
                    name, arguments, read_timeout_seconds=timeout_s
                )
        except TimeoutError:
            raise TimeoutError(f"MCP tool '{name}' took longer than {timeout_s}s") from None
        except MCPError as exc:
            if exc.code == types.REQUEST_TIMEOUT:
                raise TimeoutError(f"MCP tool '{name}' took longer than {timeout_s}s") from exc
            if exc.code == types.CONNECTION_CLOSED or self.over.is_set():
                raise _Dropped(exc.message) from exc
            raise ToolError(exc.message) from exc
        except Exception as exc:  # a result the SDK rejects (bad shape, input required)
            raise ToolError(f"MCP tool '{name}': {_describe(exc)}") from exc
        text = _result_text(result)
        if result.is_error:
            raise ToolError(text or f"MCP tool '{name}' failed")
        return text

    async def close(self) -> None:
        """Stop the task: the SDK closes the session and stops the process (bounded)."""
        # A connection already over was lost, not stopped: the task still logs why.
        if not self.over.is_set():
            self._stopping = True
        self.over.set()
        self._scope.cancel()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await asyncio.shield(self._task)
        except TimeoutError:
            log.error("MCP server %s: the connection did not close in time", self.config.name)
            self._task.cancel()  # last resort: anyio may complain about its scopes

    async def _run(self) -> None:
        woken = False  # by `over`: the reason is already in `_why`
        try:
            with self._scope:
                async with AsyncExitStack() as stack:
                    read, write = await self._open(stack)
                    session = await stack.enter_async_context(
                        ClientSession(
                            _WatchedStream(read, self.over),
                            write,
                            read_timeout_seconds=self.config.timeout_s,
                            client_info=_CLIENT_INFO,
                        )
                    )
                    await session.initialize()
                    self.listing = await _list_tools(session)
                    self.session = session
                    self.ready.set()
                    await self.over.wait()
                    woken = True
        except Exception as exc:
            # Errors while winding down after `over` are the SDK's teardown races, not news.
            self.error = exc
            if not woken:
                self._why = _describe(exc)
        finally:
            self.over.set()
            self.ready.set()
            if self.session is not None and not self._stopping:
                for line in self.stderr_tail:
                    log.warning("MCP server %s: %s", self.config.name, line)
                log.warning("MCP server %s: connection lost: %s", self.config.name, self._why)

    async def _open(self, stack: AsyncExitStack) -> TransportStreams:
        config = self.config
        if config.url:
            http = httpx2.AsyncClient(
                headers=config.headers,
                timeout=httpx2.Timeout(config.timeout_s, read=_HTTP_READ_TIMEOUT_S),
                event_hooks={"response": [self._on_response]},
            )
            await stack.enter_async_context(http)
            return await stack.enter_async_context(
                streamable_http_client(config.url, http_client=http)
            )
        params = StdioServerParameters(
            command=config.command[0], args=config.command[1:], env=config.env or None
        )
        read_fd, write_fd = os.pipe()
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        stderr = asyncio.create_task(_log_stderr(pipe, config.name, self.stderr_tail))
        stack.push_async_callback(_finish, stderr)
        # The child keeps its own copy of the pipe; closing ours lets the reader see it exit.
        with os.fdopen(write_fd, "w") as errlog:
            return await stack.enter_async_context(stdio_client(params, errlog=errlog))

    async def _on_response(self, response: httpx2.Response) -> None:
        """A 404 to a request in our session means the server forgot it (it restarted): this
        connection is over, and the spec says to start a new session."""
        if response.status_code == 404 and "mcp-session-id" in response.request.headers:
            self._why = "the server forgot the session (HTTP 404)"
            self.over.set()


class _WatchedStream:
    """The transport's read stream, setting `over` once the session stops reading it: for stdio
    that is the only sign that the process died."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], over: asyncio.Event) -> None:
        self._inner = inner
        self._over = over

    @property
    def last_context(self) -> Any:
        # The HTTP transport's stream carries the sender's context; the session looks for it.
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        return await self._inner.receive()

    async def aclose(self) -> None:
        self._over.set()
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._over.set()
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _list_tools(session: ClientSession) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _tool_name(server: str, tool: str) -> str:
    """`<server>__<tool>`, made to fit ^[a-zA-Z0-9_-]{1,64}$; a long name keeps a hash of the
    tool's own name so that two long names stay apart."""
    name = _UNSAFE.sub("_", f"{server}__{tool}")
    if len(name) > _NAME_MAX:
        digest = hashlib.sha256(tool.encode()).hexdigest()[:8]
        name = f"{name[: _NAME_MAX - 9]}_{digest}"
    return name


def _result_text(result: types.CallToolResult) -> str:
    """Text blocks as they are, other blocks (images, resources) as JSON; the structured result
    when there is no content at all."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        else:
            block_json = block.model_dump(mode="json", by_alias=True, exclude_none=True)
            parts.append(json.dumps(block_json, ensure_ascii=False))
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _describe(exc: BaseException) -> str:
    """The message of an error, looking inside the exception groups anyio wraps errors in."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


async def _log_stderr(pipe: BinaryIO, server: str, tail: deque[str]) -> None:
    """Log a stdio server's stderr, a line at a time, at most _STDERR_LINES_PER_MINUTE lines a
    minute so that a chatty server cannot flood the log (what is left out is counted); the
    last lines are kept in `tail`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        raise
    window, logged, dropped = loop.time(), 0, 0

    def emit(raw: bytes) -> None:
        nonlocal window, logged, dropped
        if loop.time() - window >= 60:
            if dropped:
                log.warning("MCP server %s: %d stderr lines not logged", server, dropped)
            window, logged, dropped = loop.time(), 0, 0
        if logged >= _STDERR_LINES_PER_MINUTE:
            dropped += 1
            return
        logged += 1
        line = raw.decode(errors="replace").rstrip()
        if len(line) > _STDERR_LINE_MAX:
            line = line[:_STDERR_LINE_MAX] + "…"
        tail.append(line)
        log.info("MCP server %s: %s", server, line)

    buffer = b""
    try:
        while chunk := await reader.read(65536):
            *lines, buffer = (buffer + chunk).split(b"\n")
            if len(buffer) > _STDERR_LINE_MAX:
                lines.append(buffer)
                buffer = b""
            for line in lines:
                emit(line)
        if buffer:
            emit(buffer)
        if dropped:
            log.warning("MCP server %s: %d stderr lines not logged", server, dropped)
    finally:
        transport.close()


async def _finish(task: asyncio.Task[None]) -> None:
    """Let the stderr reader log what is left once the process is gone; stop it if a child of
    the server still holds the pipe open. Shielded: it runs while the connection is cancelled."""
    with anyio.CancelScope(shield=True):
        done, _ = await asyncio.wait([task], timeout=1.0)
        if not done:
            task.cancel()
            await asyncio.wait([task])
    if not task.cancelled() and (exc := task.exception()):
        log.warning("MCP server stderr: cannot read it: %s", _describe(exc))
