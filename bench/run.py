"""The bench: noroshi against its peers, side by side, in one run.

    python -m bench.run --quick     # seconds: noroshi and the two floor relays; no peers
    python -m bench.run --full      # every peer; writes docs/benchmarks.md, its chart and the
                                    # README's Speed paragraph

Every contender relays to the same fake upstream (bench/upstream.py) on this machine, one
worker each. Absolute numbers drift on shared machines, so the report gives ratios, and the
targets are judged on contenders taken in turns (bench/turns.py). Request rates come from wrk
(Debian's `wrk`) when it is installed; the full mode requires it.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import turns, wrk
from bench.edge_hop import edge_hop
from bench.loadgen import concurrent_streams
from bench.procs import Proc
from bench.profile import Sampler, import_times
from bench.rates import PYTHON, loadgen, rate, summary
from bench.servers import (
    MESSAGES,
    ROOT,
    Spec,
    Upstream,
    free_port,
    spec_named,
    start,
)

RESULTS = ROOT / "bench" / "results"
# the streaming relays that the targets compare, measured in turns when they are available
TURNS = ("noroshi", "floor-relay", "hono-bun", "elysia-bun", "bare-relay", "hono-node")


class RSSPeak:
    """Samples a process tree's RSS every 100 ms while a scenario runs."""

    def __init__(self, proc: Proc) -> None:
        self.proc, self.peak, self._stop = proc, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.proc.rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.proc.rss())


def measure(
    spec_for: Any,
    plan: dict[str, Any],
    fast: Upstream,
    slow: Upstream,
    workdir: Path,
    floor: dict[str, Any],
) -> dict[str, Any]:
    """Every scenario for one contender; `spec_for(port, upstream)` builds its Spec. A crowd
    is skipped after one where the contender ended fewer than half as many streams as the
    upstream called directly (`floor`): a larger one would only time out, at great length."""
    out: dict[str, Any] = {}
    colds = []
    for _ in range(plan["cold_runs"]):
        spec = spec_for(free_port(), fast.url)
        proc, cold = start(spec)
        colds.append(cold)
        proc.stop()
    out["cold_start_s"] = round(statistics.median(colds), 3)
    spec = spec_for(free_port(), fast.url)
    out["version"] = spec.version
    proc, _ = start(spec)
    try:
        time.sleep(0.5)
        out["idle_rss_mb"] = round(proc.rss() / 2**20, 1)
        url = spec.base + spec.chat_path
        for name, stream in (("chat", False), ("stream20", True)):
            payload = {"model": spec.model, "messages": MESSAGES, "stream": stream}
            out[name] = rate(
                url, payload, spec.headers, plan["connections"], plan["duration"], proc
            )
        if spec.imports and plan["profile_s"]:
            payload = {"model": spec.model, "messages": MESSAGES, "stream": True}
            out["profile"] = cpu_profile(proc, url, payload, spec.headers, plan, workdir)
    finally:
        proc.stop()
    if spec.imports:
        own = spec.imports.split()[-1].split(".")[0]  # the package the contender itself is
        out["imports"] = import_times(["-c", spec.imports], own)
    spec = spec_for(free_port(), slow.url)
    proc, _ = start(spec)
    try:
        failing = None
        for count in plan["streams"]:
            if failing is not None:
                out[f"streams{count}"] = {
                    "skipped": f"of {failing} streams, fewer than half as "
                    "many ended as from the upstream directly"
                }
                continue
            payload = {"model": spec.model, "messages": MESSAGES}
            peak = RSSPeak(proc)
            result = asyncio.run(
                concurrent_streams(
                    spec.base + spec.chat_path,
                    payload,
                    spec.headers,
                    count,
                    plan["ramp"],
                    plan["stream_limit"],
                )
            )
            out[f"streams{count}"] = {
                **summary(result),
                "peak_rss_mb": round(peak.stop() / 2**20, 1),
            }
            if result.success_rate < 0.5 * floor[f"streams{count}"]["success_rate"]:
                failing = count
    finally:
        proc.stop()
    return out


def cpu_profile(
    proc: Proc,
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    plan: dict[str, Any],
    workdir: Path,
) -> dict[str, Any] | None:
    """The streaming load again, sampled by py-spy: the CPU per request by package and by
    noroshi's own steps, in µs. py-spy counts a sample wherever the loop's thread is runnable,
    including while it waits for a core, which on a busy machine is much of the time; so its
    shares are scaled to the CPU per request that /proc measured meanwhile."""
    seconds = plan["profile_s"]
    before = proc.cpu()
    sampler = Sampler(proc.popen.pid, seconds, workdir / f"profile-{proc.popen.pid}.raw")
    loaded = rate(url, payload, headers, plan["connections"], seconds + 1.0, warmup=0)
    profile = sampler.result()
    if profile is None or not loaded["ok"]:
        return None
    cpu_us = (proc.cpu() - before) / loaded["ok"] * 1e6

    def per_request(rows: list[tuple[str, float]]) -> list[tuple[str, float]]:
        return [(name, round(share * cpu_us, 1)) for name, share in rows]

    # samples spread over `seconds` at the request rate measured meanwhile
    sampled_us = profile.total * 1e6 / Sampler.RATE / (loaded["rps"] * seconds)
    return {
        "samples": profile.total,
        "cpu_us_per_request": round(cpu_us, 1),
        "loop_us_per_request": round(sampled_us, 1),  # py-spy's own count, waits included
        "by_package": per_request(profile.by_package(14)),
        "steps": per_request(profile.inclusive("noroshi.", 14)),
    }


