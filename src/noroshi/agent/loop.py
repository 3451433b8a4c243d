"""The agent loop: a model call, then the tools it asks for (at once when it asks for several),
then again, until it answers without tools or runs out of steps.

The loop knows nothing of HTTP: it reports what happens through `emit(type, data)`, and the
endpoints turn those events into native SSE, the AI SDK stream or WebSocket frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from noroshi import tracing
from noroshi.agent.tools import Toolbox, ToolResult
from noroshi.errors import UpstreamProtocolError
from noroshi.providers.base import Call, Usage
from noroshi.providers.router import ProviderRouter
from noroshi.wire import openai as oa
from noroshi.wire.sse import SSEDecoder

__all__ = ["Emit", "Turn", "run_turn"]

Emit = Callable[[str, dict[str, Any]], None]
MAX_TOOL_CALLS_PER_STEP = 32


class _FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: Usage | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk)


class Turn:
    """What one turn added to the conversation, and what it used."""

    __slots__ = ("finish", "messages", "steps", "usage")

    def __init__(self) -> None:
        self.messages: list[oa.Message] = []
        self.usage = Usage()
        self.steps = 0
        self.finish = "stop"  # or "max_steps"


async def run_turn(
    models: ProviderRouter,
    model: str,
    system: str,
    history: list[oa.Message],
    prompt: str,
    toolbox: Toolbox,
    emit: Emit,
    *,
    max_steps: int,
    temperature: float | None = None,
    request_id: str = "",
) -> Turn:
    turn = Turn()
    turn.messages.append(oa.UserMessage(content=prompt))
    head: list[oa.Message] = [oa.SystemMessage(content=system)] if system else []
    tools = [msgspec.convert(spec, oa.Tool) for spec in toolbox.specs()] or None
    for step in range(1, max_steps + 1):
        span = tracing.span(f"agent step {step}", **{"noroshi.step": step,
                            "gen_ai.request.model": model})  # fmt: skip
        with span:  # the model call and the tools it asked for, as one span
            turn.steps = step
            emit("step.started", {"step": step})
            chat = oa.ChatRequest(
                model=model,
                messages=[*head, *history, *turn.messages],
                stream=True,
                tools=tools,
                temperature=temperature,
            )
            call = Call(chat, msgspec.to_builtins(chat), request_id)
            text, calls, finish = await _model_step(models, call, emit)
            if call.usage is not None:
                turn.usage.prompt_tokens += call.usage.prompt_tokens
                turn.usage.completion_tokens += call.usage.completion_tokens
            turn.messages.append(
                oa.AssistantMessage(content=text or None, tool_calls=calls or None)
            )
            if calls:  # a step is a model call and the tools it asked for
                results = await _run_tools(toolbox, calls, emit)
                turn.messages.extend(
                    oa.ToolMessage(content=r.content, tool_call_id=c.id)
                    for c, r in zip(calls, results, strict=True)
                )
            emit("step.finished", {"step": step, "finish_reason": finish})
            if not calls:
                return turn
    turn.finish = "max_steps"
    return turn


async def _model_step(
    models: ProviderRouter, call: Call, emit: Emit
) -> tuple[str, list[oa.ToolCall], str]:
    """Stream one model call: text deltas go out as they come, tool calls are assembled."""
    first, rest = await models.open_stream(call)
    decoder = SSEDecoder()
    text: list[str] = []
    pending: dict[int, tuple[str, str, list[str]]] = {}  # index -> (id, name, argument parts)
    finish = "stop"
    try:
        async for blob in _chain(first, rest):
            for _, data in decoder.feed(blob):
                try:
                    chunk = _decode_chunk.decode(data)
                except msgspec.DecodeError:
                    raise UpstreamProtocolError("The upstream sent a malformed chunk.") from None
                if chunk.usage is not None:
                    call.usage = chunk.usage
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    if delta.content:
                        text.append(delta.content)
                        emit("text.delta", {"text": delta.content})
                    for tc in delta.tool_calls or ():
                        _collect(pending, tc)
                    if choice.finish_reason:
                        finish = choice.finish_reason
    finally:
        await rest.aclose()
    calls = [
        oa.ToolCall(id=cid or f"call_{i}", function=oa.ToolCallFunction(name, "".join(parts)))
        for i, (cid, name, parts) in sorted(pending.items())
    ]
    return "".join(text), calls, finish


def _collect(pending: dict[int, tuple[str, str, list[str]]], tc: _ToolCallDelta) -> None:
    if tc.index not in pending:
        if len(pending) >= MAX_TOOL_CALLS_PER_STEP:
            raise UpstreamProtocolError("The model asked for too many tool calls at once.")
        pending[tc.index] = (tc.id or "", "", [])
    cid, name, parts = pending[tc.index]
    fn = tc.function
    if fn is not None:
        name = name or (fn.name or "")
        if fn.arguments:
            parts.append(fn.arguments)
    pending[tc.index] = (cid or tc.id or "", name, parts)


async def _run_tools(toolbox: Toolbox, calls: list[oa.ToolCall], emit: Emit) -> list[ToolResult]:
    """Every call at once; each result is reported as soon as it is ready."""

    async def one(call: oa.ToolCall) -> ToolResult:
        name = call.function.name
        attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                      "gen_ai.tool.call.id": call.id}  # fmt: skip
        with tracing.span(f"execute_tool {name}", **attributes):
            result = await toolbox.run(name, call.function.arguments)
        emit("tool.result", {"id": call.id, "name": call.function.name,
                             "content": result.content, "is_error": result.is_error})  # fmt: skip
        for source in result.sources:
            emit("source", {"tool_call_id": call.id, **source})
        return result

    for call in calls:
        emit("tool.call", {"id": call.id, "name": call.function.name,
                           "arguments": call.function.arguments})  # fmt: skip
    return list(await asyncio.gather(*(one(c) for c in calls)))


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for blob in rest:
        yield blob
