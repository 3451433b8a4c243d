"""The two ways to run llama.cpp: `cyllama` (a prebuilt wheel, installed in seconds) and
`llama-cpp-python` (compiled on install, minutes). Both give the local provider the same
small surface: tokenize, read metadata, and generate one piece of text per token.

Either backend samples with the same chain (repeat penalty, top-k, top-p, temperature), so a
model answers alike whichever one runs it; docs/local-model.md has the measurements.
"""

from __future__ import annotations

import codecs
import ctypes
import functools
import importlib.util
from collections.abc import Iterator
from typing import Any, Protocol

import msgspec

__all__ = ["Backend", "Sampling", "available_engine", "load_backend"]

ENGINES = ("cyllama", "llama_cpp")  # in the order that `engine = "auto"` tries them


class Sampling(msgspec.Struct, frozen=True):
    temperature: float
    top_p: float
    top_k: int
    repeat_penalty: float
    seed: int | None = None


class Backend(Protocol):
    engine: str

    def metadata(self) -> dict[str, str]: ...

    def tokenize(self, text: str) -> list[int]:
        """Tokens of `text`, special tokens such as `<start_of_turn>` parsed, no BOS added."""
        ...

    def generate(self, prompt: list[int], sampling: Sampling) -> Iterator[str]:
        """One piece of text per token computed ('' while a character is incomplete), until
        the model's end-of-generation token. Closing the iterator stops before the next."""
        ...


def available_engine(wanted: str = "auto") -> str | None:
    """The engine that `wanted` names and that is installed, or None."""
    for engine in ENGINES if wanted == "auto" else (wanted,):
        if importlib.util.find_spec(engine) is not None:
            return engine
    return None


def load_backend(engine: str, path: str, context_tokens: int, threads: int) -> Backend:
    if engine == "cyllama":
        return _Cyllama(path, context_tokens, threads)
    return _LlamaCppPython(path, context_tokens, threads)


class _Cyllama:
    engine = "cyllama"

    def __init__(self, path: str, context_tokens: int, threads: int) -> None:
        from cyllama.llama import llama_cpp as ll

        ll.disable_logging()  # llama.cpp writes every load detail to stderr otherwise
        ll.ggml_backend_load_all()
        self._ll = ll
        self._model = ll.LlamaModel(path, ll.LlamaModelParams())
        self._vocab = self._model.get_vocab()
        params = ll.LlamaContextParams()
        params.n_ctx = context_tokens
        params.n_batch = 512
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self._ctx = ll.LlamaContext(self._model, params)
        self._batch = 512

    def metadata(self) -> dict[str, str]:
        return dict(self._model.metadata())

    def tokenize(self, text: str) -> list[int]:
        return list(self._vocab.tokenize(text, add_special=False, parse_special=True))

    def generate(self, prompt: list[int], sampling: Sampling) -> Iterator[str]:
        ll, ctx, vocab = self._ll, self._ctx, self._vocab
        ctx.kv_cache_clear()
        sampler = ll.LlamaSampler(ll.LlamaSamplerChainParams())
        if sampling.repeat_penalty != 1.0:
            try:
                sampler.add_penalties(64, sampling.repeat_penalty, 0.0, 0.0)
            except TypeError:  # cyllama 0.3 and later (Python 3.12+) take the vocabulary's size
                sampler.add_penalties(vocab.n_vocab, 64, sampling.repeat_penalty, 0.0, 0.0)
        if sampling.temperature <= 0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(sampling.top_k)
            sampler.add_top_p(sampling.top_p, 1)
            sampler.add_temp(sampling.temperature)
            sampler.add_dist(0xFFFFFFFF if sampling.seed is None else sampling.seed)
        for i in range(0, len(prompt), self._batch):
            ctx.decode(ll.llama_batch_get_one(prompt[i : i + self._batch], i))
        pos, window, sent = len(prompt), [], 0
        while True:
            token = sampler.sample(ctx, -1)
            if vocab.is_eog(token):
                return
            # Decoding the tokens since the last clean cut keeps the spaces that a token's
            # piece loses when it is decoded alone, and lets a character split over byte
            # tokens wait for all of them.
            window.append(token)
            try:
                text = vocab.detokenize(window, remove_special=False, unparse_special=True)
            except UnicodeDecodeError:
                text = None if len(window) - sent < 8 else ""
            if text is None:
                yield ""
            else:
                yield text[sent:]
                sent = len(text)
                if len(window) >= 32:  # keep one token before the cut for its spacing
                    window = [token]
                    sent = len(vocab.detokenize(window, remove_special=False, unparse_special=True))
            ctx.decode(ll.llama_batch_get_one([token], pos))
            pos += 1


class _LlamaCppPython:
    engine = "llama_cpp"

    def __init__(self, path: str, context_tokens: int, threads: int) -> None:
        import llama_cpp
        from llama_cpp import Llama

        # verbose=False leaves llama.cpp's own lines (llama_kv_cache_iswa: ...) on stderr
        llama_cpp.llama_log_set(_quiet(), ctypes.c_void_p(0))
        self._llm: Any = Llama(
            model_path=path, n_ctx=context_tokens, n_threads=threads, verbose=False
        )

    def metadata(self) -> dict[str, str]:
        return {k: str(v) for k, v in self._llm.metadata.items()}

    def tokenize(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode(), add_bos=False, special=True))

    def generate(self, prompt: list[int], sampling: Sampling) -> Iterator[str]:
        from llama_cpp import llama_vocab_is_eog

        llm = self._llm
        llm.reset()
        if sampling.seed is not None:
            llm.set_seed(sampling.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        greedy = sampling.temperature <= 0
        for token in llm.generate(
            prompt,
            temp=max(sampling.temperature, 0.0),
            top_k=1 if greedy else sampling.top_k,
            top_p=sampling.top_p,
            repeat_penalty=sampling.repeat_penalty,
            reset=True,
        ):
            if llama_vocab_is_eog(llm._model.vocab, token):  # as its create_completion checks
                return
            yield decoder.decode(llm.detokenize([token], special=True))


@functools.cache
def _quiet() -> Any:
    """A log callback that drops llama.cpp's lines; kept alive here, as C holds it."""
    import llama_cpp

    return llama_cpp.llama_log_callback(lambda level, text, data: None)