def floor(plan: dict[str, Any], fast: Upstream, slow: Upstream) -> dict[str, Any]:
    """The upstream called directly: the ceiling of req/s and the floor of time to first byte."""
    out: dict[str, Any] = {}
    for name, stream in (("chat", False), ("stream20", True)):
        payload = {"model": "m", "messages": MESSAGES, "stream": stream}
        out[name] = rate(
            f"{fast.url}/v1/chat/completions",
            payload,
            {},
            plan["connections"],
            plan["duration"],
            fast.proc,
        )
    for count in plan["streams"]:
        result = asyncio.run(
            concurrent_streams(
                f"{slow.url}/v1/chat/completions",
                {"model": "m", "messages": MESSAGES},
                {},
                count,
                plan["ramp"],
                plan["stream_limit"],
            )
        )
        out[f"streams{count}"] = summary(result)
    return out


QUICK: dict[str, Any] = {
    "cold_runs": 1,
    "connections": 16,
    "duration": 1.0,
    "streams": [100],
    "ramp": 0.5,
    "stream_limit": 60,
    "token_ms": 20,
    "tokens": 20,
    "hop_streams": 20,
    "hop_light_s": 0.5,
    "hop_rounds": 2,
    "profile_s": 2.0,
    "turn_rounds": 2,
    "turn_s": 1.0,
    "ttfb_rounds": 2,
    "ttfb_s": 0.5,
}
# A stream takes 4 s (200 tokens, 20 ms apart); 60 s lets each crowd finish what this machine can
# finish. The turns: 5 rounds of 5 s at 64 connections, as the measurement behind issue 23 took.
FULL: dict[str, Any] = {
    "cold_runs": 5,
    "connections": 64,
    "duration": 8.0,
    "streams": [1000, 5000, 10000],
    "ramp": 2.0,
    "stream_limit": 60,
    "token_ms": 20,
    "tokens": 200,
    "hop_streams": 200,
    "hop_light_s": 1.5,
    "hop_rounds": 6,
    "profile_s": 6.0,
    "turn_rounds": 5,
    "turn_s": 5.0,
    "ttfb_rounds": 6,
    "ttfb_s": 1.5,
    "instructions": 200,
}


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d"),
    }


