"""Where a run's events are kept beyond the process running it, so any replica can replay them
and follow the rest: a Redis stream per run when Redis is configured, else the database.

Writing never blocks the run: events are queued and written in batches by a task of the run's
own. A run's last event is `run.finished` or `error`; followers stop there.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

from noroshi.broadcast import Channel
from noroshi.errors import Unavailable
from noroshi.store.database import Database
from noroshi.wire import times

__all__ = ["TERMINAL", "DatabaseEvents", "EventStore", "EventWriter", "RedisEvents"]

log = logging.getLogger("noroshi.agent")

TERMINAL = frozenset(("run.finished", "error"))
KEEP_S = 24 * 3600  # how long a run's events stay joinable
POLL_S = 0.2  # how often a database follower looks for new events
MAX_FOLLOW_S = 3600.0  # a follower of a run that never ends gives up
BATCH = 500
REDIS_TIMEOUT_S = 2.0  # a stalled Redis fails a call, rather than holding a run

Row = tuple[int, str, dict[str, Any]]
Running = Callable[[], Awaitable[bool]]  # whether the run is still going (asked when idle)
_encode = times.encode  # a `run.waiting` event's `expires_at`, as ISO 8601
_decode = msgspec.json.Decoder(dict[str, Any])


class EventWriter:
    """Queues a run's events and writes them in order in the background."""

    def __init__(self, store: EventStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self._queue: list[Row] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._busy = False
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    def write(self, seq: int, type: str, data: dict[str, Any]) -> None:
        self._queue.append((seq, type, data))
        self._wake.set()

    async def close(self) -> None:
        """Write what is left; the run is over (here, at least)."""
        self._closed = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._task)

    async def flush(self) -> None:
        """Wait until every event written so far is kept (or could not be): a step is
        resumable from its events once they are."""
        while (self._queue or self._busy) and not self._task.done():
            self._idle.clear()
            await self._idle.wait()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                self._busy = True
                try:
                    await self.store.append(self.run_id, batch)
                except Exception as exc:  # a follower elsewhere misses them; the run goes on
                    log.warning("could not keep %d events of %s: %s", len(batch), self.run_id, exc)
                finally:
                    self._busy = False
            self._idle.set()
            if self._closed:
                return


class EventStore(abc.ABC):
    @abc.abstractmethod
    async def append(self, run_id: str, rows: list[Row]) -> None: ...

    @abc.abstractmethod
    def follow(self, run_id: str, after: int, running: Running) -> AsyncIterator[Row]:
        """Every kept event after `after`, then new ones, until the run's last (or until the
        run, no longer running, has nothing more)."""

    @abc.abstractmethod
    async def read(self, run_id: str) -> list[Row]:
        """Every event kept so far, at once: what a run resumed elsewhere starts from."""

    def writer(self, run_id: str) -> EventWriter:
        return EventWriter(self, run_id)

    async def ask_cancel(self, run_id: str) -> bool:
        """Ask the replica running `run_id` to cancel it; False where there is no way to."""
        return False

    def listen_cancels(self, cancel: Callable[[str], None]) -> None:
        """Call `cancel(run_id)` for each cancel another replica asks for."""
        return None

    async def close(self) -> None:
        return None


class RedisEvents(EventStore):
    """A Redis stream per run, entry ids `<seq>-0`, so a join asks for what follows an id."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as aioredis  # only when Redis is configured

        self.prefix = prefix
        self.client = aioredis.from_url(url, socket_timeout=None, socket_connect_timeout=2)
        self.failed = (aioredis.RedisError, OSError)
        self.cancels = Channel(self.client, f"{prefix}run-cancels", lambda _: None)

    async def ask_cancel(self, run_id: str) -> bool:
        try:
            return bool(await self.cancels.publish(run_id))
        except self.failed as exc:
            raise Unavailable(
                "The run's replica cannot be asked to cancel it (Redis is away); retry shortly.",
                retry_after=1.0,
            ) from exc

    def listen_cancels(self, cancel: Callable[[str], None]) -> None:
        self.cancels.on_message = cancel
        self.cancels.start()

    def _key(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}:events"

    async def append(self, run_id: str, rows: list[Row]) -> None:
        key = self._key(run_id)
        async with asyncio.timeout(REDIS_TIMEOUT_S), self.client.pipeline(False) as pipe:
            for seq, type, data in rows:
                pipe.xadd(key, {"t": type, "d": _encode(data)}, id=f"{seq}-0")
            pipe.expire(key, KEEP_S)
            await pipe.execute()

    async def read(self, run_id: str) -> list[Row]:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            entries: Any = await self.client.xrange(self._key(run_id))
        return [
            (
                int(entry_id.decode().split("-")[0]),
                fields[b"t"].decode(),
                _decode.decode(fields[b"d"]),
            )
            for entry_id, fields in entries
        ]

    async def follow(self, run_id: str, after: int, running: Running) -> AsyncIterator[Row]:
        key, last = self._key(run_id), f"{after}-0"
        loop = asyncio.get_running_loop()
        give_up = loop.time() + MAX_FOLLOW_S
        while loop.time() < give_up:
            async with asyncio.timeout(1.0 + REDIS_TIMEOUT_S):  # it blocks for 1 s itself
                answer: Any = await self.client.xread({key: last}, count=BATCH, block=1000)
            if not answer and not await running():
                return
            for _, entries in answer or ():
                for entry_id, fields in entries:  # bytes: the client does not decode
                    last = entry_id.decode()
                    type = fields[b"t"].decode()
                    yield int(last.split("-")[0]), type, _decode.decode(fields[b"d"])
                    if type in TERMINAL:
                        return

    async def close(self) -> None:
        await self.cancels.close()
        await self.client.aclose()


class DatabaseEvents(EventStore):
    """The `run_events` table; followers poll it."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def append(self, run_id: str, rows: list[Row]) -> None:
        await self.db.executemany(
            "INSERT INTO run_events (run_id, seq, type, data) VALUES (?, ?, ?, ?)",
            [(run_id, seq, type, _encode(data).decode()) for seq, type, data in rows],
        )

    async def read(self, run_id: str) -> list[Row]:
        rows = await self.db.fetch(
            "SELECT seq, type, data FROM run_events WHERE run_id = ? ORDER BY seq", (run_id,)
        )
        return [(int(seq), type, _decode.decode(data)) for seq, type, data in rows]

    async def follow(self, run_id: str, after: int, running: Running) -> AsyncIterator[Row]:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + MAX_FOLLOW_S
        while loop.time() < give_up:
            rows = await self.db.fetch(
                "SELECT seq, type, data FROM run_events WHERE run_id = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (run_id, after, BATCH),
            )
            for seq, type, data in rows:
                after = int(seq)
                yield after, type, _decode.decode(data)
                if type in TERMINAL:
                    return
            if not rows:
                if not await running():
                    return
                await asyncio.sleep(POLL_S)
