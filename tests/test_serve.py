"""`noroshi serve` as real processes: a busy port, a failed start, workers that die, a parent
that dies, and the drain across several workers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port, openai_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.processes import kill_tree, start_server, stop
from tests.test_shutdown import stream_across_sigterm

TWO = {"NOROSHI_SERVER__WORKERS": "2"}


async def serve(tmp_path: Path, config: str, *args: str, **env: str) -> tuple[int, str]:
    """`noroshi serve` to its end: exit status and everything it printed."""
    path = tmp_path / "noroshi.toml"
    path.write_text(config)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NOROSHI_")}
    environ |= {"NOROSHI_SERVER__DATA_DIR": str(tmp_path / "data"), **env}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "noroshi",
        "serve",
        "--config",
        str(path),
        *args,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever adopted it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def server_log(tmp_path: Path) -> str:
    return next(tmp_path.glob("noroshi-*.log")).read_text()


async def every_worker_ready(tmp_path: Path) -> None:
    """The banner is printed once every worker serves: a worker killed before that is a
    start that failed, which stops the server."""
    while " on http://" not in server_log(tmp_path):  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def health(base: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/health") as r:
        return r.status


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_busy_port_is_one_line_and_status_2(tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = await serve(tmp_path, "", "--port", str(port), "--workers", workers)
    assert code == 2
    assert out == f"noroshi: cannot listen on 127.0.0.1:{port}: address already in use\n"


@pytest.mark.parametrize("workers", ["1", "3"])
async def test_a_failed_start_up_is_one_line_and_status_2(tmp_path: Path, workers: str) -> None:
    # the database URL is checked when the app starts: in the server, or in every worker
    config = '[storage]\nurl = "mysql://db/noroshi"\n'
    code, out = await serve(tmp_path, config, "--port", str(free_port()), "--workers", workers)
    assert code == 2
    [line] = out.splitlines()
    assert line.startswith("noroshi: start-up failed: storage.url must be empty")


async def test_workers_serve_and_drain_together(tmp_path: Path, upstream: FakeOpenAI) -> None:
    upstream.default = Reply(text="a b c d e f g h", token_delay=0.15)
    proc, base = await start_server(tmp_path, openai_config(upstream.base_url), env=TWO)
    try:
        assert len(children(proc.pid)) == 2
        body, refused = await stream_across_sigterm(base, proc)
    finally:
        code = await stop(proc)
    assert refused and body.endswith(b"data: [DONE]\n\n")
    assert code == 0


async def test_a_dead_worker_is_reported_and_replaced(tmp_path: Path, upstream: FakeOpenAI) -> None:
    proc, base = await start_server(tmp_path, openai_config(upstream.base_url), env=TWO)
    try:
        await every_worker_ready(tmp_path)
        first, second = children(proc.pid)
        os.kill(first, signal.SIGKILL)
        while len(set(children(proc.pid)) - {first, second}) < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for _ in range(4):  # whichever worker takes it
            assert await health(base) == 200
    finally:
        proc.terminate()
        assert await stop(proc) == 0
    assert f"(pid {first}) was killed by SIGKILL; restarting it" in server_log(tmp_path)


async def test_killing_the_parent_frees_the_port(tmp_path: Path, upstream: FakeOpenAI) -> None:
    config = openai_config(upstream.base_url)
    proc, base = await start_server(tmp_path, config, env=TWO)
    workers = children(proc.pid)
    assert len(workers) == 2
    try:
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        while any(alive(pid) for pid in workers):  # noqa: ASYNC110 - they drain, then exit
            await asyncio.sleep(0.05)
    finally:
        for pid in workers:
            kill_tree(pid)
    port = int(base.rsplit(":", 1)[1])
    with pytest.raises(aiohttp.ClientConnectionError):
        await health(base)
    again, base = await start_server(tmp_path, config, port=port, name="again")
    try:
        assert await health(base) == 200
    finally:
        again.terminate()
        assert await stop(again) == 0
