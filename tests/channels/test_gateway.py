"""The channel gateway end to end, through the user-written `memo` channel: a real server, a
fake model upstream, and the memo chat service on loopback. What holds here holds for every
channel, since the gateway does it all and a plugin only speaks its platform."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from noroshi.app import App
from noroshi.client import AsyncClient
from noroshi.config import ConfigError
from noroshi.wire.admin import UsageRecord
from tests.channels.conftest import USER_PLUGINS
from tests.channels.memo_server import MemoServer
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.processes import kill_tree, start_server, stop

own_server = pytest.mark.parametrize(
    "serve", ["noroshi"], indirect=True
)  # the gateway is not the adapter

CHANNEL = """
[[agents]]
name = "helper"
model = "fast"
system = "You help on chat."

[[channels]]
type = "memo"
agent = "helper"
allow_users = ["alice", "bob"]
url = "{url}"
secret = "memo-secret"
backoff_base_s = 0.01
max_retry_after_s = 0.5
edit_interval_s = {interval}
{more}
"""


def config_text(
    upstream: FakeOpenAI, memo: MemoServer, more: str = "", interval: float = 0.05
) -> str:
    extra = CHANNEL.format(url=memo.url, more=more, interval=interval)
    return openai_config(upstream.base_url, extra=extra)


@pytest.fixture
async def memo() -> AsyncIterator[MemoServer]:
    async with MemoServer() as server:
        yield server


async def webhook_of(serve: Serve, tmp_path: Path, text: str) -> str:
    base = await serve(write_config(tmp_path, text))
    return f"{base}/channels/memo"


def said(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


@own_server
async def test_an_answer_streams_into_the_chat_by_edits(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    answer = "The weather is fine today, and tomorrow looks fine as well."
    upstream.script(Reply(text=answer, chunks=8, token_delay=0.08))
    hook = await webhook_of(serve, tmp_path, config_text(upstream, memo))
    message = memo.message("How is the weather?", chat="c1")
    assert (await memo.deliver(hook, message))[0] == 204
    await memo.answered(message, answer)
    [reply] = memo.answers(message["id"])
    assert (reply.chat, reply.reply_to) == ("c1", message["id"])
    partial = [t for t in reply.edits if t.endswith("…")]
    assert partial, "the answer was shown while it was being written"
    assert all(answer.startswith(t.removesuffix("…").strip()) for t in partial)
    assert said(upstream.chats()[0]) == [
        ("system", "You help on chat."),
        ("user", "How is the weather?"),
    ]


@own_server
async def test_a_wrong_secret_is_refused_and_nothing_is_answered(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    hook = await webhook_of(serve, tmp_path, config_text(upstream, memo))
    forged = memo.message("echo: forged")
    status, body = await memo.deliver(hook, forged, secret="guess")
    assert status == 401
    assert "x-memo-secret" in body
    real = memo.message("echo: real")
    assert (await memo.deliver(hook, real))[0] == 204
    await memo.answered(real, "real")
    assert memo.answers(forged["id"]) == []
    assert len(upstream.chats()) == 1


@own_server
async def test_the_webhook_needs_no_api_key_when_keys_are_on(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    """A platform holds no noroshi key: the plugin's own check guards the webhook."""
    text = config_text(upstream, memo) + '[auth]\nmaster_key = "sk-master-0123456789"\n'
    hook = await webhook_of(serve, tmp_path, text)
    message = memo.message("echo: keys are on")
    assert (await memo.deliver(hook, message))[0] == 204
    await memo.answered(message, "keys are on")
    assert (await memo.deliver(hook, memo.message("echo: forged"), secret="x"))[0] == 401


