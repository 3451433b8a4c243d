"""Discord through the whole gateway: signed interactions to a real server, a deferred answer
at once, then the answer streamed into the original response and its follow-ups."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.channels.fakes.discord import FakeDiscord
from tests.channels.helpers import FAST_CHANNEL_KEYS
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply

pytestmark = pytest.mark.parametrize("serve", ["noroshi"], indirect=True)

CHANNEL = """
[[channels]]
type = "discord"
allow_users = ["{user}"]
application_id = "{app}"
public_key = "{key}"
api_base = "{api_base}"
{fast}"""


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


@pytest.fixture
async def hook(serve: Serve, tmp_path: Path, upstream: FakeOpenAI, discord: FakeDiscord) -> str:
    channel = CHANNEL.format(
        user=discord.user_id,
        app=discord.application_id,
        key=discord.public_key_hex,
        api_base=discord.api_base,
        fast=FAST_CHANNEL_KEYS,
    )
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url, extra=channel)))
    return f"{base}/channels/discord"


async def test_ping_and_a_deferred_answer_streamed_into_the_original(
    hook: str, upstream: FakeOpenAI, discord: FakeDiscord
) -> None:
    assert await discord.deliver(hook, discord.ping()) == (200, {"type": 1})
    answer = "Rust's borrow checker enforces one writer or many readers at a time."
    upstream.script(Reply(text=answer, chunks=8, token_delay=0.08))
    command = discord.command("What does the borrow checker do?")
    assert await discord.deliver(hook, command) == (200, {"type": 5})
    token = command["token"]
    await discord.wait_for(lambda: discord.original(token) == answer)
    shown = [e.content for e in discord.edits if e.token == token]
    assert any(t.endswith("…") for t in shown), "the answer grew by edits"
    assert discord.followups(token) == []
    assert upstream.chats()[0][-1]["content"] == "What does the borrow checker do?"


async def test_forged_stale_and_replayed_interactions(
    hook: str, upstream: FakeOpenAI, discord: FakeDiscord
) -> None:
    forged = discord.command("echo: forged")
    assert (await discord.deliver(hook, forged, signature="bad"))[0] == 401
    assert (await discord.deliver(hook, forged, signature="none"))[0] == 401
    tampered = discord.command("echo: tampered")
    body = discord.signed(tampered)[1].replace(b"tampered", b"hijacked")
    assert (await discord.deliver(hook, tampered, body_override=body))[0] == 401
    stale = int(time.time()) - 600
    assert (await discord.deliver(hook, forged, timestamp=stale))[0] == 401
    command = discord.command("echo: once")
    for _ in range(2):  # delivered twice: the same interaction id
        assert (await discord.deliver(hook, command))[0] == 200
    await discord.wait_for(lambda: discord.original(command["token"]) == "once")
    stranger = discord.command("echo: hello?", user_id="999")
    assert (await discord.deliver(hook, stranger))[0] == 200
    later = discord.command("echo: later")
    await discord.deliver(hook, later)
    await discord.wait_for(lambda: discord.original(later["token"]) == "later")
    assert len(upstream.chats()) == 2  # once, later: nothing forged, repeated or not allowed
    assert not discord.original(stranger["token"])


async def test_new_and_a_long_answer_in_follow_ups(
    hook: str, upstream: FakeOpenAI, discord: FakeDiscord
) -> None:
    first = discord.command("echo: the secret word is heron")
    await discord.deliver(hook, first)
    await discord.wait_for(lambda: discord.original(first["token"]) == "the secret word is heron")
    new = discord.command(name="new")
    await discord.deliver(hook, new)
    await discord.wait_for(lambda: discord.original(new["token"]) == "Started a new conversation.")
    words = " ".join(f"word{i:04d}" for i in range(450))  # 4,049 characters
    upstream.script(Reply(text=words, chunks=20))
    long = discord.command("Say a lot.")
    await discord.deliver(hook, long)
    token = long["token"]

    def whole() -> str:
        parts = [discord.original(token) or ""]
        return " ".join(parts + [m["content"] for m in discord.followups(token)])

    await discord.wait_for(lambda: whole() == words)
    assert len(discord.followups(token)) == 2
    assert [m["role"] for m in upstream.chats()[-1]] == ["user"]  # nothing from before /new
