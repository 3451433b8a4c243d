"""MCP servers as tools, against a real MCP server (tests/agent/mcp_server.py) run as a process:
over stdio, and over streamable HTTP on a port of its own."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import types

from noroshi.agent.mcp import (
    MCPConnectError,
    MCPServer,
    MCPTool,
    ToolError,
    _result_text,
    _tool_name,
)
from noroshi.agent.tools import Toolbox, ToolResult, load_approval
from noroshi.config import ConfigError, MCPServerConfig
from tests.conftest import free_port

SERVER = Path(__file__).with_name("mcp_server.py")
TOOLS = {"add", "echo", "slow", "fail", "pid", "shout", "header", "env"}

Connect = Callable[[MCPServerConfig], Awaitable[MCPServer]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Start MCPServers; close them all at the end, and check nothing of theirs is left."""
    before = asyncio.all_tasks()
    started: list[MCPServer] = []

    async def start(config: MCPServerConfig) -> MCPServer:
        server = MCPServer(config)
        started.append(server)
        await server.start()
        return server

    yield start
    for server in started:
        await server.close()
    assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()


def stdio(**kw: Any) -> MCPServerConfig:
    return MCPServerConfig(
        name="calc", command=[sys.executable, str(SERVER), "stdio"], **{"timeout_s": 15.0, **kw}
    )


def by_name(server: MCPServer) -> dict[str, MCPTool]:
    return {t.name: t for t in server.tools if isinstance(t, MCPTool)}


async def call(server: MCPServer, tool: str, **arguments: Any) -> str:
    return await by_name(server)[f"calc__{tool}"].call(arguments)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not come true in time")


# --- stdio -----------------------------------------------------------------------------------


async def test_stdio_lists_namespaced_tools_with_their_schemas(connect: Connect) -> None:
    server = await connect(stdio())
    tools = by_name(server)
    assert set(tools) == {f"calc__{t}" for t in TOOLS}
    add = tools["calc__add"]
    assert add.description == "Add two integers."
    assert add.parameters["type"] == "object"
    assert set(add.parameters["properties"]) == {"a", "b"}
    assert add.parameters["required"] == ["a", "b"]
    assert add.timeout_s == 15.0
    assert add.spec()["function"]["name"] == "calc__add"


async def test_stdio_calls_return_text(connect: Connect) -> None:
    server = await connect(stdio(env={"NOROSHI_TEST_VAR": "from-config"}))
    assert await call(server, "add", a=2, b=3) == "5"
    assert await call(server, "echo", text="héllo\nworld") == "héllo\nworld"
    assert await call(server, "env", name="NOROSHI_TEST_VAR") == "from-config"
    results = await asyncio.gather(*(call(server, "add", a=i, b=i) for i in range(20)))
    assert results == [str(2 * i) for i in range(20)]


async def test_stdio_failing_tool_raises_tool_error_with_its_message(connect: Connect) -> None:
    server = await connect(stdio())
    with pytest.raises(ToolError, match="it broke on purpose"):
        await call(server, "fail")
    with pytest.raises(ToolError):  # arguments the server rejects
        await call(server, "add", a="x")
    assert await call(server, "add", a=1, b=1) == "2"


async def test_stdio_tools_run_in_the_agents_toolbox(connect: Connect) -> None:
    server = await connect(stdio())
    toolbox = Toolbox(server.tools)
    assert await toolbox.run("calc__add", '{"a": 1, "b": 2}') == ToolResult("3")
    # the shared ToolError: its message goes to the model as is
    failed = await toolbox.run("calc__fail", "")
    assert failed.is_error
    assert failed.content.startswith("error: ") and "it broke on purpose" in failed.content
    assert "ToolError" not in failed.content


