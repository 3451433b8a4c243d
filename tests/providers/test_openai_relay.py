"""The OpenAI stream relay: what each upstream read sends on. Plain `data:` events go on as the
upstream framed them, checked in one decode per read; whatever way the reads cut the stream,
the client gets the same events, the usage is found, and faults are raised."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from noroshi.errors import UpstreamError, UpstreamProtocolError
from noroshi.providers.base import Call
from noroshi.providers.openai_compat import _Relay
from noroshi.wire.openai import ChatRequest
from noroshi.wire.sse import SSEDecoder


def chunk(text: str, usage: bool = False) -> bytes:
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
        "usage": None,
    }
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


USAGE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}\n\n'
)
STREAM = chunk("Hel") + chunk("lo") + chunk(" there") + USAGE + b"data: [DONE]\n\n"


def new_call(include_usage: bool) -> Call:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    request = msgspec.convert(
        {"model": "m", "stream": True, **options, "messages": [{"role": "user", "content": "hi"}]},
        ChatRequest,
    )
    return Call(request, {})


def relay(reads: list[bytes], include_usage: bool = False) -> tuple[bytes, Call, _Relay]:
    call = new_call(include_usage)
    r = _Relay(call)
    sent = b"".join(r.feed(read) for read in reads)
    return sent, call, r


def events(data: bytes) -> list[bytes]:
    return [d for _, d in SSEDecoder().feed(data)]


def splits(data: bytes, cuts: int) -> list[list[bytes]]:
    out = []
    for points in itertools.combinations(range(1, len(data)), cuts):
        bounds = (0, *points, len(data))
        out.append([data[a:b] for a, b in itertools.pairwise(bounds)])
    return out


@pytest.mark.parametrize("include_usage", [False, True])
def test_every_cut_of_the_stream_sends_the_same_events(include_usage: bool) -> None:
    whole, call, r = relay([STREAM], include_usage)
    expected = events(
        chunk("Hel") + chunk("lo") + chunk(" there") + (USAGE if include_usage else b"")
    )
    assert events(whole) == expected and r.finished and call.finished
    assert call.usage is not None and call.usage.completion_tokens == 3
    assert call.chunks == len(expected)
    for reads in [*splits(STREAM, 1), *splits(STREAM, 2)[::37]]:
        sent, call, r = relay(reads, include_usage)
        assert events(sent) == expected, reads
        assert r.finished and call.usage is not None and call.chunks == len(expected)


def test_a_read_of_plain_events_goes_on_untouched() -> None:
    read = chunk("a") + chunk("b")
    sent, call, _ = relay([read])
    assert sent == read and call.chunks == 2


def test_a_stream_that_is_not_plain_is_read_event_by_event() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    comment = b": keep-alive\n\n" + STREAM
    for stream in (crlf, comment):
        sent, call, r = relay([stream[:40], stream[40:]])
        assert events(sent) == events(chunk("Hel") + chunk("lo") + chunk(" there"))
        assert r.finished and call.usage is not None


@pytest.mark.parametrize("fault", ["malformed", "error"])
def test_faults_in_a_read_are_raised(fault: str) -> None:
    bad = (
        b'data: {"choices": [\n\n'
        if fault == "malformed"
        else b'data: {"error": {"message": "overloaded"}}\n\n'
    )
    kind = UpstreamProtocolError if fault == "malformed" else UpstreamError
    with pytest.raises(kind):
        relay([chunk("a") + bad])
    with pytest.raises(kind):  # and when it comes on its own
        relay([chunk("a"), bad])
