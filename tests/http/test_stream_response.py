"""A stream's writes: the head, each item, and the tail, which only a complete stream earns and
which leaves with the source's last item when the source says which that is."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from noroshi.errors import NoroshiError
from noroshi.http.response import StreamResponse
from noroshi.types import Headers

TAIL = b"data: [DONE]\n\n"


class Gone(Exception):
    pass


class RecordingSink:
    """A transport that keeps each write as it was made."""

    gone: tuple[type[BaseException], ...] = (Gone,)

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.ended = False

    async def send(self, status: int, headers: Headers, body: bytes) -> None:
        raise AssertionError("a stream is not sent whole")

    async def start(self, status: int, headers: Headers) -> RecordingSink:
        return self

    async def send_bytes(self, data: bytes) -> None:
        assert not self.ended
        self.writes.append(data)

    async def end(self, data: bytes) -> None:
        assert not self.ended
        self.ended = True
        if data:
            self.writes.append(data)


class Source:
    """Items, then an end; `ended` is what a provider reports: it saw its upstream's end before
    handing out the last item."""

    def __init__(self, items: list[bytes], fail_after: bool = False) -> None:
        self.items, self.fail_after, self.done = items, fail_after, False

    async def run(self) -> AsyncIterator[bytes]:
        for i, item in enumerate(self.items):
            self.done = i == len(self.items) - 1 and not self.fail_after
            yield item
        if self.fail_after:
            raise NoroshiError("The upstream failed.")


async def send(source: Source, ended: bool, head: bytes = b"h") -> tuple[list[bytes], str]:
    sink = RecordingSink()
    response = StreamResponse(
        source.run(), head=head, tail=TAIL, ended=(lambda: source.done) if ended else None
    )
    await response.send(sink)
    assert sink.ended == (response.outcome == "ok")  # only a complete stream is ended by it
    return sink.writes, response.outcome


async def test_the_tail_leaves_with_the_last_item() -> None:
    writes, outcome = await send(Source([b"a", b"b"]), ended=True)
    assert writes == [b"h", b"a", b"b" + TAIL]
    assert outcome == "ok"


async def test_without_ended_the_tail_is_its_own_write() -> None:
    writes, outcome = await send(Source([b"a", b"b"]), ended=False)
    assert writes == [b"h", b"a", b"b", TAIL]
    assert outcome == "ok"


async def test_a_head_that_was_the_whole_answer_takes_the_tail() -> None:
    source = Source([])
    source.done = True  # the first item, taken before the response, was also the last
    writes, outcome = await send(source, ended=True)
    assert writes == [b"h" + TAIL]
    assert outcome == "ok"


async def test_a_source_that_fails_never_sends_the_tail() -> None:
    writes, outcome = await send(Source([b"a", b"b"], fail_after=True), ended=True)
    assert writes[:3] == [b"h", b"a", b"b"]
    assert msgspec.json.decode(writes[3].removeprefix(b"data: "))["error"]["message"]
    assert all(TAIL not in w for w in writes)
    assert outcome == "error"


async def test_before_end_runs_once_the_source_is_done_and_before_the_end_is_written() -> None:
    for knows_its_last in (True, False):
        source = Source([b"a", b"b"])
        sink = RecordingSink()
        seen: list[tuple[list[bytes], bool]] = []

        async def before_end(sink: RecordingSink = sink, seen: list[Any] = seen) -> None:
            seen.append((list(sink.writes), sink.ended))

        ended = (lambda s=source: s.done) if knows_its_last else None
        response = StreamResponse(source.run(), tail=TAIL, ended=ended)
        response.before_end = before_end
        await response.send(sink)
        # the last item leaves with the tail: nothing of it was written when the hook ran
        assert seen == [([b"a"], False)] if knows_its_last else [([b"a", b"b"], False)]
        assert sink.ended and response.outcome == "ok"


async def test_before_end_is_not_run_for_a_stream_that_fails() -> None:
    calls: list[str] = []

    async def before_end() -> None:
        calls.append("ran")

    response = StreamResponse(Source([b"a"], fail_after=True).run(), tail=TAIL)
    response.before_end = before_end
    await response.send(RecordingSink())
    assert calls == [] and response.outcome == "error"