async def test_stdio_tools_say_whether_they_are_safe_to_repeat_and_need_approval(
    connect: Connect,
) -> None:
    server = await connect(stdio(approval="always"))
    tools = by_name(server)
    # the server's own hint: a resumed run may repeat a cut-off call of it
    assert tools["calc__echo"].idempotent and not tools["calc__add"].idempotent
    toolbox = Toolbox(server.tools)
    assert toolbox.needs_approval("calc__add", '{"a": 1, "b": 2}')  # the server's rule
    # one tool of the server, by the agent's own rule (`[[agents]] approval`)
    tools["calc__echo"].approval = load_approval("tests.agent.durable_tools:large")
    assert not toolbox.needs_approval("calc__echo", '{"amount": 5}')
    assert toolbox.needs_approval("calc__echo", '{"amount": 500}')
    assert toolbox.needs_approval("calc__echo", "not json")  # unreadable: ask


async def test_stdio_slow_tool_times_out_and_the_connection_stays(connect: Connect) -> None:
    server = await connect(stdio())
    pid = await call(server, "pid")
    with pytest.raises(TimeoutError, match=r"longer than 0\.3s"):
        await server.call_tool("slow", {"seconds": 5}, timeout_s=0.3)
    assert await call(server, "add", a=1, b=2) == "3"
    assert await call(server, "pid") == pid


async def test_stdio_reconnects_after_the_process_is_killed(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="noroshi.mcp")
    server = await connect(stdio())
    tools = server.tools
    pid = int(await call(server, "pid"))
    os.kill(pid, signal.SIGKILL)
    await until(lambda: "connection lost" in caplog.text)  # noticed without a call
    pids = await asyncio.gather(*(call(server, "pid") for _ in range(5)))
    assert len(set(pids)) == 1  # one reconnect for all of them
    assert int(pids[0]) != pid
    assert await call(server, "add", a=1, b=2) == "3"
    assert caplog.text.count("MCP server calc: reconnected") == 1
    assert server.tools == tools  # the same objects: agents hold them


async def test_stdio_call_in_flight_when_the_process_dies_is_retried(connect: Connect) -> None:
    server = await connect(stdio())
    pid = int(await call(server, "pid"))
    slow = asyncio.create_task(call(server, "slow", seconds=0.5))
    await asyncio.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    assert await slow == "done"
    assert int(await call(server, "pid")) != pid


async def test_stdio_stderr_goes_to_the_log(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="noroshi.mcp")
    server = await connect(stdio())
    assert await call(server, "shout", text="hi") == "HI"
    await until(lambda: "MCP server calc: shouting: hi" in caplog.text)


async def test_close_stops_the_process_and_leaves_no_task(connect: Connect) -> None:
    before = asyncio.all_tasks()
    server = await connect(stdio())
    pid = int(await call(server, "pid"))
    await server.close()
    assert not alive(pid)
    assert asyncio.all_tasks() - before == set()
    with pytest.raises(MCPConnectError, match="closed"):
        await call(server, "add", a=1, b=2)
    await server.close()  # twice is fine


async def test_start_fails_clearly_when_the_command_is_missing(connect: Connect) -> None:
    with pytest.raises(
        MCPConnectError, match=r"'gone' \(/no-such-mcp-server\) cannot be reached: .*No such file"
    ):
        await connect(MCPServerConfig(name="gone", command=["/no-such-mcp-server"]))


async def test_start_fails_clearly_when_the_process_exits(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="noroshi.mcp")
    code = "import sys; print('no config here', file=sys.stderr)"
    with pytest.raises(MCPConnectError, match="cannot be reached"):
        await connect(MCPServerConfig(name="quits", command=[sys.executable, "-c", code]))
    await until(lambda: "MCP server quits: no config here" in caplog.text)


async def test_start_times_out_when_the_server_never_answers(connect: Connect) -> None:
    code = "import time; time.sleep(60)"
    config = MCPServerConfig(name="mute", command=[sys.executable, "-c", code], timeout_s=0.5)
    with pytest.raises(MCPConnectError, match=r"did not answer within 0\.5s"):
        await connect(config)


