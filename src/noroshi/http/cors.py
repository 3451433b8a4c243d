"""CORS as a middleware: preflights answered here, the allow headers added to every answer.

Errors are answered here too, so a browser can read a 401 or a 429 instead of seeing an opaque
network failure. The rate-limit headers and `x-request-id` are exposed to scripts.
"""

from __future__ import annotations

from noroshi.config import CorsConfig
from noroshi.errors import Forbidden, NoroshiError
from noroshi.http.request import Request
from noroshi.http.response import Response
from noroshi.types import Middleware, Next

__all__ = ["cors"]

EXPOSED = ", ".join((
    "x-request-id",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
))  # fmt: skip


def cors(config: CorsConfig) -> Middleware:
    any_origin = "*" in config.allow_origins
    origins = frozenset(config.allow_origins)
    any_header = "*" in config.allow_headers
    methods = ", ".join(m.upper() for m in config.allow_methods)
    headers = ", ".join(config.allow_headers)
    credentials = config.allow_credentials

    def allow_origin(origin: str) -> str | None:
        if origin in origins:
            return origin
        return "*" if any_origin else None  # never with credentials: CorsConfig refuses that

    def common(allowed: str) -> list[tuple[str, str]]:
        out = [("access-control-allow-origin", allowed)]
        if allowed != "*":
            out.append(("vary", "Origin"))
        if credentials:
            out.append(("access-control-allow-credentials", "true"))
        return out

    def preflight(request: Request, origin: str) -> Response:
        allowed = allow_origin(origin)
        if allowed is None:
            raise Forbidden(f"The origin {origin} is not allowed.", code="cors_origin_forbidden")
        asked = request.headers.get("access-control-request-method", "").upper()
        if asked not in methods.split(", "):
            raise Forbidden(f"The method {asked} is not allowed by CORS.", code="cors_forbidden")
        allow_headers = headers
        if any_header:
            allow_headers = request.headers.get("access-control-request-headers", "")
        return Response(b"", 204, [
            *common(allowed),
            ("access-control-allow-methods", methods),
            ("access-control-allow-headers", allow_headers),
            ("access-control-max-age", str(config.max_age_s)),
        ])  # fmt: skip

    async def middleware(request: Request, call_next: Next) -> Response:
        origin = request.headers.get("origin")
        if origin is None:
            return await call_next()
        try:
            if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
                return preflight(request, origin)
            response = await call_next()
        except NoroshiError as exc:
            response = Response.error(exc)
        allowed = allow_origin(origin)
        if allowed is not None:
            response.headers.extend(common(allowed))
            response.headers.append(("access-control-expose-headers", EXPOSED))
        return response

    return middleware
