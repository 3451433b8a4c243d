"""The asyncio client: the blocking client's methods, awaited."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Any, Generic, TypeVar

import httpx2

from noroshi.client._base import (
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT,
    RETRY_STATUSES,
    APIConnectionError,
    APIError,
    Call,
    EventReader,
    ResumePolicy,
    RetryPolicy,
    auth_headers,
    decode_answer,
    make_call,
    status_error,
)
from noroshi.wire import admin as adm
from noroshi.wire import agent as ag
from noroshi.wire import endpoints as api
from noroshi.wire import knowledge as kn
from noroshi.wire import openai as oa
from noroshi.wire import simple as sp
from noroshi.wire.service import Health

__all__ = ["AsyncClient", "AsyncStream"]

T = TypeVar("T")


class AsyncStream(Generic[T]):
    """Events as they come. The connection closes when the stream ends, when `aclose()` is
    awaited, when an `async with` block is left, or when a loop that stopped early drops it."""

    def __init__(self, events: AsyncGenerator[T, None]) -> None:
        self._events = events

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        return await anext(self._events)

    async def aclose(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncClient:
    """`AsyncClient("http://127.0.0.1:8080", api_key="nrs-...")`: every public endpoint, typed by
    the server's own types."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        timeout: float | httpx2.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        headers: dict[str, str] | None = None,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        self._http = http_client or httpx2.AsyncClient(base_url=base_url, timeout=timeout)
        self._headers = {**auth_headers(api_key), **(headers or {})}
        self.retry = RetryPolicy(max_retries)
        self.resume = ResumePolicy()
        self.chat = Chat(self)
        self.simple = Simple(self)
        self.embeddings = Embeddings(self)
        self.models = Models(self)
        self.agent = Agent(self)
        self.agents = Agents(self)
        self.runs = Runs(self)
        self.sessions = Sessions(self)
        self.kb = KnowledgeBases(self)
        self.admin = Admin(self)

    def generate(self, **body: Any) -> AsyncStream[sp.TextEvent]:
        """`POST /api/generate` (`GenerateBody`): the completion as `{text}` events."""
        return self._stream(sp.TextEvent, make_call(api.API_GENERATE, body=body))

    async def embed(self, **body: Any) -> sp.EmbedAnswer:
        """`POST /api/embed` (`EmbedBody`)."""
        return await self._json(sp.EmbedAnswer, make_call(api.API_EMBED, body=body))

    async def health(self) -> Health:
        return await self._json(Health, make_call(api.HEALTH))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- sending ---

    async def _json(self, kind: type[T], call: Call) -> T:
        response = await self._send(call, stream=False)
        return decode_answer(kind, response)

    async def _send(self, call: Call, stream: bool) -> httpx2.Response:
        """The response to `call`, retried by the retry policy; an error status raises."""
        call.headers = {**self._headers, **call.headers}
        attempt = 0
        while True:
            wait = None
            try:
                response = await self._http.send(call.build(self._http), stream=stream)
            except httpx2.ConnectError as exc:
                wait = self.retry.wait(attempt)
                if wait is None:
                    raise APIConnectionError(f"Could not connect: {exc}") from exc
            except httpx2.TransportError as exc:
                raise APIConnectionError(f"The connection failed: {exc}") from exc
            else:
                if response.is_success:
                    return response
                await response.aread()
                await response.aclose()
                if response.status_code in RETRY_STATUSES:
                    wait = self.retry.wait(attempt, response.headers)
                if wait is None:
                    raise status_error(response.status_code, response.content, response.headers)
            await asyncio.sleep(wait)
            attempt += 1

    def _stream(self, kind: Any, call: Call) -> AsyncStream[Any]:
        return AsyncStream(self._events(EventReader(kind), call, complete=True))

    async def _events(
        self, reader: EventReader[Any], call: Call, complete: bool
    ) -> AsyncGenerator[Any, None]:
        """The events of one connection; `complete`: a stream that ends without its
        terminator is an error (otherwise the caller resumes it)."""
        response = await self._send(call, stream=True)
        try:
            async for blob in response.aiter_bytes():
                for event in reader.feed(blob):
                    yield event
            for event in reader.flush():
                yield event
        except httpx2.TransportError as exc:
            raise APIConnectionError(f"The stream broke: {exc}") from exc
        finally:
            await response.aclose()
        if complete and not reader.done:
            raise APIConnectionError("The stream ended before it was complete.")

    async def _follow(
        self, run_id: str, after: int, cancel_on_leave: bool
    ) -> AsyncGenerator[ag.AgentEvent, None]:
        """A run's events after `after`, joining again from the last event seen when the
        connection drops."""
        failures, done = 0, False
        try:
            while True:
                reader: EventReader[ag.AgentEvent] = EventReader(ag.AgentEvent)
                reader.last_id = after
                headers = {"last-event-id": str(after)} if after else None
                call = make_call(api.RUN_STREAM, {"id": run_id}, headers=headers)
                # closed here, not when collected: a cancel on leaving must run before the
                # caller can close the client
                try:
                    async with contextlib.aclosing(self._events(reader, call, False)) as events:
                        async for event in events:
                            after, failures = reader.last_id, 0
                            yield event
                except APIConnectionError:
                    pass
                if reader.done:
                    done = True
                    return
                failures += 1
                wait = self.resume.wait(failures)
                if wait is None:
                    raise APIConnectionError(f"Lost the stream of run {run_id}; joining failed.")
                await asyncio.sleep(wait)
        finally:
            if cancel_on_leave and not done:
                with contextlib.suppress(APIError):
                    await self.runs.cancel(run_id)


