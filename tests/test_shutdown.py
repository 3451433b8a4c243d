"""SIGTERM on a real `noroshi serve`: stop accepting, drain open streams, then cut the rest."""

from __future__ import annotations

import asyncio
import signal
from asyncio.subprocess import Process
from pathlib import Path

import aiohttp

from tests.conftest import openai_config
from tests.fakes.upstream import FakeOpenAI, Reply
from tests.processes import start_server, stop

HI = [{"role": "user", "content": "Hi"}]


async def stream_across_sigterm(base: str, proc: Process) -> tuple[bytes, bool]:
    """Start a stream, SIGTERM the server after its first chunk; the whole body, and whether
    a new connection was refused meanwhile."""
    payload = {"model": "fast", "messages": HI, "stream": True}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/v1/chat/completions", json=payload) as r,
    ):
        first = await r.content.readuntil(b"\n\n")
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        refused = False
        try:
            async with aiohttp.ClientSession() as other, other.get(f"{base}/health") as h:
                await h.read()
        except aiohttp.ClientConnectionError:
            refused = True
        return first + await r.content.read(), refused


async def test_open_stream_finishes_during_drain(tmp_path: Path, upstream: FakeOpenAI) -> None:
    upstream.default = Reply(text="a b c d e f g h", token_delay=0.15)
    proc, base = await start_server(tmp_path, openai_config(upstream.base_url))
    try:
        body, refused = await stream_across_sigterm(base, proc)
    finally:
        code = await stop(proc)
    assert refused
    assert body.endswith(b"data: [DONE]\n\n")
    assert b'"error"' not in body
    assert code == 0


async def test_stream_past_drain_timeout_is_cut_with_error_event(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    upstream.default = Reply(text=" ".join(["w"] * 100), token_delay=0.1)
    config = "[server]\ndrain_timeout_s = 0.5\n" + openai_config(upstream.base_url)
    proc, base = await start_server(tmp_path, config)
    try:
        body, _ = await stream_across_sigterm(base, proc)
    finally:
        await stop(proc)
    assert b"[DONE]" not in body
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert b'"code":"shutting_down"' in last
    assert await upstream.wait_disconnect()
