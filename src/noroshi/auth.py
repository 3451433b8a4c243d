"""The auth guard: who is calling, and may they call this route.

Keys arrive as `Authorization: Bearer …` or `x-api-key`. The master key opens everything;
virtual keys are looked up by hash and cached per process. A change to a key reaches every
replica's cache within a second: through Redis pub/sub when Redis is configured (the cache
then keeps keys for `auth.key_cache_s`), otherwise by keeping them for one second only.
While the database is away, a key looked up in the last `auth.stale_key_s` is served from the
cache; an unknown one is refused with 503. Repeated failures from one address lock it out for
a while: further unknown or missing keys from it get 429, while a valid key is still accepted,
so a stranger cannot lock out the users who share an address (a NAT, a proxy) with them.
Behind proxies listed in `auth.trusted_proxies`, the address is the one their
`X-Forwarded-For` names.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from noroshi.broadcast import Channel
from noroshi.config import AuthConfig, ip_networks
from noroshi.edge.signing import Verifier
from noroshi.errors import Forbidden, RateLimited, StoreUnavailable, Unauthorized
from noroshi.http.forwarded import ClientAddress
from noroshi.http.request import Request
from noroshi.limits import Limiter
from noroshi.store.keys import ApiKey, KeyStore, hash_key
from noroshi.wire.endpoints import Access

__all__ = ["Authenticator", "KeyChanges", "Principal"]

log = logging.getLogger("noroshi.auth")

MAX_CACHED_KEYS = 10_000
UNSHARED_CACHE_S = 1.0
MAX_LOCKED_ADDRESSES = 100_000


class Principal:
    """The caller: a virtual key, or the master (also the caller when auth is off); on a core,
    the key an edge vouched for."""

    __slots__ = ("admin", "key", "key_id")

    def __init__(self, key: ApiKey | None, admin: bool, key_id: str | None = None) -> None:
        self.key = key
        self.admin = admin
        self.key_id = key.id if key is not None else key_id

    def context(self) -> dict[str, Any]:
        """What an edge tells a core about the caller."""
        return {"key_id": self.key_id, "admin": self.admin}


MASTER = Principal(None, admin=True)


class KeyChanges:
    """Redis pub/sub of changed key ids: every replica drops them from its cache at once."""

    def __init__(self, url: str, prefix: str, on_change: Callable[[str | None], None]) -> None:
        import redis.asyncio as aioredis  # only when Redis is configured

        self.client = aioredis.from_url(url, socket_timeout=None, socket_connect_timeout=2)
        self.failed = (aioredis.RedisError, OSError)
        # on (re)subscribing, anything may have changed while away: forget every key
        self.channel = Channel(self.client, f"{prefix}keys", on_change, lambda: on_change(None))

    @property
    def live(self) -> bool:
        """Subscribed now; while not, caches fall back to one second."""
        return self.channel.live

    def start(self) -> None:
        self.channel.start()

    async def publish(self, key_id: str) -> None:
        try:
            await self.channel.publish(key_id)
        except self.failed as exc:
            log.warning("could not announce a key change over Redis: %s", exc)

    async def close(self) -> None:
        await self.channel.close()
        await self.client.aclose()


class Authenticator:
    def __init__(self, config: AuthConfig, keys: KeyStore, limiter: Limiter) -> None:
        self.config = config
        self.enabled = bool(config.master_key)
        self.keys = keys
        self.limiter = limiter
        self.changes: KeyChanges | None = None
        self._master = config.master_key.encode()
        self._cache: dict[str, tuple[ApiKey, float]] = {}  # hash -> (key, fetched at)
        self._fetching: dict[str, asyncio.Future[ApiKey | None]] = {}  # hash -> its lookup
        self._locked: dict[str, float] = {}  # address -> locked until (monotonic)
        self._address = ClientAddress(ip_networks(config.trusted_proxies, "auth.trusted_proxies"))
        self.verifier: Verifier | None = None  # on a core: only signed requests from an edge

    async def check(self, request: Request, access: Access) -> Principal | None:
        """The caller, or an error: 401 without a valid key, 403 without the right, 429 when
        the address is locked out."""
        if access == "public":
            return None
        if self.verifier is not None:
            principal = await self._vouched(request)
        elif not self.enabled:
            principal = MASTER
        else:
            principal = await self._presented(request)
        if access == "admin" and not principal.admin:
            raise Forbidden("This route needs the master key.")
        return principal

    async def _presented(self, request: Request) -> Principal:
        """The caller whose key the request presents. A locked-out address is refused only
        once its key proved unknown, so a valid key from it still passes."""
        secret = _presented_key(request)
        if secret and hmac.compare_digest(secret.encode(), self._master):
            return MASTER
        key = await self._lookup(secret) if secret else None
        if key is not None and key.usable(time.time()):
            return Principal(key, admin=False)
        address = self._address(request.address, request.headers)
        self._refuse_if_locked(address)
        if not secret:
            raise Unauthorized(
                "No API key provided: send it as 'Authorization: Bearer …' or 'x-api-key'.",
                code="missing_api_key",
            )
        await self._failed(address)
        raise Unauthorized(_why_refused(key))

    def _refuse_if_locked(self, address: str) -> None:
        until = self._locked.get(address)
        if until is None:
            return
        left = until - time.monotonic()
        if left <= 0:
            del self._locked[address]
            return
        raise RateLimited(
            "Too many failed authentications from this address; try again later.",
            retry_after=left,
            code="auth_locked_out",
        )

    async def _vouched(self, request: Request) -> Principal:
        """A core trusts the edge's signature, and the caller it names, and nothing else."""
        assert self.verifier is not None
        target = f"{request.path}?{request.query}" if request.query else request.path
        caller = await self.verifier.verify(
            request.method, target, request.headers, await request.body()
        )
        caller = caller or {}
        key_id = caller.get("key_id")
        return Principal(
            None, bool(caller.get("admin")), key_id if isinstance(key_id, str) else None
        )

    async def _lookup(self, secret: str) -> ApiKey | None:
        digest = hash_key(secret)
        hit = self._cache.get(digest)
        now = time.monotonic()
        ttl = self.config.key_cache_s if self.changes and self.changes.live else UNSHARED_CACHE_S
        if hit is not None and now - hit[1] < ttl:
            return hit[0]
        # one lookup per key at a time: when an entry expires under load, the requests that
        # find it so wait for one query instead of each queueing its own
        fetch = self._fetching.get(digest)
        if fetch is None:
            fetch = asyncio.ensure_future(self._fetch(secret, digest))
            self._fetching[digest] = fetch
            fetch.add_done_callback(lambda done: self._fetched(digest, done))
        try:
            return await asyncio.shield(fetch)
        except StoreUnavailable:
            if hit is not None and now - hit[1] < self.config.stale_key_s:
                return hit[0]
            raise

    def _fetched(self, digest: str, done: asyncio.Future[ApiKey | None]) -> None:
        del self._fetching[digest]
        if not done.cancelled():
            done.exception()  # seen here, should every request that waited have gone

    async def _fetch(self, secret: str, digest: str) -> ApiKey | None:
        key = await self.keys.find(secret)
        if key is None:
            self._cache.pop(digest, None)
            return None
        if len(self._cache) >= MAX_CACHED_KEYS:
            del self._cache[next(iter(self._cache))]
        self._cache[digest] = (key, time.monotonic())
        return key

    def forget(self, key_id: str | None) -> None:
        """Drop a changed key from the cache (None: drop every key)."""
        if key_id is None:
            self._cache.clear()
            return
        for digest, (key, _) in list(self._cache.items()):
            if key.id == key_id:
                del self._cache[digest]

    async def changed(self, key_id: str) -> None:
        """A key was updated or revoked here: forget it, and tell the other replicas."""
        self.forget(key_id)
        if self.changes is not None:
            await self.changes.publish(key_id)

    async def _failed(self, address: str) -> None:
        cfg = self.config
        failures = await self.limiter.hit(f"authfail:{address}", cfg.lockout_window_s)
        if failures >= cfg.lockout_failures:
            log.warning(
                "locking out %s for %.0f s after %d failed authentications",
                address,
                cfg.lockout_s,
                failures,
            )
            if len(self._locked) >= MAX_LOCKED_ADDRESSES:
                del self._locked[next(iter(self._locked))]
            self._locked[address] = time.monotonic() + cfg.lockout_s


def _presented_key(request: Request) -> str:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer":
            return token.strip()
    return request.headers.get("x-api-key", "").strip()


def _why_refused(key: ApiKey | None) -> str:
    if key is None:
        return "Incorrect API key provided."
    if key.revoked_at is not None:
        return "This API key has been revoked."
    expired = key.expires_at.iso() if key.expires_at is not None else "an earlier time"
    return f"This API key expired at {expired}."
