"""OpenAI chat completions and the gateway's conversation: this format's one decoder and one
encoder, for requests, whole answers and streams.

Thinking travels as LiteLLM carries it, so chat clients that already read it keep working:
`reasoning_content` holds the text and `thinking_blocks` the blocks with their signatures, on
assistant messages and on stream deltas. What chat completions cannot say (images in tool
results, top_k) is named in `Conversation.dropped`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
from msgspec import Struct

from noroshi.errors import NoroshiError, UpstreamError, UpstreamProtocolError
from noroshi.wire import openai as oa
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
    UsageUpdate,
    effort_for,
)

__all__ = [
    "ChatWire",
    "StreamDecoder",
    "StreamEncoder",
    "decode_answer",
    "decode_request",
    "encode_request",
]

_encode = msgspec.json.encode
DONE = b"data: [DONE]\n\n"

STOP_REASONS: dict[str, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
FINISH_REASONS: dict[StopReason, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


# --- requests ------------------------------------------------------------------------------


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(getattr(p, "text", "") or getattr(p, "refusal", "") for p in content)


def _thinking(blocks: list[dict[str, Any]] | None, text: str | None) -> list[Part]:
    """LiteLLM's `thinking_blocks` (with signatures), else the bare `reasoning_content`."""
    if blocks:
        parts: list[Part] = []
        for block in blocks:
            if block.get("type") == "redacted_thinking":
                parts.append(RedactedThinking(str(block.get("data", ""))))
            else:
                parts.append(
                    Thinking(str(block.get("thinking", "")), str(block.get("signature") or ""))
                )
        return parts
    return [Thinking(text)] if text else []


def decode_request(chat: oa.ChatRequest) -> Conversation:
    """A chat completion request as a conversation."""
    system: list[str] = []
    turns: list[Turn] = []
    dropped: list[str] = []

    def add(role: str, parts: list[Part]) -> None:
        if turns and turns[-1].role == role:
            turns[-1].parts.extend(parts)
        else:
            turns.append(Turn("user" if role == "user" else "assistant", parts))

    for m in chat.messages:
        if isinstance(m, oa.SystemMessage | oa.DeveloperMessage):
            system.append(_text(m.content))
        elif isinstance(m, oa.UserMessage):
            if isinstance(m.content, str):
                add("user", [Text(m.content)])
                continue
            parts: list[Part] = []
            for part in m.content:
                if isinstance(part, oa.TextPart):
                    parts.append(Text(part.text))
                elif isinstance(part, oa.ImagePart):
                    parts.append(Image(part.image_url.url))
                else:
                    dropped.append(f"a user '{part.__struct_config__.tag}' part")
            add("user", parts)
        elif isinstance(m, oa.AssistantMessage):
            parts = _thinking(m.thinking_blocks, m.reasoning_content)
            if text := _text(m.content) or (m.refusal or ""):
                parts.append(Text(text))
            parts += [
                ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ()
            ]
            add("assistant", parts)
        else:
            add("user", [ToolResult(m.tool_call_id, [Text(_text(m.content))])])
    if chat.n is not None and chat.n > 1:
        dropped.append("n > 1 (one choice is answered)")
    budget = None
    thinking = chat.thinking or {}
    if thinking.get("type") == "enabled" and isinstance(thinking.get("budget_tokens"), int):
        budget = thinking["budget_tokens"]
    return Conversation(
        model=chat.model,
        system="\n\n".join(system),
        turns=turns,
        tools=[_tool(t) for t in chat.tools or ()],
        tool_choice=_choice_in(chat.tool_choice),
        parallel_tool_calls=chat.parallel_tool_calls,
        max_output_tokens=chat.output_limit,
        temperature=chat.temperature,
        top_p=chat.top_p,
        stop=[chat.stop] if isinstance(chat.stop, str) else list(chat.stop or ()),
        seed=chat.seed,
        effort=chat.reasoning_effort,
        thinking_budget=budget,
        output_format=_format_in(chat.response_format),
        user=chat.user,
        stream=chat.stream,
        dropped=dropped,
    )


def _tool(tool: oa.Tool) -> Tool:
    fn = tool.function
    schema = fn.parameters or {"type": "object", "properties": {}}
    return Tool(fn.name, fn.description or "", schema, fn.strict)


