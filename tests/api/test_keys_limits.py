"""Keys, limits, budgets, usage, CORS and metrics end to end: a real server on loopback, the
official openai SDK and aiohttp as clients, a fake OpenAI upstream behind."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from noroshi.config import ConfigError
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply

MASTER = "sk-master-test"
HI = [{"role": "user", "content": "Hi"}]
PRICES = """
[prices.fast]
input = 1000.0
output = 2000.0
"""


@pytest.fixture
async def base(serve: Serve, tmp_path: Path, upstream: FakeOpenAI) -> str:
    text = openai_config(upstream.base_url, extra=PRICES)
    return await serve(write_config(tmp_path, text, {"NOROSHI_MASTER_KEY": MASTER}))


async def call(
    base: str, method: str, path: str, key: str | None = MASTER, **kw: Any
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    headers.update(kw.pop("headers", {}))
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"{base}{path}", headers=headers, **kw) as r,
    ):
        body = (
            await r.json(content_type=None)
            if r.content_type != "text/event-stream"
            else await r.read()
        )
        return r.status, body, r.headers


async def new_key(base: str, **spec: Any) -> str:
    status, body, _ = await call(base, "POST", "/admin/keys", json={"name": "test", **spec})
    assert status == 201, body
    assert body["key"].startswith("nrs-")
    return str(body["key"])


def sdk(base: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)


async def chat(base: str, key: str, **kw: Any) -> tuple[int, Any, Any]:
    payload = {"model": "fast", "messages": HI, **kw}
    return await call(base, "POST", "/v1/chat/completions", key, json=payload)


async def test_auth_off_on_loopback_without_master_key(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url)))
    status, health, _ = await call(base, "GET", "/health", None)
    assert status == 200 and health["auth"].startswith("off")
    assert (await chat(base, ""))[0] == 200


def test_refuses_to_bind_beyond_loopback_without_master_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^auth\.master_key: .*0\.0\.0\.0"):
        write_config(tmp_path, '[server]\nhost = "0.0.0.0"\n')
    config = write_config(tmp_path, '[server]\nhost = "0.0.0.0"\n', {"NOROSHI_MASTER_KEY": "m"})
    assert config.auth.master_key == "m"


async def test_master_key_and_the_401s(base: str) -> None:
    assert (await call(base, "GET", "/health", None))[1]["auth"] == "on"
    status, body, _ = await chat(base, "")
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    status, body, _ = await chat(base, "nrs-wrong")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert (await chat(base, MASTER))[0] == 200
    status, _, _ = await call(base, "POST", "/v1/chat/completions", None,
                              headers={"x-api-key": MASTER}, json={"model": "fast", "messages": HI})  # fmt: skip
    assert status == 200


async def test_virtual_key_lifecycle(base: str, upstream: FakeOpenAI) -> None:
    status, body, _ = await call(base, "POST", "/admin/keys", json={
        "name": "app", "models": ["fast"], "rpm": 100, "metadata": {"team": "a"},
    })  # fmt: skip
    assert status == 201
    secret, key_id = body["key"], body["id"]
    assert body["metadata"] == {"team": "a"} and body["hint"].startswith("nrs-")

    async with sdk(base, secret) as client:
        answer = await client.chat.completions.create(model="fast", messages=HI)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == upstream.default.text

    # the secret is never shown again
    status, listed, _ = await call(base, "GET", "/admin/keys")
    assert [k["id"] for k in listed["data"]] == [key_id]
    assert secret not in str(listed) and "key" not in listed["data"][0]
    # a virtual key is not an admin key
    assert (await call(base, "GET", "/admin/keys", secret))[0] == 403

    status, updated, _ = await call(base, "PATCH", f"/admin/keys/{key_id}", json={"rpm": 5})
    assert status == 200 and updated["rpm"] == 5 and updated["name"] == "app"

    status, revoked, _ = await call(base, "DELETE", f"/admin/keys/{key_id}")
    assert status == 200 and revoked["revoked_at"]
    status, body, _ = await chat(base, secret)
    assert status == 401 and "revoked" in body["error"]["message"]
    assert (await call(base, "GET", "/admin/keys"))[1]["data"] == []
    assert len((await call(base, "GET", "/admin/keys?include_revoked=true"))[1]["data"]) == 1


async def test_bad_key_specs_name_the_field(base: str) -> None:
    for spec, param in [
        ({"name": "x", "rpm": 0}, "rpm"),
        ({"name": "x", "budget": {"tokens_per_day": "many"}}, "budget.tokens_per_day"),
        ({"name": "x", "color": "red"}, None),
        ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ]:
        status, body, _ = await call(base, "POST", "/admin/keys", json=spec)
        assert status == 400, spec
        if param:
            assert body["error"]["param"] == param, body
    status, body, _ = await call(base, "PATCH", "/admin/keys/key_missing", json={"rpm": 1})
    assert status == 404


async def test_models_allowed_per_key(base: str) -> None:
    secret = await new_key(base, models=["other"])
    status, body, _ = await chat(base, secret)
    assert status == 403 and body["error"]["code"] == "model_not_allowed"
    assert body["error"]["param"] == "model"
    status, listed, _ = await call(base, "GET", "/v1/models", secret)
    assert status == 200 and listed["data"] == []
    assert (await call(base, "GET", "/v1/models/fast", secret))[0] == 404
    assert [m["id"] for m in (await call(base, "GET", "/v1/models"))[1]["data"]] == ["fast"]


async def test_expired_key_is_refused(base: str) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    secret = await new_key(base, expires_at=expires.isoformat())
    assert (await chat(base, secret))[0] == 200
    await asyncio.sleep((expires - datetime.now(UTC)).total_seconds() + 0.1)
    status, body, _ = await chat(base, secret)
    assert status == 401 and "expired" in body["error"]["message"]


async def test_rpm_refusal_has_openai_headers(base: str) -> None:
    secret = await new_key(base, rpm=2)
    status, _, headers = await chat(base, secret)
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["x-ratelimit-reset-requests"]
    assert (await chat(base, secret))[0] == 200
    status, body, headers = await chat(base, secret)
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"


async def test_per_model_rpm(base: str) -> None:
    secret = await new_key(base, model_limits={"fast": {"rpm": 1}})
    assert (await chat(base, secret))[0] == 200
    status, body, _ = await chat(base, secret)
    assert status == 429 and "model" in body["error"]["message"]


async def test_tpm_reserves_max_tokens_and_reconciles(base: str, upstream: FakeOpenAI) -> None:
    secret = await new_key(base, tpm=600)
    status, body, headers = await chat(base, secret, max_tokens=1000)
    assert status == 429 and "tokens per minute" in body["error"]["message"]
    assert headers["x-ratelimit-limit-tokens"] == "600"
    # 400 reserved; the answer used far fewer, so the reservation is given back
    status, body, _ = await chat(base, secret, max_tokens=400)
    assert status == 200
    used = body["usage"]["total_tokens"]
    status, _, headers = await chat(base, secret, max_tokens=100)
    assert status == 200
    remaining = int(headers["x-ratelimit-remaining-tokens"])
    assert remaining < 600 - used  # this request's reservation is counted
    assert remaining >= 600 - used - 100 - 50  # the first one's 400 were not kept


async def test_concurrency_limit(base: str, upstream: FakeOpenAI) -> None:
    secret = await new_key(base, max_concurrency=1)
    upstream.script(Reply(chunks=5, token_delay=0.2))
    async with sdk(base, secret) as client:
        stream = await client.chat.completions.create(model="fast", messages=HI, stream=True)  # type: ignore[arg-type]
        status, body, _ = await chat(base, secret)
        assert status == 429 and "concurrent" in body["error"]["message"]
        async for _ in stream:
            pass
    assert (await chat(base, secret))[0] == 200


async def test_budget_exhausted_and_running_stream_counted(base: str, upstream: FakeOpenAI) -> None:
    secret = await new_key(base, budget={"tokens_per_day": 25})
    upstream.script(Reply(text="one two three four five six", chunks=6, token_delay=0.05),
                    Reply(text="a b c d e f g h i j", chunks=10, token_delay=0.05))  # fmt: skip
    async with sdk(base, secret) as client:
        first = await client.chat.completions.create(model="fast", messages=HI, stream=True)  # type: ignore[arg-type]
        second = await client.chat.completions.create(model="fast", messages=HI, stream=True)  # type: ignore[arg-type]
        texts = ["".join([c.choices[0].delta.content or "" async for c in s if c.choices])
                 for s in (first, second)]  # fmt: skip
    assert all(texts)  # both were admitted, and both finish although they pass the budget
    status, body, headers = await chat(base, secret)
    assert status == 429 and body["error"]["code"] == "budget_exceeded"
    assert int(headers["retry-after"]) <= 86400
    status, rows, _ = await call(base, "GET", "/admin/usage?group_by=key")
    spent = rows["data"][0]
    assert spent["requests"] == 3 and spent["total_tokens"] == (7 + 6) + (7 + 10)


async def test_cost_budget(base: str) -> None:
    # 1000 per million prompt tokens: each request costs about 0.007 + output
    secret = await new_key(base, budget={"cost_per_month": 0.01})
    assert (await chat(base, secret))[0] == 200
    status, body, _ = await chat(base, secret)
    assert status == 429 and body["error"]["code"] == "budget_exceeded"


async def test_usage_records_every_request(base: str, upstream: FakeOpenAI) -> None:
    secret = await new_key(base)
    _, created, _ = await call(base, "GET", "/admin/keys")
    key_id = created["data"][0]["id"]
    since = time.time() - 1
    upstream.script(
        Reply(text="Hello there", prompt_tokens=11, completion_tokens=3),
        Reply(status=400, error_message="bad things"),
        Reply(chunks=20, token_delay=0.05),
    )
    assert (await chat(base, secret))[0] == 200
    assert (await chat(base, secret))[0] == 400
    # a stream the client cuts after three chunks still counts the chunks it was sent
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {secret}"},
               json={"model": "fast", "messages": HI, "stream": True}) as r,
    ):  # fmt: skip
        seen = 0
        async for line in r.content:
            seen += line.startswith(b"data: {")
            if seen == 3:
                break
    await upstream.wait_disconnect()
    await asyncio.sleep(0.2)
    status, usage, _ = await call(base, "GET", f"/admin/usage?key={key_id}&since={since}")
    assert status == 200
    rows = sorted(usage["data"], key=lambda r: r["created_at"])
    assert [r["status"] for r in rows] == [200, 400, 499 if rows[2]["status"] == 499 else 200]
    assert [r["outcome"] for r in rows] == ["ok", "error", "cut"]
    assert rows[0]["prompt_tokens"] == 11 and rows[0]["completion_tokens"] == 3
    assert rows[0]["cost"] == pytest.approx((11 * 1000 + 3 * 2000) / 1e6)
    assert rows[0]["deployment"] == "up/m1" and rows[0]["route"] == "/v1/chat/completions"
    assert 3 <= rows[2]["completion_tokens"] < 20
    for group in ("model", "day"):
        status, grouped, _ = await call(base, "GET", f"/admin/usage?group_by={group}")
        assert status == 200 and grouped["data"][0]["requests"] == 3
    status, body, _ = await call(base, "GET", "/admin/usage?group_by=color")
    assert status == 400 and body["error"]["param"] == "group_by"
    status, body, _ = await call(base, "GET", "/admin/usage?since=yesterday")
    assert status == 400 and body["error"]["param"] == "since"
    assert (await call(base, "GET", "/admin/usage?model=none"))[1]["data"] == []


async def test_failed_logins_lock_the_address_out(base: str) -> None:
    for _ in range(10):
        assert (await chat(base, "nrs-guess"))[0] == 401
    status, body, headers = await chat(base, MASTER)
    assert status == 429 and body["error"]["code"] == "auth_locked_out"
    assert 200 <= int(headers["retry-after"]) <= 300


async def test_cors_preflight_and_exposed_headers(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    cors = '[cors]\nallow_origins = ["https://app.example"]\nallow_credentials = true\n'
    text = openai_config(upstream.base_url, extra=cors)
    base = await serve(write_config(tmp_path, text, {"NOROSHI_MASTER_KEY": MASTER}))
    origin = {"origin": "https://app.example"}
    status, _, headers = await call(base, "OPTIONS", "/v1/chat/completions", None, headers={
        **origin, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    })  # fmt: skip
    assert status == 204
    assert headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in headers["access-control-allow-methods"]
    assert "authorization" in headers["access-control-allow-headers"]
    assert headers["access-control-allow-credentials"] == "true"
    # the error of an unauthenticated call is readable by the page, with its headers
    status, _, headers = await call(base, "POST", "/v1/chat/completions", None, headers=origin,
                                    json={"model": "fast", "messages": HI})  # fmt: skip
    assert status == 401 and headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in headers["access-control-expose-headers"]
    assert "x-ratelimit-remaining-requests" in headers["access-control-expose-headers"]
    status, _, headers = await call(base, "OPTIONS", "/v1/chat/completions", None, headers={
        "origin": "https://evil.example", "access-control-request-method": "POST",
    })  # fmt: skip
    assert status == 403 and "access-control-allow-origin" not in headers


async def test_metrics(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(status=500), Reply(), Reply(status=400))  # two upstream errors
    assert (await chat(base, MASTER))[0] == 200  # after one retry
    assert (await chat(base, MASTER))[0] == 400
    assert (await chat(base, MASTER, stream=True))[0] == 200
    secret = await new_key(base, rpm=1)
    await chat(base, secret)
    await chat(base, secret)
    async with aiohttp.ClientSession() as s, s.get(f"{base}/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    assert 'noroshi_requests_total{model="fast",route="/v1/chat/completions",status="200"}' in text
    assert 'status="400"' in text and 'status="429"' in text
    assert 'noroshi_limit_refusals_total{reason="rpm"} 1.0' in text
    assert (
        'noroshi_upstream_errors_total{code="bad_upstream_response",deployment="up/m1"} 2.0' in text
    )
    assert "noroshi_time_to_first_token_seconds_bucket" in text
    assert 'noroshi_tokens_total{direction="in",model="fast"}' in text
    assert "noroshi_active_streams 0.0" in text
    assert "noroshi_request_duration_seconds_count" in text
