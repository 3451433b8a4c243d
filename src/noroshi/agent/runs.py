"""Runs: one turn of an agent in a task of its own, its events kept so clients can join late,
and kept going when the process running it stops.

A run outlives the request that started it only when it was started in the background; a
streaming run whose client leaves is cancelled, which stops its model call and tools. One run
at a time per session, across replicas: a run claims its session in the database, and this
process renews the claims of its runs, with their leases, until they end.

A run whose lease runs out (its process died) is taken over by whichever replica sees it
first, the same one after a restart included: it goes on from its kept events (`replay`), or
ends `interrupted` when it cannot. A run that waits for a person's approval is in no process
at all: the answer, on any replica, takes it up again. On shutdown, runs go on until the drain
ends; then they are handed over (their leases let go for another replica) when the database is
shared, or ended `interrupted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import msgspec

from noroshi.agent.events import TERMINAL, EventStore, EventWriter
from noroshi.agent.loop import Turn, Waiting, run_turn
from noroshi.agent.replay import replay
from noroshi.agent.tools import Toolbox
from noroshi.config import AgentConfig, RunsConfig
from noroshi.errors import Conflict, NoroshiError
from noroshi.providers.base import Routed, Usage
from noroshi.providers.router import ProviderRouter
from noroshi.store.approvals import Approvals
from noroshi.store.sessions import Kept, Run, Session, SessionStore, new_run_id
from noroshi.wire.agent import PendingApproval
from noroshi.wire.times import Timestamp

__all__ = ["ActiveRun", "Agent", "Billing", "Event", "OnEnd", "RunLog", "Runner"]

log = logging.getLogger("noroshi.agent")

OnEnd = Callable[[str], None]  # called with the outcome: "ok", "error" or "cut"
# the meter a run taken up again bills its own part on: (key id, agent, request id)
Billing = Callable[[str | None, "Agent", str], Awaitable[tuple[Routed, OnEnd | None]]]
Stop = Literal["cancel", "interrupt", "hand_over", "lost"]
MAX_EVENTS = 50_000  # a run that emits more is cut with an error
KEEP_FINISHED = 1_000  # finished runs kept in memory for late joins
INTERRUPTED = "The server running it stopped, and the run could not go on"


class Event(msgspec.Struct, array_like=True):
    seq: int
    type: str
    data: dict[str, Any]


class RunLog:
    """The events of one run in order, and a way to follow them as they come; each is also
    handed to `keep`, which stores it for other replicas. A run taken up again starts from
    the events kept before."""

    def __init__(self, keep: EventWriter | None = None, history: list[Event] | None = None):
        self.events: list[Event] = list(history or ())
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
        """Every event after `after`, then each new one until the run ends here."""
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
    __slots__ = ("agent", "log", "on_end", "routed", "run", "session", "stop", "task")

    def __init__(
        self,
        run: Run,
        session: Session,
        agent: Agent,
        routed: Routed,
        keep: EventWriter | None,
        history: list[Event] | None = None,
    ) -> None:
        self.run = run
        self.session = session
        self.agent = agent
        self.routed = routed  # billed by the request's meter when the stream ends
        self.log = RunLog(keep, history)
        self.task: asyncio.Task[None] | None = None
        self.on_end: OnEnd | None = None  # bills a background run, which no request waits for
        self.stop: Stop = "cancel"  # what a cancel of the task means


class Runner:
    def __init__(
        self,
        models: ProviderRouter,
        sessions: SessionStore,
        events: EventStore,
        approvals: Approvals | None = None,
        config: RunsConfig | None = None,
    ) -> None:
        self.models = models
        self.sessions = sessions
        self.events = events
        self.approvals = approvals if approvals is not None else Approvals(sessions.db)
        self.config = config if config is not None else RunsConfig()
        self.agents: dict[str, Agent] = {}  # by name, for runs taken up again
        self.billing: Billing | None = None
        self.hand_over = False  # whether another process may go on with runs left at close
        self.by_session: dict[str, ActiveRun] = {}
        self.by_id: dict[str, ActiveRun] = {}
        self._holder: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

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
            Run(
                id="",
                session_id=session.id,
                agent=agent.name,
                status="running",
                background=background,
                created_at=Timestamp(0),
            ),
            session,
            agent,
            routed,
            None,
        )
        self.by_session[session.id] = placeholder  # held while the run row is written
        run_id = new_run_id()
        try:
            holder = await self.sessions.claim(session.id, run_id, self.config.lease_s)
            if holder is not None:  # a run on another replica
                raise _busy(session.id, holder)
            try:
                run = await self.sessions.start_run(
                    key_id, session, background, run_id, prompt, self.config.lease_s
                )
            except BaseException:
                await self.sessions.unclaim(session.id, run_id)
                raise
        except BaseException:
            del self.by_session[session.id]
            raise
        active = ActiveRun(run, session, agent, routed, self.events.writer(run.id))
        active.on_end = on_end
        self._launch(active, Turn(prompt), done=False, resumed=False)
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

    async def cancel_stored(self, run: Run) -> bool:
        """Cancel a run that does not run here: one that waits, one whose process died, or
        (through Redis) one running on another replica."""
        if run.status == "waiting" and await self.sessions.cancel_waiting(run.id):
            await self._end_kept(run, "cancelled", "The run was cancelled.", "cancelled")
            return True
        if run.status == "running" and await self.sessions.take(run.id, self.config.lease_s):
            await self._end_kept(run, "cancelled", "The run was cancelled.", "cancelled")
            return True
        return run.status == "running" and await self.events.ask_cancel(run.id)

    async def decide(self, run_id: str, tool_call_id: str, approved: bool, reason: str) -> str:
        """A person's answer to a call the run waits on; the run's status after it (once
        every call is answered, the run goes on, here)."""
        if not await self.approvals.decide(run_id, tool_call_id, approved, reason):
            raise Conflict(
                f"Run {run_id} is not waiting for an answer on tool call {tool_call_id}.",
                param="tool_call_id",
                code="not_waiting",
            )
        if await self.approvals.pending(run_id):
            return "waiting"
        await self._wake(run_id)
        return "running"

    async def follow(self, run_id: str, after: int) -> AsyncIterator[Event]:
        """A run's events after `after`: from memory while it runs here, from the shared
        store otherwise (it runs elsewhere, or went on elsewhere after this process let go of
        it), until its terminator or, while it waits, until `run.waiting`."""
        active = self.by_id.get(run_id)
        if active is not None:
            async for event in active.log.follow(after):
                after = event.seq
                yield event
            final = active.log.events[-1].type if active.log.events else ""
            if final in TERMINAL:
                return
            # put away here: the log is closed once its status says it waits
            if final == "run.waiting" and await self._status(run_id) == "waiting":
                return

        async def running() -> bool:
            return await self._status(run_id) == "running"

        async for seq, type, data in self.events.follow(run_id, after, running):
            yield Event(seq, type, data)
            if type == "run.waiting" and await self._status(run_id) == "waiting":
                return

    async def _status(self, run_id: str) -> str:
        kept = await self.sessions.kept(run_id)
        return kept.run.status if kept is not None else ""

    # --- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Start looking for runs to take over: those of a process that died, and waiting
        ones whose answers are in (or expired)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def begin_drain(self) -> None:
        """Take no more runs over; those here go on."""
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def close(self, deadline: float | None = None) -> None:
        """Let the runs here go on until `deadline` (the loop's clock), then hand them over
        (`hand_over`) or end them `interrupted`, each billed for what it used."""
        self.begin_drain()
        tasks = [a.task for a in self.by_session.values() if a.task is not None]
        loop = asyncio.get_running_loop()
        if tasks and deadline is not None and deadline > loop.time():
            log.info("waiting up to %.0f s for %d runs", deadline - loop.time(), len(tasks))
            await asyncio.wait(tasks, timeout=deadline - loop.time())
        left = [a for a in self.by_session.values() if a.task is not None and not a.task.done()]
        for active in left:
            active.stop = "hand_over" if self.hand_over else "interrupt"
            self.cancel(active)
        for active in left:
            assert active.task is not None
            with contextlib.suppress(asyncio.CancelledError):
                await active.task
        if self._holder is not None:
            self._holder.cancel()

    # --- running ---------------------------------------------------------------------------

    def _launch(self, active: ActiveRun, turn: Turn, done: bool, resumed: bool) -> None:
        self.by_session[active.session.id] = active
        self._remember(active)
        if self._holder is None or self._holder.done():
            self._holder = asyncio.get_running_loop().create_task(self._hold())
        run = self._execute(active, turn, done, resumed)
        active.task = asyncio.get_running_loop().create_task(run)

    async def _hold(self) -> None:
        """Renew the leases of the runs here, while there are any. Past a lease's life
        without renewing, another replica may have taken them over: stop them here."""
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while self.by_session:
            await asyncio.sleep(self.config.lease_s / 3)
            runs = [a.run.id for a in self.by_session.values() if a.run.id]
            try:
                await self.sessions.hold(runs, self.config.lease_s)
                renewed = loop.time()
            except NoroshiError as exc:
                log.warning("could not renew the leases of %d runs: %s", len(runs), exc)
                if loop.time() - renewed > self.config.lease_s * 0.8:
                    for active in list(self.by_session.values()):
                        active.stop = "lost"
                        self.cancel(active)

    async def _execute(self, active: ActiveRun, turn: Turn, done: bool, resumed: bool) -> None:
        run, agent, emit = active.run, active.agent, active.log.emit
        if resumed:
            emit("run.resumed", {"run_id": run.id, "step": turn.steps})
        else:
            emit(
                "run.started",
                {
                    "run_id": run.id,
                    "session_id": run.session_id,
                    "agent": agent.name,
                    "model": agent.model,
                },
            )
        end: tuple[str, dict[str, Any]] | None = None
        waiting: Waiting | None = None
        try:
            if not done:
                history = await self.sessions.messages(run.session_id)
                keep = active.log.keep
                await run_turn(
                    self.models,
                    agent.model,
                    agent.config.system,
                    history,
                    turn,
                    agent.toolbox,
                    emit,
                    max_steps=agent.config.max_steps,
                    temperature=agent.config.temperature,
                    request_id=run.id,
                    checkpoint=keep.flush if keep is not None else None,
                )
            _count(active, turn)
            await self.sessions.append(run.session_id, run.id, turn.messages)
            run.status = "completed"
            emit(
                "usage",
                {
                    "prompt_tokens": run.prompt_tokens,
                    "completion_tokens": run.completion_tokens,
                    "total_tokens": run.prompt_tokens + run.completion_tokens,
                },
            )
            end = (
                "run.finished",
                {
                    "run_id": run.id,
                    "status": run.status,
                    "finish_reason": turn.finish,
                    "steps": turn.steps,
                },
            )
        except Waiting as exc:
            waiting = exc
        except asyncio.CancelledError:
            if active.stop == "interrupt":
                run.status, run.error = "interrupted", "The server stopped during the run."
                end = ("error", {"message": run.error, "code": "interrupted"})
            elif active.stop == "cancel":
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
            _count(active, turn)
            if waiting is not None:
                await self._park(active, turn, waiting)
            elif end is None:
                await self._let_go(active)
            else:
                await self._end(active, *end)

    async def _park(self, active: ActiveRun, turn: Turn, waiting: Waiting) -> None:
        """The run waits for a person, in no process: its calls and its state are kept, its
        part so far billed; the answer takes it up again wherever it comes."""
        run = active.run
        expires = Timestamp(time.time() + self.config.approval_timeout_s)
        calls = [
            PendingApproval(
                tool_call_id=c.id,
                name=c.function.name,
                arguments=c.function.arguments,
                expires_at=expires,
            )
            for c in waiting.calls
        ]
        self._forget(active, "ok")
        try:
            await self.approvals.ask(run.id, turn.steps, calls)
            active.log.emit(
                "run.waiting",
                {
                    "run_id": run.id,
                    "expires_at": expires,
                    "tool_call_ids": [c.tool_call_id for c in calls],
                },
                last=True,
            )
            if active.log.keep is not None:  # kept before anyone can take it up again
                await active.log.keep.close()
            run.status = "waiting"
            await self.sessions.park(run, expires + self.config.lease_s)
        except NoroshiError as exc:  # the lease runs out: it is taken over, and waits again
            log.warning("run %s could not be kept waiting: %s", run.id, exc)
            return
        finally:
            active.log.close()
        if not await self.approvals.pending(run.id):  # answered while it was being put away
            await self._wake(run.id)

    async def _let_go(self, active: ActiveRun) -> None:
        """Stop running here without ending the run: it is billed for its part so far, and
        another process takes it over from its kept events."""
        self._forget(active, "cut")
        if active.log.keep is not None:
            await active.log.keep.close()
        if active.stop == "hand_over":
            try:
                await self.sessions.release(active.run)
            except NoroshiError as exc:  # its lease runs out by itself
                log.warning("run %s: could not let go of its lease: %s", active.run.id, exc)
        active.log.close()

    async def _end(self, active: ActiveRun, event: str, data: dict[str, Any]) -> None:
        """Bill the run, free its session, then tell its followers: whoever reads the last
        event may start the next turn at once. Its events are kept before its status says it
        ended, for followers on other replicas."""
        run = active.run
        run.finished_at = Timestamp.now()  # what a reader of the run sees once the end is told
        outcome = {"completed": "ok", "cancelled": "cut", "interrupted": "cut"}
        self._forget(active, outcome.get(run.status, "error"))
        try:
            await self.sessions.unclaim(run.session_id, run.id)  # its turn is kept already
        except NoroshiError as exc:  # the database is away: the claim runs out by itself
            log.warning("run %s: could not free session %s: %s", run.id, run.session_id, exc)
        run.finished_at = Timestamp.now()  # before its followers hear it ended
        active.log.emit(event, data, last=True)
        active.log.close()
        try:
            if active.log.keep is not None:
                await active.log.keep.close()
            await self.sessions.finish_run(run)
        except NoroshiError as exc:
            log.warning("run %s ended, but could not be recorded: %s", run.id, exc)

    def _forget(self, active: ActiveRun, outcome: str) -> None:
        """No longer here: its session is no longer held by this process, its part billed
        (first: nothing after it can stop that)."""
        if self.by_session.get(active.run.session_id) is active:
            del self.by_session[active.run.session_id]
        if active.on_end is not None:
            active.on_end(outcome)

    def _remember(self, active: ActiveRun) -> None:
        self.by_id[active.run.id] = active
        if len(self.by_id) > KEEP_FINISHED + len(self.by_session):
            for run_id, old in list(self.by_id.items()):
                if old.log.done:
                    del self.by_id[run_id]
                    break

    # --- taking runs over ------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Take over the runs whose process stopped renewing their leases, and take up the
        waiting runs whose calls are all answered (or expired)."""
        while True:
            try:
                for run_id in await self.sessions.orphans():
                    if await self.sessions.take(run_id, self.config.lease_s):
                        await self._resume(run_id, woken=False)
                for run_id in await self.approvals.expire():
                    if not await self.approvals.pending(run_id):
                        await self._wake(run_id)
            except NoroshiError as exc:
                log.warning("could not look for runs to take over: %s", exc)
            except Exception:
                log.exception("looking for runs to take over failed")
            await asyncio.sleep(self.config.recover_every_s)

    async def _wake(self, run_id: str) -> None:
        if await self.sessions.wake(run_id, self.config.lease_s):
            await self._resume(run_id, woken=True)

    async def _resume(self, run_id: str, woken: bool) -> None:
        """Go on with a run whose lease this process just took: from its kept events, or end
        it `interrupted` with the reason it cannot go on."""
        kept = await self.sessions.kept(run_id)
        if kept is None:
            return
        run = kept.run
        events = [Event(*row) for row in await self.events.read(run_id)]
        if events and events[-1].type in TERMINAL:  # it ended, all but its status
            await self._end_kept(run, *_ended(events[-1]), events=events)
            return
        agent = self.agents.get(run.agent)
        reason = _why_not(kept, events, agent, self.config, woken)
        session = None
        if reason is None:
            session = await self.sessions.get(kept.key_id, run.session_id)
            if session is None or not await self.sessions.reclaim(
                session.id, run_id, self.config.lease_s
            ):
                reason = "its session went on without it"
        if reason is not None or agent is None or session is None or kept.prompt is None:
            log.warning("run %s ends interrupted: %s", run_id, reason)
            await self._end_kept(
                run, "interrupted", f"{INTERRUPTED}: {reason}.", "interrupted", events=events
            )
            return
        turn, done = replay(kept.prompt, [(e.seq, e.type, e.data) for e in events])
        if turn.pending is not None:
            turn.pending.decisions = await self.approvals.decisions(run_id, turn.steps)
        stint = sum(e.type == "run.resumed" for e in events) + 1
        routed, on_end = Routed(agent.model, run_id), None
        if self.billing is not None:
            routed, on_end = await self.billing(kept.key_id, agent, f"{run_id}.{stint}")
        run.status = "running"
        active = ActiveRun(run, session, agent, routed, self.events.writer(run_id), events)
        active.on_end = on_end
        log.info(
            "run %s goes on from step %d (%s)",
            run_id,
            turn.steps,
            "answered" if woken else "taken over",
        )
        self._launch(active, turn, done, resumed=True)

    async def _end_kept(
        self, run: Run, status: str, message: str, code: str, events: list[Event] | None = None
    ) -> None:
        """End a run that runs nowhere (this process holds its lease, or took it from
        waiting): its terminator kept after its last event, its session freed."""
        if events is None:
            events = [Event(*row) for row in await self.events.read(run.id)]
        if not events or events[-1].type not in TERMINAL:
            seq = events[-1].seq + 1 if events else 1
            data = {"message": message, "code": code}
            await self.sessions.unclaim(run.session_id, run.id)
            await self.events.append(run.id, [(seq, "error", data)])
        else:
            await self.sessions.unclaim(run.session_id, run.id)
        run.status = status
        run.error = None if status == "completed" else message
        await self.sessions.finish_run(run)


def _count(active: ActiveRun, turn: Turn) -> None:
    """Add what this process used to the run's totals, once; it is what it bills."""
    if active.routed.usage is not None:
        return
    active.routed.usage = Usage(
        prompt_tokens=turn.usage.prompt_tokens, completion_tokens=turn.usage.completion_tokens
    )
    active.run.prompt_tokens += turn.usage.prompt_tokens
    active.run.completion_tokens += turn.usage.completion_tokens
    active.run.steps = max(active.run.steps, turn.steps)


def _ended(last: Event) -> tuple[str, str, str]:
    """The status, message and code a kept terminator says the run ended with."""
    if last.type == "run.finished":
        return "completed", "", ""
    code = str(last.data.get("code") or "")
    status = code if code in ("cancelled", "interrupted") else "failed"
    return status, str(last.data.get("message") or ""), code


def _why_not(
    kept: Kept, events: list[Event], agent: Agent | None, config: RunsConfig, woken: bool
) -> str | None:
    """Why a run cannot go on from its kept events; None when it can."""
    if not woken and not config.resume:
        return "runs.resume is off"
    if not woken and kept.resumes > config.max_resumes:
        return f"taken over {kept.resumes} times (runs.max_resumes)"
    if agent is None:
        return f"no agent named '{kept.run.agent}' any more"
    if kept.prompt is None or not events or events[0].type != "run.started":
        return "its events were not kept"
    if any(e.seq != i for i, e in enumerate(events, 1)):
        return "some of its events were not kept"
    return None


def _busy(session_id: str, run_id: str) -> Conflict:
    return Conflict(
        f"Session {session_id} is busy with run {run_id}; wait for it to finish or cancel it.",
        param="session_id",
        code="session_busy",
    )
