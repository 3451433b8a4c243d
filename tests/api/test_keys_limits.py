"""Keys, limits, budgets, usage, CORS and metrics end to end: a real server on loopback,
noroshi's own client (aiohttp where the wire itself is tested: the headers of a success, CORS,
the server's own validation), a fake OpenAI upstream behind."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from noroshi.client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from noroshi.config import ConfigError
from noroshi.wire.admin import UsageRecord, UsageTotals
from noroshi.wire.openai import ChatCompletion
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply

MASTER = "sk-master-test"
HI = [{"role": "user", "content": "Hi"}]
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")  # every time noroshi writes
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


def client(base: str, key: str | None = MASTER, **kw: Any) -> AsyncClient:
    """noroshi's client with `key`, no retries: a refusal is raised at once."""
    return AsyncClient(base, api_key=key, max_retries=0, **kw)


async def new_key(base: str, **spec: Any) -> str:
    async with client(base) as c:
        created = await c.admin.keys.create(**{"name": "test", **spec})
    assert created.key.startswith("nrs-")
    return created.key


async def chat(base: str, key: str | None, **kw: Any) -> ChatCompletion:
    """A chat completion with `key`; a refusal raises its typed error."""
    async with client(base, key) as c:
        return await c.chat.create(model="fast", messages=HI, **kw)


async def raw_chat(base: str, key: str, **kw: Any) -> tuple[int, Any, Any]:
    """The same request raw, for the headers of an answer that succeeds."""
    payload = {"model": "fast", "messages": HI, **kw}
    return await call(base, "POST", "/v1/chat/completions", key, json=payload)


async def test_auth_off_on_loopback_without_master_key(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url)))
    async with client(base, None) as c:
        assert (await c.health()).auth.startswith("off")
    assert (await chat(base, None)).choices[0].message.content == upstream.default.text


def test_refuses_to_bind_beyond_loopback_without_master_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^auth\.master_key: .*0\.0\.0\.0"):
        write_config(tmp_path, '[server]\nhost = "0.0.0.0"\n')
    key = "m" * 16
    config = write_config(tmp_path, '[server]\nhost = "0.0.0.0"\n', {"NOROSHI_MASTER_KEY": key})
    assert config.auth.master_key == key


async def test_master_key_and_the_401s(base: str) -> None:
    async with client(base, None) as c:
        assert (await c.health()).auth == "on"
    with pytest.raises(AuthenticationError) as err:
        await chat(base, None)
    assert err.value.status == 401 and err.value.code == "missing_api_key"
    with pytest.raises(AuthenticationError) as err:
        await chat(base, "nrs-wrong")
    assert err.value.status == 401 and err.value.type == "authentication_error"
    await chat(base, MASTER)
    async with client(base, None, headers={"x-api-key": MASTER}) as c:
        await c.chat.create(model="fast", messages=HI)


async def test_virtual_key_lifecycle(base: str, upstream: FakeOpenAI) -> None:
    async with client(base) as admin:
        created = await admin.admin.keys.create(
            name="app", models=["fast"], rpm=100, metadata={"team": "a"}
        )
        secret, key_id = created.key, created.id
        assert created.metadata == {"team": "a"} and created.hint.startswith("nrs-")

        answer = await chat(base, secret)
        assert answer.choices[0].message.content == upstream.default.text

        # the secret is never shown again
        listed = await admin.admin.keys.list()
        assert [k.id for k in listed.data] == [key_id]
        # raw: the client's types would drop a `key` field without a word
        _, raw, _ = await call(base, "GET", "/admin/keys")
        assert secret not in str(raw) and "key" not in raw["data"][0]
        assert ISO_UTC.fullmatch(raw["data"][0]["created_at"])
        assert (await admin.admin.keys.get(key_id)).name == "app"
        # a virtual key is not an admin key
        async with client(base, secret) as app:
            with pytest.raises(PermissionDeniedError) as denied:
                await app.admin.keys.list()
        assert denied.value.status == 403

        updated = await admin.admin.keys.update(key_id, rpm=5)
        assert updated.rpm == 5 and updated.name == "app"

        revoked = await admin.admin.keys.revoke(key_id)
        assert revoked.revoked_at is not None
        _, raw, _ = await call(base, "GET", f"/admin/keys/{key_id}")
        assert ISO_UTC.fullmatch(raw["revoked_at"]) and raw["expires_at"] is None
        with pytest.raises(AuthenticationError) as err:
            await chat(base, secret)
        assert err.value.status == 401 and "revoked" in err.value.message
        assert (await admin.admin.keys.list()).data == []
        assert len((await admin.admin.keys.list(include_revoked=True)).data) == 1


