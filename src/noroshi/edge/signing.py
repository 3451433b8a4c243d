"""Signed requests between the edge and the core.

The edge authenticates the client, then forwards the request with an HMAC-SHA256 signature
and the caller's context; a core trusts that context only once the signature checks out.
The string signed is one field a line, so no two requests can sign the same bytes:

    v1
    {METHOD}
    {path with query, exactly as sent}
    {timestamp}                 unix seconds
    {nonce}                     32 hex
    {key id}                    first 8 hex of sha256(secret)
    {sha256 hex of the body}
    {sha256 hex of the x-noroshi-caller value, "" when absent}

The last five fields never hold a newline and the method may not, so the path is the rest.
A core checks, in order: the headers are there (`unsigned_request`), the signature matches
the current or the previous secret (`bad_signature`), the timestamp is within `max_skew_s`
(`stale_request`), and only then that the nonce is new (`replayed_request`), so forged
requests never fill the nonce store. A nonce is kept for twice the skew: a timestamp
accepted now stays acceptable for at most that long.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import heapq
import hmac
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from noroshi.errors import Unauthorized, Unavailable

__all__ = [
    "HEADER_CALLER",
    "HEADER_KEY_ID",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MemoryNonces",
    "NonceStore",
    "RedisNonces",
    "Signer",
    "Verifier",
    "key_id",
]

HEADER_SIGNATURE = "x-noroshi-signature"  # "v1=<hex>"
HEADER_TIMESTAMP = "x-noroshi-timestamp"  # unix seconds (integer string)
HEADER_NONCE = "x-noroshi-nonce"  # 128-bit random, hex
HEADER_KEY_ID = "x-noroshi-key-id"  # which secret signed: first 8 hex of sha256(secret)
HEADER_CALLER = "x-noroshi-caller"  # the caller's identity & limits context, base64url(JSON)

VERSION = "v1"
MAX_NONCES = 1_000_000

_SIGNATURE = re.compile(r"v1=([0-9a-f]{64})")
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_NONCE = re.compile(r"[0-9a-f]{32}")
_KEY_ID = re.compile(r"[0-9a-f]{8}")
_REQUIRED = (HEADER_SIGNATURE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_KEY_ID)
_decode_caller = msgspec.json.Decoder(dict[str, Any])


def key_id(secret: str) -> str:
    """Names a secret without revealing it, so a core knows which of its two to try."""
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


def _check_secret(secret: str) -> bytes:
    if not secret:
        raise ValueError("the internal secret must not be empty")
    return secret.encode()


def _canonical(
    method: str, path: str, timestamp: str, nonce: str, kid: str, body: bytes, caller: str
) -> bytes:
    return "\n".join(
        (
            VERSION,
            method,
            path,
            timestamp,
            nonce,
            kid,
            hashlib.sha256(body).hexdigest(),
            hashlib.sha256(caller.encode()).hexdigest(),
        )
    ).encode()


def _mac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _bad(message: str, code: str = "bad_signature") -> Unauthorized:
    return Unauthorized(message, code=code)


class Signer:
    """The edge's half: the headers that let a core trust a forwarded request."""

    def __init__(self, secret: str) -> None:
        self._key = _check_secret(secret)
        self.key_id = key_id(secret)

    def sign(
        self,
        method: str,
        path: str,
        body: bytes,
        caller: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> dict[str, str]:
        """Headers to add to the request; `path` is the target as sent, query included."""
        method = method.upper()
        if any(c in s for s in (method, path) for c in "\r\n"):
            raise ValueError("method and path must not contain line breaks")
        timestamp = str(int(time.time() if now is None else now))
        nonce = secrets.token_hex(16)
        headers = {HEADER_TIMESTAMP: timestamp, HEADER_NONCE: nonce, HEADER_KEY_ID: self.key_id}
        encoded = ""
        if caller is not None:
            raw = msgspec.json.encode(caller)
            encoded = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
            headers[HEADER_CALLER] = encoded
        message = _canonical(method, path, timestamp, nonce, self.key_id, body, encoded)
        headers[HEADER_SIGNATURE] = f"{VERSION}={_mac(self._key, message)}"
        return headers


class NonceStore(abc.ABC):
    """Where a core remembers the nonces it has accepted, to refuse them a second time."""

    @abc.abstractmethod
    async def seen(self, nonce: str, ttl_s: float) -> bool:
        """Atomically: True if `nonce` was seen within its TTL, else remember it for `ttl_s`."""


class MemoryNonces(NonceStore):
    """Nonces in this process's memory, for a single core.

    Full (`max_entries` live nonces) it refuses new requests with 503 rather than forget a
    live nonce, which would reopen a replay window. Only validly signed requests get here.
    """

    def __init__(
        self, max_entries: int = MAX_NONCES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._expires: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (expires, nonce), soonest first

    def __len__(self) -> int:
        return len(self._expires)

    async def seen(self, nonce: str, ttl_s: float) -> bool:
        # No await inside: on one event loop the check and the insert are atomic.
        now = self._clock()
        self._prune(now)
        if nonce in self._expires:
            return True
        if len(self._expires) >= self.max_entries:
            raise Unavailable("Too many signed requests in flight to check for replays.")
        expires = now + ttl_s
        self._expires[nonce] = expires
        heapq.heappush(self._heap, (expires, nonce))
        return False

    def _prune(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, nonce = heapq.heappop(heap)
            del self._expires[nonce]


class RedisNonces(NonceStore):
    """Nonces in Redis (SET NX with an expiry), for cores that share it.

    Never retried: a SET that landed but lost its reply would make the retry call the
    request a replay. Redis being away fails closed, with 503.
    """

    def __init__(self, url: str, prefix: str = "noroshi:", timeout_s: float = 0.5) -> None:
        import redis.asyncio as aioredis  # only when Redis is configured
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.prefix = prefix
        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.failed = (aioredis.RedisError, OSError)

    async def seen(self, nonce: str, ttl_s: float) -> bool:
        key = f"{self.prefix}nonce:{nonce}"
        try:
            added = await self.client.set(key, b"1", nx=True, px=max(1, math.ceil(ttl_s * 1000)))
        except self.failed as exc:
            raise Unavailable("Cannot check the request for replays.") from exc
        return not added

    async def close(self) -> None:
        await self.client.aclose()


class Verifier:
    """The core's half: refuses any forwarded request the edge did not sign just now, once."""

    def __init__(
        self,
        secret: str,
        previous_secret: str = "",
        max_skew_s: float = 60.0,
        nonces: NonceStore | None = None,
    ) -> None:
        # Secrets by key id; a list because two secrets could share 8 hex, however unlikely.
        self._keys: dict[str, list[bytes]] = {}
        for s in (secret, previous_secret) if previous_secret else (secret,):
            self._keys.setdefault(key_id(s), []).append(_check_secret(s))
        self.max_skew_s = max_skew_s
        self.nonces = MemoryNonces() if nonces is None else nonces

    async def verify(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        now: float | None = None,
    ) -> dict[str, Any] | None:
        """The caller's context (None when the edge sent none), or raise `Unauthorized`.

        `headers` are looked up by lower-case name; `path` is the target as received.
        """
        for name in _REQUIRED:
            if not headers.get(name):
                raise _bad(f"Internal request is not signed: missing {name}.", "unsigned_request")
        signature = _SIGNATURE.fullmatch(headers[HEADER_SIGNATURE])
        timestamp = headers[HEADER_TIMESTAMP]
        nonce = headers[HEADER_NONCE]
        kid = headers[HEADER_KEY_ID]
        caller = headers.get(HEADER_CALLER, "")
        if signature is None:
            raise _bad(f"Malformed {HEADER_SIGNATURE}.")
        if not _TIMESTAMP.fullmatch(timestamp):
            raise _bad(f"Malformed {HEADER_TIMESTAMP}.")
        if not _NONCE.fullmatch(nonce):
            raise _bad(f"Malformed {HEADER_NONCE}.")
        if not _KEY_ID.fullmatch(kid) or kid not in self._keys:
            raise _bad(f"Unknown {HEADER_KEY_ID}.")
        if any(c in s for s in (method, path) for c in "\r\n"):
            raise _bad("Method or path contains a line break.")

        message = _canonical(method.upper(), path, timestamp, nonce, kid, body, caller)
        expected = signature.group(1)
        # Try every key of the id, so the time taken does not say which one matched.
        matched = False
        for key in self._keys[kid]:
            matched |= hmac.compare_digest(_mac(key, message), expected)
        if not matched:
            raise _bad("Signature does not match.")

        skew = (time.time() if now is None else now) - int(timestamp)
        if abs(skew) > self.max_skew_s:
            raise _bad(
                f"Request timestamp is {abs(skew):.0f} s off (at most {self.max_skew_s:g} s).",
                "stale_request",
            )
        context = _parse_caller(caller)
        if await self.nonces.seen(nonce, 2 * self.max_skew_s):
            raise _bad("Request was already received (nonce replayed).", "replayed_request")
        return context


def _parse_caller(value: str) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        return _decode_caller.decode(raw)
    except (ValueError, msgspec.DecodeError) as exc:
        # Signed, so our own edge sent it: a bug, not an attack, but still not trusted.
        raise _bad(f"Malformed {HEADER_CALLER}.") from exc
