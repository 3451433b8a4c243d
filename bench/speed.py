"""The README's Speed paragraph, written from a full run's results, so that its figures are
always the report's: it replaces what stands between the two markers below."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from bench.targets import get, judge

__all__ = ["BEGIN", "END", "paragraph", "write_readme"]

BEGIN = "<!-- speed: written by `make bench-full` (bench/speed.py) from its run -->"
END = "<!-- /speed -->"


def _x(pair: dict[str, Any] | None) -> str | None:
    return None if not pair else f"{pair['median']:.2f}x"


def _ratio(a: float | None, b: float | None) -> str | None:
    if not a or not b:
        return None
    return f"{a / b:.1f}x" if a / b < 10 else f"{a / b:,.0f}x"


def paragraph(results: dict[str, Any]) -> str:
    m = results["machine"]
    turns = results.get("turns", {})
    streams = turns.get("streams", {}).get("contenders", {})
    lines = [
        f"Measured side by side on one {m['cores']}-core machine ({m['cpu']}, {m['date']}; "
        "`make bench-full`, full report in [docs/benchmarks.md](docs/benchmarks.md)): 20-chunk "
        f"streams driven by {results.get('loadgen', {}).get('rates', 'wrk').split(' ')[0]} at "
        f"{turns.get('streams', {}).get('connections', 64)} connections, every contender served "
        "at once and measured in turns, one worker each, noroshi with its full path on (a "
        "virtual key with limits and a budget, usage recorded)."
    ]
    for peer, title in (("hono-bun", "Hono on Bun"), ("elysia-bun", "Elysia on Bun")):
        over = streams.get(peer, {}).get("ours_over", {})
        rps, cpu = _x(over.get("rps")), _x(over.get("cpu_us"))
        if rps and cpu:
            lines.append(
                f"Against {title}, noroshi streams {rps} the requests/s at {cpu} the "
                "CPU per request."
            )
    floor = streams.get("floor-relay", {}).get("ours_over", {})
    if floor.get("p99_ms") and floor.get("cpu_us"):
        lines.append(
            f"Its p99 is {_x(floor['p99_ms'])} and its CPU per request "
            f"{_x(floor['cpu_us'])} those of the floor relay, uvloop and llhttp in a "
            "hundred lines doing none of a gateway's work."
        )
    first = turns.get("first_byte", {}).get("contenders", {}).get("noroshi", {})
    ours = results["contenders"].get("noroshi", {})
    facts = []
    if first.get("added_over_direct_ms"):
        added = first["added_over_direct_ms"]["median"]
        facts.append(f"adds {added:.2f} ms to the first byte at one connection")
    cold, rss = get(ours, "cold_start_s"), get(ours, "idle_rss_mb")
    if cold is not None and rss is not None:
        facts.append(f"starts in {cold:.2f} s with {rss:.0f} MiB resident")
    crowd = get(ours, "streams10000", "peak_rss_mb")
    if crowd is not None:
        facts.append(f"holds 10,000 open slow streams in {crowd:,.0f} MiB")
    if facts:
        lines.append(
            "It " + ", ".join(facts[:-1]) + (" and " if len(facts) > 1 else "") + facts[-1] + "."
        )
    others = []
    ours_rps = get(ours, "stream20", "rps")
    for peer, title in (
        ("fastapi", "FastAPI + httpx"),
        ("portkey", "the Portkey gateway"),
        ("litellm", "the LiteLLM proxy"),
    ):
        ratio = _ratio(ours_rps, get(results["contenders"].get(peer, {}), "stream20", "rps"))
        if ratio:
            others.append(f"{ratio} {title}")
    if others:
        lines.append("Each in its own run, it streams " + ", ".join(others) + " in requests/s.")
    missed = [v for v in judge(results) if v.met is False]
    if missed:
        lines.append(
            "Targets missed, by how much and why, are in the report: "
            + "; ".join(f"{v.target} ({v.verdict.removeprefix('missed ')})" for v in missed)
            + "."
        )
    elif all(v.met for v in judge(results)):
        lines.append("Every target in the report is met.")
    return textwrap.fill(" ".join(lines), width=99, break_on_hyphens=False)


def write_readme(results: dict[str, Any], readme: Path) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise RuntimeError(f"{readme} has no Speed markers ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{paragraph(results)}\n{END}{tail}")
