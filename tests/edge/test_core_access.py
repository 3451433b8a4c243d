"""A core's routes answer signed requests only, and the routes the API table marks `admin`
(the knowledge-base writes) only when the edge vouched for an admin caller."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from noroshi.edge.signing import Signer
from noroshi.wire.endpoints import ENDPOINTS
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI

SECRET = "internal-secret-for-tests-0123456789"
EMBED = """
[[models]]
name = "embed"
deployments = [{ provider = "up", model = "fake-embedding" }]

[defaults]
embedding_model = "embed"
"""
BODIES: dict[str, dict[str, Any]] = {
    "/api/v1/kb": {"name": "handbook"},
    "/api/v1/kb/{name}/documents": {"source": "a.md", "text": "# A\n\nSome text."},
}
ADMIN_KB = [e for e in ENDPOINTS if e.tag == "knowledge" and e.access == "admin"]

pytestmark = pytest.mark.parametrize("serve", ["noroshi"], indirect=True)


@pytest.fixture
async def core(serve: Serve, tmp_path: Path, upstream: FakeOpenAI) -> str:
    env = {"NOROSHI_SERVER__ROLE": "core", "NOROSHI_INTERNAL__SECRET": SECRET}
    return await serve(write_config(tmp_path, openai_config(upstream.base_url, EMBED), env))


async def signed(
    base: str, method: str, path: str, body: dict[str, Any] | None, caller: dict[str, Any] | None
) -> tuple[int, Any]:
    """A request to the core signed as the edge signs it, naming `caller` (None: no caller)."""
    raw = json.dumps(body).encode() if body is not None else b""
    headers = {"content-type": "application/json", **Signer(SECRET).sign(method, path, raw, caller)}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, base + path, data=raw, headers=headers) as r,
    ):
        return r.status, await r.json()


@pytest.mark.parametrize("endpoint", ADMIN_KB, ids=lambda e: f"{e.method} {e.path}")
@pytest.mark.parametrize("caller", [{"key_id": "key_1", "admin": False}, None])
async def test_knowledge_writes_need_an_admin_caller(
    core: str, endpoint: Any, caller: dict[str, Any] | None
) -> None:
    path = endpoint.path.replace("{name}", "handbook").replace("{id}", "doc_1")
    status, body = await signed(core, endpoint.method, path, BODIES.get(endpoint.path), caller)
    assert status == 403, body
    assert body["error"]["type"] == "permission_error"


async def test_an_admin_caller_writes_and_a_key_reads(core: str) -> None:
    admin = {"key_id": None, "admin": True}
    status, body = await signed(core, "POST", "/api/v1/kb", BODIES["/api/v1/kb"], admin)
    assert status == 201, body
    status, body = await signed(core, "GET", "/api/v1/kb/handbook", None, {"key_id": "key_1"})
    assert status == 200 and body["name"] == "handbook"
