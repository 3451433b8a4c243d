"""A schedule fires each occurrence once across a fleet: three replicas run its clock, one of
them takes each occurrence."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import aiohttp
import asyncpg

from tests.fakes.upstream import FakeOpenAI, Reply
from tests.faults.conftest import MASTER, figure, start_fleet

SCHEDULE = """
[[schedules]]
name = "tick"
cron = "*/2 * * * * *"  # every two seconds (seconds first)
prompt = "Tick."
"""


async def test_a_schedule_fires_once_across_three_replicas(
    tmp_path: Path, upstream: FakeOpenAI, postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    upstream.default = Reply(text="Tock.")
    async with start_fleet(
        tmp_path, upstream, postgres_url, redis_url, redis_prefix, extra=SCHEDULE
    ) as fleet:
        await asyncio.sleep(7)
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                fleet.url(0, "/api/v1/sessions/schedule-tick"),
                headers={"authorization": f"Bearer {MASTER}"},
            ) as r,
        ):
            runs = (await r.json())["runs"]
    conn = await asyncpg.connect(
        postgres_url.split("?")[0], server_settings={"search_path": postgres_url.split("=")[-1]}
    )
    try:
        fires = await conn.fetch(
            "SELECT due, run_id FROM trigger_fires WHERE trigger = 'schedule:tick' ORDER BY due"
        )
    finally:
        await conn.close()
    dues = [f["due"] for f in fires]
    figure(
        "a two-second schedule on three replicas for 7 s",
        occurrences=len(fires),
        runs=len(runs),
        model_calls=len(upstream.chats()),
    )
    assert len(fires) >= 2  # it did fire, every two seconds
    assert all(b - a == 2 for a, b in itertools.pairwise(dues))
    # each occurrence ran once: one run each, one model call each, three replicas or not
    started = {f["run_id"] for f in fires}
    assert len(started) == len(fires) and started <= {x["id"] for x in runs}
    assert len(runs) == len(fires)
    assert len(fires) - 1 <= len(upstream.chats()) <= len(fires)  # the last may not be asked yet
