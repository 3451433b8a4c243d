"""Tools for the agent endpoint tests."""

from __future__ import annotations

import asyncio

from noroshi.agent import tool

CALLS: list[str] = []


@tool
def lookup_city(city: str) -> str:
    """The population of a city."""
    CALLS.append(city)
    return f"{city}: 1000 people"


@tool
async def slow_tool(seconds: float) -> str:
    """Wait, then answer."""
    await asyncio.sleep(seconds)
    return "done"


@tool
def broken_tool() -> str:
    """Always fails."""
    raise RuntimeError("the tool broke")
