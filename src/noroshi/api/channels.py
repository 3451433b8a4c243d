"""`POST /channels/<name>`: the webhook each platform calls. It is public: the channel's
plugin verifies the platform's signature or secret before anything is read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from noroshi.http import Request, Response, Router

if TYPE_CHECKING:
    from noroshi.app import App

__all__ = ["install"]


def install(router: Router, app: App) -> None:
    gateway = app.channels
    if gateway is None:
        return

    async def webhook(request: Request) -> Response:
        return await gateway.receive(request.params["name"], request)

    router.add("POST", "/channels/{name}", webhook, access="public")
