"""Signed edge-to-core requests: what a core accepts, and every way it refuses."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import pytest

from noroshi import edge
from noroshi.edge import (
    HEADER_CALLER,
    HEADER_KEY_ID,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    MemoryNonces,
    NonceStore,
    RedisNonces,
    Signer,
    Verifier,
    key_id,
)
from noroshi.errors import Unauthorized, Unavailable

SECRET = "current-secret-0123456789abcdef"
OLD = "previous-secret-0123456789abcdef"
NOW = 1_700_000_000.0
PATH = "/v1/chat/completions?stream=true"
BODY = b'{"model": "fast"}'
CALLER: dict[str, Any] = {"key": "k_123", "team": "t1", "limits": {"rpm": 60, "tpm": None}}


async def refused(
    verifier: Verifier,
    headers: dict[str, str],
    *,
    method: str = "POST",
    path: str = PATH,
    body: bytes = BODY,
    now: float = NOW,
) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        await verifier.verify(method, path, headers, body, now=now)
    assert info.value.status == 401
    return info.value


def signed(caller: dict[str, Any] | None = CALLER, secret: str = SECRET) -> dict[str, str]:
    return Signer(secret).sign("POST", PATH, BODY, caller, now=NOW)


def test_exports() -> None:
    assert edge.__all__ == sorted(edge.__all__)
    assert set(edge.__all__) == set(edge.signing.__all__)


def test_headers_have_their_documented_shapes() -> None:
    headers = signed()
    assert headers[HEADER_SIGNATURE].startswith("v1=")
    assert len(headers[HEADER_SIGNATURE]) == 3 + 64
    assert headers[HEADER_TIMESTAMP] == "1700000000"
    assert len(bytes.fromhex(headers[HEADER_NONCE])) == 16
    assert headers[HEADER_KEY_ID] == key_id(SECRET) and len(key_id(SECRET)) == 8
    assert "=" not in headers[HEADER_CALLER]
    assert signed()[HEADER_NONCE] != headers[HEADER_NONCE]
    assert HEADER_CALLER not in signed(caller=None)


def test_secrets_and_targets_are_checked() -> None:
    with pytest.raises(ValueError, match="empty"):
        Signer("")
    with pytest.raises(ValueError, match="empty"):
        Verifier("")
    with pytest.raises(ValueError, match="line breaks"):
        Signer(SECRET).sign("POST", "/v1\nx", b"")
    with pytest.raises(ValueError, match="line breaks"):
        Signer(SECRET).sign("PO\rST", "/v1", b"")


@pytest.mark.parametrize("caller", [CALLER, {}, {"name": "ünïcode ✓"}, None])
async def test_round_trip(caller: dict[str, Any] | None) -> None:
    verifier = Verifier(SECRET)
    headers = Signer(SECRET).sign("post", PATH, BODY, caller, now=NOW)
    assert await verifier.verify("POST", PATH, headers, BODY, now=NOW + 59) == caller


async def test_round_trip_with_an_empty_body_and_real_clock() -> None:
    headers = Signer(SECRET).sign("GET", "/v1/models", b"")
    assert await Verifier(SECRET).verify("GET", "/v1/models", headers, b"") is None


def _other_caller() -> str:
    return base64.urlsafe_b64encode(b'{"key":"k_admin"}').decode()


@pytest.mark.parametrize(
    ("change", "request_kw"),
    [
        ({}, {"method": "PUT"}),
        ({}, {"path": "/v1/embeddings?stream=true"}),
        ({}, {"path": "/v1/chat/completions?stream=false"}),
        ({}, {"path": "/v1/chat/completions"}),
        ({}, {"body": BODY + b" "}),
        ({}, {"body": b""}),
        ({HEADER_TIMESTAMP: "1700000001"}, {}),
        ({HEADER_NONCE: "0" * 32}, {}),
        ({HEADER_KEY_ID: key_id(OLD)}, {}),
        ({HEADER_KEY_ID: "deadbeef"}, {}),
        ({HEADER_CALLER: _other_caller()}, {}),
        ({HEADER_CALLER: ""}, {}),
        ({HEADER_SIGNATURE: "v1=" + "0" * 64}, {}),
    ],
)
async def test_tampering_is_refused(change: dict[str, str], request_kw: dict[str, Any]) -> None:
    verifier = Verifier(SECRET, previous_secret=OLD)
    error = await refused(verifier, {**signed(), **change}, **request_kw)
    assert error.code == "bad_signature"


async def test_tampering_with_a_signature_bit_is_refused() -> None:
    headers = signed()
    digits = headers[HEADER_SIGNATURE][3:]
    flipped = format(int(digits, 16) ^ 1, "064x")
    error = await refused(Verifier(SECRET), {**headers, HEADER_SIGNATURE: f"v1={flipped}"})
    assert (error.code, error.message) == ("bad_signature", "Signature does not match.")


async def test_dropping_the_caller_is_refused() -> None:
    headers = signed()
    del headers[HEADER_CALLER]
    assert (await refused(Verifier(SECRET), headers)).code == "bad_signature"


async def test_another_secret_is_refused() -> None:
    error = await refused(Verifier(SECRET), signed(secret="someone-else's-secret"))
    assert error.code == "bad_signature"
    assert HEADER_KEY_ID in error.message


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (HEADER_SIGNATURE, "v2=" + "0" * 64),
        (HEADER_SIGNATURE, "v1=" + "0" * 63),
        (HEADER_SIGNATURE, "v1=" + "A" * 64),
        (HEADER_SIGNATURE, "v1=" + "é" * 64),
        (HEADER_TIMESTAMP, "-5"),
        (HEADER_TIMESTAMP, "1700000000.5"),
        (HEADER_TIMESTAMP, "\uff11\uff17\uff10\uff10"),  # digits, but not ASCII ones
        (HEADER_NONCE, "xyz"),
        (HEADER_NONCE, "0" * 33),
        (HEADER_KEY_ID, "DEADBEEF"),
    ],
)
async def test_malformed_headers_are_refused(header: str, value: str) -> None:
    error = await refused(Verifier(SECRET), {**signed(), header: value})
    assert error.code == "bad_signature"
    assert header in error.message


async def test_line_breaks_in_the_target_are_refused() -> None:
    error = await refused(Verifier(SECRET), signed(), path=PATH + "\nx")
    assert error.code == "bad_signature"


@pytest.mark.parametrize(
    "missing", [HEADER_SIGNATURE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_KEY_ID]
)
async def test_missing_headers_are_unsigned(missing: str) -> None:
    headers = signed()
    del headers[missing]
    error = await refused(Verifier(SECRET), headers)
    assert error.code == "unsigned_request"
    assert missing in error.message
    error = await refused(Verifier(SECRET), {**headers, missing: ""})
    assert error.code == "unsigned_request"


async def test_no_headers_at_all_are_unsigned() -> None:
    assert (await refused(Verifier(SECRET), {})).code == "unsigned_request"


@pytest.mark.parametrize("offset", [-61, 61, -3600, 3600])
async def test_stale_requests_are_refused_both_ways(offset: float) -> None:
    # A negative offset: the core's clock is behind, so the request is from the future.
    error = await refused(Verifier(SECRET), signed(), now=NOW + offset)
    assert error.code == "stale_request"
    assert "60 s" in error.message


@pytest.mark.parametrize("offset", [-60, 60])
async def test_skew_up_to_the_limit_is_accepted(offset: float) -> None:
    assert await Verifier(SECRET).verify("POST", PATH, signed(), BODY, now=NOW + offset) == CALLER


async def test_max_skew_is_configurable() -> None:
    verifier = Verifier(SECRET, max_skew_s=5)
    assert (await refused(verifier, signed(), now=NOW + 6)).code == "stale_request"
    assert await verifier.verify("POST", PATH, signed(), BODY, now=NOW + 5) == CALLER


async def test_replay_is_refused_in_memory() -> None:
    verifier = Verifier(SECRET)
    headers = signed()
    await verifier.verify("POST", PATH, headers, BODY, now=NOW)
    error = await refused(verifier, headers, now=NOW + 1)
    assert error.code == "replayed_request"
    # A fresh signature is a fresh request.
    assert await verifier.verify("POST", PATH, signed(), BODY, now=NOW) == CALLER


async def test_rotation() -> None:
    old_headers = signed(secret=OLD)
    rotating = Verifier(SECRET, previous_secret=OLD)
    assert await rotating.verify("POST", PATH, old_headers, BODY, now=NOW) == CALLER
    assert await rotating.verify("POST", PATH, signed(), BODY, now=NOW) == CALLER
    rotated = Verifier(SECRET)
    assert (await refused(rotated, signed(secret=OLD))).code == "bad_signature"
    # Not yet rotated: a core that only knows the old secret refuses the new one.
    assert (await refused(Verifier(OLD), signed())).code == "bad_signature"


async def test_rotation_to_the_same_secret() -> None:
    verifier = Verifier(SECRET, previous_secret=SECRET)
    assert await verifier.verify("POST", PATH, signed(), BODY, now=NOW) == CALLER


class CountingNonces(NonceStore):
    def __init__(self) -> None:
        self.inner = MemoryNonces()
        self.calls = 0

    async def seen(self, nonce: str, ttl_s: float) -> bool:
        self.calls += 1
        return await self.inner.seen(nonce, ttl_s)


async def test_invalid_requests_never_reach_the_nonce_store() -> None:
    nonces = CountingNonces()
    verifier = Verifier(SECRET, nonces=nonces)
    headers = signed()
    garbage = {**headers, HEADER_SIGNATURE: "v1=" + "0" * 64}
    for _ in range(3):
        await refused(verifier, garbage)
    await refused(verifier, headers, now=NOW + 120)  # stale: refused before the store too
    assert nonces.calls == 0
    assert await verifier.verify("POST", PATH, headers, BODY, now=NOW) == CALLER
    assert nonces.calls == 1


async def test_nonces_are_kept_for_twice_the_skew() -> None:
    ttls: list[float] = []

    class Recording(NonceStore):
        async def seen(self, nonce: str, ttl_s: float) -> bool:
            ttls.append(ttl_s)
            return False

    await Verifier(SECRET, max_skew_s=30, nonces=Recording()).verify(
        "POST", PATH, signed(), BODY, now=NOW
    )
    assert ttls == [60]


async def test_a_signed_but_malformed_caller_is_refused() -> None:
    # Only a buggy edge could send this; it is still not trusted, nor its nonce spent.
    headers = signed(caller=None)
    for bad in ("!!!", base64.urlsafe_b64encode(b"[1, 2]").decode()):
        message = "\n".join(
            [
                "v1",
                "POST",
                PATH,
                headers[HEADER_TIMESTAMP],
                headers[HEADER_NONCE],
                headers[HEADER_KEY_ID],
                hashlib.sha256(BODY).hexdigest(),
                hashlib.sha256(bad.encode()).hexdigest(),
            ]
        ).encode()
        mac = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
        forged = {**headers, HEADER_CALLER: bad, HEADER_SIGNATURE: f"v1={mac}"}
        nonces = MemoryNonces()
        error = await refused(Verifier(SECRET, nonces=nonces), forged)
        assert (error.code, error.message) == ("bad_signature", f"Malformed {HEADER_CALLER}.")
        assert len(nonces) == 0


async def test_memory_nonces_expire_and_stay_bounded() -> None:
    clock = [0.0]
    nonces = MemoryNonces(max_entries=2, clock=lambda: clock[0])
    assert not await nonces.seen("a", 10)
    assert await nonces.seen("a", 10)
    assert not await nonces.seen("b", 5)
    with pytest.raises(Unavailable):
        await nonces.seen("c", 10)  # full of live nonces: refuse rather than forget one
    clock[0] = 5.0
    assert not await nonces.seen("c", 10)  # "b" expired and was pruned
    assert len(nonces) == 2
    assert await nonces.seen("a", 10)
    clock[0] = 10.0
    assert not await nonces.seen("a", 10)  # "a" expired: remembered afresh
    assert len(nonces) == 2


@pytest.fixture
async def redis_nonces(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisNonces]:
    nonces = RedisNonces(redis_url, redis_prefix)
    yield nonces
    await nonces.close()


async def test_replay_is_refused_with_redis(redis_url: str, redis_nonces: RedisNonces) -> None:
    verifier = Verifier(SECRET, nonces=redis_nonces)
    headers = signed()
    assert await verifier.verify("POST", PATH, headers, BODY, now=NOW) == CALLER
    assert (await refused(verifier, headers)).code == "replayed_request"
    # Another core sharing the Redis refuses it too.
    other = RedisNonces(redis_url, redis_nonces.prefix)
    try:
        assert (await refused(Verifier(SECRET, nonces=other), headers)).code == "replayed_request"
    finally:
        await other.close()
    key = f"{redis_nonces.prefix}nonce:{headers[HEADER_NONCE]}"
    assert 110_000 < await redis_nonces.client.pttl(key) <= 120_000


async def test_garbage_never_reaches_redis(redis_nonces: RedisNonces) -> None:
    verifier = Verifier(SECRET, nonces=redis_nonces)
    headers = signed()
    await refused(verifier, {**headers, HEADER_SIGNATURE: "v1=" + "0" * 64})
    assert (
        await redis_nonces.client.exists(f"{redis_nonces.prefix}nonce:{headers[HEADER_NONCE]}") == 0
    )
    assert await verifier.verify("POST", PATH, headers, BODY, now=NOW) == CALLER


async def test_redis_away_fails_closed() -> None:
    nonces = RedisNonces("redis://127.0.0.1:1/0", timeout_s=0.2)
    try:
        with pytest.raises(Unavailable) as info:
            await Verifier(SECRET, nonces=nonces).verify("POST", PATH, signed(), BODY, now=NOW)
        assert info.value.status == 503
    finally:
        await nonces.close()
