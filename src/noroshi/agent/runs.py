"""Runs: one turn of an agent in a task of its own, its events kept so clients can join late.

A run outlives the request that started it only when it was started in the background; a
streaming run whose client leaves is cancelled, which stops its model call and tools. One run
at a time per session, across replicas: a run claims its session in the database, and this
process renews the claims of its runs until they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from noroshi.agent.events import EventStore, EventWriter
from noroshi.agent.loop import run_turn
from noroshi.agent.tools import Toolbox
from noroshi.config import AgentConfig
from noroshi.errors import Conflict, NoroshiError
from noroshi.providers.base import Routed
from noroshi.providers.router import ProviderRouter
from noroshi.store.sessions import Run, Session, SessionStore, new_run_id

__all__ = ["ActiveRun", "Agent", "Event", "OnEnd", "RunLog", "Runner"]

log = logging.getLogger("noroshi.agent")

OnEnd = Callable[[str], None]  # called with the outcome: "ok", "error" or "cut"
MAX_EVENTS = 50_000  # a run that emits more is cut with an error
KEEP_FINISHED = 1_000  # finished runs kept in memory for late joins
SESSION_HOLD_S = 10.0  # a run's claim on its session, renewed every third of it


class Event(msgspec.Struct, array_like=True):
    seq: int
    type: str
    data: dict[str, Any]


class RunLog:
    """The events of one run in order, and a way to follow them as they come; each is also
    handed to `keep`, which stores it for other replicas."""

    def __init__(self, keep: EventWriter | None = None) -> None:
        self.events: list[Event] = []
        self.done = False
        self.keep = keep
        self._changed = asyncio.Event()

    def emit(self, type: str, data: dict[str, Any], last: bool = False) -> None:
        """Add an event; `last`, the terminator, is never refused."""
        if self.done:
            return
        if len(self.events) >= MAX_EVENTS and not last:
            raise NoroshiError("The run produced too many events.", code="run_too_large")
        event = Event(len(self.events) + 1, type, data)
        self.events.append(event)
        if self.keep is not None:
            self.keep.write(event.seq, type, data)
        self._changed.set()

    def close(self) -> None:
        self.done = True
        self._changed.set()

    async def follow(self, after: int = 0) -> AsyncIterator[Event]:
        """Every event after `after`, then each new one until the run ends."""
        seen = after
        while True:
            while seen < len(self.events):
                seen += 1
                yield self.events[seen - 1]
            if self.done:
                return
            self._changed.clear()
            await self._changed.wait()


class Agent:
    """An agent as configured, with its tools ready."""

    def __init__(self, config: AgentConfig, model: str, toolbox: Toolbox) -> None:
        self.config = config
        self.name = config.name
        self.model = model
        self.toolbox = toolbox


class ActiveRun:
    __slots__ = ("agent", "log", "on_end", "routed", "run", "session", "task")

    def __init__(
        self, run: Run, session: Session, agent: Agent, routed: Routed, keep: EventWriter | None
    ) -> None:
        self.run = run
        self.session = session
        self.agent = agent
        self.routed = routed  # billed by the request's meter when the stream ends
        self.log = RunLog(keep)
        self.task: asyncio.Task[None] | None = None
        self.on_end: OnEnd | None = None  # bills a background run, which no request waits for


class Runner:
    def __init__(self, models: ProviderRouter, sessions: SessionStore, events: EventStore) -> None:
        self.models = models
        self.sessions = sessions
        self.events = events
        self.by_session: dict[str, ActiveRun] = {}
        self.by_id: dict[str, ActiveRun] = {}
        self._holder: asyncio.Task[None] | None = None

    async def start(
        self,
        key_id: str | None,
        session: Session,
        agent: Agent,
        prompt: str,
        routed: Routed,
        background: bool = False,
        on_end: OnEnd | None = None,
    ) -> ActiveRun:
        busy = self.by_session.get(session.id)
        if busy is not None:
            raise _busy(session.id, busy.run.id)
        placeholder = ActiveRun(
            Run(id="", session_id=session.id, agent=agent.name, status="running",
                background=background, created_at=0.0),
            session, agent, routed, None,
        )  # fmt: skip
        self.by_session[session.id] = placeholder  # held while the run row is written
        run_id = new_run_id()
        try:
            holder = await self.sessions.claim(session.id, run_id, SESSION_HOLD_S)
            if holder is not None:  # a run on another replica
                raise _busy(session.id, holder)
            try:
                run = await self.sessions.start_run(key_id, session, background, run_id)
            except BaseException:
                await self.sessions.unclaim(session.id, run_id)
                raise
        except BaseException:
            del self.by_session[session.id]
            raise
        if self._holder is None or self._holder.done():
            self._holder = asyncio.get_running_loop().create_task(self._hold())
        active = ActiveRun(run, session, agent, routed, self.events.writer(run.id))
        active.on_end = on_end
        self.by_session[session.id] = active
        self._remember(active)
        active.task = asyncio.get_running_loop().create_task(self._execute(active, prompt))
        return active

    def get(self, run_id: str) -> ActiveRun | None:
        return self.by_id.get(run_id)

    def cancel(self, active: ActiveRun) -> bool:
        if active.task is None or active.task.done():
            return False
        active.task.cancel()
        return True

    def cancel_id(self, run_id: str) -> None:
        """A cancel asked for by another replica; ignored unless the run is here."""
        active = self.by_id.get(run_id)
        if active is not None:
            self.cancel(active)

    async def _hold(self) -> None:
        """Renew the session claims of the runs here, while there are any."""
        while self.by_session:
            await asyncio.sleep(SESSION_HOLD_S / 3)
            runs = [a.run.id for a in self.by_session.values() if a.run.id]
            try:
                await self.sessions.hold(runs, SESSION_HOLD_S)
            except NoroshiError as exc:  # the database is away: claims run out on their own
                log.warning("could not renew the sessions of %d runs: %s", len(runs), exc)

    async def close(self) -> None:
        if self._holder is not None:
            self._holder.cancel()
        tasks = [a.task for a in self.by_session.values() if a.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _remember(self, active: ActiveRun) -> None:
        self.by_id[active.run.id] = active
        if len(self.by_id) > KEEP_FINISHED + len(self.by_session):
            for run_id, old in list(self.by_id.items()):
                if old.log.done:
                    del self.by_id[run_id]
                    break

    async def _execute(self, active: ActiveRun, prompt: str) -> None:
        run, agent, emit = active.run, active.agent, active.log.emit
        emit("run.started", {"run_id": run.id, "session_id": run.session_id,
                             "agent": agent.name, "model": agent.model})  # fmt: skip
        try:
            history = await self.sessions.messages(run.session_id)
            turn = await run_turn(
                self.models,
                agent.model,
                agent.config.system,
                history,
                prompt,
                agent.toolbox,
                emit,
                max_steps=agent.config.max_steps,
                temperature=agent.config.temperature,
                request_id=run.id,
            )
            run.steps = turn.steps
            run.prompt_tokens = turn.usage.prompt_tokens
            run.completion_tokens = turn.usage.completion_tokens
            active.routed.usage = turn.usage
            await self.sessions.append(run.session_id, run.id, turn.messages)
            run.status = "completed"
            emit("usage", {"prompt_tokens": run.prompt_tokens,
                           "completion_tokens": run.completion_tokens,
                           "total_tokens": run.prompt_tokens + run.completion_tokens})  # fmt: skip
            end = ("run.finished", {"run_id": run.id, "status": run.status,
                                    "finish_reason": turn.finish, "steps": turn.steps})  # fmt: skip
        except asyncio.CancelledError:
            run.status = "cancelled"
            end = ("error", {"message": "The run was cancelled.", "code": "cancelled"})
        except NoroshiError as exc:
            run.status, run.error = "failed", exc.message
            end = ("error", {"message": exc.message, "code": exc.code})
        except Exception:
            log.exception("run %s failed", run.id)
            run.status, run.error = "failed", "The agent failed."
            end = ("error", {"message": run.error, "code": "internal_error"})
        finally:
            await self._end(active, *end)

    async def _end(self, active: ActiveRun, event: str, data: dict[str, Any]) -> None:
        """Bill the run, free its session, then tell its followers: whoever reads the last
        event may start the next turn at once. Its events are kept before its status says it
        ended, for followers on other replicas."""
        run = active.run
        run.finished_at = time.time()  # what a reader of the run sees once the end is told
        if self.by_session.get(run.session_id) is active:
            del self.by_session[run.session_id]
        if active.on_end is not None:  # billed first: nothing below can stop it
            active.on_end({"completed": "ok", "cancelled": "cut"}.get(run.status, "error"))
        try:
            await self.sessions.unclaim(run.session_id, run.id)  # its turn is kept already
        except NoroshiError as exc:  # the database is away: the claim runs out by itself
            log.warning("run %s: could not free session %s: %s", run.id, run.session_id, exc)
        active.log.emit(event, data, last=True)
        active.log.close()
        try:
            if active.log.keep is not None:
                await active.log.keep.close()
            await self.sessions.finish_run(run)
        except NoroshiError as exc:
            log.warning("run %s ended, but could not be recorded: %s", run.id, exc)


def _busy(session_id: str, run_id: str) -> Conflict:
    return Conflict(
        f"Session {session_id} is busy with run {run_id}; wait for it to finish or cancel it.",
        param="session_id",
        code="session_busy",
    )
