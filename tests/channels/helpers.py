"""What the channel tests build the same way on every platform."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from noroshi.channels.base import Channel
from noroshi.channels.outbound import Outbound
from noroshi.http import Request

# retries and edits fast enough for a test, in a [[channels]] table
FAST_CHANNEL_KEYS = """backoff_base_s = 0.01
max_retry_after_s = 0.2
edit_interval_s = 0.05
"""


def fast_outbound(plugin: Channel[Any]) -> Outbound:
    """The plugin's calls, retried three times with short waits."""
    return Outbound(plugin.retry_hint, retries=3, backoff_base_s=0.01, max_retry_after_s=0.2)


def webhook(path: str, headers: Mapping[str, str], body: bytes) -> Request:
    """A POST as the gateway hands it to a plugin: headers keyed in lower case."""

    async def read() -> bytes:
        return body

    return Request("POST", path, "", {k.lower(): v for k, v in headers.items()}, read)
