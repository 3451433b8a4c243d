"""The bench's quick mode runs end to end (no timing thresholds: it only has to work)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # the quick mode says what it leaves out, and why
    assert "the peers (hono-bun, elysia-bun" in result.stderr
    assert ("wrk is not installed" in result.stderr) == (shutil.which("wrk") is None)
    # a table a person reads, one row a contender; the JSON stays in the results file
    assert result.stdout.splitlines()[0].split()[:3] == ["contender", "chat", "req/s"]
    report = json.loads((ROOT / "bench" / "results" / "quick.json").read_text())
    assert set(report["contenders"]) == {"noroshi", "floor-relay", "bare-relay"}
    assert len(result.stdout.splitlines()) == 1 + len(report["contenders"])
    rates = "wrk" if shutil.which("wrk") else "python (aiohttp)"
    assert report["loadgen"]["rates"].startswith(rates)
    for name, measured in report["contenders"].items():
        for scenario in ("chat", "stream20", "streams100"):
            assert measured[scenario]["success_rate"] == 1.0, (name, scenario, measured[scenario])
        assert measured["stream20"]["cpu_us_per_request"] > 0
        assert measured["cold_start_s"] > 0
        assert measured["streams100"]["peak_rss_mb"] > 0
        # py-spy sampled its loop under load, and its imports were timed
        profile = measured["profile"]
        assert profile["samples"] > 0 and profile["loop_us_per_request"] > 0
        assert profile["cpu_us_per_request"] > 0
        packages = dict(profile["by_package"])
        # the upstream client and the server, for each
        client, server = {
            "noroshi": ("noroshi.providers.http1", "noroshi.http.server"),
            "bare-relay": ("aiohttp", "granian"),
            "floor-relay": ("floor_relay", "floor_relay"),
        }[name]
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
    # the relays and the upstream called directly, measured in turns
    streams = report["turns"]["streams"]
    assert len(streams["rounds"]) == report["plan"]["turn_rounds"]
    assert set(streams["contenders"]) == {"noroshi", "floor-relay", "bare-relay", "upstream"}
    for name, row in streams["contenders"].items():
        assert row["success_rate"] == 1.0 and not row["errors"], (name, row)
        assert row["rps"] > 0 and row["cpu_us"] > 0 and row["p99_ms"] > 0
        if name != "noroshi":  # noroshi over this one, round by round
            ratios = sorted(r["noroshi"]["rps"] / r[name]["rps"] for r in streams["rounds"])
            pair = row["ours_over"]["rps"]
            assert pair["range"] == [round(ratios[0], 3), round(ratios[-1], 3)]
            assert pair["range"][0] <= pair["median"] <= pair["range"][1]
    assert "ours_over" not in streams["contenders"]["noroshi"]
    first = report["turns"]["first_byte"]
    assert all(
        len(p50s) == report["plan"]["ttfb_rounds"] for p50s in first["rounds_p50_ms"].values()
    )
    added = first["contenders"]["noroshi"]["added_over_direct_ms"]
    assert added["range"][0] <= added["median"] <= added["range"][1]
    assert first["contenders"]["floor-relay"]["added_over_floor_ms"] is None


def _quick_results() -> dict[str, Any]:
    """The quick run's results, run again when missing or left by a run of `--only` some."""
    path = ROOT / "bench" / "results" / "quick.json"
    if not path.exists() or "edge_hop" not in json.loads(path.read_text()):
        test_quick_bench_runs()
    results: dict[str, Any] = json.loads(path.read_text())
    return results


def test_report_explains_from_the_quick_results(tmp_path: Path) -> None:
    """The report's sections come from the measurements (the quick run's, here)."""
    from bench.report import write_report

    results = _quick_results()
    write_report(results, tmp_path, chart=False)
    text = (tmp_path / "benchmarks.md").read_text()
    m = results["machine"]
    assert f"Machine: {m['cpu']}, {m['cores']} cores" in text
    ours = results["contenders"]["noroshi"]
    cpu_us = ours["profile"]["cpu_us_per_request"]
    assert f"| **CPU per request (/proc, every thread)** | {cpu_us:,.1f} |" in text
    assert "| package | noroshi (full path) | floor relay (uvloop + llhttp) |" in text
    assert "| `app.App.dispatch` |" in text
    assert "| noroshi (own modules) |" in text
    light = results["edge_hop"]["light"]
    assert f"+{light['added_ttfb_p50_ms']:.2f} ms p50" in text
    assert f"in front of the first adds {light['bare_hop_ttfb_p50_ms']:+.2f} ms p50" in text
    streams = results["turns"]["streams"]["contenders"]
    floor = streams["floor-relay"]
    assert f"| floor relay (uvloop + llhttp) | {floor['version']} | {floor['rps']:,.0f} |" in text
    p99 = floor["ours_over"]["p99_ms"]
    conns = results["plan"]["connections"]
    assert (
        f"| p99 at {conns} connections <= 1.5x the floor relay's | noroshi/floor relay "
        f"{p99['median']:.2f}x"
    ) in text
    added = results["turns"]["first_byte"]["contenders"]["noroshi"]["added_over_direct_ms"]
    assert f"| +{added['median']:.3f} ms (rounds" in text
    # no Bun in the quick mode: its targets are not measured, and say so
    assert "| streaming req/s >= Hono on Bun's | - | not measured |" in text
    assert "| CPU per request <= Elysia on Bun's | - | not measured |" in text
    # the targets of earlier rounds are gone
    assert "2x hono" not in text and "50x litellm" not in text


