"""A fake Discord: the interaction webhooks a bot answers through, and the interactions it gets.

Why: the Discord channel's signature checks, deferred answers, follow-ups and retries only show
up against something that signs like Discord and answers like its API. `FakeDiscord` is an
`aiohttp.web` server on 127.0.0.1 (random port) that serves

    GET|PATCH {api_base}/webhooks/{application_id}/{token}/messages/{@original | message id}
    POST      {api_base}/webhooks/{application_id}/{token}[?wait=true]

with Discord's message objects and error bodies (404 `{"message": "Unknown Webhook", "code":
10015}` for a token it never issued or whose interaction was not answered, 404 Unknown Message
10008, 400 Invalid Form Body 50035 past 2000 characters, 400 Cannot send an empty message
50006), and builds and delivers interactions signed with its own Ed25519 key.

    async with FakeDiscord(application_id="1100000000000000001") as discord:
        discord.api_base, discord.public_key_hex     # for DiscordSettings
        discord.ping() -> dict                       # a PING interaction
        discord.command(prompt, name="ask", *, channel_id=..., user_id=..., username=...,
                        global_name=..., guild=True) -> dict
            # an APPLICATION_COMMAND interaction, with a fresh token its webhooks accept
        discord.signed(interaction, signature="good"|"bad"|"none", timestamp=None,
                       body_override=None) -> (headers, body)
            # what Discord would POST; "bad" signs with another key, body_override is sent in
            # place of the signed body (tampering), timestamp (Unix seconds) for replays
        await discord.deliver(url, interaction, signature=..., timestamp=..., body_override=...)
            -> (status, json or None)                # POSTs it, then `acknowledge`s the answer
        discord.acknowledge(interaction, answer)     # the endpoint's answer: type 4 or 5 opens
            # the webhook and creates the original response (type 5: empty, flags LOADING)
        discord.fail_next(kind, status=429, retry_after=0.2, times=1)
            # kind "original" (PATCH @original), "followup" (POST), "edit" (PATCH a follow-up);
            # 429: Retry-After header (whole seconds, rounded up) and JSON body with the float
        discord.original(token) -> str | None        # current content of the original response
        discord.followups(token) -> list[dict]       # follow-up message objects, as they are now
        discord.edits -> list[Edit]                  # every successful PATCH, in order
        discord.calls -> list[Call]                  # every webhook request, faults included
        await discord.wait_for(predicate, timeout=10)
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count
from typing import Any, Literal, Self

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.fakes.loopback import LoopbackServer

JSON = dict[str, Any]
Kind = Literal["original", "followup", "edit"]
Signature = Literal["good", "bad", "none"]

DISCORD_EPOCH_MS = 1420070400000
MAX_CONTENT = 2000
LOADING = 1 << 7  # message flag of a deferred response that shows "thinking…"
APPLICATION_COMMAND = 2
STRING = 3

_sequence = count()


def snowflake() -> str:
    """A Discord id: milliseconds since 2015 in the high bits, a counter in the low ones."""
    millis = int(time.time() * 1000) - DISCORD_EPOCH_MS
    return str((millis << 22) | (next(_sequence) & 0xFFF))


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Call:
    """One request to the webhooks, as received; `status` is what the fake answered."""

    method: str
    kind: Kind
    token: str
    message: str  # "@original", a message id, or "" for a follow-up
    body: JSON
    query: dict[str, str]
    status: int = 0


@dataclass
class Edit:
    """One successful PATCH: which message of which interaction, and its new content."""

    token: str
    message: str  # as addressed: "@original" or the follow-up's id
    content: str


@dataclass
class _Fault:
    status: int
    retry_after: float
    times: int


@dataclass
class _Interaction:
    """An issued token: its interaction, whether it was answered, and its messages."""

    payload: JSON
    acknowledged: bool = False
    original: JSON | None = None
    followups: dict[str, JSON] = field(default_factory=dict)


class FakeDiscord(LoopbackServer):
    """Discord's interactions side for one application; see the module docstring."""

    def __init__(
        self,
        application_id: str = "1100000000000000001",
        guild_id: str = "1200000000000000001",
        channel_id: str = "1300000000000000001",
        user_id: str = "1400000000000000001",
    ) -> None:
        super().__init__()
        self.application_id = application_id
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.user_id = user_id
        self._key = Ed25519PrivateKey.generate()
        self.public_key_hex = self._key.public_key().public_bytes_raw().hex()
        self.calls: list[Call] = []
        self.edits: list[Edit] = []
        self.port = 0
        self.api_base = ""
        self._interactions: dict[str, _Interaction] = {}
        self._faults: dict[Kind, deque[_Fault]] = {
            k: deque() for k in ("original", "followup", "edit")
        }

    # --- lifecycle ---------------------------------------------------------------------------

    def _routes(self) -> list[web.RouteDef]:
        prefix = "/api/v10/webhooks/{application_id}/{token}"
        return [
            web.post(prefix, self._create),
            web.patch(prefix + "/messages/{message}", self._edit),
            web.get(prefix + "/messages/{message}", self._get),
        ]

    async def start(self) -> Self:
        """Listen on 127.0.0.1 at a free port; fills in `port` and `api_base`."""
        await super().start()
        self.api_base = f"{self.origin}/api/v10"
        return self

    # --- interactions, the way Discord sends them --------------------------------------------

    def ping(self) -> JSON:
        """The PING Discord sends when the endpoint URL is saved, and now and then after."""
        return {
            "application_id": self.application_id,
            "entitlements": [],
            "id": snowflake(),
            "token": self._token(snowflake()),
            "type": 1,
            "user": None,
            "version": 1,
        }

    def command(
        self,
        prompt: str = "",
        name: str = "ask",
        *,
        channel_id: str | None = None,
        user_id: str | None = None,
        username: str = "alice",
        global_name: str | None = "Alice",
        guild: bool = True,
    ) -> JSON:
        """A slash command: `/name prompt:<prompt>` (no options when `prompt` is empty), used
        in a guild channel (a `member`) or in a DM with the bot (a `user`)."""
        channel_id = channel_id or self.channel_id
        user = {
            "avatar": None,
            "avatar_decoration_data": None,
            "clan": None,
            "collectibles": None,
            "discriminator": "0",
            "global_name": global_name,
            "id": user_id or self.user_id,
            "primary_guild": None,
            "public_flags": 0,
            "username": username,
        }
        interaction_id = snowflake()
        options = [{"name": "prompt", "type": STRING, "value": prompt}] if prompt else []
        payload: JSON = {
            "app_permissions": "562949953601536",
            "application_id": self.application_id,
            "attachment_size_limit": 10485760,
            "channel_id": channel_id,
            "data": {"id": snowflake(), "name": name, "options": options, "type": 1},
            "entitlement_sku_ids": [],
            "entitlements": [],
            "id": interaction_id,
            "locale": "en-US",
            "token": self._token(interaction_id),
            "type": APPLICATION_COMMAND,
            "version": 1,
        }
        if guild:
            payload |= {
                "authorizing_integration_owners": {"0": self.guild_id},
                "channel": {
                    "flags": 0,
                    "guild_id": self.guild_id,
                    "id": channel_id,
                    "last_message_id": snowflake(),
                    "name": "general",
                    "nsfw": False,
                    "parent_id": None,
                    "permissions": "2248473465835073",
                    "position": 0,
                    "rate_limit_per_user": 0,
                    "topic": None,
                    "type": 0,
                },
                "context": 0,
                "guild": {"features": [], "id": self.guild_id, "locale": "en-US"},
                "guild_id": self.guild_id,
                "guild_locale": "en-US",
                "member": {
                    "avatar": None,
                    "banner": None,
                    "communication_disabled_until": None,
                    "deaf": False,
                    "flags": 0,
                    "joined_at": _now(),
                    "mute": False,
                    "nick": None,
                    "pending": False,
                    "permissions": "2248473465835073",
                    "premium_since": None,
                    "roles": [],
                    "unusual_dm_activity_until": None,
                    "user": user,
                },
            }
        else:
            payload |= {
                "authorizing_integration_owners": {"0": "0"},
                "channel": {
                    "flags": 0,
                    "id": channel_id,
                    "last_message_id": snowflake(),
                    "recipients": [user],
                    "type": 1,
                },
                "context": 1,
                "user": user,
            }
        self._interactions[payload["token"]] = _Interaction(payload)
        return payload

    def _token(self, interaction_id: str) -> str:
        raw = f"interaction:{interaction_id}:{secrets.token_urlsafe(96)}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def signed(
        self,
        interaction: JSON,
        signature: Signature = "good",
        timestamp: int | None = None,
        body_override: bytes | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """The headers (lower-case names) and body of Discord's POST of `interaction`."""
        body = json.dumps(interaction, separators=(",", ":")).encode()
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        headers = {
            "content-type": "application/json",
            "user-agent": "Discord-Interactions/1.0 (+https://discord.com)",
        }
        if signature != "none":
            key = self._key if signature == "good" else Ed25519PrivateKey.generate()
            headers["x-signature-ed25519"] = key.sign(stamp.encode() + body).hex()
            headers["x-signature-timestamp"] = stamp
        return headers, body if body_override is None else body_override

    async def deliver(
        self,
        url: str,
        interaction: JSON,
        signature: Signature = "good",
        timestamp: int | None = None,
        body_override: bytes | None = None,
    ) -> tuple[int, Any]:
        """POST the interaction to the bot's endpoint; gives its status and JSON (or None)."""
        headers, body = self.signed(interaction, signature, timestamp, body_override)
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            text = await response.text()
            status = response.status
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if status == 200 and isinstance(answer, dict):
            self.acknowledge(interaction, answer)
        return status, answer

    def acknowledge(self, interaction: JSON, answer: JSON) -> None:
        """What Discord does with the endpoint's answer to a command: CHANNEL_MESSAGE_WITH_SOURCE
        (4) or its deferred form (5) creates the original response and opens the webhook."""
        state = self._interactions.get(interaction.get("token", ""))
        if state is None or answer.get("type") not in (4, 5) or state.acknowledged:
            return
        state.acknowledged = True
        content = answer.get("data", {}).get("content", "") if answer["type"] == 4 else ""
        state.original = self._message(state, content, original=True)
        if answer["type"] == 5:
            state.original["flags"] = LOADING

    def _message(self, state: _Interaction, content: str, original: bool) -> JSON:
        payload = state.payload
        message: JSON = {
            "application_id": self.application_id,
            "attachments": [],
            "author": {
                "avatar": None,
                "bot": True,
                "discriminator": "4242",
                "flags": 0,
                "global_name": None,
                "id": self.application_id,
                "public_flags": 0,
                "username": "noroshi",
            },
            "channel_id": payload["channel_id"],
            "components": [],
            "content": content,
            "edited_timestamp": None,
            "embeds": [],
            "flags": 0,
            "id": snowflake(),
            "mention_everyone": False,
            "mention_roles": [],
            "mentions": [],
            "pinned": False,
            "timestamp": _now(),
            "tts": False,
            "type": 20 if original else 0,  # CHAT_INPUT_COMMAND, DEFAULT
            "webhook_id": self.application_id,
        }
        if original:
            user = payload.get("member", {}).get("user") or payload.get("user")
            message["interaction_metadata"] = {
                "authorizing_integration_owners": payload["authorizing_integration_owners"],
                "command_type": 1,
                "id": payload["id"],
                "name": payload["data"]["name"],
                "type": APPLICATION_COMMAND,
                "user": user,
            }
        return message

    # --- faults and what was recorded ----------------------------------------------------------

    def fail_next(
        self, kind: Kind, status: int = 429, retry_after: float = 0.2, times: int = 1
    ) -> None:
        """Answer the next `times` requests of `kind` with `status` before serving any."""
        if kind not in self._faults:
            raise ValueError(f"kind must be one of {sorted(self._faults)}, not {kind!r}")
        self._faults[kind].append(_Fault(status, retry_after, times))

    def original(self, token: str) -> str | None:
        state = self._interactions.get(token)
        return None if state is None or state.original is None else state.original["content"]

    def followups(self, token: str) -> list[JSON]:
        state = self._interactions.get(token)
        return [] if state is None else list(state.followups.values())

    # --- the webhook endpoints ---------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        return await self._serve(request, "followup", "")

    async def _edit(self, request: web.Request) -> web.Response:
        message = request.match_info["message"]
        return await self._serve(request, "original" if message == "@original" else "edit", message)

    async def _get(self, request: web.Request) -> web.Response:
        state = self._state(request)
        if state is None:
            return _error(404, "Unknown Webhook", 10015)
        found = self._find(state, request.match_info["message"])
        return web.json_response(found) if found else _error(404, "Unknown Message", 10008)

    async def _serve(self, request: web.Request, kind: Kind, message: str) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return _error(
                400, "400: Bad Request", 50109
            )  # "The request body contains invalid JSON"
        call = Call(
            request.method, kind, request.match_info["token"], message, body, dict(request.query)
        )
        self.calls.append(call)
        response = self._answer(request, kind, message, body if isinstance(body, dict) else {})
        call.status = response.status
        return response

    def _answer(self, request: web.Request, kind: Kind, message: str, body: JSON) -> web.Response:
        fault = self._take_fault(kind)
        if fault is not None:
            return _fault(fault)
        state = self._state(request)
        if state is None:
            return _error(404, "Unknown Webhook", 10015)
        content = body.get("content")
        if isinstance(content, str) and len(content) > MAX_CONTENT:
            return _invalid_form("content", f"Must be {MAX_CONTENT} or fewer in length.")
        if kind == "followup":
            if not content:
                return _error(400, "Cannot send an empty message", 50006)
            created = self._message(state, content, original=False)
            state.followups[created["id"]] = created
            return web.json_response(created)
        target = self._find(state, message)
        if target is None:
            return _error(404, "Unknown Message", 10008)
        if content is not None:
            target["content"] = content
        target["flags"] &= ~LOADING
        target["edited_timestamp"] = _now()
        self.edits.append(Edit(state.payload["token"], message, target["content"]))
        return web.json_response(target)

    def _take_fault(self, kind: Kind) -> _Fault | None:
        queue = self._faults[kind]
        if not queue:
            return None
        fault = queue[0]
        fault.times -= 1
        if fault.times <= 0:
            queue.popleft()
        return fault

    def _state(self, request: web.Request) -> _Interaction | None:
        """The interaction whose webhook this is; None until it was answered (as Discord)."""
        if request.match_info["application_id"] != self.application_id:
            return None
        state = self._interactions.get(request.match_info["token"])
        return state if state is not None and state.acknowledged else None

    @staticmethod
    def _find(state: _Interaction, message: str) -> JSON | None:
        return state.original if message == "@original" else state.followups.get(message)


