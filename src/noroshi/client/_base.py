"""What the sync and async clients share: building a call from the endpoint table, errors,
the retry rule, and decoding answers and stream events. Only sending differs between them."""

from __future__ import annotations

import datetime
import email.utils
import random
import time
from collections.abc import Mapping
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx2
import msgspec

from noroshi.errors import ErrorBody, where
from noroshi.wire import times
from noroshi.wire.agent import ErrorEvent, RunFinished, RunWaiting
from noroshi.wire.endpoints import Endpoint
from noroshi.wire.sse import SSEDecoder

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "Call",
    "ConflictError",
    "EventReader",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResumePolicy",
    "RetryPolicy",
    "decode_answer",
    "make_call",
]

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = httpx2.Timeout(60.0, connect=5.0)
RETRY_STATUSES = frozenset({429, 503})
MAX_RETRY_WAIT_S = 60.0


class APIError(Exception):
    """Anything that went wrong talking to noroshi."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIConnectionError(APIError):
    """No answer: the server could not be reached, or the connection broke."""


class InvalidRequestError(APIError, ValueError):
    """A request the client refused to send: it fails the endpoint's own types."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


class APIStatusError(APIError):
    """The server answered an error: its status and OpenAI-style envelope."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        return f"{self.status}{code}: {self.message}"


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitError,
}
_decode_error = msgspec.json.Decoder(ErrorBody)


def status_error(status: int, body: bytes, headers: Mapping[str, str]) -> APIStatusError:
    kind = _BY_STATUS.get(status, InternalServerError if status >= 500 else APIStatusError)
    request_id = headers.get("x-request-id")
    try:
        detail = _decode_error.decode(body).error
    except msgspec.MsgspecError:
        text = body.decode("utf-8", "replace")[:500] or f"HTTP {status}"
        return kind(text, status=status, request_id=request_id, headers=headers)
    return kind(
        detail.message,
        status=status,
        type=detail.type,
        code=detail.code,
        param=detail.param,
        request_id=request_id,
        headers=headers,
    )


class Call:
    """One request, ready for either client to send."""

    __slots__ = ("content", "endpoint", "headers", "params", "url")

    def __init__(
        self,
        endpoint: Endpoint,
        url: str,
        content: bytes | None,
        params: dict[str, str],
        headers: dict[str, str],
    ) -> None:
        self.endpoint = endpoint
        self.url = url
        self.content = content
        self.params = params
        self.headers = headers

    def build(self, http: httpx2.Client | httpx2.AsyncClient) -> httpx2.Request:
        return http.build_request(
            self.endpoint.method,
            self.url,
            content=self.content,
            params=self.params or None,
            headers=self.headers,
        )


def make_call(
    endpoint: Endpoint,
    path: Mapping[str, str] | None = None,
    body: Mapping[str, Any] | msgspec.Struct | None = None,
    query: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Call:
    """Check `body` and `query` against the endpoint's own types before sending: a mistake is
    an `InvalidRequestError` naming the field, here rather than a 400 from the server."""
    url = endpoint.path
    for name, value in (path or {}).items():
        url = url.replace("{" + name + "}", quote(value, safe=""))
    content = None
    if endpoint.body is not None:
        fields = body if body is not None else {}
        _check(fields, endpoint.body)
        # the caller's own fields go as given: a field this version does not know passes through
        content = msgspec.json.encode(fields)
    params: dict[str, str] = {}
    if endpoint.query is not None and query:
        # checked as the server reads them: as text
        params = {k: _text(v) for k, v in query.items() if v is not None}
        _check(params, endpoint.query)
    sent = {"content-type": "application/json"} if content is not None else {}
    sent.update(headers or {})
    return Call(endpoint, url, content, params, sent)


def _check(value: Any, kind: Any) -> None:
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value, enc_hook=times.enc_hook)
    try:
        msgspec.convert(value, kind, strict=False, dec_hook=times.dec_hook)
    except msgspec.ValidationError as exc:
        message, param = where(exc)
        raise InvalidRequestError(message, param) from None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def decode_answer(kind: type[T], response: httpx2.Response) -> T:
    try:
        return msgspec.json.decode(response.content, type=kind, dec_hook=times.dec_hook)
    except msgspec.MsgspecError as exc:
        raise APIError(f"The server answered what this client cannot read: {exc}") from None


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


class RetryPolicy:
    """Retry 429 and 503 (and a connection that could not be made) with exponential backoff
    and jitter, waiting at least what Retry-After asks when it asks a minute or less."""

    def __init__(self, max_retries: int, base_s: float = 0.5, cap_s: float = 8.0) -> None:
        self.max_retries = max_retries
        self.base_s = base_s
        self.cap_s = cap_s

    def wait(self, attempt: int, headers: Mapping[str, str] | None = None) -> float | None:
        """Seconds to wait before retry number `attempt + 1`, or None to give up."""
        if attempt >= self.max_retries:
            return None
        backoff = min(self.cap_s, self.base_s * 2.0**attempt) * (0.5 + random.random() / 2)
        asked = retry_after(headers) if headers is not None else None
        return max(backoff, asked) if asked is not None else backoff


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds or as an HTTP date; None when absent, unreadable or too far."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (ValueError, TypeError):  # neither seconds nor a date: as if not sent
            return None
        if moment.tzinfo is None:  # an HTTP date is GMT
            moment = moment.replace(tzinfo=datetime.UTC)
        seconds = moment.timestamp() - time.time()
    return seconds if 0 <= seconds <= MAX_RETRY_WAIT_S else None


class ResumePolicy:
    """How often a dropped agent stream joins its run again: a reconnect that brings events
    resets the count."""

    def __init__(self, max_attempts: int = 5, base_s: float = 0.2, cap_s: float = 5.0) -> None:
        self.max_attempts = max_attempts
        self.base_s = base_s
        self.cap_s = cap_s

    def wait(self, failures: int) -> float | None:
        if failures > self.max_attempts:
            return None
        return min(self.cap_s, self.base_s * 2.0 ** (failures - 1))


class EventReader(Generic[T]):
    """Bytes of an SSE stream in, typed events out. `[DONE]` ends OpenAI streams, and
    `run.finished`, `error` or `run.waiting` agent streams; an `error` event that is not one of
    the stream's own types is raised as the error it carries."""

    __slots__ = ("_decoder", "_kind", "done", "last_id")

    def __init__(self, kind: Any) -> None:
        self._kind: msgspec.json.Decoder[T] = times.decoder(kind)
        self._decoder = SSEDecoder()
        self.done = False
        self.last_id = 0

    def feed(self, blob: bytes) -> list[T]:
        return self._events(self._decoder.feed(blob))

    def flush(self) -> list[T]:
        return self._events(self._decoder.flush())

    def _events(self, raw: list[tuple[str, bytes]]) -> list[T]:
        out: list[T] = []
        for name, data in raw:
            if data == b"[DONE]":
                self.done = True
                continue
            if data.startswith(b'{"error"'):
                raise _stream_error(data)
            try:
                event = self._kind.decode(data)
            except msgspec.ValidationError:
                if name == "error":  # the simple endpoints' `event: error` with a message
                    raise _stream_error(data) from None
                raise
            except msgspec.DecodeError as exc:
                raise APIError(f"The stream sent an event that is not JSON: {exc}") from None
            seq = getattr(event, "seq", None)
            if isinstance(seq, int) and seq:
                self.last_id = seq
            # a run that waits for approval ends its stream too: it goes on once answered
            if isinstance(event, RunFinished | ErrorEvent | RunWaiting):
                self.done = True
            out.append(event)
        return out


def _stream_error(data: bytes) -> APIStatusError:
    """An error sent inside a stream, after its 200: OpenAI's envelope or `{message}`."""
    try:
        detail = _decode_error.decode(data).error
        return status_error(_status_of(detail.type), data, {})
    except msgspec.MsgspecError:
        message = msgspec.json.decode(data).get("message", "The stream failed.")
        return InternalServerError(str(message), status=502)  # as a 502 before the stream


def _status_of(type: str) -> int:
    return {"invalid_request_error": 400, "rate_limit_error": 429}.get(type, 502)
