"""The public HTTP API as one table: each endpoint's method, path, who may call it, and the
types of its body, query, answer and stream events.

The server routes and decodes by this table, `/openapi.json` is generated from it, and the
client sends and decodes by it; a change to a type here changes all three.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from noroshi.wire import admin, agent, simple, times
from noroshi.wire import anthropic as am
from noroshi.wire import knowledge as kb
from noroshi.wire import openai as oa
from noroshi.wire import responses as rs
from noroshi.wire.ai_sdk import UIChunk
from noroshi.wire.service import Health

__all__ = ["ENDPOINTS", "Access", "Endpoint"]

# public: anyone; key: any valid key; model: a key, and the request is metered; admin: master key
Access = Literal["public", "key", "model", "admin"]


class Endpoint:
    """One operation. `answer` is the JSON body of a success (status `status`); `events` is the
    type of each SSE event's data when it streams (a tuple: one per format it can send);
    `query` a Struct of query parameters, decoded from their text; `headers` request headers
    it reads; `media` the answer's content type when it is not JSON; `error` the type of its
    error body, when it is not OpenAI's envelope."""

    __slots__ = (
        "_decoder",
        "access",
        "answer",
        "body",
        "error",
        "events",
        "headers",
        "media",
        "method",
        "name",
        "path",
        "query",
        "status",
        "summary",
        "tag",
    )

    def __init__(
        self,
        method: str,
        path: str,
        name: str,
        summary: str,
        *,
        tag: str,
        access: Access,
        body: Any = None,
        answer: Any = None,
        events: Any = None,
        query: Any = None,
        headers: tuple[str, ...] = (),
        status: int = 200,
        media: str = "application/json",
        error: Any = None,
    ) -> None:
        self.method = method
        self.path = path
        self.name = name
        self.summary = summary
        self.tag = tag
        self.access: Access = access
        self.body = body
        self.answer = answer
        self.events = events
        self.query = query
        self.headers = headers
        self.status = status
        self.media = media
        self.error = error
        self._decoder: msgspec.json.Decoder[Any] | None = None

    @property
    def decoder(self) -> msgspec.json.Decoder[Any]:
        """The body's decoder, made once."""
        if self._decoder is None:
            self._decoder = times.decoder(self.body)
        return self._decoder

    def __repr__(self) -> str:
        return f"<Endpoint {self.method} {self.path}>"


def _e(method: str, path: str, name: str, summary: str, **kw: Any) -> Endpoint:
    return Endpoint(method, path, name, summary, **kw)


# The table of routes, one entry in a few lines each: the formatter's one argument a line
# would triple it.
# fmt: off
# OpenAI-compatible
CHAT_COMPLETIONS = _e(
    "POST", "/v1/chat/completions", "createChatCompletion",
    "A chat completion; with `stream: true`, chunk events ending with `data: [DONE]`.",
    tag="openai", access="model", body=oa.ChatRequest, answer=oa.ChatCompletion,
    events=oa.ChatCompletionChunk,
)
EMBEDDINGS = _e(
    "POST", "/v1/embeddings", "createEmbeddings", "Embeddings of one text or a list.",
    tag="openai", access="model", body=oa.EmbeddingRequest, answer=oa.EmbeddingList,
)
MODELS = _e(
    "GET", "/v1/models", "listModels", "The models this key may use.",
    tag="openai", access="key", answer=oa.ModelList,
)
MODEL = _e(
    "GET", "/v1/models/{model}", "getModel", "One model.",
    tag="openai", access="key", answer=oa.Model,
)

# Anthropic Messages
MESSAGES = _e(
    "POST", "/v1/messages", "createMessage",
    "Anthropic's Messages API, in front of every provider; with `stream: true`, its events "
    "ending with `message_stop`. Errors in Anthropic's envelope; the key as `x-api-key`.",
    tag="anthropic", access="model", body=am.MessagesRequest, answer=dict[str, Any],
    events=dict[str, Any], error=am.ErrorEnvelope,
)
MESSAGES_COUNT_TOKENS = _e(
    "POST", "/v1/messages/count_tokens", "countMessageTokens",
    "The input tokens a Messages request would use (the upstream's count, or an estimate).",
    tag="anthropic", access="key", body=am.CountTokensRequest, answer=am.CountTokensAnswer,
    error=am.ErrorEnvelope,
)

