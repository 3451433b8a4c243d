"""Admission before a model call and the bill after it.

Every request on a model route gets a `Meter`. Admission checks the key's models, budgets and
rate limits (reserving the prompt estimate plus `max_tokens` against the token limits); the
finish, which runs however the request ended (answered, failed, cut by the client), settles the
reservation with the real usage, adds to the budget counters, queues the usage record and
updates the metrics. The finish never waits: it runs in whatever task ends the request, which
may be one being cancelled, so nothing in it can be cut short and no request is billed twice.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from noroshi.config import Config
from noroshi.errors import Forbidden, RateLimited, Unavailable
from noroshi.limits import Decision, Limiter, Rule
from noroshi.limits.base import Settlement
from noroshi.metrics import Metrics
from noroshi.pricing import PriceBook
from noroshi.providers.base import Call, Routed, Usage
from noroshi.store.keys import ApiKey
from noroshi.store.usage import UsageLog, UsageRecord
from noroshi.types import Headers
from noroshi.wire.times import Timestamp

if TYPE_CHECKING:
    from noroshi.auth import Principal

__all__ = ["Accountant", "Meter", "estimate_tokens"]

log = logging.getLogger("noroshi.accounting")

DEFAULT_COMPLETION_RESERVE = 256  # reserved against a token limit when max_tokens is not sent
MAX_SEEDED = 100_000
USAGE_RETRY_S = 5.0  # when the usage backlog is full: about how long the database may take


class Meter:
    """One request on a model route, from admission to its usage record."""

    __slots__ = (
        "admitted",
        "decision",
        "estimate",
        "finished",
        "key",
        "lease",
        "model",
        "periods",
        "released",
        "request_id",
        "route",
        "routed",
        "rules",
        "started",
    )

    def __init__(self, principal: Principal | None, route: str, request_id: str) -> None:
        self.key: ApiKey | None = principal.key if principal is not None else None
        self.route = route
        self.request_id = request_id
        self.model = ""
        self.started = time.monotonic()
        self.estimate = 0
        self.rules: list[Rule] = []
        self.lease = ""
        self.decision: Decision | None = None
        self.periods: list[str] = []
        self.routed: Routed | None = None
        self.admitted = False  # passed admission: whatever happens next is billed
        self.released = False  # gave back its reservation before its answer was sent
        self.finished = False


def estimate_tokens(text_length: int) -> int:
    """About four characters a token: cheap, and close enough to reserve against a limit."""
    return text_length // 4 + 1


class Accountant:
    def __init__(self, config: Config, limiter: Limiter, usage: UsageLog, metrics: Metrics):
        self.prices = PriceBook(config.prices)
        self.limiter = limiter
        self.usage = usage
        self.metrics = metrics
        self._calendar = _Calendar(time.time())
        self._lease_prefix = secrets.token_hex(6)  # unique per process, so across replicas
        self._leases = itertools.count()

    async def admit(self, meter: Meter, model: str, estimate: int, max_tokens: int | None) -> None:
        """Refuse with 403 or 429, or reserve what the request may use."""
        meter.model = model
        meter.estimate = estimate
        if self.usage.full:
            self.metrics.refusals.labels("usage_backlog").inc()
            raise Unavailable(
                "Usage cannot be recorded right now (the database is away); retry shortly.",
                code="usage_backlog",
                retry_after=USAGE_RETRY_S,
            )
        key = meter.key
        if key is None:
            meter.admitted = True
            return
        if key.models and model not in key.models:
            raise Forbidden(
                f"This API key may not use the model '{model}'.",
                param="model",
                code="model_not_allowed",
            )
        if key.budget is not None:
            await self._check_budget(meter, key)
        rules = _rules(key, model)
        if not rules:
            meter.admitted = True
            return
        lease = f"{self._lease_prefix}{next(self._leases)}"
        reserve = estimate + (max_tokens or DEFAULT_COMPLETION_RESERVE)
        try:
            decision = await self.limiter.admit(rules, lease, reserve)
        except BaseException:  # cut off (a client gone): the admission may have been made
            self.limiter.release(Settlement(rules, lease, 0))
            raise
        if not decision.allowed:
            self.metrics.refusals.labels(decision.reason or "rate").inc()
            raise RateLimited(
                _refusal_message(decision),
                retry_after=decision.retry_after_s,
                headers=dict(rate_headers(decision)),
            )
        meter.rules, meter.lease, meter.decision = rules, lease, decision
        meter.admitted = True

    async def _check_budget(self, meter: Meter, key: ApiKey) -> None:
        budget = key.budget
        assert budget is not None
        now = time.time()
        cal = self._calendar if now < self._calendar.day_ends else _Calendar(now)
        self._calendar = cal
        await self._seed(key.id, cal)
        (day_tokens, day_cost), (month_tokens, month_cost) = await self.limiter.spend(
            key.id, cal.periods
        )
        meter.periods = cal.periods
        over = None
        if _reached(day_tokens, budget.tokens_per_day) or _reached(day_cost, budget.cost_per_day):
            over, ends = "daily", cal.day_ends
        elif _reached(month_tokens, budget.tokens_per_month) or _reached(
            month_cost, budget.cost_per_month
        ):
            over, ends = "monthly", cal.month_ends
        if over is not None:
            self.metrics.refusals.labels("budget").inc()
            raise RateLimited(
                f"This API key has used its {over} budget.",
                retry_after=ends - now,
                code="budget_exceeded",
            )

    async def _seed(self, key_id: str, cal: _Calendar) -> None:
        """Budget counters start from the usage already stored (after a restart, or when a
        budget is added to a key that has been in use); once per key and calendar day."""
        if key_id in cal.seeded:
            return
        for period, start in zip(cal.periods, cal.starts, strict=True):
            tokens, cost = await self.usage.spent(key_id, start)
            await self.limiter.seed_spend(key_id, period, tokens, cost)
        if len(cal.seeded) >= MAX_SEEDED:
            cal.seeded.clear()
        cal.seeded.add(key_id)

    def headers(self, meter: Meter) -> Headers:
        return rate_headers(meter.decision) if meter.decision is not None else []

    async def release(self, meter: Meter) -> None:
        """The answer is complete and not yet sent: give back what it reserved now, and return
        once every replica sees it, so that a client that starts its next request as soon as
        it reads the end is never refused for the slot it held. `finish` then only bills."""
        settlement = self._settlement(meter)
        meter.released = True
        if settlement is not None:
            await self.limiter.released(settlement)

    def finish(self, meter: Meter, status: int, outcome: str) -> None:
        """Bill what was used, however the request ended; exactly once per meter."""
        if meter.finished:
            return
        meter.finished = True
        routed = meter.routed
        usage = _used(meter)
        ttft_s = None
        deployment = ""
        if routed is not None:
            deployment = routed.deployment
            if isinstance(routed, Call) and routed.first_byte_at is not None:
                ttft_s = routed.first_byte_at - meter.started
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        cost = self.prices.cost(usage, meter.model, deployment)
        key = meter.key
        if not meter.released and (settlement := self._settlement(meter)) is not None:
            self.limiter.release(settlement)
        now = time.monotonic()
        duration = now - meter.started
        if meter.admitted or not self.usage.full:  # else refused, nothing billed: not kept
            self.usage.record(
                UsageRecord(
                    request_id=meter.request_id,
                    key_id=key.id if key is not None else None,
                    model=meter.model,
                    deployment=deployment,
                    route=meter.route,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    cache_read_tokens=usage.cache_read_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    reasoning_tokens=usage.reasoning_tokens,
                    cost=cost,
                    ttft_ms=ttft_s * 1000 if ttft_s is not None else None,
                    duration_ms=duration * 1000,
                    status=status,
                    outcome=outcome,
                    created_at=Timestamp.now(),
                )
            )
        self.metrics.answered(
            meter.route, meter.model, status, duration, ttft_s, prompt, completion
        )

    def _settlement(self, meter: Meter) -> Settlement | None:
        """What the request gives back: its lease at the tokens used, and its spend."""
        key = meter.key
        if not meter.rules and (key is None or not meter.periods):
            return None
        usage = _used(meter)
        deployment = meter.routed.deployment if meter.routed is not None else ""
        cost = self.prices.cost(usage, meter.model, deployment)
        tokens = usage.prompt_tokens + usage.completion_tokens
        subject, periods = (key.id, meter.periods) if key is not None else ("", ())
        return Settlement(meter.rules, meter.lease, tokens, subject, periods, cost)


def _billed(routed: Routed, estimate: int) -> Usage:
    """What the upstream said it used; for a stream cut before its end, at least one output
    token per piece of content that was sent (its usage so far may count only the first); for
    an upstream that never said, the prompt estimate and the pieces sent."""
    chunks = routed.chunks if isinstance(routed, Call) else 0
    usage = routed.usage
    if usage is None:
        if not routed.attempts:
            return Usage()
        return Usage(prompt_tokens=estimate, completion_tokens=chunks)
    if isinstance(routed, Call) and not routed.finished and chunks > usage.completion_tokens:
        usage = msgspec.structs.replace(usage, completion_tokens=chunks)
    return usage


def _used(meter: Meter) -> Usage:
    return _billed(meter.routed, meter.estimate) if meter.routed is not None else Usage()


def _rules(key: ApiKey, model: str) -> list[Rule]:
    rules = []
    if key.rpm or key.tpm or key.max_concurrency:
        rules.append(Rule(f"key:{key.id}", key.rpm, key.tpm, key.max_concurrency))
    limits = key.model_limits.get(model)
    if limits is not None and (limits.rpm or limits.tpm):
        rules.append(Rule(f"key:{key.id}:model:{model}", limits.rpm, limits.tpm))
    return rules


def rate_headers(d: Decision) -> Headers:
    """OpenAI's rate-limit headers, for the tightest limit of each kind."""
    out: Headers = []
    if d.limit_requests is not None:
        out += [
            ("x-ratelimit-limit-requests", str(d.limit_requests)),
            ("x-ratelimit-remaining-requests", str(max(0, d.remaining_requests or 0))),
            ("x-ratelimit-reset-requests", _duration(d.reset_requests_s)),
        ]
    if d.limit_tokens is not None:
        out += [
            ("x-ratelimit-limit-tokens", str(d.limit_tokens)),
            ("x-ratelimit-remaining-tokens", str(max(0, d.remaining_tokens or 0))),
            ("x-ratelimit-reset-tokens", _duration(d.reset_tokens_s)),
        ]
    return out


