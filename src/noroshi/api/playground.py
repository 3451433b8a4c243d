"""`GET /`: the playground and console, a page of plain HTML, CSS and ES modules shipped in the
package (`static/playground/`), with no build step and nothing fetched from anywhere else;
`GET /playground/{asset}` serves its files. Pages, not API: they are not in the endpoint table.

The files are read once, at install; each answer carries a strong ETag, so `no-cache` costs a
304 and not the file. The content security policy allows this origin only, which also keeps a
stray remote font or script from ever loading.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files

from noroshi.errors import NotFound
from noroshi.http import Request, Response, Router
from noroshi.http.security import security_headers

_DIR = files("noroshi") / "static" / "playground"

PAGE = "index.html"  # served at `/` only: its URLs are relative to `/`

# the files the page loads, and nothing else: a name is never joined to a path
ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

SECURITY = security_headers(
    "script-src 'self'", "style-src 'self'", "img-src 'self' data:", "connect-src 'self'"
)


class _Asset:
    __slots__ = ("body", "etag", "headers")

    def __init__(self, body: bytes, media: str) -> None:
        self.body = body
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        self.headers = [
            ("content-type", media),
            ("cache-control", "no-cache"),
            ("etag", self.etag),
            *SECURITY,
        ]

    def answer(self, request: Request) -> Response:
        if _matches(request.headers.get("if-none-match"), self.etag):
            return Response(b"", 304, [("etag", self.etag), ("cache-control", "no-cache")])
        return Response(self.body, headers=list(self.headers))


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    return any(tag.strip().removeprefix("W/") in (etag, "*") for tag in header.split(","))


def install(router: Router) -> None:
    index = _Asset((_DIR / PAGE).read_bytes(), "text/html; charset=utf-8")
    assets = {name: _Asset((_DIR / name).read_bytes(), media) for name, media in ASSETS.items()}

    async def page(request: Request) -> Response:
        return index.answer(request)

    async def asset(request: Request) -> Response:
        name = request.params["asset"]
        found = assets.get(name)
        if found is None:
            raise NotFound(f"No playground file '{name}'.")
        return found.answer(request)

    router.add("GET", "/", page, access="public")
    router.add("GET", "/playground/{asset}", asset, access="public")
