"""The bench's peers: other ways to relay the same OpenAI-style stream, and how to start each.

Each peer is installed at a pinned version into bench/.peers/ (git-ignored) by
bench/peers/install.sh, one install (a "unit") serving one or more contenders; sources and pins
live in bench/peers/:

    unit      contender    what                                                 sources
    bun       hono-bun     Hono on Bun, relaying with fetch                     bun/hono.ts
              elysia-bun   Elysia on Bun, relaying with fetch                   bun/elysia.ts
    hono      hono-node    Hono on Node.js (@hono/node-server), with fetch      hono/app.mjs
    fastapi   fastapi      FastAPI on uvicorn, one httpx.AsyncClient            fastapi_app.py
    litellm   litellm      the LiteLLM proxy, no database, one model "m"        litellm.yaml
    portkey   portkey      Portkey's open-source gateway (@portkey-ai/gateway)  portkey/

with the pins in package.json and NAME-requirements.txt. The `bun` npm package ships Bun's
binary, so the Bun peers need npm to install and nothing else to run.

Every contender serves one worker process on 127.0.0.1:PORT (portkey binds every interface: it has
no host option) and relays to UPSTREAM's /v1/chat/completions. Only the standard library is used,
so the bench can import this from any interpreter.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CONTENDERS", "NAMES", "Contender", "install", "missing", "peers"]

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "bench" / "peers"
PEERS = Path(os.environ.get("BENCH_PEERS_DIR") or ROOT / "bench" / ".peers")
NAMES = ("bun", "hono", "fastapi", "litellm", "portkey")  # the install units
NODE = ("bun", "hono", "portkey")  # the units that npm installs
# LiteLLM's proxy will not start without a master key; with one and no database, every request
# is checked against it, as in a real deployment. A fixed key for the bench, on loopback only.
LITELLM_KEY = "sk-bench-" + hashlib.sha256(b"noroshi bench").hexdigest()[:32]
INSTALL = f"bash {SRC.relative_to(ROOT) / 'install.sh'}"


@dataclass(frozen=True)
class Contender:
    name: str  # "hono-bun", "elysia-bun", "hono-node", "fastapi", "litellm", "portkey"
    argv: list[str]  # command to start it, ready for subprocess (absolute paths)
    env: dict[str, str]  # extra environment, on top of the caller's
    health_path: str  # GET path answering 200 when ready
    chat_path: str  # POST path of the OpenAI chat endpoint
    model: str  # model name to send in requests
    headers: dict[str, str]  # extra request headers (litellm's key, portkey's routing)
    version: str  # the pinned versions, for the report


# --- pins and install state -------------------------------------------------------------------


def _npm_pins(name: str) -> dict[str, str]:
    """Exact versions from package.json: its dependencies and the overrides it forces."""
    data = json.loads((SRC / name / "package.json").read_text())
    return {**data["dependencies"], **data.get("overrides", {})}


def _pip_pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (SRC / f"{name}-requirements.txt").read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def _pin_files(name: str) -> list[Path]:
    if name in NODE:
        return [SRC / name / "package.json"]
    return [SRC / f"{name}-requirements.txt"]


def _home(name: str) -> Path:
    return PEERS / "node" / name if name in NODE else PEERS / f"{name}-venv"


def _stamp(name: str) -> str:
    """What install.sh writes to .bench-stamp: the sha256 of the pin files' content."""
    return hashlib.sha256(b"".join(p.read_bytes() for p in _pin_files(name))).hexdigest()


def _node() -> str | None:
    return shutil.which("node")


def _bun() -> Path:
    return _home("bun") / "node_modules" / ".bin" / "bun"


def _why_not(name: str) -> str | None:
    """None when NAME is installed at its pins and can start; else the reason it cannot."""
    home = _home(name)
    stamp = home / ".bench-stamp"
    failed = PEERS / f"{name}.why"
    if not stamp.is_file() or stamp.read_text().strip() != _stamp(name):
        if failed.is_file():
            return f"install failed: {failed.read_text().strip()}"
        if home.exists():
            return f"installed copy does not match its pins; run {INSTALL}"
        return f"not installed; run {INSTALL}"
    if name in NODE:
        if name == "bun":  # the package ships the runtime; node only installs it
            if not _bun().is_file():
                return f"the bun package has no binary; run {INSTALL}"
        elif _node() is None:
            return "node is not on PATH"
        for pkg, pin in _npm_pins(name).items():
            meta = home / "node_modules" / pkg / "package.json"
            got = json.loads(meta.read_text()).get("version") if meta.is_file() else None
            if got != pin:
                return f"{pkg} is {got or 'absent'}, pinned {pin}; run {INSTALL}"
        for src in [*(SRC / name).glob("*.mjs"), *(SRC / name).glob("*.ts")]:
            copy = home / src.name
            if not copy.is_file() or copy.read_bytes() != src.read_bytes():
                return f"{src.name} changed since install; run {INSTALL}"
    elif not (home / "bin" / "python").is_file():
        return f"{home.name} has no python; run {INSTALL}"
    return None


