"""Traces, read back from OpenTelemetry's in-memory exporter: a span per request, a child per
upstream attempt (a retry shows as a second one), agent steps and tool calls, with the GenAI
semantic-convention attributes; and no tracing at all when the config does not ask for it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from noroshi import tracing
from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.processes import start_server, stop

EXPORTER = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)  # once per process, as OpenTelemetry allows

ON = """
[tracing]
enabled = true

[[agents]]
name = "helper"
model = "fast"
tools = ["tests.agent.loop_tools:lookup_city"]
"""
noroshi_only = pytest.mark.parametrize("serve", ["noroshi"], indirect=True)


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    tracing.current = None  # the rest of the suite runs untraced


def named(spans: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name.startswith(prefix)]


@noroshi_only
async def test_a_retry_shows_as_two_attempts_under_the_request(
    serve: Serve, upstream: FakeOpenAI, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    upstream.script(Reply(status=500), Reply(text="ok", prompt_tokens=11, completion_tokens=3))
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url, extra=ON)))
    payload = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/v1/chat/completions", json=payload) as r,
    ):
        assert r.status == 200
    (request,) = named(spans, "POST /v1/chat/completions")
    attempts = named(spans, "chat m1")
    assert len(attempts) == 2
    assert all(
        a.parent is not None and a.parent.span_id == request.context.span_id for a in attempts
    )
    failed, worked = sorted(attempts, key=lambda a: a.start_time or 0)
    assert failed.attributes is not None and failed.attributes["error.type"]
    assert worked.attributes is not None
    assert worked.attributes["gen_ai.operation.name"] == "chat"
    assert worked.attributes["gen_ai.request.model"] == "m1"
    assert worked.attributes["gen_ai.provider.name"] == "openai"
    assert worked.attributes["gen_ai.usage.input_tokens"] == 11
    assert worked.attributes["gen_ai.usage.output_tokens"] == 3
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["gen_ai.request.model"] == "fast"
    assert request.attributes["gen_ai.usage.output_tokens"] == 3


@noroshi_only
async def test_agent_steps_and_tool_calls_are_spans(
    serve: Serve, upstream: FakeOpenAI, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    upstream.script(
        Reply(tool_calls=[{"name": "lookup_city", "arguments": {"city": "Lyon"}}]),
        Reply(text="Lyon has 1000 people."),
    )
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url, extra=ON)))
    payload = {"prompt": "How big is Lyon?", "agent": "helper"}
    async with aiohttp.ClientSession() as s, s.post(f"{base}/api/v1/agent/chat", json=payload) as r:
        assert r.status == 200
        await r.read()
    steps = named(spans, "agent step")
    assert [s.name for s in sorted(steps, key=lambda s: s.start_time or 0)] == [
        "agent step 1",
        "agent step 2",
    ]
    (tool,) = named(spans, "execute_tool lookup_city")
    assert tool.attributes is not None and tool.attributes["gen_ai.tool.name"] == "lookup_city"
    first = min(steps, key=lambda s: s.start_time or 0)
    assert tool.parent is not None and tool.parent.span_id == first.context.span_id
    assert len(named(spans, "chat m1")) == 2  # one model call a step


@noroshi_only
async def test_no_tracing_unless_configured(
    serve: Serve, upstream: FakeOpenAI, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url)))
    payload = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/v1/chat/completions", json=payload) as r,
    ):
        assert r.status == 200
    assert tracing.current is None
    assert spans.get_finished_spans() == ()


def test_the_sdk_is_not_imported_unless_configured() -> None:
    code = (
        "import sys; from noroshi.app import App; from noroshi.config import Config; "
        "App(Config()); print('opentelemetry.sdk' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


async def test_spans_go_out_over_otlp_when_an_endpoint_is_set(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    """A real `noroshi serve` with `otlp_endpoint`, against a collector on loopback."""
    received: list[bytes] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    extra = f'[tracing]\notlp_endpoint = "http://127.0.0.1:{port}/v1/traces"\n'
    proc, base = await start_server(tmp_path, openai_config(upstream.base_url, extra=extra))
    try:
        payload = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{base}/v1/chat/completions", json=payload) as r,
        ):
            assert r.status == 200
    finally:
        proc.terminate()
        await stop(proc)  # the exporter sends what it holds as the process ends
        await runner.cleanup()
    sent = b"".join(received)
    assert b"POST /v1/chat/completions" in sent and b"gen_ai.request.model" in sent
