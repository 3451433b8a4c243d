"""The bench's quick mode runs end to end (no timing thresholds: it only has to work)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((ROOT / "bench" / "results" / "quick.json").read_text())
    assert set(report["contenders"]) == {"noroshi", "bare-relay"}
    for name, measured in report["contenders"].items():
        for scenario in ("chat", "stream20", "streams100"):
            assert measured[scenario]["success_rate"] == 1.0, (name, scenario, measured[scenario])
        assert measured["stream20"]["cpu_us_per_request"] > 0
        assert measured["cold_start_s"] > 0
        assert measured["streams100"]["peak_rss_mb"] > 0
    assert report["floor"]["stream20"]["ok"] > 0
    hop = report["edge_hop"]
    assert hop["edge"]["success_rate"] == 1.0 and hop["single"]["success_rate"] == 1.0
    assert isinstance(hop["added_ttfb_p50_ms"], float)
