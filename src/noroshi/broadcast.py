"""A Redis pub/sub channel that every replica listens to: each message goes to a callback, and
a lost subscription is renewed every second until Redis answers again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["Channel"]

log = logging.getLogger("noroshi.broadcast")

RESUBSCRIBE_S = 1.0
PUBLISH_TIMEOUT_S = 2.0  # a stalled Redis fails a publish, rather than holding its caller


class Channel:
    def __init__(
        self,
        client: aioredis.Redis,
        name: str,
        on_message: Callable[[str], None],
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.on_message = on_message
        self.on_subscribed = on_subscribed  # messages may have been missed while away
        self.live = False  # subscribed now
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def publish(self, message: str) -> int:
        """How many subscribers (replicas) received it; TimeoutError past PUBLISH_TIMEOUT_S."""
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            return int(await self.client.publish(self.name, message))

    async def _listen(self) -> None:
        from redis.exceptions import RedisError  # loaded already: there is a client

        while True:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(self.name)
                    self.live = True
                    if self.on_subscribed is not None:
                        self.on_subscribed()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self.on_message(message["data"].decode())
            except (RedisError, OSError) as exc:
                if self.live:
                    log.warning("lost the Redis channel %s (%s); subscribing again", self.name, exc)
            self.live = False
            await asyncio.sleep(RESUBSCRIBE_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
