"""WebSockets on noroshi's own server: the `Backend` that `serve_websocket` drives, over the
`websockets` library's sans-I/O protocol, which does the handshake's checks and the framing.

The connection hands its bytes here once llhttp has read an upgrade request. A refused
handshake is a plain HTTP answer, its real status and JSON body; after `accept()` every close
carries its code. Messages are bounded by `MAX_MESSAGE_BYTES` in the protocol itself (a larger
one closes with 1009), and the socket is not read while `QUEUE` messages wait for the handler.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from websockets.frames import Frame, Opcode
from websockets.http11 import Request as Handshake
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from noroshi.errors import NoroshiError
from noroshi.http.response import ClientGone, Response
from noroshi.http.websocket import MAX_MESSAGE_BYTES, WebSocketDisconnect

if TYPE_CHECKING:
    from noroshi.http.request import Request
    from noroshi.http.server import HttpConnection

__all__ = ["Session"]

QUEUE = 16  # messages received and not yet taken before the socket stops being read
CLOSE_WAIT_S = 5.0  # how long a close waits for the client's own close frame
ABNORMAL, NO_STATUS, INVALID_DATA = 1006, 1005, 1007


class Session:
    """One upgraded connection, from the handshake to the close."""

    __slots__ = (
        "_closed",
        "_ended",
        "_fragments",
        "_handshake",
        "_messages",
        "_text",
        "_waiter",
        "conn",
        "opened",
        "protocol",
    )

    def __init__(self, conn: HttpConnection, request: Request, target: bytes, rest: bytes) -> None:
        self.conn = conn
        self.protocol = ServerProtocol(max_size=MAX_MESSAGE_BYTES)
        self.opened = False
        self._messages: deque[str | bytes] = deque()
        self._fragments: list[bytes] = []
        self._text = False
        self._waiter: asyncio.Future[None] | None = None
        self._ended: WebSocketDisconnect | None = None
        self._closed = conn.loop.create_future()  # the TCP connection is over
        # the protocol checks the handshake from the request as the client sent it
        self.protocol.receive_data(_head(target, request) + rest)
        events = self.protocol.events_received()
        self._handshake = events[0] if events and isinstance(events[0], Handshake) else None
        conn.transport.pause_reading()  # nothing is read until the handler accepts
        conn.reading = False

    # --- bytes from the connection ---

    def feed(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        if self.opened:
            self._take()

    def lost(self) -> None:
        self.protocol.receive_eof()
        self._end(WebSocketDisconnect(ABNORMAL))
        if not self._closed.done():
            self._closed.set_result(None)

    def going_away(self) -> None:
        """The server's drain is over: say so before the connection is cut."""
        if self.protocol.state is OPEN:
            self.protocol.send_close(1001, "The server is shutting down.")
            self._flush()

    def _take(self) -> None:
        """Messages out of the frames received; the close handshake answered."""
        for event in self.protocol.events_received():
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                self._text = opcode is Opcode.TEXT
                self._fragments = [bytes(event.data)]
            elif opcode is Opcode.CONT:
                self._fragments.append(bytes(event.data))
            elif opcode is Opcode.CLOSE:
                rcvd = self.protocol.close_rcvd
                code, reason = (rcvd.code, rcvd.reason) if rcvd else (NO_STATUS, "")
                self._end(WebSocketDisconnect(code, reason))
                continue
            else:
                continue
            if event.fin:
                data = b"".join(self._fragments)
                self._fragments = []
                if self._text:
                    try:
                        self._messages.append(data.decode())
                    except UnicodeDecodeError:
                        self.protocol.fail(INVALID_DATA, "invalid UTF-8")
                        self._end(WebSocketDisconnect(INVALID_DATA, "invalid UTF-8"))
                        break
                else:
                    self._messages.append(data)
                _wake(self._waiter)
        if self.protocol.parser_exc is not None and self._ended is None:
            sent = self.protocol.close_sent  # the protocol failed the connection: too big, …
            self._end(WebSocketDisconnect(sent.code if sent else ABNORMAL, str(sent or "")))
        self._flush()
        if len(self._messages) >= QUEUE and self.conn.reading:
            self.conn.reading = False
            self.conn.transport.pause_reading()

    def _end(self, exc: WebSocketDisconnect) -> None:
        if self._ended is None:
            self._ended = exc
        _wake(self._waiter)

    def _flush(self) -> None:
        conn = self.conn
        for data in self.protocol.data_to_send():
            if conn.lost:
                return
            if data:
                conn.transport.write(data)
            else:  # the protocol's end of stream: a server closes the connection then
                conn.transport.close()

    # --- the Backend ---

    async def accept(self) -> None:
        handshake = self._handshake
        if handshake is None:  # not a request the protocol could read: it answered already
            self._flush()
            raise WebSocketDisconnect(ABNORMAL)
        response = self.protocol.accept(handshake)
        self.protocol.send_response(response)
        self._flush()
        if response.status_code != 101:  # a malformed handshake: the protocol said why
            raise WebSocketDisconnect(ABNORMAL)
        self.opened = True
        self.conn.state = 2  # the HTTP answer is sent
        self.conn.reading = True
        self.conn.transport.resume_reading()
        self._take()

    async def receive(self) -> str | bytes:
        while not self._messages:
            if self._ended is not None:
                raise WebSocketDisconnect(self._ended.code, self._ended.reason)
            self._waiter = self.conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._messages.popleft()
        if not self.conn.reading and len(self._messages) < QUEUE // 2 and not self.conn.lost:
            self.conn.reading = True
            self.conn.transport.resume_reading()
        return message

    async def send(self, data: str | bytes) -> None:
        if self.protocol.state is not OPEN or self.conn.lost:
            raise WebSocketDisconnect(self._ended.code if self._ended else ABNORMAL)
        if isinstance(data, str):
            self.protocol.send_text(data.encode())
        else:
            self.protocol.send_binary(data)
        self._flush()
        try:
            await self.conn.drain()
        except ClientGone as exc:
            raise WebSocketDisconnect(ABNORMAL) from exc

    async def close(self, code: int, reason: str) -> None:
        if self.protocol.state is OPEN:
            self.protocol.send_close(code, reason)
            self._flush()
        try:
            # the client answers with its close frame, after which the protocol ends the stream
            await asyncio.wait_for(asyncio.shield(self._closed), CLOSE_WAIT_S)
        except TimeoutError:
            self.conn.transport.abort()

    async def refuse(self, error: NoroshiError) -> None:
        response = Response.error(error)
        try:
            await self.conn.send(response.status, response.headers, response.body)
        except ClientGone:
            pass


def _head(target: bytes, request: Request) -> bytes:
    lines = [f"{name}: {value}\r\n" for name, value in request.headers.items()]
    return b"GET %s HTTP/1.1\r\n%s\r\n" % (target, "".join(lines).encode("latin-1"))


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
