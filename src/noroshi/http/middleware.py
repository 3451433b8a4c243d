"""Middleware is a plain `async def mw(request, next) -> Response`; `compose` chains them."""

from __future__ import annotations

from collections.abc import Sequence

from noroshi.http.request import Request
from noroshi.http.response import Response
from noroshi.types import Handler, Middleware

__all__ = ["compose"]


def compose(middleware: Sequence[Middleware], endpoint: Handler) -> Handler:
    """One handler that runs `middleware` in order around `endpoint`."""
    if not middleware:
        return endpoint
    chain = tuple(middleware)

    async def handle(request: Request) -> Response:
        index = -1

        async def dispatch(i: int) -> Response:
            nonlocal index
            if i <= index:
                raise RuntimeError("next() called multiple times")
            index = i
            if i == len(chain):
                return await endpoint(request)
            return await chain[i](request, lambda: dispatch(i + 1))

        return await dispatch(0)

    return handle
