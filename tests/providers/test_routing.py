"""Weighted choice, retries, Retry-After, fallbacks and cooldown, against fake upstreams."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.conftest import Serve, openai_config, write_config
from tests.fakes.loopback import LoopbackServer
from tests.fakes.upstream import FakeOpenAI, Reply

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def up() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="test-key") as fake:
        yield fake


@pytest.fixture
async def other() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


def two_deployments(base_url: str, routing: str = "") -> str:
    return openai_config(base_url, routing=routing).replace(
        'deployments = [{ provider = "up", model = "m1" }]',
        'deployments = [{ provider = "up", model = "m1", weight = 3 },'
        ' { provider = "up", model = "m2", weight = 1 }]',
    )


def with_fallback(up: FakeOpenAI, other: FakeOpenAI, routing: str = "") -> str:
    return (
        openai_config(up.base_url, routing=routing).replace(
            'deployments = [{ provider = "up", model = "m1" }]',
            'deployments = [{ provider = "up", model = "m1" }]\nfallbacks = ["backup"]',
        )
        + f"""
[providers.other]
type = "openai"
base_url = "{other.base_url}"
first_byte_timeout_s = 0.5

[[models]]
name = "backup"
deployments = [{{ provider = "other", model = "b1" }}]
"""
    )


async def ask(base: str, stream: bool = False) -> str:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as c:
        if stream:
            chunks = await c.chat.completions.create(model="fast", messages=HI, stream=True)  # type: ignore[arg-type]
            return "".join([ch.choices[0].delta.content or "" async for ch in chunks if ch.choices])
        answer = await c.chat.completions.create(model="fast", messages=HI)  # type: ignore[arg-type]
        return answer.choices[0].message.content or ""


async def test_weighted_choice(serve: Serve, tmp_path: Path, up: FakeOpenAI) -> None:
    base = await serve(write_config(tmp_path, two_deployments(up.base_url)))
    for _ in range(200):
        await ask(base)
    counts = Counter(r.body["model"] for r in up.requests)
    assert set(counts) == {"m1", "m2"}
    share = counts["m1"] / 200  # weight 3:1, so 0.75; the bounds sit ~6 standard deviations out
    assert 0.6 < share < 0.9


async def test_retry_after_a_500_succeeds(serve: Serve, tmp_path: Path, up: FakeOpenAI) -> None:
    base = await serve(write_config(tmp_path, openai_config(up.base_url)))
    up.script(Reply(status=500), Reply(status=503), Reply(text="third time lucky"))
    assert await ask(base, stream=True) == "third time lucky"
    assert len(up.requests) == 3


async def test_retry_honours_retry_after(serve: Serve, tmp_path: Path, up: FakeOpenAI) -> None:
    base = await serve(write_config(tmp_path, openai_config(up.base_url)))
    up.script(Reply(status=429, retry_after=0.4), Reply(text="ok"))
    assert await ask(base) == "ok"
    first, second = up.requests
    assert second.received_at - first.received_at >= 0.4


@pytest.mark.parametrize(
    "failure",
    [Reply(status=429, retry_after=5), Reply(status=500), Reply(first_token_delay=5)],
    ids=["429", "500", "timeout"],
)
async def test_fallback_to_another_model(
    serve: Serve, tmp_path: Path, up: FakeOpenAI, other: FakeOpenAI, failure: Reply
) -> None:
    base = await serve(write_config(tmp_path, with_fallback(up, other, routing="retries = 1")))
    up.default = failure
    other.default = Reply(text="from the backup")
    assert await ask(base, stream=True) == "from the backup"
    assert other.requests[-1].body["model"] == "b1"


async def test_client_errors_do_not_fall_back(
    serve: Serve, tmp_path: Path, up: FakeOpenAI, other: FakeOpenAI
) -> None:
    base = await serve(write_config(tmp_path, with_fallback(up, other)))
    up.default = Reply(status=400, error_message="bad tool schema")
    with pytest.raises(openai.BadRequestError):
        await ask(base)
    assert other.requests == []


async def test_failing_deployment_cools_down(
    serve: Serve, tmp_path: Path, up: FakeOpenAI, other: FakeOpenAI
) -> None:
    routing = "retries = 1\ncooldown_failures = 2\ncooldown_s = 60"
    config = (
        openai_config(up.base_url, routing=routing).replace(
            'deployments = [{ provider = "up", model = "m1" }]',
            'deployments = [{ provider = "up", model = "m1" }, { provider = "other", model = "m2" }]',
        )
        + f'\n[providers.other]\ntype = "openai"\nbase_url = "{other.base_url}"\n'
    )
    base = await serve(write_config(tmp_path, config))
    up.default = Reply(status=500)
    other.default = Reply(text="fine")
    for _ in range(100):  # each failed try on `up` is retried on `other`, so every ask succeeds
        assert await ask(base) == "fine"
        if len(up.requests) == 2:
            break
    assert len(up.requests) == 2
    for _ in range(20):  # two failures in a row: `up` rests, and is not tried again
        assert await ask(base) == "fine"
    assert len(up.requests) == 2


async def test_all_deployments_cooling_is_503(serve: Serve, tmp_path: Path, up: FakeOpenAI) -> None:
    routing = "retries = 0\ncooldown_failures = 1\ncooldown_s = 60"
    base = await serve(write_config(tmp_path, openai_config(up.base_url, routing=routing)))
    up.default = Reply(status=500)
    with pytest.raises(openai.APIStatusError) as first:
        await ask(base)
    assert first.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as info:
        await ask(base)
    assert info.value.status_code == 503
    assert info.value.code == "no_deployment_available"
    assert int(info.value.response.headers["retry-after"]) > 50
    assert len(up.requests) == 1


class EmptyThenSlow(LoopbackServer):
    """First answers a stream with nothing but its terminator; then streams two chunks, one read
    apart, and the terminator."""

    def __init__(self) -> None:
        super().__init__()
        self.answered = 0

    def _routes(self) -> list[web.RouteDef]:
        async def answer(request: web.Request) -> web.StreamResponse:
            self.answered += 1
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            if self.answered > 1:
                for word in ("Hello", " there"):
                    delta = {"choices": [{"index": 0, "delta": {"content": word}}]}
                    await resp.write(b"data: %s\n\n" % json.dumps(delta).encode())
                    await asyncio.sleep(0.05)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp

        return [web.post("/v1/chat/completions", answer)]


async def test_a_retry_after_an_empty_stream_ends_the_answer_once(
    serve: Serve, tmp_path: Path
) -> None:
    """The empty attempt saw its upstream's terminator; that must not make the next attempt's
    first chunk look like the last, or `[DONE]` would reach the client before the rest."""
    async with EmptyThenSlow() as up:
        base = await serve(write_config(tmp_path, openai_config(f"{up.origin}/v1")))
        payload = {"model": "fast", "messages": HI, "stream": True}
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{base}/v1/chat/completions", json=payload) as r,
        ):
            body = await r.read()
    assert up.answered == 2
    assert body.count(b"data: [DONE]") == 1 and body.endswith(b"data: [DONE]\n\n")
    assert body.index(b"Hello") < body.index(b"there") < body.index(b"[DONE]")