async def test_bad_key_specs_name_the_field(base: str) -> None:
    async with client(base) as c:
        for spec, param in [
            ({"name": "x", "rpm": 0}, "rpm"),
            ({"name": "x", "budget": {"tokens_per_day": "many"}}, "budget.tokens_per_day"),
            ({"name": "x", "color": "red"}, None),
            ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ]:
            # the server's own check, raw: the client refuses most of these before sending
            status, body, _ = await call(base, "POST", "/admin/keys", json=spec)
            assert status == 400, spec
            if param:
                assert body["error"]["param"] == param, body
            with pytest.raises((InvalidRequestError, BadRequestError)) as err:
                await c.admin.keys.create(**spec)
            assert err.value.param == param, spec
        with pytest.raises(NotFoundError) as missing:
            await c.admin.keys.update("key_missing", rpm=1)
        assert missing.value.status == 404


async def test_models_allowed_per_key(base: str) -> None:
    secret = await new_key(base, models=["other"])
    with pytest.raises(PermissionDeniedError) as err:
        await chat(base, secret)
    assert err.value.status == 403 and err.value.code == "model_not_allowed"
    assert err.value.param == "model"
    async with client(base, secret) as c:
        assert (await c.models.list()).data == []
        with pytest.raises(NotFoundError):
            await c.models.get("fast")
    async with client(base) as c:
        assert [m.id for m in (await c.models.list()).data] == ["fast"]


async def test_expired_key_is_refused(base: str) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    secret = await new_key(base, expires_at=expires.isoformat())
    await chat(base, secret)
    await asyncio.sleep((expires - datetime.now(UTC)).total_seconds() + 0.1)
    with pytest.raises(AuthenticationError) as err:
        await chat(base, secret)
    assert err.value.status == 401 and "expired" in err.value.message
    assert ISO_UTC.search(err.value.message)  # when, in the one format


async def test_rpm_refusal_has_openai_headers(base: str) -> None:
    secret = await new_key(base, rpm=2)
    # the headers of an answer that succeeds, raw: the client does not show them
    status, _, headers = await raw_chat(base, secret)
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["x-ratelimit-reset-requests"]
    await chat(base, secret)
    with pytest.raises(RateLimitError) as err:
        await chat(base, secret)
    assert err.value.status == 429 and err.value.code == "rate_limit_exceeded"
    assert 1 <= int(err.value.headers["retry-after"]) <= 60
    assert err.value.headers["x-ratelimit-remaining-requests"] == "0"


async def test_per_model_rpm(base: str) -> None:
    secret = await new_key(base, model_limits={"fast": {"rpm": 1}})
    await chat(base, secret)
    with pytest.raises(RateLimitError) as err:
        await chat(base, secret)
    assert err.value.status == 429 and "model" in err.value.message


async def test_tpm_reserves_max_tokens_and_reconciles(base: str, upstream: FakeOpenAI) -> None:
    secret = await new_key(base, tpm=600)
    with pytest.raises(RateLimitError) as err:
        await chat(base, secret, max_tokens=1000)
    assert err.value.status == 429 and "tokens per minute" in err.value.message
    assert err.value.headers["x-ratelimit-limit-tokens"] == "600"
    # 400 reserved; the answer used far fewer, so the reservation is given back
    answer = await chat(base, secret, max_tokens=400)
    assert answer.usage is not None
    used = answer.usage.total_tokens
    status, _, headers = await raw_chat(base, secret, max_tokens=100)  # its headers, raw
    assert status == 200
    remaining = int(headers["x-ratelimit-remaining-tokens"])
    assert remaining < 600 - used  # this request's reservation is counted
    assert remaining >= 600 - used - 100 - 50  # the first one's 400 were not kept


async def test_concurrency_limit(base: str, upstream: FakeOpenAI) -> None:
    secret = await new_key(base, max_concurrency=1)
    upstream.script(Reply(chunks=5, token_delay=0.2))
    async with client(base, secret) as c:
        stream = c.chat.stream(model="fast", messages=HI)
        first = await anext(stream)  # the stream is open and holds the one slot
        with pytest.raises(RateLimitError) as err:
            await chat(base, secret)
        assert err.value.status == 429 and "concurrent" in err.value.message
        assert len([first, *[chunk async for chunk in stream]]) > 1
    await chat(base, secret)


