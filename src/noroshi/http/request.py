"""The request as handlers see it, whichever server delivered it."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs

import msgspec

from noroshi.errors import BadRequest, UnsupportedMediaType, where
from noroshi.http.nesting import MAX_DEPTH, deepest_field, too_deep
from noroshi.wire import times

if TYPE_CHECKING:
    from noroshi.accounting import Meter
    from noroshi.auth import Principal

__all__ = ["Request", "decode_json", "decode_query", "request_id"]

T = TypeVar("T")
BodyReader = Callable[[], Awaitable[bytes]]
MAX_REQUEST_ID = 128


def request_id(given: str | None) -> str:
    """The client's `x-request-id` when it is a sane one, else a new id: this process's random
    prefix and a counter, which needs no system call (`os.urandom` made one per request)."""
    if given and len(given) <= MAX_REQUEST_ID and given.isprintable():
        return given
    return f"{_id_prefix}{next(_id_counter):08x}"


def _new_id_prefix() -> None:
    """A fresh prefix in each process, forked workers included, so ids never repeat across
    workers or replicas."""
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = secrets.token_hex(8), itertools.count()


_id_prefix = ""
_id_counter = itertools.count()
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


class Request:
    """Method, path, headers and a body read once, within the size limit, on demand."""

    __slots__ = (
        "_body",
        "_read",
        "client",
        "headers",
        "id",
        "meter",
        "method",
        "params",
        "path",
        "principal",
        "query",
        "route",
        "state",
        "task",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        read: BodyReader,
        client: str = "",
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.client = client
        self.id = ""
        self.task: asyncio.Task[Any] | None = None  # the task serving it, set by the adapter
        self.params: dict[str, str] = {}
        self.route = ""  # the matched route's pattern
        self.principal: Principal | None = None  # set by the auth guard
        self.meter: Meter | None = None  # set on model routes, billed when the answer ends
        self.state: dict[str, Any] = {}
        self._read = read
        self._body: bytes | None = None

    @property
    def address(self) -> str:
        """The client's IP address, without the port."""
        host = self.client.rpartition(":")[0] or self.client
        return host.strip("[]")

    async def body(self) -> bytes:
        if self._body is None:
            self._body = await self._read()
        return self._body

    async def json(self, decoder: msgspec.json.Decoder[T]) -> T:
        """Decode and validate the body; any problem is a 400 whose `param` names the field."""
        ctype = self.headers.get("content-type")
        if ctype and not ctype.startswith("application/json") and "+json" not in ctype:
            raise UnsupportedMediaType(f"Content-Type must be application/json, not '{ctype}'.")
        return decode_json(decoder, await self.body())

    def query_as(self, kind: type[T]) -> T:
        """The query parameters as `kind`, a Struct: text converted to its field types, and
        any problem a 400 naming the parameter."""
        return decode_query(kind, self.query)


def decode_query(kind: type[T], query: str) -> T:
    """The last value of each parameter wins, as most frameworks read them. A blank value
    (`?until=`) is a value, refused where the type takes none, not a parameter left out."""
    values = {name: items[-1] for name, items in parse_qs(query, keep_blank_values=True).items()}
    try:
        return msgspec.convert(values, kind, strict=False, dec_hook=times.dec_hook)
    except msgspec.ValidationError as exc:
        message, param = where(exc)
        if message.startswith("Object contains unknown field"):
            message = f"Unknown query parameter '{param}'."
        raise BadRequest(message, param=param, code="invalid_value") from None


def decode_json(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """Every JSON a client sends is decoded here (bodies, WebSocket messages, webhooks), so
    every refusal is a 400 naming the field."""
    try:
        value = decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, param = where(exc)
        raise BadRequest(message, param=param, code="invalid_value") from None
    except msgspec.DecodeError as exc:
        detail = str(exc) if body.strip() else "the request body is empty"
        raise BadRequest(
            f"We could not parse the JSON body of your request: {detail}", code="invalid_json"
        ) from None
    except RecursionError:
        raise _too_deep(body) from None
    if too_deep(body):
        raise _too_deep(body)
    return value


def _too_deep(body: bytes) -> BadRequest:
    field = deepest_field(body)
    message = f"The JSON body is nested too deeply: more than {MAX_DEPTH} levels"
    return BadRequest(
        f"{message} in '{field}'." if field else f"{message}.", param=field, code="json_too_deep"
    )
