"""Responses: a status, headers and either bytes or a stream, sent through a `Sink`.

A `Sink` is what a transport adapter (RSGI or ASGI) gives a response to write into; it is
the only place that knows which server is underneath.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import msgspec

from noroshi.errors import NoroshiError
from noroshi.types import Headers

__all__ = [
    "ClientGone",
    "JSONResponse",
    "Response",
    "Sink",
    "StreamResponse",
    "StreamWriter",
]

log = logging.getLogger("noroshi.http")

JSON_TYPE = ("content-type", "application/json")
SSE_HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
]
_encode = msgspec.json.encode


class ClientGone(Exception):
    """The client closed the connection; nothing more can be written."""


class StreamWriter(Protocol):
    async def write(self, data: bytes) -> None: ...


class Sink(Protocol):
    async def send(self, status: int, headers: Headers, body: bytes) -> None: ...
    async def start(self, status: int, headers: Headers) -> StreamWriter: ...


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, body: bytes = b"", status: int = 200, headers: Headers | None = None):
        self.body = body
        self.status = status
        self.headers = headers if headers is not None else [JSON_TYPE]

    async def send(self, sink: Sink) -> None:
        await sink.send(self.status, self.headers, self.body)

    @classmethod
    def error(cls, exc: NoroshiError) -> Response:
        headers = [JSON_TYPE, *exc.headers.items()]
        return cls(exc.body(), exc.status, headers)


class JSONResponse(Response):
    __slots__ = ()

    def __init__(self, content: Any, status: int = 200, headers: Headers | None = None):
        super().__init__(_encode(content), status, headers)


ErrorEncoder = Callable[[NoroshiError], bytes]


def _sse_error(exc: NoroshiError) -> bytes:
    return b"data: " + exc.body() + b"\n\n"


class StreamResponse(Response):
    """Streams its body; errors after the first byte become an event in the stream's format.

    The stream ends without its success terminator whenever an error is written, and the
    source iterator is always closed, which is what cancels the upstream call.
    """

    __slots__ = ("_cut", "_task", "max_bytes", "on_error", "stream")

    def __init__(
        self,
        stream: AsyncIterator[bytes],
        status: int = 200,
        headers: Headers | None = None,
        on_error: ErrorEncoder = _sse_error,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        super().__init__(b"", status, headers if headers is not None else list(SSE_HEADERS))
        self.stream = stream
        self.on_error = on_error
        self.max_bytes = max_bytes
        self._task: asyncio.Task[Any] | None = None
        self._cut: NoroshiError | None = None

    def cut(self, reason: NoroshiError) -> None:
        """End the stream from outside (a drain that ran out of time) with an error event."""
        self._cut = reason
        if self._task is not None:
            self._task.cancel()

    async def send(self, sink: Sink) -> None:
        self._task = task = asyncio.current_task()
        assert task is not None
        writer = await sink.start(self.status, self.headers)
        stream, sent = self.stream, 0
        try:
            async for chunk in stream:
                sent += len(chunk)
                if sent > self.max_bytes:
                    raise NoroshiError(
                        "The stream exceeded the gateway's size limit.", code="stream_too_large"
                    )
                await writer.write(chunk)
        except ClientGone:
            pass
        except NoroshiError as exc:
            await _write_quietly(writer, self.on_error(exc))
        except asyncio.CancelledError:
            if self._cut is None:
                raise  # the client left: nobody to tell
            # cut on purpose: tell the client why, and end the response normally
            task.uncancel()
            await _write_quietly(writer, self.on_error(self._cut))
        except Exception:
            log.exception("stream failed")
            await _write_quietly(writer, self.on_error(NoroshiError("The stream failed.")))
        finally:
            await _close(stream)


async def _write_quietly(writer: StreamWriter, data: bytes) -> None:
    try:
        await writer.write(data)
    except ClientGone:
        pass


async def _close(stream: AsyncIterator[bytes]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
