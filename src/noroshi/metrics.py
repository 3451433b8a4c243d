"""Prometheus metrics, one registry per app, served at `GET /metrics`.

Labels are bounded: routes are patterns, models are the configured names, statuses are codes.
Keys are not labels (there may be millions); per-key figures live in `/admin/usage`.

What every request updates (requests, latency, time to first token, tokens) is kept in plain
counters and handed to the registry only when it is scraped: prometheus-client's own metrics
take a lock and check their type on every update, which cost a gateway request 3% of its CPU.
Only the event loop updates and renders them, so no lock is needed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# `_created` series double the output and tell a scraper nothing
disable_created_metrics()  # type: ignore[no-untyped-call]
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BOUNDS = [*(floatToGoString(b) for b in _LATENCY), "+Inf"]  # type: ignore[no-untyped-call]
MAX_COMBINATIONS = 10_000
OTHER = "_other"  # the model label past MAX_COMBINATIONS combinations


class _Histogram:
    """Observations per bucket (not yet cumulative) and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(_BOUNDS)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(_LATENCY, value)] += 1  # a bucket holds what is <= its bound
        self.sum += value

    def add(self, other: _Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum

    def buckets(self) -> list[tuple[str, float]]:
        return list(zip(_BOUNDS, accumulate(self.counts), strict=True))


class _Answered:
    """What one (route, model, status) combination has answered."""

    __slots__ = ("latency", "requests", "tokens_in", "tokens_out", "ttft")

    def __init__(self) -> None:
        self.requests = 0
        self.latency = _Histogram()
        self.ttft = _Histogram()
        self.tokens_in = 0
        self.tokens_out = 0


class Metrics:
    def __init__(self, active_streams: Callable[[], int] = lambda: 0) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._answered: dict[tuple[str, str, int], _Answered] = {}
        r.register(_AnsweredCollector(self._answered, active_streams))
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
        """One finished request."""
        answered = self._answered.get((route, model, status))
        if answered is None:
            if len(self._answered) >= MAX_COMBINATIONS:
                model = OTHER
            answered = self._answered.setdefault((route, model, status), _Answered())
        answered.requests += 1
        answered.latency.observe(duration_s)
        if ttft_s is not None:
            answered.ttft.observe(ttft_s)
        answered.tokens_in += prompt
        answered.tokens_out += completion

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _AnsweredCollector(Collector):
    """The per-request counters as Prometheus families, summed per label set at scrape time."""

    def __init__(
        self, answered: dict[tuple[str, str, int], _Answered], active: Callable[[], int]
    ) -> None:
        self.answered = answered
        self.active = active

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "noroshi_requests", "Answered requests.", labels=("route", "model", "status")
        )
        tokens = CounterMetricFamily(
            "noroshi_tokens", "Tokens in (prompt) and out (completion).",
            labels=("model", "direction"),
        )  # fmt: skip
        latency: dict[str, _Histogram] = {}
        ttft: dict[str, _Histogram] = {}
        spent: dict[str, tuple[int, int]] = {}
        for (route, model, status), a in self.answered.items():
            requests.add_metric((route, model, str(status)), a.requests)
            latency.setdefault(route, _Histogram()).add(a.latency)
            ttft.setdefault(model, _Histogram()).add(a.ttft)
            tokens_in, tokens_out = spent.get(model, (0, 0))
            spent[model] = (tokens_in + a.tokens_in, tokens_out + a.tokens_out)
        for model, (tokens_in, tokens_out) in spent.items():
            tokens.add_metric((model, "in"), tokens_in)
            tokens.add_metric((model, "out"), tokens_out)
        yield requests
        yield _histogram(
            "noroshi_request_duration_seconds",
            "Time from request to the end of the answer (streams: the last byte).",
            "route", latency,
        )  # fmt: skip
        yield _histogram(
            "noroshi_time_to_first_token_seconds",
            "Time from request to the first chunk of a streamed answer.",
            "model", ttft,
        )  # fmt: skip
        yield tokens
        yield GaugeMetricFamily(
            "noroshi_active_streams", "Streams being sent now.", value=self.active()
        )


def _histogram(name: str, doc: str, label: str, by: dict[str, _Histogram]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=(label,))
    for value, histogram in by.items():
        family.add_metric((value,), histogram.buckets(), histogram.sum)
    return family
