"""A database outage, down or hung: a key seen lately keeps working from the cache, usage waits
in memory and is written when the database is back, and whatever needs the database answers
503 with Retry-After at once. Never a 500, never a wait past `storage.timeout_s`.

Without Redis (the harder case): a replica then keeps a key for a second only, so its lookups
reach the database while it is away."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp

from tests.fakes.upstream import FakeOpenAI
from tests.faults.conftest import HI, MASTER, Fleet, figure
from tests.faults.conftest import start_fleet as fleet_of
from tests.services import TCPProxy

STORAGE = "timeout_s = 1.0\n"


async def timed_post(s: aiohttp.ClientSession, url: str, key: str) -> tuple[int, float, str]:
    began = time.monotonic()
    payload = {"model": "fast", "messages": HI}
    async with s.post(url, json=payload, headers={"authorization": f"Bearer {key}"}) as r:
        await r.read()
        return r.status, time.monotonic() - began, r.headers.get("retry-after", "")


async def through_an_outage(
    fleet: Fleet, proxy: TCPProxy, hang: bool, requests: int = 60
) -> tuple[Counter[int], float, int]:
    """Statuses of a cached key's requests while the database is away, the slowest, and the
    key's usage records once it is back."""
    key_id, secret = await fleet.create_key(rpm=10_000)
    async with aiohttp.ClientSession() as s:
        for i in range(3):  # every replica has the key cached
            assert (await timed_post(s, fleet.url(i), secret))[0] == 200
        if hang:
            proxy.hang()
        else:
            await proxy.cut()
        await asyncio.sleep(1.1)  # past the key cache's second: lookups go to the database
        results = await asyncio.gather(
            *(timed_post(s, fleet.url(i), secret) for i in range(requests))
        )
        unknown = await timed_post(s, fleet.url(0), "nrs-never-seen-by-any-replica")
        assert unknown[0] == 503 and int(unknown[2]) >= 1  # not cached: refused, cleanly
        async with s.get(
            fleet.url(1, "/admin/keys"), headers={"authorization": f"Bearer {MASTER}"}
        ) as r:
            body = await r.json()
            assert r.status == 503 and body["error"]["code"] == "store_unavailable", body
            assert r.headers["retry-after"]
        await proxy.heal()
    rows = await fleet.usage(key_id, 3 + requests, wait_s=20)
    statuses = Counter(status for status, _, _ in results)
    return statuses, max(seconds for _, seconds, _ in results), len(rows)


async def test_a_database_down_for_a_while(
    tmp_path: Path, upstream: FakeOpenAI, postgres_proxy: tuple[TCPProxy, str]
) -> None:
    proxy, url = postgres_proxy
    async with fleet_of(tmp_path, upstream, url, "", "", storage=STORAGE) as fleet:
        statuses, slowest, billed = await through_an_outage(fleet, proxy, hang=False)
    figure(
        "database down",
        tried=60,
        served=statuses[200],
        failed=60 - statuses[200],
        slowest_s=round(slowest, 2),
        billed=billed - 3,
    )
    assert statuses == {200: 60}
    assert billed == 63  # written once the database was back


async def test_a_database_that_hangs(
    tmp_path: Path, upstream: FakeOpenAI, postgres_proxy: tuple[TCPProxy, str]
) -> None:
    proxy, url = postgres_proxy
    async with fleet_of(tmp_path, upstream, url, "", "", storage=STORAGE) as fleet:
        statuses, slowest, billed = await through_an_outage(fleet, proxy, hang=True)
    figure(
        "database hung",
        tried=60,
        served=statuses[200],
        failed=60 - statuses[200],
        slowest_s=round(slowest, 2),
        billed=billed - 3,
    )
    assert statuses == {200: 60}
    assert slowest < 1.0 + 2.0  # storage.timeout_s, and a margin for a busy machine
    assert billed == 63


async def test_an_outage_longer_than_the_usage_backlog_refuses_rather_than_not_bill(
    tmp_path: Path, upstream: FakeOpenAI, postgres_proxy: tuple[TCPProxy, str]
) -> None:
    proxy, url = postgres_proxy
    storage = STORAGE + "usage_max_pending = 10\nusage_batch_size = 5\n"
    async with fleet_of(tmp_path, upstream, url, "", "", storage=storage, count=1) as fleet:
        key_id, secret = await fleet.create_key()
        async with aiohttp.ClientSession() as s:
            assert (await timed_post(s, fleet.url(0), secret))[0] == 200
            assert len(await fleet.usage(key_id, 1)) == 1  # written: the backlog is empty
            await proxy.cut()
            results = [await timed_post(s, fleet.url(0), secret) for _ in range(30)]
            await proxy.heal()
        rows = await fleet.usage(key_id, 11, wait_s=20)
    statuses = Counter(status for status, _, _ in results)
    figure(
        "usage backlog full",
        tried=30,
        served=statuses[200],
        refused=statuses[503],
        billed=len(rows) - 1,
    )
    assert statuses == {200: 10, 503: 20}
    assert all(int(retry) >= 1 for status, _, retry in results if status == 503)
    assert len(rows) == 11  # every request served was billed; the refused ones were not kept
