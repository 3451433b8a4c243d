"""Method and path to a route: a dict for static paths, a short list for `{param}` paths.

Each route says who may call it (`access`), so the auth guard reads one field instead of a
list of path prefixes that could drift from the routes themselves. WebSocket routes live in
a table of their own: a handshake is a GET, and must never reach an HTTP handler.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from noroshi.errors import MethodNotAllowed, NotFound
from noroshi.types import Handler
from noroshi.wire.endpoints import Access, Endpoint

if TYPE_CHECKING:
    from noroshi.http.websocket import WebSocketHandler

__all__ = ["Access", "Route", "Router", "WebSocketRoute"]

_PARAM = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)\}")


class Route:
    __slots__ = ("access", "handler", "path")

    def __init__(self, path: str, handler: Handler, access: Access) -> None:
        self.path = path  # the pattern, a bounded label for metrics
        self.handler = handler
        self.access = access


class WebSocketRoute:
    __slots__ = ("access", "handler", "path")

    def __init__(self, path: str, handler: WebSocketHandler, access: Access) -> None:
        self.path = path
        self.handler = handler
        self.access = access


class Router:
    def __init__(self) -> None:
        self._static: dict[str, dict[str, Route]] = {}
        self._dynamic: list[tuple[re.Pattern[str], dict[str, Route]]] = []
        self._ws_static: dict[str, WebSocketRoute] = {}
        self._ws_dynamic: list[tuple[re.Pattern[str], WebSocketRoute]] = []
        self.endpoints: list[Endpoint] = []  # what the API documents, in the order served

    def serve(self, endpoint: Endpoint, handler: Handler) -> None:
        """Route a public endpoint of the API table to `handler`."""
        self.add(endpoint.method, endpoint.path, handler, endpoint.access)
        self.endpoints.append(endpoint)

    def add(self, method: str, path: str, handler: Handler, access: Access) -> None:
        route = Route(path, handler, access)
        if "{" not in path:
            self._static.setdefault(path, {})[method] = route
            return
        pattern = _compile(path)
        for existing, methods in self._dynamic:
            if existing.pattern == pattern.pattern:
                methods[method] = route
                return
        self._dynamic.append((pattern, {method: route}))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        methods = self._static.get(path)
        params: dict[str, str] = {}
        if methods is None:
            for pattern, candidate in self._dynamic:
                m = pattern.match(path)
                if m is not None:
                    methods, params = candidate, m.groupdict()
                    break
            else:
                raise NotFound(f"Unknown route: {method} {path}")
        route = methods.get(method)
        if route is None:
            allowed = ", ".join(sorted(methods))
            raise MethodNotAllowed(
                f"Method {method} is not allowed on {path}; use {allowed}.",
                headers={"allow": allowed},
            )
        return route, params

    def add_websocket(self, path: str, handler: WebSocketHandler, access: Access = "key") -> None:
        route = WebSocketRoute(path, handler, access)
        if "{" not in path:
            self._ws_static[path] = route
            return
        pattern = _compile(path)
        self._ws_dynamic = [(p, r) for p, r in self._ws_dynamic if p.pattern != pattern.pattern]
        self._ws_dynamic.append((pattern, route))

    def match_websocket(self, path: str) -> tuple[WebSocketRoute, dict[str, str]]:
        route = self._ws_static.get(path)
        if route is not None:
            return route, {}
        for pattern, candidate in self._ws_dynamic:
            m = pattern.match(path)
            if m is not None:
                return candidate, m.groupdict()
        raise NotFound(f"Unknown WebSocket route: {path}")


def _compile(path: str) -> re.Pattern[str]:
    return re.compile("^" + _PARAM.sub(r"(?P<\1>[^/]+)", path) + "$")
