"""Model name to an answer: weighted choice among healthy deployments, retries, fallbacks.

Retries and fallbacks happen only before the first byte reaches the client: a stream is
handed over only once its first chunk has arrived. A deployment that keeps failing, or that
answered 429 with Retry-After, rests until its cooldown ends.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from itertools import accumulate
from typing import TypeVar

from noroshi import tracing
from noroshi.config import Config, RoutingConfig
from noroshi.errors import (
    ModelNotFound,
    NoDeployment,
    NoroshiError,
    RateLimited,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamTimeout,
)
from noroshi.metrics import Metrics
from noroshi.providers.base import Call, Embedded, Provider, Routed, Usage

__all__ = ["Deployment", "ProviderRouter", "least_busy"]

log = logging.getLogger("noroshi.router")
T = TypeVar("T")
Opened = tuple[bytes, AsyncGenerator[bytes, None]]


def least_busy(candidates: Sequence[T], load: Callable[[T], int]) -> T | None:
    """One of the candidates with the least load, chosen at random among equals."""
    if not candidates:
        return None
    least = min(load(c) for c in candidates)
    return random.choice([c for c in candidates if load(c) == least])


class Deployment:
    __slots__ = ("cooldown_until", "failures", "label", "model", "provider", "weight")

    def __init__(self, provider: Provider, model: str, weight: float) -> None:
        self.provider = provider
        self.model = model
        self.weight = weight
        self.label = f"{provider.name}/{model}"
        self.failures = 0
        self.cooldown_until = 0.0


class _Route:
    __slots__ = ("cumulative", "deployments", "fallbacks", "least_outstanding", "name", "total")

    def __init__(self, name: str, deployments: list[Deployment], fallbacks: list[str]) -> None:
        self.name = name
        self.deployments = deployments
        self.fallbacks = fallbacks
        self.cumulative = list(accumulate(d.weight for d in deployments))
        self.total = self.cumulative[-1]
        # cores are balanced by the requests each has in flight, not by weight
        self.least_outstanding = all(d.provider.config.type == "core" for d in deployments)


class ProviderRouter:
    def __init__(
        self, config: Config, providers: dict[str, Provider], metrics: Metrics | None = None
    ) -> None:
        self.policy: RoutingConfig = config.routing
        self.metrics = metrics
        self.routes = {
            m.name: _Route(
                m.name,
                [Deployment(providers[d.provider], d.model, d.weight) for d in m.deployments],
                m.fallbacks,
            )
            for m in config.models
        }

    def revive(self, provider: Provider) -> None:
        """A provider that an active check found healthy again ends its deployments' rest."""
        for route in self.routes.values():
            for dep in route.deployments:
                if dep.provider is provider:
                    dep.cooldown_until = 0.0
                    dep.failures = 0

    def __contains__(self, model: str) -> bool:
        return model in self.routes

    async def complete(self, call: Call) -> bytes:
        return await self._with_retries(
            call, lambda dep: _within_total(dep, dep.provider.complete(call, dep.model))
        )

    async def embed(self, routed: Routed, texts: list[str], dimensions: int | None) -> Embedded:
        embedded = await self._with_retries(
            routed, lambda dep: _within_total(dep, dep.provider.embed(texts, dep.model, dimensions))
        )
        routed.usage = Usage(prompt_tokens=embedded.prompt_tokens)
        return embedded

    async def count_tokens(self, call: Call) -> int:
        return await self._with_retries(
            call, lambda dep: _within_total(dep, dep.provider.count_tokens(call, dep.model))
        )

    async def open_stream(self, call: Call) -> Opened:
        """The first chunk and the rest of the stream; everything before it may be retried."""

        async def attempt(dep: Deployment) -> Opened:
            cfg = dep.provider.config
            call.deadline = asyncio.get_running_loop().time() + cfg.total_timeout_s
            call.finished = False  # a failed attempt may have seen its upstream's terminator
            stream = dep.provider.stream(call, dep.model)
            try:
                async with asyncio.timeout(cfg.first_byte_timeout_s):
                    first = await anext(stream)
            except TimeoutError:
                await stream.aclose()
                raise UpstreamTimeout(
                    "The upstream sent nothing within the first-byte timeout."
                ) from None
            except StopAsyncIteration:
                raise UpstreamProtocolError("The upstream stream was empty.") from None
            except BaseException:
                await stream.aclose()
                raise
            call.first_byte_at = time.monotonic()
            return first, stream

        return await self._with_retries(call, attempt)

    async def _with_retries(self, call: Routed, attempt: Callable[[Deployment], Awaitable[T]]) -> T:
        route = self.routes.get(call.model)
        if route is None:
            raise ModelNotFound(call.model)
        policy = self.policy
        last: NoroshiError | None = None
        for name in (route.name, *route.fallbacks):
            route = self.routes[name]
            tried: set[Deployment] = set()
            for n in range(policy.retries + 1):
                dep = self._pick(route, tried)
                if dep is None:
                    last = last or self._none_available(route)
                    break
                tried.add(dep)
                call.attempts += 1
                call.deployment = dep.label
                traced = tracing.current
                try:
                    if traced is None:
                        result = await attempt(dep)
                    else:  # a child span of the request's, for this try at this deployment
                        result = await traced.attempt(call, dep, attempt(dep))
                except (UpstreamError, UpstreamTimeout) as exc:
                    last = exc
                    retry_after = self._failed(dep, exc)
                    if isinstance(exc, UpstreamError) and not exc.retryable:
                        raise _for_client(exc) from None
                    log.info("attempt %d at %s failed: %s", call.attempts, dep.label, exc.message)
                    delay = self._backoff(n, retry_after)
                    if n == policy.retries or delay is None:
                        break
                    await asyncio.sleep(delay)
                    continue
                dep.failures = 0
                return result
        assert last is not None
        raise _for_client(last)

    def _pick(self, route: _Route, tried: set[Deployment]) -> Deployment | None:
        """Weighted choice among deployments not cooling down, preferring untried ones."""
        now = time.monotonic()
        deps = route.deployments
        if len(deps) == 1:
            dep = deps[0]
            return dep if dep.cooldown_until <= now and dep.provider.healthy else None
        if route.least_outstanding:
            ready = [d for d in deps if d.cooldown_until <= now and d.provider.healthy]
            ready = [d for d in ready if d not in tried] or ready
            return least_busy(ready, lambda d: d.provider.outstanding)
        if not tried and all(d.cooldown_until <= now for d in deps):
            i = bisect.bisect_right(route.cumulative, random.random() * route.total)
            return deps[min(i, len(deps) - 1)]
        healthy = [d for d in deps if d.cooldown_until <= now]
        fresh = [d for d in healthy if d not in tried] or healthy
        if not fresh:
            return None
        return random.choices(fresh, weights=[d.weight for d in fresh])[0]

    def _failed(self, dep: Deployment, exc: UpstreamError | UpstreamTimeout) -> float | None:
        retry_after: float | None = getattr(exc, "retry_after", None)
        status: int | None = getattr(exc, "upstream_status", None)
        if self.metrics is not None:
            self.metrics.upstream_errors.labels(dep.label, exc.code or "error").inc()
        if isinstance(exc, UpstreamError) and not exc.retryable:
            return None  # the request was at fault, not the deployment
        dep.failures += 1
        now = time.monotonic()
        if status == 429 and retry_after:
            dep.cooldown_until = max(dep.cooldown_until, now + retry_after)
        if dep.failures >= self.policy.cooldown_failures:
            dep.cooldown_until = max(dep.cooldown_until, now + self.policy.cooldown_s)
            dep.failures = 0
            log.warning("deployment %s rests for %.0f s", dep.label, self.policy.cooldown_s)
        return retry_after

    def _backoff(self, n: int, retry_after: float | None) -> float | None:
        """Seconds to wait before try n+1; None when Retry-After asks for longer than allowed."""
        p = self.policy
        if retry_after is not None:
            return retry_after if retry_after <= p.max_retry_after_s else None
        return min(p.backoff_max_s, p.backoff_base_s * 2.0**n) * random.uniform(0.5, 1.0)

    def _none_available(self, route: _Route) -> NoDeployment:
        wait = min(d.cooldown_until for d in route.deployments) - time.monotonic()
        return NoDeployment(
            f"No deployment of model '{route.name}' is available; all are cooling down.",
            headers={"retry-after": str(max(1, round(wait)))},
        )


async def _within_total(dep: Deployment, answer: Awaitable[T]) -> T:
    try:
        async with asyncio.timeout(dep.provider.config.total_timeout_s):
            return await answer
    except TimeoutError:
        raise UpstreamTimeout("The upstream did not answer within the total timeout.") from None


def _for_client(exc: NoroshiError) -> NoroshiError:
    """An upstream 429 stays a 429 with its Retry-After; other upstream failures are 502."""
    if isinstance(exc, UpstreamError) and exc.upstream_status is not None:
        status = exc.upstream_status
        if status == 429:
            return RateLimited(exc.message, retry_after=exc.retry_after)
        if 400 <= status < 500:
            return UpstreamRejected(exc.message, status)
    return exc
