"""The blocking client."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterator
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

__all__ = ["Client", "Stream"]

T = TypeVar("T")


class Stream(Generic[T]):
    """Events as they come. The connection closes when the stream ends, when `close()` is
    called, when a `with` block is left, or when a loop that stopped early drops it."""

    def __init__(self, events: Generator[T, None, None]) -> None:
        self._events = events

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        return next(self._events)

    def close(self) -> None:
        self._events.close()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """`Client("http://127.0.0.1:8080", api_key="nrs-...")`: every public endpoint, typed by
    the server's own types."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        timeout: float | httpx2.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        headers: dict[str, str] | None = None,
        http_client: httpx2.Client | None = None,
    ) -> None:
        self._http = http_client or httpx2.Client(base_url=base_url, timeout=timeout)
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

    def generate(self, **body: Any) -> Stream[sp.TextEvent]:
        """`POST /api/generate` (`GenerateBody`): the completion as `{text}` events."""
        return self._stream(sp.TextEvent, make_call(api.API_GENERATE, body=body))

    def embed(self, **body: Any) -> sp.EmbedAnswer:
        """`POST /api/embed` (`EmbedBody`)."""
        return self._json(sp.EmbedAnswer, make_call(api.API_EMBED, body=body))

    def health(self) -> Health:
        return self._json(Health, make_call(api.HEALTH))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- sending ---

    def _json(self, kind: type[T], call: Call) -> T:
        response = self._send(call, stream=False)
        return decode_answer(kind, response)

    def _send(self, call: Call, stream: bool) -> httpx2.Response:
        """The response to `call`, retried by the retry policy; an error status raises."""
        call.headers = {**self._headers, **call.headers}
        attempt = 0
        while True:
            wait = None
            try:
                response = self._http.send(call.build(self._http), stream=stream)
            except httpx2.ConnectError as exc:
                wait = self.retry.wait(attempt)
                if wait is None:
                    raise APIConnectionError(f"Could not connect: {exc}") from exc
            except httpx2.TransportError as exc:
                raise APIConnectionError(f"The connection failed: {exc}") from exc
            else:
                if response.is_success:
                    return response
                response.read()
                response.close()
                if response.status_code in RETRY_STATUSES:
                    wait = self.retry.wait(attempt, response.headers)
                if wait is None:
                    raise status_error(response.status_code, response.content, response.headers)
            time.sleep(wait)
            attempt += 1

    def _stream(self, kind: Any, call: Call) -> Stream[Any]:
        return Stream(self._events(EventReader(kind), call, complete=True))

    def _events(
        self, reader: EventReader[Any], call: Call, complete: bool
    ) -> Generator[Any, None, None]:
        """The events of one connection; `complete`: a stream that ends without its
        terminator is an error (otherwise the caller resumes it)."""
        response = self._send(call, stream=True)
        try:
            for blob in response.iter_bytes():
                yield from reader.feed(blob)
            yield from reader.flush()
        except httpx2.TransportError as exc:
            raise APIConnectionError(f"The stream broke: {exc}") from exc
        finally:
            response.close()
        if complete and not reader.done:
            raise APIConnectionError("The stream ended before it was complete.")

    def _follow(
        self, run_id: str, after: int, cancel_on_leave: bool
    ) -> Generator[ag.AgentEvent, None, None]:
        """A run's events after `after`, joining again from the last event seen when the
        connection drops."""
        failures, done = 0, False
        try:
            while True:
                reader: EventReader[ag.AgentEvent] = EventReader(ag.AgentEvent)
                reader.last_id = after
                headers = {"last-event-id": str(after)} if after else None
                call = make_call(api.RUN_STREAM, {"id": run_id}, headers=headers)
                try:
                    for event in self._events(reader, call, complete=False):
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
                time.sleep(wait)
        finally:
            if cancel_on_leave and not done:
                with contextlib.suppress(APIError):
                    self.runs.cancel(run_id)


