"""The Slack plugin against FakeSlack: signatures, reading events, and the Web API calls."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp import web

from noroshi.channels.base import ChannelError, Inbound, Received
from noroshi.channels.outbound import Outbound
from noroshi.channels.slack import SlackChannel, SlackSettings
from noroshi.errors import BadRequest, NoroshiError, Unauthorized
from noroshi.http import Request
from tests.channels.fakes.slack import FakeSlack, Post, Signature, Status, Update
from tests.channels.helpers import fast_outbound, webhook


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def channel(slack: FakeSlack) -> AsyncIterator[SlackChannel]:
    settings = SlackSettings(
        bot_token=slack.bot_token, signing_secret=slack.signing_secret, api_base=slack.api_base
    )
    plugin = SlackChannel("slack", settings, None)
    plugin.http = fast_outbound(plugin)
    yield plugin
    await plugin.http.close()


def request(headers: dict[str, str], raw: bytes) -> Request:
    return webhook("/channels/slack", headers, raw)


async def receive(
    slack: FakeSlack,
    channel: SlackChannel,
    payload: dict[str, Any],
    *,
    retry_num: int | None = None,
    signature: Signature = "good",
    timestamp: int | None = None,
) -> Received:
    headers, raw = slack.signed(
        payload, retry_num=retry_num, signature=signature, timestamp=timestamp
    )
    return await channel.receive(request(headers, raw))


async def one(slack: FakeSlack, channel: SlackChannel, payload: dict[str, Any]) -> Inbound:
    received = await receive(slack, channel, payload)
    assert len(received.messages) == 1
    return received.messages[0]


def person(thread: str = "1700000000.000100") -> Inbound:
    return Inbound(id=f"C123:{thread}", chat="C123", thread=thread, sender="U123", text="hi")


# --- signatures ----------------------------------------------------------------------------


async def test_good_signature_is_accepted_and_answered_at_once(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    received = await receive(slack, channel, slack.event("hello"))
    assert received.response.status == 200
    assert received.response.body == b""
    assert [m.text for m in received.messages] == ["hello"]


@pytest.mark.parametrize(
    ("signature", "age_s"),
    [("bad", 0), ("none", 0), ("good", 360), ("good", -360)],
    ids=["bad", "missing", "stale", "from-the-future"],
)
async def test_bad_missing_and_stale_signatures_are_refused(
    slack: FakeSlack, channel: SlackChannel, signature: Signature, age_s: int
) -> None:
    stamp = int(time.time()) - age_s
    with pytest.raises(Unauthorized):
        await receive(slack, channel, slack.event("hello"), signature=signature, timestamp=stamp)


async def test_a_body_changed_after_signing_is_refused(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    headers, raw = slack.signed(slack.event("transfer 10 coins"))
    tampered = raw.replace(b"10 coins", b"99 coins")
    assert tampered != raw
    with pytest.raises(Unauthorized):
        await channel.receive(request(headers, tampered))


async def test_a_timestamp_that_is_not_a_number_is_refused(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    headers, raw = slack.signed(slack.event("hello"))
    headers["X-Slack-Request-Timestamp"] = "soon"
    with pytest.raises(Unauthorized):
        await channel.receive(request(headers, raw))


async def test_a_signed_body_that_is_not_json_is_a_bad_request(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    headers, _ = slack.signed({})
    stamp = headers["X-Slack-Request-Timestamp"]
    raw = b"not json"
    base = f"v0:{stamp}:".encode() + raw
    digest = hmac.new(slack.signing_secret.encode(), base, hashlib.sha256).hexdigest()
    headers["X-Slack-Signature"] = f"v0={digest}"
    with pytest.raises(BadRequest):
        await channel.receive(request(headers, raw))


# --- reading events ------------------------------------------------------------------------


async def test_url_verification_echoes_the_challenge(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    payload = slack.url_verification()
    received = await receive(slack, channel, payload)
    assert received.response.status == 200
    assert json.loads(received.response.body) == {"challenge": payload["challenge"]}
    assert received.messages == []


async def test_a_top_level_message_starts_a_thread_of_its_own(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    payload = slack.event("what is 2+2?", channel="C9", user="U7")
    ts = payload["event"]["ts"]
    assert await one(slack, channel, payload) == Inbound(
        id=f"C9:{ts}", chat="C9", thread=ts, sender="U7", text="what is 2+2?"
    )


async def test_a_reply_in_a_thread_belongs_to_that_thread(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    root = slack.next_ts()
    payload = slack.event("and 3+3?", thread_ts=root)
    inbound = await one(slack, channel, payload)
    assert inbound.thread == root
    assert inbound.id == f"C123:{payload['event']['ts']}"


async def test_a_direct_message_is_one_conversation(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    inbound = await one(slack, channel, slack.event("hello", channel="D42"))
    assert (inbound.chat, inbound.thread) == ("D42", "")
    root = slack.next_ts()
    threaded = await one(slack, channel, slack.event("in a thread", channel="D42", thread_ts=root))
    assert threaded.thread == root


async def test_app_mention_is_read_without_the_mention(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    inbound = await one(slack, channel, slack.event("summarise this", mention=True))
    assert inbound.text == "summarise this"
    bot = slack.bot_user_id
    text = f"<@{bot}>: ask <@U555> and <@{bot}|noroshi> about it"
    inbound = await one(slack, channel, slack.event(text, mention=True))
    assert inbound.text == "ask <@U555> and about it"


async def test_leading_mentions_go_when_the_app_is_not_named(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    payload = slack.event("<@U0BOT0000> hello there", mention=True)
    del payload["authorizations"]
    assert (await one(slack, channel, payload)).text == "hello there"


async def test_slack_escapes_are_read_as_text(slack: FakeSlack, channel: SlackChannel) -> None:
    inbound = await one(slack, channel, slack.event("is 1 &lt; 2 &amp;&amp; 3 &gt; 2?"))
    assert inbound.text == "is 1 < 2 && 3 > 2?"


async def test_a_message_and_its_app_mention_twin_share_an_id(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    message = slack.event(f"<@{slack.bot_user_id}> hello")
    mention = slack.twin(message)
    assert mention["event"]["type"] == "app_mention"
    assert mention["event_id"] != message["event_id"]
    first = await one(slack, channel, message)
    second = await one(slack, channel, mention)
    assert first.id == second.id
    assert first == second


async def test_a_retry_is_read_again_with_the_same_id(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    payload = slack.event("hello")
    first = await receive(slack, channel, payload)
    again = await receive(slack, channel, payload, retry_num=1)
    assert again.response.status == 200
    assert [m.id for m in again.messages] == [m.id for m in first.messages]
    assert len(again.messages) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bot_id": "B999"},
        {"bot_id": "B999", "subtype": "bot_message"},
        {"subtype": "channel_join"},
        {"subtype": "message_changed"},
    ],
    ids=["bot", "bot_message", "channel_join", "message_changed"],
)
async def test_bots_and_notices_are_skipped(
    slack: FakeSlack, channel: SlackChannel, kwargs: dict[str, Any]
) -> None:
    received = await receive(slack, channel, slack.event("<@U123> has joined", **kwargs))
    assert received.response.status == 200
    assert received.messages == []


async def test_messages_without_text_or_user_are_skipped(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    only_mention = slack.event("", mention=True)
    no_user = slack.event("hello")
    del no_user["event"]["user"]
    no_text = slack.event("hello")
    del no_text["event"]["text"]
    for payload in (only_mention, no_user, no_text):
        assert (await receive(slack, channel, payload)).messages == []


async def test_a_shared_file_with_a_comment_is_read(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    inbound = await one(slack, channel, slack.event("see attached", subtype="file_share"))
    assert inbound.text == "see attached"


async def test_other_events_are_acknowledged_without_messages(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    joined = slack.event("hello")
    joined["event"] = {"type": "team_join", "user": {"id": "U9", "name": "new"}}
    limited = {"token": "t", "team_id": "T1", "type": "app_rate_limited", "minute_rate_limited": 1}
    for payload in (joined, limited):
        received = await receive(slack, channel, payload)
        assert (received.response.status, received.messages) == (200, [])


async def test_deliver_signs_requests_the_way_the_plugin_checks_them(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    """The fake's `deliver` through a real socket, as the gateway's webhook will take it."""

    async def webhook(incoming: web.Request) -> web.Response:
        raw = await incoming.read()
        try:
            received = await channel.receive(request(dict(incoming.headers), raw))
        except NoroshiError as exc:
            return web.Response(status=exc.status, body=exc.body())
        texts = [m.text for m in received.messages]
        return web.Response(
            status=received.response.status,
            body=received.response.body,
            headers={"X-Texts": json.dumps(texts)},
        )

    app = web.Application()
    app.router.add_post("/channels/slack", webhook)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/channels/slack"
    try:
        assert await slack.deliver(url, slack.event("hi")) == (200, b"")
        assert (await slack.deliver(url, slack.event("hi"), retry_num=2))[0] == 200
        status, body = await slack.deliver(url, slack.event("hi"), signature="bad")
        assert status == 401
        assert json.loads(body)["error"]["type"] == "authentication_error"
        stale = int(time.time()) - 600
        assert (await slack.deliver(url, slack.event("hi"), timestamp=stale))[0] == 401
        payload = slack.url_verification()
        status, body = await slack.deliver(url, payload)
        assert (status, json.loads(body)) == (200, {"challenge": payload["challenge"]})
    finally:
        await runner.cleanup()


# --- answering -----------------------------------------------------------------------------


async def test_send_posts_in_the_thread_with_the_bot_token(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    to = person()
    handle = await channel.send(to, "Hello!", 0)
    assert slack.posts == [Post("C123", to.thread, handle, "Hello!")]
    call = slack.calls[-1]
    assert call.method == "chat.postMessage"
    assert call.headers["authorization"] == f"Bearer {slack.bot_token}"
    assert call.headers["content-type"] == "application/json; charset=utf-8"
    assert call.body == {"channel": "C123", "thread_ts": to.thread, "text": "Hello!"}
    assert slack.thread("C123", to.thread) == ["Hello!"]


async def test_send_in_a_direct_message_posts_outside_any_thread(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    to = Inbound(id="D1:1.2", chat="D1", thread="", sender="U123", text="hi")
    await channel.send(to, "Hi there", 0)
    assert slack.calls[-1].body == {"channel": "D1", "text": "Hi there"}
    assert slack.thread("D1", None) == ["Hi there"]


async def test_send_escapes_what_slack_reads_as_markup(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    handle = await channel.send(person(), "a < b & <!channel>", 0)
    assert slack.text_of("C123", handle) == "a &lt; b &amp; &lt;!channel&gt;"


async def test_edit_updates_the_message(slack: FakeSlack, channel: SlackChannel) -> None:
    to = person()
    first = await channel.send(to, "Hel", 0)
    second = await channel.send(to, "page two", 1)
    await channel.edit(to, first, "Hello, world")
    assert slack.updates == [Update("C123", first, "Hello, world")]
    assert slack.calls[-1].method == "chat.update"
    assert slack.calls[-1].body == {"channel": "C123", "ts": first, "text": "Hello, world"}
    assert slack.text_of("C123", first) == "Hello, world"
    assert slack.thread("C123", to.thread) == ["Hello, world", "page two"]
    assert float(second) > float(first)


async def test_typing_sets_the_assistant_thread_status(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    to = person()
    await channel.typing(to)
    assert slack.statuses == [Status("C123", to.thread, "is typing…")]
    assert slack.calls[-1].headers["authorization"] == f"Bearer {slack.bot_token}"


async def test_typing_failures_are_ignored(slack: FakeSlack, channel: SlackChannel) -> None:
    slack.fail_next("assistant.threads.setStatus", status=503, times=4)
    await channel.typing(person())  # gives up after the retries, quietly
    slack.fail_next("assistant.threads.setStatus", status=200, error="channel_not_found")
    await channel.typing(person())
    assert slack.statuses == []
    calls = len(slack.calls)
    await channel.typing(person())  # refused in this channel: not asked again
    assert len(slack.calls) == calls
    await channel.typing(Inbound(id="D1:1.2", chat="D1", sender="U123", text="hi"))
    assert len(slack.calls) == calls  # no thread, no status


async def test_an_error_answer_raises_channel_error(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    slack.fail_next("chat.postMessage", status=200, error="channel_not_found")
    with pytest.raises(ChannelError, match="channel_not_found"):
        await channel.send(person(), "Hello!", 0)
    with pytest.raises(ChannelError, match="message_not_found"):
        await channel.edit(person(), "1.000001", "Hello!")
    assert slack.posts == []


async def test_a_wrong_token_raises_channel_error(slack: FakeSlack) -> None:
    settings = SlackSettings(
        bot_token="xoxb-wrong", signing_secret=slack.signing_secret, api_base=slack.api_base
    )
    plugin = SlackChannel("slack", settings, None)
    plugin.http = Outbound(plugin.retry_hint, retries=0)
    try:
        with pytest.raises(ChannelError, match="invalid_auth"):
            await plugin.send(person(), "Hello!", 0)
    finally:
        await plugin.http.close()


async def test_a_rate_limit_is_waited_out_and_the_call_succeeds(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    slack.fail_next("chat.postMessage", status=429, retry_after=1)
    slack.fail_next("chat.postMessage", status=500)
    handle = await channel.send(person(), "Hello!", 0)
    assert [c.method for c in slack.calls] == ["chat.postMessage"] * 3
    assert slack.posts == [Post("C123", person().thread, handle, "Hello!")]


async def test_a_rate_limit_that_outlasts_the_retries_raises(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    slack.fail_next("chat.update", status=429, retry_after=0, times=4)
    with pytest.raises(ChannelError) as raised:
        await channel.edit(person(), "1.000001", "Hello!")
    assert raised.value.status == 429


async def test_an_answer_that_is_not_slack_json_raises_channel_error(
    slack: FakeSlack, channel: SlackChannel
) -> None:
    channel.settings = msgspec.structs.replace(channel.settings, api_base=slack.api_base + "/x")
    with pytest.raises(ChannelError, match="HTTP 404") as raised:
        await channel.send(person(), "Hello!", 0)
    assert raised.value.status == 404


# --- settings ------------------------------------------------------------------------------


def test_settings_need_a_bot_token_and_a_signing_secret() -> None:
    settings = msgspec.convert({"bot_token": "xoxb-1", "signing_secret": "s"}, SlackSettings)
    assert (settings.api_base, settings.max_age_s) == ("https://slack.com/api", 300)
    for table in (
        {"signing_secret": "s"},
        {"bot_token": "xoxb-1"},
        {"bot_token": "xapp-1", "signing_secret": "s"},  # an app-level token, not the bot's
        {"bot_token": "xoxb-1", "signing_secret": "s", "app_token": "x"},
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(table, SlackSettings)
