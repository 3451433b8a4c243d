"""The HTTP core under both adapters: routing, errors, body limit, request ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from noroshi import __version__
from tests.conftest import Serve, write_config

CONFIG = """
[server]
max_body_bytes = 2048

[providers.up]
type = "openai"
base_url = "http://127.0.0.1:9/v1"

[[models]]
name = "fast"
deployments = [{ provider = "up", model = "m1" }]
"""
CHAT = "/v1/chat/completions"


@pytest.fixture
async def base(serve: Serve, tmp_path: Path) -> str:
    return await serve(write_config(tmp_path, CONFIG))


async def request(method: str, url: str, **kw: object) -> tuple[int, Any, dict]:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as r:  # type: ignore[arg-type]
        return r.status, r.headers.copy(), await r.json(content_type=None)


def assert_envelope(body: dict, code: str | None = None, param: str | None = None) -> None:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    assert error["param"] == param


async def test_health(base: str) -> None:
    status, headers, body = await request("GET", f"{base}/health")
    assert status == 200
    assert body["status"] == "ok"
    assert body["version"] == __version__
    assert body["uptime_s"] >= 0
    assert len(headers["x-request-id"]) >= 16


async def test_request_id_is_echoed(base: str) -> None:
    _, headers, _ = await request("GET", f"{base}/health", headers={"x-request-id": "abc-123"})
    assert headers["x-request-id"] == "abc-123"


async def test_unknown_route_is_404(base: str) -> None:
    status, _, body = await request("GET", f"{base}/nope")
    assert status == 404
    assert_envelope(body, "not_found")


async def test_wrong_method_is_405_with_allow(base: str) -> None:
    status, headers, body = await request("GET", f"{base}{CHAT}")
    assert status == 405
    assert headers["allow"] == "POST"
    assert_envelope(body, "method_not_allowed")


async def test_malformed_json_is_400(base: str) -> None:
    status, _, body = await request(
        "POST", f"{base}{CHAT}", data=b"{not json", headers={"content-type": "application/json"}
    )
    assert status == 400
    assert_envelope(body, "invalid_json")


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "fast", "messages": []}, "messages"),
        ({"model": "fast", "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"model": "fast", "messages": [{"role": "user"}]}, "messages.0.content"),
        (
            {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "temperature": 9},
            "temperature",
        ),
        (
            {"model": "fast", "messages": [{"role": "tool", "content": "x"}]},
            "messages.0.tool_call_id",
        ),
    ],
)
async def test_validation_names_the_field(base: str, payload: dict, param: str) -> None:
    status, _, body = await request("POST", f"{base}{CHAT}", json=payload)
    assert status == 400
    assert_envelope(body, "invalid_value", param)
    assert param in body["error"]["message"]


async def test_unknown_model_is_404(base: str) -> None:
    status, _, body = await request(
        "POST",
        f"{base}{CHAT}",
        json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
    )
    assert status == 404
    assert_envelope(body, "model_not_found", "model")


async def test_body_over_limit_is_413(base: str) -> None:
    big = {"model": "fast", "messages": [{"role": "user", "content": "x" * 4096}]}
    status, _, body = await request("POST", f"{base}{CHAT}", json=big)
    assert status == 413
    assert_envelope(body, "payload_too_large")


async def test_chunked_body_over_limit_is_413(base: str) -> None:
    async def gen():  # no content-length: the limit must hold while reading
        for _ in range(8):
            yield b"x" * 1024

    status, _, body = await request(
        "POST", f"{base}{CHAT}", data=gen(), headers={"content-type": "application/json"}
    )
    assert status == 413
    assert_envelope(body, "payload_too_large")


async def test_wrong_content_type_is_415(base: str) -> None:
    status, _, body = await request(
        "POST",
        f"{base}{CHAT}",
        data=b"model=x",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert status == 415
    assert_envelope(body, "unsupported_media_type")


async def test_models_list(base: str) -> None:
    status, _, body = await request("GET", f"{base}/v1/models")
    assert status == 200
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["fast"]
    assert body["data"][0]["object"] == "model"
    status, _, one = await request("GET", f"{base}/v1/models/fast")
    assert status == 200 and one["id"] == "fast"
    status, _, missing = await request("GET", f"{base}/v1/models/other")
    assert status == 404
    assert_envelope(missing, "model_not_found", "model")


async def test_unreachable_upstream_is_502(base: str) -> None:
    status, _, body = await request(
        "POST",
        f"{base}{CHAT}",
        json={"model": "fast", "messages": [{"role": "user", "content": "x"}]},
    )
    assert status == 502
    assert_envelope(body, "upstream_unreachable")
