"""The agent loop: a model call, then the tools it asks for (at once when it asks for several),
then again, until it answers without tools or runs out of steps.

The loop knows nothing of HTTP: it reports what happens through `emit(type, data)`, and the
endpoints turn those events into native SSE, the AI SDK stream or WebSocket frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

from noroshi import tracing
from noroshi.agent.tools import CALL_KEY, Toolbox, ToolResult
from noroshi.errors import UpstreamProtocolError
from noroshi.providers.base import Call, Usage
from noroshi.providers.router import ProviderRouter
from noroshi.wire import openai as oa
from noroshi.wire.sse import SSEDecoder

__all__ = ["Emit", "Step", "Turn", "Waiting", "denied", "run_turn"]

Emit = Callable[[str, dict[str, Any]], None]
MAX_TOOL_CALLS_PER_STEP = 32
INTERRUPTED = (
    "error: the tool {name} was running when the server stopped; it is not run again "
    "because it is not declared safe to repeat, and whether it finished is unknown"
)


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


class Step:
    """A step whose model call has answered with tool calls, while its tools run: each call's
    result once it has one, and where a resumed run finds each call that has none."""

    __slots__ = ("asked", "decisions", "finish", "message", "results", "started")

    def __init__(self, message: oa.AssistantMessage, finish: str) -> None:
        self.message = message
        self.finish = finish
        self.results: dict[str, ToolResult] = {}
        self.asked: set[str] = set()  # waiting for a person's approval
        self.started: set[str] = set()  # running when the process that ran them stopped
        self.decisions: dict[str, tuple[bool, str]] = {}  # call id -> (approved, reason)

    @property
    def calls(self) -> list[oa.ToolCall]:
        calls = self.message.tool_calls
        return calls if calls is not None else []


class Turn:
    """What one turn added to the conversation, and what this process used of it (a resumed
    run starts from the turn its kept events rebuild, and bills only its own calls)."""

    __slots__ = ("finish", "messages", "pending", "steps", "usage")

    def __init__(self, prompt: str) -> None:
        self.messages: list[oa.Message] = [oa.UserMessage(content=prompt)]
        self.usage = Usage()
        self.steps = 0
        self.pending: Step | None = None  # the step whose tools are running
        self.finish = "stop"  # or "max_steps"


class Waiting(Exception):
    """The turn stops until a person approves or denies these calls."""

    def __init__(self, calls: list[oa.ToolCall]) -> None:
        super().__init__(f"{len(calls)} tool calls wait for approval")
        self.calls = calls


async def run_turn(
    models: ProviderRouter,
    model: str,
    system: str,
    history: list[oa.Message],
    turn: Turn,
    toolbox: Toolbox,
    emit: Emit,
    *,
    max_steps: int,
    temperature: float | None = None,
    request_id: str = "",
    checkpoint: Callable[[], Awaitable[None]] | None = None,
) -> Turn:
    """Run the turn from where `turn` is to its answer. Raises `Waiting` when a tool call
    needs approval; `checkpoint` is awaited after each step, once its events are out."""
    head: list[oa.Message] = [oa.SystemMessage(content=system)] if system else []
    tools = [msgspec.convert(spec, oa.Tool) for spec in toolbox.specs()] or None
    while True:
        step = turn.pending
        if step is None:
            if turn.steps >= max_steps:
                turn.finish = "max_steps"
                return turn
            turn.steps += 1
            emit("step.started", {"step": turn.steps})
        # a step, the model call and the tools it asked for, is one span
        with tracing.span(
            f"agent step {turn.steps}",
            **{"noroshi.step": turn.steps, "gen_ai.request.model": model},
        ):
            if step is None:
                chat = oa.ChatRequest(
                    model=model,
                    messages=[*head, *history, *turn.messages],
                    stream=True,
                    tools=tools,
                    temperature=temperature,
                )
                call = Call(chat, msgspec.to_builtins(chat), request_id)
                try:
                    text, calls, finish = await _model_step(models, call, emit)
                finally:  # a cut call is billed for what it streamed, as the gateway bills one
                    used = call.usage or _used(call)
                    turn.usage.prompt_tokens += used.prompt_tokens
                    turn.usage.completion_tokens += used.completion_tokens
                message = oa.AssistantMessage(content=text or None, tool_calls=calls or None)
                if not calls:
                    turn.messages.append(message)
                    emit("step.finished", {"step": turn.steps, "finish_reason": finish})
                    return turn
                turn.pending = step = Step(message, finish)
                for c in calls:
                    emit(
                        "tool.call",
                        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments},
                    )
            await _run_tools(toolbox, step, emit, request_id)
        turn.messages.append(step.message)
        turn.messages.extend(
            oa.ToolMessage(content=step.results[c.id].content, tool_call_id=c.id)
            for c in step.calls
        )
        turn.pending = None
        emit("step.finished", {"step": turn.steps, "finish_reason": step.finish})
        if checkpoint is not None:
            await checkpoint()


def _used(call: Call) -> Usage:
    """What a call that never reported its usage is taken to have used."""
    if not call.attempts:
        return Usage()
    request = call.request  # the loop's calls are chat requests
    messages = request.messages if isinstance(request, oa.ChatRequest) else []
    prompt = sum(len(str(m.content or "")) for m in messages) // 4 + 1
    return Usage(prompt_tokens=prompt, completion_tokens=call.chunks)


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


async def _run_tools(toolbox: Toolbox, step: Step, emit: Emit, run_id: str) -> None:
    """Settle every call of the step without a result: at once, each reported as soon as it is
    ready. A denied call answers the model with the denial; one that was running when its
    process stopped runs again only when its tool is safe to repeat; one that needs approval
    stops the turn once the others are done."""

    async def run(call: oa.ToolCall) -> None:
        CALL_KEY.set(f"{run_id}:{call.id}")  # this task's own context: gather copies it
        name = call.function.name
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": call.id,
        }
        with tracing.span(f"execute_tool {name}", **attributes):
            result = await toolbox.run(name, call.function.arguments)
        settle(call, result)

    def settle(call: oa.ToolCall, result: ToolResult) -> None:
        step.results[call.id] = result
        emit(
            "tool.result",
            {
                "id": call.id,
                "name": call.function.name,
                "content": result.content,
                "is_error": result.is_error,
            },
        )
        for source in result.sources:
            emit("source", {"tool_call_id": call.id, **source})

    running: list[oa.ToolCall] = []
    asked: list[oa.ToolCall] = []
    for call in step.calls:
        name = call.function.name
        if call.id in step.results:
            continue
        decision = step.decisions.get(call.id)
        if decision is not None and call.id not in step.started:
            approved, reason = decision
            emit("tool.approval", {"id": call.id, "approved": approved, "reason": reason})
            step.started.add(call.id)  # from here on, it may have run
            if not approved:
                settle(call, ToolResult(denied(reason), is_error=True))
                continue
            running.append(call)
        elif call.id in step.started:
            tool = toolbox.get(name)
            if tool is not None and not tool.idempotent:
                settle(call, ToolResult(INTERRUPTED.format(name=name), is_error=True))
            else:
                running.append(call)
        elif call.id in step.asked or toolbox.needs_approval(name, call.function.arguments):
            asked.append(call)
        else:
            step.started.add(call.id)
            running.append(call)
    await asyncio.gather(*(run(c) for c in running))
    if asked:
        for call in asked:
            if call.id not in step.asked:
                step.asked.add(call.id)
                emit(
                    "tool.approval_requested",
                    {
                        "id": call.id,
                        "name": call.function.name,
                        "arguments": call.function.arguments,
                    },
                )
        raise Waiting(asked)


def denied(reason: str) -> str:
    """The result the model reads for a call a person refused."""
    return "error: the user did not approve this tool call" + (f": {reason}" if reason else "")


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for blob in rest:
        yield blob
