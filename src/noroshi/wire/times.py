"""Times in noroshi's own JSON: one format, written in one place.

The stores keep a moment as epoch seconds; a field of type `Timestamp` holds those seconds
(it is a float, so arithmetic and comparisons work as before) and goes on the wire as ISO 8601
in UTC with milliseconds, the form JavaScript's `Date.prototype.toISOString` writes:
`2026-12-07T09:15:02.123Z`. Reading one accepts that form, any other ISO 8601 time (UTC unless
it names a zone) and, for what was written before, epoch seconds.

Every encoder and decoder of noroshi's own types takes these hooks (`encode`, `decoder`,
`dec_hook`, `schema_hook`). Provider formats that define epoch integers (OpenAI's `created`,
the Responses API's `created_at`) are not `Timestamp`s and stay integers.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

__all__ = [
    "EXAMPLE",
    "TimeParam",
    "Timestamp",
    "dec_hook",
    "decoder",
    "enc_hook",
    "encode",
    "parse",
    "schema_hook",
]

T = TypeVar("T")
EXAMPLE = "2026-12-07T09:15:02.123Z"


class Timestamp(float):
    """A moment as epoch seconds, written as `2026-12-07T09:15:02.123Z` in JSON."""

    __slots__ = ()

    @classmethod
    def now(cls) -> Timestamp:
        return cls(time.time())

    @classmethod
    def maybe(cls, seconds: float | None) -> Timestamp | None:
        """For a nullable column."""
        return None if seconds is None else cls(seconds)

    def iso(self) -> str:
        """ISO 8601, UTC, milliseconds (cut, never rounded up into the next second)."""
        # to whole microseconds first: 1765098902.123 is 1765098902.12299990654 as a float
        whole, millis = divmod(round(self * 1_000_000) // 1000, 1000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.iso()!r})"


class TimeParam(Timestamp):
    """A time a client sends in a query string: ISO 8601, or epoch seconds as it always could
    (and so described in the OpenAPI schema)."""

    __slots__ = ()


def parse(value: object) -> Timestamp:
    """A time from ISO 8601 text (UTC unless it names a zone) or epoch seconds (a number, or
    text such as a query string carries). ValueError or TypeError says why not."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"expected a time (ISO 8601 text), got {type(value).__name__}")
    if isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            seconds = _iso(value)
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"'{value}' is not a time: use ISO 8601, e.g. {EXAMPLE}")
    return Timestamp(seconds)


def _iso(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a time: use ISO 8601, e.g. {EXAMPLE}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def enc_hook(obj: Any) -> Any:
    if isinstance(obj, Timestamp):
        return obj.iso()
    raise NotImplementedError(f"Objects of type {type(obj).__name__} are not supported")


def dec_hook(kind: type, obj: Any) -> Any:
    if kind is Timestamp:
        return parse(obj)
    if kind is TimeParam:
        return TimeParam(parse(obj))
    raise NotImplementedError(f"Objects of type {kind.__name__} are not supported")


def schema_hook(kind: type) -> dict[str, Any]:
    if kind is Timestamp:
        return {"type": "string", "format": "date-time", "examples": [EXAMPLE]}
    if kind is TimeParam:
        return {
            "anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
            "description": "ISO 8601 (UTC unless it names a zone) or epoch seconds.",
            "examples": [EXAMPLE],
        }
    raise NotImplementedError(f"Objects of type {kind.__name__} are not supported")


encode = msgspec.json.Encoder(enc_hook=enc_hook).encode


def decoder(kind: type[T] | Any) -> msgspec.json.Decoder[T]:
    """A JSON decoder of `kind` that reads `Timestamp` fields."""
    return msgspec.json.Decoder(kind, dec_hook=dec_hook)