def _as_full(results: dict[str, Any]) -> dict[str, Any]:
    """The quick results with what a full run adds: the Bun peers in turns, a crowd of
    10,000 streams, instruction counts. Made-up figures, to check how the report reads them:
    Hono on Bun at half noroshi's req/s and CPU, Elysia at half its req/s and twice its CPU."""
    full = copy.deepcopy(results)
    streams = full["turns"]["streams"]
    for name, cpu in (("hono-bun", 0.5), ("elysia-bun", 2.0)):
        for r in streams["rounds"]:
            ours = r["noroshi"]
            r[name] = {
                "rps": ours["rps"] / 2,
                "p99_ms": 30.0,
                "success_rate": 1.0,
                "cpu_us_per_request": ours["cpu_us_per_request"] * cpu,
                "errors": {},
            }
        ours = streams["contenders"]["noroshi"]
        streams["contenders"][name] = {
            "version": "x, bun 1.4.4",
            "rps": ours["rps"] / 2,
            "cpu_us": ours["cpu_us"] * cpu,
            "p99_ms": 30.0,
            "loadgen_cpu_us": None,
            "success_rate": 1.0,
            "errors": {},
            "ours_over": {
                "rps": {"median": 2.0, "range": [2.0, 2.0]},
                "cpu_us": {"median": 1 / cpu, "range": [1 / cpu, 1 / cpu]},
                "p99_ms": {"median": 1.0, "range": [0.9, 1.1]},
            },
        }
    full["contenders"]["noroshi"]["streams10000"] = {"peak_rss_mb": 2048.0, "success_rate": 0.25}
    full["instructions"] = {
        "requests": 200,
        "concurrency": 8,
        "k_instructions_per_request": {"noroshi": 900.0, "floor-relay": 300.0, "bare-relay": 750.0},
    }
    return full


def test_report_judges_the_targets_of_a_full_run(tmp_path: Path) -> None:
    from bench.report import write_all
    from bench.speed import BEGIN, END
    from bench.targets import judge

    results = _as_full(_quick_results())
    verdicts = {v.target: v for v in judge(results)}
    assert verdicts["streaming req/s >= Hono on Bun's"].verdict == "met"
    assert verdicts["CPU per request <= Hono on Bun's"].verdict == "missed by 100%"
    assert verdicts["CPU per request <= Elysia on Bun's"].verdict == "met"
    rss = verdicts["10,000 open slow streams on one worker: RSS < 1 GiB"]
    assert rss.verdict == "missed by 100%" and "25% of the streams ended" in rss.measured
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Speed\n\n{BEGIN}\nold figures\n{END}\n\n## Errors\n")
    write_all(results, tmp_path, chart=False)
    text = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "| CPU per request <= Hono on Bun's | noroshi/hono-bun 2.00x" in text
    assert "- CPU per request <= Hono on Bun's: missed by 100%; see *Where the time goes*" in text
    assert "| Hono on Bun | x, bun 1.4.4 |" in text
    # the instruction counts, noroshi beside the floor relay
    assert "| thousands of instructions | 900 | 300 | 750 |" in text
    assert "| noroshi over this | 1.00x | 3.00x | 1.20x |" in text
    written = readme.read_text()
    assert "old figures" not in written and written.endswith(f"{END}\n\n## Errors\n")
    speed = " ".join(written.split())  # wrapped as the README is
    assert "Against Hono on Bun, noroshi streams 2.00x the requests/s at 2.00x the CPU" in speed
    assert "holds 10,000 open slow streams in 2,048 MiB" in speed
    assert "Targets missed" in speed


def test_readme_keeps_the_speed_markers() -> None:
    """`make bench-full` rewrites what stands between them, after 45 minutes of measuring."""
    from bench.speed import BEGIN, END

    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines.index(BEGIN) < lines.index(END)


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instruction_counts_run() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--requests", "20", "--concurrency", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    counted = json.loads(result.stdout)
    per_request = counted["k_instructions_per_request"]
    # each server's worker did work for every request; the gateway and the Granian + aiohttp
    # relay both do more than the floor (which of those two costs more is what the bench measures)
    assert per_request["bare-relay"] > 100 and per_request["floor-relay"] > 10
    assert per_request["noroshi"] > per_request["floor-relay"]
    assert per_request["bare-relay"] > per_request["floor-relay"]
    assert counted["ratio"] == round(per_request["noroshi"] / per_request["bare-relay"], 3)
    assert counted["ratio_to_floor"] == round(
        per_request["noroshi"] / per_request["floor-relay"], 3
    )


def test_rates_fall_back_to_the_python_load_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without wrk the request rates still come, from the Python load generator, and say so."""
    from bench import rates, wrk
    from bench.servers import MESSAGES, Upstream

    monkeypatch.setattr(wrk, "which", lambda: None)
    assert rates.loadgen() == rates.PYTHON
    upstream = Upstream(20, 0)
    try:
        payload = {"model": "m", "messages": MESSAGES, "stream": True}
        got = rates.rate(
            f"{upstream.url}/v1/chat/completions", payload, {}, 2, 0.3, upstream.proc, warmup=0.1
        )
    finally:
        upstream.proc.stop()
    assert got["loadgen"] == rates.PYTHON and got["success_rate"] == 1.0
    assert got["rps"] > 0 and got["cpu_us_per_request"] > 0


class _CutStreams(BaseHTTPRequestHandler):
    """Answers every POST with a stream that lacks its [DONE]."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        body = b'data: {"choices": []}\n\n'
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_counts_a_cut_stream_as_failed() -> None:
    """wrk's Lua script checks each answer as the Python load generator does."""
    from bench import wrk

    server = ThreadingHTTPServer(("127.0.0.1", 0), _CutStreams)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
        got = wrk.rate(url, {"stream": True}, {"authorization": "Bearer k"}, 2, 1)
    finally:
        server.shutdown()
    assert got.sent > 0 and got.ok == 0 and got.errors == {"stream cut": got.sent}
