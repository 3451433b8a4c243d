"""The Telegram plugin against the fake Bot API: webhook checks, parsing, offsets, answers, faults."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import msgspec
import pytest
from aiohttp import web

from noroshi.channels.base import ChannelError, Inbound
from noroshi.channels.telegram import TelegramChannel, TelegramError, TelegramSettings
from noroshi.errors import NoroshiError, Unauthorized
from noroshi.http import Request
from tests.channels.fakes.telegram import FakeTelegram
from tests.channels.helpers import fast_outbound, webhook

TOKEN = "123456:TEST-token_abcdef"
SECRET = "s3cret_Token-42"
HEADER = "x-telegram-bot-api-secret-token"

Make = Callable[..., TelegramChannel]


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN) as fake:
        yield fake


@pytest.fixture
async def make(tg: FakeTelegram) -> AsyncIterator[Make]:
    """Channels on the fake, with fast retries; closed after the test."""
    made: list[TelegramChannel] = []

    def factory(**keys: Any) -> TelegramChannel:
        values = {"token": TOKEN, "api_base": tg.api_base, "secret_token": SECRET, **keys}
        channel = TelegramChannel("tg", msgspec.convert(values, TelegramSettings), None)
        channel.http = fast_outbound(channel)
        made.append(channel)
        return channel

    yield factory
    for channel in made:
        await channel.http.close()


def webhook_call(update: dict[str, Any], secret: str | None = SECRET) -> Request:
    body = json.dumps(update).encode()
    headers = {"content-type": "application/json"}
    if secret is not None:
        headers[HEADER] = secret
    return webhook("/channels/tg", headers, body)


async def parse(channel: TelegramChannel, update: dict[str, Any]) -> list[Inbound]:
    return (await channel.receive(webhook_call(update))).messages


# --- the webhook ---------------------------------------------------------------------------


async def test_webhook_checks_the_secret_header(tg: FakeTelegram, make: Make) -> None:
    channel = make()
    update = tg.message("hello", user_id=7, username="bob")
    for secret in ("wrong", None, SECRET[:-1], ""):
        with pytest.raises(Unauthorized):
            await channel.receive(webhook_call(update, secret))

    received = await channel.receive(webhook_call(update))

    assert received.response.status == 200
    assert received.response.body == b""
    message_id = update["message"]["message_id"]
    assert received.messages == [
        Inbound(id=f"7:{message_id}", chat="7", sender="7", sender_name="bob", text="hello")
    ]


async def test_a_polling_channel_refuses_webhook_calls(tg: FakeTelegram, make: Make) -> None:
    channel = make(mode="polling")
    with pytest.raises(Unauthorized):
        await channel.receive(webhook_call(tg.message("hi"), SECRET))


async def test_a_malformed_update_is_a_bad_request(make: Make) -> None:
    channel = make()
    with pytest.raises(NoroshiError) as info:
        await parse(channel, {"update_id": "seven"})
    assert info.value.status == 400
    assert info.value.param == "update_id"


async def test_the_fake_delivers_to_a_webhook_like_telegram(tg: FakeTelegram, make: Make) -> None:
    channel = make()
    got: list[Inbound] = []
    async with serve(channel, got) as url:
        update = tg.message("over the wire")
        assert (await tg.deliver(url, update, secret="nope"))[0] == 401
        assert (await tg.deliver(url, update))[0] == 401
        assert await tg.deliver(url, update, secret=SECRET) == (200, b"")
    assert [m.text for m in got] == ["over the wire"]


@asynccontextmanager
async def serve(channel: TelegramChannel, got: list[Inbound]) -> AsyncIterator[str]:
    """The channel's webhook on a loopback server, as the gateway would mount it."""

    async def handle(request: web.Request) -> web.Response:
        call = webhook(request.path, request.headers, await request.read())
        try:
            received = await channel.receive(call)
        except NoroshiError as exc:
            return web.Response(status=exc.status, body=exc.body())
        got.extend(received.messages)
        return web.Response(status=received.response.status, body=received.response.body)

    app = web.Application()
    app.router.add_post("/channels/tg", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/channels/tg"
    finally:
        await runner.cleanup()


# --- settings ------------------------------------------------------------------------------


def test_webhook_mode_needs_a_secret_token() -> None:
    with pytest.raises(msgspec.ValidationError, match="secret_token"):
        msgspec.convert({"token": TOKEN}, TelegramSettings)
    polling = msgspec.convert({"token": TOKEN, "mode": "polling"}, TelegramSettings)
    assert polling.secret_token == ""
    assert polling.poll_timeout_s == 25


@pytest.mark.parametrize(
    ("keys", "field"),
    [
        ({"secret_token": "has spaces"}, "secret_token"),
        ({"secret_token": "x" * 257}, "secret_token"),
        ({"token": "bot123456:abc"}, "token"),
        ({"poll_timeout_s": 51}, "poll_timeout_s"),
        ({"mode": "push"}, "mode"),
        ({"tokn": "typo"}, "tokn"),
    ],
)
def test_settings_are_validated(keys: dict[str, Any], field: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=field):
        msgspec.convert({"token": TOKEN, "secret_token": SECRET, **keys}, TelegramSettings)


def test_settings_repr_hides_the_token() -> None:
    settings = TelegramSettings(token=TOKEN, secret_token=SECRET)
    assert TOKEN not in repr(settings)
    assert SECRET not in repr(settings)


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello there", "hello there"),
        ("/new", "/new"),
        ("/start", "/start"),
        ("/new@MyBot", "/new"),
        ("/new@My_Bot2 and more", "/new and more"),
        ("ask @bob about /new@MyBot", "ask @bob about /new@MyBot"),
        ("/new@MyBotx@y", "/new@MyBotx@y"),
    ],
)
async def test_text_and_commands(tg: FakeTelegram, make: Make, text: str, expected: str) -> None:
    [message] = await parse(make(), tg.message(text))
    assert message.text == expected


