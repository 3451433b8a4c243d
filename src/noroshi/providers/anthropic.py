"""Anthropic's Messages API, translated to and from OpenAI's chat completions.

Requests: system and developer messages become `system`; tool calls become `tool_use` blocks
and tool messages `tool_result` blocks in a user turn. Answers: text and `tool_use` blocks
become content and tool calls; `stop_reason` maps to `finish_reason`; usage is carried over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

import msgspec

from noroshi.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout
from noroshi.providers.base import Call, HTTPProvider, Usage
from noroshi.wire import openai as oa
from noroshi.wire.sse import SSEDecoder

__all__ = ["AnthropicProvider", "to_anthropic"]

DEFAULT_MAX_TOKENS = 4096
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}
_encode = msgspec.json.encode
_decode = msgspec.json.decode


def _text(content: oa.Content | list[Any] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(getattr(p, "text", "") for p in content)


def _user_blocks(content: str | list[oa.UserPart]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, oa.TextPart):
            blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, oa.ImagePart):
            blocks.append(_image_block(part.image_url.url))
    return blocks


def _image_block(url: str) -> dict[str, Any]:
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _arguments(raw: str) -> Any:
    try:
        return _decode(raw) if raw.strip() else {}
    except msgspec.DecodeError:
        return {"_raw": raw}


def to_anthropic(request: oa.ChatRequest, model: str, stream: bool) -> dict[str, Any]:
    """The OpenAI request as an Anthropic Messages request."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        # Anthropic wants strictly alternating turns: consecutive same-role turns merge
        if messages and messages[-1]["role"] == role:
            prev = messages[-1]["content"]
            if isinstance(prev, str):
                prev = [{"type": "text", "text": prev}]
            messages[-1]["content"] = prev + blocks
        else:
            messages.append({"role": role, "content": blocks})

    for m in request.messages:
        if isinstance(m, oa.SystemMessage | oa.DeveloperMessage):
            system.append(_text(m.content))
        elif isinstance(m, oa.UserMessage):
            content = _user_blocks(m.content)
            add(
                "user", [{"type": "text", "text": content}] if isinstance(content, str) else content
            )
        elif isinstance(m, oa.AssistantMessage):
            blocks: list[dict[str, Any]] = []
            text = _text(m.content)
            if text:
                blocks.append({"type": "text", "text": text})
            for tc in m.tool_calls or []:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": tc.id,
                        "name": tc.function.name,
                        "input": _arguments(tc.function.arguments),
                    }
                )
            add("assistant", blocks or [{"type": "text", "text": ""}])
        else:
            add(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": m.tool_call_id,
                        "content": _text(m.content),
                    }
                ],
            )

    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": request.output_limit or DEFAULT_MAX_TOKENS,
    }
    if system:
        body["system"] = "\n\n".join(system)
    if stream:
        body["stream"] = True
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, 1.0)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop is not None:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if request.tools:
        body["tools"] = [
            {
                "name": t.function.name,
                "description": t.function.description or "",
                "input_schema": t.function.parameters or {"type": "object", "properties": {}},
            }
            for t in request.tools
        ]
    choice = _tool_choice(request.tool_choice, request.parallel_tool_calls)
    if choice is not None:
        if choice["type"] == "none":
            body.pop("tools", None)
        else:
            body["tool_choice"] = choice
    return body


def _tool_choice(choice: Any, parallel: bool | None) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = {"type": "auto"} if parallel is False else None
    elif choice == "none":
        return {"type": "none"}
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name", "")}
    else:
        out = {"type": "auto"}
    if out is not None and parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def _usage(data: dict[str, Any]) -> Usage:
    """Anthropic counts cache reads and writes apart from `input_tokens`: all are input, each
    kind kept, so each is billed at its own price."""
    read = int(data.get("cache_read_input_tokens") or 0)
    written = int(data.get("cache_creation_input_tokens") or 0)
    return Usage(
        prompt_tokens=int(data.get("input_tokens") or 0) + read + written,
        completion_tokens=int(data.get("output_tokens") or 0),
        cache_read_tokens=read,
        cache_write_tokens=written,
    )


def from_anthropic(body: dict[str, Any]) -> tuple[oa.ChatCompletion, Usage]:
    text: list[str] = []
    calls: list[oa.ToolCall] = []
    for block in body.get("content") or []:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append(
                oa.ToolCall(
                    id=block["id"],
                    function=oa.ToolCallFunction(
                        name=block["name"], arguments=_encode(block.get("input", {})).decode()
                    ),
                )
            )
    usage = _usage(body.get("usage") or {})
    completion = oa.ChatCompletion(
        id=f"chatcmpl-{body.get('id', '')}",
        created=int(time.time()),
        model=str(body.get("model", "")),
        choices=[
            oa.Choice(
                index=0,
                message=oa.ChoiceMessage(
                    content="".join(text) if text or not calls else None, tool_calls=calls or None
                ),
                finish_reason=STOP_REASONS.get(body.get("stop_reason") or "", "stop"),
            )
        ],
        usage=oa.Usage.of(usage),
    )
    return completion, usage


def _error_message(body: Any) -> str | None:
    err = body.get("error") if isinstance(body, dict) else None
    return str(err.get("message") or err) if isinstance(err, dict) else None