class _Part:
    def __init__(self, client: Client) -> None:
        self._c = client


class Chat(_Part):
    """`POST /v1/chat/completions` with `ChatRequest` fields."""

    def create(self, **body: Any) -> oa.ChatCompletion:
        call = make_call(api.CHAT_COMPLETIONS, body={**body, "stream": False})
        return self._c._json(oa.ChatCompletion, call)

    def stream(self, **body: Any) -> Stream[oa.ChatCompletionChunk]:
        call = make_call(api.CHAT_COMPLETIONS, body={**body, "stream": True})
        return self._c._stream(oa.ChatCompletionChunk, call)


class Simple(_Part):
    """The simple endpoints: `/chat`, `/chat/stream` and `/api/chat`."""

    def chat(self, **body: Any) -> sp.SimpleAnswer:
        """`POST /chat` (`PromptBody`)."""
        return self._c._json(sp.SimpleAnswer, make_call(api.CHAT, body=body))

    def chat_stream(self, **body: Any) -> Stream[oa.ChatCompletionChunk]:
        """`POST /chat/stream` (`StreamBody`)."""
        return self._c._stream(oa.ChatCompletionChunk, make_call(api.CHAT_STREAM, body=body))

    def api_chat(self, **body: Any) -> Stream[sp.TextEvent]:
        """`POST /api/chat` (`ChatBody`)."""
        return self._c._stream(sp.TextEvent, make_call(api.API_CHAT, body=body))


class Embeddings(_Part):
    def create(self, **body: Any) -> oa.EmbeddingList:
        """`POST /v1/embeddings` (`EmbeddingRequest`)."""
        return self._c._json(oa.EmbeddingList, make_call(api.EMBEDDINGS, body=body))


class Models(_Part):
    def list(self) -> oa.ModelList:
        return self._c._json(oa.ModelList, make_call(api.MODELS))

    def get(self, model: str) -> oa.Model:
        return self._c._json(oa.Model, make_call(api.MODEL, {"model": model}))


class Agent(_Part):
    def stream(self, **body: Any) -> Stream[ag.AgentEvent]:
        """Run an agent turn (`AgentChatBody`) and stream its events. The run goes on at the
        server if the connection drops, and the stream joins it again by itself; closing the
        stream before its end cancels the run."""
        return Stream(self._run(body))

    def _run(self, body: dict[str, Any]) -> Generator[ag.AgentEvent, None, None]:
        accepted = self._c.runs.start(**body)
        yield from self._c._follow(accepted.run_id, 0, cancel_on_leave=True)


class Agents(_Part):
    def list(self) -> ag.AgentList:
        return self._c._json(ag.AgentList, make_call(api.AGENTS))


class Runs(_Part):
    def start(self, **body: Any) -> ag.RunAccepted:
        """Start a background run (`AgentChatBody`); it runs on without a client."""
        call = make_call(api.RUN_START, body={**body, "background": True})
        return self._c._json(ag.RunAccepted, call)

    def get(self, run_id: str) -> ag.Run:
        return self._c._json(ag.Run, make_call(api.RUN, {"id": run_id}))

    def join(self, run_id: str, after: int = 0) -> Stream[ag.AgentEvent]:
        """The run's events after event `after` (its `seq`), resuming by itself."""
        return Stream(self._c._follow(run_id, after, cancel_on_leave=False))

    def cancel(self, run_id: str) -> ag.RunCancelled:
        return self._c._json(ag.RunCancelled, make_call(api.RUN_CANCEL, {"id": run_id}))

    def approve(
        self, run_id: str, tool_call_id: str, approved: bool = True, reason: str = ""
    ) -> ag.ApprovalAnswer:
        """Answer a tool call the run waits on (deny with `approved=False`); join the run
        again to follow the rest."""
        body = {"tool_call_id": tool_call_id, "approved": approved, "reason": reason}
        call = make_call(api.RUN_APPROVE, {"id": run_id}, body=body)
        return self._c._json(ag.ApprovalAnswer, call)


