"""What every provider implements, and the per-request state they share with the router.

A provider owns its credentials and transport and speaks one upstream format; choosing a
deployment, retrying and falling back belong to `providers.router`. A request reaches it in
its client's format (the call's `wire`): a provider whose upstream speaks that format relays
the client's body and the upstream's stream as they are; any other request is translated,
once into the gateway's conversation and once out of it (`noroshi.wire.conversation`): the
provider decodes its upstream into events, the client's wire frames them.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import msgspec

from noroshi.config import ProviderConfig
from noroshi.errors import BadRequest, UpstreamError, UpstreamTimeout
from noroshi.providers.transport import MAX_ERROR_BODY, HTTPTransport, UpstreamResponse
from noroshi.wire import chat
from noroshi.wire.conversation import (
    Answer,
    Collector,
    Conversation,
    Delta,
    Event,
    Usage,
    UsageUpdate,
    Wire,
)
from noroshi.wire.openai import ChatRequest
from noroshi.wire.sse import SSEDecoder, SSEEvent

__all__ = [
    "Call",
    "Embedded",
    "HTTPProvider",
    "Provider",
    "Routed",
    "Usage",
    "upstream_error",
]

MAX_ANSWER_BYTES = 32 * 1024 * 1024
log = logging.getLogger("noroshi.providers")


class Routed:
    """What the router tracks for any request it routes: which model, which deployment, tries."""

    __slots__ = ("attempts", "deployment", "model", "request_id", "started", "usage")

    def __init__(self, model: str, request_id: str = "") -> None:
        self.model = model
        self.request_id = request_id
        self.deployment = ""
        self.attempts = 0
        self.usage: Usage | None = None
        self.started = time.monotonic()


class Call(Routed):
    """One model request on its way through the router to a provider, and what came back.

    `request` is a chat completion request, or a conversation decoded from another format;
    `body` the client's JSON as decoded, so unknown fields reach an upstream of its format,
    as do `headers` (such as `anthropic-beta`) and `query`. `wire` writes the answer in the
    client's format."""

    __slots__ = (
        "_conversation",
        "answer",
        "body",
        "chunks",
        "deadline",
        "finished",
        "first_byte_at",
        "headers",
        "query",
        "request",
        "wire",
    )

    def __init__(
        self,
        request: ChatRequest | Conversation,
        body: dict[str, Any],
        request_id: str = "",
        *,
        wire: Wire | None = None,
        headers: dict[str, str] | None = None,
        query: str = "",
    ) -> None:
        super().__init__(request.model, request_id)
        self.request = request
        self.body = body
        self.chunks = 0
        self.first_byte_at: float | None = None
        self.deadline = 0.0
        # the upstream sent its terminator: what the stream yields next is its last item
        self.finished = False
        include = isinstance(request, ChatRequest) and request.include_usage
        self.wire: Wire = wire if wire is not None else chat.ChatWire(request.model, include)
        self.headers = headers or {}
        self.query = query
        self.answer: Answer | None = None  # the whole answer, when it was translated
        self._conversation: Conversation | None = None

    @property
    def include_usage(self) -> bool:
        return isinstance(self.request, ChatRequest) and self.request.include_usage

    @property
    def conversation(self) -> Conversation:
        """The request as the gateway's conversation, decoded once, when first needed."""
        if self._conversation is None:
            request = self.request
            conv = request if isinstance(request, Conversation) else chat.decode_request(request)
            self._conversation = conv
        return self._conversation

    def translated(self, body: dict[str, Any], provider: str) -> dict[str, Any]:
        """`body`, an upstream request made from the conversation; what it could not carry is
        logged once."""
        dropped = self.conversation.dropped
        if dropped:
            log.warning(
                "request %s to %s: dropped %s",
                self.request_id,
                provider,
                "; ".join(dict.fromkeys(dropped)),
            )
            dropped.clear()
        return body


class Embedded(msgspec.Struct):
    vectors: list[list[float]]
    prompt_tokens: int


