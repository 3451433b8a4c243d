"""Fake OpenAI and Anthropic servers on loopback, speaking the real wire formats.

Why: the gateway's retry, timeout, streaming and cancellation paths only show up against a real
socket that misbehaves on cue. Each fake is an `aiohttp.web` server on 127.0.0.1 (random port);
a test queues `Reply` objects that say what the next answer is and how it should go wrong.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import struct
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

JSON = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_MODEL = "fake-model"


@dataclass
class Reply:
    """One scripted answer. Defaults give a normal successful answer.

    "Content chunks" are the deltas that carry text or tool-call arguments; the `*_after`
    faults count only those, and fire right after the Nth one (0: before the first). A fault
    whose N is past the last content chunk never fires.
    """

    text: str = "Hello from the fake upstream."
    chunks: int | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    status: int = 200
    error_message: str = "fake upstream error"
    retry_after: float | None = None
    delay: float = 0.0
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    stall_after: int | None = None
    reset_after: int | None = None
    malformed_after: int | None = None
    no_terminator: bool = False
    prompt_tokens: int = 7
    completion_tokens: int | None = None
    mid_stream_error: str | None = None
    # prompt caching: tokens read from and written to the cache, besides `prompt_tokens`
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    # thinking before the answer: Anthropic's thinking block (with `signature`), or the
    # `reasoning_content` deltas OpenAI-compatible servers (vLLM, DeepSeek) send
    reasoning: str | None = None
    signature: str = "sig-fake-0123456789"
    reasoning_tokens: int = 0


class _Headers(dict[str, str]):
    """Request headers keyed in lower case, with case-insensitive lookups as HTTP means them."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__()
        for key, value in items:
            key = key.lower()
            super().__setitem__(key, f"{self[key]}, {value}" if key in self else value)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass
class Recorded:
    """One request as the fake received it, for assertions on what the gateway sent.

    `headers` is a plain dict keyed in lower case whose lookups ignore case; `received_at` is
    the `time.monotonic()` at which the request arrived, for timing retries and backoff.
    """

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float = 0.0


@dataclass
class _Exchange:
    """One request being answered: whether we already counted its client as gone."""

    request: web.Request
    disconnected: bool = False


@dataclass
class _Frames:
    """A stream laid out for the fault-injecting writer.

    `head` goes first (role chunk / message_start ...), `body` holds (frame, is-content-chunk),
    then `tail` and `terminator`. `error`, when set, is sent after the body and ends the stream.
    """

    head: list[bytes]
    body: list[tuple[bytes, bool]]
    tail: list[bytes]
    terminator: bytes
    malformed: bytes
    error: bytes | None = None


@dataclass
class _Call:
    """A tool call, normalised from the loose dict a test writes."""

    id: str
    name: str
    arguments: str


# --- helpers -------------------------------------------------------------------------------


def _dumps(obj: Any) -> str:
    """Compact JSON, as both providers send it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _spread(items: Sequence[str], n: int) -> list[str]:
    """Join `items` into `n` contiguous groups of near-equal size."""
    size, extra = divmod(len(items), n)
    out: list[str] = []
    i = 0
    for k in range(n):
        take = size + (1 if k < extra else 0)
        out.append("".join(items[i : i + take]))
        i += take
    return out


def split_text(text: str, chunks: int | None = None) -> list[str]:
    """Pieces whose join is `text`: one per word (spaces kept), or `chunks` pieces.

    Fewer chunks than words groups words; more splits by characters (at most one per character).
    """
    words: list[str] = re.findall(r"\s*\S+\s*", text)
    if not words:
        words = [text] if text else []
    if chunks is None or not words or chunks == len(words):
        return words
    chunks = max(chunks, 1)
    if chunks < len(words):
        return _spread(words, chunks)
    return _spread(list(text), min(chunks, len(text)))


def _halves(arguments: str) -> list[str]:
    """Tool-call arguments in two pieces, so clients must reassemble them."""
    mid = max(len(arguments) // 2, 1)
    return [arguments[:mid], arguments[mid:]]


def _calls(reply: Reply) -> list[_Call]:
    """The reply's tool calls with ids and arguments filled in."""
    calls: list[_Call] = []
    for i, raw in enumerate(reply.tool_calls or []):
        arguments = raw.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(_Call(str(raw.get("id") or f"call_fake{i}"), str(raw["name"]), arguments))
    return calls


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _echo(messages: Any) -> str | None:
    """The rest of the last user message if it starts with "echo:" (one leading space dropped)."""
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = _text_of(message.get("content"))
            if not text.startswith("echo:"):
                return None
            rest = text[len("echo:") :]
            return rest[1:] if rest.startswith(" ") else rest
    return None


