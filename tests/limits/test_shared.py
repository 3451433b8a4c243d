"""`SharedLimiter` losing Redis and finding it again, on a redis-server of the test's own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from noroshi.limits import Rule, SharedLimiter
from noroshi.limits.base import Settlement
from tests.limits.conftest import add_spend, settle
from tests.services import RedisServer

Pair = tuple[SharedLimiter, SharedLimiter]
DAY = "day:2026-11-21"


@pytest.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[Pair]:
    """Two replicas sharing the server, each enforcing half of each limit while it is away."""
    replicas = [
        SharedLimiter(redis_server.url, "t:", local_share=0.5, retry_s=0.2, timeout_s=0.3)
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
    redis_server: RedisServer, pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="noroshi.limits")
    a, b = pair
    rules = [Rule("key:k1", rpm=10)]
    assert sum(await admitted(pair, rules, 8, "up")) == 10
    assert messages(caplog, logging.WARNING) == []

    await redis_server.stop()
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

    await redis_server.start()  # empty: it keeps nothing on disk
    await asyncio.sleep(0.5)
    # for the rest of the window each replica's share still holds what it admitted while away:
    # the window got the limit, plus each replica's share, and no more
    assert sum(await admitted(pair, rules, 8, "back")) == 0
    assert a.shared and b.shared
    assert messages(caplog, logging.INFO) == ["Redis reachable again; shared limits resume"] * 2
    assert len(messages(caplog, logging.WARNING)) == 2


async def test_after_an_outage_the_local_share_holds_for_one_window(
    redis_server: RedisServer,
) -> None:
    pair = [
        SharedLimiter(
            redis_server.url, "t:", local_share=0.5, retry_s=0.1, timeout_s=0.3, window_s=1.0
        )
        for _ in range(2)
    ]
    rules = [Rule("key:k1", rpm=10)]
    try:
        await redis_server.stop()
        assert await admitted((pair[0], pair[1]), rules, 8, "down") == (5, 5)
        await redis_server.start()  # empty
        await asyncio.sleep(1.2)  # the outage's admissions have left the window
        assert sum(await admitted((pair[0], pair[1]), rules, 8, "back")) == 10
        assert all(replica.shared for replica in pair)
    finally:
        for replica in pair:
            await replica.close()


async def test_a_request_admitted_while_away_takes_its_slot_in_redis(
    redis_server: RedisServer, pair: Pair
) -> None:
    a, b = pair
    rules = [Rule("key:k1", concurrency=2)]
    await redis_server.stop()
    assert (await a.admit(rules, "local", 0)).allowed
    assert (await a.admit(rules, "refused", 0)).reason == "concurrency"  # a's share is one
    await redis_server.start()  # empty
    await asyncio.sleep(0.5)
    assert (await b.admit(rules, "second", 0)).allowed  # b's share, and Redis, have room
    await a.hit("probe", 1)  # a finds Redis again: "local", still running, takes its slot
    await a.flush()
    assert (await b.admit(rules, "third", 0)).reason == "concurrency"  # Redis: local, second
    await settle(a, rules, "local", 0)  # freed where it was admitted, and in Redis
    assert (await a.local.admit(rules, "local-again", 0)).allowed
    assert (await b.admit(rules, "third", 0)).allowed  # b never lost Redis: Redis alone counts


async def test_budgets_hold_while_redis_stalls_and_catch_up(
    redis_server: RedisServer, pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    await a.seed_spend("k1", DAY, 100, 1.0)
    await add_spend(a, "k1", [DAY], 10, 0.5)
    assert await b.spend("k1", [DAY]) == [(110, 1.5)]
    assert await a.spend("k1", [DAY]) == [(110, 1.5)]

    redis_server.pause()
    assert await a.spend("k1", [DAY]) == [(110, 1.5)]  # timed out: a's copy answers
    a.release(Settlement((), "", 5, "k1", [DAY], 0.25))  # kept for Redis, counted here now
    await a.seed_spend("k2", DAY, 50, 0.5)
    assert await a.spend("k1", [DAY]) == [(115, 1.75)]
    assert "Redis unreachable (Timeout" in messages(caplog, logging.WARNING)[0]

    redis_server.resume()
    await asyncio.sleep(0.5)
    await a.flush()
    assert await a.spend("k1", [DAY]) == [(115, 1.75)]  # handed over what it spent meanwhile
    assert await b.spend("k1", [DAY]) == [(115, 1.75)]
    assert await b.spend("k2", [DAY]) == [(50, 0.5)]


async def test_a_release_made_while_redis_is_away_reaches_it_when_it_is_back(
    redis_server: RedisServer, pair: Pair
) -> None:
    a, b = pair
    rules = [Rule("key:k1", concurrency=1)]
    assert (await a.admit(rules, "shared", 0)).allowed
    redis_server.pause()
    a.release(Settlement(rules, "shared", 0))  # Redis does not answer: kept, no error
    assert (await a.admit(rules, "local", 0)).allowed  # timed out: a's own share
    assert not a.shared
    redis_server.resume()
    await asyncio.sleep(0.5)
    await a.flush()
    # Redis kept its data: "shared" would hold the slot for a lease's life, but was released
    assert (await b.admit(rules, "other", 0)).allowed


async def test_an_admission_that_timed_out_is_settled_in_redis_too(
    redis_server: RedisServer, pair: Pair
) -> None:
    a, b = pair
    rules = [Rule("key:k1", concurrency=1)]
    await a.admit([Rule("key:warm", rpm=1)], "warm", 0)  # connected, and the script loaded
    redis_server.pause()
    assert (await a.admit(rules, "stalled", 0)).allowed  # timed out, then admitted locally
    redis_server.resume()
    await asyncio.sleep(0.5)
    # Redis ran the admission it had received after all, and holds the slot
    assert (await b.admit(rules, "other", 0)).reason == "concurrency"
    await settle(a, rules, "stalled", 0)
    assert (await b.admit(rules, "other", 0)).allowed
