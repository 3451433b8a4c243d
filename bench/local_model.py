"""The local model, measured: 20 fixed prompts answered by one GGUF file on one llama.cpp
binding, with load time, tokens/s and the process's peak RSS, as JSON on stdout.

Each run is a process of its own, so its RSS is its own. tokens/s counts the tokens after
each answer's first, whose time (the prompt's prefill) is `first_token_s`. The answers go
through the local provider's own prompt format, sampling defaults and stops, with a fixed
seed.

Run: python -m bench.local_model [--engine cyllama|llama_cpp] [--model PATH] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

from noroshi.config import ProviderConfig
from noroshi.providers.llama import Sampling, available_engine, load_backend
from noroshi.providers.local import Answer, default_model_path, prompt_style

__all__ = ["PROMPTS", "main"]

PROMPTS = [
    "Hello",
    "What is the capital of France?",
    "How many days are in a week?",
    "Name three primary colors.",
    "What is 12 plus 7?",
    "Write one sentence about the sea.",
    "Translate 'thank you' into French.",
    "What does a bee make?",
    "Give me a name for a black cat.",
    "What is the opposite of hot?",
    "Which planet is closest to the Sun?",
    "What do plants need to grow?",
    "Say good morning in Spanish.",
    "What is water made of?",
    "Suggest a healthy breakfast.",
    "What is Python?",
    "How do I boil an egg?",
    "Who wrote Romeo and Juliet?",
    "Why is the sky blue?",
    "Tell me a short joke.",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--model", default="")
    parser.add_argument("--format", default="auto")
    parser.add_argument("--max-tokens", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    config = ProviderConfig(type="local")
    engine = available_engine(args.engine)
    assert engine is not None, f"{args.engine} is not installed"
    path = args.model or default_model_path()
    started = time.perf_counter()
    backend = load_backend(engine, path, config.context_tokens, args.threads)
    load_s = time.perf_counter() - started
    style = prompt_style(backend.metadata()) if args.format == "auto" else args.format
    sampling = Sampling(config.temperature, config.top_p, config.top_k, config.repeat_penalty, 7)
    answers, tokens, seconds, first = [], 0, 0.0, 0.0
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        answer = Answer(
            backend,
            messages,
            style,
            args.max_tokens or config.max_tokens,
            [],
            config.context_tokens,
        )
        started = time.perf_counter()
        pieces = answer.text(sampling, lambda: False)
        text = next(pieces, "")
        first += time.perf_counter() - started  # the prompt's prefill and the first token
        started, before = time.perf_counter(), answer.computed
        text += "".join(pieces)
        seconds += time.perf_counter() - started
        tokens += answer.computed - before
        answers.append({"prompt": prompt, "answer": text.strip(), "finish": answer.finish})
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "engine": engine,
                "model": os.path.basename(path),
                "style": style,
                "load_s": round(load_s, 2),
                "first_token_s": round(first / len(PROMPTS), 2),
                "tokens": tokens,
                "tokens_per_s": round(tokens / seconds, 1),
                "peak_rss_mib": round(rss_mib),
                "answers": answers,
            },
            indent=1,
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
