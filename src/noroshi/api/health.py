"""`GET /health`: liveness, and what is running: version, runtime, role, auth, default models;
`GET /metrics`: Prometheus metrics. Both public: load balancers and scrapers carry no key."""

from __future__ import annotations

import platform
import time
from typing import Literal, Protocol

from noroshi import __version__
from noroshi.auth import Authenticator
from noroshi.config import Config
from noroshi.http import JSONResponse, Request, Response, Router
from noroshi.metrics import CONTENT_TYPE_LATEST, Metrics
from noroshi.providers.base import Provider
from noroshi.providers.router import ProviderRouter
from noroshi.wire import endpoints as api
from noroshi.wire.service import DefaultModels, Health, Runtime


class Services(Protocol):
    """What this route uses of the application."""

    auth: Authenticator
    config: Config
    draining: bool
    metrics: Metrics
    models: ProviderRouter
    providers: dict[str, Provider]
    role: Literal["all", "edge", "core"]
    server: str
    started: float


def install(router: Router, app: Services) -> None:
    python = platform.python_version()

    async def health(request: Request) -> Response:
        defaults = app.config.defaults
        return JSONResponse(
            Health(
                status="draining" if app.draining else "ok",
                version=__version__,
                uptime_s=round(time.monotonic() - app.started, 3),
                runtime=Runtime(python=python, server=app.server, role=app.role),
                auth="on" if app.auth.enabled else "off (no master key; loopback only)",
                models=DefaultModels(
                    chat=defaults.chat_model or next(iter(app.models.routes), None),
                    embedding=defaults.embedding_model or None,
                ),
                providers={name: p.describe() for name, p in app.providers.items()},
            )
        )

    async def metrics(request: Request) -> Response:
        return Response(app.metrics.render(), headers=[("content-type", CONTENT_TYPE_LATEST)])

    router.serve(api.HEALTH, health)
    router.serve(api.METRICS, metrics)