async def test_sender_name_falls_back_to_the_first_name(tg: FakeTelegram, make: Make) -> None:
    update = tg.message("hi", chat_id=-1001234, user_id=9, username=None, first_name="Dana")
    [message] = await parse(make(), update)
    assert (message.chat, message.sender, message.sender_name) == ("-1001234", "9", "Dana")
    assert message.id == f"-1001234:{update['message']['message_id']}"
    assert message.thread == ""


async def test_a_forum_topic_is_the_thread(tg: FakeTelegram, make: Make) -> None:
    [message] = await parse(make(), tg.message("in a topic", chat_id=-100777, thread_id=55))
    assert message.thread == "55"


async def test_a_reply_thread_outside_a_forum_is_no_thread(tg: FakeTelegram, make: Make) -> None:
    update = tg.message("a reply", chat_id=-100778)
    update["message"]["message_thread_id"] = 3  # supergroups mark reply chains this way
    [message] = await parse(make(), update)
    assert message.thread == ""


@pytest.mark.parametrize(
    "build",
    [
        lambda tg: tg.message(None),
        lambda tg: tg.message("beep", user_id=99, is_bot=True),
        lambda tg: tg.message("fixed typo", kind="edited_message"),
        lambda tg: tg.message("news", chat_id=-100555, kind="channel_post"),
        lambda tg: {"update_id": 5, "my_chat_member": {"chat": {"id": 1, "type": "private"}}},
    ],
    ids=["photo", "bot", "edited", "channel-post", "other-kind"],
)
async def test_what_is_not_text_from_a_person_is_skipped(
    tg: FakeTelegram, make: Make, build: Callable[[FakeTelegram], dict[str, Any]]
) -> None:
    received = await make().receive(webhook_call(build(tg)))
    assert received.messages == []
    assert received.response.status == 200


# --- polling -----------------------------------------------------------------------------------


async def test_poll_offsets_confirm_updates(tg: FakeTelegram, make: Make) -> None:
    channel = make(mode="polling", secret_token="", poll_timeout_s=0)
    first, second = tg.message("one"), tg.message("two")
    tg.push(first)
    tg.push(second)

    polled = await channel.poll("")
    assert [m.text for m in polled.messages] == ["one", "two"]
    assert polled.offset == str(second["update_id"] + 1)
    assert tg.allowed_updates == ["message"]

    again = await channel.poll(polled.offset)
    assert again.messages == []
    assert again.offset == polled.offset
    assert tg.confirmed_offset == second["update_id"] + 1
    # Confirmed updates are gone for good, even for a poll that starts over.
    assert (await channel.poll("")).messages == []


