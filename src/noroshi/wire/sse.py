"""Server-Sent Events codec: an incremental decoder for upstream streams, and the encoder.

The decoder is on the hot path of every relayed stream, so the common case (one
`data: {...}` line per event, `\\n\\n` between events) takes a fast path with no line loop.
A `\\r` that ends one read may be the first half of a `\\r\\n`: a flag remembers it, and a `\\n`
that opens the next read is then dropped, so no read is scanned twice.
It tests for bytes with `find`, not `in`: CPython's `in` on bytes first tries the operand as an
integer and formats a TypeError it then discards, which costs twice what `find` does.
"""

from __future__ import annotations

__all__ = ["SSEDecoder", "SSEEvent", "encode_event"]

SSEEvent = tuple[str, bytes]  # (event name, data); the name is "message" when not given


class SSEDecoder:
    """`feed(bytes) -> events` and `flush()`, whatever way the bytes were split."""

    __slots__ = ("_buf", "_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._cr = False  # the last read ended in `\r`, already counted as a line end

    def feed(self, data: bytes) -> list[SSEEvent]:
        if self._cr and data:
            self._cr = False
            if data[0] == 10:  # b"\n": the rest of a `\r\n` split across reads
                data = data[1:]
        if data.find(b"\r") >= 0:
            self._cr = data[-1] == 13  # b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + data if self._buf else data
        if buf.find(b"\n\n") < 0:
            self._buf = buf
            return []
        *blocks, self._buf = buf.split(b"\n\n")
        events: list[SSEEvent] = []
        for block in blocks:
            if block.startswith(b"data: ") and block.find(b"\n") < 0:
                events.append(("message", block[6:]))
            elif block:
                event = _parse_block(block)
                if event is not None:
                    events.append(event)
        return events

    def flush(self) -> list[SSEEvent]:
        """What is left when the stream ends: an event missing its blank line, if any."""
        block, self._buf, self._cr = self._buf.strip(b"\n"), b"", False
        event = _parse_block(block) if block else None
        return [event] if event is not None else []


def _parse_block(block: bytes) -> SSEEvent | None:
    name, data, has_data = "message", [], False
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
            has_data = True
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    return (name, b"\n".join(data)) if has_data else None


def encode_event(data: bytes, event: str | None = None, id: str | None = None) -> bytes:
    """One SSE event; names and ids may not contain line breaks, data lines are split."""
    head = b""
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError("an SSE event name cannot contain a line break")
        head += b"event: " + event.encode() + b"\n"
    if id is not None:
        if "\n" in id or "\r" in id:
            raise ValueError("an SSE id cannot contain a line break")
        head += b"id: " + id.encode() + b"\n"
    if b"\n" in data:
        data = data.replace(b"\n", b"\ndata: ")
    return head + b"data: " + data + b"\n\n"
