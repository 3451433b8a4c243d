"""Responses: a status, headers and either bytes or a stream, sent through a `Sink`.

A `Sink` is what a server (noroshi's own, or the ASGI adapter) gives a response to write into;
it is the only place that knows which server is underneath.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from noroshi.errors import NoroshiError
from noroshi.types import Headers
from noroshi.wire import times

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
_encode = times.encode  # noroshi's own types: their times as ISO 8601


class ClientGone(Exception):
    """The client closed the connection; nothing more can be written."""


class StreamWriter(Protocol):
    async def send_bytes(self, data: bytes) -> None: ...

    async def end(self, data: bytes) -> None:
        """The last bytes of the answer, which ends with them: the server can send both in
        one write, and the client sees the end before the gateway's own bookkeeping."""
        ...


class Sink(Protocol):
    gone: tuple[type[BaseException], ...]  # what a write raises once the client has left

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
    """Streams `head`, then `stream`, then `tail`; an error after the first byte becomes an event
    in the stream's format, and then the tail (the success terminator) is never sent.

    The source iterator is always closed, which is what cancels the upstream call. `ended`, when
    given, says after an item whether it was the source's last, one that nothing can fail after:
    the tail then leaves in the same write, which ends the answer.
    """

    __slots__ = (
        "_cut",
        "before_end",
        "ended",
        "head",
        "max_bytes",
        "on_error",
        "outcome",
        "stream",
        "tail",
    )

    def __init__(
        self,
        stream: AsyncIterator[bytes],
        status: int = 200,
        headers: Headers | None = None,
        on_error: ErrorEncoder = _sse_error,
        max_bytes: int = 64 * 1024 * 1024,
        head: bytes = b"",
        tail: bytes = b"",
        ended: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(b"", status, headers if headers is not None else list(SSE_HEADERS))
        self.stream = stream
        self.on_error = on_error
        self.max_bytes = max_bytes
        self.head = head
        self.tail = tail
        self.ended = ended
        # run once the source is done and nothing can fail, before the end is written
        self.before_end: Callable[[], Awaitable[None]] | None = None
        self._cut: NoroshiError | None = None
        self.outcome = "cut"  # "ok" once the tail is sent, "error" after an error event

    def cut(self, reason: NoroshiError, task: asyncio.Task[Any]) -> None:
        """End the stream from outside (a drain that ran out of time) with an error event."""
        self._cut = reason
        task.cancel()

    async def send(self, sink: Sink) -> None:
        writer = await sink.start(self.status, self.headers)
        send, gone, ended = writer.send_bytes, sink.gone, self.ended
        stream, head, tail = self.stream, self.head, self.tail
        sent = len(head)
        last = False  # the end is sent: the source has nothing more to give
        before_end = self.before_end
        try:
            if head:
                if ended is not None and ended():
                    last = True
                    if before_end is not None:
                        await before_end()
                    await writer.end(head + tail)
                else:
                    await send(head)
            async for chunk in stream:
                sent += len(chunk)
                if sent > self.max_bytes:
                    raise NoroshiError(
                        "The stream exceeded the gateway's size limit.", code="stream_too_large"
                    )
                if ended is not None and ended():
                    last = True
                    if before_end is not None:
                        await before_end()
                    await writer.end(chunk + tail)
                else:
                    await send(chunk)
            if not last:
                if before_end is not None:
                    await before_end()
                await writer.end(tail)
            self.outcome = "ok"
        except gone:
            pass
        except NoroshiError as exc:
            self.outcome = "error"
            await _send_quietly(writer, gone, self.on_error(exc))
        except asyncio.CancelledError:
            if self._cut is None:
                raise  # the client left: nobody to tell
            # cut on purpose: tell the client why, and end the response normally
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await _send_quietly(writer, gone, self.on_error(self._cut))
        except Exception:
            self.outcome = "error"
            log.exception("stream failed")
            await _send_quietly(writer, gone, self.on_error(NoroshiError("The stream failed.")))
        finally:
            await _close(stream)


async def _send_quietly(
    writer: StreamWriter, gone: tuple[type[BaseException], ...], data: bytes
) -> None:
    try:
        await writer.send_bytes(data)
    except gone:
        pass


async def _close(stream: AsyncIterator[bytes]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