# OpenAI Responses / Open Responses
RESPONSES = _e(
    "POST", "/v1/responses", "createResponse",
    "A response (OpenAI's Responses API, Open Responses), in front of every provider; with "
    "`stream: true`, its events, each with a `sequence_number`.",
    tag="responses", access="model", body=rs.ResponsesRequest, answer=dict[str, Any],
    events=dict[str, Any],
)
RESPONSES_COMPACT = _e(
    "POST", "/v1/responses/compact", "compactResponse",
    "Fold a conversation into one compaction item, a summary the model wrote, to continue "
    "from with less context.",
    tag="responses", access="model", body=rs.CompactRequest, answer=dict[str, Any],
)
RESPONSE = _e(
    "GET", "/v1/responses/{id}", "getResponse", "A stored response of this key.",
    tag="responses", access="key", answer=dict[str, Any],
)
RESPONSE_INPUT_ITEMS = _e(
    "GET", "/v1/responses/{id}/input_items", "listResponseInputItems",
    "The input items of a stored response.",
    tag="responses", access="key", query=rs.InputItemsQuery, answer=dict[str, Any],
)
RESPONSE_DELETE = _e(
    "DELETE", "/v1/responses/{id}", "deleteResponse", "Delete a stored response.",
    tag="responses", access="key", answer=dict[str, Any],
)
RESPONSE_CANCEL = _e(
    "POST", "/v1/responses/{id}/cancel", "cancelResponse",
    "Cancel a background response, on whichever replica runs it.",
    tag="responses", access="key", answer=dict[str, Any],
)

# simple
API_CHAT = _e(
    "POST", "/api/chat", "chatText", "Chat; the answer streams as `{text}` events.",
    tag="simple", access="model", body=simple.ChatBody, events=simple.TextEvent,
)
API_GENERATE = _e(
    "POST", "/api/generate", "generate", "Complete a prompt; streams `{text}` events.",
    tag="simple", access="model", body=simple.GenerateBody, events=simple.TextEvent,
)
API_EMBED = _e(
    "POST", "/api/embed", "embed", "The embedding of one text.",
    tag="simple", access="model", body=simple.EmbedBody, answer=simple.EmbedAnswer,
)
CHAT = _e(
    "POST", "/chat", "chat", "Answer a prompt in one JSON body.",
    tag="simple", access="model", body=simple.PromptBody, answer=simple.SimpleAnswer,
)
CHAT_STREAM = _e(
    "POST", "/chat/stream", "chatStream",
    "Answer a prompt or messages as OpenAI chunk events, ending with `data: [DONE]`.",
    tag="simple", access="model", body=simple.StreamBody, events=oa.ChatCompletionChunk,
)

# agents: native events, or the AI SDK's UI message chunks (`format: "ai-sdk"`, or useChat)
_AGENT_STREAMS = (agent.AgentEvent, UIChunk)
AGENT_CHAT = _e(
    "POST", "/api/v1/agent/chat", "agentChat",
    "Run an agent turn and stream its events; leaving the stream cancels the run.",
    tag="agents", access="model", body=agent.AgentChatBody, events=_AGENT_STREAMS,
)
AGENTS = _e(
    "GET", "/api/v1/agents", "listAgents", "The agents this server runs, with their tools.",
    tag="agents", access="key", answer=agent.AgentList,
)
RUN_START = _e(
    "POST", "/api/v1/runs", "startRun",
    "Start a run: with `background: true` answers 202 and runs on without a client.",
    tag="agents", access="model", body=agent.AgentChatBody, answer=agent.RunAccepted,
    events=_AGENT_STREAMS, status=202,
)
RUN = _e(
    "GET", "/api/v1/runs/{id}", "getRun", "A run's state.",
    tag="agents", access="key", answer=agent.Run,
)
RUN_STREAM = _e(
    "GET", "/api/v1/runs/{id}/stream", "joinRun",
    "Replay and follow a run's events, after `Last-Event-ID` when sent.",
    tag="agents", access="key", query=agent.JoinQuery, events=_AGENT_STREAMS,
    headers=("last-event-id",),
)
RUN_CANCEL = _e(
    "POST", "/api/v1/runs/{id}/cancel", "cancelRun", "Cancel a run, on whichever replica.",
    tag="agents", access="key", answer=agent.RunCancelled,
)
RUN_APPROVE = _e(
    "POST", "/api/v1/runs/{id}/approvals", "approveToolCall",
    "Approve or deny a tool call the run waits on; once all are answered, the run goes on.",
    tag="agents", access="key", body=agent.ApprovalBody, answer=agent.ApprovalAnswer,
)
HOOK = _e(
    "POST", "/api/v1/hooks/{name}", "deliverHook",
    "A signed webhook (`X-Noroshi-Timestamp`, `X-Noroshi-Signature`) starts a background run.",
    tag="agents", access="public", answer=agent.RunAccepted, status=202,
    headers=("x-noroshi-timestamp", "x-noroshi-signature"),
)
SESSIONS = _e(
    "GET", "/api/v1/sessions", "listSessions", "This key's sessions, newest first.",
    tag="agents", access="key", answer=agent.SessionList,
)
SESSION = _e(
    "GET", "/api/v1/sessions/{id}", "getSession", "A session with its messages and runs.",
    tag="agents", access="key", answer=agent.SessionDetail,
)
SESSION_DELETE = _e(
    "DELETE", "/api/v1/sessions/{id}", "deleteSession", "Delete a session that is not running.",
    tag="agents", access="key", answer=agent.Deleted,
)

