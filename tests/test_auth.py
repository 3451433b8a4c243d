"""The auth guard's key lookups: one query per key however many requests wait on it, and the
cache that stands in, for a while, when the database is away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from noroshi.auth import Authenticator
from noroshi.config import AuthConfig
from noroshi.errors import StoreUnavailable
from noroshi.http.request import Request
from noroshi.limits import LocalLimiter
from noroshi.store.database import open_database
from noroshi.store.keys import ApiKey, KeyCreate, KeyStore


class CountingKeys(KeyStore):
    """The real store, counting its lookups; `away` makes it fail as a database that is down."""

    finds = 0
    away = False

    async def find(self, secret: str) -> ApiKey | None:
        self.finds += 1
        if self.away:
            raise StoreUnavailable("the test's database: down")
        await asyncio.sleep(0.01)  # a query takes a moment: others arrive meanwhile
        return await super().find(secret)


@pytest.fixture
async def keys(tmp_path: Path) -> AsyncIterator[CountingKeys]:
    db = await open_database(None, tmp_path)
    yield CountingKeys(db)
    await db.close()


def request_with(secret: str) -> Request:
    async def no_body() -> bytes:
        return b""

    return Request(
        "POST",
        "/v1/chat/completions",
        "",
        {"authorization": f"Bearer {secret}"},
        no_body,
        "10.0.0.1:5000",
    )


async def test_requests_that_find_a_key_expired_share_one_lookup(keys: CountingKeys) -> None:
    made, secret = await keys.create(KeyCreate(name="busy"))
    auth = Authenticator(AuthConfig(master_key="sk-master-0123456789"), keys, LocalLimiter())
    principals = await asyncio.gather(
        *(auth.check(request_with(secret), "model") for _ in range(50))
    )
    assert all(p is not None and p.key_id == made.id for p in principals)
    assert keys.finds == 1


async def test_a_cached_key_stands_in_while_the_database_is_away(keys: CountingKeys) -> None:
    known, secret = await keys.create(KeyCreate(name="known"))
    _, stranger = await keys.create(KeyCreate(name="never seen"))
    config = AuthConfig(master_key="sk-master-0123456789", stale_key_s=2.0)
    auth = Authenticator(config, keys, LocalLimiter())
    assert await auth.check(request_with(secret), "model") is not None
    keys.away = True
    await asyncio.sleep(1.1)  # past the one-second cache: the lookup goes to the database
    served = await auth.check(request_with(secret), "model")
    assert served is not None and served.key_id == known.id and keys.finds == 2
    with pytest.raises(StoreUnavailable):  # not cached: refused cleanly
        await auth.check(request_with(stranger), "model")
    await asyncio.sleep(1.0)  # past stale_key_s too
    with pytest.raises(StoreUnavailable):
        await auth.check(request_with(secret), "model")
