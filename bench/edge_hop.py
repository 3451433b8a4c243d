"""What the edge adds to the first byte: one noroshi against an edge in front of a core."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Any

from bench.loadgen import Result, concurrent_streams, percentile, request_rate
from bench.procs import Proc, wait_healthy
from bench.rates import summary
from bench.servers import BENCH_MASTER, MESSAGES, PY, ROOT, Upstream, bare_spec, free_port, start
from bench.turns import in_turns

__all__ = ["edge_hop"]


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
        "edge": {
            "NOROSHI_SERVER__ROLE": "edge",
            "NOROSHI_SERVER__CORES": f'["http://127.0.0.1:{ports["core"]}"]',
        },
    }
    procs: list[Proc] = []
    try:
        for name in ("single", "core", "edge"):
            argv = [
                PY,
                "-m",
                "noroshi",
                "serve",
                "--config",
                str(config),
                "--port",
                str(ports[name]),
            ]
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
        targets = {
            "single": (urls["single"], HOP_HEADERS),
            "edge": (urls["edge"], HOP_HEADERS),
            "bare": (inner.base + inner.chat_path, {}),
            "bare_chain": (outer.base + outer.chat_path, {}),
        }
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
            asyncio.run(
                concurrent_streams(
                    urls[name], HOP_PAYLOAD, HOP_HEADERS, 5, 0.1, plan["stream_limit"]
                )
            )
            result = asyncio.run(
                concurrent_streams(
                    urls[name],
                    HOP_PAYLOAD,
                    HOP_HEADERS,
                    plan["hop_streams"],
                    plan["hop_streams"] / 100,
                    plan["stream_limit"],
                )
            )
            out[name] = summary(result)
    finally:
        for proc in procs:
            proc.stop()
    for q in ("p50", "p99"):
        added = out["edge"][f"ttfb_{q}_ms"] - out["single"][f"ttfb_{q}_ms"]
        out[f"added_ttfb_{q}_ms"] = round(added, 2)
    return out