# knowledge bases: the master key writes, any key reads and searches
KB_CREATE = _e(
    "POST", "/api/v1/kb", "createKnowledgeBase", "Create a knowledge base.",
    tag="knowledge", access="admin", body=kb.KnowledgeBaseCreate, answer=kb.KnowledgeBase,
    status=201,
)
KBS = _e(
    "GET", "/api/v1/kb", "listKnowledgeBases", "The knowledge bases, with their counts.",
    tag="knowledge", access="key", answer=kb.KnowledgeBaseList,
)
KB = _e(
    "GET", "/api/v1/kb/{name}", "getKnowledgeBase", "One knowledge base.",
    tag="knowledge", access="key", answer=kb.KnowledgeBase,
)
KB_DELETE = _e(
    "DELETE", "/api/v1/kb/{name}", "deleteKnowledgeBase", "Delete a base and all it holds.",
    tag="knowledge", access="admin", answer=agent.Deleted,
)
KB_ADD = _e(
    "POST", "/api/v1/kb/{name}/documents", "addDocument",
    "Add or replace a document (by source): text, Markdown, HTML or PDF. Unchanged bytes "
    "are skipped.",
    tag="knowledge", access="admin", body=kb.DocumentUpload, answer=kb.DocumentAdded,
)
KB_DOCUMENTS = _e(
    "GET", "/api/v1/kb/{name}/documents", "listDocuments", "A base's documents, newest first.",
    tag="knowledge", access="key", query=kb.DocumentQuery, answer=kb.DocumentList,
)
KB_DOCUMENT = _e(
    "GET", "/api/v1/kb/{name}/documents/{id}", "getDocument", "One document.",
    tag="knowledge", access="key", answer=kb.StoredDocument,
)
KB_DOCUMENT_DELETE = _e(
    "DELETE", "/api/v1/kb/{name}/documents/{id}", "deleteDocument", "Delete a document.",
    tag="knowledge", access="admin", answer=agent.Deleted,
)
KB_SEARCH = _e(
    "POST", "/api/v1/kb/{name}/search", "searchKnowledgeBase",
    "The best chunks for a query, best first: vector and full-text rankings fused by rank.",
    tag="knowledge", access="model", body=kb.SearchBody, answer=kb.SearchAnswer,
)

# admin (master key)
KEY_CREATE = _e(
    "POST", "/admin/keys", "createKey", "A new virtual key; its secret is shown this once.",
    tag="admin", access="admin", body=admin.KeyCreate, answer=admin.CreatedKey, status=201,
)
KEYS = _e(
    "GET", "/admin/keys", "listKeys", "Virtual keys, newest first.",
    tag="admin", access="admin", query=admin.KeyListQuery, answer=admin.KeyList,
)
KEY = _e(
    "GET", "/admin/keys/{id}", "getKey", "One virtual key.",
    tag="admin", access="admin", answer=admin.ApiKey,
)
KEY_UPDATE = _e(
    "PATCH", "/admin/keys/{id}", "updateKey",
    "Change a key: fields left out stay, `null` clears; every replica sees it within a second.",
    tag="admin", access="admin", body=admin.KeyUpdate, answer=admin.ApiKey,
)
KEY_REVOKE = _e(
    "DELETE", "/admin/keys/{id}", "revokeKey", "Revoke a key, on every replica.",
    tag="admin", access="admin", answer=admin.ApiKey,
)
USAGE = _e(
    "GET", "/admin/usage", "queryUsage", "Usage records, or their totals by key, model or day.",
    tag="admin", access="admin", query=admin.UsageQuery, answer=admin.UsageList,
)

# service
HEALTH = _e(
    "GET", "/health", "health", "Liveness and what is running.",
    tag="service", access="public", answer=Health,
)
METRICS = _e(
    "GET", "/metrics", "metrics", "Prometheus metrics.",
    tag="service", access="public", media="text/plain",
)
OPENAPI = _e(
    "GET", "/openapi.json", "openapi", "This API's OpenAPI 3.1 description.",
    tag="service", access="public", answer=dict[str, Any],
)
DOCS = _e(
    "GET", "/docs", "docs", "This API's reference, as a web page.",
    tag="service", access="public", media="text/html",
)

ENDPOINTS: tuple[Endpoint, ...] = (
    CHAT_COMPLETIONS, EMBEDDINGS, MODELS, MODEL, MESSAGES, MESSAGES_COUNT_TOKENS,
    RESPONSES, RESPONSES_COMPACT, RESPONSE, RESPONSE_INPUT_ITEMS, RESPONSE_DELETE, RESPONSE_CANCEL,
    API_CHAT, API_GENERATE, API_EMBED, CHAT, CHAT_STREAM,
    AGENT_CHAT, AGENTS, RUN_START, RUN, RUN_STREAM, RUN_CANCEL, RUN_APPROVE, HOOK, SESSIONS,
    SESSION, SESSION_DELETE,
    KB_CREATE, KBS, KB, KB_DELETE, KB_ADD, KB_DOCUMENTS, KB_DOCUMENT, KB_DOCUMENT_DELETE,
    KB_SEARCH,
    KEY_CREATE, KEYS, KEY, KEY_UPDATE, KEY_REVOKE, USAGE,
    HEALTH, METRICS, OPENAPI, DOCS,
)
# fmt: on
