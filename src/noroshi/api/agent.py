"""The agent surface: `/api/v1/agent/chat` streams a run; sessions and runs under `/api/v1`.

Native events are SSE with an `id:` each (the run's sequence), so a client that lost the
stream can join again with `Last-Event-ID`. A stream that fails ends with an `error` event
and without `run.finished`, the success terminator.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Protocol

import msgspec

from noroshi.accounting import Accountant, Meter
from noroshi.agent.events import EventStore
from noroshi.agent.runs import ActiveRun, Agent, Billing, Event, OnEnd, Runner
from noroshi.config import Config
from noroshi.edge.relay import Relay
from noroshi.errors import Conflict, NoroshiError, NotFound
from noroshi.guards import Guards
from noroshi.http import JSONResponse, Request, Response, Router, StreamResponse
from noroshi.http.response import SSE_HEADERS
from noroshi.http.websocket import WebSocket, WebSocketDisconnect
from noroshi.providers.base import Routed
from noroshi.store.keys import KeyStore
from noroshi.store.sessions import Run, SessionStore
from noroshi.types import Handler, Headers
from noroshi.wire import endpoints as api
from noroshi.wire import times
from noroshi.wire.agent import (
    AgentChatBody,
    AgentInfo,
    AgentList,
    ApprovalAnswer,
    ApprovalBody,
    Deleted,
    Format,
    JoinQuery,
    RunAccepted,
    RunCancelled,
    SessionDetail,
    SessionList,
    WSMessage,
)
from noroshi.wire.ai_sdk import HEADER as AI_SDK_HEADER
from noroshi.wire.ai_sdk import UIMessageStream

if TYPE_CHECKING:
    from noroshi.agent.triggers import Triggers  # loaded only when triggers are set

__all__ = ["encode_native", "install", "resumed_billing"]

_encode = times.encode


_decode_chat: msgspec.json.Decoder[AgentChatBody] = api.AGENT_CHAT.decoder
_decode_approval: msgspec.json.Decoder[ApprovalBody] = api.RUN_APPROVE.decoder
_decode_ws = msgspec.json.Decoder(WSMessage)
RESUMED_ROUTE = "/api/v1/runs"  # where the part of a run taken up again is billed


def resumed_billing(app: Services) -> Billing:
    """The meter a run taken up again (answered, or taken over from a process that died)
    bills its own part on: its key's, already admitted, so it is never refused half-way."""

    async def billing(key_id: str | None, agent: Agent, request_id: str) -> tuple[Routed, OnEnd]:
        meter = Meter(None, RESUMED_ROUTE, request_id)
        if key_id is not None:
            meter.key = await app.keys.get(key_id)
        meter.model, meter.admitted = agent.model, True
        routed = meter.routed = Routed(agent.model, request_id)
        routed.attempts = 1

        def on_end(outcome: str) -> None:
            app.accountant.finish(meter, 200, outcome)

        return routed, on_end

    return billing


def event_json(event: Event) -> bytes:
    """An event as the `AgentEvent` types read it: type, seq and its data."""
    return _encode({"type": event.type, "seq": event.seq, **event.data})


def encode_native(event: Event) -> bytes:
    return f"id: {event.seq}\nevent: {event.type}\ndata: ".encode() + event_json(event) + b"\n\n"


def _key_id(request: Request) -> str | None:
    principal = request.principal
    return principal.key_id if principal is not None else None


class Services(Protocol):
    """What these routes use of the application."""

    accountant: Accountant
    agents: dict[str, Agent]
    config: Config
    guards: Guards
    keys: KeyStore
    relay: Relay | None
    run_events: EventStore
    runner: Runner
    sessions: SessionStore
    triggers: Triggers | None