def test_config_needs_one_of_command_or_url() -> None:
    with pytest.raises(ConfigError, match="one of"):
        MCPServer(MCPServerConfig(name="none"))
    with pytest.raises(ConfigError, match="one of"):
        MCPServer(MCPServerConfig(name="both", command=["x"], url="http://127.0.0.1:1/mcp"))


# --- streamable HTTP -------------------------------------------------------------------------


class HTTPServer:
    """The test server over streamable HTTP, in a process that can be stopped and started."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *(sys.executable, str(SERVER), "http", str(self.port)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(500):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise AssertionError("the MCP server did not listen")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture
async def http_server() -> AsyncIterator[HTTPServer]:
    server = HTTPServer()
    await server.start()
    yield server
    await server.stop()


def http(url: str, **kw: Any) -> MCPServerConfig:
    return MCPServerConfig(name="calc", url=url, **{"timeout_s": 15.0, **kw})


async def test_http_lists_and_calls_tools(connect: Connect, http_server: HTTPServer) -> None:
    server = await connect(http(http_server.url, headers={"X-Team": "blue"}))
    assert set(by_name(server)) == {f"calc__{t}" for t in TOOLS}
    assert set(by_name(server)["calc__echo"].parameters["properties"]) == {"text"}
    assert await call(server, "add", a=2, b=3) == "5"
    assert await call(server, "echo", text="héllo") == "héllo"
    assert await call(server, "header", name="x-team") == "blue"
    with pytest.raises(ToolError, match="it broke on purpose"):
        await call(server, "fail")
    with pytest.raises(TimeoutError):
        await server.call_tool("slow", {"seconds": 5}, timeout_s=0.3)
    assert await call(server, "add", a=1, b=1) == "2"


async def test_http_reconnects_after_the_server_restarts(
    connect: Connect, http_server: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="noroshi.mcp")
    server = await connect(http(http_server.url))
    pid = int(await call(server, "pid"))
    await http_server.stop()
    await http_server.start()
    new_pid = int(await call(server, "pid"))  # the old session is unknown there: 404
    assert new_pid != pid
    assert "HTTP 404" in caplog.text
    assert "MCP server calc: reconnected" in caplog.text
    assert await call(server, "add", a=1, b=2) == "3"


async def test_http_server_down_then_back(
    connect: Connect, http_server: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="noroshi.mcp")
    server = await connect(http(http_server.url))
    assert await call(server, "add", a=1, b=2) == "3"
    await http_server.stop()
    with pytest.raises(MCPConnectError, match="cannot be reached"):
        await call(server, "add", a=1, b=2)
    assert "MCP server calc: connection lost" in caplog.text
    await http_server.start()
    assert await call(server, "add", a=2, b=2) == "4"


async def test_http_start_fails_clearly_when_nothing_listens(connect: Connect) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    with pytest.raises(MCPConnectError, match="cannot be reached"):
        await connect(http(url))


# --- names and results -----------------------------------------------------------------------


def test_tool_names_fit_the_model_apis_rule() -> None:
    assert _tool_name("fs", "read_file") == "fs__read_file"
    assert _tool_name("fs", "files.read/all") == "fs__files_read_all"
    long_a, long_b = _tool_name("fs", "a" * 80 + "1"), _tool_name("fs", "a" * 80 + "2")
    assert len(long_a) == len(long_b) == 64
    assert long_a != long_b


def test_results_join_text_and_encode_the_rest_as_json() -> None:
    result = types.CallToolResult(
        content=[
            types.TextContent(type="text", text="one"),
            types.ImageContent(type="image", data="aGk=", mime_type="image/png"),
            types.TextContent(type="text", text="two"),
        ]
    )
    text = _result_text(result)
    assert text.splitlines() == [
        "one",
        '{"type": "image", "data": "aGk=", "mimeType": "image/png"}',
        "two",
    ]
    structured = types.CallToolResult(content=[], structured_content={"n": 1, "s": "é"})
    assert _result_text(structured) == '{"n": 1, "s": "é"}'
