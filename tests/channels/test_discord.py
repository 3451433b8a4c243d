"""The Discord channel against a fake Discord: signatures, interactions, webhooks, retries."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import msgspec
import pytest
from aiohttp import web

from noroshi.channels.base import ChannelError, Inbound
from noroshi.channels.discord import DiscordChannel, DiscordSettings
from noroshi.errors import BadRequest, Unauthorized
from noroshi.http import Request
from tests.channels.fakes.discord import FakeDiscord
from tests.channels.helpers import fast_outbound, webhook

APP = "1100000000000000001"


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(application_id=APP) as fake:
        yield fake


@pytest.fixture
async def channel(discord: FakeDiscord) -> AsyncIterator[DiscordChannel]:
    settings = DiscordSettings(
        application_id=APP, public_key=discord.public_key_hex, api_base=discord.api_base
    )
    plugin = DiscordChannel("discord", settings, None)
    plugin.http = fast_outbound(plugin)
    yield plugin
    await plugin.http.close()


def as_request(headers: dict[str, str], body: bytes) -> Request:
    return webhook("/channels/discord", headers, body)


async def receive(
    discord: FakeDiscord, channel: DiscordChannel, interaction: dict[str, Any], **how: Any
) -> tuple[dict[str, Any], list[Inbound]]:
    """Deliver like Discord; the fake learns the answer, as it would over the wire."""
    received = await channel.receive(as_request(*discord.signed(interaction, **how)))
    answer = json.loads(received.response.body)
    discord.acknowledge(interaction, answer)
    return answer, received.messages


async def asked(discord: FakeDiscord, channel: DiscordChannel, prompt: str = "hi") -> Inbound:
    _, messages = await receive(discord, channel, discord.command(prompt))
    return messages[0]


# --- inbound -----------------------------------------------------------------------------------


async def test_ping_is_answered_with_pong(discord: FakeDiscord, channel: DiscordChannel) -> None:
    answer, messages = await receive(discord, channel, discord.ping())
    assert answer == {"type": 1}
    assert messages == []


async def test_command_in_a_guild_is_deferred_and_read(
    discord: FakeDiscord, channel: DiscordChannel
) -> None:
    interaction = discord.command("what is noroshi?", channel_id="777", user_id="888")
    answer, messages = await receive(discord, channel, interaction)
    assert answer == {"type": 5}
    assert messages == [
        Inbound(
            id=interaction["id"],
            chat="777",
            sender="888",
            sender_name="Alice",
            text="what is noroshi?",
            reply={"token": interaction["token"]},
        )
    ]


async def test_command_in_a_dm_reads_the_user(
    discord: FakeDiscord, channel: DiscordChannel
) -> None:
    interaction = discord.command(
        "hello", guild=False, user_id="999", global_name=None, username="bob"
    )
    assert "member" not in interaction
    answer, messages = await receive(discord, channel, interaction)
    assert answer == {"type": 5}
    (message,) = messages
    assert (message.sender, message.sender_name, message.chat) == ("999", "bob", discord.channel_id)
    assert message.text == "hello"


async def test_another_command_arrives_as_its_slash_name(
    discord: FakeDiscord, channel: DiscordChannel
) -> None:
    _, messages = await receive(discord, channel, discord.command(name="new"))
    assert messages[0].text == "/new"


async def test_the_prompt_may_sit_in_a_subcommand(
    discord: FakeDiscord, channel: DiscordChannel
) -> None:
    interaction = discord.command()
    interaction["data"]["options"] = [
        {"name": "quick", "type": 1, "options": [{"name": "prompt", "type": 3, "value": "deep"}]}
    ]
    _, messages = await receive(discord, channel, interaction)
    assert messages[0].text == "deep"


async def test_component_interactions_are_refused_naming_type(
    discord: FakeDiscord, channel: DiscordChannel
) -> None:
    interaction = discord.command("x") | {"type": 3}
    with pytest.raises(BadRequest) as caught:
        await channel.receive(as_request(*discord.signed(interaction)))
    assert caught.value.param == "type"


@pytest.mark.parametrize(
    "how",
    [
        {"signature": "bad"},
        {"signature": "none"},
        {"body_override": b'{"type":1,"id":"1"}'},
        {"timestamp": int(time.time()) - 3600},
        {"timestamp": int(time.time()) + 3600},
    ],
    ids=["bad-signature", "missing-headers", "tampered-body", "stale", "from-the-future"],
)
async def test_unverified_requests_are_unauthorized(
    discord: FakeDiscord, channel: DiscordChannel, how: dict[str, Any]
) -> None:
    with pytest.raises(Unauthorized):
        await channel.receive(as_request(*discord.signed(discord.ping(), **how)))


async def test_a_signature_that_is_not_hex_is_unauthorized(
    discord: FakeDiscord, channel: DiscordChannel
) -> None:
    headers, body = discord.signed(discord.ping())
    headers["x-signature-ed25519"] = "zz" * 64
    with pytest.raises(Unauthorized, match="invalid request signature"):
        await channel.receive(as_request(headers, body))


async def test_deliver_posts_over_http_like_discord(
    discord: FakeDiscord, channel: DiscordChannel
) -> None:
    """The fake's `deliver`, which end-to-end tests use, against a bare endpoint."""

    async def endpoint(request: web.Request) -> web.Response:
        call = webhook(request.path, request.headers, await request.read())
        try:
            received = await channel.receive(call)
        except Unauthorized as exc:
            return web.Response(body=exc.body(), status=exc.status, content_type="application/json")
        answer = received.response
        return web.Response(body=answer.body, status=answer.status, content_type="application/json")

    app = web.Application()
    app.router.add_post("/channels/discord", endpoint)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/channels/discord"
    try:
        interaction = discord.command("over the wire")
        assert await discord.deliver(url, discord.ping()) == (200, {"type": 1})
        status, error = await discord.deliver(url, interaction, signature="bad")
        assert status == 401
        assert error["error"]["message"] == "invalid request signature"
        assert discord.original(interaction["token"]) is None  # not answered: no webhook yet
        assert await discord.deliver(url, interaction) == (200, {"type": 5})
        assert discord.original(interaction["token"]) == ""  # deferred: "thinking…"
        await channel.send(await asked(discord, channel), "streamed", 0)
        await discord.wait_for(lambda: [e.content for e in discord.edits] == ["streamed"])
    finally:
        await runner.cleanup()


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "abc", "g" * 64, "ab" * 33])
def test_settings_refuse_a_bad_public_key(key: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="public_key"):
        msgspec.convert({"application_id": APP, "public_key": key}, DiscordSettings)