def _choice_in(choice: Any) -> ToolChoice | None:
    if choice in ("none", "auto", "required"):
        return ToolChoice(choice)
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return ToolChoice("tool", str(choice["function"].get("name", "")))
    return None


def _format_in(fmt: dict[str, Any] | None) -> OutputFormat | None:
    if not fmt or fmt.get("type") not in ("json_object", "json_schema"):
        return None
    if fmt["type"] == "json_object":
        return OutputFormat("json_object")
    spec = fmt.get("json_schema") or {}
    return OutputFormat(
        "json_schema", str(spec.get("name") or "output"), spec.get("schema"), spec.get("strict")
    )


def _user_content(parts: list[Part]) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and isinstance(parts[0], Text):
        return parts[0].text
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, Text):
            out.append({"type": "text", "text": p.text})
        elif isinstance(p, Image):
            out.append({"type": "image_url", "image_url": {"url": p.url}})
    return out


def encode_request(
    conv: Conversation, model: str, stream: bool, *, keep_thinking: bool = False
) -> dict[str, Any]:
    """The conversation as a chat completion request to `model`. Thinking goes back only to an
    upstream that keeps it (`keep_thinking`, another noroshi): others cannot verify it."""
    messages: list[dict[str, Any]] = []
    if conv.system:
        messages.append({"role": "system", "content": conv.system})
    for turn in conv.turns:
        if turn.role == "user":
            rest: list[Part] = []
            for p in turn.parts:
                if isinstance(p, ToolResult):
                    text = "".join(c.text for c in p.content if isinstance(c, Text))
                    messages.append({"role": "tool", "tool_call_id": p.id, "content": text})
                else:
                    rest.append(p)
            if rest:
                messages.append({"role": "user", "content": _user_content(rest)})
            continue
        message: dict[str, Any] = {"role": "assistant"}
        text = "".join(p.text for p in turn.parts if isinstance(p, Text))
        message["content"] = text or None
        calls = [p for p in turn.parts if isinstance(p, ToolCall)]
        if calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in calls
            ]
        if keep_thinking:
            blocks = _thinking_blocks(turn.parts)
            if blocks:
                message["thinking_blocks"] = blocks
                message["reasoning_content"] = "".join(
                    p.text for p in turn.parts if isinstance(p, Thinking)
                )
        messages.append(message)
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    effort = conv.effort
    if effort is None and conv.thinking_budget:
        effort = effort_for(conv.thinking_budget)
    if conv.max_output_tokens is not None:
        # reasoning models take only max_completion_tokens; most other servers only max_tokens
        body["max_completion_tokens" if effort else "max_tokens"] = conv.max_output_tokens
    if effort:
        body["reasoning_effort"] = effort
    for field in ("temperature", "top_p", "seed", "user", "parallel_tool_calls"):
        if (value := getattr(conv, field)) is not None:
            body[field] = value
    if conv.stop:
        body["stop"] = conv.stop
    if conv.tools:
        body["tools"] = [
            {"type": "function", "function": msgspec.to_builtins(t)} for t in conv.tools
        ]
    if conv.tool_choice is not None:
        choice = conv.tool_choice
        body["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}}
            if choice.mode == "tool"
            else choice.mode
        )
    fmt = conv.output_format
    if fmt is not None:
        if fmt.type == "json_object" or fmt.schema is None:
            body["response_format"] = {"type": "json_object"}
        else:
            spec: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema}
            if fmt.strict is not None:
                spec["strict"] = fmt.strict
            body["response_format"] = {"type": "json_schema", "json_schema": spec}
    return body


