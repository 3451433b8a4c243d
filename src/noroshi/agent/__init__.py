"""The agent runtime: tools (Python functions, HTTP requests, MCP servers) and the loop that
lets a model call them."""

from noroshi.agent.http_tools import HTTPTool
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
