"""Example tools for the tool-layer tests: imported by `load_tool`, so they live at module level."""

from __future__ import annotations

import asyncio
import enum
import time
from typing import Annotated, Literal

import msgspec

from noroshi.agent import tool

STOPPED: list[str] = []  # what the cancellation test saw


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Point(msgspec.Struct):
    """A place on the map."""

    lat: float
    lon: float


@tool
def get_weather(city: str, unit: Literal["c", "f"] = "c", days: int | None = None) -> str:
    """Get the weather forecast for a city.

    More detail that is not part of the description.

    Args:
        city: The city's name,
            in English.
        unit (str): Celsius or Fahrenheit.
        days: How many days ahead.

    Returns:
        The forecast.
    """
    return f"{city}: 21{unit.upper()}" + (f" for {days} days" if days else "")


@tool(name="sum-numbers", timeout_s=5)
async def add_all(numbers: list[int], scale: float = 1.0) -> dict[str, float]:
    """Add numbers."""
    return {"total": sum(numbers) * scale}


def locate(
    where: Point,
    label: Annotated[str, msgspec.Meta(description="A short label.", max_length=20)] = "",
    unit: Unit = Unit.CELSIUS,
    tags: list[str] = ["a", "b"],  # noqa: B006 - shows each call gets its own copy
) -> str:
    """Put a pin on the map.
    The description goes on over two lines.

    Args:
        label: Ignored: the Annotated description wins.
        tags: Labels to attach.
    """
    tags.append("seen")
    return f"{where.lat},{where.lon} {label} {unit.value} {tags}"


def positional(a: int, /, b: int = 2) -> int:
    """Positional-only parameters still work."""
    return a * 10 + b


def blocking(seconds: float) -> str:
    """Block the calling thread, as careless sync code does."""
    time.sleep(seconds)
    return "slept"


async def slow(seconds: float) -> str:
    """Sleep without blocking; notes whether it was stopped."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        STOPPED.append("slow")
        raise
    return "done"


def broken() -> str:
    """Always fails."""
    raise RuntimeError("the disk is on fire")


def returns_nothing() -> None:
    """No result at all."""


class Node(msgspec.Struct):
    """A tree, to show recursive types keep their $defs."""

    value: int
    children: list[Node] = []


def tree_sum(root: Node) -> int:
    """Sum a tree."""
    return root.value + sum(tree_sum(c) for c in root.children)


NOT_A_TOOL = 42
