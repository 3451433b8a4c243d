"""Agent API types: what starts a run, the events a run streams, and runs and sessions as
stored and served. The run loop emits these events, the server frames them, the client
decodes them: one set of types end to end."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from noroshi.errors import BadRequest
from noroshi.wire.openai import Message
from noroshi.wire.times import Timestamp

__all__ = [
    "AgentChatBody",
    "AgentEvent",
    "AgentInfo",
    "AgentList",
    "ApprovalAnswer",
    "ApprovalBody",
    "Deleted",
    "ErrorEvent",
    "Format",
    "JoinQuery",
    "PendingApproval",
    "Run",
    "RunAccepted",
    "RunCancelled",
    "RunFinished",
    "RunResumed",
    "RunStarted",
    "RunWaiting",
    "Session",
    "SessionDetail",
    "SessionList",
    "SourceCited",
    "StepFinished",
    "StepStarted",
    "TextDelta",
    "ToolApprovalRequested",
    "ToolApproved",
    "ToolCalled",
    "ToolResult",
    "UIMessage",
    "UIPart",
    "UsageReport",
    "WSMessage",
]

Format = Literal["native", "ai-sdk"]
ChatId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]


class UIApproval(Struct):
    """A tool part's approval as `useChat` keeps it: asked (`id`), then answered."""

    id: str
    approved: bool | None = None
    reason: str | None = None


class UIPart(Struct, rename="camel"):
    type: str
    text: str | None = None
    tool_call_id: str | None = None
    state: str | None = None
    approval: UIApproval | None = None


class UIMessage(Struct):
    """A message as `useChat` sends it; only its text parts matter here."""

    role: str
    parts: list[UIPart] = []
    id: str | None = None


class AgentChatBody(Struct, kw_only=True):
    """Either noroshi's own `{prompt, session_id}` or useChat's `{id, messages}`; the latter
    answers in the AI SDK stream unless `format` says otherwise."""

    prompt: Annotated[str, Meta(min_length=1)] | None = None
    session_id: ChatId | None = None
    agent: str | None = None
    format: Format | None = None
    background: bool = False
    id: ChatId | None = None  # useChat's chat id, used as the session id
    messages: list[UIMessage] | None = None

    def answers(self) -> list[tuple[str, bool, str]]:
        """The approvals `useChat` sends back: (tool call id, approved, reason) of each tool
        part of its last message, when that is the assistant's and a person answered."""
        last = self.messages[-1] if self.messages else None
        if last is None or last.role != "assistant":
            return []
        return [
            (p.tool_call_id, bool(p.approval.approved), p.approval.reason or "")
            for p in last.parts
            if p.state == "approval-responded"
            and p.tool_call_id
            and p.approval
            and p.approval.approved is not None
        ]

    def turn(self) -> tuple[str, str | None, Format]:
        """The prompt, the session and the stream format this body asks for."""
        if self.messages is not None:
            users = [m for m in self.messages if m.role == "user"]
            text = (
                "".join(p.text or "" for p in users[-1].parts if p.type == "text") if users else ""
            )
            if not text:
                raise BadRequest("The last user message has no text.", param="messages")
            return text, self.session_id or self.id, self.format or "ai-sdk"
        if self.prompt is None:
            raise BadRequest("Send `prompt` (or useChat's `messages`).", param="prompt")
        return self.prompt, self.session_id, self.format or "native"


class WSMessage(AgentChatBody, kw_only=True):
    """`run` starts a run, `cancel` stops it, `approve` answers a tool call it waits on."""

    type: Literal["run", "cancel", "approve"] = "run"
    tool_call_id: str | None = None
    approved: bool = False
    reason: str = ""


class ApprovalBody(Struct, forbid_unknown_fields=True, kw_only=True):
    """A person's answer to a tool call that waits for approval."""

    tool_call_id: Annotated[str, Meta(min_length=1, max_length=256)]
    approved: bool
    reason: Annotated[str, Meta(max_length=2000)] = ""


class ApprovalAnswer(Struct, kw_only=True):
    run_id: str
    tool_call_id: str
    approved: bool
    status: str  # the run's: "running" once every call it waited on is answered, else "waiting"


