"""Anthropic's Messages API: `/v1/messages` and `/v1/messages/count_tokens`, in front of every
provider, with the same keys, limits, budgets, usage and fallbacks as every other model route.
Errors are written in Anthropic's envelope, with its status codes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from noroshi.api import openai
from noroshi.api.openai import chunk_stream
from noroshi.errors import Forbidden, ModelNotFound, NoroshiError
from noroshi.http import JSONResponse, Request, Response, Router
from noroshi.providers.base import Call
from noroshi.wire import anthropic as wire
from noroshi.wire import endpoints as api

__all__ = ["error_response", "install"]

_decode_any = msgspec.json.Decoder()
_decode: msgspec.json.Decoder[wire.MessagesRequest] = api.MESSAGES.decoder
_decode_count: msgspec.json.Decoder[wire.CountTokensRequest] = api.MESSAGES_COUNT_TOKENS.decoder
PASSED_HEADERS = ("anthropic-beta",)


def error_response(exc: NoroshiError) -> Response:
    """`{"type": "error", "error": {"type", "message"}}`, as the Anthropic SDKs read it."""
    headers = [("content-type", "application/json"), *exc.headers.items()]
    return JSONResponse(wire.error_body(exc), wire.error_status(exc), headers)


class Services(openai.Services, Protocol):
    """What these routes use of the application."""

    error_formats: dict[str, Callable[[NoroshiError], Response]]


def install(router: Router, app: Services) -> None:
    app.error_formats["/v1/messages"] = error_response
    limit = app.config.server.max_stream_bytes

    def call_of(
        request: Request, conv_request: wire.MessagesRequest | wire.CountTokensRequest, body: bytes
    ) -> Call:
        if conv_request.model not in app.models:
            raise ModelNotFound(conv_request.model)
        passed = {h: v for h in PASSED_HEADERS if (v := request.headers.get(h))}
        return Call(
            wire.decode_request(conv_request),
            _decode_any.decode(body),
            request.id,
            wire=wire.MessagesWire(conv_request.model),
            headers=passed,
            query=request.query,
        )

    async def create(request: Request) -> Response:
        req = await request.json(_decode)
        call = call_of(request, req, await request.body())
        await app.guards.admit(request, call, req.max_tokens)
        if req.stream:
            first, rest = await app.models.open_stream(call)
            return chunk_stream(call, first, rest, limit)
        return Response(await app.models.complete(call))

    async def count_tokens(request: Request) -> Response:
        req = await request.json(_decode_count)
        key = request.principal.key if request.principal is not None else None
        if key is not None and key.models and req.model not in key.models:
            raise Forbidden(
                f"This API key may not use the model '{req.model}'.",
                param="model",
                code="model_not_allowed",
            )
        call = call_of(request, req, await request.body())
        tokens = await app.models.count_tokens(call)
        return JSONResponse(wire.CountTokensAnswer(input_tokens=tokens))

    router.serve(api.MESSAGES, create)
    router.serve(api.MESSAGES_COUNT_TOKENS, count_tokens)
