"""Traces over OpenTelemetry (the `otel` extra), with the GenAI semantic conventions.

A span per request (`POST /v1/chat/completions`), a child per upstream attempt (`chat m1`,
so retries and fallbacks show as siblings), and for agents a span per step and per tool call
(`execute_tool get_weather`). Model spans carry `gen_ai.operation.name`,
`gen_ai.request.model`, `gen_ai.provider.name` and `gen_ai.usage.input_tokens` /
`output_tokens`.

With `[tracing]` off, `current` is None: the request path pays one `is None` test per request
and per attempt, and the OpenTelemetry packages are not imported. With an `otlp_endpoint`,
noroshi installs the SDK with a batching OTLP/HTTP exporter; with `enabled = true` and no
endpoint, it uses whatever tracer provider the process has (`opentelemetry-instrument`, or a
test's in-memory exporter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from noroshi import __version__
from noroshi.providers.base import Call

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from noroshi.config import TracingConfig
    from noroshi.http import Request
    from noroshi.providers.base import Routed
    from noroshi.providers.router import Deployment

__all__ = ["Tracing", "current", "setup_tracing", "span"]

T = TypeVar("T")
current: Tracing | None = None  # set once at start when [tracing] is on


def setup_tracing(config: TracingConfig) -> Tracing | None:
    """The process's Tracing when the config turns it on, else None."""
    global current
    if not (config.enabled or config.otlp_endpoint):
        return None
    if current is None:
        current = Tracing(config)
    return current


class Tracing:
    def __init__(self, config: TracingConfig) -> None:
        from opentelemetry import context, trace

        if config.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider = TracerProvider(resource=Resource({"service.name": config.service_name}))
            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))
            )
            trace.set_tracer_provider(provider)
        self._trace = trace
        self._context = context
        self.tracer = trace.get_tracer("noroshi", __version__)

    # --- the request ---------------------------------------------------------------------

    def start_request(self, request: Request) -> tuple[Span, object]:
        """The request's span, made current for what runs under it."""
        span = self.tracer.start_span(
            f"{request.method} {request.path}",
            kind=self._trace.SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "url.path": request.path,
                "noroshi.request_id": request.id,
            },
        )
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token

    def end_request(self, span: Span, token: object, request: Request, status: int) -> None:
        span.set_attribute("http.response.status_code", status)
        if request.route:
            span.set_attribute("http.route", request.route)
            span.update_name(f"{request.method} {request.route}")
        meter = request.meter
        if meter is not None and meter.model:
            span.set_attribute("gen_ai.request.model", meter.model)
            _usage(span, meter.routed)
        if status >= 500:
            span.set_status(self._trace.StatusCode.ERROR)
        self._context.detach(token)  # type: ignore[arg-type]
        span.end()

    # --- model calls, agents, tools ------------------------------------------------------

    async def attempt(self, call: Routed, dep: Deployment, answer: Awaitable[T]) -> T:
        """One try at one deployment, as a child span (`chat m1`)."""
        provider = dep.provider.config
        attributes = {
            "gen_ai.operation.name": "chat" if isinstance(call, Call) else "embeddings",
            "gen_ai.request.model": dep.model,
            "gen_ai.provider.name": provider.type,
            "noroshi.deployment": dep.label,
            "noroshi.attempt": call.attempts,
        }
        if provider.base_url:
            attributes["server.address"] = provider.base_url
        name = f"{attributes['gen_ai.operation.name']} {dep.model}"
        with self.tracer.start_as_current_span(
            name, kind=self._trace.SpanKind.CLIENT, attributes=attributes
        ) as span:
            try:
                result = await answer
            except Exception as exc:
                span.set_attribute("error.type", type(exc).__name__)
                raise
            _usage(span, call)
            return result

    @contextlib.contextmanager
    def span(self, name: str, attributes: dict[str, Any]) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span


def _usage(span: Span, routed: Routed | None) -> None:
    usage = routed.usage if routed is not None else None
    if usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A span when tracing is on, else nothing: for the agent's steps and tool calls."""
    if current is None:
        return contextlib.nullcontext()
    return current.span(name, attributes)
