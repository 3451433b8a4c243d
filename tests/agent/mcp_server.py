"""A small real MCP server for the tests: `python mcp_server.py stdio` or `... http PORT`."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server: MCPServer = MCPServer("noroshi-test", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool(annotations=ToolAnnotations(idempotent_hint=True))
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer: lets a test run past the caller's timeout."""
    await asyncio.sleep(seconds)
    return "done"


@server.tool()
def fail() -> str:
    """Always fail: the client must see an error result with this message."""
    raise ToolError("it broke on purpose")


@server.tool()
def pid() -> int:
    """The server's process id, so a test can kill it."""
    return os.getpid()


@server.tool()
def shout(text: str) -> str:
    """Write to stderr, so a test can see it reach the client's logger."""
    print(f"shouting: {text}", file=sys.stderr, flush=True)
    return text.upper()


@server.tool()
def header(name: str, ctx: Context) -> str:
    """A header of the HTTP request that called this tool ("" when absent or over stdio)."""
    return (ctx.headers or {}).get(name, "")


@server.tool()
def env(name: str) -> str:
    """An environment variable of the server process ("" when unset)."""
    return os.environ.get(name, "")


def exit_with_parent() -> None:
    """Over HTTP nothing ends the server when the test run is killed: watch the parent instead
    (over stdio, the end of stdin does it)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    if sys.argv[1:2] == ["stdio"]:
        server.run("stdio")
    elif sys.argv[1:2] == ["http"] and len(sys.argv) == 3:
        exit_with_parent()
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        sys.exit("usage: mcp_server.py stdio | http PORT")


if __name__ == "__main__":
    main()
