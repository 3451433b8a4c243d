"""Anthropic's Messages API and the gateway's conversation: this format's request type, and its
one decoder and one encoder for requests, whole answers, streams and errors.

Content blocks are checked one by one, so a bad block is a 400 that names it
(`messages.0.content.1.source`). Block types this module does not model (documents, server
tools, search results) are kept when the upstream is Anthropic, which gets the client's body
as sent, and named in `Conversation.dropped` when it is translated for another upstream.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from noroshi.errors import (
    BadRequest,
    NoroshiError,
    UpstreamError,
    UpstreamProtocolError,
    convert_at,
)
from noroshi.wire.conversation import (
    Answer,
    BlockStart,
    BlockStop,
    Conversation,
    Delta,
    Event,
    Finish,
    Image,
    OutputFormat,
    Part,
    RedactedThinking,
    Start,
    StopReason,
    Text,
    Thinking,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
    Turn,
    Usage,
    UsageUpdate,
    budget_for,
)

__all__ = [
    "CountTokensAnswer",
    "CountTokensRequest",
    "ErrorEnvelope",
    "MessagesRequest",
    "MessagesWire",
    "StreamDecoder",
    "StreamEncoder",
    "decode_answer",
    "decode_request",
    "encode_request",
    "error_body",
    "error_status",
]

_encode = msgspec.json.encode
DEFAULT_MAX_TOKENS = 4096
MIN_THINKING_BUDGET = 1024
STOP_REASONS: tuple[StopReason, ...] = (
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "refusal",
    "pause_turn",
)
ToolName = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9_-]+$")]


class MessageParam(Struct):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class MessagesRequest(Struct, kw_only=True):
    """`POST /v1/messages`. Fields not named here are kept for an Anthropic upstream."""

    model: Annotated[str, Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1)]
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    stop_sequences: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    output_format: dict[str, Any] | None = None


class CountTokensRequest(Struct, kw_only=True):
    """`POST /v1/messages/count_tokens`: a request without `max_tokens`."""

    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class CountTokensAnswer(Struct):
    input_tokens: int


class ErrorDetail(Struct):
    type: str
    message: str


class ErrorEnvelope(Struct):
    """Anthropic's error body, what every error on its routes answers."""

    error: ErrorDetail
    type: Literal["error"] = "error"


# the blocks, each checked on its own so that an error names it


class _TextBlock(Struct):
    text: str


class _Source(Struct):
    type: Literal["base64", "url"]
    media_type: str = ""
    data: str = ""
    url: str = ""


class _ImageBlock(Struct):
    source: _Source


class _ToolUse(Struct):
    id: Annotated[str, Meta(min_length=1)]
    name: Annotated[str, Meta(min_length=1)]
    input: dict[str, Any] = {}


class _ToolResult(Struct):
    tool_use_id: Annotated[str, Meta(min_length=1)]
    content: str | list[dict[str, Any]] | None = None
    is_error: bool = False


class _ThinkingBlock(Struct):
    thinking: str
    signature: str = ""


class _Redacted(Struct):
    data: str


class _Tool(Struct):
    name: ToolName
    input_schema: dict[str, Any]
    description: str = ""


class _ToolChoice(Struct):
    type: Literal["auto", "any", "tool", "none"]
    name: str = ""
    disable_parallel_tool_use: bool = False


# --- requests ------------------------------------------------------------------------------


def _image(block: _ImageBlock) -> Image:
    s = block.source
    return Image(s.url if s.type == "url" else f"data:{s.media_type};base64,{s.data}")


def _part(block: dict[str, Any], path: str, dropped: list[str]) -> Part | None:
    kind = block.get("type")
    if kind == "text":
        return Text(convert_at(block, _TextBlock, path).text)
    if kind == "image":
        return _image(convert_at(block, _ImageBlock, path))
    if kind == "tool_use":
        use = convert_at(block, _ToolUse, path)
        return ToolCall(use.id, use.name, _encode(use.input).decode())
    if kind == "tool_result":
        result = convert_at(block, _ToolResult, path)
        content: list[Text | Image] = []
        if isinstance(result.content, str):
            content.append(Text(result.content))
        for i, inner in enumerate(result.content if isinstance(result.content, list) else ()):
            part = _part(inner, f"{path}.content.{i}", dropped)
            if isinstance(part, Text | Image):
                content.append(part)
        return ToolResult(result.tool_use_id, content, result.is_error)
    if kind == "thinking":
        thought = convert_at(block, _ThinkingBlock, path)
        return Thinking(thought.thinking, thought.signature)
    if kind == "redacted_thinking":
        return RedactedThinking(convert_at(block, _Redacted, path).data)
    if not isinstance(kind, str):
        raise BadRequest(
            f"A content block needs a 'type' at '{path}.type'",
            param=f"{path}.type",
            code="invalid_value",
        )
    dropped.append(f"'{kind}' blocks")
    return None


