"""Any OpenAI-compatible server: OpenAI, vLLM, Ollama, llama.cpp server, Groq and the like.

For a chat completions client, chunks are relayed as the upstream encoded them, each read's
complete events in one write. When the read is made of plain `data: {...}` events, which is
what OpenAI-compatible servers send, it is checked in one decode of the read turned into a
JSON array (malformed JSON, an error, the usage) and the bytes go on untouched; anything else
(comments, other fields, CR line ends) is decoded event by event. Any other client's request
is translated by `noroshi.wire.chat`, which also reads the chunks back into events.
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
_DONE_EVENT = b"data: [DONE]\n\n"
_NEXT = b"\n\ndata: "
MAX_EVENT_BYTES = 4 * 1024 * 1024  # an upstream event never grows past this unended


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
_events = msgspec.json.Decoder(list[msgspec.Raw])  # checked as JSON, not decoded
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
        relay = _Relay(call)
        try:
            ctype = resp.header("content-type") or ""
            if not ctype.startswith("text/event-stream"):
                raise UpstreamProtocolError(
                    f"The upstream answered '{ctype}', not an event stream."
                )
            loop = asyncio.get_running_loop()
            first = True
            async for raw in resp.chunks():
                events = relay.feed(raw)
                if events:
                    if first:
                        first = False
                        resp.set_idle_timeout(self.config.idle_timeout_s)
                    yield events  # one write per upstream read, however many events it carried
                if relay.finished:
                    return
                if loop.time() > call.deadline:
                    raise UpstreamTimeout("The upstream answer took longer than the total timeout.")
            raise UpstreamProtocolError("The upstream ended the stream without its terminator.")
        finally:
            resp.finish(relay.finished)

    def _translated(self, call: Call, model: str, stream: bool) -> bytes:
        body = chat.encode_request(
            call.conversation, model, stream, keep_thinking=self.keeps_thinking
        )
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


class _Relay:
    """What of each upstream read goes on to the client: its complete events, checked, as the
    upstream framed them; the terminator ends the stream (the client's own is added later).

    A read of plain `data:` events becomes a JSON array with one replace and is checked by one
    decode; the framing is checked by the same decode, since anything else (comments, other
    fields, CR line ends, a data line split in two) does not make valid JSON. The usage and an
    error come in a stream's last event, so only the read's last event is looked at."""

    __slots__ = ("call", "decoder", "finished", "rest", "want_usage")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.want_usage = call.include_usage
        self.finished = False
        self.rest = b""  # an event the read cut in two
        self.decoder: SSEDecoder | None = None  # once the stream is not plain data events

    def feed(self, raw: bytes) -> bytes:
        if self.decoder is not None:
            return self._one_by_one(self.decoder.feed(raw))
        data = self.rest + raw if self.rest else raw
        if data.find(b"\r") >= 0:  # CR line ends: event by event from here on
            self.decoder, self.rest = SSEDecoder(), b""
            return self._one_by_one(self.decoder.feed(data))
        end = data.rfind(b"\n\n")
        if end < 0:
            if len(data) > MAX_EVENT_BYTES:
                raise UpstreamProtocolError("The upstream sent an event past the size limit.")
            self.rest = data
            return b""
        block, self.rest = data[: end + 2], data[end + 2 :]
        if block.endswith(_DONE_EVENT):
            block = block[: -len(_DONE_EVENT)]
            self.finished = self.call.finished = True
        if not block:
            return b""
        if block.startswith(b"data: "):
            try:
                datas = _events.decode(b"[" + block[6:-2].replace(_NEXT, b",") + b"]")
                last = _peek.decode(datas[-1])
            except msgspec.DecodeError:
                pass  # not plain: read it event by event, which tells a malformed one
            else:
                return self._plain(block, len(datas), last)
        self.decoder = SSEDecoder()
        events = self.decoder.feed(block + self.rest)
        self.rest = b""
        return self._one_by_one(events)

    def _plain(self, block: bytes, count: int, last: _Peek) -> bytes:
        call = self.call
        call.chunks += count
        _check(last)
        if last.usage is not None:
            call.usage = last.usage.tokens()
            if not last.choices and not self.want_usage:
                # the usage noroshi asked for and the client did not: not sent on
                call.chunks -= 1
                return block[: block.rfind(b"data: ", 0, len(block) - 2)]
        return block

    def _one_by_one(self, events: list[tuple[str, bytes]]) -> bytes:
        kept: list[bytes] = []
        for _, data in events:
            if data == _DONE:
                self.finished = self.call.finished = True
                break
            try:
                peek = _peek.decode(data)
            except msgspec.DecodeError:
                raise UpstreamProtocolError("The upstream sent a malformed chunk.") from None
            _check(peek)
            if peek.usage is not None:
                self.call.usage = peek.usage.tokens()
                if not peek.choices and not self.want_usage:
                    continue
            kept.append(data)
        self.call.chunks += len(kept)
        return b"data: " + _NEXT.join(kept) + b"\n\n" if kept else b""


def _check(peek: _Peek) -> None:
    if peek.error is not None:
        raise UpstreamError(f"Upstream error: {_error_message({'error': peek.error})}")
