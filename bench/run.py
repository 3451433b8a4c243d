"""The bench: noroshi against its peers, side by side, in one run.

    python -m bench.run --quick     # seconds: noroshi, the bare relay and the floor; no peers
    python -m bench.run --full      # every peer; writes docs/benchmarks.md and its chart

Every contender relays to the same fake upstream (bench/upstream.py) on this machine, one
worker each. Absolute numbers drift on shared machines, so the report gives ratios.
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
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.loadgen import Result, concurrent_streams, percentile, request_rate
from bench.procs import Proc, wait_healthy
from bench.profile import Sampler, import_times

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
MESSAGES = [{"role": "user", "content": "hi"}]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Spec:
    """How to start one contender against a given upstream."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    health_path: str = "/health"
    chat_path: str = "/v1/chat/completions"
    model: str = "m"
    headers: dict[str, str] = field(default_factory=dict)
    version: str = ""
    imports: str = ""  # a Python contender's imports at start, for the profile of its cold start

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def granian(target: str, port: int) -> list[str]:
    return [PY, "-m", "granian", "--interface", "rsgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--no-ws", "--log-level", "warning", target]  # fmt: skip


BENCH_MASTER = "sk-bench-master"


def noroshi_spec(port: int, upstream: str, workdir: Path) -> Spec:
    """Noroshi with its full path on: a virtual key with limits and a budget, usage recorded."""
    from noroshi import __version__

    config = workdir / f"noroshi-{port}.toml"
    config.write_text(f"""
[server]
data_dir = "{workdir / "data"}"

[auth]
master_key = "{BENCH_MASTER}"

[providers.up]
type = "openai"
base_url = "{upstream}/v1"
api_key = "bench"

[[models]]
name = "m"
deployments = [{{ provider = "up", model = "m" }}]
""")
    argv = [PY, "-m", "noroshi", "serve", "--config", str(config), "--port", str(port)]
    created = subprocess.run(
        [PY, "-m", "noroshi", "keys", "create", "bench", "--config", str(config),
         "--rpm", "1000000000", "--tpm", "1000000000000", "--max-concurrency", "100000",
         "--budget", '{"tokens_per_day": 1000000000000}'],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    key = created.stdout.strip().splitlines()[-1]
    headers = {"authorization": f"Bearer {key}"}
    # `serve` loads the CLI, then its server and the app, and serves in the same process
    imports = "import noroshi.cli, noroshi.serve"
    return Spec("noroshi", argv, {}, port, headers=headers, version=__version__, imports=imports)


def bare_spec(port: int, upstream: str) -> Spec:
    import granian as g

    return Spec("bare-relay", granian("bench.bare_relay:app", port), {"BENCH_UPSTREAM": upstream},
                port, version=f"granian {g.__version__}",
                imports="import granian, bench.bare_relay")  # fmt: skip


def builtin_specs(port: int, upstream: str, workdir: Path) -> list[Spec]:
    return [noroshi_spec(port, upstream, workdir), bare_spec(port, upstream)]


def peer_specs(port: int, upstream: str) -> list[Spec]:
    from bench import contenders

    return [
        Spec(c.name, c.argv, c.env, port, c.health_path, c.chat_path, c.model, c.headers, c.version)
        for c in contenders.peers(port, upstream)
    ]


class Upstream:
    def __init__(self, tokens: int, token_ms: float) -> None:
        self.port = free_port()
        env = {"BENCH_TOKENS": str(tokens), "BENCH_TOKEN_MS": str(token_ms)}
        self.proc = Proc(granian("bench.upstream:app", self.port), env, cwd=str(ROOT))
        self.url = f"http://127.0.0.1:{self.port}"
        wait_healthy(f"{self.url}/health", self.proc)


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


def summary(result: Result, cpu_s: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sent": result.sent,
        "ok": result.ok,
        "success_rate": round(result.success_rate, 4),
        "rps": round(result.rps, 1),
        "p50_ms": round(percentile(result.latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(result.latencies, 99) * 1000, 2),
        "ttfb_p50_ms": round(percentile(result.ttfb, 50) * 1000, 2),
        "ttfb_p99_ms": round(percentile(result.ttfb, 99) * 1000, 2),
        "errors": result.errors,
    }
    if cpu_s is not None and result.ok:
        out["cpu_us_per_request"] = round(cpu_s / result.ok * 1e6, 1)
    return out


def start(spec: Spec, cwd: Path) -> tuple[Proc, float]:
    proc = Proc(spec.argv, spec.env, cwd=str(cwd))
    try:
        return proc, wait_healthy(spec.base + spec.health_path, proc, limit_s=120)
    except BaseException:
        proc.stop()
        raise


def measure(spec_for: Any, plan: dict[str, Any], fast: Upstream, slow: Upstream,
            workdir: Path, floor: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Every scenario for one contender; `spec_for(port, upstream)` builds its Spec. A crowd
    is skipped after one where the contender ended fewer than half as many streams as the
    upstream called directly (`floor`): a larger one would only time out, at great length."""
    out: dict[str, Any] = {}
    colds = []
    for _ in range(plan["cold_runs"]):
        spec = spec_for(free_port(), fast.url)
        proc, cold = start(spec, ROOT)
        colds.append(cold)
        proc.stop()
    out["cold_start_s"] = round(statistics.median(colds), 3)
    spec = spec_for(free_port(), fast.url)
    out["version"] = spec.version
    proc, _ = start(spec, ROOT)
    try:
        time.sleep(0.5)
        out["idle_rss_mb"] = round(proc.rss() / 2**20, 1)
        url = spec.base + spec.chat_path
        for name, stream in (("chat", False), ("stream20", True)):
            payload = {"model": spec.model, "messages": MESSAGES, "stream": stream}
            before = proc.cpu()
            result = asyncio.run(request_rate(url, payload, spec.headers, plan["connections"],
                                              plan["duration"]))  # fmt: skip
            out[name] = summary(result, proc.cpu() - before)
        if spec.imports and plan["profile_s"]:
            payload = {"model": spec.model, "messages": MESSAGES, "stream": True}
            out["profile"] = cpu_profile(proc, url, payload, spec.headers, plan, workdir)
    finally:
        proc.stop()
    if spec.imports:
        own = spec.imports.split()[-1].split(".")[0]  # the package the contender itself is
        out["imports"] = import_times(["-c", spec.imports], own)
    spec = spec_for(free_port(), slow.url)
    proc, _ = start(spec, ROOT)
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
            result = asyncio.run(concurrent_streams(spec.base + spec.chat_path, payload,
                                                    spec.headers, count, plan["ramp"],
                                                    plan["stream_limit"]))  # fmt: skip
            out[f"streams{count}"] = {
                **summary(result),
                "peak_rss_mb": round(peak.stop() / 2**20, 1),
            }
            if result.success_rate < 0.5 * floor[f"streams{count}"]["success_rate"]:
                failing = count
    finally:
        proc.stop()
    return out


def cpu_profile(proc: Proc, url: str, payload: dict[str, Any], headers: dict[str, str],
                plan: dict[str, Any], workdir: Path) -> dict[str, Any] | None:  # fmt: skip
    """The streaming load again, sampled by py-spy: the CPU that the event loop's thread spends
    per request, by package and by noroshi's own steps (µs, from samples at a known rate)."""
    seconds = plan["profile_s"]
    sampler = Sampler(proc.popen.pid, seconds, workdir / f"profile-{proc.popen.pid}.raw")
    result = asyncio.run(request_rate(url, payload, headers, plan["connections"], seconds + 1.0,
                                      warmup=0.5))  # fmt: skip
    profile = sampler.result()
    if profile is None or not result.rps:
        return None
    us_per_sample = 1e6 / Sampler.RATE

    def per_request(rows: list[tuple[str, float]]) -> list[tuple[str, float]]:
        # samples spread over `seconds` at the request rate measured meanwhile
        return [(name, round(share * profile.total * us_per_sample / (result.rps * seconds), 1))
                for name, share in rows]  # fmt: skip

    return {
        "samples": profile.total,
        "loop_us_per_request": per_request([("all", 1.0)])[0][1],
        "by_package": per_request(profile.by_package(14)),
        "steps": per_request(profile.inclusive("noroshi.", 14)),
    }


def floor(plan: dict[str, Any], fast: Upstream, slow: Upstream) -> dict[str, Any]:
    """The upstream called directly: the ceiling of req/s and the floor of time to first byte."""
    out: dict[str, Any] = {}
    for name, stream in (("chat", False), ("stream20", True)):
        payload = {"model": "m", "messages": MESSAGES, "stream": stream}
        result = asyncio.run(request_rate(f"{fast.url}/v1/chat/completions", payload, {},
                                          plan["connections"], plan["duration"]))  # fmt: skip
        out[name] = summary(result)
    for count in plan["streams"]:
        result = asyncio.run(concurrent_streams(f"{slow.url}/v1/chat/completions",
                                                {"model": "m", "messages": MESSAGES}, {}, count,
                                                plan["ramp"], plan["stream_limit"]))  # fmt: skip
        out[f"streams{count}"] = summary(result)
    return out


QUICK = {"cold_runs": 1, "connections": 16, "duration": 1.0, "streams": [100], "ramp": 0.5,
         "stream_limit": 60, "token_ms": 20, "tokens": 20, "hop_streams": 20, "hop_light_s": 0.5,
         "hop_rounds": 2, "profile_s": 2.0, "pair_rounds": 2, "pair_s": 1.0}  # fmt: skip
# A stream takes 4 s (200 tokens, 20 ms apart); 60 s lets each crowd finish what this machine can
# finish, and keeps the full mode under 30 minutes.
FULL = {"cold_runs": 5, "connections": 64, "duration": 8.0, "streams": [1000, 5000, 10000],
        "ramp": 2.0, "stream_limit": 60, "token_ms": 20, "tokens": 200,
        "hop_streams": 200, "hop_light_s": 1.5, "hop_rounds": 6, "profile_s": 6.0,
        "pair_rounds": 7, "pair_s": 4.0}  # fmt: skip


def in_turns(items: Sequence[T], rounds: int) -> Iterator[tuple[int, T]]:
    """Each item once a round, with its round's number, the order alternating so that none
    always goes first; round 0 is a warm-up, which callers leave out of what they report."""
    for n in range(rounds + 1):
        for item in items if n % 2 else items[::-1]:
            yield n, item


def cpu_pair(plan: dict[str, Any], fast: Upstream, workdir: Path) -> dict[str, Any]:
    """CPU per streamed request of noroshi and of the bare relay, taken in turns: short rounds,
    one right after the other (which goes first alternates), so that both meet the same
    machine. Each contender's own run measures them minutes apart, and on this shared machine
    their ratio moved between 1.66x and 2.03x from one full run to the next."""
    specs = [noroshi_spec(free_port(), fast.url, workdir), bare_spec(free_port(), fast.url)]
    procs = []
    try:
        for spec in specs:
            procs.append(start(spec, ROOT)[0])
        served = list(zip(specs, procs, strict=True))
        measured: list[dict[str, float]] = [{} for _ in range(plan["pair_rounds"] + 1)]
        for n, (spec, proc) in in_turns(served, plan["pair_rounds"]):
            payload = {"model": spec.model, "messages": MESSAGES, "stream": True}
            before = proc.cpu()
            result = asyncio.run(request_rate(spec.base + spec.chat_path, payload,
                                              spec.headers, plan["connections"],
                                              plan["pair_s"]))  # fmt: skip
            if result.ok == 0 or result.success_rate < 1.0:
                raise RuntimeError(f"{spec.name} failed streams: {result.errors}")
            measured[n][spec.name] = round((proc.cpu() - before) / result.ok * 1e6, 1)
    finally:
        for proc in procs:
            proc.stop()
    rounds = measured[1:]  # the warm-up round is not counted
    ratios = [r["noroshi"] / r["bare-relay"] for r in rounds]
    return {
        "rounds": rounds,
        "noroshi_us": statistics.median(r["noroshi"] for r in rounds),
        "bare_us": statistics.median(r["bare-relay"] for r in rounds),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
    }


def edge_hop(plan: dict[str, Any], fast: Upstream, slow: Upstream, workdir: Path) -> dict[str, Any]:
    """What the edge adds to time to first byte: the same streams through one noroshi (role
    all) and through an edge in front of a core. `light`: one stream at a time, which is the
    hop itself; `loaded`: many at once, where the two extra processes also share the cores."""
    return {"light": _hop_light(plan, fast, workdir), "loaded": _hop_loaded(plan, slow, workdir)}


def _hop_servers(load: str, upstream: Upstream, workdir: Path) -> tuple[dict[str, str], list[Proc]]:
    """One noroshi (role all), and an edge in front of a core: their chat URLs and processes."""
    config = workdir / f"hop-{load}.toml"
    config.write_text(f"""
[server]
data_dir = "{workdir / "hop"}"
[auth]
master_key = "{BENCH_MASTER}"
[internal]
secret = "bench-internal-secret-0123456789"
[providers.up]
type = "openai"
base_url = "{upstream.url}/v1"
[[models]]
name = "m"
deployments = [{{ provider = "up", model = "m" }}]
""")
    ports = {"single": free_port(), "core": free_port(), "edge": free_port()}
    roles = {
        "single": {},
        "core": {"NOROSHI_SERVER__ROLE": "core"},
        "edge": {"NOROSHI_SERVER__ROLE": "edge",
                 "NOROSHI_SERVER__CORES": f'["http://127.0.0.1:{ports["core"]}"]'},
    }  # fmt: skip
    procs: list[Proc] = []
    try:
        for name in ("single", "core", "edge"):
            argv = [PY, "-m", "noroshi", "serve", "--config", str(config),
                    "--port", str(ports[name])]  # fmt: skip
            procs.append(Proc(argv, roles[name], cwd=str(ROOT)))
            wait_healthy(f"http://127.0.0.1:{ports[name]}/health", procs[-1], limit_s=120)
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    urls = {name: f"http://127.0.0.1:{ports[name]}/v1/chat/completions" for name in ports}
    return urls, procs


HOP_HEADERS = {"authorization": f"Bearer {BENCH_MASTER}"}
HOP_PAYLOAD = {"model": "m", "messages": MESSAGES, "stream": True}


def _hop_light(plan: dict[str, Any], upstream: Upstream, workdir: Path) -> dict[str, Any]:
    """One stream at a time, in short rounds taken in turns (the order alternating), the first
    a warm-up: through one noroshi, through the edge and its core, and, as the floor that this
    machine sets for any hop, through one bare relay and through two in a row. The added time
    is the median over rounds of each round's difference of p50s, so that drift between the
    two measurements cannot pass for the hop."""
    urls, procs = _hop_servers("light", upstream, workdir)
    inner = bare_spec(free_port(), upstream.url)
    outer = bare_spec(free_port(), inner.base)
    try:
        for spec in (inner, outer):
            procs.append(start(spec, ROOT)[0])
        targets = {"single": (urls["single"], HOP_HEADERS), "edge": (urls["edge"], HOP_HEADERS),
                   "bare": (inner.base + inner.chat_path, {}),
                   "bare_chain": (outer.base + outer.chat_path, {})}  # fmt: skip
        named = dict(zip(("single", "core", "edge"), procs[:3], strict=True))
        results: dict[str, list[Result]] = {name: [] for name in targets}
        cpu = {"single": 0.0, "edge": 0.0, "core": 0.0}
        for n, name in in_turns(list(targets), plan["hop_rounds"]):
            url, headers = targets[name]
            watched = {"single": ("single",), "edge": ("edge", "core")}.get(name, ())
            before = [named[p].cpu() for p in watched]
            result = asyncio.run(request_rate(url, HOP_PAYLOAD, headers, 1, plan["hop_light_s"]))
            if n:  # the warm-up round is not counted
                results[name].append(result)
                for p, used in zip(watched, before, strict=True):
                    cpu[p] += named[p].cpu() - used
    finally:
        for proc in procs:
            proc.stop()

    def p50s(name: str) -> list[float]:
        return [percentile(r.ttfb, 50) * 1000 for r in results[name]]

    added = [e - s for s, e in zip(p50s("single"), p50s("edge"), strict=True)]
    floor = [c - b for b, c in zip(p50s("bare"), p50s("bare_chain"), strict=True)]
    out: dict[str, Any] = {name: summary(_merged(rs)) for name, rs in results.items()}
    ok = {name: max(out[name]["ok"], 1) for name in ("single", "edge")}
    out["single_cpu_us"] = {"single": round(cpu["single"] / ok["single"] * 1e6)}
    out["edge_cpu_us"] = {p: round(cpu[p] / ok["edge"] * 1e6) for p in ("edge", "core")}
    out["added_ttfb_p50_ms"] = round(statistics.median(added), 2)
    out["added_ttfb_p50_range_ms"] = [round(min(added), 2), round(max(added), 2)]
    out["added_ttfb_p99_ms"] = round(out["edge"]["ttfb_p99_ms"] - out["single"]["ttfb_p99_ms"], 2)
    out["bare_hop_ttfb_p50_ms"] = round(statistics.median(floor), 2)
    return out


def _merged(results: list[Result]) -> Result:
    out = Result()
    for r in results:
        out.sent += r.sent
        out.ok += r.ok
        out.elapsed += r.elapsed
        out.latencies += r.latencies
        out.ttfb += r.ttfb
        for why, count in r.errors.items():
            out.errors[why] = out.errors.get(why, 0) + count
    return out


def _hop_loaded(plan: dict[str, Any], upstream: Upstream, workdir: Path) -> dict[str, Any]:
    urls, procs = _hop_servers("loaded", upstream, workdir)
    out: dict[str, Any] = {}
    try:
        for name in ("single", "edge"):
            asyncio.run(concurrent_streams(urls[name], HOP_PAYLOAD, HOP_HEADERS, 5, 0.1,
                                           plan["stream_limit"]))  # fmt: skip
            result = asyncio.run(concurrent_streams(urls[name], HOP_PAYLOAD, HOP_HEADERS,
                                                    plan["hop_streams"],
                                                    plan["hop_streams"] / 100,
                                                    plan["stream_limit"]))  # fmt: skip
            out[name] = summary(result)
    finally:
        for proc in procs:
            proc.stop()
    for q in ("p50", "p99"):
        added = out["edge"][f"ttfb_{q}_ms"] - out["single"][f"ttfb_{q}_ms"]
        out[f"added_ttfb_{q}_ms"] = round(added, 2)
    return out


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())  # fmt: skip
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "date": time.strftime("%Y-%m-%d")}  # fmt: skip


def run(mode: str, only: list[str] | None) -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    plan = QUICK if mode == "quick" else FULL
    # as an installed package is: imports read bytecode, not sources to compile at every start
    compileall.compile_dir(ROOT / "src", quiet=1)
    compileall.compile_dir(ROOT / "bench", quiet=1)
    results: dict[str, Any] = {"mode": mode, "plan": plan, "machine": machine(), "contenders": {}}
    fast = Upstream(20, 0)
    slow = Upstream(plan["tokens"], plan["token_ms"])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            results["floor"] = floor(plan, fast, slow)
            if not only or "edge-hop" in only:
                print("bench: edge hop", file=sys.stderr, flush=True)
                results["edge_hop"] = edge_hop(plan, fast, slow, workdir)
            if not only or {"noroshi", "bare-relay"} <= set(only):
                print("bench: CPU per request, noroshi and the bare relay in turns",
                      file=sys.stderr, flush=True)  # fmt: skip
                results["cpu_pair"] = cpu_pair(plan, fast, workdir)
            names = ["noroshi", "bare-relay"]
            if mode == "full":
                from bench import contenders

                contenders.install()
                results["missing"] = contenders.missing()
                names += [s.name for s in peer_specs(0, fast.url)]
            for name in names:
                if only and name not in only:
                    continue

                def spec_for(port: int, upstream: str, name: str = name) -> Spec:
                    specs = builtin_specs(port, upstream, workdir) + (
                        peer_specs(port, upstream) if mode == "full" else [])  # fmt: skip
                    return next(s for s in specs if s.name == name)

                print(f"bench: {name}", file=sys.stderr, flush=True)
                try:
                    results["contenders"][name] = measure(
                        spec_for, plan, fast, slow, workdir, results["floor"]
                    )
                except RuntimeError as exc:
                    results["contenders"][name] = {"failed": str(exc)}
    finally:
        fast.proc.stop()
        slow.proc.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="every peer, the report and chart")
    parser.add_argument("--quick", action="store_true", help="seconds; what CI runs (default)")
    parser.add_argument("--only", nargs="*", help="contender names to run")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args()
    mode = "full" if args.full else "quick"
    if mode == "full" and importlib.util.find_spec("matplotlib") is None:
        # found out at the chart, after half an hour of measuring
        parser.error("the full mode draws a chart: pip install -e '.[bench]' (scripts/bench does)")
    results = run(mode, args.only)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{mode}.json"
    path.write_text(json.dumps(results, indent=2))
    if mode == "full":
        from bench.report import write_report

        write_report(results, ROOT / "docs")
    if args.json:
        print(json.dumps({k: v for k, v in results.items() if k != "plan"}, indent=1))
    else:
        print(table(results))
    print(f"bench: results in {path}", file=sys.stderr)


def table(results: dict[str, Any]) -> str:
    """One row a contender: what the JSON says, at a glance."""
    head = ("contender", "chat req/s", "stream req/s", "stream p99 ms", "CPU µs/req",
            "start s", "idle MiB")  # fmt: skip
    rows = [head]
    for name, c in results.get("contenders", {}).items():
        chat, stream = c.get("chat", {}), c.get("stream20", {})
        cpu, start = stream.get("cpu_us_per_request", 0), c.get("cold_start_s", 0)
        rows.append((name, f"{chat.get('rps', 0):,.0f}", f"{stream.get('rps', 0):,.0f}",
                     f"{stream.get('p99_ms', 0):.1f}", f"{cpu:.0f}", f"{start:.2f}",
                     f"{c.get('idle_rss_mb', 0):.0f}"))  # fmt: skip
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = ["  ".join(str(v).rjust(w) if i else str(v).ljust(w)
                       for i, (v, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