def _system(system: str | list[dict[str, Any]] | None, dropped: list[str]) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    texts = [_part(b, f"system.{i}", dropped) for i, b in enumerate(system)]
    return "\n\n".join(t.text for t in texts if isinstance(t, Text))


def decode_request(req: MessagesRequest | CountTokensRequest) -> Conversation:
    """A Messages request as a conversation; a bad block is a 400 that names it."""
    dropped: list[str] = []
    turns: list[Turn] = []
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            parts: list[Part] = [Text(m.content)]
        else:
            found = [
                _part(b, f"messages.{i}.content.{j}", dropped) for j, b in enumerate(m.content)
            ]
            parts = [p for p in found if p is not None]
        if turns and turns[-1].role == m.role:
            turns[-1].parts.extend(parts)
        else:
            turns.append(Turn(m.role, parts))
    tools: list[Tool] = []
    for i, raw in enumerate(req.tools or ()):
        if raw.get("type") not in (None, "custom"):
            dropped.append(f"the server tool '{raw.get('type')}'")
            continue
        tool = convert_at(raw, _Tool, f"tools.{i}")
        tools.append(Tool(tool.name, tool.description, tool.input_schema))
    conv = Conversation(
        model=req.model,
        system=_system(req.system, dropped),
        turns=turns,
        tools=tools,
        dropped=dropped,
    )
    if req.tool_choice is not None:
        choice = convert_at(req.tool_choice, _ToolChoice, "tool_choice")
        mode = {"any": "required"}.get(choice.type, choice.type)
        conv.tool_choice = ToolChoice(mode, choice.name)
        if choice.disable_parallel_tool_use:
            conv.parallel_tool_calls = False
    thinking = req.thinking or {}
    if thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < MIN_THINKING_BUDGET:
            raise BadRequest(
                f"thinking.budget_tokens: at least {MIN_THINKING_BUDGET} tokens",
                param="thinking.budget_tokens",
                code="invalid_value",
            )
        conv.thinking_budget = budget
    elif thinking.get("type") == "disabled":
        conv.thinking_budget = 0
    if isinstance(req, CountTokensRequest):
        return conv
    conv.max_output_tokens = req.max_tokens
    conv.temperature, conv.top_p, conv.top_k = req.temperature, req.top_p, req.top_k
    conv.stop = list(req.stop_sequences or ())
    conv.stream = req.stream
    if req.metadata and isinstance(req.metadata.get("user_id"), str):
        conv.user = req.metadata["user_id"]
    fmt = req.output_format or {}
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        conv.output_format = OutputFormat("json_schema", schema=fmt["schema"])
    return conv


def _block(part: Part, dropped: list[str]) -> dict[str, Any] | None:
    if isinstance(part, Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, Image):
        url = part.url
        if url.startswith("data:") and ";base64," in url:
            media_type, data = url[5:].split(";base64,", 1)
            return {
                "type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": data},
            }
        return {"type": "image", "source": {"type": "url", "url": url}}
    if isinstance(part, ToolCall):
        return {
            "type": "tool_use",
            "id": part.id,
            "name": part.name,
            "input": _arguments(part.arguments),
        }
    if isinstance(part, ToolResult):
        content = [b for c in part.content if (b := _block(c, dropped)) is not None]
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": part.id}
        if len(content) == 1 and content[0]["type"] == "text":
            result["content"] = content[0]["text"]
        else:
            result["content"] = content
        if part.is_error:
            result["is_error"] = True
        return result
    if isinstance(part, RedactedThinking):
        return {"type": "redacted_thinking", "data": part.data}
    if not part.signature:  # another provider's thinking: Anthropic refuses it unsigned
        dropped.append("thinking without a signature")
        return None
    return {"type": "thinking", "thinking": part.text, "signature": part.signature}