class _Part:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client


class Chat(_Part):
    """`POST /v1/chat/completions` with `ChatRequest` fields."""

    async def create(self, **body: Any) -> oa.ChatCompletion:
        call = make_call(api.CHAT_COMPLETIONS, body={**body, "stream": False})
        return await self._c._json(oa.ChatCompletion, call)

    def stream(self, **body: Any) -> AsyncStream[oa.ChatCompletionChunk]:
        call = make_call(api.CHAT_COMPLETIONS, body={**body, "stream": True})
        return self._c._stream(oa.ChatCompletionChunk, call)


class Simple(_Part):
    """The simple endpoints: `/chat`, `/chat/stream` and `/api/chat`."""

    async def chat(self, **body: Any) -> sp.SimpleAnswer:
        """`POST /chat` (`PromptBody`)."""
        return await self._c._json(sp.SimpleAnswer, make_call(api.CHAT, body=body))

    def chat_stream(self, **body: Any) -> AsyncStream[oa.ChatCompletionChunk]:
        """`POST /chat/stream` (`StreamBody`)."""
        return self._c._stream(oa.ChatCompletionChunk, make_call(api.CHAT_STREAM, body=body))

    def api_chat(self, **body: Any) -> AsyncStream[sp.TextEvent]:
        """`POST /api/chat` (`ChatBody`)."""
        return self._c._stream(sp.TextEvent, make_call(api.API_CHAT, body=body))


class Embeddings(_Part):
    async def create(self, **body: Any) -> oa.EmbeddingList:
        """`POST /v1/embeddings` (`EmbeddingRequest`)."""
        return await self._c._json(oa.EmbeddingList, make_call(api.EMBEDDINGS, body=body))


class Models(_Part):
    async def list(self) -> oa.ModelList:
        return await self._c._json(oa.ModelList, make_call(api.MODELS))

    async def get(self, model: str) -> oa.Model:
        return await self._c._json(oa.Model, make_call(api.MODEL, {"model": model}))


class Agent(_Part):
    def stream(self, **body: Any) -> AsyncStream[ag.AgentEvent]:
        """Run an agent turn (`AgentChatBody`) and stream its events. The run goes on at the
        server if the connection drops, and the stream joins it again by itself; closing the
        stream before its end cancels the run."""
        return AsyncStream(self._run(body))

    async def _run(self, body: dict[str, Any]) -> AsyncGenerator[ag.AgentEvent, None]:
        accepted = await self._c.runs.start(**body)
        follow = self._c._follow(accepted.run_id, 0, cancel_on_leave=True)
        async with contextlib.aclosing(follow) as events:  # leaving cancels the run, now
            async for event in events:
                yield event


class Agents(_Part):
    async def list(self) -> ag.AgentList:
        return await self._c._json(ag.AgentList, make_call(api.AGENTS))


class Runs(_Part):
    async def start(self, **body: Any) -> ag.RunAccepted:
        """Start a background run (`AgentChatBody`); it runs on without a client."""
        call = make_call(api.RUN_START, body={**body, "background": True})
        return await self._c._json(ag.RunAccepted, call)

    async def get(self, run_id: str) -> ag.Run:
        return await self._c._json(ag.Run, make_call(api.RUN, {"id": run_id}))

    def join(self, run_id: str, after: int = 0) -> AsyncStream[ag.AgentEvent]:
        """The run's events after event `after` (its `seq`), resuming by itself."""
        return AsyncStream(self._c._follow(run_id, after, cancel_on_leave=False))

    async def cancel(self, run_id: str) -> ag.RunCancelled:
        return await self._c._json(ag.RunCancelled, make_call(api.RUN_CANCEL, {"id": run_id}))

    async def approve(
        self, run_id: str, tool_call_id: str, approved: bool = True, reason: str = ""
    ) -> ag.ApprovalAnswer:
        """Answer a tool call the run waits on (deny with `approved=False`); join the run
        again to follow the rest."""
        body = {"tool_call_id": tool_call_id, "approved": approved, "reason": reason}
        call = make_call(api.RUN_APPROVE, {"id": run_id}, body=body)
        return await self._c._json(ag.ApprovalAnswer, call)


