"""The OpenAI-compatible surface: `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import AsyncGenerator
from typing import Any, Protocol

import msgspec

from noroshi.config import Config
from noroshi.errors import BadRequest, ModelNotFound
from noroshi.guards import Guards
from noroshi.http import JSONResponse, Request, Response, Router, StreamResponse
from noroshi.providers.base import Call, Embedded, Routed
from noroshi.providers.router import ProviderRouter
from noroshi.wire import endpoints as api
from noroshi.wire.openai import (
    ChatRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    Model,
    ModelList,
)


class Services(Protocol):
    """What these routes use of the application."""

    config: Config
    models: ProviderRouter
    guards: Guards


_decode_chat: msgspec.json.Decoder[ChatRequest] = api.CHAT_COMPLETIONS.decoder
_decode_any = msgspec.json.Decoder()
_decode_embedding: msgspec.json.Decoder[EmbeddingRequest] = api.EMBEDDINGS.decoder


def chunk_stream(
    call: Call, first: bytes, rest: AsyncGenerator[bytes, None], max_bytes: int
) -> Response:
    """The answer's stream in the client's format (`call.wire`): the provider's events, then
    the format's terminator (`[DONE]`, `message_stop`), which only a complete stream earns; it
    goes in the same write as the last events when the provider says which those are. An error
    after the first byte is the format's own error event."""
    wire = call.wire
    return StreamResponse(
        rest,
        head=first,
        tail=wire.terminator,
        on_error=wire.error,
        max_bytes=max_bytes,
        ended=lambda: call.finished,
    )


async def new_call(
    app: Services, request: Request, chat: ChatRequest, body: dict[str, Any] | None = None
) -> Call:
    """A routed chat call, admitted; `body` is the client's JSON, rebuilt from `chat` when it
    has none."""
    if chat.model not in app.models:
        raise ModelNotFound(chat.model)
    call = Call(chat, body if body is not None else msgspec.to_builtins(chat), request.id)
    await app.guards.admit(request, call, chat.output_limit)
    return call


def embeddings_answer(request: EmbeddingRequest, model: str, embedded: Embedded) -> EmbeddingList:
    """OpenAI's embedding list; base64 is the little-endian float32 array, as OpenAI sends it."""
    data = []
    for i, vector in enumerate(embedded.vectors):
        value: list[float] | str = vector
        if request.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append(Embedding(index=i, embedding=value))
    tokens = embedded.prompt_tokens
    return EmbeddingList(
        data=data, model=model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    )


def install(router: Router, app: Services) -> None:
    created = int(time.time())

    async def chat_completions(request: Request) -> Response:
        chat = await request.json(_decode_chat)
        call = await new_call(app, request, chat, _decode_any.decode(await request.body()))
        if chat.stream:
            first, rest = await app.models.open_stream(call)
            return chunk_stream(call, first, rest, app.config.server.max_stream_bytes)
        return Response(await app.models.complete(call))

    def describe(name: str) -> Model:
        return Model(id=name, created=created)

    def visible(request: Request, name: str) -> bool:
        """A key limited to some models sees only those."""
        key = request.principal.key if request.principal is not None else None
        return name in app.models and (key is None or not key.models or name in key.models)

    async def list_models(request: Request) -> Response:
        names = [n for n in app.models.routes if visible(request, n)]
        return JSONResponse(ModelList(data=[describe(n) for n in names]))

    async def get_model(request: Request) -> Response:
        name = request.params["model"]
        if not visible(request, name):
            raise ModelNotFound(name)
        return JSONResponse(describe(name))

    async def embeddings(request: Request) -> Response:
        body = await request.json(_decode_embedding)
        if body.model not in app.models:
            raise ModelNotFound(body.model)
        if any(not text for text in body.texts):
            raise BadRequest("Input texts must not be empty.", param="input", code="invalid_value")
        routed = Routed(body.model, request.id)
        await app.guards.admit(request, routed, 0)
        embedded = await app.models.embed(routed, body.texts, body.dimensions)
        return JSONResponse(embeddings_answer(body, body.model, embedded))

    router.serve(api.CHAT_COMPLETIONS, chat_completions)
    router.serve(api.EMBEDDINGS, embeddings)
    router.serve(api.MODELS, list_models)
    router.serve(api.MODEL, get_model)
