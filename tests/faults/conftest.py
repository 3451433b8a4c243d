"""Three `noroshi serve` replicas sharing PostgreSQL and Redis, with the means to hurt them.

Each test states its figure (requests tried, refused, lost, over the limit) with `figure`, which
prints it (shown by `pytest -s` and with a failure) and checks it against the documented bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.conftest import openai_config
from tests.fakes.upstream import FakeOpenAI
from tests.processes import serve_replicas
from tests.services import shared_state

MASTER = "sk-faults-0123456789abcdef"
HI = [{"role": "user", "content": "Hi"}]


def figure(name: str, **numbers: float) -> None:
    """Print a test's figure in one line."""
    print(f"\n[{name}] " + ", ".join(f"{k} {v:g}" for k, v in numbers.items()))


@dataclass
class Fleet:
    bases: list[str]
    redis_url: str
    prefix: str

    def url(self, i: int, path: str = "/v1/chat/completions") -> str:
        return f"{self.bases[i % len(self.bases)]}{path}"

    async def create_key(self, **spec: Any) -> tuple[str, str]:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                self.url(0, "/admin/keys"),
                json={"name": "faults", **spec},
                headers={"authorization": f"Bearer {MASTER}"},
            ) as r,
        ):
            body = await r.json()
            assert r.status == 201, body
            return body["id"], body["key"]

    async def usage(self, key_id: str, expected: int, wait_s: float = 10.0) -> list[dict[str, Any]]:
        """The key's usage records, once `expected` are written (or the time is up)."""
        deadline = time.monotonic() + wait_s
        async with aiohttp.ClientSession() as s:
            while True:
                async with s.get(
                    self.url(0, f"/admin/usage?key={key_id}&limit=1000"),
                    headers={"authorization": f"Bearer {MASTER}"},
                ) as r:
                    body = await r.json()
                    assert r.status in (200, 503), body  # 503: the database is not back yet
                    rows: list[dict[str, Any]] = body.get("data", [])
                if len(rows) >= expected or time.monotonic() > deadline:
                    return rows
                await asyncio.sleep(0.1)

    async def leases(self, key_id: str) -> int:
        """Concurrency slots the key holds in Redis now."""
        client = aioredis.from_url(self.redis_url)
        try:
            count: int = await client.zcard(f"{self.prefix}rl:key:{key_id}:conc")
            return count
        finally:
            await client.aclose()


@contextlib.asynccontextmanager
async def start_fleet(
    tmp_path: Path,
    upstream: FakeOpenAI,
    storage_url: str,
    redis_url: str,
    prefix: str,
    redis: str = "",
    storage: str = "",
    extra: str = "",
    count: int = 3,
) -> AsyncIterator[Fleet]:
    """`count` replicas on one database and one Redis (none when `redis_url` is empty),
    behind a fake OpenAI."""
    if redis_url:
        state = shared_state(storage_url, redis_url, prefix, redis, storage)
    else:
        state = f'[storage]\nurl = "{storage_url}"\n{storage}'
    auth = f'[auth]\nmaster_key = "{MASTER}"\n'
    config = openai_config(upstream.base_url, extra=auth + state + extra)
    async with serve_replicas(tmp_path, config, count) as bases:
        yield Fleet(bases, redis_url, prefix)


@pytest.fixture
async def fleet(
    tmp_path: Path, upstream: FakeOpenAI, postgres_url: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[Fleet]:
    """Three replicas on the machine's PostgreSQL and Redis, behind a fake OpenAI."""
    async with start_fleet(tmp_path, upstream, postgres_url, redis_url, redis_prefix) as fleet:
        yield fleet
