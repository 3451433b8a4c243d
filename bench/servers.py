"""The servers under test and the fake upstream they relay: how to start each, one worker."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Proc, wait_healthy

__all__ = [
    "BENCH_MASTER",
    "MESSAGES",
    "PY",
    "ROOT",
    "Spec",
    "Upstream",
    "bare_spec",
    "builtin_specs",
    "floor_spec",
    "free_port",
    "granian",
    "noroshi_spec",
    "peer_specs",
    "spec_named",
    "start",
]

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MESSAGES = [{"role": "user", "content": "hi"}]
BENCH_MASTER = "sk-bench-master"


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
    return [
        PY,
        "-m",
        "granian",
        "--interface",
        "rsgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-ws",
        "--log-level",
        "warning",
        target,
    ]


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
        [
            PY,
            "-m",
            "noroshi",
            "keys",
            "create",
            "bench",
            "--config",
            str(config),
            "--rpm",
            "1000000000",
            "--tpm",
            "1000000000000",
            "--max-concurrency",
            "100000",
            "--budget",
            '{"tokens_per_day": 1000000000000}',
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    key = created.stdout.strip().splitlines()[-1]
    headers = {"authorization": f"Bearer {key}"}
    # `serve` loads the CLI, then its server and the app, and serves in the same process
    imports = "import noroshi.cli, noroshi.serve"
    return Spec("noroshi", argv, {}, port, headers=headers, version=__version__, imports=imports)


def floor_spec(port: int, upstream: str) -> Spec:
    """The floor relay (bench/floor_relay.py): uvloop and llhttp, no gateway work."""
    from importlib.metadata import version

    argv = [PY, "-m", "bench.floor_relay", "--port", str(port)]
    return Spec(
        "floor-relay",
        argv,
        {"BENCH_UPSTREAM": upstream},
        port,
        version=f"uvloop {version('uvloop')}, httptools {version('httptools')}",
        imports="import bench.floor_relay",
    )


def bare_spec(port: int, upstream: str) -> Spec:
    """The bare relay (bench/bare_relay.py): Granian's RSGI and aiohttp, no gateway work."""
    import granian as g

    return Spec(
        "bare-relay",
        granian("bench.bare_relay:app", port),
        {"BENCH_UPSTREAM": upstream},
        port,
        version=f"granian {g.__version__}",
        imports="import granian, bench.bare_relay",
    )


def builtin_specs(port: int, upstream: str, workdir: Path) -> list[Spec]:
    """The contenders that need nothing installed beyond noroshi's bench extra."""
    return [
        noroshi_spec(port, upstream, workdir),
        floor_spec(port, upstream),
        bare_spec(port, upstream),
    ]


def spec_named(name: str, port: int, upstream: str, workdir: Path) -> Spec:
    """The contender called `name`, built in or an installed peer."""
    if name == "noroshi":
        return noroshi_spec(port, upstream, workdir)
    if name == "floor-relay":
        return floor_spec(port, upstream)
    if name == "bare-relay":
        return bare_spec(port, upstream)
    return next(s for s in peer_specs(port, upstream) if s.name == name)


def peer_specs(port: int, upstream: str) -> list[Spec]:
    """The installed peers (bench/contenders.py)."""
    from bench import contenders

    return [
        Spec(c.name, c.argv, c.env, port, c.health_path, c.chat_path, c.model, c.headers, c.version)
        for c in contenders.peers(port, upstream)
    ]


class Upstream:
    """The fake upstream (bench/upstream.py) on Granian: `tokens` chunks, `token_ms` apart."""

    def __init__(self, tokens: int, token_ms: float) -> None:
        self.port = free_port()
        env = {"BENCH_TOKENS": str(tokens), "BENCH_TOKEN_MS": str(token_ms)}
        self.proc = Proc(granian("bench.upstream:app", self.port), env, cwd=str(ROOT))
        self.url = f"http://127.0.0.1:{self.port}"
        wait_healthy(f"{self.url}/health", self.proc)


def start(spec: Spec, cwd: Path = ROOT) -> tuple[Proc, float]:
    """The contender's process, and the seconds it took to answer its health check."""
    proc = Proc(spec.argv, spec.env, cwd=str(cwd))
    try:
        return proc, wait_healthy(spec.base + spec.health_path, proc, limit_s=120)
    except BaseException:
        proc.stop()
        raise
