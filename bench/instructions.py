"""The work each request costs, counted: noroshi beside the floor relay and the bare relay, each
served as in the bench, with its worker under valgrind's callgrind, which counts the instructions
it runs.

CPU time on a shared 2-core machine drifts by a quarter between runs; an instruction count is
the same to about 1% from run to run, so it shows what a change to the hot path saves long
before the timed bench can. It counts user-space work only (not the kernel's), in every thread
of the worker: the event loop, the usage writer, and Granian's Rust threads for the bare relay.

Run: python -m bench.instructions [--requests 200] [--concurrency 8]   (needs valgrind)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.loadgen import request_count
from bench.procs import Proc, _cpu, _tree, wait_healthy
from bench.servers import MESSAGES, ROOT, Spec, Upstream, builtin_specs, free_port

__all__ = ["count", "main"]

WARMUP = 50  # requests before counting: connections pooled, caches filled


def _load(spec: Spec, requests: int, concurrency: int) -> None:
    """`requests` streams, `concurrency` at a time; each must end with its terminator."""
    payload = {"model": spec.model, "messages": MESSAGES, "stream": True}
    url = spec.base + spec.chat_path
    result = asyncio.run(request_count(url, payload, spec.headers, concurrency, requests))
    if result.ok != requests:
        raise RuntimeError(f"{spec.name}: {requests - result.ok} requests failed: {result.errors}")


def count(spec: Spec, requests: int, concurrency: int, workdir: Path) -> float:
    """Instructions per request that `spec`'s worker runs, in thousands."""
    out = workdir / f"callgrind-{spec.name}"
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}.%p",
        *spec.argv,
    ]
    proc = Proc(argv, spec.env, cwd=str(ROOT))
    try:
        wait_healthy(spec.base + spec.health_path, proc, limit_s=300)
        # the worker is the process that does the work: the one whose CPU grows under load
        before = {pid: _cpu(pid) for pid in _tree(proc.popen.pid)}
        _load(spec, WARMUP, concurrency)
        after = {pid: _cpu(pid) for pid in _tree(proc.popen.pid)}
        worker = str(max(after, key=lambda pid: after[pid] - before.get(pid, 0)))
        for action in ("--instr=on", "--zero"):
            subprocess.run(["callgrind_control", action, worker], check=True, capture_output=True)
        _load(spec, requests, concurrency)
        subprocess.run(["callgrind_control", "--dump", worker], check=True, capture_output=True)
        dumps = sorted(workdir.glob(f"{out.name}.{worker}*"), key=os.path.getmtime)
        totals = next(
            line for line in dumps[-1].read_text().splitlines() if line.startswith("totals:")
        )
        return int(totals.split()[1]) / requests / 1000
    finally:
        proc.stop()


def run(requests: int, concurrency: int) -> dict[str, Any]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    upstream = Upstream(20, 0)  # the bench's stream20 answer
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            counted = {
                s.name: round(count(s, requests, concurrency, work), 1)
                for s in builtin_specs(free_port(), upstream.url, work)
            }
    finally:
        upstream.proc.stop()
    return {
        "requests": requests,
        "concurrency": concurrency,
        "k_instructions_per_request": counted,
        "ratio": round(counted["noroshi"] / counted["bare-relay"], 3),
        "ratio_to_floor": round(counted["noroshi"] / counted["floor-relay"], 3),
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(run(args.requests, args.concurrency), indent=1))


if __name__ == "__main__":
    main()
