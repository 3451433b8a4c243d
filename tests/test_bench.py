"""The bench's quick mode runs end to end (no timing thresholds: it only has to work)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # a table a person reads, one row a contender; the JSON stays in the results file
    assert result.stdout.splitlines()[0].split()[:3] == ["contender", "chat", "req/s"]
    assert len(result.stdout.splitlines()) == 3
    report = json.loads((ROOT / "bench" / "results" / "quick.json").read_text())
    assert set(report["contenders"]) == {"noroshi", "bare-relay"}
    for name, measured in report["contenders"].items():
        for scenario in ("chat", "stream20", "streams100"):
            assert measured[scenario]["success_rate"] == 1.0, (name, scenario, measured[scenario])
        assert measured["stream20"]["cpu_us_per_request"] > 0
        assert measured["cold_start_s"] > 0
        assert measured["streams100"]["peak_rss_mb"] > 0
        # py-spy sampled its loop under load, and its imports were timed
        profile = measured["profile"]
        assert profile["samples"] > 0 and profile["loop_us_per_request"] > 0
        packages = dict(profile["by_package"])
        # the upstream client and the server, for each
        client = "noroshi.providers.http1" if name == "noroshi" else "aiohttp"
        server = "noroshi.http.server" if name == "noroshi" else "granian"
        assert packages[client] > 0 and packages[server] > 0
        imports = dict(measured["imports"])
        assert ("granian" in imports) == (name == "bare-relay")  # noroshi serves on its own
        assert ("aiohttp" in imports) == (name == "bare-relay")  # noroshi starts without it
    ours = report["contenders"]["noroshi"]
    steps = dict(ours["profile"]["steps"])
    assert steps["noroshi.app.App.dispatch"] > 0
    # the frames that start the server hold everything
    assert not [s for s in steps if s.startswith(("noroshi.cli.", "noroshi.serve."))]
    assert "noroshi (own modules)" in dict(ours["imports"])
    assert report["floor"]["stream20"]["ok"] > 0
    for load in ("light", "loaded"):
        hop = report["edge_hop"][load]
        assert hop["edge"]["success_rate"] == 1.0 and hop["single"]["success_rate"] == 1.0
        assert isinstance(hop["added_ttfb_p50_ms"], float)
    light = report["edge_hop"]["light"]
    assert light["edge"]["ok"] > 1  # one stream after another, for a while
    assert light["edge_cpu_us"]["edge"] > 0 and light["edge_cpu_us"]["core"] > 0
    assert light["single_cpu_us"]["single"] > 0
    assert light["bare"]["success_rate"] == 1.0 and light["bare_chain"]["success_rate"] == 1.0
    low, high = light["added_ttfb_p50_range_ms"]  # rounds in turns, the median between
    assert low <= light["added_ttfb_p50_ms"] <= high
    pair = report["cpu_pair"]  # noroshi and the bare relay measured in turns
    assert len(pair["rounds"]) == report["plan"]["pair_rounds"]
    ratios = sorted(r["noroshi"] / r["bare-relay"] for r in pair["rounds"])
    assert pair["ratio_range"] == [round(ratios[0], 3), round(ratios[-1], 3)]
    assert ratios[0] <= pair["ratio"] <= ratios[-1]


def test_report_explains_from_the_quick_results(tmp_path: Path) -> None:
    """The report's profile sections come from the measurements (the quick run's, here)."""
    from bench.report import write_report

    path = ROOT / "bench" / "results" / "quick.json"
    if not path.exists():
        test_quick_bench_runs()
    results = json.loads(path.read_text())
    write_report(results, tmp_path, chart=False)
    text = (tmp_path / "benchmarks.md").read_text()
    ours = results["contenders"]["noroshi"]
    loop_us = ours["profile"]["loop_us_per_request"]
    assert f"| **the loop's thread** | {loop_us:,.1f} |" in text
    assert "| `app.App.dispatch` |" in text
    assert "| noroshi (own modules) |" in text
    light = results["edge_hop"]["light"]
    assert f"+{light['added_ttfb_p50_ms']:.2f} ms p50" in text
    assert f"in front of the first adds {light['bare_hop_ttfb_p50_ms']:+.2f} ms p50" in text
    assert "| the edge hop adds < 1 ms to TTFB p50 (one stream at a time) |" in text
    pair = results["cpu_pair"]
    assert f"a ratio of {pair['ratio']:.2f}x" in text
    assert (
        f"| CPU per request <= 1.5x the bare relay (in turns, median) | {pair['ratio']:,.2f}x"
        in text
    )


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instruction_counts_run() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--requests", "20", "--concurrency", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    counted = json.loads(result.stdout)
    per_request = counted["k_instructions_per_request"]
    # each server's worker did work for every request; the gateway does more than the floor
    assert per_request["bare-relay"] > 100
    assert per_request["noroshi"] > per_request["bare-relay"]
    assert counted["ratio"] == round(per_request["noroshi"] / per_request["bare-relay"], 3)