def _seconds(value: float) -> str:
    """A Retry-After value: "7" for 7.0, "0.5" for 0.5."""
    return f"{value:g}"


MAX_DIMENSIONS = 3072  # text-embedding-3-large's, the most OpenAI serves


def _vector(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for `text`, so equal inputs embed equally."""
    raw = b""
    counter = 0
    while len(raw) < dims * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [int.from_bytes(raw[i * 4 : i * 4 + 4], "little") / 2**31 - 1.0 for i in range(dims)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in values]


# --- the server machinery shared by both fakes ---------------------------------------------


class _FakeServer(LoopbackServer):
    """Lifecycle, script queue, request log and disconnect bookkeeping shared by the fakes."""

    stall_limit: float = 60.0  # how long a stalled stream waits for the client to go away
    client_max_size = 64 * 1024 * 1024

    def __init__(self, api_key: str | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.default = Reply()
        self.requests: list[Recorded] = []
        self.disconnects = 0
        self.in_flight = 0
        self.base_url = ""
        self._queue: deque[Reply] = deque()
        self._disconnect_times: list[float] = []
        self._baseline = 0

    async def start(self) -> Self:
        """Listen on 127.0.0.1 at a free port; fills in `port` and `base_url`."""
        await super().start()
        self.base_url = f"{self.origin}/v1"
        return self

    def script(self, *replies: Reply) -> None:
        """Queue answers; each scripted request takes the next, then `default` is used."""
        self._queue.extend(replies)

    def _next_reply(self) -> Reply:
        return self._queue.popleft() if self._queue else self.default

    async def wait_disconnect(self, timeout: float = 5.0) -> float:  # noqa: ASYNC109
        """Wait for a client to go away during or after the latest request; gives when we saw it.

        Counts from `disconnects` as it was when the latest request started, so it may be called
        after the disconnect already happened. Returns the `time.monotonic()` of the detection.
        """
        baseline = self._baseline
        deadline = time.monotonic() + timeout
        while len(self._disconnect_times) <= baseline:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no client disconnect within {timeout} s")
            await asyncio.sleep(0.005)
        return self._disconnect_times[baseline]

    def _tracked(self, handler: Handler) -> Handler:
        """Wrap a handler to keep `in_flight` and the disconnect baseline up to date."""

        async def run(request: web.Request) -> web.StreamResponse:
            self.in_flight += 1
            self._baseline = self.disconnects
            try:
                return await handler(request)
            finally:
                self.in_flight -= 1

        return run

    async def _receive(self, request: web.Request) -> tuple[_Exchange, JSON | None]:
        """Read and record the request; the body is None when it is not a JSON object."""
        received_at = time.monotonic()
        raw = await request.read()
        body: JSON | None = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                body = parsed
        elif request.method == "GET":
            body = {}
        headers = _Headers(request.headers.items())
        self.requests.append(Recorded(request.path, headers, body or {}, received_at))
        return _Exchange(request), body

    # disconnect detection

    def _note_disconnect(self, ex: _Exchange) -> None:
        if not ex.disconnected:
            ex.disconnected = True
            self.disconnects += 1
            self._disconnect_times.append(time.monotonic())

    def _client_gone(self, ex: _Exchange) -> bool:
        if ex.disconnected:
            return True
        transport = ex.request.transport
        if transport is None or transport.is_closing():
            self._note_disconnect(ex)
            return True
        return False

    async def _sleep(self, ex: _Exchange, seconds: float) -> bool:
        """Sleep, watching the client every 10 ms; False if it left (or we are closing)."""
        deadline = time.monotonic() + seconds
        while True:
            if self._closing or self._client_gone(ex):
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(0.01, left))

    async def _send(self, ex: _Exchange, resp: web.StreamResponse, data: bytes) -> bool:
        """Write one frame; False if the client is gone."""
        if self._closing or self._client_gone(ex):
            return False
        try:
            await resp.write(data)
        except ConnectionError:  # aiohttp's ClientConnectionResetError is one
            self._note_disconnect(ex)
            return False
        return True

    async def _delay(self, ex: _Exchange, reply: Reply) -> bool:
        """The pre-header delay; False if the client left meanwhile."""
        return not reply.delay or await self._sleep(ex, reply.delay)

    # streaming with faults

    async def _stream(
        self, ex: _Exchange, reply: Reply, frames: _Frames, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Send an SSE stream, injecting the reply's faults at their content-chunk counts."""
        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                **headers,
            },
        )
        try:
            await resp.prepare(ex.request)
        except ConnectionError:
            self._note_disconnect(ex)
            return resp
        if reply.first_token_delay and not await self._sleep(ex, reply.first_token_delay):
            return resp
        for data in frames.head:
            if not await self._send(ex, resp, data):
                return resp
        if await self._fault(ex, reply, resp, frames, 0):
            return resp
        sent = 0
        for data, is_content in frames.body:
            pause = reply.token_delay if is_content and sent else 0.0
            if pause and not await self._sleep(ex, pause):
                return resp
            if not await self._send(ex, resp, data):
                return resp
            if is_content:
                sent += 1
                if await self._fault(ex, reply, resp, frames, sent):
                    return resp
        if frames.error is not None:
            await self._send(ex, resp, frames.error)
            return resp
        for data in frames.tail:
            if not await self._send(ex, resp, data):
                return resp
        if not reply.no_terminator and not await self._send(ex, resp, frames.terminator):
            return resp
        try:
            await resp.write_eof()
        except ConnectionError:
            self._note_disconnect(ex)
        return resp

    async def _fault(
        self, ex: _Exchange, reply: Reply, resp: web.StreamResponse, frames: _Frames, sent: int
    ) -> bool:
        """Apply the faults due after `sent` content chunks; True when the stream must end."""
        if reply.malformed_after == sent and not await self._send(ex, resp, frames.malformed):
            return True
        if reply.reset_after == sent:
            transport = ex.request.transport
            if transport is not None:
                transport.abort()
            return True
        if reply.stall_after == sent:
            await self._sleep(ex, self.stall_limit)
            return True
        return False