class _StreamState:
    """Turns Anthropic stream events into OpenAI chunks, one event at a time."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.id = "chatcmpl-"
        self.model = ""
        self.created = int(time.time())
        self.usage = Usage()
        self.tool_index: dict[int, int] = {}  # content block index -> tool call index
        self.finish: str | None = None

    def chunk(self, delta: oa.Delta, finish: str | None = None) -> bytes:
        return oa.frame_chunk(
            oa.ChatCompletionChunk(
                id=self.id,
                created=self.created,
                model=self.model,
                choices=[oa.ChunkChoice(index=0, delta=delta, finish_reason=finish)],
            )
        )

    def on_event(self, name: str, data: dict[str, Any]) -> bytes | None:
        kind = data.get("type", name)
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self.chunk(oa.Delta(content=delta.get("text", "")))
            if delta.get("type") == "input_json_delta":
                return self.chunk(
                    oa.Delta(
                        tool_calls=[
                            oa.DeltaToolCall(
                                index=self.tool_index.get(int(data.get("index", 0)), 0),
                                function=oa.DeltaToolCallFunction(
                                    arguments=delta.get("partial_json", "")
                                ),
                            )
                        ]
                    )
                )
            return None
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = len(self.tool_index)
                self.tool_index[int(data.get("index", 0))] = index
                return self.chunk(
                    oa.Delta(
                        tool_calls=[
                            oa.DeltaToolCall(
                                index=index,
                                id=block.get("id"),
                                type="function",
                                function=oa.DeltaToolCallFunction(
                                    name=block.get("name"), arguments=""
                                ),
                            )
                        ]
                    )
                )
            if block.get("type") == "text" and block.get("text"):
                return self.chunk(oa.Delta(content=block["text"]))
            return None
        if kind == "message_start":
            message = data.get("message") or {}
            self.id = f"chatcmpl-{message.get('id', '')}"
            self.model = str(message.get("model", ""))
            self.usage = _usage(message.get("usage") or {})
            self.call.usage = self.usage
            return self.chunk(oa.Delta(role="assistant", content=""))
        if kind == "message_delta":
            out = _usage(data.get("usage") or {})
            self.usage.completion_tokens = out.completion_tokens or self.usage.completion_tokens
            if out.prompt_tokens:  # newer answers repeat the input counts at the end
                self.usage.prompt_tokens = out.prompt_tokens
                self.usage.cache_read_tokens = out.cache_read_tokens
                self.usage.cache_write_tokens = out.cache_write_tokens
            stop = (data.get("delta") or {}).get("stop_reason")
            self.finish = STOP_REASONS.get(stop or "", "stop")
            return self.chunk(oa.Delta(), self.finish)
        if kind == "error":
            err = data.get("error") or {}
            raise UpstreamError(
                f"Upstream error: {err.get('message', 'unknown error')}",
                upstream_status=529 if err.get("type") == "overloaded_error" else 500,
            )
        return None  # ping, content_block_stop, unknown future events

    def usage_chunk(self) -> bytes:
        u = self.usage
        return oa.frame_chunk(
            oa.ChatCompletionChunk(
                id=self.id,
                created=self.created,
                model=self.model,
                choices=[],
                usage=oa.Usage.of(u),
            )
        )


class AnthropicProvider(HTTPProvider):
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

    async def complete(self, call: Call, model: str) -> bytes:
        raw = await self.fetch(
            "POST", "/v1/messages", _encode(to_anthropic(call.request, model, False))
        )
        try:
            completion, usage = from_anthropic(_decode(raw))
        except (msgspec.DecodeError, AttributeError, KeyError, TypeError):
            raise UpstreamProtocolError(
                "The upstream answer is not a Messages API answer."
            ) from None
        call.usage = usage
        return _encode(completion)

    async def stream(self, call: Call, model: str) -> AsyncGenerator[bytes, None]:
        resp = await self.request(
            "POST", "/v1/messages", _encode(to_anthropic(call.request, model, True))
        )
        finished = False
        try:
            loop = asyncio.get_running_loop()
            decoder = SSEDecoder()
            state = _StreamState(call)
            first = True
            async for raw in resp.chunks():
                for name, data in decoder.feed(raw):
                    try:
                        event = _decode(data)
                    except msgspec.DecodeError:
                        raise UpstreamProtocolError(
                            "The upstream sent a malformed event."
                        ) from None
                    if not isinstance(event, dict):
                        raise UpstreamProtocolError("The upstream sent a malformed event.")
                    if event.get("type", name) == "message_stop":
                        finished = call.finished = True
                        call.usage = state.usage
                        if call.include_usage:
                            yield state.usage_chunk()
                        return
                    chunk = state.on_event(name, event)
                    if chunk is not None:
                        if first:
                            first = False
                            resp.set_idle_timeout(self.config.idle_timeout_s)
                        call.chunks += 1
                        yield chunk
                if loop.time() > call.deadline:
                    raise UpstreamTimeout("The upstream answer took longer than the total timeout.")
            raise UpstreamProtocolError("The upstream ended the stream without message_stop.")
        finally:
            resp.finish(finished)

    async def probe(self) -> str:
        await self.fetch("GET", "/v1/models", None)
        return "reachable"
