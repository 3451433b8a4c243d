"""OpenAI's Responses API (and the Open Responses specification) and the gateway's
conversation: this format's request type, and its one decoder (input items to turns) and one
encoder (answers and streams to output items and events).

Reasoning is an item of its own both ways: Anthropic's thinking comes out as a `reasoning`
item whose `encrypted_content` is its signature, and goes back, signature and all, when a
client sends the item again. Items this module does not model (file and web search calls,
item references) are named in `Conversation.dropped`.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from noroshi.errors import BadRequest, NoroshiError, convert_at
from noroshi.wire.conversation import (
    Answer,
    BlockStart,
    BlockStop,
    Collector,
    Conversation,
    Delta,
    Event,
    Image,
    OutputFormat,
    Part,
    RedactedThinking,
    Start,
    Text,
    Thinking,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
    Turn,
    Usage,
)

__all__ = [
    "COMPACT_PROMPT",
    "CompactRequest",
    "InputItemsQuery",
    "ResponsesRequest",
    "ResponsesWire",
    "StreamEncoder",
    "compaction_item",
    "decode_request",
    "error_of",
    "error_payload",
    "function_call_ids",
    "input_items",
    "new_id",
    "usage_out",
]

_encode = msgspec.json.encode
Effort = Literal["none", "minimal", "low", "medium", "high"]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


class ResponsesRequest(Struct, kw_only=True):
    """`POST /v1/responses`. Items are checked one by one, so an error names the item."""

    model: Annotated[str, Meta(min_length=1)]
    input: str | list[dict[str, Any]] = []
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    previous_response_id: str | None = None
    background: bool = False
    stream: bool = False
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    max_tool_calls: Annotated[int, Meta(ge=1)] | None = None


class CompactRequest(Struct, kw_only=True):
    """`POST /v1/responses/compact`: the conversation to fold into one compaction item."""

    model: Annotated[str, Meta(min_length=1)]
    input: str | list[dict[str, Any]] | None = None
    previous_response_id: str | None = None
    instructions: str | None = None
    prompt_cache_key: str | None = None

    def as_request(self) -> ResponsesRequest:
        return ResponsesRequest(
            model=self.model,
            input=self.input or [],
            store=False,
            instructions=self.instructions,
            previous_response_id=self.previous_response_id,
        )


COMPACT_PROMPT = (
    "Summarize the conversation so far for your own later use, in place of it: keep every "
    "fact, decision, name, number and open task. Answer with the summary only."
)
_SEAL = "noroshi.compaction.v1:"


def compaction_item(summary: str) -> dict[str, Any]:
    """A compaction item: the summary, sealed so that only noroshi opens it again. It is not
    secret, only opaque, as the specification asks of its content."""
    sealed = _SEAL + base64.urlsafe_b64encode(summary.encode()).decode()
    return {"type": "compaction", "id": new_id("cmp"), "encrypted_content": sealed}


def _unseal(content: Any, path: str) -> str:
    field = f"{path}.encrypted_content"
    if not isinstance(content, str) or not content.startswith(_SEAL):
        raise BadRequest(
            f"Not a compaction item made by this gateway at '{field}'",
            param=field,
            code="invalid_value",
        )
    try:
        return base64.urlsafe_b64decode(content[len(_SEAL) :]).decode()
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(
            f"A damaged compaction item at '{field}'", param=field, code="invalid_value"
        ) from None


class InputItemsQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    limit: Annotated[int, Meta(ge=1, le=100)] = 20
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None
    include: str | None = None


class _Reasoning(Struct):
    effort: Effort | None = None
    summary: str | None = None


class _Format(Struct):
    type: Literal["text", "json_object", "json_schema"]
    name: str = "output"
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class _FunctionTool(Struct):
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.\-]+$")]
    parameters: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class _Message(Struct):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict[str, Any]]


class _FunctionCall(Struct):
    call_id: Annotated[str, Meta(min_length=1)]
    name: Annotated[str, Meta(min_length=1)]
    arguments: str


class _FunctionCallOutput(Struct):
    call_id: Annotated[str, Meta(min_length=1)]
    output: str | list[dict[str, Any]]


class _ReasoningItem(Struct):
    summary: list[dict[str, Any]] = []
    content: list[dict[str, Any]] | None = None
    encrypted_content: str | None = None


# --- requests ------------------------------------------------------------------------------


def input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as items, each with an id, as they are stored and listed."""
    raw = req.input
    items = [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else raw
    out = []
    for item in items:
        kind = item.get("type", "message")
        prefix = {
            "message": "msg",
            "function_call": "fc",
            "function_call_output": "fco",
            "reasoning": "rs",
            "compaction": "cmp",
        }.get(kind, "item")
        out.append({"id": new_id(prefix), **item, "type": kind})
    return out


def _content(content: str | list[dict[str, Any]], path: str, dropped: list[str]) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)]
    parts: list[Part] = []
    for i, part in enumerate(content):
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequest(
                    f"Expected `str` at '{path}.{i}.text'",
                    param=f"{path}.{i}.text",
                    code="invalid_value",
                )
            parts.append(Text(text))
        elif kind == "refusal":
            parts.append(Text(str(part.get("refusal", ""))))
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append(Image(part["image_url"]))
        else:
            dropped.append(f"'{kind}' content")
    return parts


