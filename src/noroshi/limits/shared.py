"""Shared limits on Redis that survive losing Redis.

While Redis cannot be reached, each replica enforces its own share of every limit in memory
and tries Redis again every `retry_s`. Budget counters are copied into memory as they are
read, so a replica keeps enforcing budgets while away; what it spends meanwhile is added to
Redis once it is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TypeVar

from noroshi.limits.base import LEASE_TTL_S, Decision, Limiter, Rule
from noroshi.limits.local import MAX_SCOPES, LocalLimiter
from noroshi.limits.redis import RedisLimiter

__all__ = ["SharedLimiter"]

log = logging.getLogger("noroshi.limits")

T = TypeVar("T")


def _unreachable() -> tuple[type[Exception], ...]:
    """Unreachable, or unable to write (a replica promoted late, memory full): either way, no
    shared limits for now. Other errors are bugs, and are raised."""
    import redis.exceptions  # only when Redis is configured

    return (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        redis.exceptions.ReadOnlyError,
        redis.exceptions.OutOfMemoryError,
        OSError,
    )


class SharedLimiter(Limiter):
    """`RedisLimiter`, falling back to a `LocalLimiter(share=local_share)` while Redis is away."""

    def __init__(
        self,
        url: str,
        prefix: str = "noroshi:",
        local_share: float = 1.0,
        retry_s: float = 1.0,
        *,
        lease_ttl_s: float = LEASE_TTL_S,
        timeout_s: float = 0.5,
    ) -> None:
        self.redis = RedisLimiter(url, prefix, lease_ttl_s, timeout_s)
        self.unreachable = _unreachable()
        self.local = LocalLimiter(local_share, lease_ttl_s=lease_ttl_s)
        self.local_share = local_share
        self.retry_s = retry_s
        self.lease_ttl_s = lease_ttl_s
        self._retry_at: float | None = None  # while Redis is away: when to try it again
        self._local_leases: dict[str, float] = {}  # admitted locally -> when, oldest first
        self._seeds: dict[tuple[str, str], tuple[int, float]] = {}  # made locally while away
        self._unsent: dict[tuple[str, str], tuple[int, float]] = {}  # spent locally while away

    @property
    def shared(self) -> bool:
        """Whether Redis is in use (it is until a call fails)."""
        return self._retry_at is None

    async def admit(self, rules: Sequence[Rule], lease: str, tokens: int) -> Decision:
        if await self._reachable():
            try:
                return await self.redis.admit(rules, lease, tokens)
            except self.unreachable as exc:
                self._lost(exc)
        decision = await self.local.admit(rules, lease, tokens)
        if decision.allowed:
            self._remember_local(lease)
        return decision

    async def settle(self, rules: Sequence[Rule], lease: str, tokens: int) -> None:
        if self._local_leases.pop(lease, None) is not None:
            await self.local.settle(rules, lease, tokens)
            # and in Redis too, once it is back: an admission that timed out may have reached it
        if await self._reachable():
            try:
                await self.redis.settle(rules, lease, tokens)
            except self.unreachable as exc:
                self._lost(exc)  # the lease runs out in Redis after lease_ttl_s

    async def add_spend(
        self, subject: str, periods: Sequence[str], tokens: int, cost: float
    ) -> None:
        await self.local.add_spend(subject, periods, tokens, cost)
        if await self._reachable():
            try:
                await self.redis.add_spend(subject, periods, tokens, cost)
                return
            except self.unreachable as exc:
                self._lost(exc)
        for period in periods:
            old_tokens, old_cost = self._unsent.get((subject, period), (0, 0.0))
            self._keep(self._unsent, (subject, period), (old_tokens + tokens, old_cost + cost))

    async def spend(self, subject: str, periods: Sequence[str]) -> list[tuple[int, float]]:
        if await self._reachable():
            try:
                spent = await self.redis.spend(subject, periods)
            except self.unreachable as exc:
                self._lost(exc)
            else:
                for period, (tokens, cost) in zip(periods, spent, strict=True):
                    self.local.set_spend(subject, period, tokens, cost)
                return spent
        return await self.local.spend(subject, periods)

    async def seed_spend(self, subject: str, period: str, tokens: int, cost: float) -> None:
        await self.local.seed_spend(subject, period, tokens, cost)
        if await self._reachable():
            try:
                await self.redis.seed_spend(subject, period, tokens, cost)
                return
            except self.unreachable as exc:
                self._lost(exc)
        self._keep(self._seeds, (subject, period), (tokens, cost))

    async def hit(self, scope: str, window_s: float) -> int:
        if await self._reachable():
            try:
                return await self.redis.hit(scope, window_s)
            except self.unreachable as exc:
                self._lost(exc)
        return await self.local.hit(scope, window_s)

    async def close(self) -> None:
        await self.redis.close()
        await self.local.close()

    # --- failover --------------------------------------------------------------------------

    async def _reachable(self) -> bool:
        """False while Redis is known to be away. Once `retry_s` has passed, one call probes
        it (the others stay local meanwhile) and hands over what was kept locally."""
        if self._retry_at is None:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        self._retry_at = now + self.retry_s
        try:
            await self._hand_over()
        except self.unreachable as exc:
            self._lost(exc)
            return False
        self._retry_at = None
        log.info("Redis reachable again; shared limits resume")
        return True

    def _lost(self, exc: BaseException) -> None:
        if self._retry_at is None:
            log.warning(
                "Redis unreachable (%s); enforcing a local share of %.2f of each limit",
                exc,
                self.local_share,
            )
        self._retry_at = time.monotonic() + self.retry_s

    async def _hand_over(self) -> None:
        """Seeds go first, so that a bucket made while away is not taken as already seeded.
        Whatever is not handed over is kept for the next try."""
        await self.redis.client.ping()
        seeds, self._seeds = self._seeds, {}
        unsent, self._unsent = self._unsent, {}
        try:
            for (subject, period), (tokens, cost) in list(seeds.items()):
                await self.redis.seed_spend(subject, period, tokens, cost)
                del seeds[subject, period]
            for (subject, period), (tokens, cost) in list(unsent.items()):
                await self.redis.add_spend(subject, [period], tokens, cost)
                del unsent[subject, period]
        finally:
            for key, seed in seeds.items():
                self._keep(self._seeds, key, self._seeds.get(key, seed))
            for key, (tokens, cost) in unsent.items():
                more_tokens, more_cost = self._unsent.get(key, (0, 0.0))
                self._keep(self._unsent, key, (tokens + more_tokens, cost + more_cost))

    def _remember_local(self, lease: str) -> None:
        """So that its settle goes where it was admitted; forgotten when it would have expired."""
        now = time.monotonic()
        leases = self._local_leases
        while leases:
            first = next(iter(leases))
            if leases[first] > now - self.lease_ttl_s and len(leases) < MAX_SCOPES:
                break
            del leases[first]
        leases[lease] = now

    @staticmethod
    def _keep(table: dict[tuple[str, str], T], key: tuple[str, str], value: T) -> None:
        if key not in table and len(table) >= MAX_SCOPES:
            return  # bounded: past this, an outage's spend is enforced locally but not handed over
        table[key] = value
