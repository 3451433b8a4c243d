"""One JSON POST, read to the end: the helper the tests share instead of writing their own."""

from __future__ import annotations

from typing import Any, NamedTuple

import aiohttp
import msgspec
from multidict import CIMultiDict


class Answer(NamedTuple):
    status: int
    headers: CIMultiDict[str]  # header names in any case
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


async def post(
    url: str,
    payload: Any,
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> Answer:
    """POST `payload` as JSON (with `key` as a bearer token), on `session` or a new one."""
    sent = {**({"authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    own = session is None
    s = aiohttp.ClientSession() if session is None else session
    try:
        async with s.post(url, json=payload, headers=sent) as r:
            return Answer(r.status, r.headers.copy(), await r.read())
    finally:
        if own:
            await s.close()
