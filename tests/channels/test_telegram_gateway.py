"""Telegram through the whole gateway: a real server, the fake Bot API, a fake model. The
webhook's secret, long polling whose offset survives restarts and a SIGKILL, answers streamed
by edits, and `/new`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from noroshi.app import App
from tests.channels.fakes.telegram import FakeTelegram, Sent
from tests.channels.helpers import FAST_CHANNEL_KEYS
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.processes import kill_tree, start_server, stop

SECRET = "hook-secret_1"
CHANNEL = """
[[channels]]
type = "telegram"
allow_users = ["42"]
token = "{token}"
api_base = "{api_base}"
mode = "{mode}"
secret_token = "{secret}"
poll_timeout_s = 1
{fast}lease_s = 1
"""


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


def config_text(upstream: FakeOpenAI, telegram: FakeTelegram, mode: str = "webhook") -> str:
    channel = CHANNEL.format(
        token=telegram.token,
        api_base=telegram.api_base,
        mode=mode,
        secret=SECRET,
        fast=FAST_CHANNEL_KEYS,
    )
    return openai_config(upstream.base_url, extra=channel)


def answers(telegram: FakeTelegram, update: dict[str, Any]) -> list[Sent]:
    message = update["message"]
    return [
        s
        for s in telegram.messages_in(message["chat"]["id"])
        if s.reply_to == message["message_id"]
    ]


async def answered(telegram: FakeTelegram, update: dict[str, Any], text: str) -> Sent:
    await telegram.wait_for(lambda: [s.text for s in answers(telegram, update)] == [text])
    return answers(telegram, update)[0]


@pytest.mark.parametrize("serve", ["noroshi"], indirect=True)
async def test_the_webhook_checks_its_secret_and_streams_the_answer(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, telegram: FakeTelegram
) -> None:
    answer = "Tokyo is the capital of Japan, and its largest city by far."
    upstream.script(Reply(text=answer, chunks=8, token_delay=0.08))
    base = await serve(write_config(tmp_path, config_text(upstream, telegram)))
    hook = f"{base}/channels/telegram"
    forged = telegram.message("echo: forged")
    assert (await telegram.deliver(hook, forged, secret="wrong"))[0] == 401
    assert (await telegram.deliver(hook, forged))[0] == 401  # no header at all
    update = telegram.message("What is the capital of Japan?")
    status, _ = await telegram.deliver(hook, update, secret=SECRET)
    assert status == 200
    await answered(telegram, update, answer)
    chat_id = update["message"]["chat"]["id"]
    [message_id] = [s.message_id for s in answers(telegram, update)]
    shown = [text for chat, mid, text in telegram.edits if (chat, mid) == (chat_id, message_id)]
    assert any(t.endswith("…") for t in shown), "the answer grew by edits"
    assert [a.action for a in telegram.actions if a.chat_id == chat_id] >= ["typing"]
    assert len(upstream.chats()) == 1  # the forged update reached no model


@pytest.mark.parametrize("serve", ["noroshi"], indirect=True)
async def test_new_forgets_the_conversation_and_a_busy_api_is_waited_for(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, telegram: FakeTelegram
) -> None:
    base = await serve(write_config(tmp_path, config_text(upstream, telegram)))
    hook = f"{base}/channels/telegram"
    telegram.fail_next("sendMessage", status=429, retry_after=1)
    telegram.fail_next("sendMessage", status=502)
    steps = [
        ("echo: my name is Ada", "my name is Ada"),
        ("/new@NoroshiBot", "Started a new conversation."),
        ("echo: what is my name?", "what is my name?"),
    ]
    for text, answer in steps:
        update = telegram.message(text)
        await telegram.deliver(hook, update, secret=SECRET)
        await answered(telegram, update, answer)
    first, last = upstream.chats()
    assert any(m["content"] == "echo: my name is Ada" for m in first)
    assert [m["role"] for m in last] == ["user"]  # nothing from before /new
    assert telegram.calls.count("sendMessage") == 5  # 429 and 502 tried again


async def test_long_polling_neither_loses_nor_repeats_across_restarts(
    tmp_path: Path, upstream: FakeOpenAI, telegram: FakeTelegram
) -> None:
    text = config_text(upstream, telegram, mode="polling")
    app = App(write_config(tmp_path, text))
    await app.startup()
    first = telegram.message("echo: first")
    telegram.push(first)
    await answered(telegram, first, "first")
    await app.shutdown()
    second = telegram.message("echo: while the server was down")
    telegram.push(second)
    app = App(write_config(tmp_path, text))
    await app.startup()
    await answered(telegram, second, "while the server was down")
    await telegram.wait_for(lambda: telegram.confirmed_offset == second["update_id"] + 1)
    await app.shutdown()
    assert len(answers(telegram, first)) == 1
    assert len(upstream.chats()) == 2


async def test_a_killed_server_answers_once_after_its_restart(
    tmp_path: Path, upstream: FakeOpenAI, telegram: FakeTelegram
) -> None:
    upstream.script(Reply(text=" ".join(["once"] * 40), chunks=40, token_delay=0.1))
    text = config_text(upstream, telegram, mode="polling")
    proc, _ = await start_server(tmp_path, text)
    cut = telegram.message("a long answer, please")
    telegram.push(cut)

    def edited() -> bool:  # an edit: the answer's message is sent, and its id stored
        return any(
            mid == sent.message_id
            for sent in answers(telegram, cut)
            for _, mid, _ in telegram.edits
        )

    await telegram.wait_for(edited)
    kill_tree(proc.pid)
    await proc.wait()
    upstream.script(Reply(text="answered after the restart"))
    meanwhile = telegram.message("echo: are you back?")
    telegram.push(meanwhile)
    proc, _ = await start_server(tmp_path, text)
    try:
        await answered(telegram, cut, "answered after the restart")
        await answered(telegram, meanwhile, "are you back?")
    finally:
        proc.terminate()
        await stop(proc)