class PendingApproval(Struct, kw_only=True):
    """A tool call a run waits on."""

    tool_call_id: str
    name: str
    arguments: str
    expires_at: Timestamp  # unanswered then, it is denied with reason "expired"


class JoinQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    format: Format = "native"


# --- events: `type` names each; `seq` is the SSE id (and a field of WebSocket frames) ---


class _Event(Struct, tag_field="type", kw_only=True, forbid_unknown_fields=True):
    seq: int = 0

    @property
    def type(self) -> str:
        """The event's name, as on the wire: "run.started", "text.delta"…"""
        return str(self.__struct_config__.tag)

    @property
    def text(self) -> str:
        """The text this event adds to the answer: only `text.delta` has any."""
        return ""


class RunStarted(_Event, tag="run.started"):
    run_id: str
    session_id: str
    agent: str
    model: str


class StepStarted(_Event, tag="step.started"):
    step: int


class TextDelta(_Event, tag="text.delta"):
    text: str  # the property's value, as a field


class ToolCalled(_Event, tag="tool.call"):
    id: str
    name: str
    arguments: str  # the JSON text the model wrote


class ToolResult(_Event, tag="tool.result"):
    id: str
    name: str
    content: str
    is_error: bool


class SourceCited(_Event, tag="source"):
    """A passage a tool drew on (a knowledge search hit), right after its `tool.result`."""

    tool_call_id: str
    id: str  # the chunk
    document_id: str
    source: str
    title: str
    heading: str
    score: float


class ToolApprovalRequested(_Event, tag="tool.approval_requested"):
    """The call waits for a person: `POST /api/v1/runs/{run_id}/approvals`."""

    id: str
    name: str
    arguments: str


class ToolApproved(_Event, tag="tool.approval"):
    """A person's answer, as the run takes it up (a denial is the call's result)."""

    id: str
    approved: bool
    reason: str


class RunWaiting(_Event, tag="run.waiting"):
    """The run pauses, in no process, until its calls are answered: the stream ends here."""

    run_id: str
    tool_call_ids: list[str]
    expires_at: Timestamp


class RunResumed(_Event, tag="run.resumed"):
    """The run goes on: approved, or taken over after the process running it stopped."""

    run_id: str
    step: int


class StepFinished(_Event, tag="step.finished"):
    step: int
    finish_reason: str


class UsageReport(_Event, tag="usage"):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class RunFinished(_Event, tag="run.finished"):
    """The success terminator: a stream without it did not succeed."""

    run_id: str
    status: str
    finish_reason: str
    steps: int


class ErrorEvent(_Event, tag="error"):
    message: str
    code: str | None = None


AgentEvent = (
    RunStarted
    | StepStarted
    | TextDelta
    | ToolCalled
    | ToolApprovalRequested
    | ToolApproved
    | ToolResult
    | SourceCited
    | StepFinished
    | UsageReport
    | RunFinished
    | RunWaiting
    | RunResumed
    | ErrorEvent
)


# --- runs and sessions ---


class Session(Struct, kw_only=True):
    id: str
    agent: str
    title: str
    created_at: Timestamp
    updated_at: Timestamp


class Run(Struct, kw_only=True):
    id: str
    session_id: str
    agent: str
    # "running" | "waiting" | "completed" | "failed" | "cancelled" | "interrupted"
    status: str
    background: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    error: str | None = None
    created_at: Timestamp
    finished_at: Timestamp | None = None
    approvals: list[PendingApproval] = []  # what a waiting run waits on


class SessionDetail(Session, kw_only=True):
    messages: list[Message]
    runs: list[Run]


class SessionList(Struct, kw_only=True):
    data: list[Session]
    object: Literal["list"] = "list"


class AgentInfo(Struct, kw_only=True):
    name: str
    model: str
    tools: list[str]
    knowledge: list[str] = []


class AgentList(Struct, kw_only=True):
    data: list[AgentInfo]
    object: Literal["list"] = "list"


class RunAccepted(Struct, kw_only=True):
    """The answer to a background run's start."""

    run_id: str
    session_id: str
    status: str = "running"


class RunCancelled(Struct, kw_only=True):
    run_id: str
    cancelled: bool


class Deleted(Struct, kw_only=True):
    id: str
    deleted: bool = True
