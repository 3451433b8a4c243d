"""Logs of a real `noroshi serve`: the format and level from `[logging]` or `--log-level`,
and one access line a request, with its fields, that `access = false` turns off."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from tests.conftest import openai_config
from tests.fakes.upstream import FakeOpenAI
from tests.processes import start_server, stop


async def served_lines(
    tmp_path: Path, upstream: FakeOpenAI, logging: str, env: dict[str, str] | None = None
) -> list[str]:
    """Start a server with `logging`, make one chat request, stop it: what it wrote."""
    config = openai_config(upstream.base_url, extra=logging)
    proc, base = await start_server(tmp_path, config, env=env)
    payload = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/v1/chat/completions", json=payload) as r,
    ):
        assert r.status == 200
        request_id = r.headers["x-request-id"]
    proc.terminate()
    await stop(proc)
    text = "".join(p.read_text() for p in tmp_path.glob("noroshi-*.log"))  # noqa: ASYNC240
    return [line for line in text.splitlines() if request_id in line]


async def test_json_access_line_has_every_field(tmp_path: Path, upstream: FakeOpenAI) -> None:
    (line,) = await served_lines(tmp_path, upstream, '[logging]\nformat = "json"\n')
    entry = json.loads(line)
    assert entry["logger"] == "noroshi.access" and entry["level"] == "info"
    assert (entry["method"], entry["path"], entry["status"]) == (
        "POST",
        "/v1/chat/completions",
        200,
    )
    assert entry["model"] == "fast"
    assert entry["prompt_tokens"] > 0 and entry["completion_tokens"] > 0
    assert entry["duration_ms"] >= 0 and entry["key_id"] is None


async def test_text_access_line(tmp_path: Path, upstream: FakeOpenAI) -> None:
    (line,) = await served_lines(tmp_path, upstream, "")
    assert " INFO noroshi.access: POST /v1/chat/completions 200 " in line
    assert "model=fast" in line and "tokens=" in line


async def test_access_log_off(tmp_path: Path, upstream: FakeOpenAI) -> None:
    assert await served_lines(tmp_path, upstream, "[logging]\naccess = false\n") == []


async def test_level_from_the_environment_hides_info(tmp_path: Path, upstream: FakeOpenAI) -> None:
    env = {"NOROSHI_LOGGING__LEVEL": "warning"}  # what `serve --log-level warning` sets
    assert await served_lines(tmp_path, upstream, "", env) == []