@own_server
async def test_a_redelivered_message_is_answered_once(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    hook = await webhook_of(serve, tmp_path, config_text(upstream, memo))
    first = memo.message("echo: once")
    statuses = await asyncio.gather(*(memo.deliver(hook, first) for _ in range(3)))
    assert [s for s, _ in statuses] == [204, 204, 204]  # each delivery is acknowledged
    await memo.answered(first, "once")
    assert (await memo.deliver(hook, first))[0] == 204  # again, after the answer
    later = memo.message("echo: later")
    await memo.deliver(hook, later)
    await memo.answered(later, "later")
    assert len(memo.answers(first["id"])) == 1
    assert len(upstream.chats()) == 2


@own_server
async def test_only_allowed_people_and_chats_are_answered(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    text = config_text(upstream, memo, more='allow_chats = ["team"]')
    hook = await webhook_of(serve, tmp_path, text)
    stranger = memo.message("echo: let me in", user="mallory", chat="c9")
    colleague = memo.message("echo: team chat", user="carol", chat="team")
    friend = memo.message("echo: hi", user="bob", chat="c2")
    for message in (stranger, colleague, friend):
        assert (await memo.deliver(hook, message))[0] == 204
    await memo.answered(friend, "hi")
    await memo.answered(colleague, "team chat")
    assert memo.answers(stranger["id"]) == []
    assert len(upstream.chats()) == 2


@own_server
async def test_a_conversation_keeps_its_session_and_queues_its_messages(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    upstream.script(
        Reply(text="first answer", chunks=4, token_delay=0.1), Reply(text="second answer")
    )
    hook = await webhook_of(serve, tmp_path, config_text(upstream, memo))
    one, two = memo.message("one"), memo.message("two")
    await memo.deliver(hook, one)
    await memo.deliver(hook, two)  # while the first is being answered
    await memo.answered(two, "second answer")
    assert memo.answer_text(one["id"]) == "first answer"
    # the second run began after the first had ended, in the same session
    assert said(upstream.chats()[1])[1:] == [
        ("user", "one"),
        ("assistant", "first answer"),
        ("user", "two"),
    ]
    other_chat = memo.message("echo: elsewhere", chat="c2")
    in_thread = memo.message("echo: in a thread", chat="c1", thread="t1")
    for message in (other_chat, in_thread):
        await memo.deliver(hook, message)
    await memo.answered(in_thread, "in a thread")
    await memo.answered(other_chat, "elsewhere")
    for messages in upstream.chats()[2:]:  # sessions of their own
        assert len(messages) == 2
    assert memo.answers(in_thread["id"])[0].thread == "t1"


@own_server
async def test_new_starts_a_fresh_session(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    hook = await webhook_of(serve, tmp_path, config_text(upstream, memo))
    for text, answer in (
        ("echo: remember me", "remember me"),
        ("/new", "Started a new conversation."),
        ("echo: who am I", "who am I"),
    ):
        message = memo.message(text)
        await memo.deliver(hook, message)
        await memo.answered(message, answer)
    first, last = upstream.chats()
    assert ("user", "echo: remember me") in said(first)
    assert said(last) == [("system", "You help on chat."), ("user", "echo: who am I")]


@own_server
async def test_a_long_answer_continues_in_new_messages(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    words = " ".join(f"word{i}" for i in range(40))
    upstream.script(Reply(text=words, chunks=10))
    hook = await webhook_of(serve, tmp_path, config_text(upstream, memo, more="max_text = 50"))
    message = memo.message("talk at length")
    await memo.deliver(hook, message)
    await memo.wait_for(lambda: " ".join(m.text for m in memo.answers(message["id"])) == words)
    pages = memo.answers(message["id"])
    assert len(pages) >= 6
    assert all(len(p.text) <= 50 for p in pages)


@own_server
async def test_a_busy_platform_is_tried_again(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    hook = await webhook_of(serve, tmp_path, config_text(upstream, memo, interval=5))
    memo.fail_next(429, retry_after=0.05)
    memo.fail_next(503)
    message = memo.message("echo: got through")
    await memo.deliver(hook, message)
    await memo.answered(message, "got through")
    assert memo.calls.count("send") == 3  # 429, 503, then the answer
    assert len(memo.answers(message["id"])) == 1


@own_server
async def test_a_channel_run_is_billed_to_the_channel(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    hook = await webhook_of(serve, tmp_path, config_text(upstream, memo))
    message = memo.message("echo: billed")
    await memo.deliver(hook, message)
    await memo.answered(message, "billed")
    async with AsyncClient(hook.removesuffix("/channels/memo")) as client:
        for _ in range(100):
            listed = (await client.admin.usage()).data
            records = [r for r in listed if isinstance(r, UsageRecord)]
            if records:
                break
            await asyncio.sleep(0.05)
    [record] = records
    assert (record.route, record.model) == ("/channels/memo", "fast")
    assert record.prompt_tokens > 0


# --- long polling, restarts ------------------------------------------------------------------


async def _answered(memo: MemoServer, message: dict[str, Any], text: str) -> None:
    await memo.answered(message, text)


async def test_polling_keeps_its_offset_across_restarts(
    tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    text = config_text(upstream, memo, more='mode = "polling"')
    app = App(write_config(tmp_path, text))
    await app.startup()
    first = memo.say("echo: before")
    await memo.answered(first, "before")
    await app.shutdown()
    second = memo.say("echo: while away")
    app = App(write_config(tmp_path, text))
    await app.startup()
    await memo.answered(second, "while away")
    await memo.wait_for(lambda: memo.confirmed == 2)
    await app.shutdown()
    assert len(memo.answers(first["id"])) == 1
    assert len(upstream.chats()) == 2


async def test_a_shutdown_in_the_middle_of_a_send_keeps_its_record(
    tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    """Stopped while a platform makes the answer's message: the stop waits for its id, so the
    restart edits that message instead of sending the answer again."""
    text = config_text(upstream, memo, more='mode = "polling"')
    app = App(write_config(tmp_path, text))
    await app.startup()
    memo.send_delay = 0.3
    first = memo.say("echo: mid-send")
    await memo.wait_for(lambda: bool(memo.answers(first["id"])))  # made; its id not back yet
    await app.shutdown()
    memo.send_delay = 0.0
    app = App(write_config(tmp_path, text))
    await app.startup()
    second = memo.say("echo: after")
    await memo.answered(second, "after")
    await app.shutdown()
    assert [m.text for m in memo.answers(first["id"])] == ["mid-send"]
    assert len(upstream.chats()) == 2  # the finished run's answer was not asked for again


async def test_a_poll_that_repeats_messages_answers_them_once(
    tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    """The offset is saved after the messages: a crash between the two repeats the poll, and
    the inbox knows the messages."""
    text = config_text(upstream, memo, more='mode = "polling"')
    app = App(write_config(tmp_path, text))
    await app.startup()
    first = memo.say("echo: one")
    await memo.answered(first, "one")
    await app.shutdown()
    with sqlite3.connect(tmp_path / "data" / "noroshi.sqlite3") as db:
        db.execute("UPDATE channel_state SET poll_offset = ''")  # as if it was never saved
    app = App(write_config(tmp_path, text))
    await app.startup()
    second = memo.say("echo: two")
    await memo.answered(second, "two")
    await app.shutdown()
    assert len(memo.answers(first["id"])) == 1
    assert len(upstream.chats()) == 2


async def test_killed_mid_answer_the_answer_is_finished_in_place(
    tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    """SIGKILL while an answer streams: on restart the message is answered again, into the
    message already sent, and what arrived meanwhile is answered too."""
    upstream.script(Reply(text=" ".join(["slowly"] * 40), chunks=40, token_delay=0.1))
    text = config_text(upstream, memo, more='mode = "polling"\nlease_s = 1')
    path = [str(USER_PLUGINS), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {"PYTHONPATH": os.pathsep.join(path)}  # the plugin, and the tree under test
    proc, _ = await start_server(tmp_path, text, env)
    cut = memo.say("tell me a long story")
    # an edit: the answer has begun, and its message's id is stored (killed between the send
    # and the store, a second message would follow: docs/channels.md names that gap)
    await memo.wait_for(lambda: any(m.edits for m in memo.answers(cut["id"])))
    kill_tree(proc.pid)
    await proc.wait()
    upstream.script(Reply(text="the story, told again"))
    meanwhile = memo.say("echo: and then?")
    proc, _ = await start_server(tmp_path, text, env)
    try:
        await memo.answered(cut, "the story, told again")
        await memo.answered(meanwhile, "and then?")
    finally:
        proc.terminate()
        await stop(proc)
    assert len(memo.answers(cut["id"])) == 1  # one message, edited: answered at most once
    assert len(memo.answers(meanwhile["id"])) == 1


async def test_a_channel_lost_to_another_replica_stops_answering_here(
    tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer
) -> None:
    """A replica that finds its lease taken (it stalled past `lease_s`) stops its runs: the
    new holder answers, into the same message."""
    upstream.script(Reply(text=" ".join(["slowly"] * 40), chunks=40, token_delay=0.1))
    app = App(write_config(tmp_path, config_text(upstream, memo, 'mode = "polling"\nlease_s = 1')))
    await app.startup()
    assert app.channels is not None
    line = app.channels.lines["memo"]
    cut = memo.say("tell me a long story")
    await memo.wait_for(lambda: any(m.edits for m in memo.answers(cut["id"])))
    await app.db.execute(
        "UPDATE channel_state SET owner = 'elsewhere', lease_until = ?", (time.time() + 3600,)
    )
    await memo.wait_for(lambda: not line.owned and not app.runner.by_session)
    upstream.script(Reply(text="finished by the next holder"))
    await app.db.execute("UPDATE channel_state SET lease_until = 0")  # that replica is gone
    await memo.answered(cut, "finished by the next holder")
    await app.shutdown()
    assert len(memo.answers(cut["id"])) == 1


# --- replicas sharing PostgreSQL --------------------------------------------------------------


@own_server
async def test_replicas_share_the_inbox_and_one_answers(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer, postgres_url: str
) -> None:
    text = config_text(upstream, memo, more="lease_s = 1") + f'[storage]\nurl = "{postgres_url}"\n'
    hooks = [await webhook_of(serve, tmp_path, text) for _ in range(2)]
    messages = [memo.message(f"echo: number {i}", chat=f"c{i % 2}") for i in range(4)]
    for i, message in enumerate(messages):  # each to one replica, and again to the other
        for hook in (hooks[i % 2], hooks[1 - i % 2]):
            assert (await memo.deliver(hook, message))[0] == 204
    for i, message in enumerate(messages):
        await memo.answered(message, f"number {i}")
    assert [len(memo.answers(m["id"])) for m in messages] == [1, 1, 1, 1]
    assert len(upstream.chats()) == 4


async def test_another_replica_takes_the_channel_over(
    tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer, postgres_url: str
) -> None:
    text = config_text(upstream, memo, more='mode = "polling"\nlease_s = 1')
    text += f'[storage]\nurl = "{postgres_url}"\n'
    apps = [App(write_config(tmp_path, text)) for _ in range(2)]
    for app in apps:
        await app.startup()
    first = memo.say("echo: first")
    await memo.answered(first, "first")
    [holder] = [a for a in apps if a.channels is not None and a.channels.lines["memo"].owned]
    await holder.shutdown()  # hands the lease over
    [other] = [a for a in apps if a is not holder]
    second = memo.say("echo: second")
    await memo.answered(second, "second")
    await other.shutdown()
    assert len(memo.answers(first["id"])) == 1
    assert len(upstream.chats()) == 2


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("more", "problem"),
    [
        ('[[channels]]\ntype = "nope"', "channels.1.type: no channel plugin 'nope' (installed:"),
        ('[[channels]]\ntype = "memo"\nurl = "http://x"', "channels.1: "),
        (
            '[[channels]]\ntype = "memo"\nname = "b"\nurl = "http://x"\nsecret = "s"\nagent = "x"',
            "channels.1.agent: no agent named 'x'",
        ),
        (
            '[[channels]]\ntype = "memo"\nurl = "http://x"\nsecret = "s"',
            "channels.1.name: the name 'memo' is used twice",
        ),
        (
            '[[channels]]\ntype = "memo"\nname = "b"\nurl = "http://x"\nsecret = "s"\ntoken = "t"',
            "channels.1: object contains unknown field `token`",
        ),
        (
            '[server]\nrole = "edge"\ncores = ["http://127.0.0.1:9"]\n'
            '[internal]\nsecret = "0123456789abcdef0123"',
            "channels: channels run where agents run; give them to a core",
        ),
    ],
)
def test_channel_config_errors_name_the_key(
    tmp_path: Path, upstream: FakeOpenAI, memo: MemoServer, more: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        write_config(tmp_path, config_text(upstream, memo, more=f"\n{more}"))
    assert str(caught.value).startswith(problem)
