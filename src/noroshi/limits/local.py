"""Limits in this process's memory: for a single replica, or one cut off from Redis.

Everything runs on one event loop and no critical section awaits, so each call is atomic.
Entries are pruned as they leave their window, idle scopes are swept once a window, and
each table holds at most `max_scopes` scopes (the oldest goes first), so memory stays bounded.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TypeVar

from noroshi.limits.base import (
    CONCURRENCY_RETRY_S,
    LEASE_TTL_S,
    MAX_HITS,
    WINDOW_S,
    Decision,
    Limiter,
    Refusal,
    Rule,
    Settlement,
    Window,
    check_lease,
    decide,
    period_ttl_s,
    scale,
)

__all__ = ["LocalLimiter"]

MAX_SCOPES = 100_000

K = TypeVar("K")
V = TypeVar("V")


class _Log:
    """A scope's rate window: admissions oldest first, and the tokens of each lease."""

    __slots__ = ("entries", "tokens", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, str]] = deque()
        self.tokens: dict[str, int] = {}
        self.total = 0

    def prune(self, since: float) -> None:
        entries = self.entries
        while entries and entries[0][0] <= since:
            _, lease = entries.popleft()
            self.total -= self.tokens.pop(lease, 0)


class _Hits:
    __slots__ = ("times", "window_s")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.times: deque[float] = deque(maxlen=MAX_HITS)

    def prune(self, now: float) -> None:
        while self.times and self.times[0] <= now - self.window_s:
            self.times.popleft()


class _Bucket:
    __slots__ = ("cost", "expires", "tokens")

    def __init__(self, tokens: int, cost: float, expires: float) -> None:
        self.tokens = tokens
        self.cost = cost
        self.expires = expires


