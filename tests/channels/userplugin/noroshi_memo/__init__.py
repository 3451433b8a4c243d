"""A channel written the way a user would write one, outside noroshi: a small chat service
(`tests.channels.memo_server`) that calls a webhook with a shared secret, or is polled, and
takes messages and edits over HTTP. Its entry point is in the dist-info beside it; putting
this folder on sys.path (or PYTHONPATH) is all it takes to install it."""

from __future__ import annotations

import hmac
from typing import Literal

import msgspec

from noroshi.channels import Channel, ChannelError, Inbound, Polled, Received
from noroshi.errors import Unauthorized
from noroshi.http import Request, Response
from noroshi.http.request import decode_json


class MemoSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str
    secret: str
    mode: Literal["webhook", "polling"] = "webhook"
    max_text: int = 4000


class MemoMessage(msgspec.Struct):
    id: str
    chat: str
    user: str
    text: str
    thread: str = ""


class MemoUpdates(msgspec.Struct):
    messages: list[MemoMessage]
    next: int


_decode_message = msgspec.json.Decoder(MemoMessage)
_decode_updates = msgspec.json.Decoder(MemoUpdates)


def _inbound(m: MemoMessage) -> Inbound:
    return Inbound(id=m.id, chat=m.chat, sender=m.user, text=m.text, thread=m.thread)


class MemoChannel(Channel[MemoSettings]):
    settings_type = MemoSettings
    edit_interval_s = 0.05

    @property
    def polls(self) -> bool:
        return self.settings.mode == "polling"

    @property
    def max_text(self) -> int:  # type: ignore[override]
        return self.settings.max_text

    async def receive(self, request: Request) -> Received:
        given = request.headers.get("x-memo-secret", "")
        if not hmac.compare_digest(given, self.settings.secret):
            raise Unauthorized("The x-memo-secret header is wrong.")
        message = decode_json(_decode_message, await request.body())  # a 400 naming the field
        return Received(Response(b"", 204), [_inbound(message)])

    async def poll(self, offset: str) -> Polled:
        answer = await self.http.call(
            "GET", f"{self.settings.url}/updates", params={"offset": offset or "0"}
        )
        updates = _decode_updates.decode(answer.content)
        return Polled([_inbound(m) for m in updates.messages], str(updates.next))

    async def send(self, to: Inbound, text: str, page: int) -> str:
        body = {"chat": to.chat, "thread": to.thread, "text": text, "reply_to": to.id}
        answer = await self.http.call("POST", f"{self.settings.url}/messages", json=body)
        if answer.status_code != 200:
            raise ChannelError(answer.text, answer.status_code)
        return str(answer.json()["id"])

    async def edit(self, to: Inbound, handle: str, text: str) -> None:
        answer = await self.http.call(
            "PATCH", f"{self.settings.url}/messages/{handle}", json={"text": text}
        )
        if answer.status_code != 200:
            raise ChannelError(answer.text, answer.status_code)