# --- OpenAI --------------------------------------------------------------------------------

_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("request_forbidden", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def openai_error(status: int, message: str, retry_after: float | None = None) -> web.Response:
    """An error answer in OpenAI's envelope: {"error": {message, type, param, code}}."""
    kind, code = _OPENAI_ERRORS.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    headers = {"x-request-id": f"req_fake{uuid.uuid4().hex[:16]}"}
    if retry_after is not None:
        headers["Retry-After"] = _seconds(retry_after)
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


class FakeOpenAI(_FakeServer):
    """OpenAI-compatible server: POST /v1/chat/completions (stream and not), GET /v1/models,
    POST /v1/embeddings (deterministic small vectors).

    Chat completions and embeddings take scripted replies (embeddings honour only `delay`,
    `status`, `error_message`, `retry_after` and `prompt_tokens`); /v1/models lists `models`.
    """

    def __init__(self, api_key: str | None = None) -> None:
        super().__init__(api_key)
        self.models: list[str] = [DEFAULT_MODEL, "fake-embedding"]

    def chats(self) -> list[list[JSON]]:
        """The messages of each chat completion request, in the order they came."""
        return [r.body["messages"] for r in self.requests if r.path == "/v1/chat/completions"]

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self._tracked(self._chat)),
            web.post("/v1/embeddings", self._tracked(self._embeddings)),
            web.get("/v1/models", self._tracked(self._models)),
        ]

    def _denied(self, request: web.Request) -> web.Response | None:
        """OpenAI's 401 when an api key is required and the bearer token is missing or wrong."""
        if self.api_key is None:
            return None
        auth = request.headers.get("Authorization")
        if auth is None:
            return openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if auth != f"Bearer {self.api_key}":
            return openai_error(401, "Incorrect API key provided.")
        return None

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._receive(request)
        if (denied := self._denied(request)) is not None:
            return denied
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
            for m in self.models
        ]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        ex, body = await self._receive(request)
        if (denied := self._denied(request)) is not None:
            return denied
        if body is None:
            return openai_error(400, "We could not parse the JSON body of your request.")
        inputs = body.get("input")
        tokens = isinstance(inputs, list) and inputs and all(isinstance(i, int) for i in inputs)
        if isinstance(inputs, str) or tokens:
            items: list[Any] = [inputs]
        elif isinstance(inputs, list) and inputs:
            items = inputs
        else:
            return openai_error(400, "'input' is a required property")
        reply = self._next_reply()
        if not await self._delay(ex, reply):
            return web.Response()
        if reply.status != 200:
            return openai_error(reply.status, reply.error_message, reply.retry_after)
        dims = int(body.get("dimensions") or 8)
        if not 1 <= dims <= MAX_DIMENSIONS:
            return openai_error(400, f"dimensions must be from 1 to {MAX_DIMENSIONS}")
        data = []
        for i, item in enumerate(items):
            vector = _vector(item if isinstance(item, str) else _dumps(item), dims)
            embedding: list[float] | str = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        usage = {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens}
        answer = {
            "object": "list",
            "data": data,
            "model": str(body.get("model") or "fake-embedding"),
            "usage": usage,
        }
        return web.json_response(answer, dumps=_dumps)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        ex, body = await self._receive(request)
        if (denied := self._denied(request)) is not None:
            return denied
        if body is None:
            return openai_error(400, "We could not parse the JSON body of your request.")
        reply = self._next_reply()
        if not await self._delay(ex, reply):
            return web.Response()
        if reply.status != 200:
            return openai_error(reply.status, reply.error_message, reply.retry_after)

        model = str(body.get("model") or DEFAULT_MODEL)
        echoed = _echo(body.get("messages"))
        text = reply.text if echoed is None else echoed
        calls = _calls(reply)
        pieces = [] if calls else split_text(text, reply.chunks)
        completion = reply.completion_tokens
        if completion is None:
            completion = 5 if calls else len(pieces)
        prompt = reply.prompt_tokens + reply.cache_read_tokens
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion + reply.reasoning_tokens,
            "total_tokens": prompt + completion + reply.reasoning_tokens,
            "prompt_tokens_details": {"cached_tokens": reply.cache_read_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reply.reasoning_tokens,
                "audio_tokens": 0,
            },
        }
        finish = reply.finish_reason or ("tool_calls" if calls else "stop")
        answer_id = f"chatcmpl-fake{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        headers = {"x-request-id": f"req_fake{uuid.uuid4().hex[:16]}"}

        if not body.get("stream"):
            message: JSON = {"role": "assistant", "content": text, "refusal": None}
            if reply.reasoning is not None:
                message["reasoning_content"] = reply.reasoning
            if calls:
                message["content"] = None
                message["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in calls
                ]
            answer = {
                "id": answer_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                ],
                "usage": usage,
                "system_fingerprint": "fp_fake",
            }
            return web.json_response(answer, headers=headers, dumps=_dumps)

        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and bool(
            stream_options.get("include_usage")
        )

        def chunk(delta: JSON, finish_reason: str | None = None) -> bytes:
            obj: JSON = {
                "id": answer_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
            }
            if include_usage:
                obj["usage"] = None
            return f"data: {_dumps(obj)}\n\n".encode()

        role: JSON = {"role": "assistant", "content": "", "refusal": None}
        head: list[bytes] = []
        frames: list[tuple[bytes, bool]] = []
        if reply.reasoning is not None:
            head.append(chunk({**role, "content": None}))
            role = {}
            frames.extend(
                (chunk({"reasoning_content": p}), True) for p in split_text(reply.reasoning)
            )
        if calls:
            for i, c in enumerate(calls):
                start = {
                    "index": i,
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": ""},
                }
                delta: JSON = {"tool_calls": [start]}
                if i == 0 and role:
                    head.append(chunk({**role, "content": None, **delta}))
                else:
                    frames.append((chunk(delta), False))
                for piece in _halves(c.arguments):
                    args = {"index": i, "function": {"arguments": piece}}
                    frames.append((chunk({"tool_calls": [args]}), True))
        else:
            if role:
                head.append(chunk(role))
            frames.extend((chunk({"content": p}), True) for p in pieces)
        tail = [chunk({}, finish)]
        if include_usage:
            last = {
                "id": answer_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": usage,
            }
            tail.append(f"data: {_dumps(last)}\n\n".encode())
        layout = _Frames(
            head=head,
            body=frames,
            tail=tail,
            terminator=b"data: [DONE]\n\n",
            malformed=b'data: {"choices": [\n\n',
        )
        return await self._stream(ex, reply, layout, headers)