def install(router: Router, app: Services) -> None:
    limit = app.config.server.max_stream_bytes

    def agent_named(name: str | None) -> Agent:
        agent = app.agents.get(name or "default")
        if agent is None:
            known = ", ".join(sorted(app.agents))
            raise NotFound(f"No agent named '{name}' (configured: {known}).", param="agent")
        return agent

    async def begin(
        request: Request,
        body: AgentChatBody,
        prompt: str,
        session_id: str | None,
        bill_at_end: bool = False,
    ) -> ActiveRun:
        """Admit and start a run. `bill_at_end`: no response waits for the run (background, or
        a WebSocket), so the run itself bills when it ends."""
        key_id = _key_id(request)
        agent_name = body.agent
        session = await app.sessions.get(key_id, session_id) if session_id else None
        if session is not None:
            agent = agent_named(agent_name or session.agent)
        else:  # new, or a session id the client chose, seen for the first time
            agent = agent_named(agent_name)
            session = await app.sessions.create(key_id, agent.name, prompt[:80], session_id)
            if session is None:  # another key's: as absent for this one as if it never was
                raise NotFound(f"No session '{session_id}'.", param="session_id")
        routed = Routed(agent.model, request.id)
        await app.guards.admit(request, routed, None)
        routed.attempts = 1
        on_end = None
        meter = request.meter
        if (body.background or bill_at_end) and meter is not None:

            def on_end(outcome: str) -> None:
                app.accountant.finish(meter, 200, outcome)

        active = await app.runner.start(
            key_id, session, agent, prompt, routed, body.background, on_end
        )
        if on_end is not None:
            request.meter = None  # the run bills itself when it ends
        return active

    def stream(
        run_id: str,
        ids: Headers,
        after: int,
        format: Format,
        on_leave: Callable[[], object] | None = None,
    ) -> Response:
        """The run's events after `after`, in the asked format, until its terminator (or,
        while it waits, `run.waiting`); `on_leave` runs when the stream ends however it ends
        (the client left: cancel a run that is not in the background)."""

        async def events() -> AsyncIterator[bytes]:
            try:
                if format == "native":
                    async for event in app.runner.follow(run_id, after):
                        yield encode_native(event)
                    return
                ui = UIMessageStream()
                last: Event | None = None
                async for event in app.runner.follow(run_id, 0):  # earlier ones: state only
                    encoded = ui.encode(event.seq, event.type, event.data)
                    if event.seq > after:
                        if last is None and after:  # taking up a message part-way
                            yield ui.start(event.seq, run_id)
                        last = event
                        yield encoded
                if last is not None and last.type == "run.waiting":
                    yield ui.pause(last.seq)
            finally:
                if on_leave is not None:
                    on_leave()

        headers = [*SSE_HEADERS, *ids]
        if format == "ai-sdk":
            headers.append(AI_SDK_HEADER)
        return StreamResponse(events(), headers=headers, max_bytes=limit)

    def live(active: ActiveRun, format: Format) -> Response:
        """A run started by this request: the client leaving cancels it (unless it waits
        for approval by then: a waiting run is in no process, and no connection holds it)."""
        ids = [("x-noroshi-run-id", active.run.id), ("x-noroshi-session-id", active.session.id)]

        def leave() -> None:
            if active.run.status == "running":
                app.runner.cancel(active)

        return stream(active.run.id, ids, 0, format, leave)

    async def answer(
        request: Request,
        session_id: str | None,
        answers: list[tuple[str, bool, str]],
        format: Format,
    ) -> Response:
        """useChat's answers to the calls its chat's run waits on: record them, then stream
        the rest of the run, from where it paused."""
        key_id = _key_id(request)
        session = await app.sessions.get(key_id, session_id) if session_id else None
        if session is None:
            raise NotFound(f"No session '{session_id}'.", param="id")
        waiting = [r for r in await app.sessions.runs(session.id) if r.status == "waiting"]
        if not waiting:
            raise Conflict(
                f"Session {session.id} has no run waiting for approval.",
                param="messages",
                code="not_waiting",
            )
        run = waiting[-1]
        after = len(await app.run_events.read(run.id))
        for tool_call_id, approved, reason in answers:
            with contextlib.suppress(Conflict):  # answered already (a retried request)
                await app.runner.decide(run.id, tool_call_id, approved, reason)
        request.meter = None  # the run bills the part it goes on with itself
        ids = [("x-noroshi-run-id", run.id), ("x-noroshi-session-id", session.id)]
        return stream(run.id, ids, after, format)

    async def agent_chat(request: Request) -> Response:
        body = await request.json(_decode_chat)
        body.background = False
        answers = body.answers()
        if answers:
            return await answer(
                request, body.session_id or body.id, answers, body.format or "ai-sdk"
            )
        prompt, session_id, format = body.turn()
        active = await begin(request, body, prompt, session_id)
        return live(active, format)

    async def start_run(request: Request) -> Response:
        body = await request.json(_decode_chat)
        prompt, session_id, format = body.turn()
        active = await begin(request, body, prompt, session_id)
        if not body.background:
            return live(active, format)
        return JSONResponse(
            RunAccepted(run_id=active.run.id, session_id=active.session.id), status=202
        )

    async def list_agents(request: Request) -> Response:
        agents = [
            AgentInfo(
                name=a.name,
                model=a.model,
                tools=[t.name for t in a.toolbox],
                knowledge=list(a.config.knowledge),
            )
            for a in app.agents.values()
        ]
        return JSONResponse(AgentList(data=agents))

    async def owned_run(request: Request) -> Run:
        """The caller's run, as stored; NotFound when it is not theirs at all."""
        run_id = request.params["id"]
        stored = await app.sessions.get_run(_key_id(request), run_id)
        if stored is None:
            raise NotFound(f"No run '{run_id}'.", param="id")
        return stored

    async def get_run(request: Request) -> Response:
        stored = await owned_run(request)
        active = app.runner.get(stored.id)
        run = stored  # unless it runs here, or ended here: what this process knows is newer
        if active is not None and (not active.log.done or active.run.status != "running"):
            run = active.run
        if run.status == "waiting":
            run.approvals = await app.runner.approvals.pending(run.id)
        return JSONResponse(run)

    async def join_run(request: Request) -> Response:
        """Replay and follow a run, from this replica's memory when it runs here, else from
        the shared event store (Redis, or the database)."""
        stored = await owned_run(request)
        after = 0
        last = request.headers.get("last-event-id")
        if last:
            with contextlib.suppress(ValueError):
                after = max(0, int(last))
        format = request.query_as(JoinQuery).format
        ids = [("x-noroshi-run-id", stored.id), ("x-noroshi-session-id", stored.session_id)]
        return stream(stored.id, ids, after, format)

    async def cancel_run(request: Request) -> Response:
        stored = await owned_run(request)
        active = app.runner.get(stored.id)
        if active is not None and not active.log.done:
            cancelled = app.runner.cancel(active)
        else:  # waiting, running on another replica, or left by a process that died
            cancelled = await app.runner.cancel_stored(stored)
        return JSONResponse(RunCancelled(run_id=stored.id, cancelled=cancelled))

    async def approve(request: Request) -> Response:
        stored = await owned_run(request)
        body = await request.json(_decode_approval)
        status = await app.runner.decide(stored.id, body.tool_call_id, body.approved, body.reason)
        return JSONResponse(
            ApprovalAnswer(
                run_id=stored.id,
                tool_call_id=body.tool_call_id,
                approved=body.approved,
                status=status,
            )
        )

    async def hook(request: Request) -> Response:
        if app.triggers is None:
            raise NotFound(f"No hook named '{request.params['name']}'.")
        active = await app.triggers.deliver(
            request.params["name"],
            request.headers.get("x-noroshi-timestamp") or "",
            request.headers.get("x-noroshi-signature") or "",
            await request.body(),
        )
        return JSONResponse(
            RunAccepted(run_id=active.run.id, session_id=active.session.id), status=202
        )

    async def list_sessions(request: Request) -> Response:
        sessions = await app.sessions.list(_key_id(request))
        return JSONResponse(SessionList(data=sessions))

    async def get_session(request: Request) -> Response:
        session = await app.sessions.get(_key_id(request), request.params["id"])
        if session is None:
            raise NotFound(f"No session '{request.params['id']}'.", param="id")
        return JSONResponse(
            SessionDetail(
                **msgspec.structs.asdict(session),
                messages=await app.sessions.messages(session.id),
                runs=await app.sessions.runs(session.id),
            )
        )

    async def delete_session(request: Request) -> Response:
        session_id = request.params["id"]
        key_id = _key_id(request)
        # whose it is first: another key learns nothing, not even that it is running
        if await app.sessions.get(key_id, session_id) is None:
            raise NotFound(f"No session '{session_id}'.", param="id")
        active = app.runner.by_session.get(session_id)
        busy = active.run.id if active is not None else await app.sessions.busy(session_id)
        if busy:  # here, or on another replica
            raise Conflict(
                f"Session {session_id} is running {busy}; cancel it first.",
                param="id",
                code="session_busy",
            )
        if not await app.sessions.delete(key_id, session_id):
            raise NotFound(f"No session '{session_id}'.", param="id")
        return JSONResponse(Deleted(id=session_id))

    async def agent_ws(request: Request, ws: WebSocket) -> None:
        """`{"type": "run", "prompt", "session_id"?, "agent"?}` starts a run whose events come
        back as JSON frames; `{"type": "cancel"}` stops it; `{"type": "approve",
        "tool_call_id", "approved", "reason"?}` answers a call it waits on, and its events go
        on. Leaving cancels the run, unless it waits."""
        await ws.accept()
        active: ActiveRun | None = None
        pump: asyncio.Task[None] | None = None

        async def forward(run_id: str, after: int) -> None:
            async for event in app.runner.follow(run_id, after):
                await ws.send_text(event_json(event).decode())

        def stop(run_id: str) -> None:
            """Cancel the socket's run where it runs here (taken up again, it is another
            task); a waiting one is in no process, and stays."""
            current = app.runner.get(run_id)
            if current is not None and current.run.status == "running":
                app.runner.cancel(current)

        async def refuse(exc: NoroshiError) -> None:
            frame = {
                "type": "error",
                "message": exc.message,
                "code": exc.code,
                "param": exc.param,
                "status": exc.status,
            }
            await ws.send_text(_encode(frame).decode())

        try:
            while True:
                try:
                    message = await ws.receive_json(_decode_ws)
                    if message.type == "cancel":
                        if active is not None:
                            stop(active.run.id)
                        continue
                    if message.type == "approve":  # a call the socket's run waits on
                        if active is None or message.tool_call_id is None:
                            raise Conflict(
                                "No run on this socket waits for approval.", code="not_waiting"
                            )
                        run_id = active.run.id
                        after = len(await app.run_events.read(run_id))
                        status = await app.runner.decide(
                            run_id, message.tool_call_id, message.approved, message.reason
                        )
                        if status == "running":
                            if pump is not None:
                                await pump
                            pump = asyncio.get_running_loop().create_task(forward(run_id, after))
                        continue
                    if active is not None and pump is not None and not pump.done():
                        raise Conflict(
                            f"Run {active.run.id} is still going on this socket; cancel it "
                            "or wait.",
                            code="run_in_progress",
                        )
                    prompt, session_id, _ = message.turn()
                    request.meter = Meter(request.principal, request.route, request.id)
                    active = await begin(request, message, prompt, session_id, bill_at_end=True)
                    pump = asyncio.get_running_loop().create_task(forward(active.run.id, 0))
                except NoroshiError as exc:
                    if request.meter is not None:  # refused before its run could bill it
                        app.accountant.finish(request.meter, exc.status, "error")
                        request.meter = None
                    await refuse(exc)
        except WebSocketDisconnect:
            pass
        finally:
            if request.meter is not None:  # cut off while a run was being admitted
                app.accountant.finish(request.meter, 499, "cut")
            if active is not None:
                stop(active.run.id)
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                    await pump

    routes: list[tuple[api.Endpoint, Handler]] = [
        (api.AGENT_CHAT, agent_chat),
        (api.AGENTS, list_agents),
        (api.RUN_START, start_run),
        (api.RUN, get_run),
        (api.RUN_STREAM, join_run),
        (api.RUN_CANCEL, cancel_run),
        (api.RUN_APPROVE, approve),
        (api.HOOK, hook),
        (api.SESSIONS, list_sessions),
        (api.SESSION, get_session),
        (api.SESSION_DELETE, delete_session),
    ]
    relay = app.relay
    for endpoint, handler in routes:
        # on an edge, the same routes go to a core, which runs the agents
        router.serve(endpoint, relay.forward if relay is not None else handler)
    router.add_websocket("/api/v1/agent/ws", relay.bridge if relay else agent_ws, access="model")
