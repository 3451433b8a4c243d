"""The OpenAI-compatible surface: `/v1/chat/completions` and `/v1/models`."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING

import msgspec

from noroshi.errors import ModelNotFound
from noroshi.http import JSONResponse, Request, Response, Router, StreamResponse
from noroshi.providers.base import Call
from noroshi.wire.openai import chat_request_decoder

if TYPE_CHECKING:
    from noroshi.app import App

_decode_chat = chat_request_decoder()
_decode_any = msgspec.json.Decoder()
_DONE = b"data: [DONE]\n\n"


async def relay(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """The provider's events, then `[DONE]`, which only a complete stream earns."""
    try:
        yield first
        async for events in rest:
            yield events
        yield _DONE
    finally:
        await rest.aclose()  # closing this generator must close the upstream at once


def install(router: Router, app: App) -> None:
    created = int(time.time())

    async def chat_completions(request: Request) -> Response:
        chat = await request.json(_decode_chat)
        body = await request.body()
        if chat.model not in app.models:
            raise ModelNotFound(chat.model)
        call = Call(chat, _decode_any.decode(body), request.id)
        if chat.stream:
            first, rest = await app.models.open_stream(call)
            return StreamResponse(relay(first, rest), max_bytes=app.config.server.max_stream_bytes)
        return Response(await app.models.complete(call))

    def describe(name: str) -> dict[str, object]:
        return {"id": name, "object": "model", "created": created, "owned_by": "noroshi"}

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [describe(n) for n in app.models.routes]})

    async def get_model(request: Request) -> Response:
        name = request.params["model"]
        if name not in app.models:
            raise ModelNotFound(name)
        return JSONResponse(describe(name))

    router.add("POST", "/v1/chat/completions", chat_completions)
    router.add("GET", "/v1/models", list_models)
    router.add("GET", "/v1/models/{model}", get_model)