class Sessions(_Part):
    async def list(self) -> ag.SessionList:
        return await self._c._json(ag.SessionList, make_call(api.SESSIONS))

    async def get(self, session_id: str) -> ag.SessionDetail:
        return await self._c._json(ag.SessionDetail, make_call(api.SESSION, {"id": session_id}))

    async def delete(self, session_id: str) -> ag.Deleted:
        return await self._c._json(ag.Deleted, make_call(api.SESSION_DELETE, {"id": session_id}))


class KnowledgeBases(_Part):
    """Knowledge bases: the master key writes, any key reads and searches."""

    async def create(self, **body: Any) -> kn.KnowledgeBase:
        """`KnowledgeBaseCreate` fields."""
        return await self._c._json(kn.KnowledgeBase, make_call(api.KB_CREATE, body=body))

    async def list(self) -> kn.KnowledgeBaseList:
        return await self._c._json(kn.KnowledgeBaseList, make_call(api.KBS))

    async def get(self, name: str) -> kn.KnowledgeBase:
        return await self._c._json(kn.KnowledgeBase, make_call(api.KB, {"name": name}))

    async def delete(self, name: str) -> ag.Deleted:
        return await self._c._json(ag.Deleted, make_call(api.KB_DELETE, {"name": name}))

    async def add(self, name: str, **body: Any) -> kn.DocumentAdded:
        """`DocumentUpload` fields: `source` and `text`, or a file's bytes as `data`."""
        call = make_call(api.KB_ADD, {"name": name}, body=body)
        return await self._c._json(kn.DocumentAdded, call)

    async def documents(self, name: str, **query: Any) -> kn.DocumentList:
        """`DocumentQuery` fields: limit, offset."""
        call = make_call(api.KB_DOCUMENTS, {"name": name}, query=query)
        return await self._c._json(kn.DocumentList, call)

    async def document(self, name: str, document_id: str) -> kn.StoredDocument:
        call = make_call(api.KB_DOCUMENT, {"name": name, "id": document_id})
        return await self._c._json(kn.StoredDocument, call)

    async def delete_document(self, name: str, document_id: str) -> ag.Deleted:
        call = make_call(api.KB_DOCUMENT_DELETE, {"name": name, "id": document_id})
        return await self._c._json(ag.Deleted, call)

    async def search(self, name: str, **body: Any) -> kn.SearchAnswer:
        """`SearchBody` fields: query, k, mode, filter."""
        call = make_call(api.KB_SEARCH, {"name": name}, body=body)
        return await self._c._json(kn.SearchAnswer, call)


class Keys(_Part):
    """Virtual keys (master key only)."""

    async def create(self, **body: Any) -> adm.CreatedKey:
        """`KeyCreate` fields; the answer holds the secret, shown this once."""
        return await self._c._json(adm.CreatedKey, make_call(api.KEY_CREATE, body=body))

    async def list(self, **query: Any) -> adm.KeyList:
        """`KeyListQuery` fields."""
        return await self._c._json(adm.KeyList, make_call(api.KEYS, query=query))

    async def get(self, key_id: str) -> adm.ApiKey:
        return await self._c._json(adm.ApiKey, make_call(api.KEY, {"id": key_id}))

    async def update(self, key_id: str, **body: Any) -> adm.ApiKey:
        """`KeyUpdate` fields: those left out stay, None clears."""
        call = make_call(api.KEY_UPDATE, {"id": key_id}, body=body)
        return await self._c._json(adm.ApiKey, call)

    async def revoke(self, key_id: str) -> adm.ApiKey:
        return await self._c._json(adm.ApiKey, make_call(api.KEY_REVOKE, {"id": key_id}))


class Admin(_Part):
    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)
        self.keys = Keys(client)

    async def usage(self, **query: Any) -> adm.UsageList:
        """`UsageQuery` fields: key, model, since, until, group_by, limit."""
        return await self._c._json(adm.UsageList, make_call(api.USAGE, query=query))
