"""Any OpenAI-compatible server: OpenAI, vLLM, Ollama, llama.cpp server, Groq and the like.

For a chat completions client, chunks are relayed as the upstream encoded them: each is
decoded only far enough to find usage and errors, and the events of one upstream read leave
in one write, which keeps the hot path close to a byte relay. Any other client's request is
translated by `noroshi.wire.chat`, which also reads the chunks back into events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import msgspec

from noroshi.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout
from noroshi.providers.base import Call, Embedded, HTTPProvider
from noroshi.wire import chat
from noroshi.wire.conversation import Answer, Event
from noroshi.wire.openai import Usage
from noroshi.wire.sse import SSEDecoder

__all__ = ["OpenAIProvider"]

_DONE = b"[DONE]"


class _Peek(msgspec.Struct):
    """The few fields of a chunk or completion the gateway needs; the rest stays raw."""

    choices: list[msgspec.Raw] = []
    usage: Usage | None = None
    error: Any = None


class _EmbeddingItem(msgspec.Struct):
    index: int
    embedding: list[float]


class _Embeddings(msgspec.Struct):
    data: list[_EmbeddingItem]
    usage: Usage = msgspec.field(default_factory=Usage)


_peek = msgspec.json.Decoder(_Peek)
_decode_embeddings = msgspec.json.Decoder(_Embeddings)
_encode = msgspec.json.encode


def _error_message(body: Any) -> str | None:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err) if err else None


class OpenAIProvider(HTTPProvider):
    native = "chat"
    keeps_thinking = False  # whether the upstream takes thinking back (another noroshi does)
    error_message = staticmethod(_error_message)

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key}"
        headers.update(self.config.headers)
        return headers

    def _body(self, call: Call, model: str, stream: bool) -> bytes:
        body = dict(call.body)
        body["model"] = model
        body["stream"] = stream
        if stream:
            # always ask for usage, so every stream can be accounted; dropped if not asked for
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return _encode(body)

    async def relay_complete(self, call: Call, model: str) -> bytes:
        body = await self.fetch("POST", "/chat/completions", self._body(call, model, False))
        try:
            peek = _peek.decode(body)
        except msgspec.DecodeError:
            raise UpstreamProtocolError("The upstream answer is not valid JSON.") from None
        if peek.error is not None:
            raise UpstreamError(f"Upstream error: {_error_message(msgspec.json.decode(body))}")
        if not peek.choices:
            raise UpstreamProtocolError("The upstream answer has no choices.")
        call.usage = peek.usage.tokens() if peek.usage is not None else None
        return body

    async def relay(self, call: Call, model: str) -> AsyncGenerator[bytes, None]:
        resp = await self.request("POST", "/chat/completions", self._body(call, model, True))
        finished = False
        try:
            ctype = resp.header("content-type") or ""
            if not ctype.startswith("text/event-stream"):
                raise UpstreamProtocolError(
                    f"The upstream answered '{ctype}', not an event stream."
                )
            loop = asyncio.get_running_loop()
            decoder = SSEDecoder()
            want_usage = call.include_usage
            first = True
            async for raw in resp.chunks():
                kept: list[bytes] = []
                for _, data in decoder.feed(raw):
                    if data == _DONE:
                        finished = call.finished = True
                        break
                    try:
                        peek = _peek.decode(data)
                    except msgspec.DecodeError:
                        raise UpstreamProtocolError(
                            "The upstream sent a malformed chunk."
                        ) from None
                    if peek.error is not None:
                        message = _error_message({"error": peek.error})
                        raise UpstreamError(f"Upstream error: {message}")
                    if peek.usage is not None:
                        call.usage = peek.usage.tokens()
                        if not peek.choices and not want_usage:
                            continue
                    kept.append(data)
                if kept:
                    if first:
                        first = False
                        resp.set_idle_timeout(self.config.idle_timeout_s)
                    call.chunks += len(kept)
                    # one write per upstream read, however many events it carried
                    yield b"data: " + b"\n\ndata: ".join(kept) + b"\n\n"
                if finished:
                    return
                if loop.time() > call.deadline:
                    raise UpstreamTimeout("The upstream answer took longer than the total timeout.")
            raise UpstreamProtocolError("The upstream ended the stream without its terminator.")
        finally:
            resp.finish(finished)

    def _translated(self, call: Call, model: str, stream: bool) -> bytes:
        body = chat.encode_request(call.conversation, model, stream,
                                   keep_thinking=self.keeps_thinking)  # fmt: skip
        return _encode(call.translated(body, self.name))

    async def answer(self, call: Call, model: str) -> Answer:
        raw = await self.fetch("POST", "/chat/completions", self._translated(call, model, False))
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise UpstreamProtocolError("The upstream answer is not valid JSON.") from None
        if not isinstance(body, dict):
            raise UpstreamProtocolError("The upstream answer is not a chat completion.")
        if body.get("error") is not None:
            raise UpstreamError(f"Upstream error: {_error_message(body)}")
        return chat.decode_answer(body)

    async def events(self, call: Call, model: str) -> AsyncGenerator[list[Event], None]:
        body = self._translated(call, model, True)
        resp = await self.request("POST", "/chat/completions", body)
        decoder = chat.StreamDecoder()
        try:
            async for events in self.sse(resp, call):
                batch: list[Event] = []
                for _, data in events:
                    if data == _DONE:
                        call.finished = True
                        break
                    batch += decoder.feed(data)
                if batch or call.finished:
                    yield batch
                if call.finished:
                    return
            raise UpstreamProtocolError("The upstream ended the stream without its terminator.")
        finally:
            resp.finish(call.finished)

    async def embed(self, texts: list[str], model: str, dimensions: int | None) -> Embedded:
        body: dict[str, Any] = {"model": model, "input": texts, "encoding_format": "float"}
        if dimensions is not None:
            body["dimensions"] = dimensions
        raw = await self.fetch("POST", "/embeddings", _encode(body))
        try:
            answer = _decode_embeddings.decode(raw)
        except msgspec.DecodeError:
            raise UpstreamProtocolError("The upstream embeddings answer is malformed.") from None
        vectors = [item.embedding for item in sorted(answer.data, key=lambda d: d.index)]
        if len(vectors) != len(texts):
            raise UpstreamProtocolError("The upstream returned the wrong number of embeddings.")
        return Embedded(vectors=vectors, prompt_tokens=answer.usage.prompt_tokens)

    async def probe(self) -> str:
        body = msgspec.json.decode(await self.fetch("GET", "/models", None))
        models = [m.get("id") for m in body.get("data", []) if isinstance(m, dict)]
        return f"reachable, {len(models)} models listed"
