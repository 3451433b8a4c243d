"""Usage by token kind end to end: what upstreams report as cached, written or reasoning
tokens reaches `/admin/usage`, each kind priced from the shipped table; a cut stream bills
what was sent."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Serve, write_config
from tests.fakes.upstream import FakeAnthropic, FakeOpenAI, Reply

MASTER = "sk-master-costs"
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def base(serve: Serve, tmp_path: Path, claude: FakeAnthropic, gpt: FakeOpenAI) -> str:
    config = f"""
[providers.claude]
type = "anthropic"
base_url = "{claude.origin}"
[providers.oai]
type = "openai"
base_url = "{gpt.base_url}"
[routing]
retries = 0
[[models]]
name = "sonnet"
deployments = [{{ provider = "claude", model = "claude-sonnet-4-5-20250929" }}]
[[models]]
name = "mini"
deployments = [{{ provider = "oai", model = "gpt-5-mini" }}]
"""
    return await serve(write_config(tmp_path, config, {"NOROSHI_MASTER_KEY": MASTER}))


async def post(base: str, payload: dict[str, Any]) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {MASTER}"}
    async with (
        aiohttp.ClientSession(headers=headers) as s,
        s.post(f"{base}/v1/chat/completions", json=payload) as r,
    ):
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer


async def usage(base: str, model: str) -> list[dict[str, Any]]:
    headers = {"authorization": f"Bearer {MASTER}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        for _ in range(100):
            async with s.get(f"{base}/admin/usage", params={"model": model}) as r:
                rows: list[dict[str, Any]] = (await r.json())["data"]
            if rows:
                return rows
            await asyncio.sleep(0.02)
    raise AssertionError("no usage record")


async def test_anthropic_cache_reads_and_writes_are_kept_apart_and_priced(
    base: str, claude: FakeAnthropic
) -> None:
    claude.script(
        Reply(
            text="ok",
            prompt_tokens=100,
            cache_read_tokens=10_000,
            cache_write_tokens=2_000,
            completion_tokens=50,
        )
    )
    answer = await post(base, {"model": "sonnet", "messages": HI})
    assert answer["usage"]["prompt_tokens"] == 12_100
    assert answer["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 10_000,
        "cache_creation_tokens": 2_000,
    }
    (row,) = await usage(base, "sonnet")
    assert (row["prompt_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (
        12_100,
        10_000,
        2_000,
    )
    # claude-sonnet-4-5 from the shipped table: 3 input, 0.3 cache read, 3.75 write, 15 output
    expected = (100 * 3 + 10_000 * 0.3 + 2_000 * 3.75 + 50 * 15) / 1e6
    assert row["cost"] == pytest.approx(expected)


async def test_openai_cached_and_reasoning_tokens_are_kept_and_priced(
    base: str, gpt: FakeOpenAI
) -> None:
    gpt.script(
        Reply(
            text="ok",
            prompt_tokens=1000,
            cache_read_tokens=3000,
            completion_tokens=20,
            reasoning_tokens=80,
        )
    )
    await post(base, {"model": "mini", "messages": HI})
    (row,) = await usage(base, "mini")
    assert (row["prompt_tokens"], row["cache_read_tokens"]) == (4000, 3000)
    assert (row["completion_tokens"], row["reasoning_tokens"]) == (100, 80)
    # gpt-5-mini: 0.25 input, 0.025 cached, 2.0 output (reasoning is output)
    assert row["cost"] == pytest.approx((1000 * 0.25 + 3000 * 0.025 + 100 * 2.0) / 1e6)


async def test_a_stream_cut_by_its_client_bills_what_was_sent(
    base: str, claude: FakeAnthropic
) -> None:
    claude.script(Reply(text=" ".join(["word"] * 40), token_delay=0.02, completion_tokens=40))
    payload = {"model": "sonnet", "messages": HI, "stream": True}
    headers = {"authorization": f"Bearer {MASTER}"}
    received = 0
    async with (
        aiohttp.ClientSession(headers=headers) as s,
        s.post(f"{base}/v1/chat/completions", json=payload) as r,
    ):
        async for line in r.content:
            received += line.startswith(b"data: ")
            if received >= 12:
                break
    await claude.wait_disconnect()
    (row,) = await usage(base, "sonnet")
    assert row["outcome"] == "cut"
    # message_start said 1 output token; at least the ten-odd sent are billed
    assert row["completion_tokens"] >= 10
    assert row["prompt_tokens"] == 7
