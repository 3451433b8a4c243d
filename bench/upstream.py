"""A fast fake OpenAI-compatible upstream for the bench, shared by every contender.

Raw RSGI on Granian, so the upstream costs as little as possible of the machine it shares with
the gateway under test. Shape of the answer from the environment:

    BENCH_TOKENS=20      content chunks per stream
    BENCH_TTFT_MS=0      delay before the first chunk
    BENCH_TOKEN_MS=0     delay between chunks

Run: granian --interface rsgi --port 9100 --workers 1 --no-ws bench.upstream:app
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import msgspec

TOKENS = int(os.environ.get("BENCH_TOKENS", "20"))
TTFT = float(os.environ.get("BENCH_TTFT_MS", "0")) / 1000
GAP = float(os.environ.get("BENCH_TOKEN_MS", "0")) / 1000
CREATED = 1700000000
JSON = [("content-type", "application/json")]
SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]


class Request(msgspec.Struct):
    model: str
    stream: bool = False
    stream_options: dict[str, Any] | None = None


_decode = msgspec.json.Decoder(Request)
_encode = msgspec.json.encode


def _chunk(model: str, i: int) -> bytes:
    last = i == TOKENS
    delta = {} if last else {"content": f"tok{i} "}
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if last else None}],
    }
    return b"data: " + _encode(body) + b"\n\n"


def _usage(model: str) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [],
        "usage": {"prompt_tokens": 8, "completion_tokens": TOKENS, "total_tokens": 8 + TOKENS},
    }
    return b"data: " + _encode(body) + b"\n\n"


def _completion(model: str) -> bytes:
    return _encode(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "tok " * TOKENS},
                }
            ],
            "usage": {"prompt_tokens": 8, "completion_tokens": TOKENS, "total_tokens": 8 + TOKENS},
        }
    )


async def app(scope: Any, proto: Any) -> None:
    if scope.proto != "http":
        return
    if scope.path == "/health" or scope.path.endswith("/models"):
        proto.response_bytes(200, JSON, b'{"status":"ok","object":"list","data":[]}')
        return
    if scope.method != "POST" or not scope.path.endswith("/chat/completions"):
        proto.response_bytes(404, JSON, b'{"error":{"message":"not found"}}')
        return
    req = _decode.decode(await proto())
    if not req.stream:
        if TTFT:
            await asyncio.sleep(TTFT + GAP * TOKENS)
        proto.response_bytes(200, JSON, _completion(req.model))
        return
    tx = proto.response_stream(200, SSE)
    if TTFT:
        await asyncio.sleep(TTFT)
    for i in range(TOKENS + 1):
        await tx.send_bytes(_chunk(req.model, i))
        if GAP and i < TOKENS:
            await asyncio.sleep(GAP)
    if req.stream_options and req.stream_options.get("include_usage"):
        await tx.send_bytes(_usage(req.model))
    await tx.send_bytes(b"data: [DONE]\n\n")
