"""Real `noroshi serve` processes for tests of signals and of several replicas."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.conftest import free_port


async def start_server(
    tmp_path: Path,
    config: str,
    env: dict[str, str] | None = None,
    name: str = "noroshi",
    port: int | None = None,
) -> tuple[Process, str]:
    """`noroshi serve` in a process of its own, its data in the test's folder; once healthy."""
    path = tmp_path / f"{name}.toml"
    path.write_text(config)
    port = port or free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NOROSHI_")},
        "NOROSHI_SERVER__DATA_DIR": str(tmp_path / "data"),
        **(env or {}),
    }
    log = tmp_path / f"{name}-{port}.log"
    with log.open("ab") as out:  # kept for the failure message
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "noroshi", "serve", "--config", str(path), "--port", str(port)),
            env=env,
            stdout=out,
            stderr=out,
        )
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            if proc.returncode is not None:
                break
            try:
                async with s.get(f"{base}/health") as r:
                    if r.status == 200:
                        return proc, base
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    if proc.returncode is None:
        kill_tree(proc.pid)
    raise RuntimeError(f"noroshi serve did not start: {log.read_text()[-2000:]}")


async def stop(proc: Process) -> int:
    try:
        return await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        proc.kill()
        raise AssertionError("the server did not exit after SIGTERM") from None


def kill_tree(pid: int) -> None:
    """SIGKILL a server and its workers at once, the way a crashed machine would stop it."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(c) for c in children.read_text().split()] if children.exists() else []
    for kid in kids:
        kill_tree(kid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def serve_replicas(tmp_path: Path, config: str, count: int) -> AsyncIterator[list[str]]:
    """`count` servers on one config, started together; SIGTERM to each afterwards."""
    started = await asyncio.gather(
        *(start_server(tmp_path, config, name=f"replica{i}") for i in range(count))
    )
    try:
        yield [base for _, base in started]
    finally:
        for proc, _ in started:
            proc.terminate()
        for proc, _ in started:
            await stop(proc)
