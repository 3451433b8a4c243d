"""Slack through the whole gateway: signed Events API deliveries to a real server, answers in
the thread by chat.postMessage and chat.update on the fake Web API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.channels.fakes.slack import FakeSlack
from tests.channels.helpers import FAST_CHANNEL_KEYS
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply

pytestmark = pytest.mark.parametrize("serve", ["noroshi"], indirect=True)

CHANNEL = """
[[channels]]
type = "slack"
allow_chats = ["C123"]
bot_token = "{token}"
signing_secret = "{secret}"
api_base = "{api_base}"
{fast}"""


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def hook(serve: Serve, tmp_path: Path, upstream: FakeOpenAI, slack: FakeSlack) -> str:
    channel = CHANNEL.format(
        token=slack.bot_token,
        secret=slack.signing_secret,
        api_base=slack.api_base,
        fast=FAST_CHANNEL_KEYS,
    )
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url, extra=channel)))
    return f"{base}/channels/slack"


def thread_texts(slack: FakeSlack, payload: dict[str, Any]) -> list[str]:
    event = payload["event"]
    return slack.thread(event["channel"], event.get("thread_ts") or event["ts"])


async def test_a_mention_is_answered_in_its_thread_by_updates(
    hook: str, upstream: FakeOpenAI, slack: FakeSlack
) -> None:
    answer = "The deploy finished at noon, and every check passed."
    upstream.script(Reply(text=answer, chunks=8, token_delay=0.08))
    payload = slack.event("<@U0BOT0000> how did the deploy go?", mention=True)
    status, _ = await slack.deliver(hook, payload)
    assert status == 200
    await slack.wait_for(lambda: thread_texts(slack, payload) == [answer])
    [post] = [p for p in slack.posts if p.thread_ts == payload["event"]["ts"]]
    grown = [u.text for u in slack.updates if u.ts == post.ts]
    assert any(t.endswith("…") for t in grown), "the answer grew by chat.update"
    assert upstream.chats()[0][-1]["content"] == "how did the deploy go?"  # mention removed


async def test_retries_and_the_mention_twin_are_answered_once(
    hook: str, upstream: FakeOpenAI, slack: FakeSlack
) -> None:
    payload = slack.event("echo: only once", channel="C123")
    deliveries = [
        slack.deliver(hook, payload),
        slack.deliver(hook, slack.twin(payload)),
        slack.deliver(hook, payload, retry_num=1),
        slack.deliver(hook, payload, retry_num=2),
    ]
    assert [status for status, _ in await asyncio.gather(*deliveries)] == [200] * 4
    await slack.wait_for(lambda: thread_texts(slack, payload) == ["only once"])
    later = slack.event("echo: later")
    await slack.deliver(hook, later)
    await slack.wait_for(lambda: thread_texts(slack, later) == ["later"])
    assert thread_texts(slack, payload) == ["only once"]
    assert len(upstream.chats()) == 2


async def test_signatures_and_the_url_challenge(
    hook: str, upstream: FakeOpenAI, slack: FakeSlack
) -> None:
    challenge = slack.url_verification()
    status, body = await slack.deliver(hook, challenge)
    assert status == 200
    assert json.loads(body) == {"challenge": challenge["challenge"]}
    forged = slack.event("echo: forged")
    for kind in ("bad", "none"):
        assert (await slack.deliver(hook, forged, signature=kind))[0] == 401
    stale = int(time.time()) - 6 * 60
    assert (await slack.deliver(hook, forged, timestamp=stale))[0] == 401
    real = slack.event("echo: real")
    await slack.deliver(hook, real)
    await slack.wait_for(lambda: thread_texts(slack, real) == ["real"])
    assert thread_texts(slack, forged) == []
    assert len(upstream.chats()) == 1


async def test_a_thread_is_a_conversation(
    hook: str, upstream: FakeOpenAI, slack: FakeSlack
) -> None:
    opening = slack.event("echo: the plan is Tuesday")
    await slack.deliver(hook, opening)
    await slack.wait_for(lambda: thread_texts(slack, opening) == ["the plan is Tuesday"])
    ts = opening["event"]["ts"]
    follow_up = slack.event("echo: and the venue?", thread_ts=ts)
    elsewhere = slack.event("echo: unrelated")
    other_channel = slack.event("echo: not allowed here", channel="C999")
    for payload in (follow_up, elsewhere, other_channel):
        await slack.deliver(hook, payload)
    await slack.wait_for(lambda: len(thread_texts(slack, opening)) == 2)
    await slack.wait_for(lambda: thread_texts(slack, elsewhere) == ["unrelated"])
    assert thread_texts(slack, opening) == ["the plan is Tuesday", "and the venue?"]
    in_thread, fresh = upstream.chats()[1:]
    assert "echo: the plan is Tuesday" in [m["content"] for m in in_thread]
    assert [m["content"] for m in fresh] == ["echo: unrelated"]
    assert thread_texts(slack, other_channel) == []