class Provider(abc.ABC):
    """One configured upstream: `complete` answers at once, `stream` answers as it comes,
    `embed` turns texts into vectors. A provider that lacks one of these says so with a 400.

    To answer, a provider implements `events` (its upstream's stream as events) and, when it
    can do better than collecting them, `answer`; one whose upstream speaks a client format
    (`native`) relays that format with `relay` and `relay_complete`."""

    native = ""  # the client format this provider's upstream speaks: "chat", "messages"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        self.healthy = True  # false while an active health check fails
        self.outstanding = 0  # requests in flight, kept by providers balanced by it

    async def complete(self, call: Call, model: str) -> bytes:
        """The whole answer in the client's format, encoded; sets `call.usage`."""
        if call.wire.format == self.native:
            return await self.relay_complete(call, model)
        answer = call.answer = await self.answer(call, model)
        call.usage = answer.usage
        return call.wire.answer(answer)

    def stream(self, call: Call, model: str) -> AsyncGenerator[bytes, None]:
        """The answer's stream in the client's format, one or more SSE events per item; ends
        only after the upstream's terminator, and without the client's (`call.wire.terminator`).
        A provider sets `call.finished` before its last item, so the client's terminator can
        leave with it."""
        if call.wire.format == self.native:
            return self.relay(call, model)
        return self._framed(call, model)

    async def _framed(self, call: Call, model: str) -> AsyncGenerator[bytes, None]:
        encoder = call.wire.encoder()  # a fresh one per attempt: nothing of a failed one shows
        events = self.events(call, model)
        try:
            async for batch in events:
                for event in batch:
                    if isinstance(event, Delta):
                        call.chunks += 1
                    elif isinstance(event, UsageUpdate):
                        call.usage = event.usage
                out = encoder.feed(batch)
                if call.finished:
                    out += encoder.end()
                if out:
                    yield out
        finally:
            await events.aclose()

    def events(self, call: Call, model: str) -> AsyncGenerator[list[Event], None]:
        """The answer as events, a batch per upstream read; sets `call.finished` before the
        batch its upstream's terminator came in."""
        raise self._unsupported("chat completions")

    async def answer(self, call: Call, model: str) -> Answer:
        """The whole answer: by default, its stream collected."""
        collector = Collector()
        events = self.events(call, model)
        try:
            async for batch in events:
                collector.feed(batch)
        finally:
            await events.aclose()
        return collector.answer

    def relay(self, call: Call, model: str) -> AsyncGenerator[bytes, None]:
        """The upstream's own stream, for a client of its format."""
        raise self._unsupported(f"the {call.wire.format} format natively")

    async def relay_complete(self, call: Call, model: str) -> bytes:
        """The upstream's own whole answer, for a client of its format."""
        raise self._unsupported(f"the {call.wire.format} format natively")

    async def count_tokens(self, call: Call, model: str) -> int:
        """The request's input tokens; by default an estimate, four bytes a token."""
        conv = msgspec.json.encode(
            [call.conversation.system, call.conversation.turns, call.conversation.tools]
        )
        return len(conv) // 4 + 1

    async def embed(self, texts: list[str], model: str, dimensions: int | None) -> Embedded:
        raise self._unsupported("embeddings")

    @abc.abstractmethod
    async def probe(self) -> str:
        """Reach the upstream once and say what answered (used by `noroshi doctor`)."""

    def warm(self) -> None:
        """Start loading what the first request would otherwise wait for; never blocks."""
        return None

    def describe(self) -> dict[str, Any]:
        """What `/health` shows of this provider."""
        return {"type": self.config.type}

    async def close(self) -> None:
        return None

    def _unsupported(self, what: str) -> BadRequest:
        return BadRequest(
            f"Provider '{self.name}' ({self.config.type}) does not serve {what}.",
            param="model",
            code="unsupported_model",
        )


class HTTPProvider(Provider):
    """A provider reached over HTTP through one pooled transport."""

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self.transport = HTTPTransport(
            max_connections=config.max_connections, connect_timeout=config.connect_timeout_s
        )

    @abc.abstractmethod
    def headers(self) -> dict[str, str]:
        """Credentials and content headers for every request."""

    def request_headers(self, method: str, path: str, body: bytes | None) -> dict[str, str]:
        """The headers of one request; those that depend on the request (a signature) too."""
        return self.headers()

    @staticmethod
    @abc.abstractmethod
    def error_message(body: Any) -> str | None:
        """The message inside this provider's JSON error body."""

    async def request(
        self, method: str, path: str, body: bytes | None, extra: dict[str, str] | None = None
    ) -> UpstreamResponse:
        """A started answer; an error status is raised as an `UpstreamError`. Its waits are
        bounded by the router's timeouts and, once streaming, the answer's idle timeout."""
        url = f"{self.config.base_url}{path}"
        headers = self.request_headers(method, path, body)
        if extra:
            headers.update(extra)
        resp = await self.transport.send(method, url, headers, body)
        if resp.status >= 400:
            try:
                raise await upstream_error(resp, self.error_message)
            finally:
                resp.close()
        return resp

    async def fetch(
        self, method: str, path: str, body: bytes | None, extra: dict[str, str] | None = None
    ) -> bytes:
        """The whole answer; its connection goes back to the pool."""
        resp = await self.request(method, path, body, extra)
        try:
            raw = await resp.read(MAX_ANSWER_BYTES)
        except BaseException:
            resp.close()
            raise
        resp.release()
        return raw

    async def sse(self, resp: UpstreamResponse, call: Call) -> AsyncIterator[list[SSEEvent]]:
        """The answer's events, a list per read, within the idle timeout (from the first event
        on) and the call's total deadline."""
        loop = asyncio.get_running_loop()
        decoder = SSEDecoder()
        first = True
        async for raw in resp.chunks():
            events = decoder.feed(raw)
            if events and first:
                first = False
                resp.set_idle_timeout(self.config.idle_timeout_s)
            yield events
            if loop.time() > call.deadline:
                raise UpstreamTimeout("The upstream answer took longer than the total timeout.")

    async def close(self) -> None:
        await self.transport.close()


async def upstream_error(
    resp: UpstreamResponse, message_of: Callable[[Any], str | None]
) -> UpstreamError:
    """The upstream's error answer as an `UpstreamError`, its message and Retry-After kept."""
    try:
        body = await resp.read(MAX_ERROR_BODY)
    except UpstreamError:
        body = b""
    message = None
    try:
        message = message_of(msgspec.json.decode(body))
    except (msgspec.DecodeError, AttributeError, TypeError, KeyError):
        pass
    if not message:
        message = body.decode("utf-8", "replace")[:500] or f"HTTP {resp.status}"
    return UpstreamError(
        f"Upstream answered {resp.status}: {message}",
        upstream_status=resp.status,
        retry_after=parse_retry_after(resp.header("retry-after")),
    )


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
