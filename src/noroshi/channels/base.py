"""What a channel is: a messaging platform where people talk to an agent.

A channel plugin is a subclass of `Channel`, found by its entry point in the group
`noroshi.channels`. It knows its platform and nothing else: how messages arrive (a webhook it
verifies, or long polling), who sent them and in which chat, and how to send, edit and show
typing. Everything between (storing each message before it is acknowledged, one run at a
time per conversation, streaming the answer by edits, retries, restarts) is the gateway's.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import httpx2
import msgspec

from noroshi.http import Request, Response

__all__ = ["Channel", "ChannelError", "Inbound", "Polled", "Received", "RetryHint"]

S = TypeVar("S", bound=msgspec.Struct)
RetryHint = Callable[[httpx2.Response], float | None]


class Inbound(msgspec.Struct, frozen=True, kw_only=True):
    """One message from a person, as its channel read it; stored as is before it is acked."""

    id: str  # the platform's id of the message, unique in its channel: answered at most once
    chat: str  # the conversation: a Telegram chat, a Slack channel, a Discord channel
    sender: str  # the platform's id of the person who wrote it
    text: str
    thread: str = ""  # a thread within the chat, on platforms that have them
    sender_name: str = ""
    reply: dict[str, str] = {}  # what answering needs beyond the chat (an interaction token)


class Received:
    """What one webhook call brought: the answer the platform waits for, and the messages.

    The gateway stores the messages before it sends `response`, so a platform that gets no
    answer (the server died) delivers them again, and a repeat is recognised by its id.
    """

    __slots__ = ("messages", "response")

    def __init__(self, response: Response, messages: Sequence[Inbound] = ()) -> None:
        self.response = response
        self.messages = list(messages)


class Polled:
    """One long poll: the messages, and the offset that confirms them on the next poll."""

    __slots__ = ("messages", "offset")

    def __init__(self, messages: Sequence[Inbound], offset: str) -> None:
        self.messages = list(messages)
        self.offset = offset


class ChannelError(Exception):
    """The platform refused a call, or could not be reached after the retries."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Channel(abc.ABC, Generic[S]):
    """A platform's plugin. `settings` is the Struct of its own keys in a `[[channels]]`
    table (the token, the signing secret); config errors name them as `channels.N.key`."""

    settings_type: ClassVar[type[msgspec.Struct]]
    max_text: ClassVar[int] = 4000  # the longest message it takes; longer answers continue
    edit_interval_s: ClassVar[float] = 1.0  # the least time between two edits of one message

    def __init__(self, name: str, settings: S, http: Any) -> None:
        """`http` is the gateway's `Outbound`: calls to the platform retried on 429 and 5xx."""
        self.name = name
        self.settings = settings
        self.http = http

    @property
    def polls(self) -> bool:
        """Whether messages come by long polling (`poll`) rather than to the webhook."""
        return False

    async def receive(self, request: Request) -> Received:
        """A call to the webhook, `POST /channels/<name>`: verify it (raise `Unauthorized`
        for a bad signature), answer what the platform expects, and read its messages."""
        raise NotImplementedError(f"channel {self.name} takes no webhook")

    async def poll(self, offset: str) -> Polled:
        """Wait for messages after `offset` ("" at first); the gateway stores the returned
        offset only after it has stored the messages."""
        raise NotImplementedError(f"channel {self.name} does not poll")

    @abc.abstractmethod
    async def send(self, to: Inbound, text: str, page: int) -> str:
        """Send page `page` (0 first) of the answer to `to`; the handle that `edit` takes."""

    @abc.abstractmethod
    async def edit(self, to: Inbound, handle: str, text: str) -> None:
        """Replace the text of a message sent by `send`."""

    async def typing(self, to: Inbound) -> None:
        """Show that an answer is coming, where the platform can."""

    def retry_hint(self, response: httpx2.Response) -> float | None:
        """Seconds the platform asks us to wait before trying again; `Retry-After` here."""
        value = response.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    async def open(self) -> None:
        """Anything the platform needs before the first message (none by default)."""

    async def close(self) -> None:
        """Let go of what `open` took."""
