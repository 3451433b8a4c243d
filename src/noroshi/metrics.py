"""Prometheus metrics, one registry per app, served at `GET /metrics`.

Labels are bounded: routes are patterns, models are the configured names, statuses are codes.
Keys are not labels (there may be millions); per-key figures live in `/admin/usage`.

What every request updates (requests, latency, time to first token, tokens) is kept in plain
counters and handed to the registry only when it is scraped: prometheus-client's own metrics
take a lock and check their type on every update, which cost a gateway request 3% of its CPU.
Only the event loop updates and renders them, so no lock is needed.

With several workers (`serve --workers N`) each one still counts for itself, at no extra cost
per request: once a second it writes its figures to a file of its own in a folder the
supervisor made (`NOROSHI_METRICS_DIR`), and the worker that answers a scrape adds up its own
live figures and the others' files. So a scrape sees every worker, the others as they were
up to a second before. A dead worker's counts stay in the sum (counters never go back); its
gauge does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator
from itertools import accumulate
from pathlib import Path

import msgspec
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

__all__ = ["CONTENT_TYPE_LATEST", "SHARED_DIR_ENV", "Metrics"]

SHARED_DIR_ENV = "NOROSHI_METRICS_DIR"  # set by the supervisor of several workers
PUBLISH_S = 1.0  # how often a worker writes its figures for the others

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


class _Row(msgspec.Struct, array_like=True):
    """One (route, model, status) combination in a worker's published figures."""

    route: str
    model: str
    status: int
    requests: int
    latency: list[int]
    latency_sum: float
    ttft: list[int]
    ttft_sum: float
    tokens_in: int
    tokens_out: int


class _Figures(msgspec.Struct):
    """What one worker publishes for the others."""

    pid: int
    rows: list[_Row]
    counters: dict[str, list[tuple[list[str], float]]]  # family -> (label values, value)
    active: int


class Metrics:
    def __init__(
        self, active_streams: Callable[[], int] = lambda: 0, shared_dir: str | None = None
    ) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._answered: dict[tuple[str, str, int], _Answered] = {}
        self._active = active_streams
        self.shared = Path(shared_dir) if shared_dir else None
        r.register(_AnsweredCollector(self._answered, active_streams))
        name, (doc, labels) = "noroshi_upstream_errors", _COUNTERS["noroshi_upstream_errors"]
        self.upstream_errors = Counter(name, doc, labels, registry=r)
        name, (doc, labels) = "noroshi_limit_refusals", _COUNTERS["noroshi_limit_refusals"]
        self.refusals = Counter(name, doc, labels, registry=r)

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
        if self.shared is None:
            return generate_latest(self.registry)
        return generate_latest(_Summed([*self._peers(), self.figures()]))

    # --- several workers -------------------------------------------------------------------

    def figures(self) -> _Figures:
        rows = [
            _Row(
                route,
                model,
                status,
                a.requests,
                a.latency.counts,
                a.latency.sum,
                a.ttft.counts,
                a.ttft.sum,
                a.tokens_in,
                a.tokens_out,
            )
            for (route, model, status), a in self._answered.items()
        ]
        counters = {
            family.name: [
                (list(sample.labels.values()), sample.value)
                for sample in family.samples
                if sample.name.endswith("_total")
            ]
            for counter in (self.upstream_errors, self.refusals)
            for family in counter.collect()
        }
        return _Figures(os.getpid(), rows, counters, self._active())

    def publish(self) -> None:
        """Write this worker's figures where the others read them, whole or not at all."""
        assert self.shared is not None
        path = self.shared / f"{os.getpid()}.json"
        partial = path.with_suffix(".part")
        partial.write_bytes(msgspec.json.encode(self.figures()))
        os.replace(partial, path)

    def _peers(self) -> list[_Figures]:
        assert self.shared is not None
        found: list[_Figures] = []
        for path in self.shared.glob("*.json"):
            if path.stem == str(os.getpid()):
                continue
            with contextlib.suppress(OSError, msgspec.DecodeError):
                figures = msgspec.json.decode(path.read_bytes(), type=_Figures)
                if not _alive(figures.pid):
                    figures.active = 0  # a dead worker streams nothing; its counts stand
                found.append(figures)
        return found

    def start(self) -> Callable[[], Awaitable[None]]:
        """Publish every PUBLISH_S until the returned function is awaited (and once more)."""

        async def run() -> None:
            while True:
                await asyncio.sleep(PUBLISH_S)
                await asyncio.to_thread(self.publish)

        task = asyncio.get_running_loop().create_task(run())

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.publish()  # the last figures, for the workers that stay

        return stop


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Summed(Collector):
    """Every worker's figures, added up per label set."""

    def __init__(self, all_figures: list[_Figures]) -> None:
        self.answered: dict[tuple[str, str, int], _Answered] = {}
        self.counters: dict[str, dict[tuple[str, ...], float]] = {}
        self.active = 0
        for figures in all_figures:
            self.active += figures.active
            for row in figures.rows:
                a = self.answered.setdefault((row.route, row.model, row.status), _Answered())
                a.requests += row.requests
                a.latency.add(_histogram_of(row.latency, row.latency_sum))
                a.ttft.add(_histogram_of(row.ttft, row.ttft_sum))
                a.tokens_in += row.tokens_in
                a.tokens_out += row.tokens_out
            for name, samples in figures.counters.items():
                summed = self.counters.setdefault(name, {})
                for labels, value in samples:
                    summed[tuple(labels)] = summed.get(tuple(labels), 0.0) + value

    def collect(self) -> Iterator[Metric]:
        yield from _AnsweredCollector(self.answered, lambda: self.active).collect()
        for name, (doc, labels) in _COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=labels)
            for values, value in self.counters.get(name, {}).items():
                family.add_metric(values, value)
            yield family


_COUNTERS = {
    "noroshi_upstream_errors": ("Failed upstream attempts.", ("deployment", "code")),
    "noroshi_limit_refusals": ("Requests refused by a rate limit, budget or lockout.", ("reason",)),
}


def _histogram_of(counts: list[int], total: float) -> _Histogram:
    histogram = _Histogram()
    histogram.counts = list(counts)
    histogram.sum = total
    return histogram


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
            "noroshi_tokens",
            "Tokens in (prompt) and out (completion).",
            labels=("model", "direction"),
        )
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
            "route",
            latency,
        )
        yield _histogram(
            "noroshi_time_to_first_token_seconds",
            "Time from request to the first chunk of a streamed answer.",
            "model",
            ttft,
        )
        yield tokens
        yield GaugeMetricFamily(
            "noroshi_active_streams", "Streams being sent now.", value=self.active()
        )


def _histogram(name: str, doc: str, label: str, by: dict[str, _Histogram]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=(label,))
    for value, histogram in by.items():
        family.add_metric((value,), histogram.buckets(), histogram.sum)
    return family
