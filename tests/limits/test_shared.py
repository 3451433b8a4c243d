"""`SharedLimiter` losing Redis and finding it again, on a redis-server of the test's own."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from noroshi.limits import Rule, SharedLimiter
from tests.services import missing

Pair = tuple[SharedLimiter, SharedLimiter]
DAY = "day:2026-11-21"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A redis-server that keeps nothing on disk, to stop, restart, pause and resume."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = aioredis.from_url(self.url)
        try:
            for _ in range(200):
                try:
                    await client.ping()
                    return
                except (aioredis.ConnectionError, OSError):
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.resume()
            self.proc.kill()
            await self.proc.wait()

    def pause(self) -> None:
        """Still accepting connections, answering nothing: calls time out."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        missing("redis-server", FileNotFoundError("redis-server is not installed"))
    server = RedisServer(free_port(), tmp_path)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def pair(server: RedisServer) -> AsyncIterator[Pair]:
    """Two replicas sharing the server, each enforcing half of each limit while it is away."""
    replicas = [
        SharedLimiter(server.url, "t:", local_share=0.5, retry_s=0.2, timeout_s=0.3)
        for _ in range(2)
    ]
    yield replicas[0], replicas[1]
    for replica in replicas:
        await replica.close()


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "noroshi.limits" and r.levelno == level
    ]


async def admitted(pair: Pair, rules: list[Rule], each: int, tag: str) -> tuple[int, int]:
    """How many of `each` admissions through each replica pass, taking turns."""
    counts = [0, 0]
    for i in range(each):
        for n, replica in enumerate(pair):
            counts[n] += (await replica.admit(rules, f"{tag}-{n}-{i}", 0)).allowed
    return counts[0], counts[1]


async def test_a_local_share_while_redis_is_down_then_shared_again(
    server: RedisServer, pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="noroshi.limits")
    a, b = pair
    rules = [Rule("key:k1", rpm=10)]
    assert sum(await admitted(pair, rules, 8, "up")) == 10
    assert messages(caplog, logging.WARNING) == []

    await server.stop()
    assert await admitted(pair, rules, 8, "down") == (5, 5)
    assert not a.shared and not b.shared
    assert (await a.admit(rules, "down-more", 0)).limit_requests == 5
    assert await a.hit("authfail:1.2.3.4", 60) == 1
    await asyncio.sleep(0.5)  # past retry_s: each tries Redis again, in vain
    assert await admitted(pair, rules, 1, "still-down") == (0, 0)
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 2  # once for each replica, however many calls fail
    assert all(w.startswith("Redis unreachable (") for w in warnings)
    assert all(w.endswith("); enforcing a local share of 0.50 of each limit") for w in warnings)
    assert messages(caplog, logging.INFO) == []

    await server.start()  # empty: it keeps nothing on disk
    await asyncio.sleep(0.5)
    assert sum(await admitted(pair, rules, 8, "back")) == 10
    assert a.shared and b.shared
    assert messages(caplog, logging.INFO) == ["Redis reachable again; shared limits resume"] * 2
    assert len(messages(caplog, logging.WARNING)) == 2


async def test_a_lease_is_settled_where_it_was_admitted(server: RedisServer, pair: Pair) -> None:
    a, b = pair
    rules = [Rule("key:k1", concurrency=2)]
    await server.stop()
    assert (await a.admit(rules, "local", 0)).allowed
    assert (await a.admit(rules, "refused", 0)).reason == "concurrency"  # a's share is one
    await server.start()
    await asyncio.sleep(0.5)
    assert (await a.admit(rules, "shared", 0)).allowed
    await a.settle(rules, "local", 0)
    assert (await a.local.admit(rules, "local-again", 0)).allowed  # the local slot was freed
    assert (await b.admit(rules, "second", 0)).allowed  # Redis holds "shared" only
    assert not (await b.admit(rules, "third", 0)).allowed
    await a.settle(rules, "shared", 0)
    assert (await b.admit(rules, "third", 0)).allowed


async def test_budgets_hold_while_redis_stalls_and_catch_up(
    server: RedisServer, pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    await a.seed_spend("k1", DAY, 100, 1.0)
    await a.add_spend("k1", [DAY], 10, 0.5)
    assert await b.spend("k1", [DAY]) == [(110, 1.5)]
    assert await a.spend("k1", [DAY]) == [(110, 1.5)]

    server.pause()
    assert await a.spend("k1", [DAY]) == [(110, 1.5)]  # timed out: a's copy answers
    await a.add_spend("k1", [DAY], 5, 0.25)
    await a.seed_spend("k2", DAY, 50, 0.5)
    assert await a.spend("k1", [DAY]) == [(115, 1.75)]
    assert "Redis unreachable (Timeout" in messages(caplog, logging.WARNING)[0]

    server.resume()
    await asyncio.sleep(0.5)
    assert await a.spend("k1", [DAY]) == [(115, 1.75)]  # handed over what it spent meanwhile
    assert await b.spend("k1", [DAY]) == [(115, 1.75)]
    assert await b.spend("k2", [DAY]) == [(50, 0.5)]


async def test_a_redis_lease_is_left_to_expire_while_redis_is_away(
    server: RedisServer, pair: Pair
) -> None:
    a, _ = pair
    rules = [Rule("key:k1", concurrency=1)]
    assert (await a.admit(rules, "shared", 0)).allowed
    await server.stop()
    await a.settle(rules, "shared", 0)  # nowhere to settle it; no error
    assert not a.shared
    assert (await a.admit(rules, "local", 0)).allowed


async def test_an_admission_that_timed_out_is_settled_in_redis_too(
    server: RedisServer, pair: Pair
) -> None:
    a, b = pair
    rules = [Rule("key:k1", concurrency=1)]
    await a.admit([Rule("key:warm", rpm=1)], "warm", 0)  # connected, and the script loaded
    server.pause()
    assert (await a.admit(rules, "stalled", 0)).allowed  # timed out, then admitted locally
    server.resume()
    await asyncio.sleep(0.5)
    # Redis ran the admission it had received after all, and holds the slot
    assert (await b.admit(rules, "other", 0)).reason == "concurrency"
    await a.settle(rules, "stalled", 0)
    assert (await b.admit(rules, "other", 0)).allowed
