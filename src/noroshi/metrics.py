"""Prometheus metrics, one registry per app, served at `GET /metrics`.

Labels are bounded: routes are patterns, models are the configured names, statuses are codes.
Keys are not labels (there may be millions); per-key figures live in `/admin/usage`.
"""

from __future__ import annotations

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

    def render(self) -> bytes:
        return generate_latest(self.registry)
