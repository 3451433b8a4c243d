"""`make` builds limiters of one kind: each behaviour test runs in memory and on Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from noroshi.limits import Limiter, LocalLimiter, RedisLimiter, Rule
from noroshi.limits.base import Settlement

Make = Callable[..., Limiter]


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str] | None:
    """None for memory; (url, key prefix) for Redis."""
    if request.param == "local":
        return None
    return request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")


@pytest.fixture
async def make(backend: tuple[str, str] | None) -> AsyncIterator[Make]:
    """`make(**options)`: a limiter of this test's kind; limiters made by one test share state
    when they are on Redis."""
    made: list[Limiter] = []

    def build(**options: Any) -> Limiter:
        if backend is None:
            limiter: Limiter = LocalLimiter(**options)
        else:
            url, prefix = backend
            # bursts here open every pooled connection at once; on a busy machine a connect
            # can outlast the server's fail-fast 0.5 s, which is tested on its own
            limiter = RedisLimiter(url, prefix, **{"timeout_s": 5.0, **options})
        made.append(limiter)
        return limiter

    yield build
    for limiter in made:
        await limiter.close()


async def settle(limiter: Limiter, rules: list[Rule], lease: str, tokens: int) -> None:
    """Release a request and wait until the limiter has applied it."""
    limiter.release(Settlement(rules, lease, tokens))
    await limiter.flush()


async def add_spend(
    limiter: Limiter, subject: str, periods: list[str], tokens: int, cost: float
) -> None:
    limiter.release(Settlement((), "", tokens, subject, periods, cost))
    await limiter.flush()
