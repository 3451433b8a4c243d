"""The gateway's own model of a conversation, between the wire formats it speaks.

Every format (OpenAI chat completions, Anthropic Messages, OpenAI Responses) has one decoder
into these types and one encoder out of them, so a request in any format reaches a provider of
any format, and its answer goes back, through exactly two translations. Nothing here knows a
wire format: the types say what a conversation holds, not how any API spells it.

A request is a `Conversation`: a system text, then turns of typed parts. An answer streams as
`Event`s: `Start`, then blocks (`BlockStart`, `Delta`s, `BlockStop`), then `Finish` and
`UsageUpdate`; a `Collector` folds them into the `Answer` a non-streaming client gets.
Thinking stays thinking, with its signature, all the way through: it is never text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec
from msgspec import Struct

if TYPE_CHECKING:
    from noroshi.errors import NoroshiError

__all__ = [
    "Answer",
    "BlockStart",
    "BlockStop",
    "Collector",
    "Conversation",
    "Delta",
    "Event",
    "Finish",
    "Image",
    "OutputFormat",
    "Part",
    "RedactedThinking",
    "Start",
    "StopReason",
    "StreamEncoder",
    "Text",
    "Thinking",
    "Tool",
    "ToolCall",
    "ToolChoice",
    "ToolResult",
    "Turn",
    "Usage",
    "UsageUpdate",
    "Wire",
    "answer_events",
    "budget_for",
    "effort_for",
]

# why a model stopped, in Anthropic's words: the richest of the three sets
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal", "pause_turn"]
Effort = Literal["minimal", "low", "medium", "high"]


class Usage(Struct):
    """Tokens by kind, as billed. `prompt_tokens` counts every input token, those read from or
    written to a prompt cache included (OpenAI's meaning); `completion_tokens` every output
    token, reasoning included. The kinds say how many of those are priced differently."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0  # of prompt_tokens: read from the prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to the prompt cache
    reasoning_tokens: int = 0  # of completion_tokens: thinking

    @property
    def uncached_tokens(self) -> int:
        """Input tokens priced as plain input."""
        return max(0, self.prompt_tokens - self.cache_read_tokens - self.cache_write_tokens)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# --- parts ---------------------------------------------------------------------------------


class Text(Struct, tag="text"):
    text: str


class Image(Struct, tag="image"):
    url: str  # https://… or data:<media type>;base64,…


class Thinking(Struct, tag="thinking"):
    """A model's reasoning. `signature` is the provider's proof of it (Anthropic's signature),
    which the same provider needs back, unchanged, in the next turn."""

    text: str
    signature: str = ""


class RedactedThinking(Struct, tag="redacted_thinking"):
    data: str  # encrypted by the provider; passed back as it came


class ToolCall(Struct, tag="tool_call"):
    id: str
    name: str
    arguments: str  # JSON text, as streamed


class ToolResult(Struct, tag="tool_result"):
    id: str  # the call it answers
    content: list[Text | Image]
    is_error: bool = False


Part = Text | Image | Thinking | RedactedThinking | ToolCall | ToolResult


class Turn(Struct):
    role: Literal["user", "assistant"]
    parts: list[Part]


class Tool(Struct, omit_defaults=True):
    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    strict: bool | None = None


class ToolChoice(Struct):
    mode: Literal["auto", "none", "required", "tool"]
    name: str = ""  # with mode "tool"


class OutputFormat(Struct, omit_defaults=True):
    """Structured output: any JSON object, or one that a JSON schema describes."""

    type: Literal["json_object", "json_schema"]
    name: str = "output"
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class Conversation(Struct, kw_only=True):
    """One request to a model, whatever format it came in."""

    model: str
    system: str = ""
    turns: list[Turn]
    tools: list[Tool] = []
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = []
    seed: int | None = None
    effort: Effort | None = None  # OpenAI's reasoning effort
    thinking_budget: int | None = None  # Anthropic's thinking budget, in tokens
    output_format: OutputFormat | None = None
    user: str | None = None
    stream: bool = False
    # what the client sent that this request cannot carry, said once in the log
    dropped: list[str] = []


# effort <-> budget, as LiteLLM maps them, so clients moving over see the same budgets
_BUDGETS: dict[str, int] = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096}


def budget_for(effort: Effort) -> int:
    """The thinking budget (tokens) an OpenAI reasoning effort becomes at Anthropic."""
    return _BUDGETS[effort]


