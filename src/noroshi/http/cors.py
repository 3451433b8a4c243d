"""CORS: a preflight's answer, and the allow headers that every answer to a browser carries.

Errors carry them too, so a browser can read a 401 or a 429 instead of seeing an opaque network
failure. The rate-limit headers and `x-request-id` are exposed to scripts.
"""

from __future__ import annotations

from noroshi.config import CorsConfig
from noroshi.errors import Forbidden
from noroshi.http.request import Request
from noroshi.http.response import Response
from noroshi.types import Headers

__all__ = ["Cors"]

EXPOSED = ", ".join(
    (
        "x-request-id",
        "retry-after",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    )
)


class Cors:
    def __init__(self, config: CorsConfig) -> None:
        self.config = config
        self.any_origin = "*" in config.allow_origins
        self.origins = frozenset(config.allow_origins)
        self.any_header = "*" in config.allow_headers
        self.methods = ", ".join(m.upper() for m in config.allow_methods)
        self.allow_headers = ", ".join(config.allow_headers)

    def preflight(self, request: Request) -> Response | None:
        """The answer to a preflight (403 for an origin or method not allowed); None for any
        other request."""
        origin = request.headers.get("origin")
        if (
            origin is None
            or request.method != "OPTIONS"
            or "access-control-request-method" not in request.headers
        ):
            return None
        allowed = self._allow(origin)
        if allowed is None:
            raise Forbidden(f"The origin {origin} is not allowed.", code="cors_origin_forbidden")
        asked = request.headers.get("access-control-request-method", "").upper()
        if asked not in self.methods.split(", "):
            raise Forbidden(f"The method {asked} is not allowed by CORS.", code="cors_forbidden")
        allow_headers = self.allow_headers
        if self.any_header:
            allow_headers = request.headers.get("access-control-request-headers", "")
        return Response(
            b"",
            204,
            [
                *self._common(allowed),
                ("access-control-allow-methods", self.methods),
                ("access-control-allow-headers", allow_headers),
                ("access-control-max-age", str(self.config.max_age_s)),
            ],
        )

    def headers(self, request: Request) -> Headers:
        """What an answer to `request` carries for the browser that sent it, if any."""
        origin = request.headers.get("origin")
        if origin is None or (allowed := self._allow(origin)) is None:
            return []
        return [*self._common(allowed), ("access-control-expose-headers", EXPOSED)]

    def _allow(self, origin: str) -> str | None:
        if origin in self.origins:
            return origin
        return "*" if self.any_origin else None  # never with credentials: CorsConfig refuses it

    def _common(self, allowed: str) -> Headers:
        out = [("access-control-allow-origin", allowed)]
        if allowed != "*":
            out.append(("vary", "Origin"))
        if self.config.allow_credentials:
            out.append(("access-control-allow-credentials", "true"))
        return out