def taken_in_turns(
    names: list[str], plan: dict[str, Any], fast: Upstream, workdir: Path
) -> dict[str, Any]:
    """The streaming relays among `names`, and the upstream called directly, all served at
    once, then measured in turns (bench/turns.py): streams at many connections, and the
    first byte at one."""
    served: list[turns.Served] = []
    try:
        for name in names:
            spec = spec_named(name, free_port(), fast.url, workdir)
            proc, _ = start(spec)
            served.append(
                turns.Served(
                    name, spec.base + spec.chat_path, proc, spec.headers, spec.model, spec.version
                )
            )
        served.append(
            turns.Served(
                turns.DIRECT,
                f"{fast.url}/v1/chat/completions",
                fast.proc,
                version="bench/upstream.py on Granian",
            )
        )
        return {
            "streams": turns.streams(served, plan),
            "first_byte": turns.first_byte(served, plan),
        }
    finally:
        for s in served:
            if s.name != turns.DIRECT:
                s.proc.stop()


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def run(mode: str, plan: dict[str, Any], only: list[str] | None) -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # as an installed package is: imports read bytecode, not sources to compile at every start
    compileall.compile_dir(ROOT / "src", quiet=1)
    compileall.compile_dir(ROOT / "bench", quiet=1)
    results: dict[str, Any] = {
        "mode": mode,
        "plan": plan,
        "machine": machine(),
        "contenders": {},
        "loadgen": {"rates": loadgen(), "first_byte": PYTHON},
    }
    if results["loadgen"]["rates"] == PYTHON:
        _say(
            "wrk is not installed (Debian: apt-get install wrk): request rates come from the "
            "Python load generator, which sets their ceiling"
        )
    names = ["noroshi", "floor-relay", "bare-relay"]
    if mode == "full":
        from bench import contenders

        contenders.install()
        results["missing"] = contenders.missing()
        names += [c.name for c in contenders.peers(0, "http://127.0.0.1:0")]
    else:
        from bench.contenders import CONTENDERS

        _say(f"quick mode: the peers ({', '.join(CONTENDERS)}) run with --full")
    names = [n for n in names if not only or n in only]
    fast = Upstream(20, 0)
    slow = Upstream(plan["tokens"], plan["token_ms"])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            results["floor"] = floor(plan, fast, slow)
            if not only or "edge-hop" in only:
                _say("edge hop")
                results["edge_hop"] = edge_hop(plan, fast, slow, workdir)
            relays = [n for n in TURNS if n in names]
            if "noroshi" in relays and len(relays) > 1:
                _say(f"in turns: {', '.join(relays)} and the upstream called directly")
                results["turns"] = taken_in_turns(relays, plan, fast, workdir)
            for name in names:

                def spec_for(port: int, upstream: str, name: str = name) -> Spec:
                    return spec_named(name, port, upstream, workdir)

                _say(name)
                try:
                    results["contenders"][name] = measure(
                        spec_for, plan, fast, slow, workdir, results["floor"]
                    )
                except RuntimeError as exc:
                    results["contenders"][name] = {"failed": str(exc)}
    finally:
        fast.proc.stop()
        slow.proc.stop()
    if plan.get("instructions") and (not only or "instructions" in only):
        if shutil.which("valgrind") and shutil.which("callgrind_control"):
            from bench import instructions

            _say("instructions per request under callgrind")
            results["instructions"] = instructions.run(plan["instructions"], 8)
        else:
            results.setdefault("missing", {})["instructions"] = (
                "valgrind is not installed (Debian: apt-get install valgrind)"
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--full",
        action="store_true",
        help="every peer; the report, its chart and the README's Speed paragraph",
    )
    parser.add_argument("--quick", action="store_true", help="seconds; what CI runs (default)")
    parser.add_argument(
        "--only", nargs="*", help="contender names to run (and edge-hop, instructions)"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=JSON",
        help="change the plan for a smoke run, e.g. turn_rounds=2 streams=[1000];"
        " its report goes to bench/results/, not docs/",
    )
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args()
    mode = "full" if args.full else "quick"
    changes = dict(change.split("=", 1) for change in args.set)
    if set(changes) - set(FULL):
        parser.error(f"no such plan keys: {', '.join(sorted(set(changes) - set(FULL)))}")
    if mode == "full" and importlib.util.find_spec("matplotlib") is None:
        # found out at the chart, after half an hour of measuring
        parser.error("the full mode draws a chart: pip install -e '.[bench]' (scripts/bench does)")
    if mode == "full" and wrk.which() is None:
        # the Python load generator would set the ceiling that the targets compare against
        parser.error(
            "the full mode measures request rates with wrk: apt-get install wrk "
            "(scripts/bench does, as root)"
        )
    if mode == "full":
        from bench.speed import BEGIN, END

        if not {BEGIN, END} <= set((ROOT / "README.md").read_text().splitlines()):
            parser.error(f"README.md has lost the Speed paragraph's markers: {BEGIN} {END}")
    plan = {
        **(FULL if mode == "full" else QUICK),
        **{key: json.loads(value) for key, value in changes.items()},
    }
    results = run(mode, plan, args.only)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{mode}{'-smoke' if changes else ''}.json"
    path.write_text(json.dumps(results, indent=2))
    if mode == "full":
        from bench.report import write_all, write_report

        if changes:  # a smoke run's figures are not the project's
            write_report(results, RESULTS)
            _say(f"report of the smoke run in {RESULTS / 'benchmarks.md'}")
        else:
            write_all(results, ROOT)
    if args.json:
        print(json.dumps({k: v for k, v in results.items() if k != "plan"}, indent=1))
    else:
        print(table(results))
    print(f"bench: results in {path}", file=sys.stderr)


def table(results: dict[str, Any]) -> str:
    """One row a contender: what the JSON says, at a glance."""
    head = (
        "contender",
        "chat req/s",
        "stream req/s",
        "stream p99 ms",
        "CPU µs/req",
        "start s",
        "idle MiB",
    )
    rows = [head]
    for name, c in results.get("contenders", {}).items():
        chat, stream = c.get("chat", {}), c.get("stream20", {})
        cpu, start = stream.get("cpu_us_per_request", 0), c.get("cold_start_s", 0)
        rows.append(
            (
                name,
                f"{chat.get('rps', 0):,.0f}",
                f"{stream.get('rps', 0):,.0f}",
                f"{stream.get('p99_ms', 0):.1f}",
                f"{cpu:.0f}",
                f"{start:.2f}",
                f"{c.get('idle_rss_mb', 0):.0f}",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            str(v).rjust(w) if i else str(v).ljust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
