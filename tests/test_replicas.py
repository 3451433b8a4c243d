"""Several `noroshi serve` processes sharing the machine's PostgreSQL and Redis behave as one:
limits are exact across them, and a revoked key stops working on every one of them at once.
A SIGTERM loses no usage record."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import posting
from tests.conftest import openai_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.processes import serve_replicas, start_server, stop
from tests.services import shared_state

MASTER = "sk-replicas"
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def replicas(
    tmp_path: Path, upstream: FakeOpenAI, postgres_url: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[list[str]]:
    auth = f'[auth]\nmaster_key = "{MASTER}"\n'
    config = openai_config(
        upstream.base_url, extra=auth + shared_state(postgres_url, redis_url, redis_prefix)
    )
    async with serve_replicas(tmp_path, config, 3) as bases:
        yield bases


async def post(s: aiohttp.ClientSession, url: str, key: str, **payload: Any) -> int:
    return (await posting.post(url, payload, key=key, session=s)).status


async def create_key(base: str, **spec: Any) -> tuple[str, str]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{base}/admin/keys",
            json={"name": "shared", **spec},
            headers={"authorization": f"Bearer {MASTER}"},
        ) as r,
    ):
        body = await r.json()
        assert r.status == 201, body
        return body["id"], body["key"]


async def test_rpm_is_exact_across_three_replicas(replicas: list[str]) -> None:
    _, secret = await create_key(replicas[0], rpm=100)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        statuses = await asyncio.gather(
            *(
                post(s, f"{replicas[i % 3]}/v1/chat/completions", secret, model="fast", messages=HI)
                for i in range(600)
            )
        )
    assert Counter(statuses) == {200: 100, 429: 500}


async def test_revocation_reaches_every_replica_within_a_second(replicas: list[str]) -> None:
    key_id, secret = await create_key(replicas[0])
    url = f"{replicas[1]}/v1/chat/completions"
    async with aiohttp.ClientSession() as s:
        assert await post(s, url, secret, model="fast", messages=HI) == 200  # cached there now
        async with s.delete(
            f"{replicas[0]}/admin/keys/{key_id}", headers={"authorization": f"Bearer {MASTER}"}
        ) as r:
            assert r.status == 200
        revoked_at = time.monotonic()
        while (status := await post(s, url, secret, model="fast", messages=HI)) == 200:
            assert time.monotonic() - revoked_at < 1.0, "replica 1 still accepts the revoked key"
            await asyncio.sleep(0.02)
        assert status == 401


async def test_sigterm_loses_no_usage_record(tmp_path: Path, upstream: FakeOpenAI) -> None:
    config = openai_config(upstream.base_url, extra="[storage]\nusage_flush_s = 30\n")
    proc, base = await start_server(tmp_path, config)
    upstream.script(*[Reply()] * 40, Reply(chunks=10, token_delay=0.05))
    async with aiohttp.ClientSession() as s:
        url = f"{base}/v1/chat/completions"
        statuses = await asyncio.gather(
            *(post(s, url, "", model="fast", messages=HI) for _ in range(40))
        )
        assert set(statuses) == {200}
        payload = {"model": "fast", "messages": HI, "stream": True}
        async with s.post(url, json=payload) as r:
            await r.content.readuntil(b"\n\n")
            proc.send_signal(signal.SIGTERM)  # usage is flushed every 30 s: none written yet
            await r.read()
    assert await stop(proc) == 0
    with sqlite3.connect(tmp_path / "data" / "noroshi.sqlite3") as db:
        rows = db.execute("SELECT outcome, completion_tokens FROM usage").fetchall()
    assert len(rows) == 41
    assert Counter(outcome for outcome, _ in rows) == {"ok": 41}
    assert max(tokens for _, tokens in rows) == 10  # the stream that the drain let finish
