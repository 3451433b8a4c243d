"""`GET /openapi.json`, generated once from the routes this process serves, and `GET /docs`,
a page that renders it with no script or font from anywhere else: its policy allows its own
inline script and style, by hash."""

from __future__ import annotations

from importlib.resources import files

import msgspec

from noroshi import __version__
from noroshi.http import Request, Response, Router
from noroshi.http.security import inline_sources, security_headers
from noroshi.openapi import openapi
from noroshi.wire import endpoints as api

_PAGE = files("noroshi") / "static" / "docs.html"


def install(router: Router) -> None:
    """Install last: the description covers every route installed before it."""
    spec: bytes | None = None
    page = _PAGE.read_bytes()
    page_headers = [
        ("content-type", "text/html; charset=utf-8"),
        # the page's own inline script and style, by hash; its fetch of the description
        *security_headers(
            f"script-src {inline_sources(page, 'script')}",
            f"style-src {inline_sources(page, 'style')}",
            "connect-src 'self'",
        ),
    ]
    json_headers = [("content-type", "application/json"), *security_headers()]

    async def openapi_json(request: Request) -> Response:
        nonlocal spec
        if spec is None:
            spec = msgspec.json.encode(openapi(router.endpoints, __version__))
        return Response(spec, headers=list(json_headers))

    async def docs(request: Request) -> Response:
        return Response(page, headers=list(page_headers))

    router.serve(api.OPENAPI, openapi_json)
    router.serve(api.DOCS, docs)