def _thinking_blocks(parts: list[Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, Thinking):
            blocks.append({"type": "thinking", "thinking": p.text, "signature": p.signature})
        elif isinstance(p, RedactedThinking):
            blocks.append({"type": "redacted_thinking", "data": p.data})
    return blocks


# --- whole answers -------------------------------------------------------------------------


def decode_answer(body: dict[str, Any]) -> Answer:
    """A `chat.completion` as an answer; its first choice."""
    choices = body.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        raise UpstreamProtocolError("The upstream answer has no choices.")
    message = choices[0].get("message") or {}
    parts: list[Any] = _thinking(
        message.get("thinking_blocks"), message.get("reasoning_content") or message.get("reasoning")
    )
    if text := message.get("content") or message.get("refusal"):
        parts.append(Text(str(text)))
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        parts.append(
            ToolCall(
                str(call.get("id", "")), str(fn.get("name", "")), str(fn.get("arguments") or "")
            )
        )
    usage = msgspec.convert(body.get("usage") or {}, oa.Usage).tokens()
    return Answer(
        id=str(body.get("id", "")),
        model=str(body.get("model", "")),
        parts=parts,
        stop=STOP_REASONS.get(choices[0].get("finish_reason") or "stop", "end_turn"),
        usage=usage,
    )


def encode_answer(answer: Answer, model: str) -> bytes:
    """An answer as a `chat.completion`."""
    text = "".join(p.text for p in answer.parts if isinstance(p, Text))
    calls = [p for p in answer.parts if isinstance(p, ToolCall)]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ]
    if blocks := _thinking_blocks(answer.parts):
        message["reasoning_content"] = "".join(
            p.text for p in answer.parts if isinstance(p, Thinking)
        )
        message["thinking_blocks"] = blocks
    return _encode(
        {
            "id": _chat_id(answer.id),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": answer.model or model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": FINISH_REASONS[answer.stop],
                }
            ],
            "usage": oa.Usage.of(answer.usage),
        }
    )


def _chat_id(upstream: str) -> str:
    if upstream.startswith("chatcmpl-"):
        return upstream
    return f"chatcmpl-{upstream or uuid.uuid4().hex}"


# --- streams -------------------------------------------------------------------------------