async def test_budget_exhausted_and_running_stream_counted(base: str, upstream: FakeOpenAI) -> None:
    secret = await new_key(base, budget={"tokens_per_day": 25})
    upstream.script(
        Reply(text="one two three four five six", chunks=6, token_delay=0.05),
        Reply(text="a b c d e f g h i j", chunks=10, token_delay=0.05),
    )
    async with client(base, secret) as c:
        streams = [c.chat.stream(model="fast", messages=HI) for _ in range(2)]
        firsts = [await anext(s) for s in streams]  # both admitted, both running
        rests = [[chunk async for chunk in s] for s in streams]
    texts = [
        "".join(chunk.choices[0].delta.content or "" for chunk in [first, *rest] if chunk.choices)
        for first, rest in zip(firsts, rests, strict=True)
    ]
    assert all(texts)  # both were admitted, and both finish although they pass the budget
    with pytest.raises(RateLimitError) as err:
        await chat(base, secret)
    assert err.value.status == 429 and err.value.code == "budget_exceeded"
    assert int(err.value.headers["retry-after"]) <= 86400
    async with client(base) as c:
        spent = (await c.admin.usage(group_by="key")).data[0]
    assert isinstance(spent, UsageTotals)
    assert spent.requests == 3 and spent.total_tokens == (7 + 6) + (7 + 10)
    assert spent.key_name is not None  # a report by key names each key


async def test_cost_budget(base: str) -> None:
    # 1000 per million prompt tokens: each request costs about 0.007 + output
    secret = await new_key(base, budget={"cost_per_month": 0.01})
    await chat(base, secret)
    with pytest.raises(RateLimitError) as err:
        await chat(base, secret)
    assert err.value.status == 429 and err.value.code == "budget_exceeded"


async def test_usage_records_every_request(base: str, upstream: FakeOpenAI) -> None:
    secret = await new_key(base)
    async with client(base) as admin:
        key_id = (await admin.admin.keys.list()).data[0].id
    since = time.time() - 1
    upstream.script(
        Reply(text="Hello there", prompt_tokens=11, completion_tokens=3),
        Reply(status=400, error_message="bad things"),
        Reply(chunks=20, token_delay=0.05),
    )
    await chat(base, secret)
    with pytest.raises(BadRequestError):
        await chat(base, secret)
    # a stream the client leaves after three chunks still counts the chunks it was sent
    async with client(base, secret) as c, c.chat.stream(model="fast", messages=HI) as stream:
        seen = 0
        async for chunk in stream:
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
            if seen == 3:
                break
    await upstream.wait_disconnect()
    await asyncio.sleep(0.2)
    async with client(base) as admin:
        usage = await admin.admin.usage(key=key_id, since=str(since))
        rows = sorted(
            (r for r in usage.data if isinstance(r, UsageRecord)), key=lambda r: r.created_at
        )
        assert len(rows) == len(usage.data) == 3
        assert [r.status for r in rows] == [200, 400, 499 if rows[2].status == 499 else 200]
        assert [r.outcome for r in rows] == ["ok", "error", "cut"]
        assert rows[0].prompt_tokens == 11 and rows[0].completion_tokens == 3
        assert rows[0].cost == pytest.approx((11 * 1000 + 3 * 2000) / 1e6)
        assert rows[0].deployment == "up/m1" and rows[0].route == "/v1/chat/completions"
        assert 3 <= rows[2].completion_tokens < 20
        for group in ("model", "day"):
            grouped = await admin.admin.usage(group_by=group)
            totals = grouped.data[0]
            assert isinstance(totals, UsageTotals) and totals.requests == 3
        # an unknown group: the server's answer raw, and the client's own refusal
        status, body, _ = await call(base, "GET", "/admin/usage?group_by=color")
        assert status == 400 and body["error"]["param"] == "group_by"
        with pytest.raises(InvalidRequestError) as refused:
            await admin.admin.usage(group_by="color")
        assert refused.value.param == "group_by"
        # times: ISO 8601 or epoch seconds in; ISO 8601 (UTC, milliseconds) out
        iso = datetime.fromtimestamp(since, UTC).isoformat()
        assert len((await admin.admin.usage(key=key_id, since=iso)).data) == 3
        status, body, _ = await call(base, "GET", f"/admin/usage?key={key_id}&since={since}")
        assert status == 200 and len(body["data"]) == 3
        assert all(ISO_UTC.fullmatch(r["created_at"]) for r in body["data"])
        assert rows[0].created_at == pytest.approx(time.time(), abs=60)
        for bad in ("since=yesterday", "until=", "until=2026-13-01"):
            status, body, _ = await call(base, "GET", f"/admin/usage?{bad}")
            param = bad.partition("=")[0]
            assert status == 400 and body["error"]["param"] == param, body
            assert "is not a time" in body["error"]["message"]
        with pytest.raises(InvalidRequestError) as refused:
            await admin.admin.usage(since="yesterday")
        assert refused.value.param == "since"
        assert (await admin.admin.usage(model="none")).data == []


