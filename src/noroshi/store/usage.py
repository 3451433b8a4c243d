"""Usage records: one per model request, queued in memory and written in batches by a
background task, so a request never waits on the database to be billed.

`record` never waits, so a request that ends is billed even while its task is being
cancelled. The queue is bounded by refusing new work instead: once `max_pending` records wait
(the database has been away a long time), `full` says so and admission answers 503, while the
requests already running still add theirs. A batch that fails stays queued and is tried again.
Only a record the database can never take (a token count past 64 bits, say) is logged and
dropped, so that one bad record cannot stall the rest. A process killed outright loses what
is queued: at most `flush_interval_s` of records while the database is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any

from noroshi.errors import StoreUnavailable
from noroshi.store.database import Database
from noroshi.wire.admin import UsageRecord, UsageTotals
from noroshi.wire.times import Timestamp

__all__ = ["GROUPS", "UsageLog", "UsageRecord"]

log = logging.getLogger("noroshi.usage")

MAX_RETRY_DELAY_S = 5.0
CLOSE_ATTEMPTS = 3


_FIELDS = UsageRecord.__struct_fields__
_INSERT = (
    f"INSERT INTO usage ({', '.join(_FIELDS)}, day) VALUES ({', '.join('?' * (len(_FIELDS) + 1))})"
)
# the column each grouping is by
GROUPS = {"key": "key_id", "model": "model", "day": "day"}
_TOTALS = (
    "COUNT(*), CAST(SUM(prompt_tokens) AS BIGINT), CAST(SUM(completion_tokens) AS BIGINT), "
    "CAST(SUM(cache_read_tokens) AS BIGINT), CAST(SUM(cache_write_tokens) AS BIGINT), "
    "CAST(SUM(reasoning_tokens) AS BIGINT), "
    "SUM(cost), SUM(CASE WHEN outcome = 'error' THEN 1 ELSE 0 END)"
)


def _row(r: UsageRecord) -> tuple[Any, ...]:
    """The columns, in the types each driver binds; the day is kept so that grouping by it is
    the same plain SQL on both dialects."""
    day = _day(int(r.created_at // 86_400))
    ttft = None if r.ttft_ms is None else float(r.ttft_ms)
    return (
        r.request_id,
        r.key_id,
        r.model,
        r.deployment,
        r.route,
        int(r.prompt_tokens),
        int(r.completion_tokens),
        int(r.cache_read_tokens),
        int(r.cache_write_tokens),
        int(r.reasoning_tokens),
        float(r.cost),
        ttft,
        float(r.duration_ms),
        int(r.status),
        r.outcome,
        float(r.created_at),
        day,
    )


def _record(row: tuple[Any, ...]) -> UsageRecord:
    fields = dict(zip(_FIELDS, row, strict=True))
    fields["created_at"] = Timestamp(fields["created_at"])
    return UsageRecord(**fields)


@functools.lru_cache(maxsize=4)
def _day(days: int) -> str:
    """The UTC date of a day number since the epoch: formatted once per day, not per row."""
    return time.strftime("%Y-%m-%d", time.gmtime(days * 86_400))


class UsageLog:
    def __init__(
        self,
        db: Database,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        max_pending: int = 50_000,
    ) -> None:
        self.db = db
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_pending = max(max_pending, batch_size)
        self._pending: list[UsageRecord] = []
        self._writing = asyncio.Lock()  # one writer at a time: a batch is never written twice
        self._wake = asyncio.Event()  # a full batch is waiting, or the log is closing
        self._stopping = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        """Whether the backlog is at its bound: take no new work that would add to it."""
        return len(self._pending) >= self.max_pending

    def start(self) -> None:
        """Start writing in the background (without it, only `flush` writes)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="noroshi-usage")

    def record(self, rec: UsageRecord) -> None:
        """Queue a record."""
        if self._closed:
            raise RuntimeError("the usage log is closed")
        self._pending.append(rec)
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    async def flush(self) -> None:
        """Write every queued record now; raises if the database fails (they stay queued)."""
        async with self._writing:
            while self._pending:
                batch = self._pending[: self.batch_size]
                try:
                    await self.db.executemany(_INSERT, [_row(r) for r in batch])
                except Exception as exc:
                    if not self.db.refuses(exc):
                        raise
                    await self._one_by_one(len(batch))
                else:
                    # only the writer takes from the front; `record` appends at the back
                    del self._pending[: len(batch)]

    async def _one_by_one(self, count: int) -> None:
        """A record in the next batch can never be written: write them alone, dropping it."""
        for _ in range(count):
            rec = self._pending[0]
            try:
                await self.db.execute(_INSERT, _row(rec))
            except Exception as exc:
                if not self.db.refuses(exc):
                    raise
                log.error("dropping a usage record the database refuses (%s): %r", exc, rec)
            del self._pending[0]

    async def close(self) -> None:
        """Stop the task and write what is queued; no record is lost unless the database
        stays down through every attempt."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task  # not cancelled: a batch half-written would be written again
            self._task = None
        delay = self.flush_interval_s
        for attempt in range(1, CLOSE_ATTEMPTS + 1):
            try:
                await self.flush()
                break
            except Exception:
                if attempt == CLOSE_ATTEMPTS:
                    log.exception("lost %d usage records: the database failed", self.pending)
                    break
                log.warning("could not write usage records; retrying", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
        self._closed = True
        self._pending.clear()

    async def _run(self) -> None:
        delay = 0.0  # after a failure: how long to wait before trying again
        while not self._stopping.is_set():
            if delay:
                # a full batch does not cut the wait short: that would hammer a failing database
                await _wait(self._stopping, delay)
            elif len(self._pending) < self.batch_size:
                self._wake.clear()
                await _wait(self._wake, self.flush_interval_s)
            if self._stopping.is_set():
                return
            try:
                await self.flush()
                delay = 0.0
            except StoreUnavailable as exc:
                log.warning(
                    "could not write %d usage records (%s); keeping them", self.pending, exc.reason
                )
                delay = min(max(delay * 2, self.flush_interval_s), MAX_RETRY_DELAY_S)
            except Exception:
                log.warning(
                    "could not write %d usage records; keeping them", self.pending, exc_info=True
                )
                delay = min(max(delay * 2, self.flush_interval_s), MAX_RETRY_DELAY_S)

    async def query(
        self,
        key_id: str | None = None,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        group_by: str | None = None,
        limit: int = 1000,
    ) -> list[UsageRecord] | list[UsageTotals]:
        """Written records from `since` (inclusive) to `until` (exclusive), newest first; or,
        with `group_by` "key", "model" or "day" (UTC), their totals per group, in its order."""
        where: list[str] = []
        args: list[Any] = []
        for condition, value in (
            ("key_id = ?", key_id),
            ("model = ?", model),
            ("created_at >= ?", since),
            ("created_at < ?", until),
        ):
            if value is not None:
                where.append(condition)
                args.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        args.append(limit)
        if group_by is None:
            rows = await self.db.fetch(
                f"SELECT {', '.join(_FIELDS)} FROM usage{clause} ORDER BY created_at DESC LIMIT ?",
                args,
            )
            return [_record(row) for row in rows]
        column = GROUPS.get(group_by)
        if column is None:
            raise ValueError(f"group_by must be one of {', '.join(GROUPS)}, not {group_by!r}")
        # `IS NULL` first: NULL (no key) sorts last on both dialects
        rows = await self.db.fetch(
            f"SELECT {column}, {_TOTALS} FROM usage{clause} "
            f"GROUP BY {column} ORDER BY {column} IS NULL, {column} LIMIT ?",
            args,
        )
        return [
            UsageTotals(
                **{column: group},
                requests=int(requests),
                prompt_tokens=int(prompt),
                completion_tokens=int(completion),
                total_tokens=int(prompt) + int(completion),
                cache_read_tokens=int(read),
                cache_write_tokens=int(written),
                reasoning_tokens=int(reasoning),
                cost=float(cost),
                errors=int(errors),
            )
            for group, requests, prompt, completion, read, written, reasoning, cost, errors in rows
        ]

    async def spent(self, key_id: str, since: float) -> tuple[int, float]:
        """Tokens and cost of a key's written records since `since`: where budget counters
        start after a restart."""
        row = await self.db.fetchone(
            "SELECT CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT), "
            "COALESCE(SUM(cost), 0) FROM usage WHERE key_id = ? AND created_at >= ?",
            (key_id, since),
        )
        assert row is not None  # an aggregate always has its row
        return int(row[0]), float(row[1])


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` have passed."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