def test_settings_defaults_and_unknown_keys() -> None:
    settings = msgspec.convert({"application_id": APP, "public_key": "ab" * 32}, DiscordSettings)
    assert (settings.command, settings.api_base) == ("ask", "https://discord.com/api/v10")
    with pytest.raises(msgspec.ValidationError, match="token"):
        msgspec.convert(
            {"application_id": APP, "public_key": "ab" * 32, "token": "x"}, DiscordSettings
        )


# --- outbound ----------------------------------------------------------------------------------


async def test_page_zero_edits_the_original_response(
    discord: FakeDiscord, channel: DiscordChannel
) -> None:
    message = await asked(discord, channel)
    token = message.reply["token"]
    assert discord.original(token) == ""  # deferred: "thinking…"
    assert await channel.send(message, "Hello @everyone", 0) == "@original"
    await channel.edit(message, "@original", "Hello @everyone, again")
    assert discord.original(token) == "Hello @everyone, again"
    assert [e.content for e in discord.edits] == ["Hello @everyone", "Hello @everyone, again"]
    assert all(c.body["allowed_mentions"] == {"parse": []} for c in discord.calls)


async def test_later_pages_are_follow_ups_that_can_be_edited(
    discord: FakeDiscord, channel: DiscordChannel
) -> None:
    message = await asked(discord, channel)
    token = message.reply["token"]
    await channel.send(message, "page one", 0)
    handle = await channel.send(message, "page two", 1)
    (followup,) = discord.followups(token)
    assert handle == followup["id"]
    assert followup["author"]["bot"] is True
    await channel.edit(message, handle, "page two, finished")
    assert [m["content"] for m in discord.followups(token)] == ["page two, finished"]
    assert discord.original(token) == "page one"
    assert discord.calls[1].query == {"wait": "true"}


async def test_typing_sends_nothing(discord: FakeDiscord, channel: DiscordChannel) -> None:
    await channel.typing(await asked(discord, channel))
    assert discord.calls == []


async def test_rate_limit_waits_as_the_body_says(
    discord: FakeDiscord, channel: DiscordChannel
) -> None:
    hints: list[float | None] = []

    def spy(response: httpx2.Response) -> float | None:
        hints.append(channel.retry_hint(response))
        return hints[-1]

    channel.http.retry_hint = spy
    message = await asked(discord, channel)
    discord.fail_next("original", status=429, retry_after=0.05)
    await channel.send(message, "after the wait", 0)
    assert hints == [0.05]  # the JSON float, not the header's whole second
    assert [c.status for c in discord.calls] == [429, 200]
    assert discord.original(message.reply["token"]) == "after the wait"


def test_retry_hint_falls_back_to_the_header(channel: DiscordChannel) -> None:
    html = httpx2.Response(429, headers={"Retry-After": "3"}, content=b"<html>slow down</html>")
    assert channel.retry_hint(html) == 3.0
    assert channel.retry_hint(httpx2.Response(502, content=b"")) is None


async def test_server_errors_are_retried(discord: FakeDiscord, channel: DiscordChannel) -> None:
    message = await asked(discord, channel)
    await channel.send(message, "one", 0)
    handle = await channel.send(message, "two", 1)
    discord.fail_next("edit", status=500)
    discord.fail_next("followup", status=502, times=2)
    await channel.edit(message, handle, "two, edited")
    assert await channel.send(message, "three", 2) != handle
    statuses = [(c.kind, c.status) for c in discord.calls[2:]]
    assert statuses == [
        ("edit", 500),
        ("edit", 200),
        ("followup", 502),
        ("followup", 502),
        ("followup", 200),
    ]


async def test_an_unknown_token_is_a_channel_error(
    discord: FakeDiscord, channel: DiscordChannel
) -> None:
    message = await asked(discord, channel)
    stranger = Inbound(id="1", chat="2", sender="3", text="", reply={"token": "not-a-token"})
    with pytest.raises(ChannelError, match="Unknown Webhook") as caught:
        await channel.send(stranger, "hello", 0)
    assert caught.value.status == 404
    with pytest.raises(ChannelError, match="Unknown Message"):
        await channel.edit(message, "1234", "no such message")


async def test_too_long_a_message_is_a_channel_error(
    discord: FakeDiscord, channel: DiscordChannel
) -> None:
    message = await asked(discord, channel)
    with pytest.raises(ChannelError, match=r"Invalid Form Body \(code 50035\)"):
        await channel.send(message, "x" * (channel.max_text + 1), 0)


async def test_retries_give_up_with_a_channel_error(
    discord: FakeDiscord, channel: DiscordChannel
) -> None:
    message = await asked(discord, channel)
    discord.fail_next("original", status=503, times=10)
    with pytest.raises(ChannelError) as caught:
        await channel.send(message, "never", 0)
    assert caught.value.status == 503
