"""Tools for the tests of runs that outlive their process: each call is counted in the file
named by $DURABLE_CALLS, which the test reads, since the tools run in the servers' processes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from noroshi.agent import tool


def record(name: str) -> None:
    path = os.environ.get("DURABLE_CALLS")
    if path:
        with Path(path).open("a") as f:
            f.write(name + "\n")


def calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@tool
def quick(word: str) -> str:
    """Answer at once."""
    record("quick")
    return f"quick {word}"


@tool
async def slow(seconds: float) -> str:
    """Wait, then answer; not safe to repeat."""
    record("slow")
    await asyncio.sleep(seconds)
    return "slow done"


@tool(idempotent=True)
async def slow_safe(seconds: float) -> str:
    """Wait, then answer; safe to repeat."""
    record("slow_safe")
    await asyncio.sleep(seconds)
    return "slow_safe done"


@tool(approval="always")
def transfer(amount: int) -> str:
    """Send money: a person approves each call first."""
    record("transfer")
    return f"sent {amount}"


def large(arguments: dict[str, Any]) -> bool:
    return int(arguments.get("amount", 0)) > 100


@tool(approval=large)
def pay(amount: int) -> str:
    """Pay: a person approves amounts over 100."""
    record("pay")
    return f"paid {amount}"
