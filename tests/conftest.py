"""Shared fixtures: the gateway served for real on loopback, by noroshi's own HTTP/1.1 server
and by uvicorn through the ASGI adapter."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from noroshi.app import App
from noroshi.config import Config, load_config
from noroshi.serve import listen, make_server
from tests.fakes.upstream import FakeOpenAI
from tests.services import postgres_proxy, postgres_url, redis_prefix, redis_server, redis_url

__all__ = [  # fixtures shared with every test
    "postgres_proxy",
    "postgres_url",
    "redis_prefix",
    "redis_server",
    "redis_url",
]

Serve = Callable[[Config], Awaitable[str]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    """The config in `text`, its data (the SQLite store) in the test's own folder."""
    path = tmp_path / "noroshi.toml"
    path.write_text(text)
    return load_config(
        path, {"NOROSHI_SERVER__DATA_DIR": str(tmp_path / "data"), **(environ or {})}
    )


def openai_config(base_url: str, extra: str = "", routing: str = "") -> str:
    """A config with provider `up` at `base_url` and model `fast` -> up/m1, plus `extra`."""
    return f"""
[providers.up]
type = "openai"
base_url = "{base_url}"
api_key = "test-key"
first_byte_timeout_s = 0.5
idle_timeout_s = 0.5
total_timeout_s = 10

[routing]
backoff_base_s = 0.01
backoff_max_s = 0.05
max_retry_after_s = 0.5
{routing}

[[models]]
name = "fast"
deployments = [{{ provider = "up", model = "m1" }}]
{extra}
"""


async def _serve_noroshi(app: App) -> tuple[str, Callable[[], Awaitable[None]]]:
    """noroshi's own server, in this process on the test's loop."""
    sockets = listen("127.0.0.1", 0)
    port = sockets[0].getsockname()[1]
    server = make_server(app)
    await server.start(sockets)

    async def stop() -> None:
        await server.stop(5.0)

    return f"http://127.0.0.1:{port}", stop


async def _serve_asgi(app: App) -> tuple[str, Callable[[], Awaitable[None]]]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, lifespan="on", log_level="warning", access_log=False
        )
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    await _wait_listening(port)

    async def stop() -> None:
        server.should_exit = True
        await asyncio.wait_for(task, 10)

    return f"http://127.0.0.1:{port}", stop


async def _wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"server on port {port} did not start")


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where tests.agent.durable_tools count their calls: the servers inherit the variable."""
    path = tmp_path / "calls"
    monkeypatch.setenv("DURABLE_CALLS", str(path))
    return path


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    """A fake OpenAI on loopback that checks the key `openai_config` gives the gateway; modules
    that need another kind of fake define their own."""
    async with FakeOpenAI(api_key="test-key") as fake:
        yield fake


@pytest.fixture(params=["noroshi", "asgi"])
async def serve(request: pytest.FixtureRequest) -> AsyncIterator[Serve]:
    """`await serve(config)` runs a gateway on loopback and gives its base URL."""
    adapter = _serve_noroshi if request.param == "noroshi" else _serve_asgi
    running: list[tuple[App, Callable[[], Awaitable[None]]]] = []

    async def start(config: Config, **kw: Any) -> str:
        app = App(config, **kw)
        url, stop = await adapter(app)
        running.append((app, stop))
        return url

    yield start
    for app, stop in running:
        await stop()
        await app.shutdown()
