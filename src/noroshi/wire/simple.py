"""Types of the simple endpoints (`/api/chat`, `/api/generate`, `/api/embed`, `/chat`,
`/chat/stream`): the bodies AI back ends write by hand, and what they answer."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from noroshi.wire.openai import Usage

__all__ = [
    "ChatBody",
    "EmbedAnswer",
    "EmbedBody",
    "GenerateBody",
    "PromptBody",
    "SimpleAnswer",
    "SimpleMessage",
    "StreamBody",
    "StreamError",
    "TextEvent",
]

Text = Annotated[str, Meta(min_length=1)]


class SimpleMessage(Struct):
    role: Literal["user", "assistant", "system"]
    content: str


class ChatBody(Struct, kw_only=True):
    messages: Annotated[list[SimpleMessage], Meta(min_length=1)]
    model: str | None = None


class GenerateBody(Struct, kw_only=True):
    prompt: Text
    model: str | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None


class EmbedBody(Struct, kw_only=True):
    text: Text
    model: str | None = None


class PromptBody(Struct, kw_only=True):
    prompt: Text
    model: str | None = None


class StreamBody(Struct, kw_only=True):
    """Either `prompt` or `messages`."""

    prompt: Text | None = None
    messages: Annotated[list[SimpleMessage], Meta(min_length=1)] | None = None
    model: str | None = None


class TextEvent(Struct):
    """One `data:` event of `/api/chat` and `/api/generate`; the stream ends with `[DONE]`."""

    text: str


class StreamError(Struct):
    """The data of an `event: error` that ends a simple stream which failed after its start."""

    message: str


class SimpleAnswer(Struct, kw_only=True):
    message: str
    model: str
    usage: Usage


class EmbedAnswer(Struct, kw_only=True):
    embedding: list[float]
    dimensions: int
