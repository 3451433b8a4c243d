"""The machine's PostgreSQL and Redis for tests: each test gets its own schema or key prefix.

Without the service a test skips with the reason; under `CI=true` a missing service fails.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

POSTGRES_URL = os.environ.get(
    "NOROSHI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("NOROSHI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def missing(service: str, error: BaseException) -> None:
    reason = f"{service} is not reachable: {error!r}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true needs it)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A URL whose connections use a fresh schema, dropped after the test."""
    schema = f"t_{secrets.token_hex(6)}"
    try:
        conn = await asyncio.wait_for(asyncpg.connect(POSTGRES_URL), 5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        missing("PostgreSQL", exc)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}search_path={schema}"
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def redis_url() -> str:
    client = aioredis.from_url(REDIS_URL)
    try:
        await asyncio.wait_for(client.ping(), 5)
    except (OSError, aioredis.RedisError, TimeoutError) as exc:
        missing("Redis", exc)
    finally:
        await client.aclose()
    return REDIS_URL


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"noroshi-test:{secrets.token_hex(4)}:"
    yield prefix
    client = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def shared_state(postgres_url: str, redis_url: str, redis_prefix: str) -> str:
    """The config that makes servers replicas of one another: one database, one Redis."""
    return (
        f'[storage]\nurl = "{postgres_url}"\n'
        f'[redis]\nurl = "{redis_url}"\nprefix = "{redis_prefix}"\n'
    )
