"""Callable aliases shared by every layer, so signatures read the same everywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from noroshi.http.request import Request
    from noroshi.http.response import Response

Headers = list[tuple[str, str]]
JSON = dict[str, Any]
Handler = Callable[["Request"], Awaitable["Response"]]
ByteStream = AsyncIterator[bytes]
