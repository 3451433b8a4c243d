"""The chat service behind the user-written `memo` channel (tests/channels/userplugin): it
delivers people's messages to a webhook or to a long poll, and takes the bot's messages and
edits. It is the gateway's test bench; the Telegram, Slack and Discord fakes speak those
platforms' own APIs.

`MemoServer()` is an async context manager: `.url` for the channel's settings, `.say(text,
chat=, user=, thread=, id=)` queues a message for polls (and returns it), `await
.deliver(webhook, message, secret=)` posts one to a webhook, `.fail_next(status,
retry_after=, times=)` makes the next bot calls fail, `.send_delay` holds back the answer to
a send (the message exists, its id is not back yet); `.bot` holds the bot's messages by id
(chat, thread, reply_to, text, edits), `.answers(message_id)` those that answer a message.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import aiohttp
from aiohttp import web

from tests.fakes.loopback import LoopbackServer


@dataclass
class BotMessage:
    id: str
    chat: str
    thread: str
    reply_to: str
    text: str
    edits: list[str] = field(default_factory=list)
    sent_at: float = field(default_factory=time.monotonic)


class MemoServer(LoopbackServer):
    def __init__(self) -> None:
        super().__init__()
        self.updates: list[dict[str, Any]] = []
        self.bot: dict[str, BotMessage] = {}
        self.calls: list[str] = []
        self.faults: list[tuple[int, float | None]] = []
        self.confirmed = 0  # the highest offset a poll has confirmed
        self.send_delay = 0.0  # how long a new message's id takes to come back, once made
        self._ids = itertools.count(1)
        self._new = asyncio.Event()
        self.url = ""

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.get("/updates", self._updates),
            web.post("/messages", self._send),
            web.patch("/messages/{id}", self._edit),
        ]

    async def start(self) -> Self:
        await super().start()
        self.url = self.origin
        return self

    # --- people ------------------------------------------------------------------------------

    def message(
        self, text: str, chat: str = "c1", user: str = "alice", thread: str = "", id: str = ""
    ) -> dict[str, Any]:
        return {
            "id": id or f"m{next(self._ids)}",
            "chat": chat,
            "user": user,
            "text": text,
            "thread": thread,
        }

    def say(self, text: str, **kw: str) -> dict[str, Any]:
        """Queue a message for the bot's next poll."""
        message = self.message(text, **kw)
        self.updates.append(message)
        self._new.set()
        return message

    async def deliver(
        self, webhook: str, message: dict[str, Any], secret: str = "memo-secret"
    ) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as s,
            s.post(webhook, json=message, headers={"x-memo-secret": secret}) as r,
        ):
            return r.status, await r.text()

    def fail_next(self, status: int, retry_after: float | None = None, times: int = 1) -> None:
        self.faults += [(status, retry_after)] * times

    # --- what the bot did --------------------------------------------------------------------

    def answers(self, message_id: str) -> list[BotMessage]:
        return [m for m in self.bot.values() if m.reply_to == message_id]

    def answer_text(self, message_id: str) -> str:
        return "".join(m.text for m in self.answers(message_id))

    async def answered(self, message: dict[str, Any], text: str) -> None:
        """Until the bot's answer to `message` reads `text`."""
        await self.wait_for(lambda: self.answer_text(message["id"]) == text)

    async def wait_for(self, check: Callable[[], bool], timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """As every fake waits, with what the bot sent in the failure."""
        try:
            await super().wait_for(check, timeout)
        except TimeoutError:
            raise AssertionError(f"timed out; the bot sent {list(self.bot.values())}") from None

    # --- the service -------------------------------------------------------------------------

    def _fault(self) -> web.Response | None:
        if not self.faults:
            return None
        status, retry_after = self.faults.pop(0)
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        return web.json_response({"error": "busy"}, status=status, headers=headers)

    async def _updates(self, request: web.Request) -> web.Response:
        self.calls.append("updates")
        offset = int(request.query.get("offset", "0"))
        self.confirmed = max(self.confirmed, offset)
        if len(self.updates) <= offset:
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), 1.0)
            except TimeoutError:
                pass
        return web.json_response({"messages": self.updates[offset:], "next": len(self.updates)})

    async def _send(self, request: web.Request) -> web.Response:
        self.calls.append("send")
        if (fault := self._fault()) is not None:
            return fault
        body = await request.json()
        id = f"b{next(self._ids)}"
        self.bot[id] = BotMessage(id, body["chat"], body["thread"], body["reply_to"], body["text"])
        await asyncio.sleep(self.send_delay)
        return web.json_response({"id": id})

    async def _edit(self, request: web.Request) -> web.Response:
        self.calls.append("edit")
        if (fault := self._fault()) is not None:
            return fault
        message = self.bot.get(request.match_info["id"])
        if message is None:
            return web.json_response({"error": "no such message"}, status=404)
        message.text = (await request.json())["text"]
        message.edits.append(message.text)
        return web.json_response({"id": message.id})
