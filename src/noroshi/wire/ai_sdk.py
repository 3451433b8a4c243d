"""The Vercel AI SDK UI message stream (v1), made from a run's native events.

What `useChat` reads: data-only SSE of typed chunks, `start`, `start-step`, a text part opened
with `text-start`, filled by `text-delta` and closed by `text-end`, `tool-input-available`,
`tool-output-available` (or `tool-output-error`), `finish-step`, `finish`, then `[DONE]`. A run
that fails sends `error` and ends there, without `finish` or `[DONE]`, so the client does not
take it for a complete answer.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["HEADER", "UIMessageStream"]

HEADER = ("x-vercel-ai-ui-message-stream", "v1")  # beside the usual SSE headers
DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.encode


def _frame(seq: int, chunk: dict[str, Any]) -> bytes:
    return f"id: {seq}\ndata: ".encode() + _encode(chunk) + b"\n\n"


def _input(arguments: str) -> Any:
    """The tool's input as the object the model meant; its text when it is not JSON."""
    try:
        return msgspec.json.decode(arguments) if arguments else {}
    except msgspec.DecodeError:
        return arguments


class UIMessageStream:
    """Turns native events into UI message chunks; keeps which text part is open."""

    def __init__(self) -> None:
        self._text: str | None = None  # id of the open text part
        self._parts = 0

    def encode(self, seq: int, type: str, data: dict[str, Any]) -> bytes:
        out: list[dict[str, Any]] = []
        if type == "run.started":
            out.append({"type": "start", "messageId": data.get("run_id")})
        elif type == "step.started":
            out.append({"type": "start-step"})
        elif type == "text.delta":
            if self._text is None:
                self._parts += 1
                self._text = f"text-{self._parts}"
                out.append({"type": "text-start", "id": self._text})
            out.append({"type": "text-delta", "id": self._text, "delta": data["text"]})
        elif type == "tool.call":
            out += self._close_text()
            out.append({"type": "tool-input-available", "toolCallId": data["id"],
                        "toolName": data["name"], "input": _input(data["arguments"])})  # fmt: skip
        elif type == "tool.result":
            if data.get("is_error"):
                out.append({"type": "tool-output-error", "toolCallId": data["id"],
                            "errorText": data["content"]})  # fmt: skip
            else:
                out.append({"type": "tool-output-available", "toolCallId": data["id"],
                            "output": data["content"]})  # fmt: skip
        elif type == "step.finished":
            out += self._close_text()
            out.append({"type": "finish-step"})
        elif type == "run.finished":
            out += self._close_text()
            out.append({"type": "finish"})
            return b"".join(_frame(seq, c) for c in out) + DONE
        elif type == "error":
            out.append({"type": "error", "errorText": data.get("message", "The run failed.")})
        return b"".join(_frame(seq, c) for c in out)

    def _close_text(self) -> list[dict[str, Any]]:
        if self._text is None:
            return []
        closed, self._text = self._text, None
        return [{"type": "text-end", "id": closed}]
