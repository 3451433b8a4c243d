"""A run's kept events read back into the turn they record, so another process can go on with
it: steps that finished keep their answers and tool results and are not run again; the step
that was going when its process stopped goes on from its last kept event.

A model call that was cut off is made again (its partial text is dropped: the step starts over,
under the same number). A tool call with no kept result was running, unless it waited for a
person's approval: whether it is run again is the loop's decision (`Tool.idempotent`).
"""

from __future__ import annotations

from collections.abc import Iterable

from noroshi.agent.loop import Step, Turn
from noroshi.agent.tools import ToolResult
from noroshi.wire import openai as oa

__all__ = ["replay"]

Row = tuple[int, str, dict[str, object]]


def replay(prompt: str, events: Iterable[Row]) -> tuple[Turn, bool]:
    """The turn the events record, and whether its answer is complete (the run died between
    its last model call and its end)."""
    turn = Turn(prompt)
    text: list[str] = []
    step: Step | None = None
    done = False
    for _, type, data in events:
        if type == "step.started":
            turn.steps = int(str(data["step"]))
            text, step, done = [], None, False
        elif type == "text.delta":
            text.append(str(data["text"]))
        elif type == "tool.call":
            if step is None:
                message = oa.AssistantMessage(content="".join(text) or None, tool_calls=[])
                step = Step(message, "tool_calls")
            function = oa.ToolCallFunction(str(data["name"]), str(data["arguments"]))
            step.calls.append(oa.ToolCall(id=str(data["id"]), function=function))
            step.started.add(str(data["id"]))  # tools start as soon as they are announced
        elif type == "tool.approval_requested" and step is not None:
            step.started.discard(str(data["id"]))
            step.asked.add(str(data["id"]))
        elif type == "tool.approval" and step is not None:
            step.started.add(str(data["id"]))  # answered: from then on it may have run
        elif type == "tool.result" and step is not None:
            step.results[str(data["id"])] = ToolResult(
                str(data["content"]), is_error=bool(data["is_error"])
            )
        elif type == "step.finished":
            if step is None:  # an answer without tools: the turn's last step
                turn.messages.append(oa.AssistantMessage(content="".join(text) or None))
                done = True
            else:
                step.finish = str(data["finish_reason"])
                turn.messages.append(step.message)
                turn.messages.extend(
                    oa.ToolMessage(content=step.results[c.id].content, tool_call_id=c.id)
                    for c in step.calls
                    if c.id in step.results
                )
            step, text = None, []
    if step is None and not done and turn.steps:  # its model call was cut: make it again
        turn.steps -= 1
    turn.pending = step
    return turn, done