async def test_skipped_updates_still_advance_the_offset(tg: FakeTelegram, make: Make) -> None:
    channel = make(mode="polling", poll_timeout_s=0)
    photo, bot = tg.message(None), tg.message("beep", is_bot=True)
    tg.push(photo)
    tg.push(bot)
    polled = await channel.poll("")
    assert polled.messages == []
    assert polled.offset == str(bot["update_id"] + 1)


async def test_a_long_poll_returns_when_a_message_comes(tg: FakeTelegram, make: Make) -> None:
    channel = make(mode="polling", poll_timeout_s=30)
    waiting = asyncio.create_task(channel.poll(""))
    await tg.wait_for(lambda: "getUpdates" in tg.calls)
    tg.push(tg.message("late"))
    polled = await waiting
    assert [m.text for m in polled.messages] == ["late"]


async def test_overlapping_polls_conflict(tg: FakeTelegram, make: Make) -> None:
    channel = make(mode="polling", poll_timeout_s=30)
    polls = {asyncio.create_task(channel.poll("")), asyncio.create_task(channel.poll(""))}
    [done], [alive] = await asyncio.wait(polls, return_when=asyncio.FIRST_COMPLETED)
    with pytest.raises(ChannelError, match="terminated by other getUpdates") as info:
        done.result()
    assert info.value.status == 409
    tg.push(tg.message("for the survivor"))
    assert [m.text for m in (await alive).messages] == ["for the survivor"]


async def test_open_sets_or_deletes_the_webhook(tg: FakeTelegram, make: Make) -> None:
    await make(webhook_url="https://example.org/channels/tg").open()
    assert tg.webhook_url == "https://example.org/channels/tg"
    assert tg.webhook_secret == SECRET
    assert tg.allowed_updates == ["message"]

    polling = make(mode="polling", poll_timeout_s=0)
    with pytest.raises(ChannelError, match="webhook is active") as info:
        await polling.poll("")
    assert info.value.status == 409
    await polling.open()
    assert tg.webhook_url == ""
    assert (await polling.poll("")).messages == []

    await make().open()  # webhook mode without a URL: registered by hand, nothing to call
    assert tg.calls == ["setWebhook", "getUpdates", "deleteWebhook", "getUpdates"]


# --- answering ---------------------------------------------------------------------------------


async def inbound(channel: TelegramChannel, update: dict[str, Any]) -> Inbound:
    [message] = await parse(channel, update)
    return message


async def test_send_replies_on_the_first_page_only(tg: FakeTelegram, make: Make) -> None:
    channel = make()
    update = tg.message("question", user_id=11)
    to = await inbound(channel, update)

    first = await channel.send(to, "answer, page one", 0)
    second = await channel.send(to, "page two", 1)

    question = update["message"]["message_id"]
    assert [(s.chat_id, s.text, s.thread_id, s.reply_to) for s in tg.sent] == [
        (11, "answer, page one", None, question),
        (11, "page two", None, None),
    ]
    assert [first, second] == [str(s.message_id) for s in tg.sent]


async def test_answers_stay_in_the_forum_topic(tg: FakeTelegram, make: Make) -> None:
    channel = make()
    to = await inbound(channel, tg.message("topic question", chat_id=-100321, thread_id=8))
    await channel.typing(to)
    await channel.send(to, "topic answer", 0)
    assert [(a.chat_id, a.action, a.thread_id) for a in tg.actions] == [(-100321, "typing", 8)]
    assert [(s.chat_id, s.thread_id) for s in tg.sent] == [(-100321, 8)]


async def test_typing_in_a_private_chat(tg: FakeTelegram, make: Make) -> None:
    channel = make()
    await channel.typing(await inbound(channel, tg.message("hi", user_id=5)))
    assert [(a.chat_id, a.action, a.thread_id) for a in tg.actions] == [(5, "typing", None)]


