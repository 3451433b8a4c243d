"""The SSE codec decodes the same events however the bytes are split."""

from __future__ import annotations

import itertools

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


# Events whose lines end in `\n`, `\r\n` and a bare `\r`, so that some split falls between the
# `\r` and the `\n` of one line end, and some after a bare `\r` followed by a new line.
MIXED = (
    b"event: a\r\ndata: x\r\ndata: y\r\n\r\n"
    b"data: p\rdata: q\r\r"
    b"data: m\r\n\n"
    b"data: n\r\r\n"
    b"data: z\n\n"
)


def decode_split_at(data: bytes, cuts: tuple[int, ...]) -> list[tuple[str, bytes]]:
    decoder = SSEDecoder()
    events = []
    for start, end in itertools.pairwise((0, *cuts, len(data))):
        events += decoder.feed(data[start:end])
    return events + decoder.flush()


def test_mixed_line_ends_in_one_read() -> None:
    assert decode_split_at(MIXED, ()) == [
        ("a", b"x\ny"),
        ("message", b"p\nq"),
        ("message", b"m"),
        ("message", b"n"),
        ("message", b"z"),
    ]


def test_every_split_of_mixed_line_ends_gives_the_one_read_events() -> None:
    whole = decode_split_at(MIXED, ())
    # (i, i) feeds an empty read between two halves: every one-split case is among these too.
    for cuts in itertools.combinations_with_replacement(range(len(MIXED) + 1), 2):
        assert decode_split_at(MIXED, cuts) == whole, cuts


def test_a_line_end_split_between_cr_and_lf_is_one_line_end() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"data: x\r") + decoder.feed(b"\ndata: y\r\n\r\n")
    assert events == [("message", b"x\ny")]


def test_an_empty_read_keeps_a_pending_cr() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"data: x\r") + decoder.feed(b"") + decoder.feed(b"\ndata: y\n\n")
    assert events == [("message", b"x\ny")]


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