def _arguments(raw: str) -> Any:
    try:
        value = msgspec.json.decode(raw) if raw.strip() else {}
    except msgspec.DecodeError:
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_value": value}


def encode_request(conv: Conversation, model: str, stream: bool) -> dict[str, Any]:
    """The conversation as a Messages request to `model`."""
    dropped = conv.dropped
    messages: list[dict[str, Any]] = []
    for turn in conv.turns:
        blocks = [b for p in turn.parts if (b := _block(p, dropped)) is not None]
        if turn.role == "user":  # tool results first, as Anthropic wants them
            blocks.sort(key=lambda b: b["type"] != "tool_result")
        if not blocks:
            blocks = [{"type": "text", "text": ""}] if turn.role == "assistant" else []
        if not blocks:
            continue
        if messages and messages[-1]["role"] == turn.role:
            messages[-1]["content"] += blocks
        else:
            messages.append({"role": turn.role, "content": blocks})
    budget = conv.thinking_budget
    if budget is None and conv.effort is not None:
        budget = budget_for(conv.effort)
    max_tokens = conv.max_output_tokens or DEFAULT_MAX_TOKENS
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    if conv.system:
        body["system"] = conv.system
    if stream:
        body["stream"] = True
    if budget:
        # the budget is part of max_tokens, and must leave room for the answer
        if max_tokens <= budget:
            body["max_tokens"] = budget + max_tokens
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    else:
        if conv.temperature is not None:
            body["temperature"] = min(conv.temperature, 1.0)
        if conv.top_k is not None:
            body["top_k"] = conv.top_k
        if conv.top_p is not None:
            body["top_p"] = conv.top_p
    if budget and (conv.temperature is not None or conv.top_k is not None):
        dropped.append("temperature and top_k (Anthropic fixes them while thinking)")
    if conv.stop:
        body["stop_sequences"] = conv.stop
    if conv.user:
        body["metadata"] = {"user_id": conv.user}
    if conv.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in conv.tools
        ]
    choice = _choice_out(conv, bool(budget))
    if choice is not None:
        if choice["type"] == "none":
            body.pop("tools", None)
        elif "tools" in body:
            body["tool_choice"] = choice
    fmt = conv.output_format
    if fmt is not None:
        schema = fmt.schema if fmt.schema is not None else {"type": "object"}
        body["output_format"] = {"type": "json_schema", "schema": schema}
    return body


def _choice_out(conv: Conversation, thinking: bool) -> dict[str, Any] | None:
    choice = conv.tool_choice
    out: dict[str, Any] | None = None
    if choice is not None:
        if choice.mode == "none":
            return {"type": "none"}
        out = {"type": {"required": "any"}.get(choice.mode, choice.mode)}
        if choice.mode == "tool":
            out["name"] = choice.name
        if thinking and out["type"] in ("any", "tool"):
            conv.dropped.append("a forced tool choice (Anthropic allows none while thinking)")
            out = {"type": "auto"}
    if conv.parallel_tool_calls is False:
        out = out or {"type": "auto"}
        out["disable_parallel_tool_use"] = True
    return out


# --- usage, whole answers ------------------------------------------------------------------


def usage_in(data: dict[str, Any], base: Usage | None = None) -> Usage:
    """Anthropic counts cache reads and writes apart from `input_tokens`: all are input, each
    kind kept. A later count (`message_delta`) replaces only what it names."""
    usage = msgspec.structs.replace(base) if base is not None else Usage()
    if "input_tokens" in data or "cache_read_input_tokens" in data:
        read = int(data.get("cache_read_input_tokens") or 0)
        written = int(data.get("cache_creation_input_tokens") or 0)
        usage.prompt_tokens = int(data.get("input_tokens") or 0) + read + written
        usage.cache_read_tokens, usage.cache_write_tokens = read, written
    if data.get("output_tokens") is not None:
        usage.completion_tokens = int(data["output_tokens"])
    return usage


def usage_out(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.uncached_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "output_tokens": usage.completion_tokens,
    }


def _stop(reason: Any) -> StopReason:
    return reason if reason in STOP_REASONS else "end_turn"


