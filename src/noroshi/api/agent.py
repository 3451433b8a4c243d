"""The agent surface: `/api/v1/agent/chat` streams a run; sessions and runs under `/api/v1`.

Native events are SSE with an `id:` each (the run's sequence), so a client that lost the
stream can join again with `Last-Event-ID`. A stream that fails ends with an `error` event
and without `run.finished`, the success terminator.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import msgspec

from noroshi.accounting import Meter
from noroshi.agent.runs import ActiveRun, Agent, Event
from noroshi.api.openai import admit
from noroshi.errors import Conflict, NoroshiError, NotFound
from noroshi.http import JSONResponse, Request, Response, Router, StreamResponse
from noroshi.http.response import SSE_HEADERS
from noroshi.http.websocket import WebSocket, WebSocketDisconnect
from noroshi.providers.base import Routed
from noroshi.store.sessions import Run
from noroshi.types import Handler, Headers
from noroshi.wire import endpoints as api
from noroshi.wire.agent import (
    AgentChatBody,
    AgentInfo,
    AgentList,
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
    from noroshi.app import App

__all__ = ["encode_native", "install"]

_encode = msgspec.json.encode


_decode_chat: msgspec.json.Decoder[AgentChatBody] = api.AGENT_CHAT.decoder
_decode_ws = msgspec.json.Decoder(WSMessage)


def event_json(event: Event) -> bytes:
    """An event as the `AgentEvent` types read it: type, seq and its data."""
    return _encode({"type": event.type, "seq": event.seq, **event.data})


def encode_native(event: Event) -> bytes:
    return f"id: {event.seq}\nevent: {event.type}\ndata: ".encode() + event_json(event) + b"\n\n"


def _key_id(request: Request) -> str | None:
    principal = request.principal
    return principal.key_id if principal is not None else None


def install(router: Router, app: App) -> None:
    limit = app.config.server.max_stream_bytes

    def agent_named(name: str | None) -> Agent:
        agent = app.agents.get(name or "default")
        if agent is None:
            known = ", ".join(sorted(app.agents))
            raise NotFound(f"No agent named '{name}' (configured: {known}).", param="agent")
        return agent

    async def begin(request: Request, body: AgentChatBody, prompt: str,
                    session_id: str | None, bill_at_end: bool = False) -> ActiveRun:  # fmt: skip
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
        await admit(app, request, routed, None)
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
        source: Callable[[int], AsyncIterator[Event]],
        ids: Headers,
        after: int,
        format: Format,
        on_leave: Callable[[], object] | None = None,
    ) -> Response:
        """The run's events from `source`, after `after`, in the asked format; `on_leave` runs
        when the stream ends however it ends (the client left: cancel a run that is not in the
        background)."""

        async def events() -> AsyncIterator[bytes]:
            try:
                if format == "native":
                    async for event in source(after):
                        yield encode_native(event)
                    return
                ui = UIMessageStream()
                async for event in source(0):  # earlier events only rebuild the encoder's state
                    encoded = ui.encode(event.seq, event.type, event.data)
                    if event.seq > after:
                        yield encoded
            finally:
                if on_leave is not None:
                    on_leave()

        headers = [*SSE_HEADERS, *ids]
        if format == "ai-sdk":
            headers.append(AI_SDK_HEADER)
        return StreamResponse(events(), headers=headers, max_bytes=limit)

    def live(active: ActiveRun, format: Format) -> Response:
        """A run started by this request: the client leaving cancels it."""
        ids = [("x-noroshi-run-id", active.run.id), ("x-noroshi-session-id", active.session.id)]
        return stream(active.log.follow, ids, 0, format, lambda: app.runner.cancel(active))

    async def agent_chat(request: Request) -> Response:
        body = await request.json(_decode_chat)
        body.background = False
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
        return JSONResponse(active.run if active is not None else stored)

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
        active = app.runner.get(stored.id)
        if active is not None:
            return stream(active.log.follow, ids, after, format)
        key_id = _key_id(request)

        async def running() -> bool:
            run = await app.sessions.get_run(key_id, stored.id)
            return run is not None and run.status == "running"

        async def kept(after: int) -> AsyncIterator[Event]:
            async for seq, type, data in app.run_events.follow(stored.id, after, running):
                yield Event(seq, type, data)

        return stream(kept, ids, after, format)

    async def cancel_run(request: Request) -> Response:
        stored = await owned_run(request)
        active = app.runner.get(stored.id)
        if active is not None:
            cancelled = app.runner.cancel(active)
        else:  # running on another replica, perhaps
            cancelled = stored.status == "running" and await app.run_events.ask_cancel(stored.id)
        return JSONResponse(RunCancelled(run_id=stored.id, cancelled=cancelled))

    async def list_sessions(request: Request) -> Response:
        sessions = await app.sessions.list(_key_id(request))
        return JSONResponse(SessionList(data=sessions))

    async def get_session(request: Request) -> Response:
        session = await app.sessions.get(_key_id(request), request.params["id"])
        if session is None:
            raise NotFound(f"No session '{request.params['id']}'.", param="id")
        return JSONResponse(SessionDetail(
            **msgspec.structs.asdict(session),
            messages=await app.sessions.messages(session.id),
            runs=await app.sessions.runs(session.id),
        ))  # fmt: skip

    async def delete_session(request: Request) -> Response:
        session_id = request.params["id"]
        busy = app.runner.by_session.get(session_id)
        if busy is not None:
            raise Conflict(f"Session {session_id} is running {busy.run.id}; cancel it first.",
                           param="id", code="session_busy")  # fmt: skip
        if not await app.sessions.delete(_key_id(request), session_id):
            raise NotFound(f"No session '{session_id}'.", param="id")
        return JSONResponse(Deleted(id=session_id))

    async def agent_ws(request: Request, ws: WebSocket) -> None:
        """`{"type": "run", "prompt", "session_id"?, "agent"?}` starts a run whose events come
        back as JSON frames; `{"type": "cancel"}` stops it. Leaving cancels the run."""
        await ws.accept()
        active: ActiveRun | None = None
        pump: asyncio.Task[None] | None = None

        async def forward(run: ActiveRun) -> None:
            async for event in run.log.follow(0):
                await ws.send_text(event_json(event).decode())

        async def refuse(exc: NoroshiError) -> None:
            frame = {"type": "error", "message": exc.message, "code": exc.code,
                     "param": exc.param, "status": exc.status}  # fmt: skip
            await ws.send_text(_encode(frame).decode())

        try:
            while True:
                try:
                    message = await ws.receive_json(_decode_ws)
                    if message.type == "cancel":
                        if active is not None:
                            app.runner.cancel(active)
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
                    pump = asyncio.get_running_loop().create_task(forward(active))
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
                app.runner.cancel(active)
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
        (api.SESSIONS, list_sessions),
        (api.SESSION, get_session),
        (api.SESSION_DELETE, delete_session),
    ]
    relay = app.relay
    for endpoint, handler in routes:
        # on an edge, the same routes go to a core, which runs the agents
        router.serve(endpoint, relay.forward if relay is not None else handler)
    router.add_websocket("/api/v1/agent/ws", relay.bridge if relay else agent_ws, access="model")