async def test_failed_logins_lock_the_address_out(base: str) -> None:
    """The lockout refuses further guesses early, and never a valid key: a stranger sharing
    the address (a NAT, a proxy) cannot lock its users out."""
    virtual = await new_key(base)
    for _ in range(10):
        with pytest.raises(AuthenticationError):
            await chat(base, "nrs-guess")
    for guess in ("nrs-guess", "nrs-another-guess", None):
        with pytest.raises(RateLimitError) as err:
            await chat(base, guess)
        assert err.value.status == 429 and err.value.code == "auth_locked_out"
        assert 200 <= int(err.value.headers["retry-after"]) <= 300
    assert (await chat(base, MASTER)).choices
    assert (await chat(base, virtual)).choices
    with pytest.raises(RateLimitError):  # a success unlocks nothing
        await chat(base, "nrs-guess")


PROXIED = '[auth]\nlockout_failures = 3\ntrusted_proxies = ["10.9.0.0/16", "127.0.0.1"]\n'


async def guess(base: str, *forwarded_for: str) -> int:
    """The status of a chat with a wrong key, through proxies that wrote these
    `X-Forwarded-For` lines."""
    headers = [("x-forwarded-for", line) for line in forwarded_for]
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{base}/v1/chat/completions",
            json={"model": "fast", "messages": HI},
            headers=[("authorization", "Bearer nrs-guess"), *headers],
        ) as r,
    ):
        return r.status


# noroshi's own server only: uvicorn, under the ASGI adapter, rewrites the client from X-Forwarded-For
# itself when the peer is 127.0.0.1 (its --proxy-headers), before noroshi sees the request
@pytest.mark.parametrize("serve", ["noroshi"], indirect=True)
async def test_behind_trusted_proxies_the_forwarded_client_is_locked_out(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    text = openai_config(upstream.base_url, extra=PROXIED)
    base = await serve(write_config(tmp_path, text, {"NOROSHI_MASTER_KEY": MASTER}))
    for _ in range(3):  # 203.0.113.5 through a proxy on 10.9.1.1, then the one on loopback
        assert await guess(base, "203.0.113.5, 10.9.1.1") == 401
    assert await guess(base, "203.0.113.5") == 429
    # what the client writes itself is left of its own hop, and changes nothing
    assert await guess(base, "198.51.100.7, 203.0.113.5") == 429
    assert await guess(base, "198.51.100.7", "203.0.113.5:51234") == 429  # a line per proxy
    # its neighbours behind the same proxies are not locked out, nor the proxy itself
    assert await guess(base, "203.0.113.6, 10.9.1.1") == 401
    assert await guess(base) == 401


@pytest.mark.parametrize("serve", ["noroshi"], indirect=True)
async def test_forwarded_for_is_ignored_from_an_untrusted_peer(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    text = openai_config(upstream.base_url, extra="[auth]\nlockout_failures = 3\n")
    base = await serve(write_config(tmp_path, text, {"NOROSHI_MASTER_KEY": MASTER}))
    for i in range(3):
        assert await guess(base, f"203.0.113.{i}") == 401
    assert await guess(base, "203.0.113.99") == 429  # all of them were 127.0.0.1


async def test_cors_preflight_and_exposed_headers(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    cors = '[cors]\nallow_origins = ["https://app.example"]\nallow_credentials = true\n'
    text = openai_config(upstream.base_url, extra=cors)
    base = await serve(write_config(tmp_path, text, {"NOROSHI_MASTER_KEY": MASTER}))
    origin = {"origin": "https://app.example"}
    status, _, headers = await call(
        base,
        "OPTIONS",
        "/v1/chat/completions",
        None,
        headers={
            **origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert status == 204
    assert headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in headers["access-control-allow-methods"]
    assert "authorization" in headers["access-control-allow-headers"]
    assert headers["access-control-allow-credentials"] == "true"
    # the error of an unauthenticated call is readable by the page, with its headers
    status, _, headers = await call(
        base,
        "POST",
        "/v1/chat/completions",
        None,
        headers=origin,
        json={"model": "fast", "messages": HI},
    )
    assert status == 401 and headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in headers["access-control-expose-headers"]
    assert "x-ratelimit-remaining-requests" in headers["access-control-expose-headers"]
    status, _, headers = await call(
        base,
        "OPTIONS",
        "/v1/chat/completions",
        None,
        headers={
            "origin": "https://evil.example",
            "access-control-request-method": "POST",
        },
    )
    assert status == 403 and "access-control-allow-origin" not in headers


async def test_metrics(base: str, upstream: FakeOpenAI) -> None:
    upstream.script(Reply(status=500), Reply(), Reply(status=400))  # two upstream errors
    await chat(base, MASTER)  # after one retry
    with pytest.raises(BadRequestError):
        await chat(base, MASTER)
    async with client(base) as c:
        assert [chunk async for chunk in c.chat.stream(model="fast", messages=HI)]
    secret = await new_key(base, rpm=1)
    await chat(base, secret)
    with pytest.raises(RateLimitError):
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
