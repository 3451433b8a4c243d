"""Slack: the Events API brings messages to the webhook, the Web API answers them.

Slack signs every request with the app's signing secret and waits three seconds for a 2xx;
then it delivers the same event again (with `X-Slack-Retry-Num`). So `receive` only checks
the signature and reads the event; the gateway stores it, acknowledges it, and recognises a
repeat by its id, `<channel>:<ts>`. That id is also what the `message` and `app_mention`
events of one mention share, so a bot subscribed to both answers it once.

In a channel, answers go in a thread under the message (a thread is one conversation); in a
direct message they go in the conversation itself, unless the person wrote in a thread.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import httpx2
import msgspec

from noroshi.channels.base import Channel, ChannelError, Inbound, Received
from noroshi.errors import Unauthorized
from noroshi.http import JSONResponse, Request, Response
from noroshi.http.request import decode_json

__all__ = ["SlackChannel", "SlackSettings"]

log = logging.getLogger("noroshi.channels.slack")

# Messages a person wrote that carry a subtype all the same; every other subtype is a bot, an
# edit, a deletion or a notice ("has joined the channel"), which nobody expects an answer to.
PERSON_SUBTYPES = frozenset({"file_share", "thread_broadcast", "me_message"})
TYPING_STATUS = "is typing…"


class SlackSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The plugin's keys in a `[[channels]]` table of `type = "slack"`."""

    bot_token: Annotated[str, msgspec.Meta(pattern=r"^xoxb-")]  # the Bot User OAuth Token
    signing_secret: Annotated[str, msgspec.Meta(min_length=1)]
    api_base: str = "https://slack.com/api"
    max_age_s: Annotated[int, msgspec.Meta(gt=0)] = 300  # older (or newer) requests: replays


class _Authorization(msgspec.Struct):
    user_id: str = ""
    is_bot: bool = False


class _Envelope(msgspec.Struct):
    """An Events API request: `url_verification`, `event_callback` or `app_rate_limited`."""

    type: str
    challenge: str = ""
    event: msgspec.Raw = msgspec.Raw(b"{}")  # read once its type is known: fields vary by type
    authorizations: list[_Authorization] = []


class _EventType(msgspec.Struct):
    type: str = ""


class _Message(msgspec.Struct):
    """A `message` or `app_mention` event, the fields we read."""

    channel: str = ""
    ts: str = ""
    user: str | None = None
    text: str | None = None
    thread_ts: str | None = None
    bot_id: str | None = None
    subtype: str | None = None
    channel_type: str | None = None


class _Answer(msgspec.Struct):
    """A Web API answer: HTTP 200 whether `ok` or not; `error` says why not."""

    ok: bool = False
    error: str = ""
    ts: str = ""


_envelope = msgspec.json.Decoder(_Envelope)
_event_type = msgspec.json.Decoder(_EventType)
_message = msgspec.json.Decoder(_Message)
_answer = msgspec.json.Decoder(_Answer)
_encode = msgspec.json.encode


