"""The application: builds providers and routes once, then serves requests.

A request's way, each arrow a module boundary: transport (`noroshi.http.server`, or the ASGI
adapter; both call `dispatch`) -> router -> guards (`noroshi.guards`: CORS, access, admission)
-> handler (`noroshi.api`) -> provider router -> provider (upstream events) -> the client's
wire format (`noroshi.wire`: framing, terminator) -> finalizer (`Accountant.finish`: usage,
budgets, metrics). WebSockets take the same way through `websocket`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from noroshi.accounting import Accountant
from noroshi.agent.build import build_agents
from noroshi.agent.events import DatabaseEvents, EventStore, RedisEvents
from noroshi.agent.runs import Agent, Runner
from noroshi.api import (
    admin,
    agent,
    channels,
    docs,
    health,
    knowledge,
    messages,
    openai,
    playground,
    responses,
    simple,
)
from noroshi.auth import Authenticator, KeyChanges
from noroshi.config import Config, ProviderConfig, data_dir, load_config
from noroshi.edge.relay import Relay
from noroshi.edge.signing import MemoryNonces, RedisNonces, Signer, Verifier
from noroshi.errors import BadRequest, NoDeployment, NoroshiError, Unavailable
from noroshi.guards import Guards
from noroshi.http import Request, Response, Router, StreamResponse
from noroshi.http.asgi import ASGIAdapter, Receive, Scope, Send
from noroshi.http.cors import Cors
from noroshi.http.request import request_id
from noroshi.http.response import Sink
from noroshi.http.websocket import WebSocket, WebSocketDisconnect, with_query_key
from noroshi.limits import Limiter, LocalLimiter, SharedLimiter
from noroshi.logs import AccessLog
from noroshi.metrics import SHARED_DIR_ENV, Metrics
from noroshi.providers.anthropic import AnthropicProvider
from noroshi.providers.base import Provider
from noroshi.providers.core import CoreProvider
from noroshi.providers.local import LocalProvider
from noroshi.providers.local_embeddings import LocalEmbeddingsProvider
from noroshi.providers.openai_compat import OpenAIProvider
from noroshi.providers.router import ProviderRouter
from noroshi.retrieval.service import Knowledge, open_store
from noroshi.store.database import Database, open_database
from noroshi.store.keys import KeyStore
from noroshi.store.sessions import SessionStore
from noroshi.store.usage import UsageLog
from noroshi.tracing import setup_tracing

if TYPE_CHECKING:
    from noroshi.agent.triggers import Triggers
    from noroshi.channels.gateway import ChannelGateway

__all__ = ["App", "build_provider"]

log = logging.getLogger("noroshi")

PROVIDER_TYPES: dict[str, type[Provider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "local": LocalProvider,
    "local_embeddings": LocalEmbeddingsProvider,
    "core": CoreProvider,
}
HEALTH_CHECK_S = 2.0  # how often an edge asks each core whether it takes requests


def build_provider(name: str, config: ProviderConfig) -> Provider:
    return PROVIDER_TYPES[config.type](name, config)


class App:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config if config is not None else load_config()
        self.started = time.monotonic()
        self.streams: dict[StreamResponse, asyncio.Task[Any] | None] = {}
        self.metrics = Metrics(
            active_streams=lambda: len(self.streams), shared_dir=os.environ.get(SHARED_DIR_ENV)
        )
        self.role = self.config.server.role
        self.providers = {n: build_provider(n, p) for n, p in self.config.providers.items()}
        self.relay: Relay | None = None
        if self.role == "edge":
            signer = Signer(self.config.internal.secret)
            cores = [p for p in self.providers.values() if isinstance(p, CoreProvider)]
            for core in cores:
                core.signer = signer
            self.relay = Relay(cores, self.config.server.max_stream_bytes)
        self.models = ProviderRouter(self.config, self.providers, self.metrics)
        self.channels: ChannelGateway | None = None
        if self.config.channels:  # imported only when used: it brings httpx2, a tenth of a start
            from noroshi.channels.gateway import ChannelGateway

            self.channels = ChannelGateway(self.config.channels)
        self.router = Router()
        # path prefix -> how its errors are written, for APIs with an envelope of their own
        self.error_formats: dict[str, Callable[[NoroshiError], Response]] = {}
        self._closers: list[Callable[[], Awaitable[None]]] = []  # run at shutdown, in order
        health.install(self.router, self)
        openai.install(self.router, self)
        messages.install(self.router, self)
        responses.install(self.router, self)
        simple.install(self.router, self)
        if self.role != "core":  # a core answers its edge only: no admin surface
            admin.install(self.router, self)
        agent.install(self.router, self)
        knowledge.install(self.router, self)
        channels.install(self.router, self)
        docs.install(self.router)
        playground.install(self.router)
        self.cors = Cors(self.config.cors) if self.config.cors.allow_origins else None
        self._asgi: ASGIAdapter | None = None
        self.draining = False
        self._drain_ends: float | None = None  # the loop's time; None: not draining
        self.access = AccessLog() if self.config.logging.access else None
        self.tracing = setup_tracing(self.config.tracing)
        self.server = ""  # which server runs us, set by the transport adapter
        self._started: asyncio.Task[None] | None = None
        # made by `startup`, which opens the database
        self.db: Database
        self.keys: KeyStore
        self.usage: UsageLog
        self.limiter: Limiter
        self.auth: Authenticator
        self.accountant: Accountant
        self.guards: Guards
        self.sessions: SessionStore
        self.runner: Runner
        self.agents: dict[str, Agent] = {}
        self.triggers: Triggers | None = None
        self._health_task: asyncio.Task[None] | None = None

    def on_close(self, close: Callable[[], Awaitable[None]]) -> None:
        """Run `close` at shutdown, after the ones added before it."""
        self._closers.append(close)

    def default_chat_model(self) -> str:
        name = self.config.defaults.chat_model or next(iter(self.models.routes), "")
        if not name:
            raise NoDeployment("No model is configured; add a [[models]] entry.")
        return name

    def default_embedding_model(self) -> str:
        name = self.config.defaults.embedding_model
        if not name:
            raise BadRequest(
                "No embedding model is configured: name one in `model`, or set "
                "defaults.embedding_model.",
                param="model",
            )
        return name

    async def dispatch(self, request: Request, sink: Sink) -> None:
        """Router, guards, handler; every error rendered in its API's envelope; the answer sent,
        and the bill for every model request however it ended."""
        if self._started is None or not self._started.done():
            await self.startup()
        request.id = request_id(request.headers.get("x-request-id"))
        guards = self.guards
        status, outcome = 499, "cut"  # unless the answer is sent, the client left
        began = time.monotonic()
        span = self.tracing.start_request(request) if self.tracing is not None else None
        try:
            try:
                response = guards.preflight(request) or await self._handle(request)
            except NoroshiError as exc:
                response = self.error_response(request, exc)
            except Exception:
                log.exception(
                    "unhandled error in %s %s [%s]", request.method, request.path, request.id
                )
                failed = NoroshiError("The gateway failed to handle the request.")
                response = self.error_response(request, failed)
            status = response.status
            guards.leave(request, response)
            meter = request.meter
            if not isinstance(response, StreamResponse):
                if meter is not None:  # complete: what it held is free before it is sent
                    await self.accountant.release(meter)
                await response.send(sink)
                outcome = "ok" if status < 400 else "error"
                return
            if meter is not None:
                response.before_end = partial(self.accountant.release, meter)
            self.streams[response] = request.task
            try:
                await response.send(sink)
            finally:
                del self.streams[response]
                outcome = response.outcome
        finally:
            if request.meter is not None:
                self.accountant.finish(request.meter, status, outcome)
            else:
                self.metrics.answered(request.route, "", status, time.monotonic() - began)
            if self.access is not None:
                self.access.write(request, status, time.monotonic() - began)
            if span is not None:
                self.tracing.end_request(*span, request, status)  # type: ignore[union-attr]

    async def _handle(self, request: Request) -> Response:
        route, request.params = self.router.match(request.method, request.path)
        request.route = route.path
        await self.guards.enter(request, route)
        return await route.handler(request)

    async def websocket(self, request: Request, ws: WebSocket) -> None:
        """The WebSocket twin of `dispatch`: router, guards, handler, and every error ending the
        socket the one way the protocol allows at that point."""
        request.id = request_id(request.headers.get("x-request-id"))
        request.headers = with_query_key(request.headers, request.query)
        try:
            await self.startup()
            if self.draining:
                raise Unavailable("The server is shutting down.", code="shutting_down")
            route, request.params = self.router.match_websocket(request.path)
            request.route = route.path
            request.principal = await self.auth.check(request, route.access)
            await route.handler(request, ws)
        except WebSocketDisconnect:
            return
        except NoroshiError as exc:
            await ws.refuse(exc)
            return
        except Exception:
            log.exception("unhandled error in WebSocket %s [%s]", request.path, request.id)
            await ws.refuse(NoroshiError("The gateway failed to handle the WebSocket."))
            return
        await ws.close()  # the handler returned: a no-op if it closed, a refusal if not accepted

    def error_response(self, request: Request, exc: NoroshiError) -> Response:
        """The error in the envelope of the API the path belongs to (OpenAI's unless a surface
        registered its own in `error_formats`)."""
        for prefix, render in self.error_formats.items():
            if request.path.startswith(prefix):
                return render(exc)
        return Response.error(exc)

    # --- lifecycle -------------------------------------------------------------------------

    async def startup(self) -> None:
        """Open the database and the shared state; safe to call more than once."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._open())
        await asyncio.shield(self._started)

    async def _open(self) -> None:
        config = self.config
        storage = config.storage
        self.db = await open_database(
            storage.url, data_dir(config), storage.timeout_s, storage.connect_timeout_s
        )
        self.keys = KeyStore(self.db)
        self.usage = UsageLog(
            self.db, storage.usage_batch_size, storage.usage_flush_s, storage.usage_max_pending
        )
        self.usage.start()
        redis = config.redis
        if redis.url:
            self.limiter = SharedLimiter(
                redis.url,
                redis.prefix,
                redis.local_share,
                redis.retry_s,
                lease_ttl_s=redis.lease_ttl_s,
            )
        else:
            self.limiter = LocalLimiter()
        self.auth = Authenticator(config.auth, self.keys, self.limiter)
        if self.role == "core":
            internal = config.internal
            nonces: MemoryNonces | RedisNonces = MemoryNonces()
            if redis.url:  # replicas of a core share what they have seen
                nonces = RedisNonces(redis.url, redis.prefix)
                self._closers.append(nonces.close)
            self.auth.verifier = Verifier(internal.secret, internal.previous_secret, nonces=nonces)
        if self.role == "edge":
            self._health_task = asyncio.get_running_loop().create_task(self._check_cores())
        if redis.url:
            self.auth.changes = KeyChanges(redis.url, redis.prefix, self.auth.forget)
            self.auth.changes.start()
        self.accountant = Accountant(config, self.limiter, self.usage, self.metrics)
        self.guards = Guards(
            self.auth,
            self.accountant,
            self.cors,
            bills=self.role != "core",
            vouches=self.role == "edge",
        )
        self.sessions = SessionStore(self.db)
        self.run_events: EventStore = (
            RedisEvents(redis.url, redis.prefix) if redis.url else DatabaseEvents(self.db)
        )
        store = open_store(self.db, data_dir(config), config.retrieval)
        self.knowledge = Knowledge(
            store, self.models, config.retrieval, self.default_embedding_model
        )
        await self.knowledge.open()
        self._closers.append(self.knowledge.store.close)
        self.runner = Runner(self.models, self.sessions, self.run_events, config=config.runs)
        self.runner.hand_over = self.db.dialect == "postgresql"  # another replica goes on
        self.runner.billing = agent.resumed_billing(self)
        if self.metrics.shared is not None:  # one of several workers: publish for a scrape
            self._closers.append(self.metrics.start())
        self.run_events.listen_cancels(self.runner.cancel_id)
        if self.role != "edge":  # an edge relays agent requests; its cores run the agents
            self.agents, closers = await build_agents(
                config, self.default_chat_model, self.knowledge
            )
            self._closers.extend(closers)
            self.runner.agents = self.agents
            if not self.draining:
                self.runner.open()
            if config.schedules or config.hooks:  # cron parsing only when it is used
                from noroshi.agent.triggers import Triggers

                self.triggers = Triggers(
                    config.schedules, config.hooks, self.db, self.sessions, self.runner, self.agents
                )
                self.triggers.start()
        if self.channels is not None:
            from noroshi.channels.store import ChannelStore

            await self.channels.start(
                ChannelStore(self.db), self.runner, self.sessions, self.agents, self.accountant
            )
        self.warm()

    def warm(self) -> None:
        for provider in self.providers.values():
            provider.warm()

    async def _check_cores(self) -> None:
        """Ask each core for its health every few seconds: a core that fails, or says it is
        draining, gets no new requests until it answers again."""
        cores = [p for p in self.providers.values() if isinstance(p, CoreProvider)]
        while True:
            states = await asyncio.gather(*(core.health() for core in cores))
            for core, healthy in zip(cores, states, strict=True):
                if core.healthy != healthy:
                    log.warning(
                        "core %s is %s",
                        core.config.base_url,
                        "back" if healthy else "out of the pool",
                    )
                if healthy:  # answering its checks: whatever failed before, it is back
                    self.models.revive(core)
                core.healthy = healthy
            await asyncio.sleep(HEALTH_CHECK_S)

    async def shutdown(self) -> None:
        """Close providers, then flush every pending usage record; after a start that failed
        half way, close what it had opened (its database threads would keep the process)."""
        if self.access is not None:
            self.access.flush()
        for provider in self.providers.values():
            await provider.close()
        started = self._started
        if started is None or not started.done() or started.cancelled():
            return
        opened = vars(self)
        if self._health_task is not None:
            self._health_task.cancel()
        if self.channels is not None and not started.exception():  # first: what it was
            await self.channels.close()  # answering is finished on restart
        if self.triggers is not None:
            self.triggers.close()
        if "runner" in opened:
            await self.runner.close(self._drain_ends)
        if "run_events" in opened:
            await self.run_events.close()
        for close in self._closers:
            await close()
        if "auth" in opened and self.auth.changes is not None:
            await self.auth.changes.close()
        for name in ("usage", "limiter", "db"):
            if name in opened:
                await opened[name].close()

    def begin_drain(self) -> None:
        """Stop taking work; streams still open after the drain timeout end with an error."""
        if self.draining:
            return
        self.draining = True
        timeout = self.config.server.drain_timeout_s
        log.info("draining %d open streams for up to %.0f s", len(self.streams), timeout)
        loop = asyncio.get_running_loop()
        loop.call_later(timeout, self._cut_streams)
        self._drain_ends = loop.time() + timeout  # background runs go on until then too
        runner: Runner | None = getattr(self, "runner", None)  # made at startup
        if runner is not None:
            runner.begin_drain()
        if self.triggers is not None:
            self.triggers.close()

    def _cut_streams(self) -> None:
        reason = Unavailable(
            "The server is shutting down; the stream was cut.", code="shutting_down"
        )
        for stream, task in list(self.streams.items()):
            if task is not None:
                stream.cut(reason, task)

    # --- transports ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An ASGI application, for uvicorn and other ASGI servers."""
        if self._asgi is None:
            self._asgi = ASGIAdapter(
                self.dispatch,
                self.websocket,
                self.startup,
                self.shutdown,
                self.config.server.max_body_bytes,
            )
            self.server = self._asgi.name
        await self._asgi(scope, receive, send)
