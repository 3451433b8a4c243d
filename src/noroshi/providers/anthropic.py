"""Anthropic's Messages API as an upstream.

A Messages client's request goes through as it came (unknown fields, `anthropic-beta`
headers and the `beta` query included) and its stream comes back as Anthropic sent it, read
only for usage, errors and the terminator. Any other client's request is translated by
`noroshi.wire.anthropic`, which also reads the stream back into events.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import msgspec

from noroshi.errors import UpstreamProtocolError
from noroshi.providers.base import Call, HTTPProvider
from noroshi.wire import anthropic as wire
from noroshi.wire.conversation import Answer, Event

__all__ = ["AnthropicProvider"]

_encode = msgspec.json.encode
_decode = msgspec.json.decode
STRUCTURED_OUTPUTS_BETA = "structured-outputs-2025-11-13"
PASSED_HEADERS = ("anthropic-beta",)
NOT_MESSAGES = "The upstream answer is not a Messages API answer."


def _error_message(body: Any) -> str | None:
    err = body.get("error") if isinstance(body, dict) else None
    return str(err.get("message") or err) if isinstance(err, dict) else None


class AnthropicProvider(HTTPProvider):
    native = "messages"
    error_message = staticmethod(_error_message)

    def headers(self) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "anthropic-version": self.config.anthropic_version,
            "accept-encoding": "identity",
        }
        if self.config.api_key:
            headers["x-api-key"] = self.config.api_key
        headers.update(self.config.headers)
        return headers

    # a Messages client: its own request, the upstream's own answer

    def _own(self, call: Call, model: str) -> tuple[str, bytes, dict[str, str]]:
        body = {**call.body, "model": model}
        path = f"/v1/messages?{call.query}" if call.query else "/v1/messages"
        passed = {h: v for h in PASSED_HEADERS if (v := call.headers.get(h))}
        return path, _encode(body), passed

    async def relay_complete(self, call: Call, model: str) -> bytes:
        path, body, passed = self._own(call, model)
        raw = await self.fetch("POST", path, body, passed)
        try:
            answer = _decode(raw)
            call.usage = wire.usage_in(answer.get("usage") or {})
        except (msgspec.DecodeError, AttributeError):
            raise UpstreamProtocolError(
                "The upstream answer is not a Messages API answer."
            ) from None
        return raw

    async def relay(self, call: Call, model: str) -> AsyncGenerator[bytes, None]:
        """The upstream's events as it framed them, less `message_stop`: the client's
        terminator, sent only after a complete stream."""
        path, body, passed = self._own(call, model)
        resp = await self.request("POST", path, body, passed)
        decoder = wire.StreamDecoder()
        try:
            async for events in self.sse(resp, call):
                out: list[bytes] = []
                for name, data in events:
                    for event in decoder.feed(name, data):  # raises the upstream's error event
                        call.chunks += event.__struct_config__.tag == "delta"
                    call.usage = decoder.usage
                    if decoder.done:
                        call.finished = True
                        break
                    out.append(b"event: " + name.encode() + b"\ndata: " + data + b"\n\n")
                if out or call.finished:
                    yield b"".join(out)
                if call.finished:
                    return
            raise UpstreamProtocolError("The upstream ended the stream without message_stop.")
        finally:
            resp.finish(call.finished)

    # any other client: translated

    def _translated(self, call: Call, model: str, stream: bool) -> tuple[bytes, dict[str, str]]:
        body = call.translated(wire.encode_request(call.conversation, model, stream), self.name)
        extra = {"anthropic-beta": STRUCTURED_OUTPUTS_BETA} if "output_format" in body else {}
        return _encode(body), extra

    async def answer(self, call: Call, model: str) -> Answer:
        body, extra = self._translated(call, model, False)
        raw = await self.fetch("POST", "/v1/messages", body, extra)
        try:
            return wire.decode_answer(_decode(raw))
        except (msgspec.DecodeError, AttributeError, TypeError):
            raise UpstreamProtocolError(
                "The upstream answer is not a Messages API answer."
            ) from None

    async def events(self, call: Call, model: str) -> AsyncGenerator[list[Event], None]:
        body, extra = self._translated(call, model, True)
        resp = await self.request("POST", "/v1/messages", body, extra)
        decoder = wire.StreamDecoder()
        try:
            async for events in self.sse(resp, call):
                batch: list[Event] = []
                for name, data in events:
                    batch += decoder.feed(name, data)
                    if decoder.done:
                        call.finished = True
                        break
                if batch or call.finished:
                    yield batch
                if call.finished:
                    return
            raise UpstreamProtocolError("The upstream ended the stream without message_stop.")
        finally:
            resp.finish(call.finished)

    async def count_tokens(self, call: Call, model: str) -> int:
        if call.wire.format == "messages":
            body = {k: v for k, v in call.body.items() if k not in ("max_tokens", "stream")}
        else:
            body = wire.encode_request(call.conversation, model, False)
            del body["max_tokens"]
        raw = await self.fetch(
            "POST", "/v1/messages/count_tokens", _encode({**body, "model": model})
        )
        try:
            return int(_decode(raw)["input_tokens"])
        except (msgspec.DecodeError, KeyError, TypeError, ValueError):
            raise UpstreamProtocolError("The upstream's token count is malformed.") from None

    async def probe(self) -> str:
        await self.fetch("GET", "/v1/models", None)
        return "reachable"
