"""Contenders measured in turns: all of them served at once, each given the same load in short
rounds one after the other, the order alternating, so that every contender meets the same
machine. On a shared machine a contender measured minutes after another can find it 50%
faster or slower; paired rounds give ratios that hold (the targets are judged on these).

`streams`: streaming req/s, CPU per request and p99 at many connections (wrk when installed).
`first_byte`: time to first byte at one connection (the Python load generator: wrk cannot).
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bench.loadgen import percentile, request_rate
from bench.procs import Proc
from bench.rates import loadgen, rate
from bench.servers import MESSAGES

__all__ = ["DIRECT", "OURS", "Served", "first_byte", "in_turns", "streams"]

T = TypeVar("T")
OURS = "noroshi"
DIRECT = "upstream"  # the fake upstream called directly: no relay at all


@dataclass
class Served:
    """A contender serving while the turns are taken."""

    name: str
    url: str  # its chat completions URL
    proc: Proc
    headers: dict[str, str] = field(default_factory=dict)
    model: str = "m"
    version: str = ""

    def payload(self) -> dict[str, Any]:
        return {"model": self.model, "messages": MESSAGES, "stream": True}


def in_turns(items: Sequence[T], rounds: int) -> Iterator[tuple[int, T]]:
    """Each item once a round, with its round's number, the order alternating so that none
    always goes first; round 0 is a warm-up, which callers leave out of what they report."""
    for n in range(rounds + 1):
        for item in items if n % 2 else items[::-1]:
            yield n, item


def _paired(rounds: list[dict[str, dict[str, Any]]], key: str, name: str) -> dict[str, Any] | None:
    """noroshi's `key` over `name`'s, round by round: the median and the range."""
    ratios = [r[OURS][key] / r[name][key] for r in rounds if r[OURS].get(key) and r[name].get(key)]
    if not ratios:
        return None
    return {
        "median": round(statistics.median(ratios), 3),
        "range": [round(min(ratios), 3), round(max(ratios), 3)],
    }


def _median(rounds: list[dict[str, dict[str, Any]]], name: str, key: str) -> float | None:
    values = [r[name][key] for r in rounds if r[name].get(key) is not None]
    return round(statistics.median(values), 1) if values else None


def streams(served: list[Served], plan: dict[str, Any]) -> dict[str, Any]:
    """Streaming load at `plan["connections"]`, `plan["turn_s"]` a turn, for each contender."""
    measured: list[dict[str, dict[str, Any]]] = [{} for _ in range(plan["turn_rounds"] + 1)]
    for n, s in in_turns(served, plan["turn_rounds"]):
        got = rate(
            s.url, s.payload(), s.headers, plan["connections"], plan["turn_s"], s.proc, warmup=0
        )
        measured[n][s.name] = {
            key: got[key]
            for key in (
                "rps",
                "p50_ms",
                "p99_ms",
                "cpu_us_per_request",
                "success_rate",
                "loadgen_cpu_us_per_request",
                "errors",
            )
            if key in got
        }
    rounds = measured[1:]  # the warm-up round is not counted
    out: dict[str, Any] = {
        "loadgen": loadgen(),
        "connections": plan["connections"],
        "seconds": plan["turn_s"],
        "rounds": rounds,
        "contenders": {},
    }
    for s in served:
        errors: dict[str, int] = {}
        for r in rounds:
            for why, count in r[s.name]["errors"].items():
                errors[why] = errors.get(why, 0) + count
        row: dict[str, Any] = {
            "version": s.version,
            "rps": _median(rounds, s.name, "rps"),
            "cpu_us": _median(rounds, s.name, "cpu_us_per_request"),
            "p50_ms": _median(rounds, s.name, "p50_ms"),
            "p99_ms": _median(rounds, s.name, "p99_ms"),
            "loadgen_cpu_us": _median(rounds, s.name, "loadgen_cpu_us_per_request"),
            "success_rate": min(r[s.name]["success_rate"] for r in rounds),
            "errors": errors,
        }
        if s.name != OURS and any(x.name == OURS for x in served):
            row["ours_over"] = {
                "rps": _paired(rounds, "rps", s.name),
                "cpu_us": _paired(rounds, "cpu_us_per_request", s.name),
                "p99_ms": _paired(rounds, "p99_ms", s.name),
            }
        out["contenders"][s.name] = row
    return out


def first_byte(served: list[Served], plan: dict[str, Any]) -> dict[str, Any]:
    """One stream at a time, `plan["ttfb_s"]` a turn: each contender's time to first byte, and
    what a relay adds over the upstream called directly (the DIRECT contender), taken as the
    median over rounds of each round's difference, so that drift cannot pass for the relay."""
    p50s: dict[str, list[float]] = {s.name: [] for s in served}
    failed: dict[str, int] = {s.name: 0 for s in served}
    for n, s in in_turns(served, plan["ttfb_rounds"]):
        result = asyncio.run(
            request_rate(s.url, s.payload(), s.headers, 1, plan["ttfb_s"], warmup=0.2)
        )
        if n:  # the warm-up round is not counted
            p50s[s.name].append(round(percentile(result.ttfb, 50) * 1000, 3))
            failed[s.name] += result.sent - result.ok

    def added(name: str, over: str) -> dict[str, Any] | None:
        if over not in p50s or name == over:
            return None
        diffs = [a - b for a, b in zip(p50s[name], p50s[over], strict=True)]
        return {
            "median": round(statistics.median(diffs), 3),
            "range": [round(min(diffs), 3), round(max(diffs), 3)],
        }

    return {
        "loadgen": "python (aiohttp), one connection",
        "seconds": plan["ttfb_s"],
        "rounds_p50_ms": p50s,
        "contenders": {
            name: {
                "p50_ms": round(statistics.median(values), 3),
                "failed": failed[name],
                "added_over_direct_ms": added(name, DIRECT),
                "added_over_floor_ms": added(name, "floor-relay"),
            }
            for name, values in p50s.items()
        },
    }
