"""The bare relay: raw RSGI + one pooled aiohttp session, relaying the upstream's bytes.

It does none of a gateway's work (no auth, limits, parsing, usage, errors or timeouts); it is
the floor that noroshi's CPU per request is compared with.

Run: BENCH_UPSTREAM=http://127.0.0.1:9100 granian --interface rsgi --no-ws bench.bare_relay:app
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9100") + "/v1/chat/completions"
JSON = [("content-type", "application/json")]
SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
_session: list[aiohttp.ClientSession] = []


def _client() -> aiohttp.ClientSession:
    if not _session:
        _session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
    return _session[0]


async def app(scope: Any, proto: Any) -> None:
    if scope.proto != "http":
        return
    if scope.path == "/health":
        proto.response_bytes(200, JSON, b'{"status":"ok"}')
        return
    body = await proto()
    async with _client().post(
        UPSTREAM, data=body, headers={"content-type": "application/json"}
    ) as r:
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            tx = proto.response_stream(r.status, SSE)
            async for chunk in r.content.iter_any():
                await tx.send_bytes(chunk)
        else:
            proto.response_bytes(r.status, JSON, await r.read())
