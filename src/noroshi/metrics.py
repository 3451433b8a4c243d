"""Prometheus metrics, one registry per app, served at `GET /metrics`.

Labels are bounded: routes are patterns, models are the configured names, statuses are codes.
Keys are not labels (there may be millions); per-key figures live in `/admin/usage`.
"""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# `_created` series double the output and tell a scraper nothing
disable_created_metrics()  # type: ignore[no-untyped-call]
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


MAX_COMBINATIONS = 10_000


class _Answered(NamedTuple):
    requests: Counter
    latency: Histogram
    ttft: Histogram
    tokens_in: Counter
    tokens_out: Counter


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "noroshi_requests", "Answered requests.", ("route", "model", "status"), registry=r
        )
        self.latency = Histogram(
            "noroshi_request_duration_seconds",
            "Time from request to the end of the answer (streams: the last byte).",
            ("route",),
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "noroshi_time_to_first_token_seconds",
            "Time from request to the first chunk of a streamed answer.",
            ("model",),
            buckets=_LATENCY,
            registry=r,
        )
        self.tokens = Counter(
            "noroshi_tokens", "Tokens in (prompt) and out (completion).", ("model", "direction"),
            registry=r,
        )  # fmt: skip
        self.active_streams = Gauge("noroshi_active_streams", "Streams being sent now.", registry=r)
        self.upstream_errors = Counter(
            "noroshi_upstream_errors", "Failed upstream attempts.", ("deployment", "code"),
            registry=r,
        )  # fmt: skip
        self.refusals = Counter(
            "noroshi_limit_refusals",
            "Requests refused by a rate limit, budget or lockout.",
            ("reason",),
            registry=r,
        )

        self._answered: dict[tuple[str, str, int], _Answered] = {}

    def answered(
        self,
        route: str,
        model: str,
        status: int,
        duration_s: float,
        ttft_s: float | None = None,
        prompt: int = 0,
        completion: int = 0,
    ) -> None:
        """One finished request; the labelled children are looked up once per combination,
        which keeps this off the profile of the hot path."""
        children = self._answered.get((route, model, status))
        if children is None:
            children = _Answered(
                self.requests.labels(route, model, str(status)),
                self.latency.labels(route),
                self.ttft.labels(model),
                self.tokens.labels(model, "in"),
                self.tokens.labels(model, "out"),
            )
            if len(self._answered) < MAX_COMBINATIONS:
                self._answered[(route, model, status)] = children
        children.requests.inc()
        children.latency.observe(duration_s)
        if ttft_s is not None:
            children.ttft.observe(ttft_s)
        if prompt:
            children.tokens_in.inc(prompt)
        if completion:
            children.tokens_out.inc(completion)

    def render(self) -> bytes:
        return generate_latest(self.registry)
