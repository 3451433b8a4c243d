"""The SSE codec decodes the same events however the bytes are split."""

from __future__ import annotations

import pytest

from noroshi.wire.sse import SSEDecoder, encode_event

STREAM = (
    b'data: {"a": 1}\n\n'
    b'event: message_start\ndata: {"b": 2}\n\n'
    b": a comment\n\n"
    b"data: line one\ndata: line two\n\n"
    b"data:no-space\r\n\r\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    ("message", b'{"a": 1}'),
    ("message_start", b'{"b": 2}'),
    ("message", b"line one\nline two"),
    ("message", b"no-space"),
    ("message", b"[DONE]"),
]


def decode_in_pieces(data: bytes, size: int) -> list[tuple[str, bytes]]:
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(data), size):
        events += decoder.feed(data[i : i + size])
    return events + decoder.flush()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, len(STREAM)])
def test_any_split_gives_the_same_events(size: int) -> None:
    assert decode_in_pieces(STREAM, size) == EXPECTED


def test_flush_returns_an_event_missing_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: tail") == []
    assert decoder.flush() == [("message", b"tail")]
    assert decoder.flush() == []


def test_encode_round_trips() -> None:
    raw = encode_event(b"two\nlines", event="error", id="7")
    assert raw == b"event: error\nid: 7\ndata: two\ndata: lines\n\n"
    assert SSEDecoder().feed(raw) == [("error", b"two\nlines")]


@pytest.mark.parametrize("field", ["event", "id"])
def test_encode_rejects_line_breaks_in_names(field: str) -> None:
    with pytest.raises(ValueError):
        encode_event(b"x", **{field: "a\nb"})