class Sessions(_Part):
    def list(self) -> ag.SessionList:
        return self._c._json(ag.SessionList, make_call(api.SESSIONS))

    def get(self, session_id: str) -> ag.SessionDetail:
        return self._c._json(ag.SessionDetail, make_call(api.SESSION, {"id": session_id}))

    def delete(self, session_id: str) -> ag.Deleted:
        return self._c._json(ag.Deleted, make_call(api.SESSION_DELETE, {"id": session_id}))


class KnowledgeBases(_Part):
    """Knowledge bases: the master key writes, any key reads and searches."""

    def create(self, **body: Any) -> kn.KnowledgeBase:
        """`KnowledgeBaseCreate` fields."""
        return self._c._json(kn.KnowledgeBase, make_call(api.KB_CREATE, body=body))

    def list(self) -> kn.KnowledgeBaseList:
        return self._c._json(kn.KnowledgeBaseList, make_call(api.KBS))

    def get(self, name: str) -> kn.KnowledgeBase:
        return self._c._json(kn.KnowledgeBase, make_call(api.KB, {"name": name}))

    def delete(self, name: str) -> ag.Deleted:
        return self._c._json(ag.Deleted, make_call(api.KB_DELETE, {"name": name}))

    def add(self, name: str, **body: Any) -> kn.DocumentAdded:
        """`DocumentUpload` fields: `source` and `text`, or a file's bytes as `data`."""
        call = make_call(api.KB_ADD, {"name": name}, body=body)
        return self._c._json(kn.DocumentAdded, call)

    def documents(self, name: str, **query: Any) -> kn.DocumentList:
        """`DocumentQuery` fields: limit, offset."""
        call = make_call(api.KB_DOCUMENTS, {"name": name}, query=query)
        return self._c._json(kn.DocumentList, call)

    def document(self, name: str, document_id: str) -> kn.StoredDocument:
        call = make_call(api.KB_DOCUMENT, {"name": name, "id": document_id})
        return self._c._json(kn.StoredDocument, call)

    def delete_document(self, name: str, document_id: str) -> ag.Deleted:
        call = make_call(api.KB_DOCUMENT_DELETE, {"name": name, "id": document_id})
        return self._c._json(ag.Deleted, call)

    def search(self, name: str, **body: Any) -> kn.SearchAnswer:
        """`SearchBody` fields: query, k, mode, filter."""
        call = make_call(api.KB_SEARCH, {"name": name}, body=body)
        return self._c._json(kn.SearchAnswer, call)


class Keys(_Part):
    """Virtual keys (master key only)."""

    def create(self, **body: Any) -> adm.CreatedKey:
        """`KeyCreate` fields; the answer holds the secret, shown this once."""
        return self._c._json(adm.CreatedKey, make_call(api.KEY_CREATE, body=body))

    def list(self, **query: Any) -> adm.KeyList:
        """`KeyListQuery` fields."""
        return self._c._json(adm.KeyList, make_call(api.KEYS, query=query))

    def get(self, key_id: str) -> adm.ApiKey:
        return self._c._json(adm.ApiKey, make_call(api.KEY, {"id": key_id}))

    def update(self, key_id: str, **body: Any) -> adm.ApiKey:
        """`KeyUpdate` fields: those left out stay, None clears."""
        call = make_call(api.KEY_UPDATE, {"id": key_id}, body=body)
        return self._c._json(adm.ApiKey, call)

    def revoke(self, key_id: str) -> adm.ApiKey:
        return self._c._json(adm.ApiKey, make_call(api.KEY_REVOKE, {"id": key_id}))


class Admin(_Part):
    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.keys = Keys(client)

    def usage(self, **query: Any) -> adm.UsageList:
        """`UsageQuery` fields: key, model, since, until, group_by, limit."""
        return self._c._json(adm.UsageList, make_call(api.USAGE, query=query))
