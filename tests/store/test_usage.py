from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from noroshi.store.database import Database, Row
from noroshi.store.usage import UsageLog, UsageRecord
from noroshi.wire.times import Timestamp

DAY1 = datetime(2025, 3, 1, 23, 59, 59, tzinfo=UTC).timestamp()
DAY2 = datetime(2025, 3, 2, 0, 0, 1, tzinfo=UTC).timestamp()


def rec(n: int = 0, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": f"req_{n}",
        "key_id": "key_a",
        "model": "fast",
        "deployment": "up/m1",
        "route": "/v1/chat/completions",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost": 0.25,
        "ttft_ms": 12.5,
        "duration_ms": 80.0,
        "created_at": Timestamp(DAY1 + n * 0.001),
    }
    return UsageRecord(**{**values, **fields})


async def count(db: Database) -> int:
    row = await db.fetchone("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM usage")
    assert row is not None and row[0] == row[1], "a record was written twice"
    return int(row[0])


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within 5 s")


def written(db: Database, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await count(db) == n

    return check


@pytest.fixture
async def usage(db: Database) -> AsyncIterator[UsageLog]:
    log = UsageLog(db, batch_size=10, flush_interval_s=60)
    yield log
    await log.close()


class Flaky(Database):
    """The real database, whose writes fail while `down`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.dialect = db.dialect
        self.down = False
        self.attempts = 0

    def _check(self) -> None:
        self.attempts += 1
        if self.down:
            raise ConnectionResetError("database away")

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        self._check()
        await self.db.execute(sql, args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._check()
        await self.db.executemany(sql, rows)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return await self.db.fetch(sql, args)

    async def close(self) -> None:
        await self.db.close()

    def refuses(self, exc: BaseException) -> bool:
        return self.db.refuses(exc)

    def _migration_transaction(self) -> Any:
        raise NotImplementedError


async def test_records_round_trip(usage: UsageLog, db: Database) -> None:
    records = [rec(0), rec(1, key_id=None, ttft_ms=None, status=499, outcome="cut")]
    for r in records:
        usage.record(r)
    assert await usage.query() == []  # queued, not written yet
    await usage.flush()
    rows = await usage.query()
    assert rows == list(reversed(records))  # newest first
    assert [type(v) for v in msgspec.structs.astuple(rows[1])] == [
        str,
        str,
        str,
        str,
        str,
        int,
        int,
        int,
        int,
        int,
        float,
        float,
        float,
        int,
        str,
        Timestamp,
    ]
    assert await db.fetch("SELECT day FROM usage") == [("2025-03-01",)] * 2


async def test_full_batches_are_written_without_waiting(db: Database) -> None:
    log = UsageLog(db, batch_size=10, flush_interval_s=60)
    log.start()
    try:
        for n in range(10):
            log.record(rec(n))
        await eventually(written(db, 10))
        for n in range(10, 13):
            log.record(rec(n))
        await asyncio.sleep(0.1)
        assert await count(db) == 10 and log.pending == 3  # no full batch: they wait
    finally:
        await log.close()
    assert await count(db) == 13


async def test_a_partial_batch_waits_for_the_interval(db: Database) -> None:
    log = UsageLog(db, batch_size=1000, flush_interval_s=0.1)
    log.start()
    try:
        for n in range(3):
            log.record(rec(n))
        assert await count(db) == 0
        await eventually(written(db, 3))
    finally:
        await log.close()


async def test_close_writes_every_record(db: Database) -> None:
    log = UsageLog(db, batch_size=100, flush_interval_s=0.01, max_pending=1000)
    log.start()

    async def client(first: int) -> None:
        for n in range(first, first + 1000):
            log.record(rec(n))
            if n % 50 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(client(i * 1000) for i in range(5)))
    await log.close()
    assert log.pending == 0
    assert await count(db) == 5000
    with pytest.raises(RuntimeError, match="closed"):
        log.record(rec(99_999))


async def test_a_full_queue_says_so_and_never_drops(db: Database) -> None:
    log = UsageLog(db, batch_size=5, flush_interval_s=60, max_pending=20)
    for n in range(19):
        log.record(rec(n))
    assert not log.full
    log.record(rec(19))
    assert log.full  # admission refuses new work now
    log.record(rec(20))  # a request already running is still billed
    assert log.pending == 21
    await log.flush()
    assert not log.full
    await log.close()
    assert await count(db) == 21


async def test_failed_writes_are_kept_and_tried_again(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = Flaky(db)
    log = UsageLog(flaky, batch_size=10, flush_interval_s=0.02)
    flaky.down = True
    log.start()
    for n in range(35):
        log.record(rec(n))

    async def tried() -> bool:
        return flaky.attempts >= 3

    await eventually(tried)
    assert log.pending == 35 and await count(db) == 0
    with pytest.raises(ConnectionResetError):
        await log.flush()  # what /admin/usage sees while the database is away
    flaky.down = False
    await eventually(written(db, 35))
    await log.close()
    assert await count(db) == 35
    assert "could not write 35 usage records" in caplog.text


async def test_close_retries_then_says_what_is_lost(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = Flaky(db)
    log = UsageLog(flaky, batch_size=10, flush_interval_s=0.01)
    for n in range(3):
        log.record(rec(n))
    flaky.down = True
    with caplog.at_level(logging.ERROR, logger="noroshi.usage"):
        await log.close()
    assert flaky.attempts == 3
    assert "lost 3 usage records" in caplog.text


async def test_a_record_the_database_refuses_is_dropped_alone(
    usage: UsageLog, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(6):
        usage.record(rec(n, prompt_tokens=2**70 if n == 2 else 10))
    with caplog.at_level(logging.ERROR, logger="noroshi.usage"):
        await usage.flush()
    assert usage.pending == 0
    assert sorted(r.request_id for r in await usage.query()) == [
        f"req_{n}" for n in (0, 1, 3, 4, 5)
    ]
    assert "dropping a usage record" in caplog.text and "req_2" in caplog.text


async def test_query_filters(usage: UsageLog) -> None:
    usage.record(rec(0, key_id="key_a", model="fast", created_at=100.0))
    usage.record(rec(1, key_id="key_b", model="fast", created_at=200.0))
    usage.record(rec(2, key_id="key_a", model="smart", created_at=300.0))
    usage.record(rec(3, key_id=None, model="smart", created_at=400.0))
    await usage.flush()

    async def ids(**filters: Any) -> list[str]:
        return [r.request_id for r in await usage.query(**filters)]  # type: ignore[union-attr]

    assert await ids() == ["req_3", "req_2", "req_1", "req_0"]
    assert await ids(key_id="key_a") == ["req_2", "req_0"]
    assert await ids(model="smart") == ["req_3", "req_2"]
    assert await ids(key_id="key_a", model="fast") == ["req_0"]
    assert await ids(since=200.0) == ["req_3", "req_2", "req_1"]
    assert await ids(until=300.0) == ["req_1", "req_0"]
    assert await ids(since=150.0, until=350.0) == ["req_2", "req_1"]
    assert await ids(limit=2) == ["req_3", "req_2"]
    assert await ids(key_id="key_none") == []


async def test_query_grouped(usage: UsageLog) -> None:
    records = [
        rec(0, key_id="key_b", model="fast", created_at=DAY1, cost=0.5),
        rec(1, key_id="key_a", model="smart", created_at=DAY1, prompt_tokens=100),
        rec(2, key_id="key_a", model="fast", created_at=DAY2, status=502, outcome="error"),
        rec(3, key_id=None, model="fast", created_at=DAY2, completion_tokens=7),
    ]
    for r in records:
        usage.record(r)
    await usage.flush()

    def totals(
        prompt: int, completion: int, cost: float, requests: int, errors: int
    ) -> dict[str, Any]:
        return {
            "requests": requests,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "cost": pytest.approx(cost),
            "errors": errors,
        }

    async def grouped(**filters: Any) -> list[dict[str, Any]]:
        rows = await usage.query(**filters)
        return [{k: v for k, v in msgspec.structs.asdict(r).items() if v is not None} for r in rows]

    assert await grouped(group_by="key") == [
        {"key_id": "key_a", **totals(110, 10, 0.5, 2, 1)},
        {"key_id": "key_b", **totals(10, 5, 0.5, 1, 0)},
        {**totals(10, 7, 0.25, 1, 0)},  # no key (auth off) comes last
    ]
    assert await grouped(group_by="model") == [
        {"model": "fast", **totals(30, 17, 1.0, 3, 1)},
        {"model": "smart", **totals(100, 5, 0.25, 1, 0)},
    ]
    assert await grouped(group_by="day") == [
        {"day": "2025-03-01", **totals(110, 10, 0.75, 2, 0)},
        {"day": "2025-03-02", **totals(20, 12, 0.5, 2, 1)},
    ]
    # filters apply before grouping
    assert await grouped(group_by="day", key_id="key_a", since=DAY2) == [
        {"day": "2025-03-02", **totals(10, 5, 0.25, 1, 1)},
    ]
    assert await grouped(group_by="model", limit=1) == [
        {"model": "fast", **totals(30, 17, 1.0, 3, 1)},
    ]
    assert await grouped(group_by="key", model="none") == []
    with pytest.raises(ValueError, match="group_by"):
        await usage.query(group_by="color")


async def test_spent(usage: UsageLog) -> None:
    assert await usage.spent("key_a", 0) == (0, 0.0)
    usage.record(rec(0, created_at=100.0, prompt_tokens=3, completion_tokens=4, cost=0.1))
    usage.record(rec(1, created_at=200.0, prompt_tokens=5, completion_tokens=6, cost=0.2))
    usage.record(rec(2, key_id="key_b", created_at=200.0))
    await usage.flush()
    tokens, cost = await usage.spent("key_a", 0)
    assert tokens == 18 and cost == pytest.approx(0.3)
    assert type(tokens) is int and type(cost) is float
    tokens, cost = await usage.spent("key_a", 150.0)
    assert tokens == 11 and cost == pytest.approx(0.2)
    assert await usage.spent("key_a", 250.0) == (0, 0.0)


async def test_token_kinds_are_kept_and_summed(usage: UsageLog) -> None:
    usage.record(rec(1, cache_read_tokens=6, cache_write_tokens=2, reasoning_tokens=3))
    usage.record(rec(2, cache_read_tokens=1, reasoning_tokens=1))
    await usage.flush()
    rows = await usage.query()
    assert [(r.cache_read_tokens, r.cache_write_tokens, r.reasoning_tokens) for r in rows] == [
        (1, 0, 1),
        (6, 2, 3),
    ]
    (total,) = await usage.query(group_by="model")
    assert (total.cache_read_tokens, total.cache_write_tokens, total.reasoning_tokens) == (7, 2, 4)