class SlackChannel(Channel[SlackSettings]):
    """A Slack app: events to `POST /channels/<name>`, answers by `chat.postMessage`."""

    settings_type = SlackSettings
    max_text: ClassVar[int] = 4000  # Slack truncates at 40,000 but advises 4,000
    edit_interval_s: ClassVar[float] = 1.0  # chat.update is Tier 3, about 50 a minute

    def __init__(self, name: str, settings: SlackSettings, http: Any) -> None:
        super().__init__(name, settings, http)
        self._no_status: set[str] = set()  # channels where Slack refused a typing status

    async def receive(self, request: Request) -> Received:
        body = await request.body()
        self._verify(request.headers, body)
        envelope = decode_json(_envelope, body)
        if envelope.type == "url_verification":
            return Received(JSONResponse({"challenge": envelope.challenge}))
        retry = request.headers.get("x-slack-retry-num")
        if retry:  # read as the first time: the gateway knows the message by its id
            reason = request.headers.get("x-slack-retry-reason", "")
            log.debug("%s: Slack's retry %s (%s)", self.name, retry, reason)
        acked = Response(b"", 200, headers=[])
        if envelope.type != "event_callback":
            return Received(acked)
        inbound = self._read(envelope)
        return Received(acked, [inbound] if inbound is not None else [])

    def _verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """https://api.slack.com/authentication/verifying-requests-from-slack"""
        stamp = headers.get("x-slack-request-timestamp", "")
        signature = headers.get("x-slack-signature", "")
        if not stamp or not signature:
            raise Unauthorized("The request carries no Slack signature.")
        try:
            sent = int(stamp)
        except ValueError:
            raise Unauthorized("The Slack request timestamp is not a number.") from None
        if abs(time.time() - sent) > self.settings.max_age_s:
            raise Unauthorized("The Slack request timestamp is too old or too new: a replay?")
        base = b"v0:" + stamp.encode() + b":" + body
        digest = hmac.new(self.settings.signing_secret.encode(), base, hashlib.sha256)
        if not hmac.compare_digest(f"v0={digest.hexdigest()}".encode(), signature.encode()):
            raise Unauthorized("The Slack request signature does not match.")

    def _read(self, envelope: _Envelope) -> Inbound | None:
        """The person's message in an `event_callback`, or None for anything else."""
        raw = bytes(envelope.event)
        if decode_json(_event_type, raw).type not in ("message", "app_mention"):
            return None
        event = decode_json(_message, raw)
        if event.bot_id or (event.subtype and event.subtype not in PERSON_SUBTYPES):
            return None
        if not (event.user and event.channel and event.ts and event.text):
            return None
        auth = envelope.authorizations[0] if envelope.authorizations else None
        text = _unescape(_strip_mentions(event.text, auth.user_id if auth and auth.is_bot else ""))
        if not text:
            return None
        direct = event.channel_type == "im"  # a DM is one conversation; a channel, its threads
        return Inbound(
            id=f"{event.channel}:{event.ts}",
            chat=event.channel,
            thread=event.thread_ts or ("" if direct else event.ts),
            sender=event.user,
            text=text,
        )

    async def send(self, to: Inbound, text: str, page: int) -> str:
        body = {"channel": to.chat, "text": _escape(text)}
        if to.thread:
            body["thread_ts"] = to.thread
        answer = await self._call("chat.postMessage", body)
        if not answer.ts:
            raise ChannelError("chat.postMessage: Slack's answer has no ts")
        return answer.ts

    async def edit(self, to: Inbound, handle: str, text: str) -> None:
        await self._call("chat.update", {"channel": to.chat, "ts": handle, "text": _escape(text)})

    async def typing(self, to: Inbound) -> None:
        """The status line of an assistant thread. Elsewhere Slack refuses it, and we stop
        asking in that channel: typing is a nicety, not worth a call per answer."""
        if not to.thread or to.chat in self._no_status:
            return
        body = {"channel_id": to.chat, "thread_ts": to.thread, "status": TYPING_STATUS}
        try:
            await self._call("assistant.threads.setStatus", body)
        except ChannelError as exc:
            if exc.status and exc.status < 500 and exc.status != 429:
                self._no_status.add(to.chat)
            log.debug("%s: no typing status in %s: %s", self.name, to.chat, exc)

    async def _call(self, method: str, body: dict[str, str]) -> _Answer:
        """POST a Web API method; Slack's `{"ok": false}` becomes a `ChannelError`."""
        response: httpx2.Response = await self.http.call(
            "POST",
            f"{self.settings.api_base}/{method}",
            content=_encode(body),
            headers={
                "Authorization": f"Bearer {self.settings.bot_token}",
                "Content-Type": "application/json; charset=utf-8",
            },
        )
        try:
            answer = _answer.decode(response.content)
        except msgspec.DecodeError:
            raise ChannelError(
                f"{method}: HTTP {response.status_code} without Slack's JSON answer",
                response.status_code,
            ) from None
        if not answer.ok:
            raise ChannelError(f"{method}: {answer.error or 'not ok'}", response.status_code)
        return answer


_ANY_MENTIONS = re.compile(r"^(?:\s*<@[A-Z0-9]+(?:\|[^>]*)?>[,:]?)+")


def _strip_mentions(text: str, bot: str) -> str:
    """Remove the app's mentions, wherever they are; without its id, those at the start."""
    if bot:
        return re.sub(rf"\s*<@{re.escape(bot)}(?:\|[^>]*)?>[,:]?", "", text).strip()
    return _ANY_MENTIONS.sub("", text).strip()


def _escape(text: str) -> str:
    """Slack reads `&`, `<` and `>` as markup (`<!channel>` pings everyone); say them as text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
