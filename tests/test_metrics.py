"""The per-request metrics: plain counters on the hot path, Prometheus families when scraped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from noroshi import metrics
from noroshi.metrics import Metrics
from tests.conftest import openai_config
from tests.fakes.upstream import FakeOpenAI
from tests.processes import start_server, stop


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = m.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_histograms_are_cumulative_and_summed_per_label() -> None:
    m = Metrics(active_streams=lambda: 3)
    m.answered("/v1/chat/completions", "fast", 200, 0.004, 0.002, prompt=8, completion=20)
    m.answered("/v1/chat/completions", "fast", 200, 0.3, 0.005, prompt=2, completion=1)
    m.answered("/v1/chat/completions", "slow", 502, 200.0)  # past the last bound
    got = samples(m)
    route = ("route", "/v1/chat/completions")
    assert got["noroshi_request_duration_seconds_bucket", (("le", "0.005"), route)] == 1
    assert got["noroshi_request_duration_seconds_bucket", (("le", "0.5"), route)] == 2
    assert got["noroshi_request_duration_seconds_bucket", (("le", "120.0"), route)] == 2
    assert got["noroshi_request_duration_seconds_bucket", (("le", "+Inf"), route)] == 3
    assert got["noroshi_request_duration_seconds_count", (route,)] == 3
    assert got["noroshi_request_duration_seconds_sum", (route,)] == 0.004 + 0.3 + 200.0
    # a value equal to a bound falls in that bucket, as Prometheus defines `le`
    assert (
        got["noroshi_time_to_first_token_seconds_bucket", (("le", "0.005"), ("model", "fast"))] == 2
    )
    assert got["noroshi_time_to_first_token_seconds_count", (("model", "slow"),)] == 0
    assert got["noroshi_tokens_total", (("direction", "in"), ("model", "fast"))] == 10
    assert got["noroshi_tokens_total", (("direction", "out"), ("model", "fast"))] == 21
    assert got["noroshi_requests_total", (("model", "fast"), route, ("status", "200"))] == 2
    assert got["noroshi_requests_total", (("model", "slow"), route, ("status", "502"))] == 1
    assert got["noroshi_active_streams", ()] == 3


def test_label_combinations_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "MAX_COMBINATIONS", 2)
    m = Metrics()
    for model in ("a", "b", "c", "d"):
        m.answered("/v1/chat/completions", model, 200, 0.1)
    got = samples(m)
    models = {dict(labels)["model"] for name, labels in got if name == "noroshi_requests_total"}
    assert models == {"a", "b", metrics.OTHER}
    assert (
        got[
            "noroshi_requests_total",
            (("model", metrics.OTHER), ("route", "/v1/chat/completions"), ("status", "200")),
        ]
        == 2
    )


async def test_a_scrape_sums_every_worker(tmp_path: Path, upstream: FakeOpenAI) -> None:
    """With --workers 2, whichever worker answers /metrics counts the other's requests too."""
    config = openai_config(upstream.base_url, extra="[server]\nworkers = 2\n")
    proc, base = await start_server(tmp_path, config, env={"TMPDIR": str(tmp_path)})
    payload = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    sent = 0
    try:
        while sent < 200 and len(workers_that_answered(tmp_path)) < 2:
            for _ in range(10):  # a connection each, so that both workers take some
                async with (
                    aiohttp.ClientSession() as s,
                    s.post(f"{base}/v1/chat/completions", json=payload) as r,
                ):
                    assert r.status == 200
                sent += 1
            await asyncio.sleep(1.2)  # each worker publishes its figures once a second
        assert len(workers_that_answered(tmp_path)) == 2
        for _ in range(100):  # until the last published figures are in
            if await chat_requests(base) == sent:
                break
            await asyncio.sleep(0.1)
        for _ in range(8):  # whichever worker answers
            assert await chat_requests(base) == sent
    finally:
        proc.terminate()
        await stop(proc)


def workers_that_answered(tmp_path: Path) -> list[str]:
    """The workers whose published figures count a chat request."""
    return [
        path.stem
        for path in tmp_path.glob("noroshi-metrics-*/*.json")
        if '"/v1/chat/completions"' in path.read_text()
    ]


async def chat_requests(base: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/metrics") as r:
        text = await r.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "noroshi_requests_total"
        and sample.labels["route"] == "/v1/chat/completions"
    )