class LocalLimiter(Limiter):
    """The limiter in process memory. `share` scales every limit (rounded up, at least 1):
    the part of a shared limit this replica may use while it cannot reach the others."""

    def __init__(
        self,
        share: float = 1.0,
        *,
        lease_ttl_s: float = LEASE_TTL_S,
        window_s: float = WINDOW_S,
        max_scopes: int = MAX_SCOPES,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], not {share}")
        self.share = share
        self.lease_ttl_s = lease_ttl_s
        self.window_s = window_s
        self.max_scopes = max_scopes
        self._logs: dict[str, _Log] = {}
        self._leases: dict[str, dict[str, float]] = {}  # scope -> lease -> expiry, oldest first
        self._hits: dict[str, _Hits] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._swept = time.monotonic()

    # --- rate limits -----------------------------------------------------------------------

    async def admit(self, rules: Sequence[Rule], lease: str, tokens: int) -> Decision:
        check_lease(lease)
        now = self._tick()
        if self.share != 1.0:
            rules = [scale(rule, self.share) for rule in rules]
        refusal = None
        for i, rule in enumerate(rules):
            for reason, wait in self._refusals(rule, tokens, now):
                if refusal is None or wait > refusal.wait_s:
                    refusal = Refusal(i, reason, wait)
        if refusal is None:
            for rule in rules:
                self._record(rule, lease, tokens, now)
        return decide(rules, [self._window(rule, now) for rule in rules], refusal)

    def release(self, settlement: Settlement) -> None:
        rules, lease, tokens, subject, periods, cost = settlement
        for rule in rules:
            log = self._logs.get(rule.scope)
            if log is not None and lease in log.tokens:
                log.total += tokens - log.tokens[lease]
                log.tokens[lease] = tokens
            leases = self._leases.get(rule.scope)
            if leases is not None:
                leases.pop(lease, None)
        if periods:
            self.add_spend(subject, periods, tokens, cost)

    async def flush(self) -> None:
        pass  # applied at once

    def _refusals(self, rule: Rule, tokens: int, now: float) -> Iterator[tuple[str, float]]:
        window = self.window_s
        log = self._log(rule.scope, now)
        entries = log.entries if log is not None else deque()
        if rule.rpm is not None and len(entries) >= rule.rpm:
            yield "rpm", self._room_s(rule.rpm, entries, now)
        if rule.tpm is not None:
            used = log.total if log is not None else 0
            if tokens > rule.tpm:
                yield "tpm", window  # can never pass; a window is as good a hint as any
            elif log is not None and used + tokens > rule.tpm:
                yield "tpm", self._freed_s(log, used + tokens - rule.tpm, now)
        if rule.concurrency is not None:
            leases = self._live(rule.scope, now)
            if len(leases) >= rule.concurrency:
                first = next(iter(leases.values()), now + CONCURRENCY_RETRY_S)
                yield "concurrency", min(CONCURRENCY_RETRY_S, first - now)

    def _record(self, rule: Rule, lease: str, tokens: int, now: float) -> None:
        if rule.rpm is not None or rule.tpm is not None:
            log = self._logs.get(rule.scope)
            if log is None:
                log = _put(self._logs, rule.scope, _Log(), self.max_scopes)
            log.entries.append((now, lease))
            if rule.tpm is not None:
                log.total += tokens - log.tokens.get(lease, 0)
                log.tokens[lease] = tokens
        if rule.concurrency is not None:
            leases = self._leases.get(rule.scope)
            if leases is None:
                leases = _put(self._leases, rule.scope, {}, self.max_scopes)
            leases.pop(lease, None)  # keep expiry order
            leases[lease] = now + self.lease_ttl_s

    def _window(self, rule: Rule, now: float) -> Window:
        log = self._logs.get(rule.scope) if rule.rpm is not None or rule.tpm is not None else None
        if log is None or not log.entries:
            return Window(0, 0, 0.0, 0.0, 0.0)
        entries, window = log.entries, self.window_s
        room = self._room_s(rule.rpm, entries, now) if rule.rpm is not None else 0.0
        total = log.total if rule.tpm is not None else 0
        # the age first: (t - now) is exact, so a request admitted now leaves in exactly a window
        oldest, newest = entries[0][0] - now + window, entries[-1][0] - now + window
        return Window(len(entries), total, oldest, newest, room)

    def _freed_s(self, log: _Log, need: int, now: float) -> float:
        """Until enough of the oldest reservations leave the window to free `need` tokens."""
        freed = 0
        for at, lease in log.entries:
            freed += log.tokens.get(lease, 0)
            if freed >= need:
                return at - now + self.window_s
        return self.window_s

    def _room_s(self, rpm: int, entries: deque[tuple[float, str]], now: float) -> float:
        """Until the request window has room for one more."""
        count = len(entries)
        if count < rpm:
            return 0.0
        if rpm == 0:
            return self.window_s
        return entries[count - rpm][0] - now + self.window_s

    def _log(self, scope: str, now: float) -> _Log | None:
        log = self._logs.get(scope)
        if log is not None:
            log.prune(now - self.window_s)
        return log

    def _live(self, scope: str, now: float) -> dict[str, float]:
        leases = self._leases.get(scope)
        if leases is None:
            return {}
        while leases:
            first = next(iter(leases))
            if leases[first] > now:
                break
            del leases[first]
        return leases

    # --- counters --------------------------------------------------------------------------

    async def hit(self, scope: str, window_s: float) -> int:
        now = self._tick()
        hits = self._hits.get(scope)
        if hits is None:
            hits = _put(self._hits, scope, _Hits(window_s), self.max_scopes)
        hits.window_s = window_s
        hits.times.append(now)
        hits.prune(now)
        return len(hits.times)

    def add_spend(self, subject: str, periods: Sequence[str], tokens: int, cost: float) -> None:
        now = self._tick()
        for period in periods:
            bucket = self._bucket(subject, period, now)
            if bucket is None:
                self.set_spend(subject, period, tokens, cost)
            else:
                bucket.tokens += tokens
                bucket.cost += cost

    async def spend(self, subject: str, periods: Sequence[str]) -> list[tuple[int, float]]:
        now = self._tick()
        out = []
        for period in periods:
            bucket = self._bucket(subject, period, now)
            out.append((0, 0.0) if bucket is None else (bucket.tokens, bucket.cost))
        return out

    async def seed_spend(self, subject: str, period: str, tokens: int, cost: float) -> None:
        if self._bucket(subject, period, self._tick()) is None:
            self.set_spend(subject, period, tokens, cost)

    def set_spend(self, subject: str, period: str, tokens: int, cost: float) -> None:
        """Overwrite a bucket: a copy of the shared one, kept for when Redis is away."""
        key = (subject, period)
        bucket = self._buckets.pop(key, None)
        expires = bucket.expires if bucket is not None else time.monotonic() + period_ttl_s(period)
        _put(self._buckets, key, _Bucket(tokens, cost, expires), self.max_scopes)

    def _bucket(self, subject: str, period: str, now: float) -> _Bucket | None:
        bucket = self._buckets.get((subject, period))
        if bucket is not None and bucket.expires <= now:
            del self._buckets[subject, period]
            return None
        return bucket

    async def close(self) -> None:
        pass

    # --- housekeeping ----------------------------------------------------------------------

    def _tick(self) -> float:
        """Now; and once a window, drop what has expired, so idle scopes do not linger."""
        now = time.monotonic()
        if now - self._swept >= self.window_s:
            self._swept = now
            self._sweep(now)
        return now

    def _sweep(self, now: float) -> None:
        for scope, log in list(self._logs.items()):
            log.prune(now - self.window_s)
            if not log.entries:
                del self._logs[scope]
        for scope in list(self._leases):
            if not self._live(scope, now):
                del self._leases[scope]
        for scope, hits in list(self._hits.items()):
            hits.prune(now)
            if not hits.times:
                del self._hits[scope]
        for key, bucket in list(self._buckets.items()):
            if bucket.expires <= now:
                del self._buckets[key]

    def sizes(self) -> tuple[int, int, int, int]:
        """How many scopes each table holds: rate logs, leases, hits, budget buckets."""
        return len(self._logs), len(self._leases), len(self._hits), len(self._buckets)


def _put(table: dict[K, V], key: K, value: V, cap: int) -> V:
    """Insert, dropping the oldest scope when the table is full."""
    if len(table) >= cap:
        del table[next(iter(table))]
    table[key] = value
    return value
