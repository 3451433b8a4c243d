"""`GET /health`: liveness and what is running."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from noroshi import __version__
from noroshi.http import JSONResponse, Request, Response, Router

if TYPE_CHECKING:
    from noroshi.app import App


def install(router: Router, app: App) -> None:
    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "draining" if app.draining else "ok",
                "version": __version__,
                "uptime_s": round(time.monotonic() - app.started, 3),
            }
        )

    router.add("GET", "/health", health)