async def test_edit_replaces_the_text(tg: FakeTelegram, make: Make) -> None:
    channel = make()
    to = await inbound(channel, tg.message("question", user_id=12))
    handle = await channel.send(to, "Thinking", 0)

    await channel.edit(to, handle, "Thinking about it")
    await channel.edit(to, handle, "Thinking about it")  # "message is not modified": fine

    assert tg.edits == [(12, int(handle), "Thinking about it")]
    assert tg.text_of(12, int(handle)) == "Thinking about it"
    assert [m.text for m in tg.messages_in(12)] == ["Thinking about it"]
    assert tg.calls.count("editMessageText") == 2


async def test_429_waits_as_telegram_asks(tg: FakeTelegram, make: Make) -> None:
    channel = make()
    hints: list[float | None] = []

    def hint(response: httpx2.Response) -> float | None:
        hints.append(channel.retry_hint(response))
        return hints[-1]

    channel.http.retry_hint = hint
    to = await inbound(channel, tg.message("question", user_id=13))
    tg.fail_next("sendMessage", 429, retry_after=3)

    handle = await channel.send(to, "after the wait", 0)

    assert hints == [3.0]
    assert tg.calls == ["sendMessage", "sendMessage"]
    assert tg.text_of(13, int(handle)) == "after the wait"


def test_retry_hint_falls_back_to_the_header(make: Make) -> None:
    channel = make()
    html = httpx2.Response(429, headers={"Retry-After": "2"}, content=b"<html>busy</html>")
    assert channel.retry_hint(html) == 2.0
    assert channel.retry_hint(httpx2.Response(502, content=b"")) is None


async def test_5xx_is_retried(tg: FakeTelegram, make: Make) -> None:
    channel = make()
    to = await inbound(channel, tg.message("question", user_id=14))
    handle = await channel.send(to, "one", 0)
    tg.fail_next("editMessageText", 502, times=2)
    tg.fail_next("sendChatAction", 500)

    await channel.edit(to, handle, "one two")
    await channel.typing(to)

    assert tg.text_of(14, int(handle)) == "one two"
    assert tg.calls.count("editMessageText") == 3
    assert len(tg.actions) == 1


async def test_errors_name_telegram_s_reason_but_never_the_token(
    tg: FakeTelegram, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="noroshi")
    channel = make()
    stranger = Inbound(id="404:1", chat="404", sender="404", text="hi")
    to = await inbound(channel, tg.message("question", user_id=15))

    with pytest.raises(TelegramError) as refused:
        await channel.send(stranger, "hello?", 0)
    tg.fail_next("sendMessage", 500, times=4)  # retries=3: four tries
    with pytest.raises(ChannelError) as exhausted:
        await channel.send(to, "hello?", 0)
    tg.fail_next("sendMessage", 403)
    with pytest.raises(ChannelError, match="blocked by the user") as blocked:
        await channel.send(to, "hello?", 0)

    assert refused.value.status == 400
    assert "chat not found" in str(refused.value)
    assert exhausted.value.status == 500
    for exc in (refused.value, exhausted.value, blocked.value):
        assert TOKEN not in f"{exc} {exc!r} {exc.__cause__!r} {exc.__context__!r}"
    assert "sendMessage" in caplog.text
    assert TOKEN not in caplog.text


async def test_a_wrong_token_is_refused(tg: FakeTelegram, make: Make) -> None:
    channel = make(token="999:wrong")
    to = await inbound(channel, tg.message("question", user_id=16))
    with pytest.raises(ChannelError, match="Unauthorized") as info:
        await channel.typing(to)
    assert info.value.status == 401
    assert "999:wrong" not in str(info.value)


async def test_a_body_that_is_not_the_bot_api_is_an_error(make: Make) -> None:
    channel = make()
    channel.settings = msgspec.structs.replace(
        channel.settings, api_base=channel.settings.api_base + "/nowhere"
    )
    to = Inbound(id="1:1", chat="1", sender="1", text="hi")
    with pytest.raises(ChannelError, match="not a Bot API answer"):
        await channel.typing(to)
