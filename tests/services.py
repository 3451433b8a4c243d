"""The machine's PostgreSQL and Redis for tests: each test gets its own schema or key prefix.
For faults, a redis-server of the test's own (to kill, restart and pause) and a TCP proxy to
put in front of any service (to cut or hang its connections).

Without the service a test skips with the reason; under `CI=true` a missing service fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

POSTGRES_URL = os.environ.get(
    "NOROSHI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("NOROSHI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def missing(service: str, error: BaseException) -> None:
    reason = f"{service} is not reachable: {error!r}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true needs it)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A URL whose connections use a fresh schema, dropped after the test."""
    schema = f"t_{secrets.token_hex(6)}"
    try:
        conn = await asyncio.wait_for(asyncpg.connect(POSTGRES_URL), 5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        missing("PostgreSQL", exc)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}search_path={schema}"
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def redis_url() -> str:
    client = aioredis.from_url(REDIS_URL)
    try:
        await asyncio.wait_for(client.ping(), 5)
    except (OSError, aioredis.RedisError, TimeoutError) as exc:
        missing("Redis", exc)
    finally:
        await client.aclose()
    return REDIS_URL


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"noroshi-test:{secrets.token_hex(4)}:"
    yield prefix
    client = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def shared_state(
    postgres_url: str, redis_url: str, redis_prefix: str, redis: str = "", storage: str = ""
) -> str:
    """The config that makes servers replicas of one another: one database, one Redis (and
    `redis` and `storage`, more lines of their tables)."""
    return (
        f'[storage]\nurl = "{postgres_url}"\n{storage}'
        f'[redis]\nurl = "{redis_url}"\nprefix = "{redis_prefix}"\n{redis}'
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A redis-server that keeps nothing on disk, to stop, restart, pause and resume."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = aioredis.from_url(self.url)
        try:
            for _ in range(200):
                try:
                    await client.ping()
                    return
                except (aioredis.ConnectionError, OSError):
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    async def stop(self) -> None:
        """Killed: what it held is gone, and a start brings it back empty."""
        if self.proc is not None and self.proc.returncode is None:
            self.resume()
            self.proc.kill()
            await self.proc.wait()

    def pause(self) -> None:
        """Still accepting connections, answering nothing: calls time out."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        missing("redis-server", FileNotFoundError("redis-server is not installed"))
    server = RedisServer(free_port(), tmp_path)
    await server.start()
    yield server
    await server.stop()


class TCPProxy:
    """A TCP proxy on loopback in front of a service, to make its faults on cue: `cut()` drops
    every connection and refuses new ones (the service is down), `hang()` keeps connections
    open and accepts new ones but passes nothing either way (the service hangs), `heal()`
    passes everything again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.mode = "pass"
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, template: str) -> str:
        """`template` with `{port}` made this proxy's port."""
        return template.format(port=self.port)

    async def cut(self) -> None:
        self.mode = "cut"
        self._flowing.set()
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.sleep(0)

    def hang(self) -> None:
        self.mode = "hang"
        self._flowing.clear()

    async def heal(self) -> None:
        self.mode = "pass"
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._pipes):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()  # a hang holds what arrives
                if self.mode == "cut":
                    break
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(sink)
            sink.transport.abort()


@pytest.fixture
async def postgres_proxy(postgres_url: str) -> AsyncIterator[tuple[TCPProxy, str]]:
    """A proxy in front of the machine's PostgreSQL, and this test's schema's URL through it."""
    from urllib.parse import urlsplit

    parts = urlsplit(postgres_url)
    proxy = TCPProxy(parts.port or 5432)
    await proxy.start()
    url = postgres_url.replace(
        parts.netloc, f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}", 1
    )
    yield proxy, url
    await proxy.close()
