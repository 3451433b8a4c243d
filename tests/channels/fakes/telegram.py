"""A fake Telegram Bot API on loopback, answering in the real shapes.

Why: offsets, long polls, 409 conflicts, "message is not modified" and 429's `retry_after`
only show up against a server that behaves like Telegram. An `aiohttp.web` server on
127.0.0.1 (random port):

    async with FakeTelegram(token="123456:TEST-token") as tg:
        settings = TelegramSettings(token=tg.token, api_base=tg.api_base, ...)

Methods, each `POST /bot<token>/<method>` with a JSON (or form, or query) body:
getUpdates, sendMessage, editMessageText, sendChatAction, setWebhook, deleteWebhook, getMe.
Answers are `{"ok": true, "result": ...}` or `{"ok": false, "error_code": N, "description":
"..."}`; a wrong token is 401 "Unauthorized", an unknown method 404 "Not Found".

Building and delivering updates:
- `message(text, chat_id=None, user_id=42, username="alice", thread_id=None, *,
  first_name="Alice", is_bot=False, kind="message") -> dict`: a real Update with a fresh
  `update_id` and `message_id`. `chat_id=None` is the private chat with the user; another id is
  a supergroup (a forum when `thread_id` is given: `message_thread_id`, `is_topic_message`).
  `text=None` makes a photo without text; `kind` is the Update field ("message",
  "edited_message", "channel_post": no `from`, a `sender_chat` instead).
- `push(update)`: queue it for getUpdates (which honours `offset`, `limit`, `timeout` and
  `allowed_updates`; an update of a kind not allowed is never delivered).
- `await deliver(url, update, secret=None) -> (status, body bytes)`: POST it to a webhook as
  Telegram does, with `X-Telegram-Bot-Api-Secret-Token: secret` (no header when None).

Faults: `fail_next(method, status=429, retry_after=1, times=1, description=None)`: the next
`times` calls of `method` answer `status`; 429 in Telegram's shape ("Too Many Requests: retry
after N", `parameters.retry_after`, no Retry-After header), another status as `{"ok": false,
"error_code": status, "description": description or a usual one}`.

What the bot did:
- `calls`: method names in arrival order, faults and refusals included.
- `sent`: `Sent(chat_id, message_id, text, thread_id, reply_to)` per sendMessage, as sent.
- `edits`: `(chat_id, message_id, text)` per successful editMessageText.
- `actions`: `Action(chat_id, action, thread_id)` per sendChatAction.
- `text_of(chat_id, message_id)`: a bot message's current text; `messages_in(chat_id)`: the
  bot's messages in that chat in order, each `Sent` with its current text.
- `confirmed_offset`: the highest offset a getUpdates confirmed (0: none yet).
- `webhook_url`, `webhook_secret`, `allowed_updates`: what setWebhook/getUpdates set.
- `await wait_for(predicate, timeout=10)`: poll `predicate()` until it is truthy; its value.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Self, TypeVar

import aiohttp
from aiohttp import web

from tests.fakes.loopback import LoopbackServer

JSON = dict[str, Any]
T = TypeVar("T")

BOT = {
    "id": 777000111,
    "is_bot": True,
    "first_name": "Noroshi Test",
    "username": "noroshi_test_bot",
}
MAX_TEXT = 4096
UPDATE_KINDS = ("message", "edited_message", "channel_post", "edited_channel_post")
DESCRIPTIONS = {
    400: "Bad Request: fault injected by the test",
    403: "Forbidden: bot was blocked by the user",
    500: "Internal Server Error",
    502: "Bad Gateway",
}
_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
CONFLICT_POLL = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance "
    "is running"
)
CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to "
    "delete the webhook first"
)


@dataclass(frozen=True)
class Sent:
    """A message the bot sent; `reply_to` is the message it answers, if any."""

    chat_id: int
    message_id: int
    text: str
    thread_id: int | None = None
    reply_to: int | None = None


@dataclass(frozen=True)
class Action:
    chat_id: int
    action: str
    thread_id: int | None = None


class _Refusal(Exception):
    """An `ok: false` answer."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after if status == 429 else None

    def response(self) -> web.Response:
        body: JSON = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return web.json_response(body, status=self.status)


