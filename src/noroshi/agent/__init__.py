"""The agent runtime: tools (Python functions, HTTP requests, MCP servers) and the loop that
lets a model call them."""

from typing import TYPE_CHECKING, Any

from noroshi.agent.tools import (
    FunctionTool,
    Tool,
    ToolArgumentError,
    Toolbox,
    ToolError,
    ToolResult,
    load_tool,
    run_tool,
    tool,
)

if TYPE_CHECKING:
    from noroshi.agent.http_tools import HTTPTool

__all__ = [
    "FunctionTool",
    "HTTPTool",
    "Tool",
    "ToolArgumentError",
    "ToolError",
    "ToolResult",
    "Toolbox",
    "load_tool",
    "run_tool",
    "tool",
]


def __getattr__(name: str) -> Any:
    """`HTTPTool` on first use: it loads httpx2, which a server without HTTP tools never needs."""
    if name == "HTTPTool":
        from noroshi.agent.http_tools import HTTPTool

        return HTTPTool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
