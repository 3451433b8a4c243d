"""What `GET /health` answers."""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct

__all__ = ["DefaultModels", "Health", "Runtime"]


class Runtime(Struct, kw_only=True):
    python: str
    server: str  # "noroshi http/1.1 (uvloop)", "uvicorn (asgi)"…
    role: Literal["all", "edge", "core"]


class DefaultModels(Struct, kw_only=True):
    chat: str | None
    embedding: str | None


class Health(Struct, kw_only=True):
    status: Literal["ok", "draining"]
    version: str
    uptime_s: float
    runtime: Runtime
    auth: str  # "on", or why it is off
    models: DefaultModels
    providers: dict[str, Any]
