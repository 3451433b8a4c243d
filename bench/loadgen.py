"""Load generator on aiohttp: closed-loop request rate, and many concurrent streams, with the
time to first byte of every stream measured (which wrk cannot do)."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

__all__ = ["Result", "concurrent_streams", "percentile", "request_count", "request_rate"]


@dataclass
class Result:
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, whole answer
    ttfb: list[float] = field(default_factory=list)  # seconds, first body byte

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def success_rate(self) -> float:
        return self.ok / self.sent if self.sent else 0.0

    def fail(self, why: str) -> None:
        self.errors[why] = self.errors.get(why, 0) + 1


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(p * 10) - 1]


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], out: Result
) -> None:
    out.sent += 1
    start = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as r:
            first = await r.content.readany()
            out.ttfb.append(time.perf_counter() - start)
            rest = await r.read()
            data = first + rest
            if r.status != 200:
                out.fail(f"http {r.status}")
                return
            if b"data: " in data[:6] and not data.rstrip().endswith(b"[DONE]"):
                out.fail("stream cut")
                return
        out.ok += 1
        out.latencies.append(time.perf_counter() - start)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        out.fail(type(exc).__name__)


async def request_rate(
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    connections: int,
    duration: float,
    warmup: float = 1.0,
) -> Result:
    """`connections` clients, each sending its next request when the last one is answered."""
    body, headers = _request(payload, headers)
    async with _clients(connections) as session:
        scratch = Result()
        stop = time.perf_counter() + warmup

        async def loop(out: Result, until: float) -> None:
            while time.perf_counter() < until:
                await _one(session, url, body, headers, out)

        await asyncio.gather(*(loop(scratch, stop) for _ in range(connections)))
        result = Result()
        start = time.perf_counter()
        await asyncio.gather(*(loop(result, start + duration) for _ in range(connections)))
        result.elapsed = time.perf_counter() - start
    return result


async def request_count(
    url: str, payload: dict[str, Any], headers: dict[str, str], connections: int, count: int
) -> Result:
    """`count` requests in all, from `connections` clients as in `request_rate`."""
    body, headers = _request(payload, headers)
    result = Result()
    async with _clients(connections) as session:

        async def loop() -> None:
            while result.sent < count:  # `_one` counts a request as sent before it waits
                await _one(session, url, body, headers, result)

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(connections)))
        result.elapsed = time.perf_counter() - start
    return result


def _request(payload: dict[str, Any], headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return msgspec.json.encode(payload), {"content-type": "application/json", **headers}


def _clients(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


async def concurrent_streams(
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    count: int,
    ramp: float,
    limit_s: float,
) -> Result:
    """`count` streams open at once (started evenly over `ramp` seconds), each read to its end."""
    body = msgspec.json.encode({**payload, "stream": True})
    headers = {"content-type": "application/json", **headers}
    connector = aiohttp.TCPConnector(limit=0)
    client_timeout = aiohttp.ClientTimeout(total=limit_s)
    result = Result()
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        start = time.perf_counter()

        async def later(i: int) -> None:
            await asyncio.sleep(ramp * i / count)
            await _one(session, url, body, headers, result)

        await asyncio.gather(*(later(i) for i in range(count)))
        result.elapsed = time.perf_counter() - start
    return result
