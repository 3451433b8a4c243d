"""Telegram through the Bot API: updates by webhook or long polling, answers by `sendMessage`
and `editMessageText`.

Every call is `POST {api_base}/bot{token}/{method}` with a JSON body, and Telegram answers
`{"ok": true, "result": ...}` or `{"ok": false, "error_code": ..., "description": ...}`. The URL
holds the bot's token, so errors here name the method, never the URL, and the settings'
repr hides the token.

Answers go out as plain text (no `parse_mode`): a half-streamed Markdown answer would often
be malformed, and Telegram refuses a whole message for one bad entity.
"""

from __future__ import annotations

import hmac
import re
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

import httpx2
import msgspec

from noroshi.channels.base import Channel, ChannelError, Inbound, Polled, Received
from noroshi.errors import Unauthorized
from noroshi.http import Request, Response
from noroshi.http.request import decode_json

__all__ = ["TelegramChannel", "TelegramError", "TelegramSettings"]

T = TypeVar("T")

SECRET_HEADER = "x-telegram-bot-api-secret-token"
ALLOWED_UPDATES = ["message"]  # edits, channel posts, reactions... are not questions to answer
NOT_MODIFIED = "message is not modified"  # an edit to the text it already has: nothing to do
# In groups clients write "/new@MyBot": the gateway knows the command as "/new".
_COMMAND = re.compile(r"^(/[A-Za-z0-9_]{1,32})@[A-Za-z0-9_]+(?=\s|$)")


class TelegramSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The keys of a `[[channels]]` table with `type = "telegram"`."""

    token: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+:[A-Za-z0-9_-]+$")]
    mode: Literal["webhook", "polling"] = "webhook"
    # Telegram sends it back in every webhook call; its allowed alphabet, 1-256 characters.
    secret_token: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,256}$")] = ""
    webhook_url: str = ""  # set: `open()` registers it with setWebhook
    api_base: str = "https://api.telegram.org"
    poll_timeout_s: Annotated[int, msgspec.Meta(ge=0, le=50)] = 25

    def __post_init__(self) -> None:
        if self.mode == "webhook" and not self.secret_token:
            raise ValueError(
                "secret_token: required in webhook mode; without it anyone who knows the URL "
                "could post messages as any user"
            )

    def __repr__(self) -> str:
        return f"TelegramSettings(token='…', mode={self.mode!r}, api_base={self.api_base!r})"


class TelegramError(ChannelError):
    """Telegram answered `ok: false`; `description` is its reason, as it wrote it."""

    def __init__(self, method: str, description: str, error_code: int) -> None:
        super().__init__(f"Telegram {method}: {description} (error_code {error_code})", error_code)
        self.description = description


# --- the parts of the Bot API's objects that we read ----------------------------------------


class _User(msgspec.Struct):
    id: int
    is_bot: bool = False
    first_name: str = ""
    username: str = ""


class _Chat(msgspec.Struct):
    id: int


class _Message(msgspec.Struct):
    message_id: int
    chat: _Chat
    sender: _User | None = msgspec.field(default=None, name="from")
    text: str | None = None
    message_thread_id: int | None = None
    is_topic_message: bool = False


class _Update(msgspec.Struct):
    update_id: int
    message: _Message | None = None  # None: an update of another kind


class _Parameters(msgspec.Struct):
    retry_after: float | None = None


class _Answer(msgspec.Struct, Generic[T]):
    ok: bool
    result: T | None = None
    error_code: int = 0
    description: str = ""
    parameters: _Parameters | None = None


_UPDATE = msgspec.json.Decoder(_Update)
_UPDATES = msgspec.json.Decoder(_Answer[list[_Update]])
_SENT = msgspec.json.Decoder(_Answer[_Message])
_ANY = msgspec.json.Decoder(_Answer[Any])


class TelegramChannel(Channel[TelegramSettings]):
    """A Telegram bot: private chats, groups and forum topics."""

    settings_type = TelegramSettings
    max_text: ClassVar[int] = 4096
    edit_interval_s: ClassVar[float] = 1.0  # Telegram allows about one message a second a chat

    @property
    def polls(self) -> bool:
        return self.settings.mode == "polling"

    async def open(self) -> None:
        """Polling needs the webhook gone (getUpdates answers 409 while one is set)."""
        if self.polls:
            await self._call("deleteWebhook", _ANY, {})
        elif self.settings.webhook_url:
            await self._call(
                "setWebhook",
                _ANY,
                {
                    "url": self.settings.webhook_url,
                    "secret_token": self.settings.secret_token,
                    "allowed_updates": ALLOWED_UPDATES,
                },
            )

    async def receive(self, request: Request) -> Received:
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "replace")
        secret = self.settings.secret_token.encode()
        if self.polls or not secret or not hmac.compare_digest(given, secret):
            raise Unauthorized(f"The {SECRET_HEADER} header is missing or wrong.")
        message = _inbound(decode_json(_UPDATE, await request.body()))
        return Received(Response(b"", 200, headers=[]), [message] if message else [])

    async def poll(self, offset: str) -> Polled:
        timeout = self.settings.poll_timeout_s
        params: dict[str, Any] = {"timeout": timeout, "allowed_updates": ALLOWED_UPDATES}
        if offset:
            params["offset"] = int(offset)
        # The HTTP call must outlive the long poll, or every quiet poll would be a timeout.
        updates = await self._call("getUpdates", _UPDATES, params, timeout=timeout + 10) or []
        messages = [m for m in map(_inbound, updates) if m is not None]
        if updates:
            offset = str(max(u.update_id for u in updates) + 1)
        return Polled(messages, offset)

    async def send(self, to: Inbound, text: str, page: int) -> str:
        params: dict[str, Any] = {"chat_id": int(to.chat), "text": text, **_thread(to)}
        if page == 0:
            params["reply_parameters"] = {
                "message_id": int(to.id.rpartition(":")[2]),
                "allow_sending_without_reply": True,  # the question may be deleted by now
            }
        sent = await self._call("sendMessage", _SENT, params)
        if sent is None:
            raise ChannelError("Telegram sendMessage: no message in the answer")
        return str(sent.message_id)

    async def edit(self, to: Inbound, handle: str, text: str) -> None:
        params = {"chat_id": int(to.chat), "message_id": int(handle), "text": text}
        try:
            await self._call("editMessageText", _ANY, params)
        except TelegramError as exc:
            if NOT_MODIFIED not in exc.description:
                raise

    async def typing(self, to: Inbound) -> None:
        params = {"chat_id": int(to.chat), "action": "typing", **_thread(to)}
        await self._call("sendChatAction", _ANY, params)

    def retry_hint(self, response: httpx2.Response) -> float | None:
        """Telegram names the wait in the body: `parameters.retry_after`."""
        try:
            answer = _ANY.decode(response.content)
        except msgspec.DecodeError:
            answer = None
        if answer is not None and answer.parameters and answer.parameters.retry_after is not None:
            return answer.parameters.retry_after
        return super().retry_hint(response)

    async def _call(
        self,
        method: str,
        decoder: msgspec.json.Decoder[_Answer[T]],
        params: dict[str, Any],
        **kwargs: Any,
    ) -> T | None:
        """The `result` of a Bot API method; `TelegramError` for an `ok: false` answer."""
        url = f"{self.settings.api_base.rstrip('/')}/bot{self.settings.token}/{method}"
        response = await self.http.call("POST", url, json=params, **kwargs)
        try:
            answer = decoder.decode(response.content)
        except msgspec.DecodeError:
            raise ChannelError(
                f"Telegram {method}: HTTP {response.status_code} with a body that is not "
                "a Bot API answer",
                response.status_code,
            ) from None
        if not answer.ok:
            code = answer.error_code or response.status_code
            raise TelegramError(method, answer.description or f"HTTP {code}", code)
        return answer.result


def _inbound(update: _Update) -> Inbound | None:
    """The message in `update` if it is text from a person; None for anything else."""
    message = update.message
    if message is None or message.text is None:
        return None
    sender = message.sender
    if sender is None or sender.is_bot:
        return None
    topic = message.is_topic_message and message.message_thread_id is not None
    return Inbound(
        id=f"{message.chat.id}:{message.message_id}",
        chat=str(message.chat.id),
        sender=str(sender.id),
        sender_name=sender.username or sender.first_name,
        text=_COMMAND.sub(r"\1", message.text, count=1),
        thread=str(message.message_thread_id) if topic else "",
    )


def _thread(to: Inbound) -> dict[str, int]:
    """The forum topic to answer in; Telegram puts the answer in General without it."""
    return {"message_thread_id": int(to.thread)} if to.thread else {}
