"""Request rates under a closed loop of connections: from wrk when it is installed, else from
the Python load generator, which then sets the ceiling (it spends more CPU per request than
the fastest relays), so the results say which one measured them."""

from __future__ import annotations

import asyncio
from typing import Any

from bench import wrk
from bench.loadgen import Result, percentile, request_rate
from bench.procs import Proc

__all__ = ["PYTHON", "loadgen", "rate", "summary"]

PYTHON = "python (aiohttp)"


def loadgen() -> str:
    """The load generator that `rate` uses here."""
    return wrk.version() if wrk.which() else PYTHON


def summary(result: Result, cpu_s: float | None = None) -> dict[str, Any]:
    """The Python load generator's result, as the report reads it."""
    out: dict[str, Any] = {
        "sent": result.sent,
        "ok": result.ok,
        "success_rate": round(result.success_rate, 4),
        "rps": round(result.rps, 1),
        "p50_ms": round(percentile(result.latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(result.latencies, 99) * 1000, 2),
        "ttfb_p50_ms": round(percentile(result.ttfb, 50) * 1000, 2),
        "ttfb_p99_ms": round(percentile(result.ttfb, 99) * 1000, 2),
        "errors": result.errors,
    }
    if cpu_s is not None and result.ok:
        out["cpu_us_per_request"] = round(cpu_s / result.ok * 1e6, 1)
    return out


def rate(
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    connections: int,
    seconds: float,
    proc: Proc | None = None,
    warmup: float = 1.0,
) -> dict[str, Any]:
    """`connections` clients for `seconds` after `warmup`; with `proc`, the CPU per request of
    its process tree, and (wrk's) the load generator's own."""
    if wrk.which() is None:
        if warmup:  # apart, so that its CPU is not counted
            asyncio.run(request_rate(url, payload, headers, connections, warmup, warmup=0))
        before = proc.cpu() if proc else 0.0
        result = asyncio.run(request_rate(url, payload, headers, connections, seconds, warmup=0))
        out = summary(result, proc.cpu() - before if proc else None)
        out["loadgen"] = PYTHON
        return out
    if warmup:
        wrk.rate(url, payload, headers, connections, warmup)
    before = proc.cpu() if proc else 0.0
    measured = wrk.rate(url, payload, headers, connections, seconds)
    out = {
        "sent": measured.sent,
        "ok": measured.ok,
        "success_rate": round(measured.success_rate, 4),
        "rps": round(measured.rps, 1),
        "p50_ms": round(measured.p50_ms, 2),
        "p99_ms": round(measured.p99_ms, 2),
        "errors": measured.errors,
        "loadgen": "wrk",
    }
    if measured.ok:
        if proc:
            out["cpu_us_per_request"] = round((proc.cpu() - before) / measured.ok * 1e6, 1)
        out["loadgen_cpu_us_per_request"] = round(measured.loadgen_cpu_s / measured.ok * 1e6, 1)
    return out
