"""The targets that the bench judges (issue 23), each against what one run measured.

Speed targets are judged on the contenders taken in turns (bench/turns.py): medians over
rounds of noroshi's figure over the peer's in the same round, which hold on a machine whose
speed drifts between one contender's run and the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["BASELINE", "BASELINE_DATE", "Verdict", "get", "judge"]

# noroshi's cold start and idle RSS in the last report before issue 23's server (docs/
# benchmarks.md of 2026-11-22, on Granian): "no worse than today's" is judged against these
BASELINE_DATE = "2026-11-22"
BASELINE = {"cold_start_s": 0.22, "idle_rss_mb": 73.0}
TTFB_MS = 0.3  # added to the first byte at one connection, at most
P99_OVER_FLOOR = 1.5  # p99 at 64 connections, at most this times the floor relay's
RSS_10K_MB = 1024.0  # 10,000 open slow streams on one worker, under 1 GiB
BUN = {"hono-bun": "Hono on Bun", "elysia-bun": "Elysia on Bun"}


def get(node: Any, *path: str) -> float | None:
    """The number at `path` in nested dicts, or None."""
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


@dataclass
class Verdict:
    target: str
    measured: str  # what was measured, in words and figures
    value: float | None  # the figure judged
    bound: float
    at_least: bool  # the value must be >= bound (else <=)
    key: str  # what kind of target, for the report's explanations: rps, cpu, p99, ttfb, ...

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.bound if self.at_least else self.value <= self.bound

    @property
    def verdict(self) -> str:
        value = self.value
        if value is None:
            return "not measured"
        if self.met:
            return "met"
        gap = (self.bound - value if self.at_least else value - self.bound) / self.bound
        return f"missed by {gap * 100:.0f}%"


def _range(pair: dict[str, Any]) -> str:
    low, high = pair["range"]
    return f"rounds {low:.2f}x to {high:.2f}x"


def _against_bun(streams: dict[str, Any]) -> list[Verdict]:
    out = []
    ours = streams.get("contenders", {}).get("noroshi", {})
    for key, what, at_least, unit in (
        ("rps", "streaming req/s", True, "req/s"),
        ("cpu_us", "CPU per request", False, "µs"),
    ):
        for peer, title in BUN.items():
            row = streams.get("contenders", {}).get(peer)
            pair = (row or {}).get("ours_over", {}).get(key)
            target = f"{what} {'>=' if at_least else '<='} {title}'s"
            if not pair:
                out.append(Verdict(target, "-", None, 1.0, at_least, key))
                continue
            medians = f"{ours.get(key) or 0:,.0f} against {row[key] or 0:,.0f} {unit}"
            measured = f"noroshi/{peer} {pair['median']:.2f}x ({_range(pair)}); medians {medians}"
            out.append(Verdict(target, measured, pair["median"], 1.0, at_least, key))
    return out


def judge(results: dict[str, Any]) -> list[Verdict]:
    """Every target, in the order the report lists them."""
    turns = results.get("turns", {})
    streams = turns.get("streams", {})
    out = _against_bun(streams)
    conns = streams.get("connections", results["plan"]["connections"])
    pair = streams.get("contenders", {}).get("floor-relay", {}).get("ours_over", {}).get("p99_ms")
    target = f"p99 at {conns} connections <= {P99_OVER_FLOOR:g}x the floor relay's"
    if pair:
        ours = streams["contenders"]["noroshi"]["p99_ms"]
        floor = streams["contenders"]["floor-relay"]["p99_ms"]
        measured = (
            f"noroshi/floor relay {pair['median']:.2f}x ({_range(pair)}); medians "
            f"{ours:,.1f} against {floor:,.1f} ms"
        )
        out.append(Verdict(target, measured, pair["median"], P99_OVER_FLOOR, False, "p99"))
    else:
        out.append(Verdict(target, "-", None, P99_OVER_FLOOR, False, "p99"))
    first = turns.get("first_byte", {}).get("contenders", {})
    added = first.get("noroshi", {}).get("added_over_direct_ms")
    target = (
        f"added TTFB p50 at one connection <= {TTFB_MS:g} ms (over the upstream called directly)"
    )
    if added:
        low, high = added["range"]
        measured = f"+{added['median']:.3f} ms (rounds {low:+.3f} to {high:+.3f} ms)"
        out.append(Verdict(target, measured, added["median"], TTFB_MS, False, "ttfb"))
    else:
        out.append(Verdict(target, "-", None, TTFB_MS, False, "ttfb"))
    ours = results.get("contenders", {}).get("noroshi", {})
    for key, what, unit, digits in (
        ("cold_start_s", "cold start", "s", 2),
        ("idle_rss_mb", "idle RSS", "MiB", 0),
    ):
        value, bound = get(ours, key), BASELINE[key]
        target = f"{what} no worse than {BASELINE_DATE}'s {bound:g} {unit}"
        measured = "-" if value is None else f"{value:,.{digits}f} {unit}"
        out.append(Verdict(target, measured, value, bound, False, key))
    crowd = ours.get("streams10000", {})
    value = get(crowd, "peak_rss_mb")
    measured = (
        "-"
        if value is None
        else (
            f"{value:,.0f} MiB at the peak; {get(crowd, 'success_rate') or 0:.0%} of the streams "
            f"ended within {results['plan']['stream_limit']} s"
        )
    )
    out.append(
        Verdict(
            "10,000 open slow streams on one worker: RSS < 1 GiB",
            measured,
            value,
            RSS_10K_MB,
            False,
            "rss10k",
        )
    )
    return out