def _texts(parts: list[Any]) -> str:
    return "".join(p.text for p in parts if isinstance(p, Text))


def decode_request(
    req: ResponsesRequest, history: list[dict[str, Any]], items: list[dict[str, Any]]
) -> Conversation:
    """The request as a conversation: the stored `history` of its previous responses (their
    input and output items), then its own input `items`."""
    dropped: list[str] = []
    system = [req.instructions] if req.instructions else []
    turns: list[Turn] = []

    def add(role: Literal["user", "assistant"], parts: list[Part]) -> None:
        if turns and turns[-1].role == role:
            turns[-1].parts.extend(parts)
        elif parts:
            turns.append(Turn(role, parts))

    for n, item in enumerate([*history, *items]):
        path = f"input.{n - len(history)}" if n >= len(history) else f"history.{n}"
        kind = item.get("type", "message")
        if kind == "message":
            m = convert_at(item, _Message, path)
            parts = _content(m.content, f"{path}.content", dropped)
            if m.role in ("system", "developer"):
                system.append(_texts(parts))
            else:
                add(m.role, parts)
        elif kind == "function_call":
            fc = convert_at(item, _FunctionCall, path)
            add("assistant", [ToolCall(fc.call_id, fc.name, fc.arguments)])
        elif kind == "function_call_output":
            out = convert_at(item, _FunctionCallOutput, path)
            content = _content(out.output, f"{path}.output", dropped)
            result = [p for p in content if isinstance(p, Text | Image)]
            add("user", [ToolResult(out.call_id, result)])
        elif kind == "compaction":
            summary = _unseal(item.get("encrypted_content"), path)
            system.append(f"A summary of the conversation before this point:\n{summary}")
        elif kind == "reasoning":
            r = convert_at(item, _ReasoningItem, path)
            text = _texts(_content(r.content or r.summary, f"{path}.content", dropped))
            if not text and r.encrypted_content:
                add("assistant", [RedactedThinking(r.encrypted_content)])
            else:
                add("assistant", [Thinking(text, r.encrypted_content or "")])
        else:
            dropped.append(f"'{kind}' items")
    conv = Conversation(
        model=req.model, system="\n\n".join(system), turns=turns, dropped=dropped, stream=req.stream
    )
    for i, raw in enumerate(req.tools or ()):
        if raw.get("type") != "function":
            dropped.append(f"the '{raw.get('type')}' tool")
            continue
        t = convert_at(raw, _FunctionTool, f"tools.{i}")
        params = t.parameters or {"type": "object", "properties": {}}
        conv.tools.append(Tool(t.name, t.description or "", params, t.strict))
    choice = req.tool_choice
    if isinstance(choice, str):
        conv.tool_choice = ToolChoice(choice)
    elif isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        conv.tool_choice = ToolChoice("tool", str(choice["name"]))
    conv.parallel_tool_calls = req.parallel_tool_calls
    conv.max_output_tokens = req.max_output_tokens
    conv.temperature, conv.top_p = req.temperature, req.top_p
    conv.user = req.safety_identifier or req.user
    if req.reasoning is not None:
        effort = convert_at(req.reasoning, _Reasoning, "reasoning").effort
        conv.effort = None if effort in (None, "none") else effort
    fmt = (req.text or {}).get("format")
    if fmt is not None:
        f = convert_at(fmt, _Format, "text.format")
        if f.type != "text":
            conv.output_format = OutputFormat(f.type, f.name, f.schema, f.strict)
    return conv


def function_call_ids(items: list[dict[str, Any]]) -> tuple[set[str], list[tuple[int, str]]]:
    """The calls made in `items`, and the outputs answering calls: (position, call id)."""
    calls = {str(i.get("call_id")) for i in items if i.get("type") == "function_call"}
    outputs = [
        (n, i["call_id"])
        for n, i in enumerate(items)
        if i.get("type") == "function_call_output" and isinstance(i.get("call_id"), str)
    ]
    return calls, outputs


