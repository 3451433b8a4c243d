"""The simple endpoints that AI back ends write by hand: `/api/chat`, `/api/generate`,
`/api/embed`, `/chat`, `/chat/stream`. They run on the same router and providers as the
OpenAI surface, and follow its validation and error rules."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

import msgspec
from msgspec import Struct

from noroshi.api import openai
from noroshi.api.openai import chunk_stream, new_call
from noroshi.errors import BadRequest, NoroshiError
from noroshi.http import JSONResponse, Request, Response, Router, StreamResponse
from noroshi.providers.base import Routed
from noroshi.wire import endpoints as api
from noroshi.wire import openai as oa
from noroshi.wire.simple import (
    ChatBody,
    EmbedAnswer,
    EmbedBody,
    GenerateBody,
    PromptBody,
    SimpleAnswer,
    SimpleMessage,
    StreamBody,
    StreamError,
)
from noroshi.wire.sse import SSEDecoder, encode_event


class _Delta(Struct):
    content: str | None = None


class _Choice(Struct):
    delta: _Delta


class _Chunk(Struct):
    choices: list[_Choice] = []


class _Message(Struct):
    content: str | None = None


class _AnswerChoice(Struct):
    message: _Message


class _Answer(Struct):
    model: str
    choices: list[_AnswerChoice]
    usage: oa.Usage | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk)
_decode_answer = msgspec.json.Decoder(_Answer)
_encode = msgspec.json.encode
_DONE = b"data: [DONE]\n\n"


def _error_event(exc: NoroshiError) -> bytes:
    return encode_event(_encode(StreamError(message=exc.message)), event="error")


async def text_events(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """OpenAI chunk events as `data: {"text": ...}` events, then `[DONE]`."""
    decoder = SSEDecoder()

    def texts(blob: bytes) -> bytes:
        out = [
            b'data: {"text":' + _encode(choice.delta.content) + b"}\n\n"
            for _, data in decoder.feed(blob)
            for choice in _decode_chunk.decode(data).choices
            if choice.delta.content
        ]
        return b"".join(out)

    try:
        if events := texts(first):
            yield events
        async for blob in rest:
            if events := texts(blob):
                yield events
        yield _DONE
    finally:
        await rest.aclose()


def _messages(items: list[SimpleMessage]) -> list[oa.Message]:
    kinds: dict[str, type[oa.SystemMessage | oa.UserMessage | oa.AssistantMessage]] = {
        "system": oa.SystemMessage,
        "user": oa.UserMessage,
        "assistant": oa.AssistantMessage,
    }
    return [kinds[m.role](content=m.content) for m in items]


class Services(openai.Services, Protocol):
    """What these routes use of the application."""

    def default_chat_model(self) -> str: ...

    def default_embedding_model(self) -> str: ...


def install(router: Router, app: Services) -> None:
    limit = app.config.server.max_stream_bytes

    def chat_request(
        messages: list[oa.Message], model: str | None, stream: bool, max_tokens: int | None = None
    ) -> oa.ChatRequest:
        return oa.ChatRequest(
            model=model or app.default_chat_model(),
            messages=messages,
            stream=stream,
            max_tokens=max_tokens,
        )

    async def stream_text(request: Request, chat: oa.ChatRequest) -> Response:
        first, rest = await app.models.open_stream(await new_call(app, request, chat))
        return StreamResponse(text_events(first, rest), on_error=_error_event, max_bytes=limit)

    async def api_chat(request: Request) -> Response:
        body = await request.json(_chat_body)
        return await stream_text(request, chat_request(_messages(body.messages), body.model, True))

    async def api_generate(request: Request) -> Response:
        body = await request.json(_generate_body)
        messages: list[oa.Message] = [oa.UserMessage(content=body.prompt)]
        return await stream_text(request, chat_request(messages, body.model, True, body.max_tokens))

    async def api_embed(request: Request) -> Response:
        body = await request.json(_embed_body)
        model = body.model or app.default_embedding_model()
        routed = Routed(model, request.id)
        await app.guards.admit(request, routed, 0)
        embedded = await app.models.embed(routed, [body.text], None)
        vector = embedded.vectors[0]
        return JSONResponse(EmbedAnswer(embedding=vector, dimensions=len(vector)))

    async def chat(request: Request) -> Response:
        body = await request.json(_prompt_body)
        messages: list[oa.Message] = [oa.UserMessage(content=body.prompt)]
        call = await new_call(app, request, chat_request(messages, body.model, False))
        answer = _decode_answer.decode(await app.models.complete(call))
        usage = answer.usage or oa.Usage()
        text = (answer.choices[0].message.content or "") if answer.choices else ""
        return JSONResponse(SimpleAnswer(message=text, model=answer.model, usage=usage))

    async def chat_stream(request: Request) -> Response:
        body = await request.json(_stream_body)
        if (body.prompt is None) == (body.messages is None):
            raise BadRequest(
                "Send either `prompt` or `messages`, not both or neither.",
                param="prompt",
                code="invalid_value",
            )
        messages: list[oa.Message] = (
            _messages(body.messages)
            if body.messages
            else [oa.UserMessage(content=body.prompt or "")]
        )
        call = await new_call(app, request, chat_request(messages, body.model, True))
        first, rest = await app.models.open_stream(call)
        return chunk_stream(call, first, rest, limit)

    router.serve(api.API_CHAT, api_chat)
    router.serve(api.API_GENERATE, api_generate)
    router.serve(api.API_EMBED, api_embed)
    router.serve(api.CHAT, chat)
    router.serve(api.CHAT_STREAM, chat_stream)


_chat_body: msgspec.json.Decoder[ChatBody] = api.API_CHAT.decoder
_generate_body: msgspec.json.Decoder[GenerateBody] = api.API_GENERATE.decoder
_embed_body: msgspec.json.Decoder[EmbedBody] = api.API_EMBED.decoder
_prompt_body: msgspec.json.Decoder[PromptBody] = api.CHAT.decoder
_stream_body: msgspec.json.Decoder[StreamBody] = api.CHAT_STREAM.decoder
__all__ = ["install", "text_events"]