def _version(name: str) -> str:
    if name in ("hono-bun", "elysia-bun"):
        pins = _npm_pins("bun")
        framework = name.split("-")[0]
        return f"{framework} {pins[framework]}, bun {pins['bun']}"
    if name == "hono-node":
        pins = _npm_pins("hono")
        return f"hono {pins['hono']}, @hono/node-server {pins['@hono/node-server']}"
    if name == "portkey":
        pins = _npm_pins("portkey")
        gateway, server = pins["@portkey-ai/gateway"], pins["@hono/node-server"]
        return f"@portkey-ai/gateway {gateway}, @hono/node-server {server}"
    if name == "fastapi":
        pins = _pip_pins("fastapi")
        return f"fastapi {pins['fastapi']}, uvicorn {pins['uvicorn']}, httpx {pins['httpx']}"
    return f"litellm {_pip_pins('litellm')['litellm']}"


# --- how to start each ------------------------------------------------------------------------


def _on_bun(name: str, source: str) -> Callable[[int, str], Contender]:
    def make(port: int, upstream: str) -> Contender:
        # production, as deployed: Bun's development mode adds its error pages and checks
        env = {
            "UPSTREAM_URL": upstream,
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "NODE_ENV": "production",
        }
        return Contender(
            name=name,
            argv=[str(_bun()), "run", str(_home("bun") / source)],
            env=env,
            health_path="/health",
            chat_path="/v1/chat/completions",
            model="m",
            headers={},
            version=_version(name),
        )

    return make


def _hono_node(port: int, upstream: str) -> Contender:
    node = _node() or "node"
    return Contender(
        name="hono-node",
        argv=[node, str(_home("hono") / "app.mjs")],
        env={"UPSTREAM_URL": upstream, "PORT": str(port), "HOST": "127.0.0.1"},
        health_path="/health",
        chat_path="/v1/chat/completions",
        model="m",
        headers={},
        version=_version("hono-node"),
    )


def _fastapi(port: int, upstream: str) -> Contender:
    py = _home("fastapi") / "bin" / "python"
    argv = [
        str(py),
        "-m",
        "uvicorn",
        "--app-dir",
        str(SRC),
        "fastapi_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return Contender(
        name="fastapi",
        argv=argv,
        env={"UPSTREAM_URL": upstream},
        health_path="/health",
        chat_path="/v1/chat/completions",
        model="m",
        headers={},
        version=_version("fastapi"),
    )


def _litellm(port: int, upstream: str) -> Contender:
    exe = _home("litellm") / "bin" / "litellm"
    argv = [
        str(exe),
        "--config",
        str(SRC / "litellm.yaml"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = {
        "UPSTREAM_URL": f"{upstream.rstrip('/')}/v1",  # litellm.yaml reads os.environ/UPSTREAM_URL
        "LITELLM_MASTER_KEY": LITELLM_KEY,  # it refuses to start without one (since 1.10x)
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else it fetches the cost map from the web
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
        "NO_REDOC": "True",
    }
    return Contender(
        name="litellm",
        argv=argv,
        env=env,
        health_path="/health/liveliness",
        chat_path="/v1/chat/completions",
        model="m",
        headers={"authorization": f"Bearer {LITELLM_KEY}"},
        version=_version("litellm"),
    )


def _portkey(port: int, upstream: str) -> Contender:
    node = _node() or "node"
    server = _home("portkey") / "node_modules" / "@portkey-ai" / "gateway" / "build"
    return Contender(
        name="portkey",
        argv=[node, str(server / "start-server.js"), f"--port={port}", "--headless"],
        env={"NODE_ENV": "production"},
        health_path="/",  # "AI Gateway says hey!"; it has no /health
        chat_path="/v1/chat/completions",
        model="m",
        headers={
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": f"{upstream.rstrip('/')}/v1",
            "authorization": "Bearer x",
        },
        version=_version("portkey"),
    )


# contender -> (its install unit, how to start it); in the report's order
CONTENDERS: dict[str, tuple[str, Callable[[int, str], Contender]]] = {
    "hono-bun": ("bun", _on_bun("hono-bun", "hono.ts")),
    "elysia-bun": ("bun", _on_bun("elysia-bun", "elysia.ts")),
    "hono-node": ("hono", _hono_node),
    "fastapi": ("fastapi", _fastapi),
    "litellm": ("litellm", _litellm),
    "portkey": ("portkey", _portkey),
}


def peers(port: int, upstream: str) -> list[Contender]:
    """The installed peers, each set to serve on 127.0.0.1:PORT and relay to UPSTREAM.

    UPSTREAM is the fake upstream's root, like "http://127.0.0.1:9100" (no /v1).
    """
    upstream = upstream.rstrip("/")
    return [make(port, upstream) for unit, make in CONTENDERS.values() if _why_not(unit) is None]


def missing() -> dict[str, str]:
    """Contender name -> why it is not available, for every one that peers() leaves out."""
    out = {}
    for name, (unit, _) in CONTENDERS.items():
        why = _why_not(unit)
        if why is not None:
            out[name] = why
    return out


def install() -> None:
    """Install every peer at its pins (a no-op for those already there); see install.sh.

    Raises RuntimeError if a required unit (all but portkey) cannot be installed.
    """
    proc = subprocess.run(["bash", str(SRC / "install.sh")], cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{INSTALL} failed (exit {proc.returncode}); see its messages above")
