"""A server whose database cannot be reached at start tries again for
`storage.connect_timeout_s` (each try logged), then exits with one line naming `storage.url`
and status 2: never a traceback, never a port that accepts connections and answers nothing."""

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


async def start_and_fail(tmp_path: Path, url: str) -> tuple[int, list[str], float]:
    config = tmp_path / "noroshi.toml"
    storage = f'[storage]\nurl = "{url}"\ntimeout_s = 0.5\nconnect_timeout_s = 2.0\n'
    config.write_text(openai_config("http://127.0.0.1:9/v1", extra=storage))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOROSHI_")}
    env["NOROSHI_SERVER__DATA_DIR"] = str(tmp_path / "data")
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "noroshi", "serve", "--config", str(config)),
        *("--port", str(free_port())),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        raise AssertionError("the server neither started nor gave up") from None
    lines = [line for line in err.decode().splitlines() if line.strip()]
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
