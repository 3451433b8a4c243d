"""An answer streamed into a chat: sent once, then edited as tokens arrive, no more often than
the platform allows, and cut into pages where it outgrows the platform's longest message."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from noroshi.channels.base import Channel, ChannelError, Inbound

__all__ = ["StreamedReply", "pages"]

log = logging.getLogger("noroshi.channels")

TYPING_EVERY_S = 4.0  # platforms show "typing…" for about five seconds
PLACEHOLDER = "…"


def pages(text: str, size: int) -> list[str]:
    """`text` in pieces of at most `size` characters, cut at a line or word break where one
    is in the second half of the piece."""
    out: list[str] = []
    while len(text) > size:
        cut = max(text.rfind("\n", size // 2, size), text.rfind(" ", size // 2, size))
        cut = cut if cut > 0 else size
        out.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    out.append(text)
    return out


class StreamedReply:
    """The text so far, shown by a task of its own every `interval` seconds, so a slow edit
    (a platform asking us to wait) never holds up the run."""

    def __init__(
        self,
        channel: Channel,  # type: ignore[type-arg]
        to: Inbound,
        handles: list[str],
        interval: float,
        on_sent: Callable[[], Awaitable[None]],
        sending: set[asyncio.Task[None]],
    ) -> None:
        self.channel = channel
        self.to = to
        self.handles = handles  # kept by the caller: the messages already sent, page by page
        self.interval = interval
        self.on_sent = on_sent
        self.sending = sending  # sends under way, which a shutdown waits for
        self.text = ""
        self._shown: list[str | None] = [None] * len(handles)  # unknown after a restart
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def stop(self) -> None:
        """No more edits on the clock: the answer is complete, or abandoned."""
        if self._ticker is not None:
            self._ticker.cancel()

    async def finish(self, text: str) -> None:
        """Show the whole answer; raises ChannelError when the platform will not take it."""
        self.stop()
        if self._ticker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self.text = text
        await self._show(final=True)

    async def _tick(self) -> None:
        typed = 0.0
        while True:
            if not self.handles and time.monotonic() - typed >= TYPING_EVERY_S:
                typed = time.monotonic()
                with contextlib.suppress(ChannelError):
                    await self.channel.typing(self.to)
            await asyncio.sleep(self.interval if self.handles else min(self.interval, 1.0))
            if self.text:
                try:
                    await self._show(final=False)
                except ChannelError as exc:  # the final edit tries again
                    log.warning("channel %s: an edit failed: %s", self.channel.name, exc)

    async def _show(self, final: bool) -> None:
        async with self._lock:
            text = self.text if final else self.text + " " + PLACEHOLDER
            for i, page in enumerate(pages(text.strip() or PLACEHOLDER, self.channel.max_text)):
                if i < len(self.handles):
                    if self._shown[i] != page:
                        await self.channel.edit(self.to, self.handles[i], page)
                else:
                    send = asyncio.ensure_future(self._send(page, i))
                    self.sending.add(send)
                    send.add_done_callback(self.sending.discard)
                    await asyncio.shield(send)
                self._shown[i] = page

    async def _send(self, page: str, i: int) -> None:
        """A new message and the record of its id, as one step that a cancel does not cut:
        cut between the two, a restart would send the page again."""
        self.handles.append(await self.channel.send(self.to, page, i))
        self._shown.append(None)
        await self.on_sent()
