"""A fake Slack on loopback: the Web API a bot calls, and the Events API deliveries it gets.

Why: signatures, retries and Slack's `{"ok": false}` answers only show up against a server
that speaks Slack's real wire format and misbehaves on cue.

    async with FakeSlack(bot_token="xoxb-…", signing_secret="…") as slack:
        settings = SlackSettings(bot_token=slack.bot_token,
                                 signing_secret=slack.signing_secret, api_base=slack.api_base)
        status, body = await slack.deliver(url, slack.event("hello"))
        await slack.wait_for(lambda: slack.posts)

Web API (`POST {api_base}/{method}`, JSON or form body, token as `Authorization: Bearer` or
the `token` field; a missing token answers `not_authed`, a wrong one `invalid_auth`):
`chat.postMessage`, `chat.update`, `assistant.threads.setStatus`, `auth.test`.

Events API, built for the bot user `bot_user_id` of team `team_id`:
- `event(text, channel="C123", user="U123", thread_ts=None, mention=False, *, ts=None,
  channel_type=None, bot_id=None, subtype=None) -> dict`: an `event_callback` envelope with a
  `message` event (`app_mention` with `mention=True`, the app's `<@…>` put first unless the
  text has it). `ts` is new unless given; `channel_type` is "im" for channels starting "D".
- `twin(payload) -> dict`: the other event Slack sends for the same message (message ↔
  app_mention): same channel and ts, new event_id.
- `url_verification() -> dict`: the challenge Slack sends when the URL is set; `.challenge`
  of the payload is what the answer must echo.
- `signed(payload, *, retry_num=None, signature="good", timestamp=None) -> (headers, raw)`:
  the headers and raw body Slack would send. signature "good", "bad" (another secret) or
  "none" (no signature headers); `timestamp` (unix seconds) for a stale request.
- `await deliver(url, payload, **same as signed) -> (status, body bytes)`: POST it.

Faults: `fail_next(method, status=429, retry_after=1, times=1, error=None)`: the next `times`
calls of `method` answer 429 `{"ok": false, "error": "ratelimited"}` with `Retry-After`, a 5xx
with a plain-text body, or, with `status=200` and `error`, Slack's `{"ok": false, "error"}`.

Records (what the bot did, in order): `calls` (every Web API request: `Call(method, headers,
body)`, faults included), `posts` (`Post(channel, thread_ts, ts, text)`), `updates`
(`Update(channel, ts, text)`), `statuses` (`Status(channel_id, thread_ts, status)`).
`text_of(channel, ts)` is a message's current text; `thread(channel, thread_ts)` the current
texts of the bot's messages in a thread (`thread_ts=None`: those outside any thread). Texts are
kept as sent, so `&`, `<`, `>` appear as `&amp;`, `&lt;`, `&gt;`.
`await wait_for(predicate, timeout=10)` polls a no-argument predicate until it is true.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import aiohttp
from aiohttp import web

from tests.fakes.loopback import LoopbackServer

JSON = dict[str, Any]
Signature = Literal["good", "bad", "none"]


@dataclass
class Call:
    method: str
    headers: dict[str, str]  # lower-case names
    body: JSON


@dataclass
class Post:
    channel: str
    thread_ts: str | None
    ts: str
    text: str


@dataclass
class Update:
    channel: str
    ts: str
    text: str


@dataclass
class Status:
    channel_id: str
    thread_ts: str
    status: str


@dataclass
class _Fault:
    status: int
    retry_after: float
    error: str | None


@dataclass
class _Message:
    """A message the bot posted, as Slack keeps it."""

    channel: str
    thread_ts: str | None
    ts: str
    text: str
    edited: list[str] = field(default_factory=list)


class FakeSlack(LoopbackServer):
    """See the module docstring."""

    def __init__(
        self,
        bot_token: str = "xoxb-1-fake-token",
        signing_secret: str = "fake-signing-secret",
        team_id: str = "T0FAKE000",
        bot_user_id: str = "U0BOT0000",
        bot_id: str = "B0BOT0000",
        app_id: str = "A0APP0000",
    ) -> None:
        super().__init__()
        self.bot_token = bot_token
        self.signing_secret = signing_secret
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.verification_token = "fake-verification-token"  # deprecated, still sent
        self.api_base = ""
        self.calls: list[Call] = []
        self.posts: list[Post] = []
        self.updates: list[Update] = []
        self.statuses: list[Status] = []
        self._messages: dict[tuple[str, str], _Message] = {}
        self._faults: dict[str, deque[_Fault]] = {}
        self._epoch = int(time.time())
        self._seq = 0
        self._methods: dict[str, Callable[[JSON], JSON]] = {
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "assistant.threads.setStatus": self._set_status,
            "auth.test": self._auth_test,
        }

    # --- lifecycle -----------------------------------------------------------------------

    def _routes(self) -> list[web.RouteDef]:
        return [web.post("/api/{method}", self._web_api)]

    async def start(self) -> Self:
        await super().start()
        self.api_base = f"{self.origin}/api"
        return self

    # --- faults and queries --------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        status: int = 429,
        retry_after: float = 1,
        times: int = 1,
        error: str | None = None,
    ) -> None:
        if status == 200 and not error:
            raise ValueError("a 200 fault needs the Slack error it answers")
        queue = self._faults.setdefault(method, deque())
        queue.extend(_Fault(status, retry_after, error) for _ in range(times))

    def text_of(self, channel: str, ts: str) -> str:
        return self._messages[(channel, ts)].text

    def thread(self, channel: str, thread_ts: str | None) -> list[str]:
        return [
            m.text
            for m in self._messages.values()
            if m.channel == channel and m.thread_ts == thread_ts
        ]

    def next_ts(self) -> str:
        """A message timestamp as Slack writes them, later than every one before."""
        self._seq += 1
        return f"{self._epoch + self._seq // 1_000_000}.{self._seq % 1_000_000:06d}"

    # --- Events API ----------------------------------------------------------------------

    def event(
        self,
        text: str,
        channel: str = "C123",
        user: str = "U123",
        thread_ts: str | None = None,
        mention: bool = False,
        *,
        ts: str | None = None,
        channel_type: str | None = None,
        bot_id: str | None = None,
        subtype: str | None = None,
    ) -> JSON:
        ts = ts or self.next_ts()
        if mention and f"<@{self.bot_user_id}>" not in text:
            text = f"<@{self.bot_user_id}> {text}"
        event: JSON = {
            "client_msg_id": str(uuid.uuid4()),
            "type": "app_mention" if mention else "message",
            "text": text,
            "user": user,
            "ts": ts,
            "team": self.team_id,
            "channel": channel,
            "event_ts": ts,
        }
        if not mention:  # app_mention events carry no channel_type
            event["channel_type"] = channel_type or ("im" if channel.startswith("D") else "channel")
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        if bot_id is not None:
            event.pop("client_msg_id")
            event |= {"bot_id": bot_id, "app_id": "A0OTHER00"}
        if subtype is not None:
            event["subtype"] = subtype
        return self._envelope(event)

    def twin(self, payload: JSON) -> JSON:
        event = dict(payload["event"])
        if event["type"] == "message":
            event["type"] = "app_mention"
            event.pop("channel_type", None)
        else:
            channel = event["channel"]
            event["type"] = "message"
            event["channel_type"] = "im" if channel.startswith("D") else "channel"
        return self._envelope(event)

    def _envelope(self, event: JSON) -> JSON:
        return {
            "token": self.verification_token,
            "team_id": self.team_id,
            "context_team_id": self.team_id,
            "context_enterprise_id": None,
            "api_app_id": self.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": "Ev" + secrets.token_hex(5).upper(),
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": "4-" + secrets.token_urlsafe(24),
        }

    def url_verification(self) -> JSON:
        return {
            "token": self.verification_token,
            "challenge": secrets.token_urlsafe(36),
            "type": "url_verification",
        }

    def signed(
        self,
        payload: JSON,
        *,
        retry_num: int | None = None,
        signature: Signature = "good",
        timestamp: int | None = None,
    ) -> tuple[dict[str, str], bytes]:
        raw = json.dumps(payload).encode()
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        }
        if signature != "none":
            secret = self.signing_secret if signature == "good" else "not-the-secret"
            digest = hmac.new(secret.encode(), f"v0:{stamp}:".encode() + raw, hashlib.sha256)
            headers["X-Slack-Request-Timestamp"] = stamp
            headers["X-Slack-Signature"] = f"v0={digest.hexdigest()}"
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        return headers, raw

    async def deliver(
        self,
        url: str,
        payload: JSON,
        *,
        retry_num: int | None = None,
        signature: Signature = "good",
        timestamp: int | None = None,
    ) -> tuple[int, bytes]:
        headers, raw = self.signed(
            payload, retry_num=retry_num, signature=signature, timestamp=timestamp
        )
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=raw, headers=headers) as response,
        ):
            return response.status, await response.read()

    # --- Web API -------------------------------------------------------------------------

    async def _web_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("application/json"):
            body: JSON = await request.json()
        else:
            body = dict(await request.post())
        self.calls.append(Call(method, {k.lower(): v for k, v in request.headers.items()}, body))
        faults = self._faults.get(method)
        if faults:
            fault = faults.popleft()
            if fault.status == 429:
                return web.json_response(
                    {"ok": False, "error": "ratelimited"},
                    status=429,
                    headers={"Retry-After": f"{fault.retry_after:g}"},
                )
            if fault.status >= 500:
                return web.Response(status=fault.status, text="Service Unavailable")
            return web.json_response({"ok": False, "error": fault.error}, status=fault.status)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else body.get("token")
        if not token:
            return _error("not_authed")
        if token != self.bot_token:
            return _error("invalid_auth")
        handler = self._methods.get(method)
        if handler is None:
            return _error("unknown_method")
        answer = handler(body)
        if answer.get("ok") and ctype.startswith("application/json") and "charset" not in ctype:
            answer["warning"] = "missing_charset"
            answer["response_metadata"] = {"warnings": ["missing_charset"]}
        return web.json_response(answer)

    def _post_message(self, body: JSON) -> JSON:
        channel, text = body.get("channel"), body.get("text")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not text:
            return {"ok": False, "error": "no_text"}
        thread_ts = body.get("thread_ts") or None
        ts = self.next_ts()
        self._messages[(channel, ts)] = _Message(channel, thread_ts, ts, text)
        self.posts.append(Post(channel, thread_ts, ts, text))
        message = self._bot_message(ts, text)
        if thread_ts:
            message["thread_ts"] = thread_ts
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _update(self, body: JSON) -> JSON:
        channel, ts, text = body.get("channel"), body.get("ts"), body.get("text")
        message = self._messages.get((channel or "", ts or ""))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if not text:
            return {"ok": False, "error": "no_text"}
        message.text = text
        self.updates.append(Update(message.channel, message.ts, text))
        edited = {"user": self.bot_user_id, "ts": self.next_ts()}
        shown = self._bot_message(message.ts, text) | {"edited": edited}
        return {"ok": True, "channel": channel, "ts": ts, "text": text, "message": shown}

    def _set_status(self, body: JSON) -> JSON:
        channel_id, thread_ts, status = (body.get(k) for k in ("channel_id", "thread_ts", "status"))
        if not channel_id or not thread_ts or status is None:
            return {"ok": False, "error": "invalid_arguments"}
        self.statuses.append(Status(channel_id, thread_ts, status))
        return {"ok": True}

    def _auth_test(self, body: JSON) -> JSON:
        return {
            "ok": True,
            "url": "https://fake-workspace.slack.com/",
            "team": "Fake Workspace",
            "user": "noroshi",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _bot_message(self, ts: str, text: str) -> JSON:
        return {
            "user": self.bot_user_id,
            "type": "message",
            "ts": ts,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "text": text,
            "team": self.team_id,
            "bot_profile": {"id": self.bot_id, "app_id": self.app_id, "name": "noroshi"},
        }


def _error(error: str) -> web.Response:
    """Slack answers most errors with HTTP 200 and `ok: false`."""
    return web.json_response({"ok": False, "error": error})
