"""Times in noroshi's own JSON: ISO 8601, UTC, milliseconds, `Z`; epoch seconds still read."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

import msgspec
import pytest

from noroshi.wire import times
from noroshi.wire.agent import AgentEvent, PendingApproval, Run, RunWaiting
from noroshi.wire.times import TimeParam, Timestamp

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")  # every time noroshi writes
MOMENT = datetime(2026, 12, 7, 9, 15, 2, 123000, tzinfo=UTC).timestamp()


def test_one_format() -> None:
    assert Timestamp(MOMENT).iso() == "2026-12-07T09:15:02.123Z"
    assert Timestamp(0).iso() == "1970-01-01T00:00:00.000Z"  # the milliseconds always shown
    # cut, never rounded up into the next second (or day)
    assert Timestamp(86_399.9999).iso() == "1970-01-01T23:59:59.999Z"
    run = Run(
        id="run_1",
        session_id="ses_1",
        agent="a",
        status="completed",
        background=False,
        created_at=Timestamp(MOMENT),
        finished_at=None,
    )
    shown = msgspec.json.decode(times.encode(run))
    assert shown["created_at"] == "2026-12-07T09:15:02.123Z" and shown["finished_at"] is None


def test_round_trip_keeps_the_millisecond() -> None:
    for ms in (0, 1, 999, 1_765_098_902_123, 4_102_444_799_999):
        text = Timestamp(ms / 1000).iso()
        assert ISO_UTC.fullmatch(text)
        again = times.parse(text)
        assert again.iso() == text and round(again * 1000) == ms


@pytest.mark.parametrize(
    "value",
    [
        "2026-12-07T09:15:02.123Z",
        "2026-12-07T09:15:02.123+00:00",
        "2026-12-07T18:15:02.123+09:00",
        "2026-12-07T09:15:02.123",  # no zone: UTC
        MOMENT,  # epoch seconds, as times were written before
        str(MOMENT),  # and as a query string carries them
    ],
)
def test_reads_iso_and_epoch_seconds(value: object) -> None:
    assert times.parse(value).iso() == "2026-12-07T09:15:02.123Z"


@pytest.mark.parametrize("value", ["yesterday", "", "2026-13-01", "nan", "inf", True, None, [1]])
def test_refuses_what_is_not_a_time(value: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        times.parse(value)


def test_old_events_with_epoch_seconds_still_load() -> None:
    """A `run.waiting` kept before times were ISO 8601 carries epoch seconds."""
    old = b'{"type":"run.waiting","seq":7,"run_id":"run_1","tool_call_ids":["t1"],'
    old += b'"expires_at":1765098962.5}'
    event = times.decoder(AgentEvent).decode(old)
    assert isinstance(event, RunWaiting) and event.expires_at == 1765098962.5
    assert isinstance(event.expires_at, Timestamp)
    new = times.encode(event)
    assert b'"expires_at":"2025-12-07T09:16:02.500Z"' in new
    assert times.decoder(AgentEvent).decode(new) == event


def test_a_bad_time_names_its_field() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"not a time.*\$\.expires_at"):
        times.decoder(PendingApproval).decode(
            b'{"tool_call_id":"t","name":"n","arguments":"{}","expires_at":"soon"}'
        )


def test_schema() -> None:
    answer = msgspec.json.schema(Timestamp, schema_hook=times.schema_hook)
    assert answer["type"] == "string" and answer["format"] == "date-time"
    query = msgspec.json.schema(TimeParam, schema_hook=times.schema_hook)
    assert {"type": "number"} in query["anyOf"]


def test_a_timestamp_is_still_its_seconds() -> None:
    stamp = Timestamp(MOMENT)
    assert stamp == MOMENT and stamp + 60 == MOMENT + 60 and math.isclose(stamp, MOMENT)
    assert repr(stamp) == "Timestamp('2026-12-07T09:15:02.123Z')"
    assert Timestamp.maybe(None) is None and Timestamp.maybe(1.0) == 1.0
