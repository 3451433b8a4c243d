"""The limiter interface, and what every implementation shares.

A rate window is a log of admissions (time, lease) per scope: sliding, so that a window
boundary never lets twice the limit through. Each admission may carry a token reservation,
replaced by the real usage when the request is released, and a concurrency lease, which ends
when the request is released or, should its replica die, after a time to live.

A release never waits and cannot fail: the request that ends may be a cancelled task (its
client left), and what it reserved must be given back all the same.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import NamedTuple

import msgspec

__all__ = ["Decision", "Limiter", "Rule"]

WINDOW_S = 60.0  # rpm and tpm count the last minute
LEASE_TTL_S = 900.0  # in memory a lease is always released; this is only a safety net
# A concurrency slot frees when any request ends, which cannot be foreseen: suggest a short wait.
CONCURRENCY_RETRY_S = 1.0
MAX_HITS = 10_000  # a `hit` count saturates here, so a flood cannot grow one log without bound
SPEND_MARGIN_S = 86_400.0  # budget buckets outlive their period by this much
PERIOD_S = {
    "minute": 60.0,
    "hour": 3_600.0,
    "day": 86_400.0,
    "week": 7 * 86_400.0,
    "month": 31 * 86_400.0,
    "year": 366 * 86_400.0,
}


class Rule(msgspec.Struct, frozen=True):
    """The limits of one scope; None is unlimited."""

    scope: str  # e.g. "key:key_abc" or "key:key_abc:model:gpt-4o"
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None


class Decision(msgspec.Struct):
    """An admission's answer, with enough to fill OpenAI's rate-limit headers.

    The request and token figures describe the rule closest to refusing (least remaining).
    A reset is the time until the window has room again when none remains, else until it
    is empty again.
    """

    allowed: bool
    reason: str | None = None  # "rpm" | "tpm" | "concurrency" when refused
    scope: str | None = None  # which scope refused
    retry_after_s: float = 0.0  # when a retry could succeed (>0 when refused)
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float = 0.0
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float = 0.0


class Settlement(NamedTuple):
    """What a request that ended gives back: its lease settled at the real `tokens`, and
    the `tokens` and `cost` added to the budget buckets of `subject` in `periods`."""

    rules: Sequence[Rule]
    lease: str
    tokens: int
    subject: str = ""
    periods: Sequence[str] = ()
    cost: float = 0.0


class Limiter(abc.ABC):
    """Rate limits, concurrency leases, budget counters and event counts."""

    @abc.abstractmethod
    async def admit(self, rules: Sequence[Rule], lease: str, tokens: int) -> Decision:
        """Atomically over all rules: when each has room, record the request, its `tokens`
        reservation and its concurrency lease in every scope; otherwise record nothing and
        refuse with the earliest time a retry could pass every rule. `lease` names this
        admission and must be unique (a random id)."""

    @abc.abstractmethod
    def release(self, settlement: Settlement) -> None:
        """The request ended: its reservation becomes the real tokens, kept at its original
        time in the window, its concurrency slot is freed (settling twice frees one slot), and
        its spend is added to each bucket (periods like "day:2026-11-21", "month:2026-11").
        Applied at once in memory; a shared store gets it in the background, kept and sent
        again while the store is away."""

    async def released(self, settlement: Settlement) -> None:
        """`release`, returning once every replica would see it (for a shared store, once it
        has it, or after its timeout): for an answer complete but not yet sent, so that a
        client that starts its next request on reading the end finds its slot free."""
        self.release(settlement)

    @abc.abstractmethod
    async def flush(self) -> None:
        """Until every release so far has been applied, or given up on."""

    @abc.abstractmethod
    async def spend(self, subject: str, periods: Sequence[str]) -> list[tuple[int, float]]:
        """(tokens, cost) of each bucket; (0, 0.0) for one that does not exist."""

    @abc.abstractmethod
    async def seed_spend(self, subject: str, period: str, tokens: int, cost: float) -> None:
        """Set a bucket only if it does not exist yet: after a restart, from the usage table."""

    @abc.abstractmethod
    async def hit(self, scope: str, window_s: float) -> int:
        """Count an event (a failed login) and return how many fell in the last `window_s`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""


def period_ttl_s(period: str) -> float:
    """How long a bucket lives: long enough to outlast its period from any start within it."""
    return PERIOD_S.get(period.partition(":")[0], PERIOD_S["month"]) + SPEND_MARGIN_S


def check_lease(lease: str) -> None:
    if not lease:
        raise ValueError("a lease id must not be empty")


def scale(rule: Rule, share: float) -> Rule:
    """`rule` with each limit scaled by `share` (rounded up, at least 1); 0 stays 0."""
    if share == 1.0:
        return rule

    def part(limit: int | None) -> int | None:
        if not limit:
            return limit
        return max(1, math.ceil(limit * share - 1e-9))  # 100 * 0.34 is 34.000000000000004

    return Rule(rule.scope, part(rule.rpm), part(rule.tpm), part(rule.concurrency))


class Window(NamedTuple):
    """One rule's rate window as an admission left it; times are seconds from now."""

    requests: int  # requests in the window
    tokens: int  # reserved and used tokens in the window
    oldest_s: float  # until the oldest request leaves (0 when empty)
    clear_s: float  # until the newest request leaves (0 when empty)
    room_s: float  # until the request window has room for one more (0 when it has)


class Refusal(NamedTuple):
    rule: int  # the index of the rule that refused
    reason: str
    wait_s: float


def decide(rules: Sequence[Rule], windows: Sequence[Window], refusal: Refusal | None) -> Decision:
    """The decision, with the header figures of the rule closest to refusing."""
    d = Decision(allowed=refusal is None)
    if refusal is not None:
        d.reason, d.scope = refusal.reason, rules[refusal.rule].scope
        d.retry_after_s = max(refusal.wait_s, 0.001)
    for rule, w in zip(rules, windows, strict=True):
        if rule.rpm is not None:
            left = max(0, rule.rpm - w.requests)
            if d.limit_requests is None or (left, rule.rpm) < (
                d.remaining_requests or 0,
                d.limit_requests,
            ):
                d.limit_requests, d.remaining_requests = rule.rpm, left
                d.reset_requests_s = w.clear_s if left else w.room_s
        if rule.tpm is not None:
            left = max(0, rule.tpm - w.tokens)
            if d.limit_tokens is None or (left, rule.tpm) < (
                d.remaining_tokens or 0,
                d.limit_tokens,
            ):
                d.limit_tokens, d.remaining_tokens = rule.tpm, left
                d.reset_tokens_s = w.clear_s if left else w.oldest_s
    return d
