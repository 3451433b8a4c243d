from __future__ import annotations

import asyncio
import hashlib
import re
import time
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from noroshi.errors import BadRequest
from noroshi.store.database import Database
from noroshi.store.keys import (
    ApiKey,
    Budget,
    KeyCreate,
    KeyStore,
    KeyUpdate,
    ModelLimits,
    hash_key,
)
from noroshi.wire import times
from noroshi.wire.times import Timestamp

decode_create = msgspec.json.Decoder(KeyCreate).decode
decode_update = msgspec.json.Decoder(KeyUpdate).decode


@pytest.fixture
def store(db: Database) -> KeyStore:
    return KeyStore(db)


def full_spec(**changes: object) -> KeyCreate:
    spec = KeyCreate(
        name="app",
        models=["fast", "smart"],
        rpm=60,
        tpm=10_000,
        max_concurrency=4,
        model_limits={"smart": ModelLimits(rpm=5)},
        budget=Budget(tokens_per_day=100_000, cost_per_month=20.5),
        expires_at=datetime.now(UTC) + timedelta(days=30),
        metadata={"team": "a", "tags": ["x", 1], "nested": {"ok": True}},
    )
    return msgspec.structs.replace(spec, **changes)


async def test_create_then_get_and_find(store: KeyStore) -> None:
    key, secret = await store.create(full_spec())
    assert re.fullmatch(r"key_[0-9a-f]{12}", key.id)
    assert re.fullmatch(r"nrs-[A-Za-z0-9_-]{43}", secret)
    random = secret.removeprefix("nrs-")
    assert key.hint == f"nrs-{random[:4]}…{random[-4:]}"
    assert isinstance(key.created_at, Timestamp) and key.revoked_at is None
    assert abs(key.created_at - time.time()) < 60
    assert key.budget == Budget(tokens_per_day=100_000, cost_per_month=20.5)
    assert key.model_limits == {"smart": ModelLimits(rpm=5)}
    assert await store.get(key.id) == key
    assert await store.find(secret) == key
    assert await store.find(secret + "x") is None
    assert await store.get("key_000000000000") is None


async def test_defaults_round_trip(store: KeyStore) -> None:
    key, _ = await store.create(KeyCreate(name="plain"))
    stored = await store.get(key.id)
    assert stored == key
    assert stored is not None and stored.models == [] and stored.budget is None
    assert stored.expires_at is None and stored.metadata == {} and stored.model_limits == {}


async def test_only_the_hash_is_stored(store: KeyStore, db: Database) -> None:
    key, secret = await store.create(full_spec())
    row = await db.fetchone("SELECT * FROM api_keys WHERE id = ?", (key.id,))
    assert row is not None
    text = repr(row)
    assert secret not in text and secret.removeprefix("nrs-") not in text
    assert hash_key(secret) == hashlib.sha256(secret.encode()).hexdigest()
    assert hash_key(secret) in row
    # and nothing shown carries it
    shown = times.encode(key).decode()
    assert secret not in shown and hash_key(secret) not in shown


async def test_list_is_newest_first_and_hides_revoked(store: KeyStore) -> None:
    first, _ = await store.create(KeyCreate(name="first"))
    await asyncio.sleep(0.002)
    second, _ = await store.create(KeyCreate(name="second"))
    await asyncio.sleep(0.002)
    third, _ = await store.create(KeyCreate(name="third"))
    assert [k.id for k in await store.list()] == [third.id, second.id, first.id]
    await store.revoke(second.id)
    assert [k.id for k in await store.list()] == [third.id, first.id]
    assert [k.id for k in await store.list(include_revoked=True)] == [
        third.id,
        second.id,
        first.id,
    ]


