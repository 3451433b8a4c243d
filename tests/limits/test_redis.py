"""What only `RedisLimiter` does: exact limits across replicas, and keys that expire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from noroshi.limits import RedisLimiter, Rule
from noroshi.limits.base import Settlement
from tests.limits.conftest import add_spend, settle


@pytest.fixture
async def replicas(redis_url: str, redis_prefix: str) -> AsyncIterator[list[RedisLimiter]]:
    """Three limiters on one Redis, each with its own client, as three replicas would be.
    What they count is under test, not how fast they connect: a burst of 600 opens every
    pooled connection at once, which on a busy machine can take longer than the 0.5 s that a
    server allows before it falls back to local limits."""
    limiters = [RedisLimiter(redis_url, redis_prefix, timeout_s=5.0) for _ in range(3)]
    yield limiters
    for limiter in limiters:
        await limiter.close()


@pytest.mark.parametrize(
    ("rule", "tokens", "expected"),
    [
        (Rule("key:k1", rpm=100), 0, 100),
        (Rule("key:k1", tpm=1_000), 10, 100),
        (Rule("key:k1", concurrency=7), 0, 7),
    ],
)
async def test_limits_are_exact_across_replicas(
    replicas: list[RedisLimiter], rule: Rule, tokens: int, expected: int
) -> None:
    decisions = await asyncio.gather(
        *(replicas[i % 3].admit([rule], f"lease-{i}", tokens) for i in range(600))
    )
    assert sum(d.allowed for d in decisions) == expected
    assert all(d.retry_after_s > 0 for d in decisions if not d.allowed)


async def test_replicas_see_each_others_leases_and_settles(replicas: list[RedisLimiter]) -> None:
    a, b, _ = replicas
    rules = [Rule("key:k1", tpm=100, concurrency=1)]
    assert (await a.admit(rules, "x", 90)).allowed
    assert (await b.admit(rules, "y", 5)).reason == "concurrency"
    await settle(b, rules, "x", 20)  # a request may end on any replica
    decision = await a.admit(rules, "y", 5)
    assert (decision.allowed, decision.remaining_tokens) == (True, 75)


async def test_every_key_is_under_the_prefix_and_expires(
    redis_url: str, redis_prefix: str, replicas: list[RedisLimiter]
) -> None:
    limiter = replicas[0]
    await limiter.admit([Rule("key:k1", rpm=5, tpm=50, concurrency=2)], "a", 5)
    await limiter.hit("authfail:1.2.3.4", 60)
    await add_spend(limiter, "k1", ["day:2026-11-21", "month:2026-11"], 5, 0.5)
    await limiter.seed_spend("k1", "year:2026", 5, 0.5)
    client = aioredis.from_url(redis_url)
    try:
        keys = sorted([k.decode() async for k in client.scan_iter(match=f"{redis_prefix}*")])
        ttls = {key: await client.pttl(key) for key in keys}
    finally:
        await client.aclose()
    names = [k.removeprefix(redis_prefix) for k in keys]
    marks = [name for name in names if name.startswith("batch:")]
    assert len(marks) == 1  # the one batch of writes, remembered against a second sending
    assert 0 < ttls[redis_prefix + marks[0]] <= 600_000
    assert [name for name in names if name not in marks] == [
        "hit:authfail:1.2.3.4",
        "rl:key:k1:conc",
        "rl:key:k1:log",
        "rl:key:k1:tok",
        "spend:k1:day:2026-11-21",
        "spend:k1:month:2026-11",
        "spend:k1:year:2026",
    ]
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    day, month = (
        ttls[f"{redis_prefix}spend:k1:day:2026-11-21"],
        ttls[f"{redis_prefix}spend:k1:month:2026-11"],
    )
    assert 86_400_000 < day < month <= 32 * 86_400_000
    assert ttls[f"{redis_prefix}rl:key:k1:log"] <= 61_000


async def test_an_unreachable_redis_raises_redis_errors() -> None:
    limiter = RedisLimiter("redis://127.0.0.1:1/0", timeout_s=0.2)
    try:
        with pytest.raises(aioredis.ConnectionError):
            await limiter.admit([Rule("key:k1", rpm=1)], "a", 0)
    finally:
        await limiter.close()


async def test_a_running_request_keeps_its_lease_past_its_time_to_live(
    redis_url: str, redis_prefix: str
) -> None:
    a = RedisLimiter(redis_url, redis_prefix, lease_ttl_s=0.3, timeout_s=5.0)
    b = RedisLimiter(redis_url, redis_prefix, lease_ttl_s=0.3, timeout_s=5.0)
    rules = [Rule("key:k1", concurrency=1)]
    try:
        assert (await a.admit(rules, "long", 0)).allowed
        for _ in range(4):  # well past the lease's 0.3 s: its replica renews it
            await asyncio.sleep(0.3)
            assert (await b.admit(rules, "other", 0)).reason == "concurrency"
        await settle(a, rules, "long", 0)
        assert (await b.admit(rules, "other", 0)).allowed
    finally:
        await a.close()
        await b.close()


async def test_a_release_waited_for_is_in_redis_when_it_returns(
    redis_url: str, redis_prefix: str
) -> None:
    a = RedisLimiter(redis_url, redis_prefix, timeout_s=5.0)
    b = RedisLimiter(redis_url, redis_prefix, timeout_s=5.0)
    rules = [Rule("key:k1", concurrency=1)]
    try:
        for n in range(20):  # each replica, in turn, sees the other's slot free at once
            first, second = (a, b) if n % 2 else (b, a)
            assert (await first.admit(rules, f"l{n}", 0)).allowed
            await first.released(Settlement(rules, f"l{n}", 0))
            assert (await second.admit(rules, f"m{n}", 0)).allowed
            await second.released(Settlement(rules, f"m{n}", 0))
    finally:
        await a.close()
        await b.close()