# --- Anthropic -----------------------------------------------------------------------------

_ANTHROPIC_ERRORS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


def anthropic_error(status: int, message: str, retry_after: float | None = None) -> web.Response:
    """An error answer in Anthropic's envelope: {"type": "error", "error": {type, message}}."""
    kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    headers = {"request-id": f"req_fake{uuid.uuid4().hex[:16]}"}
    if retry_after is not None:
        headers["Retry-After"] = _seconds(retry_after)
    body = {"type": "error", "error": {"type": kind, "message": message}}
    reason = "Overloaded" if status == 529 else None
    return web.json_response(body, status=status, reason=reason, headers=headers, dumps=_dumps)


def _event(name: str, data: JSON) -> bytes:
    return f"event: {name}\ndata: {_dumps(data)}\n\n".encode()


class FakeAnthropic(_FakeServer):
    """Anthropic Messages API server: POST /v1/messages (stream and not).

    Checks `x-api-key` when `api_key` is set (401) and requires the `anthropic-version` header
    (400), like the real API; also `max_tokens` in the body unless `require_max_tokens` is off.
    `Reply.finish_reason` takes OpenAI names too ("length" -> "max_tokens", "stop" -> "end_turn").
    """

    def __init__(self, api_key: str | None = None) -> None:
        super().__init__(api_key)
        self.require_max_tokens = True

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/messages", self._tracked(self._messages)),
            web.post("/v1/messages/count_tokens", self._tracked(self._count_tokens)),
        ]

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        """A deterministic count: one token per four bytes of the system, messages and tools."""
        _, body = await self._receive(request)
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return anthropic_error(401, "invalid x-api-key")
        if body is None or "messages" not in body:
            return anthropic_error(400, "messages: Field required")
        counted = _dumps([body.get("system"), body["messages"], body.get("tools")])
        return web.json_response({"input_tokens": len(counted) // 4 + 1}, dumps=_dumps)

    def _denied(self, request: web.Request, body: JSON | None) -> web.Response | None:
        """The header and body checks the real API makes before doing anything."""
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return anthropic_error(401, "invalid x-api-key")
        if "anthropic-version" not in request.headers:
            return anthropic_error(400, "anthropic-version: header is required")
        if body is None:
            return anthropic_error(400, "There was an error parsing the body of your request.")
        if self.require_max_tokens and "max_tokens" not in body:
            return anthropic_error(400, "max_tokens: Field required")
        return None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        ex, body = await self._receive(request)
        if (denied := self._denied(request, body)) is not None:
            return denied
        assert body is not None
        reply = self._next_reply()
        if not await self._delay(ex, reply):
            return web.Response()
        if reply.status != 200:
            return anthropic_error(reply.status, reply.error_message, reply.retry_after)

        model = str(body.get("model") or DEFAULT_MODEL)
        echoed = _echo(body.get("messages"))
        text = reply.text if echoed is None else echoed
        calls = _calls(reply)
        pieces = [] if calls else split_text(text, reply.chunks)
        output_tokens = reply.completion_tokens
        if output_tokens is None:
            output_tokens = 5 if calls else len(pieces)
        stop = reply.finish_reason or ("tool_use" if calls else "end_turn")
        stop = _ANTHROPIC_STOP.get(stop, stop)
        message_id = f"msg_fake{uuid.uuid4().hex[:24]}"
        headers = {"request-id": f"req_fake{uuid.uuid4().hex[:16]}"}

        usage: JSON = {
            "input_tokens": reply.prompt_tokens,
            "cache_creation_input_tokens": reply.cache_write_tokens,
            "cache_read_input_tokens": reply.cache_read_tokens,
            "output_tokens": output_tokens,
        }

        if not body.get("stream"):
            content: list[JSON] = []
            if reply.reasoning is not None:
                content.append(
                    {"type": "thinking", "thinking": reply.reasoning, "signature": reply.signature}
                )
            for c in calls:
                try:
                    arguments = json.loads(c.arguments)
                except ValueError:
                    arguments = {}
                content.append({"type": "tool_use", "id": c.id, "name": c.name, "input": arguments})
            if not calls:
                content.append({"type": "text", "text": text})
            answer = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": usage,
            }
            return web.json_response(answer, headers=headers, dumps=_dumps)

        start = {
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {**usage, "output_tokens": 1},
            },
        }
        ping = _event("ping", {"type": "ping"})

        def block_start(index: int, block: JSON) -> bytes:
            data = {"type": "content_block_start", "index": index, "content_block": block}
            return _event("content_block_start", data)

        def block_delta(index: int, delta: JSON) -> bytes:
            data = {"type": "content_block_delta", "index": index, "delta": delta}
            return _event("content_block_delta", data)

        def block_stop(index: int) -> bytes:
            return _event("content_block_stop", {"type": "content_block_stop", "index": index})

        head = [_event("message_start", start)]
        frames: list[tuple[bytes, bool]] = []
        tail: list[bytes] = []
        first = 0  # the index of the first block after the thinking, if any
        if reply.reasoning is not None:
            first = 1
            head += [block_start(0, {"type": "thinking", "thinking": "", "signature": ""}), ping]
            frames += [
                (block_delta(0, {"type": "thinking_delta", "thinking": p}), True)
                for p in split_text(reply.reasoning)
            ]
            frames.append(
                (block_delta(0, {"type": "signature_delta", "signature": reply.signature}), False)
            )
            frames.append((block_stop(0), False))
        if calls:
            for i, c in enumerate(calls, start=first):
                block = {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}
                if i == 0:
                    head += [block_start(i, block), ping]
                else:
                    frames.append((block_start(i, block), False))
                for piece in _halves(c.arguments):
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    frames.append((block_delta(i, delta), True))
                frames.append((block_stop(i), False))
        else:
            if first:
                frames.append((block_start(first, {"type": "text", "text": ""}), False))
            else:
                head += [block_start(0, {"type": "text", "text": ""}), ping]
            frames += [
                (block_delta(first, {"type": "text_delta", "text": p}), True) for p in pieces
            ]
            tail.append(block_stop(first))
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        }
        tail.append(_event("message_delta", message_delta))
        error = None
        if reply.mid_stream_error is not None:
            failure = {"type": "overloaded_error", "message": reply.mid_stream_error}
            error = _event("error", {"type": "error", "error": failure})
        layout = _Frames(
            head=head,
            body=frames,
            tail=tail,
            terminator=_event("message_stop", {"type": "message_stop"}),
            malformed=(
                b"event: content_block_delta\n"
                b'data: {"type": "content_block_delta", "index": 0, "delta": {\n\n'
            ),
            error=error,
        )
        return await self._stream(ex, reply, layout, headers)