def _duration(seconds: float) -> str:
    """OpenAI's reset format: '20ms', '1s', '6m0s'."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    if minutes:
        return f"{int(minutes)}m{rest:.0f}s"
    return f"{rest:.3g}s"


def _refusal_message(d: Decision) -> str:
    what = {
        "rpm": "requests per minute",
        "tpm": "tokens per minute",
        "concurrency": "concurrent requests",
    }.get(d.reason or "", "rate")
    scope = "model" if d.scope and ":model:" in d.scope else "key"
    return f"Rate limit reached for {what} on this {scope}; retry after {d.retry_after_s:.1f} s."


def _reached(spent: float, limit: float | None) -> bool:
    return limit is not None and spent >= limit


class _Calendar:
    """Today's and this month's budget periods (UTC), worked out once a day."""

    __slots__ = ("day_ends", "month_ends", "periods", "seeded", "starts")

    def __init__(self, now: float) -> None:
        moment = datetime.fromtimestamp(now, UTC)
        day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        month = day.replace(day=1)
        self.periods = [f"day:{day:%Y-%m-%d}", f"month:{day:%Y-%m}"]
        self.starts = (day.timestamp(), month.timestamp())
        self.day_ends = (day + timedelta(days=1)).timestamp()
        self.month_ends = (month + timedelta(days=32)).replace(day=1).timestamp()
        self.seeded: set[str] = set()  # keys whose counters for these periods are seeded
