"""A replica stopped with SIGTERM drains and loses nothing; one killed outright loses only what
it had not written yet, and the concurrency slots it held free within `redis.lease_ttl_s`."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp

from tests.conftest import openai_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.faults.conftest import HI, MASTER, Fleet, figure
from tests.processes import kill_tree, start_server, stop
from tests.services import shared_state

STREAM = {"model": "fast", "messages": HI, "stream": True}
LEASE_TTL_S = 2.0


async def three(
    tmp_path: Path, upstream: FakeOpenAI, postgres_url: str, redis_url: str, prefix: str
) -> tuple[list[asyncio.subprocess.Process], Fleet]:
    state = shared_state(postgres_url, redis_url, prefix, f"lease_ttl_s = {LEASE_TTL_S}\n")
    config = openai_config(upstream.base_url, extra=f'[auth]\nmaster_key = "{MASTER}"\n{state}')
    started = await asyncio.gather(
        *(start_server(tmp_path, config, name=f"replica{i}") for i in range(3))
    )
    return [proc for proc, _ in started], Fleet([base for _, base in started], redis_url, prefix)


async def stop_all(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
    for proc in procs:
        await stop(proc)


async def test_sigterm_drains_a_replica_and_loses_no_record(
    tmp_path: Path, upstream: FakeOpenAI, postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    procs, fleet = await three(tmp_path, upstream, postgres_url, redis_url, redis_prefix)
    try:
        key_id, secret = await fleet.create_key(max_concurrency=100)
        upstream.default = Reply(chunks=10, token_delay=0.1)
        headers = {"authorization": f"Bearer {secret}"}

        async def one(s: aiohttp.ClientSession, i: int) -> bool:
            async with s.post(fleet.url(i), json=STREAM, headers=headers) as r:
                return (await r.read()).endswith(b"data: [DONE]\n\n")

        async with aiohttp.ClientSession() as s:
            streams = [asyncio.ensure_future(one(s, i)) for i in range(30)]
            await asyncio.sleep(0.4)  # every stream is under way
            procs[1].send_signal(signal.SIGTERM)
            complete = await asyncio.gather(*streams)
        assert await stop(procs[1]) == 0
        rows = await fleet.usage(key_id, 30)
    finally:
        await stop_all(procs)
    figure("SIGTERM mid-stream", streams=30, complete=sum(complete), billed=len(rows))
    assert all(complete)  # the drain let the replica's streams finish
    assert len(rows) == 30 and Counter(r["outcome"] for r in rows) == {"ok": 30}


async def test_kill_9_frees_a_replicas_slots_within_the_lease(
    tmp_path: Path, upstream: FakeOpenAI, postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    procs, fleet = await three(tmp_path, upstream, postgres_url, redis_url, redis_prefix)
    try:
        key_id, secret = await fleet.create_key(max_concurrency=3)
        headers = {"authorization": f"Bearer {secret}"}
        overlapping = Reply(chunks=4, token_delay=0.1)  # the probes overlap one another
        upstream.script(Reply(chunks=100, token_delay=0.1), Reply(chunks=100, token_delay=0.1))
        async with aiohttp.ClientSession() as s:
            # two long streams hold two of the three slots on replica 0
            held = [await s.post(fleet.url(0), json=STREAM, headers=headers) for _ in range(2)]
            for r in held:
                await r.content.readuntil(b"\n\n")
            upstream.default = overlapping
            kill_tree(procs[0].pid)
            killed_at = time.monotonic()
            await procs[0].wait()
            fleet.bases[0] = fleet.bases[1]  # the admin calls go to a live one
            for r in held:
                r.close()

            # the dead replica's slots: two of three held, so two at once are refused...
            async def two_at_once() -> list[int]:
                replies = [s.post(fleet.url(i), json=STREAM, headers=headers) for i in (1, 2)]
                statuses = []
                for reply in await asyncio.gather(*replies):
                    async with reply:
                        await reply.read()
                        statuses.append(reply.status)
                return statuses

            refused_at_first = (await two_at_once()).count(429)
            while 429 in await two_at_once():  # ...until the leases run out
                assert time.monotonic() - killed_at < LEASE_TTL_S + 5, "slots never freed"
                await asyncio.sleep(0.1)
            freed_after = time.monotonic() - killed_at
        rows = await fleet.usage(key_id, 1, wait_s=1)
    finally:
        await stop_all(procs)
    figure(
        "kill -9 with two slots held",
        lease_ttl_s=LEASE_TTL_S,
        refused_at_first=refused_at_first,
        freed_after_s=round(freed_after, 1),
        unbilled_killed_streams=2 - len([r for r in rows if r["completion_tokens"] > 4]),
    )
    assert refused_at_first == 1  # one slot was free
    assert freed_after <= LEASE_TTL_S + 5  # the lease's life, and a margin for a busy machine
