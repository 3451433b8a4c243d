"""Runs started without a client: signed webhooks (a good one runs; a bad, stale or replayed
signature does not) and a schedule that fires after downtime by its documented rule."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cronsim import CronSim

from noroshi.agent.triggers import sign
from noroshi.config import ConfigError
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.processes import start_server, stop

SECRET = "hook-secret-0123456789"
HOOKS = f"""
[[hooks]]
name = "deploys"
secret = "{SECRET}"
prompt = "A deploy happened: {{body}}"
"""


async def deliver(
    s: aiohttp.ClientSession, base: str, body: bytes, name: str = "deploys", **change: str
) -> tuple[int, Any]:
    timestamp = change.get("timestamp", str(int(time.time())))
    headers = {
        "x-noroshi-timestamp": timestamp,
        "x-noroshi-signature": change.get("signature", sign(SECRET, timestamp, body)),
        "content-type": "application/json",
    }
    async with s.post(f"{base}/api/v1/hooks/{name}", data=body, headers=headers) as r:
        return r.status, await r.json()


async def test_a_signed_webhook_starts_a_run_once(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url, extra=HOOKS)))
    upstream.script(Reply(text="Noted the deploy."))
    body = b'{"service": "api", "version": "1.2"}'
    now = str(int(time.time()))
    async with aiohttp.ClientSession() as s:
        status, accepted = await deliver(s, base, body, timestamp=now)
        assert status == 202, accepted
        async with s.get(f"{base}/api/v1/runs/{accepted['run_id']}/stream") as r:
            last = (await r.read()).rstrip().rsplit(b"\n\n", 1)[-1]
        replayed = await deliver(s, base, body, timestamp=now)  # the same request again
        forged = await deliver(s, base, body, signature="sha256=" + "0" * 64)
        tampered = await deliver(
            s, base, body + b" ", timestamp=now, signature=sign(SECRET, now, body)
        )
        old = str(int(time.time()) - 3600)
        stale = await deliver(s, base, body, timestamp=old)
        unknown = await deliver(s, base, body, name="nobody")
        async with s.get(f"{base}/api/v1/sessions") as r:
            sessions = (await r.json())["data"]
    assert b"run.finished" in last
    assert upstream.chats()[0][-1]["content"] == f"A deploy happened: {body.decode()}"
    assert (replayed[0], replayed[1]["error"]["code"]) == (409, "replayed")
    assert (forged[0], forged[1]["error"]["code"]) == (401, "bad_signature")
    assert (tampered[0], tampered[1]["error"]["code"]) == (401, "bad_signature")
    assert (stale[0], stale[1]["error"]["code"]) == (400, "stale_signature")
    assert unknown[0] == 404
    assert len(upstream.chats()) == 1  # only the first delivery ran
    # its run shows where the operator looks: the sessions list
    assert [x["id"] for x in sessions] == [accepted["session_id"]]


def test_triggers_are_checked_at_start(tmp_path: Path) -> None:
    for extra, where in [
        ('[[schedules]]\nname = "x"\ncron = "61 * * * *"\nprompt = "p"\n', "schedules.0.cron"),
        (
            '[[schedules]]\nname = "x"\ncron = "* * * * *"\nprompt = "p"\nagent = "no"\n',
            "schedules.0.agent",
        ),
        ('[[hooks]]\nname = "x"\nsecret = "short"\n', "hooks.0.secret"),
    ]:
        with pytest.raises(ConfigError, match=where):
            write_config(tmp_path, openai_config("http://127.0.0.1:1/v1", extra=extra))


@pytest.mark.parametrize("catch_up_s", [90_000, 0])  # the latest may be a day old
async def test_a_schedule_missed_during_downtime_fires_once_after(
    tmp_path: Path, upstream: FakeOpenAI, catch_up_s: int
) -> None:
    """The rule: once, for the latest missed occurrence, when it is recent enough and the
    schedule fired before."""
    schedule = f"""
[[schedules]]
name = "nightly"
cron = "0 3 * * *"
prompt = "Write the nightly report."
catch_up_s = {catch_up_s}
"""
    config = openai_config(upstream.base_url, extra=schedule)
    proc, base = await start_server(tmp_path, config)  # never fired: nothing to catch up
    proc.terminate()
    await stop(proc)
    latest = next(CronSim("0 3 * * *", datetime.now(UTC), reverse=True)).timestamp()
    with sqlite3.connect(tmp_path / "data" / "noroshi.sqlite3") as db:  # it last fired a day
        db.execute(  # before, and the server was down at the latest time
            "INSERT INTO trigger_fires (trigger, key, due, fired_at) VALUES (?, ?, ?, ?)",
            ("schedule:nightly", "before", latest - 86400, latest - 86400),
        )
    upstream.script(Reply(text="Report written."))
    proc, base = await start_server(tmp_path, config, name="restarted")
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(50):
                async with s.get(f"{base}/api/v1/sessions/schedule-nightly") as r:
                    detail = await r.json() if r.status == 200 else {"runs": []}
                if [x for x in detail["runs"] if x["status"] == "completed"]:
                    break
                await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        await stop(proc)
    if catch_up_s:
        assert [x["status"] for x in detail["runs"]] == ["completed"]
        assert upstream.chats()[0][-1]["content"] == "Write the nightly report."
    else:
        assert detail["runs"] == [] and upstream.chats() == []