def decode_answer(body: dict[str, Any]) -> Answer:
    """A Messages answer as an answer; blocks of server tools are left out."""
    if not isinstance(body.get("content"), list):
        raise UpstreamProtocolError("The upstream answer is not a Messages API answer.")
    parts: list[Text | Thinking | RedactedThinking | ToolCall] = []
    for block in body["content"]:
        kind = block.get("type")
        if kind == "text":
            parts.append(Text(str(block.get("text", ""))))
        elif kind == "thinking":
            parts.append(Thinking(str(block.get("thinking", "")), str(block.get("signature", ""))))
        elif kind == "redacted_thinking":
            parts.append(RedactedThinking(str(block.get("data", ""))))
        elif kind == "tool_use":
            parts.append(
                ToolCall(
                    str(block.get("id", "")),
                    str(block.get("name", "")),
                    _encode(block.get("input") or {}).decode(),
                )
            )
    return Answer(
        id=str(body.get("id", "")),
        model=str(body.get("model", "")),
        parts=parts,
        stop=_stop(body.get("stop_reason")),
        stop_sequence=body.get("stop_sequence"),
        usage=usage_in(body.get("usage") or {}),
    )


def _out_block(part: Text | Thinking | RedactedThinking | ToolCall) -> dict[str, Any]:
    if isinstance(part, Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, Thinking):
        return {"type": "thinking", "thinking": part.text, "signature": part.signature}
    if isinstance(part, RedactedThinking):
        return {"type": "redacted_thinking", "data": part.data}
    return {
        "type": "tool_use",
        "id": part.id,
        "name": part.name,
        "input": _arguments(part.arguments),
    }


def _message_id(upstream: str) -> str:
    return upstream if upstream.startswith("msg_") else f"msg_{uuid.uuid4().hex[:24]}"


def encode_answer(answer: Answer, model: str) -> bytes:
    return _encode(
        {
            "id": _message_id(answer.id),
            "type": "message",
            "role": "assistant",
            "model": answer.model or model,
            "content": [_out_block(p) for p in answer.parts],
            "stop_reason": answer.stop,
            "stop_sequence": answer.stop_sequence,
            "usage": usage_out(answer.usage),
        }
    )


# --- streams -------------------------------------------------------------------------------