def effort_for(budget: int) -> Effort:
    """The OpenAI reasoning effort closest to an Anthropic thinking budget."""
    if budget < _BUDGETS["medium"]:
        return "low"
    if budget < _BUDGETS["high"]:
        return "medium"
    return "high"


# --- a streamed answer ---------------------------------------------------------------------


class Start(Struct, tag="start"):
    id: str = ""
    model: str = ""


class BlockStart(Struct, tag="block_start"):
    """A content block opens: an empty `Text`, `Thinking` or `ToolCall` (its id and name),
    or a whole `RedactedThinking`."""

    index: int
    part: Text | Thinking | RedactedThinking | ToolCall


class Delta(Struct, tag="delta"):
    index: int
    kind: Literal["text", "thinking", "signature", "arguments"]
    text: str


class BlockStop(Struct, tag="block_stop"):
    index: int


class Finish(Struct, tag="finish"):
    reason: StopReason
    stop_sequence: str | None = None


class UsageUpdate(Struct, tag="usage"):
    usage: Usage


Event = Start | BlockStart | Delta | BlockStop | Finish | UsageUpdate


class Answer(Struct, kw_only=True):
    id: str = ""
    model: str = ""
    parts: list[Text | Thinking | RedactedThinking | ToolCall] = []
    stop: StopReason = "end_turn"
    stop_sequence: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)


class Collector:
    """Folds a stream's events into the whole `Answer`."""

    __slots__ = ("_blocks", "answer")

    def __init__(self) -> None:
        self.answer = Answer()
        self._blocks: dict[int, Text | Thinking | RedactedThinking | ToolCall] = {}

    def feed(self, events: list[Event]) -> None:
        answer = self.answer
        for event in events:
            if isinstance(event, Delta):
                part = self._blocks.get(event.index)
                if (isinstance(part, Text) and event.kind == "text") or (
                    isinstance(part, Thinking) and event.kind == "thinking"
                ):
                    part.text += event.text
                elif isinstance(part, Thinking) and event.kind == "signature":
                    part.signature += event.text
                elif isinstance(part, ToolCall) and event.kind == "arguments":
                    part.arguments += event.text
            elif isinstance(event, BlockStart):
                part = msgspec.structs.replace(event.part)  # a copy: deltas grow it
                self._blocks[event.index] = part
                answer.parts.append(part)
            elif isinstance(event, Start):
                answer.id, answer.model = event.id, event.model
            elif isinstance(event, Finish):
                answer.stop, answer.stop_sequence = event.reason, event.stop_sequence
            elif isinstance(event, UsageUpdate):
                answer.usage = event.usage


def answer_events(answer: Answer) -> list[Event]:
    """A whole answer as the events that would have streamed it."""
    events: list[Event] = [Start(answer.id, answer.model)]
    for i, part in enumerate(answer.parts):
        if isinstance(part, RedactedThinking):
            events += [BlockStart(i, part), BlockStop(i)]
            continue
        if isinstance(part, Text):
            events += [BlockStart(i, Text("")), Delta(i, "text", part.text)]
        elif isinstance(part, Thinking):
            events += [BlockStart(i, Thinking("")), Delta(i, "thinking", part.text)]
            if part.signature:
                events.append(Delta(i, "signature", part.signature))
        else:
            events += [
                BlockStart(i, ToolCall(part.id, part.name, "")),
                Delta(i, "arguments", part.arguments),
            ]
        events.append(BlockStop(i))
    events += [Finish(answer.stop, answer.stop_sequence), UsageUpdate(answer.usage)]
    return events


# --- what each client format implements ----------------------------------------------------


class StreamEncoder(Protocol):
    """Frames one answer's events in a client's format. `end` closes a complete answer (what
    comes before the format's terminator); after a fault it is never called."""

    def feed(self, events: list[Event]) -> bytes: ...

    def end(self) -> bytes: ...


class Wire(Protocol):
    """A client's format, for one request: how its stream is framed and ended, how a whole
    answer and an error mid-stream are written."""

    format: str  # "chat", "messages" or "responses": a provider that speaks it relays as is
    terminator: bytes  # what only a complete stream ends with ("" when `end` says it)

    def encoder(self) -> StreamEncoder: ...

    def answer(self, answer: Answer) -> bytes: ...

    def error(self, exc: NoroshiError) -> bytes: ...
