"""Every start-up failure ends `noroshi serve` with one line naming the config key and
status 2, never a traceback, never a port that accepts connections and answers nothing: a
database that cannot be reached (tried again for `storage.connect_timeout_s`, each try
logged), a tool that cannot be imported, an MCP server that cannot be started, with one
worker or several. `noroshi doctor` finds the same."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, openai_config
from tests.services import TCPProxy

pytestmark = pytest.mark.timeout(60)


async def start_and_fail(
    tmp_path: Path, url: str = "", extra: str = "", command: tuple[str, ...] = ("serve",)
) -> tuple[int, list[str], float]:
    config = tmp_path / "noroshi.toml"
    if url:
        extra += f'[storage]\nurl = "{url}"\ntimeout_s = 0.5\nconnect_timeout_s = 2.0\n'
    config.write_text(openai_config("http://127.0.0.1:9/v1", extra=extra))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOROSHI_")}
    env["NOROSHI_SERVER__DATA_DIR"] = str(tmp_path / "data")
    began = time.monotonic()
    port = ("--port", str(free_port())) if command[0] == "serve" else ()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "noroshi", *command, "--config", str(config)),
        *port,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        raise AssertionError("the server neither started nor gave up") from None
    lines = [line for line in (err + out).decode().splitlines() if line.strip()]
    assert proc.returncode is not None
    return proc.returncode, lines, time.monotonic() - began


@pytest.mark.parametrize("fault", ["refused", "hung"])
async def test_an_unreachable_database_ends_the_start_with_one_line(
    fault: str, tmp_path: Path, postgres_proxy: tuple[TCPProxy, str]
) -> None:
    proxy, url = postgres_proxy
    if fault == "refused":
        await proxy.cut()
    else:
        proxy.hang()
    status, lines, seconds = await start_and_fail(tmp_path, url)
    assert status == 2, lines
    assert "storage.url" in lines[-1] and f"127.0.0.1:{proxy.port}" in lines[-1], lines
    assert not any("Traceback" in line for line in lines), lines
    assert seconds < 2.0 + 10  # connect_timeout_s, and the interpreter's start


BAD_TOOL = """
[[agents]]
name = "calc"
tools = ["no_such_module:add"]
"""
MISSING_MCP = """
[[mcp_servers]]
name = "files"
command = ["/no/such/mcp-server"]
"""


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    ("extra", "key", "why"),
    [
        (BAD_TOOL, "agents.0.tools.0", "no_such_module"),
        (MISSING_MCP, "mcp_servers.0", "No such file"),
    ],
    ids=["tool", "mcp"],
)
async def test_a_bad_tool_or_mcp_server_ends_the_start_with_one_line(
    tmp_path: Path, extra: str, key: str, why: str, workers: int
) -> None:
    extra = f"[server]\nworkers = {workers}\n{extra}"
    status, lines, _ = await start_and_fail(tmp_path, extra=extra)
    assert status == 2, lines
    assert lines[-1].startswith(f"noroshi: start-up failed: {key}: "), lines
    assert why in lines[-1], lines
    assert not any("Traceback" in line for line in lines), lines


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (BAD_TOOL, "agents.0.tools.0: NOT OK: cannot load tool 'no_such_module:add'"),
        (MISSING_MCP, "mcp_servers.0 (files): NOT OK: MCP server 'files'"),
    ],
    ids=["tool", "mcp"],
)
async def test_doctor_finds_what_would_end_the_start(tmp_path: Path, extra: str, line: str) -> None:
    status, lines, _ = await start_and_fail(tmp_path, extra=extra, command=("doctor",))
    assert status == 1, lines
    assert any(found.startswith(line) for found in lines), lines
