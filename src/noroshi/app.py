"""The application: builds providers, routes and middleware once, then serves requests.

noroshi's own HTTP/1.1 server (`noroshi.serve`) calls `dispatch`; the same object is an ASGI
app (uvicorn and others) whose adapter ends in `dispatch` too, so behaviour is identical.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from noroshi.accounting import Accountant, Meter
from noroshi.agent.build import build_agents
from noroshi.agent.events import DatabaseEvents, EventStore, RedisEvents
from noroshi.agent.runs import Agent, Runner
from noroshi.api import admin, agent, channels, docs, health, knowledge, openai, playground, simple
from noroshi.auth import Authenticator, KeyChanges
from noroshi.config import Config, ProviderConfig, data_dir, load_config
from noroshi.edge.relay import Relay
from noroshi.edge.signing import MemoryNonces, RedisNonces, Signer, Verifier
from noroshi.errors import BadRequest, NoDeployment, NoroshiError, Unavailable
from noroshi.http import Request, Response, Router, StreamResponse
from noroshi.http.asgi import Receive, Scope, Send, serve_asgi
from noroshi.http.cors import cors
from noroshi.http.middleware import compose
from noroshi.http.request import request_id
from noroshi.http.response import Sink
from noroshi.limits import Limiter, LocalLimiter, SharedLimiter
from noroshi.logs import AccessLog
from noroshi.metrics import SHARED_DIR_ENV, Metrics
from noroshi.providers.anthropic import AnthropicProvider
from noroshi.providers.base import Provider
from noroshi.providers.core import CALLER, CoreProvider
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
from noroshi.types import Middleware

if TYPE_CHECKING:
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
    def __init__(self, config: Config | None = None, middleware: Sequence[Middleware] = ()) -> None:
        self.config = config if config is not None else load_config()
        self.started = time.monotonic()
        self.streams: dict[StreamResponse, asyncio.Task[Any] | None] = {}
        self.metrics = Metrics(active_streams=lambda: len(self.streams),
                               shared_dir=os.environ.get(SHARED_DIR_ENV))  # fmt: skip
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
        if self.config.channels:  # imported only when used: it brings httpx, a tenth of a start
            from noroshi.channels.gateway import ChannelGateway

            self.channels = ChannelGateway(self.config.channels)
        self.router = Router()
        health.install(self.router, self)
        openai.install(self.router, self)
        simple.install(self.router, self)
        if self.role != "core":  # a core answers its edge only: no admin surface
            admin.install(self.router, self)
        agent.install(self.router, self)
        knowledge.install(self.router, self)
        channels.install(self.router, self)
        docs.install(self.router, self)
        playground.install(self.router, self)
        if self.config.cors.allow_origins:
            middleware = [cors(self.config.cors), *middleware]
        self._handle = compose(middleware, self._route)
        self.draining = False
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
        self.sessions: SessionStore
        self.runner: Runner
        self.agents: dict[str, Agent] = {}
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._health_task: asyncio.Task[None] | None = None

    def default_chat_model(self) -> str:
        name = self.config.defaults.chat_model or next(iter(self.models.routes), "")
        if not name:
            raise NoDeployment("No model is configured; add a [[models]] entry.")
        return name

    def default_embedding_model(self) -> str:
        name = self.config.defaults.embedding_model
        if not name:
            raise BadRequest("No embedding model is configured: name one in `model`, or set "
                             "defaults.embedding_model.", param="model")  # fmt: skip
        return name

    async def _route(self, request: Request) -> Response:
        """Router, then the auth guard, then the handler; model routes get a meter."""
        route, request.params = self.router.match(request.method, request.path)
        request.route = route.path
        principal = request.principal = await self.auth.check(request, route.access)
        if route.access == "model" and self.role != "core":  # the edge bills, not the core
            request.meter = Meter(principal, route.path, request.id)
        if principal is not None and self.role == "edge":
            CALLER.set(principal.context())
        return await route.handler(request)

    async def dispatch(self, request: Request, sink: Sink) -> None:
        """The outermost layer: request id, every error rendered in the one envelope, and the
        bill for every model request however it ended."""
        if self._started is None or not self._started.done():
            await self.startup()
        request.id = request_id(request.headers.get("x-request-id"))
        status, outcome = 499, "cut"  # unless the answer is sent, the client left
        began = time.monotonic()
        span = self.tracing.start_request(request) if self.tracing is not None else None
        try:
            try:
                response = await self._handle(request)
            except NoroshiError as exc:
                response = Response.error(exc)
            except Exception:
                log.exception("unhandled error in %s %s [%s]",
                              request.method, request.path, request.id)  # fmt: skip
                response = Response.error(NoroshiError("The gateway failed to handle the request."))
            status = response.status
            if request.meter is not None:
                response.headers.extend(self.accountant.headers(request.meter))
            response.headers.append(("x-request-id", request.id))
            if not isinstance(response, StreamResponse):
                await response.send(sink)
                outcome = "ok" if status < 400 else "error"
                return
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

    # --- lifecycle -------------------------------------------------------------------------

    async def startup(self) -> None:
        """Open the database and the shared state; safe to call more than once."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._open())
        await asyncio.shield(self._started)

    async def _open(self) -> None:
        config = self.config
        storage = config.storage
        self.db = await open_database(storage.url, data_dir(config), storage.timeout_s,
                                      storage.connect_timeout_s)  # fmt: skip
        self.keys = KeyStore(self.db)
        self.usage = UsageLog(self.db, storage.usage_batch_size, storage.usage_flush_s,
                              storage.usage_max_pending)  # fmt: skip
        self.usage.start()
        redis = config.redis
        if redis.url:
            self.limiter = SharedLimiter(redis.url, redis.prefix, redis.local_share,
                                         redis.retry_s, lease_ttl_s=redis.lease_ttl_s)  # fmt: skip
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
        self.sessions = SessionStore(self.db)
        self.run_events: EventStore = (
            RedisEvents(redis.url, redis.prefix) if redis.url else DatabaseEvents(self.db)
        )
        store = open_store(self.db, data_dir(config), config.retrieval)
        self.knowledge = Knowledge(store, self.models, config.retrieval,
                                   self.default_embedding_model)  # fmt: skip
        await self.knowledge.open()
        self._closers.append(self.knowledge.store.close)
        self.runner = Runner(self.models, self.sessions, self.run_events)
        if self.metrics.shared is not None:  # one of several workers: publish for a scrape
            self._closers.append(self.metrics.start())
        self.run_events.listen_cancels(self.runner.cancel_id)
        if self.role != "edge":  # an edge relays agent requests; its cores run the agents
            self.agents, closers = await build_agents(
                config, self.default_chat_model, self.knowledge
            )
            self._closers.extend(closers)
        if self.channels is not None:
            from noroshi.channels.store import ChannelStore

            await self.channels.start(ChannelStore(self.db), self.runner, self.sessions,
                                      self.agents, self.accountant)  # fmt: skip
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
                    log.warning("core %s is %s", core.config.base_url,
                                "back" if healthy else "out of the pool")  # fmt: skip
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
        for name in ("runner", "run_events"):
            if name in opened:
                await opened[name].close()
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
        asyncio.get_running_loop().call_later(timeout, self._cut_streams)

    def _cut_streams(self) -> None:
        reason = Unavailable(
            "The server is shutting down; the stream was cut.", code="shutting_down"
        )
        for stream, task in list(self.streams.items()):
            if task is not None:
                stream.cut(reason, task)

    # --- transports ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_asgi(self, scope, receive, send)
