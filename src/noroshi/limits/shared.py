"""Shared limits on Redis that survive losing Redis.

While Redis cannot be reached, each replica enforces its own share of every limit in memory
and tries Redis again every `retry_s`. When Redis is back, for one more window each admission
must pass both Redis and the replica's own share, whose window still holds what it admitted
while away; and the requests it admitted meanwhile that still run take their slots in Redis's
concurrency sets. So over any window, a key gets at most its limit plus each replica's share
of it (`limit x (1 + local_share x replicas)`), whether Redis kept its data or came back empty.

Releases go to Redis through its outbox, which keeps them while Redis is away. Budget counters
are copied into memory as they are read, so a replica keeps enforcing budgets while away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from noroshi.limits.base import WINDOW_S, Decision, Limiter, Rule, Settlement
from noroshi.limits.local import MAX_SCOPES, LocalLimiter
from noroshi.limits.redis import SHARED_LEASE_TTL_S, RedisLimiter

__all__ = ["SharedLimiter"]

log = logging.getLogger("noroshi.limits")


class SharedLimiter(Limiter):
    """`RedisLimiter`, falling back to a `LocalLimiter(share=local_share)` while Redis is away."""

    def __init__(
        self,
        url: str,
        prefix: str = "noroshi:",
        local_share: float = 1.0,
        retry_s: float = 1.0,
        *,
        lease_ttl_s: float = SHARED_LEASE_TTL_S,
        timeout_s: float = 0.5,
        window_s: float = WINDOW_S,
    ) -> None:
        self.redis = RedisLimiter(
            url,
            prefix,
            lease_ttl_s,
            timeout_s,
            window_s=window_s,
            retry_s=retry_s,
            on_unreachable=self._lost,
        )
        self.unreachable = self.redis.unreachable
        self.local = LocalLimiter(local_share, window_s=window_s)
        self.local_share = local_share
        self.retry_s = retry_s
        self.window_s = window_s
        self._retry_at: float | None = None  # while Redis is away: when to try it again
        self._grace_until = 0.0  # after an outage: the local share still applies until then
        self._running: dict[str, Sequence[Rule]] = {}  # admitted in memory while away, running
        self._seeds: dict[tuple[str, str], tuple[int, float]] = {}  # made locally while away

    @property
    def shared(self) -> bool:
        """Whether Redis is in use (it is until a call fails)."""
        return self._retry_at is None

    async def admit(self, rules: Sequence[Rule], lease: str, tokens: int) -> Decision:
        if await self._reachable():
            if time.monotonic() >= self._grace_until:
                try:
                    return await self.redis.admit(rules, lease, tokens)
                except self.unreachable as exc:
                    self._lost(exc)
            else:
                return await self._admit_both(rules, lease, tokens)
        decision = await self.local.admit(rules, lease, tokens)
        if decision.allowed:
            self._remember(rules, lease)
        return decision

    async def _admit_both(self, rules: Sequence[Rule], lease: str, tokens: int) -> Decision:
        """Just after an outage: this replica's share, then Redis. A request Redis refuses
        stays in the local window, which only errs on the side of refusing."""
        local = await self.local.admit(rules, lease, tokens)
        if not local.allowed:
            return local
        try:
            return await self.redis.admit(rules, lease, tokens)
        except self.unreachable as exc:
            self._lost(exc)
            self._remember(rules, lease)
            return local

    def release(self, settlement: Settlement) -> None:
        self._release_here(settlement)
        self.redis.release(settlement)

    async def released(self, settlement: Settlement) -> None:
        self._release_here(settlement)
        if self.shared:
            await self.redis.released(settlement)
        else:  # away: no use waiting on it
            self.redis.release(settlement)

    def _release_here(self, settlement: Settlement) -> None:
        """In memory for budgets (and the lease, if admitted here); Redis gets it too, even
        for a lease admitted here, since an admission that timed out may have reached it."""
        self.local.release(settlement)
        self._running.pop(settlement.lease, None)

    async def flush(self) -> None:
        await self.redis.flush()

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
        if (subject, period) in self._seeds or len(self._seeds) < MAX_SCOPES:
            self._seeds[subject, period] = (tokens, cost)

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
        """Seeds go first, so that a bucket made while away is not taken as already seeded;
        then the requests admitted here that still run claim their slots, behind the releases
        made meanwhile in the outbox's order. Whatever is not handed over is kept."""
        await self.redis.client.ping()
        for (subject, period), (tokens, cost) in list(self._seeds.items()):
            await self.redis.seed_spend(subject, period, tokens, cost)
            del self._seeds[subject, period]
        for lease, rules in self._running.items():
            self.redis.claim(rules, lease)
        self._running.clear()
        self._grace_until = time.monotonic() + self.window_s

    def _remember(self, rules: Sequence[Rule], lease: str) -> None:
        """A request admitted here while Redis is away; bounded (the oldest goes first)."""
        if any(rule.concurrency is not None for rule in rules):
            if len(self._running) >= MAX_SCOPES:
                del self._running[next(iter(self._running))]
            self._running[lease] = rules
