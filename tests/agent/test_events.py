"""The shared run event stores: what one writer keeps, a follower elsewhere replays in order,
then follows to the run's last event; a run that died without one does not hold it forever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from noroshi.agent.events import DatabaseEvents, EventStore, RedisEvents
from noroshi.store.database import open_database


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def where(request: pytest.FixtureRequest) -> tuple[str, str | None, str]:
    """Which store, and its URL (and Redis key prefix)."""
    if request.param == "redis":
        return (
            "redis",
            request.getfixturevalue("redis_url"),
            request.getfixturevalue("redis_prefix"),
        )
    if request.param == "postgresql":
        return "db", request.getfixturevalue("postgres_url"), ""
    return "db", None, ""


@pytest.fixture
async def store(where: tuple[str, str | None, str], tmp_path: Path) -> AsyncIterator[EventStore]:
    kind, url, prefix = where
    if kind == "redis":
        assert url is not None
        events: EventStore = RedisEvents(url, prefix)
        yield events
        await events.close()
        return
    db = await open_database(url, tmp_path)
    yield DatabaseEvents(db)
    await db.close()


async def still_running() -> bool:
    return True


async def stopped() -> bool:
    return False


async def test_follow_replays_then_follows_to_the_end(store: EventStore) -> None:
    writer = store.writer("run_a")
    writer.write(1, "run.started", {"run_id": "run_a"})
    writer.write(2, "text.delta", {"text": "Hel"})

    async def follow(after: int) -> list[tuple[int, str, dict]]:
        return [row async for row in store.follow("run_a", after, still_running)]

    follower = asyncio.create_task(follow(0))
    resumed = asyncio.create_task(follow(2))
    await asyncio.sleep(0.3)
    assert not follower.done()  # waiting for more
    writer.write(3, "text.delta", {"text": "lo"})
    writer.write(4, "run.finished", {"status": "completed"})
    await writer.close()
    rows = await asyncio.wait_for(follower, 10)
    assert [r[0] for r in rows] == [1, 2, 3, 4] and rows[2] == (3, "text.delta", {"text": "lo"})
    assert await asyncio.wait_for(resumed, 10) == rows[2:]


async def test_a_run_that_ended_without_its_last_event_is_not_waited_on(store: EventStore) -> None:
    writer = store.writer("run_b")
    writer.write(1, "run.started", {})
    await writer.close()
    rows = [row async for row in store.follow("run_b", 0, stopped)]
    assert [r[0] for r in rows] == [1]