async def test_revoke_is_kept_and_idempotent(store: KeyStore) -> None:
    key, secret = await store.create(KeyCreate(name="gone"))
    revoked = await store.revoke(key.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert not revoked.usable(time.time())
    again = await store.revoke(key.id)
    assert again is not None and again.revoked_at == revoked.revoked_at
    found = await store.find(secret)  # still found: the caller says why it is refused
    assert found is not None and found.revoked_at == revoked.revoked_at
    assert await store.revoke("key_000000000000") is None


async def test_expiry(store: KeyStore) -> None:
    now = datetime.now(UTC)
    with pytest.raises(BadRequest) as error:
        await store.create(KeyCreate(name="old", expires_at=now - timedelta(seconds=1)))
    assert error.value.param == "expires_at"
    assert await store.list() == []

    naive = (now + timedelta(hours=1)).replace(tzinfo=None, microsecond=0)
    key, _ = await store.create(KeyCreate(name="naive", expires_at=naive))
    assert key.expires_at == naive.replace(tzinfo=UTC).timestamp()
    assert key.expires_at.iso() == naive.isoformat() + ".000Z"
    assert key.usable(now.timestamp()) and not key.usable(now.timestamp() + 7200)

    tokyo = timezone(timedelta(hours=9))
    moment = (now + timedelta(days=1)).astimezone(tokyo)
    key, _ = await store.create(KeyCreate(name="zoned", expires_at=moment))
    stored = await store.get(key.id)
    assert stored is not None and stored.expires_at == moment.timestamp()
    assert stored.expires_at is not None and stored.expires_at.iso().endswith("Z")


async def test_update_unset_keeps_null_clears(store: KeyStore) -> None:
    key, secret = await store.create(full_spec())
    updated = await store.update(key.id, decode_update(b'{"rpm": 5, "name": "renamed"}'))
    assert updated is not None and updated.rpm == 5 and updated.name == "renamed"
    # everything not named is as it was
    assert msgspec.structs.replace(updated, rpm=key.rpm, name=key.name) == key
    assert await store.get(key.id) == updated

    cleared = await store.update(
        key.id, decode_update(b'{"tpm": null, "budget": null, "expires_at": null}')
    )
    assert cleared is not None
    assert cleared.tpm is None and cleared.budget is None and cleared.expires_at is None
    assert cleared.rpm == 5 and cleared.max_concurrency == 4 and cleared.models == key.models
    assert await store.get(key.id) == cleared
    assert await store.find(secret) == cleared

    nothing = await store.update(key.id, KeyUpdate())
    assert nothing == cleared
    assert await store.update("key_000000000000", KeyUpdate(rpm=1)) is None


async def test_update_replaces_nested_values(store: KeyStore) -> None:
    key, _ = await store.create(full_spec())
    changes = KeyUpdate(
        models=[],
        model_limits={"fast": ModelLimits(tpm=100)},
        budget=Budget(cost_per_day=1.0),
        metadata={"team": "b"},
        expires_at=datetime.now(UTC) + timedelta(days=1),
    )
    updated = await store.update(key.id, changes)
    stored = await store.get(key.id)
    assert updated == stored
    assert stored is not None and stored.models == [] and stored.metadata == {"team": "b"}
    assert stored.model_limits == {"fast": ModelLimits(tpm=100)}
    assert stored.budget == Budget(cost_per_day=1.0)
    with pytest.raises(BadRequest) as error:
        await store.update(key.id, KeyUpdate(expires_at=datetime(2001, 1, 1, tzinfo=UTC)))
    assert error.value.param == "expires_at"


async def test_concurrent_updates_both_apply(store: KeyStore) -> None:
    key, _ = await store.create(KeyCreate(name="raced"))
    changes = [KeyUpdate(rpm=5), KeyUpdate(tpm=7), KeyUpdate(max_concurrency=2)]
    await asyncio.gather(*(store.update(key.id, c) for c in changes))
    stored = await store.get(key.id)
    assert stored is not None
    assert (stored.rpm, stored.tpm, stored.max_concurrency) == (5, 7, 2)


async def test_update_keeps_revocation(store: KeyStore) -> None:
    key, _ = await store.create(KeyCreate(name="x"))
    revoked = await store.revoke(key.id)
    updated = await store.update(key.id, KeyUpdate(rpm=3))
    assert updated is not None and revoked is not None
    assert updated.revoked_at == revoked.revoked_at


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"name": "x", "rpm": 0}', "$.rpm"),
        (b'{"name": "x", "tpm": -5}', "$.tpm"),
        (b'{"name": "x", "max_concurrency": 0}', "$.max_concurrency"),
        (b'{"name": "x", "budget": {"tokens_per_day": "many"}}', "$.budget.tokens_per_day"),
        (b'{"name": "x", "budget": {"cost_per_day": 0}}', "$.budget.cost_per_day"),
        (b'{"name": "x", "budget": {"per_year": 1}}', "$.budget"),
        (b'{"name": "x", "model_limits": {"m": {"rpm": 0}}}', "$.model_limits[...].rpm"),
        (b'{"name": ""}', "$.name"),
        (b'{"name": "' + b"x" * 201 + b'"}', "$.name"),
        (b'{"name": "x", "models": [""]}', "$.models[0]"),
        (b'{"name": "x", "expires_at": "soon"}', "$.expires_at"),
        (b'{"name": "x", "color": "red"}', "color"),
        (b"{}", "name"),
    ],
)
def test_bad_create_names_the_field(body: bytes, where: str) -> None:
    with pytest.raises(msgspec.ValidationError) as error:
        decode_create(body)
    assert where in str(error.value)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"name": null}', "$.name"),
        (b'{"models": null}', "$.models"),
        (b'{"rpm": 0}', "$.rpm"),
        (b'{"budget": {"tokens_per_month": 0}}', "$.budget.tokens_per_month"),
        (b'{"secret": "x"}', "secret"),
    ],
)
def test_bad_update_names_the_field(body: bytes, where: str) -> None:
    with pytest.raises(msgspec.ValidationError) as error:
        decode_update(body)
    assert where in str(error.value)


def test_update_tells_absent_from_null() -> None:
    absent = decode_update(b"{}")
    assert absent.rpm is msgspec.UNSET and absent.budget is msgspec.UNSET
    null = decode_update(b'{"rpm": null, "budget": null}')
    assert null.rpm is None and null.budget is None


def test_usable() -> None:
    now = Timestamp.now()
    key = ApiKey(id="key_x", name="x", hint="h", created_at=now)
    assert key.usable(now)
    expiring = msgspec.structs.replace(key, expires_at=Timestamp(now + 1))
    assert expiring.usable(now) and not expiring.usable(now + 1)
    assert not msgspec.structs.replace(key, revoked_at=now).usable(now)
