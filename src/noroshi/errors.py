"""Every error a client can see, in OpenAI's envelope.

    NoroshiError                  status, type, code, param, headers
     ├── BadRequest               400  malformed JSON, failed validation (param names the field)
     ├── Unauthorized             401  no key, or a key that is unknown, revoked or expired
     ├── Forbidden                403  a key without access to the route or model
     ├── NotFound                 404  unknown route
     │    └── ModelNotFound       404  unknown model (param "model")
     ├── MethodNotAllowed         405
     ├── Conflict                 409  a session that is busy with another run
     ├── PayloadTooLarge          413
     ├── URITooLong               414  a request target past the server's limit
     ├── UnsupportedMediaType     415
     ├── RateLimited              429  carries Retry-After
     ├── HeaderFieldsTooLarge     431  too many request headers, or too many bytes of them
     ├── UpstreamError            502  the upstream failed; `upstream_status` keeps what it said
     │    ├── UpstreamConnectError     could not reach it, or it reset the connection
     │    └── UpstreamProtocolError    it answered something that is not its wire format
     ├── UpstreamRejected         4xx  the upstream refused the request itself; its status kept
     ├── UpstreamTimeout          504  connect, first byte, idle or total timeout
     ├── NoDeployment             503  every deployment is cooling down or none is configured
     └── Unavailable              503  overloaded or shutting down; may carry Retry-After
          └── StoreUnavailable    503  the database did not answer in time

An error raised before the first byte becomes a status and a JSON body (`body()`);
after it, the stream encoders turn the same object into an error event.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "BadRequest",
    "Conflict",
    "ErrorBody",
    "ErrorDetail",
    "Forbidden",
    "HeaderFieldsTooLarge",
    "MethodNotAllowed",
    "ModelNotFound",
    "NoDeployment",
    "NoroshiError",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "StartupError",
    "StoreUnavailable",
    "URITooLong",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRejected",
    "UpstreamTimeout",
    "where",
]

_encode = msgspec.json.encode
_AT_PATH = " - at `$"


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct):
    """What every error answers, and what a stream's `error` event carries."""

    error: ErrorDetail


class NoroshiError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return _encode(self.envelope())


class BadRequest(NoroshiError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(NoroshiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(NoroshiError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(NoroshiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist.", param="model")


class MethodNotAllowed(NoroshiError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(NoroshiError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(NoroshiError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class URITooLong(NoroshiError):
    status = 414
    type = "invalid_request_error"
    code = "uri_too_long"


class UnsupportedMediaType(NoroshiError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RateLimited(NoroshiError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        if retry_after is not None:
            self.headers.setdefault("retry-after", str(max(1, round(retry_after))))


class HeaderFieldsTooLarge(NoroshiError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class UpstreamError(NoroshiError):
    status = 502
    type = "upstream_error"
    code = "bad_upstream_response"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.upstream_status = upstream_status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """429, 408, 409 and 5xx may pass on another try; other 4xx would fail the same way."""
        s = self.upstream_status
        return s is None or s in (408, 409, 429) or s >= 500


class UpstreamConnectError(UpstreamError):
    code = "upstream_unreachable"


class UpstreamProtocolError(UpstreamError):
    code = "bad_upstream_response"


class UpstreamTimeout(NoroshiError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class UpstreamRejected(NoroshiError):
    """The upstream refused the request itself (a 4xx other than 429): its status is kept."""

    type = "invalid_request_error"
    code = "upstream_rejected"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class NoDeployment(NoroshiError):
    status = 503
    type = "service_unavailable"
    code = "no_deployment_available"


class Unavailable(NoroshiError):
    status = 503
    type = "service_unavailable"
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        if retry_after is not None:
            self.headers.setdefault("retry-after", str(max(1, round(retry_after))))


class StoreUnavailable(Unavailable):
    code = "store_unavailable"

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(
            f"The database is unavailable ({reason}); retry shortly.", retry_after=retry_after
        )
        self.reason = reason  # which database, and what went wrong; never a password


def where(exc: msgspec.ValidationError) -> tuple[str, str | None]:
    """A validation failure as a message and the field it names:
    'Expected `str`, got `int` - at `$.messages[0].role`' -> (message, 'messages.0.role')."""
    text = str(exc)
    at = text.rfind(_AT_PATH)
    message, path = (text, "") if at < 0 else (text[:at], text[at + len(_AT_PATH) : -1])
    path = path.replace("[", ".").replace("]", "").lstrip(".")
    if message.startswith("Object missing required field `"):
        path = f"{path}.{message.split('`')[1]}".lstrip(".")
    return (f"{message} at '{path}'" if path else message), (path or None)


def convert_at(value: Any, kind: type[Any], path: str) -> Any:
    """`value` converted to `kind`, or a 400 naming the field under `path` (a nested part of a
    request that was decoded untyped first)."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        message, param = where(exc)
        field = f"{path}.{param}" if param else path
        raise BadRequest(
            f"{message.split(' at ')[0]} at '{field}'", param=field, code="invalid_value"
        ) from None


class StartupError(Exception):
    """Not a client's error: something the configuration names could not be reached at start.
    The message names the key, so the server can exit with that one line."""
