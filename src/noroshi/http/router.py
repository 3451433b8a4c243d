"""Method and path to handler: a dict for static paths, a short list for `{param}` paths."""

from __future__ import annotations

import re

from noroshi.errors import MethodNotAllowed, NotFound
from noroshi.types import Handler

__all__ = ["Router"]

_PARAM = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)\}")


class Router:
    def __init__(self) -> None:
        self._static: dict[str, dict[str, Handler]] = {}
        self._dynamic: list[tuple[re.Pattern[str], dict[str, Handler]]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        if "{" not in path:
            self._static.setdefault(path, {})[method] = handler
            return
        pattern = re.compile("^" + _PARAM.sub(r"(?P<\1>[^/]+)", path) + "$")
        for existing, methods in self._dynamic:
            if existing.pattern == pattern.pattern:
                methods[method] = handler
                return
        self._dynamic.append((pattern, {method: handler}))

    def route(self, method: str, path: str) -> Handler:
        """The decorator form of `add`."""

        def register(handler: Handler) -> Handler:
            self.add(method, path, handler)
            return handler

        return register  # type: ignore[return-value]

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
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
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(sorted(methods))
            raise MethodNotAllowed(
                f"Method {method} is not allowed on {path}; use {allowed}.",
                headers={"allow": allowed},
            )
        return handler, params
