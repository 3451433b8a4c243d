"""The `noroshi` command and the ASGI entry point, run as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from noroshi.process import YOUNG_GENERATION
from tests.conftest import free_port, openai_config
from tests.fakes.upstream import FakeOpenAI


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOROSHI_")}
    return {**env, **extra}


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "noroshi",
        *args,
        env=env or clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_doctor_reaches_each_provider(tmp_path: Path, upstream: FakeOpenAI) -> None:
    config = openai_config(upstream.base_url) + (
        '\n[providers.gone]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
    )
    path = tmp_path / "c.toml"
    path.write_text(config)
    code, out = await run("doctor", "--config", str(path))
    assert code == 1
    assert f"provider up (openai, {upstream.base_url}): reachable, 2 models listed" in out
    assert "provider gone (openai, http://127.0.0.1:9/v1): NOT OK: Could not connect" in out
    assert "providers.gone.api_key is empty" in out
    assert "Traceback" not in out


async def test_doctor_names_a_missing_secret(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[providers.up]\ntype = "openai"\napi_key = "${UP_KEY}"\n')
    code, out = await run("doctor", "--config", str(path))
    assert code == 2
    assert "providers.up.api_key: environment variable UP_KEY is not set" in out


async def test_doctor_all_ok(tmp_path: Path, upstream: FakeOpenAI) -> None:
    path = tmp_path / "c.toml"
    path.write_text(openai_config(upstream.base_url))
    code, out = await run("doctor", "--config", str(path))
    assert code == 0, out
    assert "config: ok (1 providers, 1 models)" in out


async def wait_health(base: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            try:
                async with s.get(f"{base}/health") as r:
                    body: dict[str, object] = await r.json()
                    return body
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    raise AssertionError("the server did not start")


async def ask(base: str) -> str:
    payload = {"model": "fast", "messages": [{"role": "user", "content": "echo: pong"}]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/v1/chat/completions", json=payload) as r,
    ):
        body = await r.json()
        return str(body["choices"][0]["message"]["content"])


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "noroshi", "serve", "--workers", "2", "--port", "{port}"],
        ["-m", "uvicorn", "noroshi.asgi:app", "--port", "{port}", "--log-level", "warning"],
    ],
    ids=["serve-2-workers", "uvicorn"],
)
async def test_entry_points_serve_the_config(
    tmp_path: Path, upstream: FakeOpenAI, command: list[str]
) -> None:
    path = tmp_path / "noroshi.toml"
    path.write_text("[server]\ndrain_timeout_s = 0\n" + openai_config(upstream.base_url))
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *(arg.format(port=port) for arg in command),
        env=clean_env(NOROSHI_CONFIG=str(path), NOROSHI_SERVER__DATA_DIR=str(tmp_path / "data")),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert (await wait_health(base))["status"] == "ok"
        assert await ask(base) == "pong"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def test_serve_refuses_an_open_gateway_beyond_loopback(tmp_path: Path) -> None:
    env = clean_env(NOROSHI_SERVER__DATA_DIR=str(tmp_path))
    code, out = await run("serve", "--host", "0.0.0.0", "--port", str(free_port()), env=env)
    assert code == 2
    assert "auth.master_key" in out and "0.0.0.0" in out


async def test_keys_create_list_revoke(tmp_path: Path, upstream: FakeOpenAI) -> None:
    path = tmp_path / "c.toml"
    path.write_text(openai_config(upstream.base_url) + '\n[auth]\nmaster_key = "sk-m"\n')
    env = clean_env(NOROSHI_SERVER__DATA_DIR=str(tmp_path / "data"))
    code, out = await run(
        "keys",
        "create",
        "ci bot",
        "--config",
        str(path),
        "--rpm",
        "7",
        "--model",
        "fast",
        "--budget",
        '{"tokens_per_day": 1000}',
        "--expires-at",
        "2099-01-01T09:00:00+09:00",
        env=env,
    )
    assert code == 0, out
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("nrs-")
    key_id = out.split()[1]

    code, out = await run("keys", "list", "--config", str(path), env=env)
    assert code == 0 and key_id in out and "ci bot" in out and "rpm=7" in out
    assert "models=fast" in out and "budget=tokens_per_day:1000" in out
    assert "expires=2099-01-01T00:00:00.000Z" in out  # as the JSON writes times
    assert secret not in out

    # the key works on a server over the same store, and stops working once revoked
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "noroshi",
        "serve",
        "--config",
        str(path),
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        payload = {"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}
        headers = {"authorization": f"Bearer {secret}"}
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.post(url, json=payload, headers=headers) as r:
                        assert r.status == 200
                        assert r.headers["x-ratelimit-limit-requests"] == "7"
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            code, out = await run("keys", "revoke", key_id, "--config", str(path), env=env)
            assert code == 0 and f"revoked {key_id}" in out
            await asyncio.sleep(1.1)  # the server trusts its cached key for one second at most
            async with s.post(url, json=payload, headers=headers) as r:
                assert r.status == 401
    finally:
        server.terminate()
        await server.wait()
    code, out = await run("keys", "revoke", "key_nope", "--config", str(path), env=env)
    assert code == 1 and "no key" in out
    code, out = await run("keys", "create", "x", "--config", str(path), "--budget", "{", env=env)
    assert code == 2 and "--budget" in out


async def test_loading_the_asgi_app_raises_the_young_collection_threshold(tmp_path: Path) -> None:
    """The server's process, not the importer of `noroshi.app`, gets the tuning."""
    code = (
        "import gc, json; seen = [gc.get_threshold()]; import noroshi.app; "
        "seen.append(gc.get_threshold()); import noroshi.asgi; seen.append(gc.get_threshold()); "
        "print(json.dumps(seen))"
    )
    before, after_app, after_module = json.loads(await _python(code, tmp_path))
    assert before[0] == 700  # CPython's own
    assert after_app == before
    assert after_module == [YOUNG_GENERATION, *before[1:]]


async def test_serving_raises_the_young_collection_threshold(tmp_path: Path) -> None:
    """`noroshi serve`'s process tunes its collector once it serves, not when it is imported."""
    code = (
        "import gc, json, os, signal; from noroshi.config import load_config; "
        "from noroshi.serve import listen, run; seen = [gc.get_threshold()]; "
        "ready = lambda: (seen.append(gc.get_threshold()), os.kill(os.getpid(), signal.SIGTERM)); "
        "code = run(load_config(None), listen('127.0.0.1', 0), ready); "
        "print(json.dumps([code, *seen]))"
    )
    code, before, serving = json.loads(await _python(code, tmp_path))
    assert code == 0
    assert before[0] == 700
    assert serving == [YOUNG_GENERATION, *before[1:]]


@pytest.mark.parametrize("module", ["noroshi.serve", "noroshi.asgi"])
async def test_the_served_app_starts_without_aiohttp(tmp_path: Path, module: str) -> None:
    """aiohttp was a fifth of the start: only HTTP tools and the edge's WebSocket bridge need
    it, and they import it when first made. The WebSocket protocol, too, waits for its first
    upgrade."""
    code = (
        f"import sys, {module}; from noroshi.agent import Tool; "
        "print('aiohttp' in sys.modules, 'websockets' in sys.modules)"
    )
    assert (await _python(code, tmp_path)).strip() == b"False False"


async def _python(code: str, data_dir: Path) -> bytes:
    """What `code` prints in a fresh interpreter, as a server's worker would start."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env=clean_env(NOROSHI_SERVER__DATA_DIR=str(data_dir)),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return out