@dataclass
class _Poll:
    """A getUpdates in progress; a newer one terminates it."""

    terminated: bool = False


def _bad(description: str) -> _Refusal:
    return _Refusal(400, f"Bad Request: {description}")


def _optional_int(params: JSON, name: str) -> int | None:
    """A parameter as Telegram reads it: a number or a string of digits."""
    value = params.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _bad(f"invalid {name} specified") from None


def _int(params: JSON, name: str) -> int:
    value = _optional_int(params, name)
    if value is None:
        raise _bad(f"{name} is empty")
    return value


class FakeTelegram(LoopbackServer):
    """See the module docstring."""

    def __init__(self, token: str = "123456:TEST-token_abcdef") -> None:
        super().__init__()
        self.token = token
        self.api_base = ""
        self.calls: list[str] = []
        self.sent: list[Sent] = []
        self.edits: list[tuple[int, int, str]] = []
        self.actions: list[Action] = []
        self.confirmed_offset = 0
        self.webhook_url = ""
        self.webhook_secret = ""
        self.allowed_updates: list[str] | None = None
        self._updates: list[JSON] = []
        self._next_update = 100_000
        self._next_message: dict[int, int] = defaultdict(int)  # per chat, as in supergroups
        self._chats: dict[int, JSON] = {}
        self._threads: dict[int, set[int]] = defaultdict(set)
        self._texts: dict[tuple[int, int], str] = {}
        self._faults: dict[str, deque[_Refusal]] = defaultdict(deque)
        self._poll: _Poll | None = None
        self._wake = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------

    def _routes(self) -> list[web.RouteDef]:
        return [web.post("/bot{token}/{method}", self._handle)]

    async def start(self) -> Self:
        await super().start()
        self.api_base = self.origin
        return self

    async def close(self) -> None:
        """Stop listening; long polls in progress end at once."""
        self._closing = True
        self._notify()
        await super().close()

    # --- updates -----------------------------------------------------------------------

    def message(
        self,
        text: str | None,
        chat_id: int | None = None,
        user_id: int = 42,
        username: str | None = "alice",
        thread_id: int | None = None,
        *,
        first_name: str = "Alice",
        is_bot: bool = False,
        kind: str = "message",
    ) -> JSON:
        """A real-shaped Update carrying one message; see the module docstring."""
        if kind not in UPDATE_KINDS:
            raise ValueError(f"kind must be one of {UPDATE_KINDS}")
        sender: JSON = {"id": user_id, "is_bot": is_bot, "first_name": first_name}
        if username is not None:
            sender["username"] = username
        chat = self._chat(chat_id, sender, kind, thread_id is not None)
        message: JSON = {"message_id": self._new_message(chat["id"]), "date": int(time.time())}
        if kind.endswith("channel_post"):
            message["sender_chat"] = chat
        else:
            message["from"] = sender
        message["chat"] = chat
        if thread_id is not None:
            self._threads[chat["id"]].add(thread_id)
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        if text is None:
            message["photo"] = [
                {"file_id": "AgACAgQAAx0", "file_unique_id": "AQAD", "width": 90, "height": 90}
            ]
        else:
            message["text"] = text
            command = re.match(r"/\S+", text)
            if command:
                entity = {"offset": 0, "length": len(command.group()), "type": "bot_command"}
                message["entities"] = [entity]
        if kind.startswith("edited"):
            message["edit_date"] = message["date"]
        self._next_update += 1
        return {"update_id": self._next_update, kind: message}

    def push(self, update: JSON) -> None:
        """Queue `update` for getUpdates."""
        self._updates.append(update)
        self._notify()

    async def deliver(self, url: str, update: JSON, secret: str | None = None) -> tuple[int, bytes]:
        """POST `update` to a webhook as Telegram does; the status and body it answered."""
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=json.dumps(update), headers=headers) as response,
        ):
            return response.status, await response.read()

    # --- faults and inspection -----------------------------------------------------------

    def fail_next(
        self,
        method: str,
        status: int = 429,
        retry_after: int = 1,
        times: int = 1,
        description: str | None = None,
    ) -> None:
        """The next `times` calls of `method` answer `status` (see the module docstring)."""
        if description is None:
            description = DESCRIPTIONS.get(status, f"Error {status}")
        if status == 429:
            description = f"Too Many Requests: retry after {retry_after}"
        self._faults[method].extend([_Refusal(status, description, retry_after)] * times)

    def text_of(self, chat_id: int, message_id: int) -> str:
        return self._texts[(chat_id, message_id)]

    def messages_in(self, chat_id: int) -> list[Sent]:
        return [
            replace(s, text=self._texts[(s.chat_id, s.message_id)])
            for s in self.sent
            if s.chat_id == chat_id
        ]

    # --- the API -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        self.calls.append(method)
        try:
            if request.match_info["token"] != self.token:
                raise _Refusal(401, "Unauthorized")
            handler = self._methods().get(method)
            if handler is None:
                raise _Refusal(404, "Not Found")
            if self._faults[method]:
                raise self._faults[method].popleft()
            result = await handler(await self._params(request))
        except _Refusal as refusal:
            return refusal.response()
        return web.json_response({"ok": True, "result": result})

    def _methods(self) -> dict[str, Callable[[JSON], Any]]:
        return {
            "getUpdates": self._get_updates,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "sendChatAction": self._send_chat_action,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getMe": self._get_me,
        }

    async def _params(self, request: web.Request) -> JSON:
        """Telegram takes parameters in the query, a form or a JSON body."""
        params: JSON = dict(request.query)
        if request.content_type == "application/json":
            body = await request.json()
            if not isinstance(body, dict):
                raise _bad("parameters must be a JSON object")
            params.update(body)
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            params.update(await request.post())
        return params

    async def _get_updates(self, params: JSON) -> list[JSON]:
        if self.webhook_url:
            raise _Refusal(409, CONFLICT_WEBHOOK)
        offset = _optional_int(params, "offset")
        limit = min(max(_optional_int(params, "limit") or 100, 1), 100)
        timeout = _optional_int(params, "timeout") or 0
        allowed = params.get("allowed_updates")
        if isinstance(allowed, str):
            allowed = json.loads(allowed)
        if allowed is not None:
            self.allowed_updates = list(allowed) or None  # [] means every kind again
        if self._poll is not None:
            self._poll.terminated = True
        poll = self._poll = _Poll()
        self._notify()
        try:
            if offset:
                self._confirm(offset)
            deadline = time.monotonic() + timeout
            while True:
                wake = self._wake
                ready = self._ready(limit)
                if ready or poll.terminated or self._closing:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(wake.wait(), remaining)
                except TimeoutError:
                    pass
            if poll.terminated:
                raise _Refusal(409, CONFLICT_POLL)
            return ready
        finally:
            if self._poll is poll:
                self._poll = None

    def _confirm(self, offset: int) -> None:
        """Updates before `offset` are confirmed, gone for good; -N keeps the last N."""
        if offset < 0:
            self._updates = self._updates[offset:]
            return
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        self.confirmed_offset = max(self.confirmed_offset, offset)

    def _ready(self, limit: int) -> list[JSON]:
        """The next updates to hand out; kinds that are not allowed are dropped."""
        if self.allowed_updates:
            allowed = self.allowed_updates
            self._updates = [u for u in self._updates if any(k in u for k in allowed)]
        return self._updates[:limit]

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    async def _send_message(self, params: JSON) -> JSON:
        chat_id, thread_id = self._where(params)
        text = self._text(params)
        reply_to: int | None = None
        reply = params.get("reply_parameters")
        if isinstance(reply, str):
            reply = json.loads(reply)
        if reply is not None:
            reply_to = _int(reply, "message_id")
            exists = reply_to <= self._next_message[chat_id]
            if not exists and not reply.get("allow_sending_without_reply"):
                raise _bad("message to be replied not found")
            if not exists:
                reply_to = None
        message_id = self._new_message(chat_id)
        self.sent.append(Sent(chat_id, message_id, text, thread_id, reply_to))
        self._texts[(chat_id, message_id)] = text
        message = self._bot_message(chat_id, message_id, text)
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        if reply_to is not None:
            message["reply_to_message"] = {"message_id": reply_to, "chat": self._chats[chat_id]}
        return message

    async def _edit_message_text(self, params: JSON) -> JSON:
        chat_id = self._chat_id(params)
        message_id = _int(params, "message_id")
        text = self._text(params)
        current = self._texts.get((chat_id, message_id))
        if current is None:
            if 0 < message_id <= self._next_message[chat_id]:
                raise _bad("message can't be edited")
            raise _bad("message to edit not found")
        if current == text:
            raise _Refusal(400, NOT_MODIFIED)
        self._texts[(chat_id, message_id)] = text
        self.edits.append((chat_id, message_id, text))
        message = self._bot_message(chat_id, message_id, text)
        message["edit_date"] = int(time.time())
        return message

    async def _send_chat_action(self, params: JSON) -> bool:
        chat_id, thread_id = self._where(params)
        action = params.get("action")
        if not action:
            raise _bad("action is empty")
        self.actions.append(Action(chat_id, str(action), thread_id))
        return True

    async def _set_webhook(self, params: JSON) -> bool:
        url = params.get("url") or ""
        secret = params.get("secret_token") or ""
        if secret and not _SECRET.match(secret):
            raise _bad("secret token contains unallowed characters")
        allowed = params.get("allowed_updates")
        if allowed is not None:
            self.allowed_updates = list(allowed) or None
        self.webhook_url, self.webhook_secret = url, secret
        return True

    async def _delete_webhook(self, params: JSON) -> bool:
        if params.get("drop_pending_updates"):
            self._updates.clear()
        self.webhook_url = self.webhook_secret = ""
        return True

    async def _get_me(self, params: JSON) -> JSON:
        return {
            **BOT,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    # --- helpers -------------------------------------------------------------------------

    def _chat(self, chat_id: int | None, sender: JSON, kind: str, forum: bool) -> JSON:
        """The chat, remembered so that the bot may write to it."""
        if chat_id is None:
            chat_id = sender["id"]
        if chat_id in self._chats:
            chat = self._chats[chat_id]
            if forum:
                chat["is_forum"] = True
            return chat
        if chat_id == sender["id"]:
            chat = {k: v for k, v in sender.items() if k in ("id", "first_name", "username")}
            chat["type"] = "private"
        elif kind.endswith("channel_post"):
            chat = {"id": chat_id, "title": "Fake channel", "type": "channel"}
        else:
            chat = {"id": chat_id, "title": "Fake group", "type": "supergroup"}
            if forum:
                chat["is_forum"] = True
        self._chats[chat_id] = chat
        return chat

    def _new_message(self, chat_id: int) -> int:
        self._next_message[chat_id] += 1
        return self._next_message[chat_id]

    def _chat_id(self, params: JSON) -> int:
        chat_id = _int(params, "chat_id")
        if chat_id not in self._chats:
            raise _bad("chat not found")
        return chat_id

    def _where(self, params: JSON) -> tuple[int, int | None]:
        """The chat and forum topic a message goes to."""
        chat_id = self._chat_id(params)
        thread_id = _optional_int(params, "message_thread_id")
        if thread_id is not None and thread_id not in self._threads[chat_id]:
            raise _bad("message thread not found")
        return chat_id, thread_id

    def _text(self, params: JSON) -> str:
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _bad("message text is empty")
        if len(text) > MAX_TEXT:
            raise _bad("message is too long")
        return text

    def _bot_message(self, chat_id: int, message_id: int, text: str) -> JSON:
        return {
            "message_id": message_id,
            "from": BOT,
            "chat": self._chats[chat_id],
            "date": int(time.time()),
            "text": text,
        }
