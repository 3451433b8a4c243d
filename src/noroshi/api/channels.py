"""`POST /channels/<name>`: the webhook each platform calls. It is public: the channel's
plugin verifies the platform's signature or secret before anything is read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from noroshi.http import Request, Response, Router

if TYPE_CHECKING:
    from noroshi.channels.gateway import ChannelGateway  # loaded only when channels are set

__all__ = ["install"]


class Services(Protocol):
    """What these routes use of the application."""

    channels: ChannelGateway | None


def install(router: Router, app: Services) -> None:
    gateway = app.channels
    if gateway is None:
        return

    async def webhook(request: Request) -> Response:
        return await gateway.receive(request.params["name"], request)

    router.add("POST", "/channels/{name}", webhook, access="public")
