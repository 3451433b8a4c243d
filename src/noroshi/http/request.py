"""The request as handlers see it, whichever server delivered it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from noroshi.errors import BadRequest, UnsupportedMediaType

if TYPE_CHECKING:
    from noroshi.accounting import Meter
    from noroshi.auth import Principal

__all__ = ["Request", "decode_json"]

T = TypeVar("T")
BodyReader = Callable[[], Awaitable[bytes]]

_AT_PATH = " - at `$"


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


def decode_json(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, param = _split(str(exc))
        raise BadRequest(message, param=param, code="invalid_value") from None
    except msgspec.DecodeError as exc:
        detail = str(exc) if body.strip() else "the request body is empty"
        raise BadRequest(
            f"We could not parse the JSON body of your request: {detail}", code="invalid_json"
        ) from None


def _split(text: str) -> tuple[str, str | None]:
    """'Expected `str`, got `int` - at `$.messages[0].role`' -> (message, 'messages.0.role')."""
    at = text.rfind(_AT_PATH)
    message, path = (text, "") if at < 0 else (text[:at], text[at + len(_AT_PATH) : -1])
    path = path.replace("[", ".").replace("]", "").lstrip(".")
    if message.startswith("Object missing required field `"):
        path = f"{path}.{message.split('`')[1]}".lstrip(".")
    return (f"{message} at '{path}'" if path else message), (path or None)
