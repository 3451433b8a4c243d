"""wrk (C, Debian's `wrk` package) as the bench's load generator for request rates.

The Python load generator spends more CPU per request than the fastest relays do, so on a
2-core machine it, not the relay, set the ceiling of req/s. wrk drives the same POST with a
Lua script, and the script checks each answer as the Python one does: a 200 whose stream
lacks its `[DONE]` counts as cut, not as served. What wrk cannot measure (time to first
byte, thousands of slow streams held open) stays with bench/loadgen.py.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Rate", "rate", "version", "which"]

# The answers are checked in `response`, which makes wrk hand every body to Lua: a few µs of
# the load generator's CPU per request, measured and reported beside the contenders'.
SCRIPT = """
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
%(headers)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) cut = 0 end
function response(status, headers, body)
  if status == 200 and body:sub(1, 6) == "data: " and not body:sub(-20):find("[DONE]", 1, true) then
    cut = cut + 1
  end
end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("cut") end
  local e = summary.errors
  io.write(string.format(
    'bench-wrk {"requests": %%d, "duration_us": %%d, "cut": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%.1f, "p99_us": %%.1f}\\n',
    summary.requests, summary.duration, n, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def which() -> str | None:
    return shutil.which("wrk")


def version() -> str:
    """wrk's version line, e.g. "wrk debian/4.1.0-3+b2 [epoll]"."""
    exe = which()
    if exe is None:
        return ""
    done = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr).splitlines()[0].split(" Copyright")[0].strip()


@dataclass
class Rate:
    """One wrk run: answers counted as in loadgen.Result, latencies in ms."""

    sent: int
    ok: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    loadgen_cpu_s: float  # wrk's own CPU time

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def success_rate(self) -> float:
        return self.ok / self.sent if self.sent else 0.0


def _script(payload: dict[str, Any], headers: dict[str, str]) -> str:
    lines = [
        f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}"
        for k, v in {"content-type": "application/json", **headers}.items()
    ]
    return SCRIPT % {
        "body": json.dumps(payload, separators=(",", ":")),
        "headers": "\n".join(lines),
    }


def rate(
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    connections: int,
    seconds: float,
    threads: int = 1,
) -> Rate:
    """`connections` connections kept busy for `seconds`, each sending its next request when
    the last one is answered (as loadgen.request_rate does, without its warm-up)."""
    exe = which()
    if exe is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_script(payload, headers))
    script = Path(f.name)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            [
                exe,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=seconds + 60,
        )
    finally:
        script.unlink()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((s for s in done.stdout.splitlines() if s.startswith("bench-wrk ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[:300]}")
    got = json.loads(line.removeprefix("bench-wrk "))
    errors = {
        why: got[key]
        for why, key in (
            ("connect", "connect"),
            ("read", "read"),
            ("write", "write"),
            ("non-2xx", "status"),
            ("timeout", "timeout"),
            ("stream cut", "cut"),
        )
        if got[key]
    }
    # a non-2xx answer is counted in requests; a socket error is not
    failed = got["status"] + got["cut"]
    return Rate(
        sent=got["requests"] + got["connect"] + got["read"] + got["write"] + got["timeout"],
        ok=max(0, got["requests"] - failed),
        seconds=got["duration_us"] / 1e6,
        p50_ms=got["p50_us"] / 1000,
        p99_ms=got["p99_us"] / 1000,
        errors=errors,
        loadgen_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    )