# --- answers -------------------------------------------------------------------------------


def usage_out(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _item(
    part: Text | Thinking | RedactedThinking | ToolCall, item_id: str, status: str = "completed"
) -> dict[str, Any]:
    """One output item: its id, and all that streamed into it so far."""
    if isinstance(part, Text):
        content = [] if status == "in_progress" else [_output_text(part.text)]
        return {
            "type": "message",
            "id": item_id,
            "status": status,
            "role": "assistant",
            "content": content,
        }
    if isinstance(part, ToolCall):
        return {
            "type": "function_call",
            "id": item_id,
            "call_id": part.id,
            "name": part.name,
            "arguments": part.arguments,
            "status": status,
        }
    item: dict[str, Any] = {"type": "reasoning", "id": item_id, "summary": []}
    if isinstance(part, RedactedThinking):
        item["encrypted_content"] = part.data
        return item
    started = status == "in_progress"
    item["content"] = [] if started else [{"type": "reasoning_text", "text": part.text}]
    if part.signature:
        item["encrypted_content"] = part.signature
    return item


class ResponsesWire:
    """A Responses client, for one response: its id, and the request it echoes."""

    format = "responses"
    terminator = b""  # `response.completed` is the end, written by the encoder's `end`

    def __init__(self, req: ResponsesRequest, response_id: str | None = None) -> None:
        self.id = response_id or new_id("resp")
        self.created_at = int(time.time())
        self.req = req
        self.current: StreamEncoder | None = None  # the attempt whose stream the client has
        self.response: dict[str, Any] | None = None  # the last state written

    def resource(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The response object, every field the specification requires."""
        req = self.req
        done = status in ("completed", "incomplete", "failed", "cancelled")
        text = req.text if req.text is not None else {"format": {"type": "text"}}
        reasoning = None
        if req.reasoning is not None:
            reasoning = {
                "effort": req.reasoning.get("effort"),
                "summary": req.reasoning.get("summary"),
            }
        self.response = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "model": req.model,
            "previous_response_id": req.previous_response_id,
            "instructions": req.instructions,
            "output": output,
            "error": error,
            "tools": [_tool_echo(t) for t in req.tools or ()],
            "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
            "truncation": req.truncation or "disabled",
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "text": text,
            "top_p": req.top_p if req.top_p is not None else 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "top_logprobs": 0,
            "temperature": req.temperature if req.temperature is not None else 1.0,
            "reasoning": reasoning,
            "usage": usage_out(usage) if usage is not None and done else None,
            "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": req.max_tool_calls,
            "store": req.store,
            "background": req.background,
            "service_tier": "default",
            "metadata": req.metadata or {},
            "safety_identifier": req.safety_identifier,
            "prompt_cache_key": req.prompt_cache_key,
            "user": req.user,
        }
        return self.response

    def finished(self, answer: Answer, ids: dict[int, str] | None = None) -> dict[str, Any]:
        """The response of a complete answer; `ids` are the items' ids as they streamed."""
        output = [
            _item(p, (ids or {}).get(i) or _new_item_id(p)) for i, p in enumerate(answer.parts)
        ]
        status = "incomplete" if answer.stop == "max_tokens" else "completed"
        return self.resource(status, output, answer.usage)

    def encoder(self) -> StreamEncoder:
        self.current = StreamEncoder(self)
        return self.current

    def answer(self, answer: Answer) -> bytes:
        return _encode(self.finished(answer))

    def error(self, exc: NoroshiError) -> bytes:
        encoder = self.current or StreamEncoder(self)
        return encoder.fail(exc)


def _new_item_id(part: Any) -> str:
    if isinstance(part, Text):
        return new_id("msg")
    return new_id("fc" if isinstance(part, ToolCall) else "rs")


def _tool_echo(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        return tool
    return {
        "type": "function",
        "name": tool.get("name"),
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }


def error_of(exc: NoroshiError) -> dict[str, Any]:
    return {"code": exc.code or exc.type, "message": exc.message}


def error_payload(exc: NoroshiError) -> dict[str, Any]:
    """An `error` event's fields: OpenAI's (code, message and param at the top) and the Open
    Responses specification's (the same under `error`), so readers of either find them."""
    code = exc.code or exc.type
    return {
        "code": code,
        "message": exc.message,
        "param": exc.param,
        "error": {"type": exc.type, "code": code, "message": exc.message, "param": exc.param},
    }


# --- streams -------------------------------------------------------------------------------


class StreamEncoder:
    """Events as Responses stream events, each with its `sequence_number`: `response.created`
    and `.in_progress`, then per block its item and part events and deltas, then, at `end`,
    `response.completed` (or `.incomplete`) with the whole response."""

    def __init__(self, wire: ResponsesWire) -> None:
        self.wire = wire
        self.seq = 0
        self.collector = Collector()
        self.ids: dict[int, str] = {}  # block index -> item id
        self.outputs: dict[int, int] = {}  # block index -> output index
        self.open: set[int] = set()

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = _encode({"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def feed(self, events: list[Event]) -> bytes:
        self.collector.feed(events)
        out: list[bytes] = []
        for e in events:
            if isinstance(e, Delta):
                out.append(self._delta(e))
            elif isinstance(e, BlockStart):
                out += self._start(e)
            elif isinstance(e, BlockStop):
                out += self._stop(e.index)
            elif isinstance(e, Start):
                response = self.wire.resource("in_progress", [])
                out.append(self._event("response.created", response=response))
                out.append(self._event("response.in_progress", response=response))
        return b"".join(out)

    def _where(self, index: int) -> dict[str, Any]:
        return {"item_id": self.ids[index], "output_index": self.outputs[index]}

    def _start(self, e: BlockStart) -> list[bytes]:
        part = e.part
        self.ids[e.index] = _new_item_id(part)
        self.outputs[e.index] = len(self.outputs)
        self.open.add(e.index)
        where = self._where(e.index)
        item = _item(part, where["item_id"], "in_progress")
        out = [
            self._event("response.output_item.added", output_index=where["output_index"], item=item)
        ]
        if isinstance(part, Text):
            out.append(
                self._event(
                    "response.content_part.added", **where, content_index=0, part=_output_text("")
                )
            )
        elif isinstance(part, Thinking):
            out.append(
                self._event(
                    "response.content_part.added",
                    **where,
                    content_index=0,
                    part={"type": "reasoning_text", "text": ""},
                )
            )
        return out

    def _delta(self, e: Delta) -> bytes:
        if e.index not in self.ids or e.kind == "signature":
            return b""  # a signature goes out whole, as `encrypted_content`, with its item
        where = self._where(e.index)
        if e.kind == "text":
            return self._event(
                "response.output_text.delta", **where, content_index=0, delta=e.text, logprobs=[]
            )
        if e.kind == "thinking":
            return self._event(
                "response.reasoning_text.delta", **where, content_index=0, delta=e.text
            )
        return self._event("response.function_call_arguments.delta", **where, delta=e.text)

    def _stop(self, index: int) -> list[bytes]:
        if index not in self.open:
            return []
        self.open.discard(index)
        part = self.collector.answer.parts[self.outputs[index]]
        where = self._where(index)
        out: list[bytes] = []
        if isinstance(part, Text):
            out += [
                self._event(
                    "response.output_text.done",
                    **where,
                    content_index=0,
                    text=part.text,
                    logprobs=[],
                ),
                self._event(
                    "response.content_part.done",
                    **where,
                    content_index=0,
                    part=_output_text(part.text),
                ),
            ]
        elif isinstance(part, Thinking):
            text = {"type": "reasoning_text", "text": part.text}
            out += [
                self._event(
                    "response.reasoning_text.done", **where, content_index=0, text=part.text
                ),
                self._event("response.content_part.done", **where, content_index=0, part=text),
            ]
        elif isinstance(part, ToolCall):
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    **where,
                    name=part.name,
                    arguments=part.arguments,
                )
            )
        item = _item(part, where["item_id"])
        out.append(
            self._event("response.output_item.done", output_index=where["output_index"], item=item)
        )
        return out

    def end(self) -> bytes:
        out = [b for index in sorted(self.open) for b in self._stop(index)]
        response = self.wire.finished(self.collector.answer, self.ids)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        out.append(self._event(kind, response=response))
        return b"".join(out)

    def failed(self, exc: NoroshiError) -> dict[str, Any]:
        """The response as a fault left it: failed, with what was answered until then."""
        answer = self.collector.answer
        output = [
            _item(p, self.ids.get(i) or _new_item_id(p), "incomplete")
            for i, p in enumerate(answer.parts)
        ]
        return self.wire.resource("failed", output, answer.usage, error_of(exc))

    def fail(self, exc: NoroshiError) -> bytes:
        """An `error` event, then `response.failed` with what was answered until then."""
        response = self.failed(exc)
        return self._event("error", **error_payload(exc)) + self._event(
            "response.failed", response=response
        )
