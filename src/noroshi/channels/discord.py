"""Discord, through an interactions endpoint: people ask with a slash command (`/ask`).

Discord POSTs each interaction to `POST /channels/<name>`, signed with the application's
Ed25519 key, and waits at most three seconds for the answer. We answer a command at once with
a deferred response ("thinking…"), and the gateway then writes the answer into that original
response and, past `max_text`, into follow-up messages, all through the interaction's webhook
(`/webhooks/{application_id}/{token}`), which needs no bot token. An interaction token lives
15 minutes; an answer still streaming after that gets a 401 from Discord (a `ChannelError`).

https://discord.com/developers/docs/interactions/overview#setting-up-an-endpoint
https://discord.com/developers/docs/interactions/receiving-and-responding
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Annotated, Any

import httpx2
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from noroshi.channels.base import Channel, ChannelError, Inbound, Received
from noroshi.errors import BadRequest, Unauthorized
from noroshi.http import JSONResponse, Request
from noroshi.http.request import decode_json

__all__ = ["DiscordChannel", "DiscordSettings"]

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_STRING = 3  # application command option type STRING
# the model's text must not mention (and notify) @everyone, roles or people
_NO_PINGS: dict[str, list[str]] = {"parse": []}


class DiscordSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The `[[channels]]` keys of a Discord application (its General Information page)."""

    application_id: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+$")]
    public_key: str  # hex of the 32-byte Ed25519 key Discord signs interactions with
    bot_token: str = ""  # unused: interaction webhooks authenticate by their token
    api_base: str = "https://discord.com/api/v10"
    command: str = "ask"  # the slash command whose first string option is the prompt
    max_age_s: Annotated[int, msgspec.Meta(ge=1)] = 300  # older (or newer) signatures: replays

    def __post_init__(self) -> None:
        if not _HEX_KEY.fullmatch(self.public_key):
            raise ValueError("public_key: must be the application's public key, 64 hex characters")
        self.api_base = self.api_base.rstrip("/")


# --- the interaction payload, as much of it as we read ---------------------------------------


class _User(msgspec.Struct):
    id: str
    username: str = ""
    global_name: str | None = None


class _Member(msgspec.Struct):
    user: _User


class _Option(msgspec.Struct):
    name: str
    type: int
    value: str | float | bool | None = None
    options: list[_Option] = []  # a subcommand's own options


class _Data(msgspec.Struct):
    name: str
    options: list[_Option] = []


class _Ping(msgspec.Struct, tag_field="type", tag=1):
    id: str


class _Command(msgspec.Struct, tag_field="type", tag=2):
    id: str
    token: str
    data: _Data
    channel_id: str
    member: _Member | None = None  # in a guild
    user: _User | None = None  # in a DM


_interaction = msgspec.json.Decoder(_Ping | _Command)


class _Error(msgspec.Struct):
    """Discord's error body; a 429's also carries `retry_after`, in (fractional) seconds."""

    message: str = ""
    code: int = 0
    retry_after: float | None = None


class _Message(msgspec.Struct):
    id: str


_error = msgspec.json.Decoder(_Error)
_message = msgspec.json.Decoder(_Message)


class DiscordChannel(Channel[DiscordSettings]):
    """Slash commands in, deferred responses and follow-ups out."""

    settings_type = DiscordSettings
    max_text = 2000
    edit_interval_s = 1.0  # an interaction webhook takes about 5 requests per 2 seconds

    def __init__(self, name: str, settings: DiscordSettings, http: Any) -> None:
        super().__init__(name, settings, http)
        self._key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(settings.public_key))

    async def receive(self, request: Request) -> Received:
        body = await request.body()
        self._verify(request.headers, body)
        interaction = decode_json(_interaction, body)
        if isinstance(interaction, _Ping):
            return Received(JSONResponse({"type": 1}))  # PONG
        # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: "thinking…" until we edit the original
        return Received(JSONResponse({"type": 5}), [self._inbound(interaction)])

    def _verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Discord signs the timestamp followed by the raw body; it also sends bad signatures
        on purpose when the endpoint is saved, to check that we refuse them."""
        signature = headers.get("x-signature-ed25519", "")
        timestamp = headers.get("x-signature-timestamp", "")
        try:
            self._key.verify(bytes.fromhex(signature), timestamp.encode() + body)
        except (ValueError, InvalidSignature):
            raise Unauthorized("invalid request signature") from None
        try:
            age = time.time() - int(timestamp)  # whole Unix seconds; int() refuses "nan"
        except ValueError:
            raise Unauthorized("invalid request signature") from None
        if abs(age) > self.settings.max_age_s:
            raise Unauthorized("request timestamp is too old or too far ahead: a replay?")

    def _inbound(self, command: _Command) -> Inbound:
        user = command.member.user if command.member is not None else command.user
        if user is None:
            raise BadRequest("The interaction names no member or user.", param="user")
        data = command.data
        # another command (`/new`) reaches the gateway as the text it would have been typed as
        is_ask = data.name == self.settings.command
        text = (_first_string(data.options) or "") if is_ask else "/" + data.name
        return Inbound(
            id=command.id,
            chat=command.channel_id,
            sender=user.id,
            sender_name=user.global_name or user.username,
            text=text,
            reply={"token": command.token},
        )

    async def send(self, to: Inbound, text: str, page: int) -> str:
        if page == 0:
            await self.edit(to, "@original", text)
            return "@original"
        response = await self._call("POST", to, "", text, params={"wait": "true"})
        return _message.decode(response.content).id

    async def edit(self, to: Inbound, handle: str, text: str) -> None:
        await self._call("PATCH", to, f"/messages/{handle}", text)

    async def typing(self, to: Inbound) -> None:
        """Nothing to do: the deferred answer already shows "thinking…" until the first edit."""

    async def _call(
        self, method: str, to: Inbound, path: str, text: str, **kwargs: Any
    ) -> httpx2.Response:
        token = to.reply.get("token")
        if not token:
            raise ChannelError(f"discord: message {to.id} carries no interaction token")
        url = f"{self.settings.api_base}/webhooks/{self.settings.application_id}/{token}{path}"
        body = {"content": text, "allowed_mentions": _NO_PINGS}
        response: httpx2.Response = await self.http.call(method, url, json=body, **kwargs)
        if response.is_error:
            error = _read_error(response)
            detail = error.message if error else response.reason_phrase
            code = f" (code {error.code})" if error and error.code else ""
            raise ChannelError(f"discord: {detail}{code}", response.status_code)
        return response

    def retry_hint(self, response: httpx2.Response) -> float | None:
        """The body's `retry_after` (fractional seconds) over the whole-second `Retry-After`."""
        error = _read_error(response)
        if error is not None and error.retry_after is not None:
            return error.retry_after
        return super().retry_hint(response)


def _first_string(options: list[_Option]) -> str | None:
    """The first string option's value, looking into subcommands too."""
    for option in options:
        if option.type == _STRING and isinstance(option.value, str):
            return option.value
        found = _first_string(option.options)
        if found is not None:
            return found
    return None


def _read_error(response: httpx2.Response) -> _Error | None:
    """Discord's JSON error, or None for anything else (a proxy's HTML page)."""
    try:
        return _error.decode(response.content)
    except msgspec.DecodeError:  # ValidationError is a DecodeError too
        return None
