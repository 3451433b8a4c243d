"""Runs started without a client: on a cron schedule (`[[schedules]]`), or by a signed inbound
webhook (`[[hooks]]`, `POST /api/v1/hooks/<name>`). Each runs in the background, owned by no
key (the master key, and an open server, see its session and runs).

Every replica runs every schedule's clock, and each occurrence fires once across the fleet: the
replica that records it first (`trigger_fires`, keyed by the occurrence) starts the run. After
downtime a schedule fires once for the occurrences it missed, if the latest of them is less than
`catch_up_s` old and the schedule has fired before; the others are skipped. An occurrence whose
session is still busy with the previous run is skipped too.

A webhook's sender signs `<timestamp>.<body>` with HMAC-SHA256 and the hook's secret, and sends
`X-Noroshi-Timestamp` and `X-Noroshi-Signature: sha256=<hex>`. A timestamp older (or newer)
than `tolerance_s`, or a signature seen before, is refused: a captured request cannot be sent
again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime

from cronsim import CronSim

from noroshi.agent.runs import ActiveRun, Agent, Runner
from noroshi.config import HookConfig, ScheduleConfig
from noroshi.errors import BadRequest, Conflict, NoroshiError, NotFound, Unauthorized
from noroshi.store.database import Database
from noroshi.store.sessions import SessionStore

__all__ = ["Triggers", "sign"]

log = logging.getLogger("noroshi.agent")

MAX_WAIT_S = 3600.0  # a schedule's clock looks again at least this often (clock changes)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature a hook's sender puts in `X-Noroshi-Signature`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Triggers:
    def __init__(
        self,
        schedules: list[ScheduleConfig],
        hooks: list[HookConfig],
        db: Database,
        sessions: SessionStore,
        runner: Runner,
        agents: dict[str, Agent],
    ) -> None:
        self.schedules = schedules
        self.hooks = {h.name: h for h in hooks}
        self.db = db
        self.sessions = sessions
        self.runner = runner
        self.agents = agents
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._clock(s)) for s in self.schedules]

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    # --- webhooks --------------------------------------------------------------------------

    async def deliver(self, name: str, timestamp: str, signature: str, body: bytes) -> ActiveRun:
        """Check a delivery and start its run; refused with 401 (signature), 400 (time), 409
        (seen before, or its session is busy) or 404 (no such hook)."""
        hook = self.hooks.get(name)
        if hook is None:
            raise NotFound(f"No hook named '{name}'.")
        if not hmac.compare_digest(sign(hook.secret, timestamp, body), signature):
            raise Unauthorized("The signature does not match.", code="bad_signature")
        try:
            age = abs(time.time() - float(timestamp))
        except ValueError:
            raise BadRequest("X-Noroshi-Timestamp is not a number.") from None
        if age > hook.tolerance_s:
            raise BadRequest(
                f"The signed timestamp is more than {hook.tolerance_s:g} s away.",
                code="stale_signature",
            )
        await self._forget_old(hook)
        if not await self._take(f"hook:{name}", signature, float(timestamp)):
            raise Conflict("This delivery was received before.", code="replayed")
        prompt = hook.prompt.replace("{body}", body.decode(errors="replace"))
        try:
            active = await self._run(
                hook.agent, hook.session, f"hook {name}", prompt, f"hook:{name}:{signature[7:23]}"
            )
        except NoroshiError:  # not taken up: the sender may send it again
            await self.db.execute(
                "DELETE FROM trigger_fires WHERE trigger = ? AND key = ?",
                (f"hook:{name}", signature),
            )
            raise
        await self._ran(f"hook:{name}", signature, active.run.id)
        return active

    async def _forget_old(self, hook: HookConfig) -> None:
        """Signatures past the tolerance cannot come back: their timestamps are refused."""
        await self.db.execute(
            "DELETE FROM trigger_fires WHERE trigger = ? AND due < ?",
            (f"hook:{hook.name}", time.time() - 2 * hook.tolerance_s),
        )

    # --- schedules -------------------------------------------------------------------------

    async def _clock(self, schedule: ScheduleConfig) -> None:
        trigger = f"schedule:{schedule.name}"
        try:
            await self._catch_up(schedule, trigger)
        except NoroshiError as exc:
            log.warning("schedule %s: could not catch up: %s", schedule.name, exc)
        after = datetime.now(UTC)
        while True:
            due = next(CronSim(schedule.cron, after))
            wait = due.timestamp() - time.time()
            if wait > MAX_WAIT_S:
                await asyncio.sleep(MAX_WAIT_S)
                after = datetime.now(UTC)
                continue
            await asyncio.sleep(max(0.0, wait))
            after = due
            await self._fire(schedule, trigger, due.timestamp())

    async def _catch_up(self, schedule: ScheduleConfig, trigger: str) -> None:
        row = await self.db.fetchone(
            "SELECT MAX(due) FROM trigger_fires WHERE trigger = ?", (trigger,)
        )
        last = row[0] if row is not None else None
        if last is None:  # it never fired: nothing was missed
            return
        latest = next(CronSim(schedule.cron, datetime.now(UTC), reverse=True)).timestamp()
        if latest > last and time.time() - latest <= schedule.catch_up_s:
            log.info("schedule %s: firing once for what it missed", schedule.name)
            await self._fire(schedule, trigger, latest)

    async def _fire(self, schedule: ScheduleConfig, trigger: str, due: float) -> None:
        key = f"{due:.0f}"
        try:
            if not await self._take(trigger, key, due):
                return  # another replica has it
            session = schedule.session or f"schedule-{schedule.name}"
            active = await self._run(
                schedule.agent,
                session,
                f"schedule {schedule.name}",
                schedule.prompt,
                f"{trigger}:{key}",
            )
            await self._ran(trigger, key, active.run.id)
        except Conflict:
            log.warning("schedule %s: skipped at %s, its session is still busy", schedule.name, key)
        except NoroshiError as exc:
            log.warning("schedule %s: could not start its run: %s", schedule.name, exc)

    # --- shared ----------------------------------------------------------------------------

    async def _take(self, trigger: str, key: str, due: float) -> bool:
        """Record this firing; only the first replica to record it gets True."""
        taken = await self.db.fetchone(
            "INSERT INTO trigger_fires (trigger, key, due, fired_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (trigger, key) DO NOTHING RETURNING key",
            (trigger, key, due, time.time()),
        )
        return taken is not None

    async def _ran(self, trigger: str, key: str, run_id: str) -> None:
        await self.db.execute(
            "UPDATE trigger_fires SET run_id = ? WHERE trigger = ? AND key = ?",
            (run_id, trigger, key),
        )

    async def _run(
        self, agent_name: str, session_id: str, title: str, prompt: str, request_id: str
    ) -> ActiveRun:
        """A background run of `agent_name` on the session (made when new, for no key)."""
        agent = self.agents[agent_name]
        session = await self.sessions.get(None, session_id) if session_id else None
        if session is None:
            session = await self.sessions.create(None, agent.name, title, session_id or None)
        if session is None:
            raise Conflict(f"The session '{session_id}' belongs to a key.", code="session_taken")
        billing = self.runner.billing
        assert billing is not None  # set by the app, before triggers start
        routed, on_end = await billing(None, agent, request_id)
        return await self.runner.start(None, session, agent, prompt, routed, True, on_end)
