"""What every provider implements, and the per-request state they share with the router.

A provider owns its credentials and transport and translates one wire format; choosing a
deployment, retrying and falling back belong to `providers.router`.
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import msgspec

from noroshi.config import ProviderConfig
from noroshi.errors import BadRequest, UpstreamError
from noroshi.providers.transport import MAX_ERROR_BODY, HTTPTransport, UpstreamResponse
from noroshi.wire.conversation import Usage
from noroshi.wire.openai import ChatRequest

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
    """One chat request on its way through the router to a provider, and what came back."""

    __slots__ = ("body", "chunks", "deadline", "finished", "first_byte_at", "request")

    def __init__(self, request: ChatRequest, body: dict[str, Any], request_id: str = "") -> None:
        super().__init__(request.model, request_id)
        self.request = request
        self.body = body  # the client's JSON as decoded, so unknown fields reach the upstream
        self.chunks = 0
        self.first_byte_at: float | None = None
        self.deadline = 0.0
        # the upstream sent its terminator: what the stream yields next is its last item
        self.finished = False

    @property
    def include_usage(self) -> bool:
        return self.request.include_usage


class Embedded(msgspec.Struct):
    vectors: list[list[float]]
    prompt_tokens: int


class Provider(abc.ABC):
    """One configured upstream: `complete` answers at once, `stream` yields OpenAI chunk events,
    `embed` turns texts into vectors. A provider that lacks one of these says so with a 400."""

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        self.healthy = True  # false while an active health check fails
        self.outstanding = 0  # requests in flight, kept by providers balanced by it

    async def complete(self, call: Call, model: str) -> bytes:
        """A `chat.completion` object, encoded; sets `call.usage`."""
        raise self._unsupported("chat completions")

    def stream(self, call: Call, model: str) -> AsyncGenerator[bytes, None]:
        """`chat.completion.chunk` events, SSE-framed (`data: {...}\\n\\n`, one or more per item);
        ends only after the upstream's terminator, which it does not include. A provider may set
        `call.finished` before its last item, so the client's terminator can leave with it."""
        raise self._unsupported("chat completions")

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

    async def request(self, method: str, path: str, body: bytes | None) -> UpstreamResponse:
        """A started answer; an error status is raised as an `UpstreamError`. Its waits are
        bounded by the router's timeouts and, once streaming, the answer's idle timeout."""
        url = f"{self.config.base_url}{path}"
        headers = self.request_headers(method, path, body)
        resp = await self.transport.send(method, url, headers, body)
        if resp.status >= 400:
            try:
                raise await upstream_error(resp, self.error_message)
            finally:
                resp.close()
        return resp

    async def fetch(self, method: str, path: str, body: bytes | None) -> bytes:
        """The whole answer; its connection goes back to the pool."""
        resp = await self.request(method, path, body)
        try:
            raw = await resp.read(MAX_ANSWER_BYTES)
        except BaseException:
            resp.close()
            raise
        resp.release()
        return raw

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
