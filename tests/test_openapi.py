"""`/openapi.json` and `/docs`: the description is generated from the endpoint table's types,
and schemathesis, run against a live server, finds no 5xx and no answer outside it."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from noroshi import __version__
from noroshi.client._base import InvalidRequestError, make_call
from noroshi.openapi import openapi
from noroshi.wire import endpoints as api
from noroshi.wire import times
from noroshi.wire.endpoints import ENDPOINTS, Endpoint
from noroshi.wire.simple import PromptBody
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI

MASTER = "master-key-for-the-fuzzer"
CONFIG_EXTRA = f"""
[auth]
master_key = "{MASTER}"
lockout_failures = 1000000   # the fuzzer sends bad keys on purpose

[[models]]
name = "embed"
deployments = [{{ provider = "up", model = "e1" }}]

[defaults]
embedding_model = "embed"
"""


@pytest.fixture
async def base(serve: Serve, tmp_path: Path, upstream: FakeOpenAI) -> str:
    return await serve(write_config(tmp_path, openai_config(upstream.base_url, CONFIG_EXTRA)))


async def get(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, r.headers["content-type"], await r.read()


async def test_served_description_is_the_generated_one(base: str) -> None:
    status, ctype, body = await get(f"{base}/openapi.json")
    assert status == 200 and ctype.startswith("application/json")
    spec = msgspec.json.decode(body)
    assert spec["openapi"] == "3.1.0" and spec["info"]["version"] == __version__
    assert spec == msgspec.json.decode(msgspec.json.encode(openapi(ENDPOINTS, __version__)))
    served = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert served == {(e.method, e.path) for e in ENDPOINTS}
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatRequest"
    }
    stream = chat["responses"]["200"]["content"]["text/event-stream"]["schema"]
    data = stream["properties"]["data"]["anyOf"][1]["contentSchema"]["anyOf"][0]
    assert data == {"$ref": "#/components/schemas/ChatCompletionChunk"}
    assert spec["paths"]["/health"]["get"]["security"] == []
    assert spec["paths"]["/admin/keys"]["post"]["responses"]["201"]


async def test_docs_page_loads_nothing_from_elsewhere(base: str) -> None:
    status, ctype, page = await get(f"{base}/docs")
    assert status == 200 and ctype.startswith("text/html")
    text = page.decode()
    assert 'fetch("openapi.json")' in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert "@import" not in text and "url(" not in text


@pytest.mark.parametrize("path", ["/", "/docs", "/openapi.json"])
async def test_what_a_browser_renders_carries_the_security_headers(base: str, path: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{base}{path}") as r:
        assert r.status == 200
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        policy = [d.strip() for d in r.headers["content-security-policy"].split(";")]
    assert {"default-src 'none'", "frame-ancestors 'none'", "base-uri 'none'"} <= set(policy)
    assert not [d for d in policy if "unsafe" in d or "*" in d]


def schema_components(kinds: list[Any]) -> tuple[Any, dict[str, Any]]:
    return msgspec.json.schema_components(kinds, schema_hook=times.schema_hook)


def test_each_endpoint_is_described_by_its_own_types() -> None:
    """Body, answer and query schemas are msgspec's schemas of the table's types."""
    spec = openapi(ENDPOINTS, "test")
    components = spec["components"]["schemas"]
    for e in ENDPOINTS:
        op = spec["paths"][e.path][e.method.lower()]
        if e.body is not None:
            (ref,), defs = schema_components([e.body])
            name = ref["$ref"].rsplit("/", 1)[1]
            assert components[name] == _relinked(defs[name]), e
        if e.answer is not None:
            schema = op["responses"][str(e.status)]["content"]["application/json"]["schema"]
            assert schema == _relinked(schema_components([e.answer])[0][0]), e
        if e.query is not None:
            fields = {f.encode_name for f in msgspec.structs.fields(e.query)}
            assert {p["name"] for p in op["parameters"] if p["in"] == "query"} == fields, e


def test_a_changed_request_type_shows_in_spec_and_client() -> None:
    """A field added to a body type reaches the description and the client's check with no
    other edit: both read the type from the endpoint."""

    class PromptWithTone(PromptBody, kw_only=True):
        tone: str = "plain"

    endpoint = Endpoint(
        api.CHAT.method,
        api.CHAT.path,
        "chat",
        "x",
        tag="simple",
        access="model",
        body=PromptWithTone,
    )
    spec = openapi([endpoint], "test")
    fields = spec["components"]["schemas"]["PromptWithTone"]["properties"]
    assert fields["tone"] == {"type": "string", "default": "plain"}
    assert make_call(endpoint, body={"prompt": "hi", "tone": "warm"}).content is not None
    with pytest.raises(InvalidRequestError) as refused:
        make_call(endpoint, body={"prompt": "hi", "tone": 3})
    assert refused.value.param == "tone"
    with pytest.raises(InvalidRequestError):
        make_call(api.CHAT, body={"prompt": ""})  # the real type's own constraint


@pytest.mark.timeout(400)
@pytest.mark.parametrize("serve", ["noroshi"], indirect=True)
async def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_spec(
    base: str, tmp_path: Path
) -> None:
    """Every check but `positive_data_acceptance`: some valid-looking bodies are refused by
    rules a schema cannot state (`prompt` or `messages`, not both; a model that exists), and
    those 400s are the documented error answer."""
    schemathesis = Path(sys.executable).with_name("schemathesis")
    proc = await asyncio.create_subprocess_exec(
        str(schemathesis),
        "run",
        f"{base}/openapi.json",
        "--header",
        f"Authorization: Bearer {MASTER}",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        "15",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--seed",
        "1",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report
    assert re.search(r"(\d+) selected / \1 total", report), report


def _relinked(schema: Any) -> Any:
    """msgspec's default `$defs` references, as components references."""
    text = msgspec.json.encode(schema).decode().replace("#/$defs/", "#/components/schemas/")
    return msgspec.json.decode(text)


def test_an_api_with_its_own_error_envelope_documents_it() -> None:
    spec = openapi(ENDPOINTS, "test")
    messages = spec["paths"]["/v1/messages"]["post"]["responses"]["default"]
    assert messages["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorEnvelope"
    }
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["default"]
    assert chat["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
