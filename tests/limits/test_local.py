"""What only `LocalLimiter` does: scaled shares of each limit, and bounded memory."""

from __future__ import annotations

import asyncio

import pytest

from noroshi.limits import LocalLimiter, Rule
from noroshi.limits.base import MAX_HITS
from tests.limits.conftest import add_spend


@pytest.mark.parametrize(
    ("rule", "tokens", "expected"),
    [
        (Rule("key:k1", rpm=100), 0, 34),
        (Rule("key:k1", tpm=1_000), 10, 34),  # 340 tokens
        (Rule("key:k1", concurrency=1), 0, 1),  # rounded up: at least one
        (Rule("key:k1", rpm=0), 0, 0),  # nothing stays nothing
    ],
)
async def test_a_share_scales_each_limit(rule: Rule, tokens: int, expected: int) -> None:
    limiter = LocalLimiter(share=0.34)
    decisions = [await limiter.admit([rule], f"l{i}", tokens) for i in range(200)]
    assert sum(d.allowed for d in decisions) == expected
    if rule.rpm:
        assert decisions[0].limit_requests == 34


@pytest.mark.parametrize("share", [0.0, -1.0, 1.5])
def test_a_share_is_a_fraction(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        LocalLimiter(share)


async def test_idle_scopes_are_dropped() -> None:
    limiter = LocalLimiter(window_s=1.0, lease_ttl_s=1.0)
    for i in range(50):
        await limiter.admit([Rule(f"key:{i}", rpm=5, concurrency=5)], f"l{i}", 0)
        await limiter.hit(f"authfail:{i}", 1.0)
    assert limiter.sizes() == (50, 50, 50, 0)
    await asyncio.sleep(2.0)
    await limiter.hit("authfail:new", 1.0)
    assert limiter.sizes() == (0, 0, 1, 0)


async def test_tables_are_bounded() -> None:
    limiter = LocalLimiter(max_scopes=10)
    for i in range(30):
        await limiter.admit([Rule(f"key:{i}", rpm=5, concurrency=5)], f"l{i}", 0)
        await limiter.hit(f"authfail:{i}", 60)
        await add_spend(limiter, f"k{i}", ["day:2026-11-21"], 1, 0.1)
    assert limiter.sizes() == (10, 10, 10, 10)


async def test_a_hit_count_saturates() -> None:
    limiter = LocalLimiter()
    for _ in range(MAX_HITS + 5):
        count = await limiter.hit("authfail:flood", 60)
    assert count == MAX_HITS