def _error(status: int, message: str, code: int) -> web.Response:
    return web.json_response({"message": message, "code": code}, status=status)


def _invalid_form(name: str, text: str) -> web.Response:
    errors = {name: {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": text}]}}
    body = {"code": 50035, "errors": errors, "message": "Invalid Form Body"}
    return web.json_response(body, status=400)


def _fault(fault: _Fault) -> web.Response:
    if fault.status == 429:
        headers = {
            "Retry-After": str(math.ceil(fault.retry_after)),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + fault.retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{fault.retry_after:.3f}",
            "X-RateLimit-Bucket": "a06de0de0a8ff3ecd5b7d4d7b5a0a5a6",
            "X-RateLimit-Scope": "user",
        }
        body = {
            "message": "You are being rate limited.",
            "retry_after": fault.retry_after,
            "global": False,
        }
        return web.json_response(body, status=429, headers=headers)
    if fault.status == 500:
        return _error(500, "500: Internal Server Error", 0)
    if fault.status > 500:  # what Cloudflare, in front of Discord, answers
        html = f"<html><head><title>{fault.status}</title></head><body>error code: {fault.status}</body></html>"
        return web.Response(status=fault.status, text=html, content_type="text/html")
    message, code = _ERRORS.get(fault.status, (f"{fault.status}: Error", 0))
    return _error(fault.status, message, code)


_ERRORS = {
    400: ("400: Bad Request", 0),
    401: ("Invalid Webhook Token", 50027),  # the interaction's 15 minutes are over
    403: ("Missing Access", 50001),
    404: ("Unknown Webhook", 10015),
}
