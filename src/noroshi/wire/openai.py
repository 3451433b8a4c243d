"""OpenAI chat completion wire types: what clients send and what the gateway answers.

Requests are validated strictly where a mistake would otherwise surface as an upstream error
(roles, message shapes, tool definitions); open-ended fields are kept as raw JSON values.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from noroshi.wire.conversation import Usage as Tokens

__all__ = [
    "AssistantMessage",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatRequest",
    "Choice",
    "ChoiceMessage",
    "ChunkChoice",
    "Delta",
    "DeltaToolCall",
    "DeltaToolCallFunction",
    "Embedding",
    "EmbeddingList",
    "EmbeddingRequest",
    "EmbeddingUsage",
    "Message",
    "Model",
    "ModelList",
    "Tool",
    "ToolCall",
    "ToolCallFunction",
    "Usage",
    "chat_request_decoder",
    "frame_chunk",
]


class TextPart(Struct, tag_field="type", tag="text"):
    text: str


class ImageURL(Struct):
    url: str
    detail: str | None = None


class ImagePart(Struct, tag_field="type", tag="image_url"):
    image_url: ImageURL


class AudioPart(Struct, tag_field="type", tag="input_audio"):
    input_audio: dict[str, Any]


class FilePart(Struct, tag_field="type", tag="file"):
    file: dict[str, Any]


class RefusalPart(Struct, tag_field="type", tag="refusal"):
    refusal: str


UserPart = TextPart | ImagePart | AudioPart | FilePart
Content = str | list[TextPart]


class ToolCallFunction(Struct):
    name: str
    arguments: str


class ToolCall(Struct, tag_field="type", tag="function"):
    id: str
    function: ToolCallFunction


class SystemMessage(Struct, tag_field="role", tag="system", omit_defaults=True):
    content: Content
    name: str | None = None


class DeveloperMessage(Struct, tag_field="role", tag="developer", omit_defaults=True):
    content: Content
    name: str | None = None


class UserMessage(Struct, tag_field="role", tag="user", omit_defaults=True):
    content: str | list[UserPart]
    name: str | None = None


class AssistantMessage(Struct, tag_field="role", tag="assistant", omit_defaults=True):
    content: str | list[TextPart | RefusalPart] | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None
    refusal: str | None = None
    # thinking, as LiteLLM carries it: the text, and the blocks with their signatures
    reasoning_content: str | None = None
    thinking_blocks: list[dict[str, Any]] | None = None


class ToolMessage(Struct, tag_field="role", tag="tool", omit_defaults=True):
    content: Content
    tool_call_id: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


class FunctionDef(Struct, omit_defaults=True):
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.\-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Struct, tag_field="type", tag="function"):
    function: FunctionDef


class StreamOptions(Struct, omit_defaults=True):
    include_usage: bool = False


class ChatRequest(Struct, omit_defaults=True):
    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stop: str | list[str] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    seed: int | None = None
    user: str | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    metadata: dict[str, str] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    thinking: dict[str, Any] | None = None  # Anthropic's, as LiteLLM takes it

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def chat_request_decoder() -> msgspec.json.Decoder[ChatRequest]:
    return msgspec.json.Decoder(ChatRequest)


# --- answers -------------------------------------------------------------------------------


class PromptTokensDetails(Struct, omit_defaults=True):
    cached_tokens: int | None = None
    cache_creation_tokens: int | None = None  # as LiteLLM reports Anthropic's cache writes


class CompletionTokensDetails(Struct, omit_defaults=True):
    reasoning_tokens: int | None = None


class Usage(Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None

    @classmethod
    def of(cls, usage: Tokens) -> Usage:
        """The gateway's usage in OpenAI's fields; the kinds go in the details."""
        prompt = completion = None
        if usage.cache_read_tokens or usage.cache_write_tokens:
            prompt = PromptTokensDetails(usage.cache_read_tokens, usage.cache_write_tokens or None)
        if usage.reasoning_tokens:
            completion = CompletionTokensDetails(usage.reasoning_tokens)
        return cls(
            usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, prompt, completion
        )

    def tokens(self) -> Tokens:
        """OpenAI's usage as the gateway's, by kind."""
        p, c = self.prompt_tokens_details, self.completion_tokens_details
        return Tokens(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cache_read_tokens=(p.cached_tokens or 0) if p else 0,
            cache_write_tokens=(p.cache_creation_tokens or 0) if p else 0,
            reasoning_tokens=(c.reasoning_tokens or 0) if c else 0,
        )


class ChoiceMessage(Struct):
    content: str | None
    role: str = "assistant"
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None


class Choice(Struct):
    index: int
    message: ChoiceMessage
    finish_reason: str | None
    logprobs: Any = None


class ChatCompletion(Struct):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    object: str = "chat.completion"

    @property
    def text(self) -> str:
        """The first choice's text."""
        return (self.choices[0].message.content or "") if self.choices else ""


class DeltaToolCallFunction(Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(Struct, omit_defaults=True):
    index: int
    id: str | None = None
    type: str | None = None
    function: DeltaToolCallFunction | None = None


class Delta(Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None
    reasoning_content: str | None = None
    thinking_blocks: list[dict[str, Any]] | None = None


class ChunkChoice(Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletionChunk(Struct):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    object: str = "chat.completion.chunk"

    @property
    def text(self) -> str:
        """The text this chunk adds to the first choice."""
        return (self.choices[0].delta.content or "") if self.choices else ""


_encode = msgspec.json.encode
MAX_DIMENSIONS = 16_384  # past any embedding model's; bounds the answer a request can ask for


def frame_chunk(chunk: ChatCompletionChunk) -> bytes:
    """One chunk as an SSE event, the framing every provider's stream yields."""
    return b"data: " + _encode(chunk) + b"\n\n"


class EmbeddingRequest(Struct, omit_defaults=True):
    model: Annotated[str, Meta(min_length=1)]
    input: str | Annotated[list[str], Meta(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1, le=MAX_DIMENSIONS)] | None = None
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


class Embedding(Struct, kw_only=True):
    index: int
    embedding: list[float] | str  # a base64 string when `encoding_format` is "base64"
    object: Literal["embedding"] = "embedding"


class EmbeddingUsage(Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Struct, kw_only=True):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: Literal["list"] = "list"


class Model(Struct, kw_only=True):
    id: str
    created: int
    owned_by: str = "noroshi"
    object: Literal["model"] = "model"


class ModelList(Struct, kw_only=True):
    data: list[Model]
    object: Literal["list"] = "list"
