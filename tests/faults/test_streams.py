"""Every admitted request gives back what it reserved and is billed once, however its client
behaves: streams read to the end, left before the first byte, mid-stream, or right after the
last byte; across three replicas sharing Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from tests.fakes.upstream import FakeOpenAI, Reply
from tests.faults.conftest import HI, Fleet, figure

STREAM = {"model": "fast", "messages": HI, "stream": True}


async def test_streams_four_at_a_time_on_a_limit_of_four(fleet: Fleet) -> None:
    key_id, secret = await fleet.create_key(max_concurrency=4, rpm=10_000)
    headers = {"authorization": f"Bearer {secret}"}
    slots = asyncio.Semaphore(4)
    statuses: list[int] = []

    async def one(s: aiohttp.ClientSession, i: int) -> None:
        async with slots, s.post(fleet.url(i), json=STREAM, headers=headers) as r:
            await r.read()
            statuses.append(r.status)

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(one(s, i) for i in range(200)))
        for i in range(5):  # one at a time afterwards: never locked out
            await one(s, i)
    rows = await fleet.usage(key_id, 205)
    leases = await fleet.leases(key_id)
    refused = len([s for s in statuses if s != 200])
    figure("streams at the limit", tried=205, refused=refused, billed=len(rows), leases=leases)
    assert refused == 0
    assert len(rows) == 205 and leases == 0
    assert Counter(r["outcome"] for r in rows) == {"ok": 205}


async def test_every_way_a_client_leaves_releases_and_bills_once(
    fleet: Fleet, upstream: FakeOpenAI
) -> None:
    key_id, secret = await fleet.create_key(max_concurrency=50, rpm=10_000)
    headers = {"authorization": f"Bearer {secret}"}
    rounds = 8

    async def before_first_byte(i: int) -> str:
        # the upstream takes a second to its first token; the client gives up long before
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as s,
                s.post(fleet.url(i), json=STREAM, headers=headers) as r,
            ):
                await r.read()
        except TimeoutError:
            return "left"
        return "read"

    async def mid_stream(i: int) -> str:
        async with (
            aiohttp.ClientSession() as s,
            s.post(fleet.url(i), json=STREAM, headers=headers) as r,
        ):
            await r.content.readuntil(b"\n\n")  # one chunk, then away
            return "left"

    async def after_the_last_byte(i: int) -> str:
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as s,
            s.post(fleet.url(i), json=STREAM, headers=headers) as r,
        ):
            body = await r.read()
            return "read" if body.endswith(b"data: [DONE]\n\n") else "short"

    for leave, reply in (
        (before_first_byte, Reply(first_token_delay=1.0)),
        (mid_stream, Reply(chunks=20, token_delay=0.05)),
        (after_the_last_byte, Reply(chunks=5)),
    ):
        upstream.default = reply
        results = await asyncio.gather(*(leave(i) for i in range(rounds)))
        assert set(results) == {"read" if leave is after_the_last_byte else "left"}
    rows = await fleet.usage(key_id, 3 * rounds)
    await asyncio.sleep(0.5)  # a record that is late would show up now
    rows = await fleet.usage(key_id, 3 * rounds + 1, wait_s=0.1)
    leases = await fleet.leases(key_id)
    outcomes = Counter(r["outcome"] for r in rows)
    figure("clients leaving", tried=3 * rounds, billed=len(rows), leases=leases)
    assert leases == 0
    assert len(rows) == 3 * rounds  # each exactly once
    assert outcomes == {"cut": 2 * rounds, "ok": rounds}
    cut_mid = [r for r in rows if r["outcome"] == "cut" and r["completion_tokens"] > 0]
    assert len(cut_mid) == rounds  # the chunks sent before the client left are billed