class StreamDecoder:
    """Messages stream events as events; blocks of server tools are skipped. `done` is set at
    `message_stop`, the terminator."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.blocks: dict[int, int] = {}  # upstream index -> ours, for the blocks kept
        self.done = False

    def feed(self, name: str, data: bytes) -> list[Event]:
        try:
            event = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise UpstreamProtocolError("The upstream sent a malformed event.") from None
        if not isinstance(event, dict):
            raise UpstreamProtocolError("The upstream sent a malformed event.")
        kind = event.get("type", name)
        if kind == "content_block_delta":
            index = self.blocks.get(int(event.get("index", 0)))
            delta = event.get("delta") or {}
            dkind = {
                "text_delta": "text",
                "thinking_delta": "thinking",
                "signature_delta": "signature",
                "input_json_delta": "arguments",
            }.get(delta.get("type", ""))
            if index is None or dkind is None:
                return []
            field = {
                "text": "text",
                "thinking": "thinking",
                "signature": "signature",
                "arguments": "partial_json",
            }[dkind]
            return [Delta(index, dkind, str(delta.get(field, "")))]  # type: ignore[arg-type]
        if kind == "content_block_start":
            return self._start(int(event.get("index", 0)), event.get("content_block") or {})
        if kind == "content_block_stop":
            index = self.blocks.get(int(event.get("index", 0)))
            return [] if index is None else [BlockStop(index)]
        if kind == "message_start":
            message = event.get("message") or {}
            self.usage = usage_in(message.get("usage") or {})
            start = Start(str(message.get("id", "")), str(message.get("model", "")))
            return [start, UsageUpdate(self.usage)]
        if kind == "message_delta":
            self.usage = usage_in(event.get("usage") or {}, self.usage)
            delta = event.get("delta") or {}
            stop = Finish(_stop(delta.get("stop_reason")), delta.get("stop_sequence"))
            return [stop, UsageUpdate(self.usage)]
        if kind == "message_stop":
            self.done = True
        elif kind == "error":
            err = event.get("error") or {}
            raise UpstreamError(
                f"Upstream error: {err.get('message', 'unknown error')}",
                upstream_status=529 if err.get("type") == "overloaded_error" else 500,
            )
        return []  # ping, unknown future events

    def _start(self, upstream: int, block: dict[str, Any]) -> list[Event]:
        kind = block.get("type")
        part: Text | Thinking | RedactedThinking | ToolCall
        if kind == "text":
            part = Text("")
        elif kind == "thinking":
            part = Thinking("")
        elif kind == "redacted_thinking":
            part = RedactedThinking(str(block.get("data", "")))
        elif kind == "tool_use":
            part = ToolCall(str(block.get("id", "")), str(block.get("name", "")), "")
        else:
            return []  # a server tool's block: Anthropic's own, not the client's to answer
        index = self.blocks[upstream] = len(self.blocks)
        events: list[Event] = [BlockStart(index, part)]
        if kind == "text" and block.get("text"):
            events.append(Delta(index, "text", str(block["text"])))
        return events


def _sse(name: str, data: dict[str, Any] | ErrorEnvelope) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"


PING = _sse("ping", {"type": "ping"})
MESSAGE_STOP = _sse("message_stop", {"type": "message_stop"})


class StreamEncoder:
    """Events as a Messages stream. `message_delta` (the stop reason and final usage) waits for
    `end`: OpenAI-compatible upstreams send their usage after the finish reason."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.usage = Usage()
        self.stop: Finish | None = None

    def feed(self, events: list[Event]) -> bytes:
        out: list[bytes] = []
        for e in events:
            if isinstance(e, UsageUpdate):
                self.usage = e.usage
        for e in events:
            if isinstance(e, Delta):
                out.append(self._delta(e))
            elif isinstance(e, BlockStart):
                block = _out_block(e.part)
                if isinstance(e.part, Text):
                    block["text"] = ""
                elif isinstance(e.part, ToolCall):
                    block["input"] = {}
                out.append(
                    _sse(
                        "content_block_start",
                        {"type": "content_block_start", "index": e.index, "content_block": block},
                    )
                )
            elif isinstance(e, BlockStop):
                out.append(
                    _sse("content_block_stop", {"type": "content_block_stop", "index": e.index})
                )
            elif isinstance(e, Start):
                message: dict[str, Any] = {
                    "id": _message_id(e.id),
                    "type": "message",
                    "role": "assistant",
                    "model": e.model or self.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": usage_out(self.usage),
                }
                out += [_sse("message_start", {"type": "message_start", "message": message}), PING]
            elif isinstance(e, Finish):
                self.stop = e
        return b"".join(out)

    @staticmethod
    def _delta(e: Delta) -> bytes:
        delta: dict[str, Any]
        if e.kind == "text":
            delta = {"type": "text_delta", "text": e.text}
        elif e.kind == "thinking":
            delta = {"type": "thinking_delta", "thinking": e.text}
        elif e.kind == "signature":
            delta = {"type": "signature_delta", "signature": e.text}
        else:
            delta = {"type": "input_json_delta", "partial_json": e.text}
        return _sse(
            "content_block_delta", {"type": "content_block_delta", "index": e.index, "delta": delta}
        )

    def end(self) -> bytes:
        stop = self.stop or Finish("end_turn")
        return _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop.reason, "stop_sequence": stop.stop_sequence},
                "usage": usage_out(self.usage),
            },
        )


# --- errors --------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_status(exc: NoroshiError) -> int:
    """Anthropic's status for an error: an overloaded upstream stays overloaded (529), another
    failed upstream is an API error (500), as Anthropic answers for its own failures; the rest
    keep theirs, which its SDKs map to their classes."""
    if exc.status != 502:
        return exc.status
    return 529 if isinstance(exc, UpstreamError) and exc.upstream_status == 529 else 500


def error_body(exc: NoroshiError) -> ErrorEnvelope:
    status = error_status(exc)
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return ErrorEnvelope(ErrorDetail(kind, exc.message))


class MessagesWire:
    """An Anthropic Messages client."""

    format = "messages"
    terminator = MESSAGE_STOP

    def __init__(self, model: str) -> None:
        self.model = model

    def encoder(self) -> StreamEncoder:
        return StreamEncoder(self.model)

    def answer(self, answer: Answer) -> bytes:
        return encode_answer(answer, self.model)

    def error(self, exc: NoroshiError) -> bytes:
        return _sse("error", error_body(exc))