class _Fn(Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolDelta(Struct):
    index: int = 0
    id: str | None = None
    function: _Fn | None = None


class _Delta(Struct):
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # OpenRouter's and newer vLLM's name for it
    thinking_blocks: list[dict[str, Any]] | None = None
    tool_calls: list[_ToolDelta] | None = None


class _Choice(Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None


class _Chunk(Struct):
    id: str = ""
    model: str = ""
    choices: list[_Choice] = []
    usage: oa.Usage | None = None
    error: Any = None


_decode_chunk = msgspec.json.Decoder(_Chunk)


class StreamDecoder:
    """`chat.completion.chunk` data, one at a time, as events. Content arrives as loose
    deltas; blocks are made of them: a new kind of delta, or a new tool call, opens one."""

    def __init__(self) -> None:
        self.started = False
        self.open: int | None = None  # the block deltas now go to
        self.kind = ""  # what it holds: "text", "thinking" or "tool"
        self.blocks = 0
        self.tools: dict[int, int] = {}  # tool call index -> block index

    def feed(self, data: bytes) -> list[Event]:
        try:
            chunk = _decode_chunk.decode(data)
        except msgspec.DecodeError:
            raise UpstreamProtocolError("The upstream sent a malformed chunk.") from None
        if chunk.error is not None:
            err = chunk.error
            message = err.get("message") if isinstance(err, dict) else err
            raise UpstreamError(f"Upstream error: {message}")
        events: list[Event] = []
        if not self.started:
            self.started = True
            events.append(Start(chunk.id, chunk.model))
        for choice in chunk.choices[:1]:
            d = choice.delta
            if thinking := d.reasoning_content or d.reasoning:
                events += self._to("thinking", Thinking(""))
                events.append(Delta(self._index, "thinking", thinking))
            for block in d.thinking_blocks or ():
                events += self._thinking_block(block)
            if text := d.content or d.refusal:
                events += self._to("text", Text(""))
                events.append(Delta(self._index, "text", text))
            for tc in d.tool_calls or ():
                events += self._tool(tc)
            if choice.finish_reason:
                events += self._close()
                events.append(Finish(STOP_REASONS.get(choice.finish_reason, "end_turn")))
        if chunk.usage is not None:
            events.append(UsageUpdate(chunk.usage.tokens()))
        return events

    @property
    def _index(self) -> int:
        assert self.open is not None
        return self.open

    def _close(self) -> list[Event]:
        if self.open is None:
            return []
        index, self.open, self.kind = self.open, None, ""
        return [BlockStop(index)]

    def _to(self, kind: str, part: Text | Thinking | ToolCall) -> list[Event]:
        if self.open is not None and self.kind == kind and kind != "tool":
            return []
        events = self._close()
        self.open, self.kind = self.blocks, kind
        self.blocks += 1
        return [*events, BlockStart(self.open, part)]

    def _thinking_block(self, block: dict[str, Any]) -> list[Event]:
        if block.get("type") == "redacted_thinking":
            events = self._close()
            index = self.blocks
            self.blocks += 1
            data = str(block.get("data", ""))
            return [*events, BlockStart(index, RedactedThinking(data)), BlockStop(index)]
        events = self._to("thinking", Thinking(""))
        if text := block.get("thinking"):
            events.append(Delta(self._index, "thinking", str(text)))
        if signature := block.get("signature"):
            events.append(Delta(self._index, "signature", str(signature)))
        return events

    def _tool(self, tc: _ToolDelta) -> list[Event]:
        events: list[Event] = []
        index = self.tools.get(tc.index)
        if index is None:
            fn = tc.function or _Fn()
            events = self._to("tool", ToolCall(tc.id or f"call_{tc.index}", fn.name or "", ""))
            index = self.tools[tc.index] = self._index
        if tc.function is not None and tc.function.arguments:
            events.append(Delta(index, "arguments", tc.function.arguments))
        return events


class StreamEncoder:
    """Events as `chat.completion.chunk` SSE events."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = ""
        self.created = int(time.time())
        self.tools: dict[int, int] = {}  # block index -> tool call index
        self.usage: oa.Usage | None = None

    def _chunk(self, delta: oa.Delta, finish: str | None = None) -> bytes:
        return oa.frame_chunk(
            oa.ChatCompletionChunk(
                id=self.id,
                created=self.created,
                model=self.model,
                choices=[oa.ChunkChoice(index=0, delta=delta, finish_reason=finish)],
            )
        )

    def feed(self, events: list[Event]) -> bytes:
        out: list[bytes] = []
        for e in events:
            if isinstance(e, Delta):
                out.append(self._chunk(self._delta(e)))
            elif isinstance(e, BlockStart):
                if isinstance(e.part, ToolCall):
                    n = self.tools[e.index] = len(self.tools)
                    call = oa.DeltaToolCall(
                        index=n,
                        id=e.part.id,
                        type="function",
                        function=oa.DeltaToolCallFunction(e.part.name, ""),
                    )
                    out.append(self._chunk(oa.Delta(tool_calls=[call])))
                elif isinstance(e.part, RedactedThinking):
                    block = {"type": "redacted_thinking", "data": e.part.data}
                    out.append(self._chunk(oa.Delta(thinking_blocks=[block])))
            elif isinstance(e, Start):
                self.id = _chat_id(e.id)
                self.model = e.model or self.model
                out.append(self._chunk(oa.Delta(role="assistant", content="")))
            elif isinstance(e, Finish):
                out.append(self._chunk(oa.Delta(), FINISH_REASONS[e.reason]))
            elif isinstance(e, UsageUpdate):
                self.usage = oa.Usage.of(e.usage)
        return b"".join(out)

    def _delta(self, e: Delta) -> oa.Delta:
        if e.kind == "text":
            return oa.Delta(content=e.text)
        if e.kind == "thinking":
            return oa.Delta(reasoning_content=e.text)
        if e.kind == "signature":
            block = {"type": "thinking", "thinking": "", "signature": e.text}
            return oa.Delta(thinking_blocks=[block])
        call = oa.DeltaToolCall(
            index=self.tools.get(e.index, 0), function=oa.DeltaToolCallFunction(arguments=e.text)
        )
        return oa.Delta(tool_calls=[call])

    def end(self) -> bytes:
        if not self.include_usage or self.usage is None:
            return b""
        return oa.frame_chunk(
            oa.ChatCompletionChunk(
                id=self.id,
                created=self.created,
                model=self.model,
                choices=[],
                usage=self.usage,
            )
        )


class ChatWire:
    """A chat completions client."""

    format = "chat"
    terminator = DONE

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage

    def encoder(self) -> StreamEncoder:
        return StreamEncoder(self.model, self.include_usage)

    def answer(self, answer: Answer) -> bytes:
        return encode_answer(answer, self.model)

    def error(self, exc: NoroshiError) -> bytes:
        return b"data: " + exc.body() + b"\n\n"
