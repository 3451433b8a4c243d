"""The Vercel AI SDK UI message stream (v1), made from a run's native events.

What `useChat` reads: data-only SSE of typed chunks, `start`, `start-step`, a text part opened
with `text-start`, filled by `text-delta` and closed by `text-end`, `tool-input-available`,
`tool-output-available` (or `tool-output-error`), `finish-step`, `finish`, then `[DONE]`. A run
that fails sends `error` and ends there, without `finish` or `[DONE]`, so the client does not
take it for a complete answer.

A tool call that waits for a person is the SDK's own `tool-approval-request` (its approval id is
the tool call's id), and the stream finishes there, as `streamText` does; `useChat` sends the
answers back in the next request's messages, whose answer goes on with `start` and the rest of
the same message. A denied call is `tool-output-denied`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

__all__ = ["HEADER", "UIChunk", "UIMessageStream"]

HEADER = ("x-vercel-ai-ui-message-stream", "v1")  # beside the usual SSE headers
DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.encode


class _Chunk(Struct, tag_field="type", rename="camel", kw_only=True):
    pass


class Start(_Chunk, tag="start"):
    message_id: str | None


class StartStep(_Chunk, tag="start-step"):
    pass


class TextStart(_Chunk, tag="text-start"):
    id: str


class TextDelta(_Chunk, tag="text-delta"):
    id: str
    delta: str


class TextEnd(_Chunk, tag="text-end"):
    id: str


class ToolInputAvailable(_Chunk, tag="tool-input-available"):
    tool_call_id: str
    tool_name: str
    input: Any


class ToolOutputAvailable(_Chunk, tag="tool-output-available"):
    tool_call_id: str
    output: Any


class ToolOutputError(_Chunk, tag="tool-output-error"):
    tool_call_id: str
    error_text: str


class ToolApprovalRequest(_Chunk, tag="tool-approval-request"):
    approval_id: str
    tool_call_id: str


class ToolOutputDenied(_Chunk, tag="tool-output-denied"):
    tool_call_id: str


class SourceDocument(_Chunk, tag="source-document"):
    source_id: str
    media_type: str
    title: str
    filename: str | None = None


class FinishStep(_Chunk, tag="finish-step"):
    pass


class Finish(_Chunk, tag="finish"):
    pass


class Error(_Chunk, tag="error"):
    error_text: str


UIChunk = (
    Start
    | StartStep
    | TextStart
    | TextDelta
    | TextEnd
    | ToolInputAvailable
    | ToolOutputAvailable
    | ToolOutputError
    | ToolApprovalRequest
    | ToolOutputDenied
    | SourceDocument
    | FinishStep
    | Finish
    | Error
)


def _frame(seq: int, chunk: _Chunk) -> bytes:
    return f"id: {seq}\ndata: ".encode() + _encode(chunk) + b"\n\n"


def _input(arguments: str) -> Any:
    """The tool's input as the object the model meant; its text when it is not JSON."""
    try:
        return msgspec.json.decode(arguments) if arguments else {}
    except msgspec.DecodeError:
        return arguments


class UIMessageStream:
    """Turns native events into UI message chunks; keeps which text part and step are open."""

    def __init__(self) -> None:
        self._text: str | None = None  # id of the open text part
        self._parts = 0
        self._step = False  # a step is open
        self._denied: set[str] = set()

    def encode(self, seq: int, type: str, data: dict[str, Any]) -> bytes:
        out: list[_Chunk] = []
        if type == "run.started":
            out.append(Start(message_id=data.get("run_id")))
        elif type == "step.started":
            out += self._open_step()
        elif type == "text.delta":
            if self._text is None:
                self._parts += 1
                self._text = f"text-{self._parts}"
                out.append(TextStart(id=self._text))
            out.append(TextDelta(id=self._text, delta=data["text"]))
        elif type == "tool.call":
            out += self._close_text()
            out.append(
                ToolInputAvailable(
                    tool_call_id=data["id"], tool_name=data["name"], input=_input(data["arguments"])
                )
            )
        elif type == "tool.approval_requested":
            out.append(ToolApprovalRequest(approval_id=data["id"], tool_call_id=data["id"]))
        elif type == "tool.approval" and not data.get("approved"):
            self._denied.add(data["id"])
        elif type == "tool.result":
            if data["id"] in self._denied:
                self._denied.discard(data["id"])
                out.append(ToolOutputDenied(tool_call_id=data["id"]))
            elif data.get("is_error"):
                out.append(ToolOutputError(tool_call_id=data["id"], error_text=data["content"]))
            else:
                out.append(ToolOutputAvailable(tool_call_id=data["id"], output=data["content"]))
        elif type == "source":
            out.append(
                SourceDocument(
                    source_id=data["id"],
                    media_type="text/plain",
                    title=data["title"],
                    filename=data["source"],
                )
            )
        elif type in ("step.finished", "run.waiting"):
            out += self._close_step()
        elif type == "run.resumed":  # a cut step starts over; a waiting one goes on
            out += self._close_step()
            out += self._open_step()
        elif type == "run.finished":
            out += self._close_step()
            out.append(Finish())
            return b"".join(_frame(seq, c) for c in out) + DONE
        elif type == "error":
            out.append(Error(error_text=data.get("message", "The run failed.")))
        return b"".join(_frame(seq, c) for c in out)

    def start(self, seq: int, message_id: str) -> bytes:
        """What a stream that takes up a message after its first events opens with."""
        return _frame(seq, Start(message_id=message_id))

    def pause(self, seq: int) -> bytes:
        """The end of a stream whose run waits for approval: finished, as far as it went."""
        return _frame(seq, Finish()) + DONE

    def _open_step(self) -> list[_Chunk]:
        if self._step:
            return []
        self._step = True
        return [StartStep()]

    def _close_step(self) -> list[_Chunk]:
        out = self._close_text()
        if self._step:
            self._step = False
            out.append(FinishStep())
        return out

    def _close_text(self) -> list[_Chunk]:
        if self._text is None:
            return []
        closed, self._text = self._text, None
        return [TextEnd(id=closed)]
