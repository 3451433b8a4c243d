"""A Redis outage bounds what a key gets: over one window, at most its limit plus each
replica's local share of it (`limit + replicas x ceil(limit x local_share)`), whether Redis is
killed and comes back empty or stalls and comes back with its data. No request fails for it."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.upstream import FakeOpenAI, Reply
from tests.faults.conftest import HI, Fleet, figure, start_fleet
from tests.services import RedisServer

LIMIT, SHARE, REPLICAS = 30, 0.34, 3
BOUND = LIMIT + REPLICAS * math.ceil(LIMIT * SHARE)
REDIS = f"local_share = {SHARE}\nretry_s = 0.2\n"


async def send(fleet: Fleet, secret: str, count: int) -> Counter[int]:
    """`count` requests, one at a time, taking the replicas in turn."""
    statuses: Counter[int] = Counter()
    headers = {"authorization": f"Bearer {secret}"}
    payload = {"model": "fast", "messages": HI}
    async with aiohttp.ClientSession() as s:
        for i in range(count):
            async with s.post(fleet.url(i), json=payload, headers=headers) as r:
                await r.read()
                statuses[r.status] += 1
    return statuses


async def outage(
    tmp_path: Path,
    upstream: FakeOpenAI,
    postgres_url: str,
    server: RedisServer,
    down: Callable[[], Awaitable[None]],
    up: Callable[[], Awaitable[None]],
) -> tuple[int, int, int, Counter[int]]:
    """Admitted before, during and after the outage, within one window; every status."""
    async with start_fleet(
        tmp_path, upstream, postgres_url, server.url, "outage:", redis=REDIS
    ) as fleet:
        _, secret = await fleet.create_key(rpm=LIMIT)
        before = await send(fleet, secret, 2 * LIMIT)
        await down()
        during = await send(fleet, secret, 2 * LIMIT)
        await up()
        await asyncio.sleep(0.5)  # past retry_s: every replica finds Redis again
        after = await send(fleet, secret, 2 * LIMIT)
    return before[200], during[200], after[200], before + during + after


@pytest.mark.parametrize("how", ["killed, back empty", "paused, back with its data"])
async def test_an_outage_lets_through_at_most_each_replicas_share_more(
    how: str, tmp_path: Path, upstream: FakeOpenAI, postgres_url: str, redis_server: RedisServer
) -> None:
    if how.startswith("killed"):
        down, up = redis_server.stop, redis_server.start
    else:

        async def down() -> None:
            redis_server.pause()

        async def up() -> None:
            redis_server.resume()

    before, during, after, statuses = await outage(
        tmp_path, upstream, postgres_url, redis_server, down, up
    )
    total = before + during + after
    figure(
        f"Redis {how}",
        limit=LIMIT,
        before=before,
        during=during,
        after=after,
        admitted=total,
        bound=BOUND,
        over_limit=total - LIMIT,
    )
    assert before == LIMIT  # exact while Redis is up
    assert 0 < during <= REPLICAS * math.ceil(LIMIT * SHARE)
    assert total <= BOUND
    assert set(statuses) <= {200, 429}  # refused with a reason, never failed


@pytest.mark.parametrize("how", ["killed, back empty", "paused, back with its data"])
async def test_streams_through_a_redis_outage_are_billed_and_leave_no_lease(
    how: str, tmp_path: Path, upstream: FakeOpenAI, postgres_url: str, redis_server: RedisServer
) -> None:
    upstream.default = Reply(chunks=5, token_delay=0.02)
    async with start_fleet(
        tmp_path, upstream, postgres_url, redis_server.url, "restart:", redis=REDIS
    ) as fleet:
        key_id, secret = await fleet.create_key(max_concurrency=4, rpm=100_000)
        headers = {"authorization": f"Bearer {secret}"}
        statuses: Counter[int] = Counter()

        async def streams(s: aiohttp.ClientSession, worker: int, count: int) -> None:
            for i in range(count):
                payload = {"model": "fast", "messages": HI, "stream": True}
                async with s.post(fleet.url(worker + i), json=payload, headers=headers) as r:
                    await r.read()
                    statuses[r.status] += 1

        async with aiohttp.ClientSession() as s:
            load = asyncio.gather(*(streams(s, w, 40) for w in range(4)))
            await asyncio.sleep(0.5)
            if how.startswith("killed"):
                await redis_server.stop()
                await asyncio.sleep(1.0)
                await redis_server.start()
            else:
                redis_server.pause()
                await asyncio.sleep(1.0)
                redis_server.resume()
            await load
            await asyncio.sleep(0.5)
            await streams(s, 0, 3)  # every replica finds Redis again, and sends what it kept
        rows = await fleet.usage(key_id, 163, wait_s=20)
        leases = await fleet.leases(key_id)
    figure(
        f"streams, Redis {how}",
        tried=163,
        served=statuses[200],
        refused=statuses[429],
        billed=len(rows),
        leases_left=leases,
    )
    assert set(statuses) <= {200, 429} and statuses[200] >= 100
    assert len(rows) == 163
    assert leases == 0
