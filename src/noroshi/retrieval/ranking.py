"""Search logic both knowledge stores share: bounds, safe text queries, vector checks, and
reciprocal rank fusion. The stores only rank by vector and by text; this decides the rest,
so SQLite and PostgreSQL answer alike.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from noroshi.retrieval.base import Mode

__all__ = [
    "DEFAULT_WEIGHTS",
    "MAX_CANDIDATES",
    "MAX_K",
    "RRF_K",
    "Weights",
    "candidate_depth",
    "check_vector",
    "clamp_k",
    "depth",
    "fts5_query",
    "fuse",
    "query_terms",
    "rank",
    "tsquery_text",
    "vector_text",
]

K = TypeVar("K", bound=Hashable)
Ranking = list[tuple[K, float]]  # best first, with the ranking's own score

RRF_K = 60  # the usual constant of reciprocal rank fusion: damps the top ranks' lead
MAX_K = 200
MAX_CANDIDATES = 4096  # sqlite-vec answers at most this many nearest neighbours
MAX_TERMS = 32
MAX_TERM_CHARS = 64
MAX_QUERY_CHARS = 2000

_WORD = re.compile(r"[^\W_]+")  # letters and digits: every quote, operator and dash goes
# English function words: matched by almost every chunk, they would put the whole base into
# the text ranking and let it outvote the vector ranking in the fusion
STOPWORDS = frozenset(
    """
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its
itself just me more most my myself no nor not now of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves
""".split()  # noqa: SIM905
)


@dataclass(frozen=True)
class Weights:
    """How much each ranking counts in the fused score."""

    vector: float = 1.0
    # below the vector ranking's: the text ranking lifts chunks that name the query's exact
    # terms among the vector candidates, without letting loose word matches outvote them
    # (measured on tests/data/kb_questions.json; see docs/retrieval.md)
    text: float = 0.3


DEFAULT_WEIGHTS = Weights()


def clamp_k(k: int) -> int:
    """`k` within 0..MAX_K: a search never asks for an unbounded number of rows."""
    return max(0, min(int(k), MAX_K))


def depth(k: int) -> int:
    """How deep each ranking goes before fusion: a chunk ranked low by one and high by the
    other must still be seen by both."""
    return max(k * 4, 50)


def candidate_depth(n: int) -> int:
    """Nearest neighbours to fetch when a metadata filter applies after the vector search
    and `n` must pass it. The limit: when fewer than `n` pass among these, fewer come back
    (a filter that keeps few documents finds its chunks by text, or not at all by vector)."""
    return min(max(n * 20, 200), MAX_CANDIDATES)


def query_terms(text: str) -> list[str]:
    """The words of a user's query, lowercased, deduplicated and bounded, without English
    function words; no punctuation survives, so no term can be read as query syntax by FTS5
    or tsquery."""
    terms: list[str] = []
    for match in _WORD.finditer(text[:MAX_QUERY_CHARS]):
        term = match.group().lower()[:MAX_TERM_CHARS]
        if term not in terms and term not in STOPWORDS:
            terms.append(term)
            if len(terms) == MAX_TERMS:
                break
    return terms


def fts5_query(terms: Sequence[str]) -> str | None:
    """An FTS5 MATCH expression: any of the terms, each quoted (so `OR`, `NEAR` and the like
    are words). None when there are no terms: no text hits rather than a syntax error."""
    return " OR ".join(f'"{t}"' for t in terms) or None


def tsquery_text(terms: Sequence[str]) -> str | None:
    """Text for `websearch_to_tsquery`: any of the terms. The word "or" itself is left out (it
    is the operator there, and an English stop word anyway)."""
    return " or ".join(t for t in terms if t != "or") or None


def check_vector(vector: Sequence[float], dimensions: int) -> list[float]:
    """The vector as floats; ValueError unless it has the base's dimensions, is finite and is
    not zero (cosine similarity needs a direction)."""
    values = [float(x) for x in vector]
    if len(values) != dimensions:
        raise ValueError(f"expected a vector of {dimensions} dimensions, got {len(values)}")
    if not all(math.isfinite(x) for x in values):
        raise ValueError("a vector must hold finite numbers")
    if not any(values):
        raise ValueError("a zero vector has no direction to compare")
    return values


def vector_text(values: Sequence[float]) -> str:
    """pgvector's text form, '[0.1,0.2]', so no codec is needed."""
    return "[" + ",".join(repr(float(x)) for x in values) + "]"


def fuse(
    vector: Sequence[K], text: Sequence[K], weights: Weights = DEFAULT_WEIGHTS
) -> list[tuple[K, float]]:
    """Reciprocal rank fusion, best first: sum of weight / (RRF_K + rank) over the rankings a
    key is in (ranks from 1). Ties go to the better vector rank, then the better text rank."""
    vector_rank = {key: i for i, key in enumerate(vector, 1)}
    text_rank = {key: i for i, key in enumerate(text, 1)}
    scores: dict[K, float] = {}
    for key, r in vector_rank.items():
        scores[key] = weights.vector / (RRF_K + r)
    for key, r in text_rank.items():
        scores[key] = scores.get(key, 0.0) + weights.text / (RRF_K + r)
    missing = math.inf
    order = sorted(
        scores,
        key=lambda key: (-scores[key], vector_rank.get(key, missing), text_rank.get(key, missing)),
    )
    return [(key, scores[key]) for key in order]


async def rank(
    *,
    k: int,
    mode: Mode,
    vector: list[float] | None,
    text: str,
    by_vector: Callable[[list[float], int], Awaitable[Ranking[K]]],
    by_text: Callable[[list[str], int], Awaitable[Ranking[K]]],
    weights: Weights = DEFAULT_WEIGHTS,
) -> Ranking[K]:
    """The `k` best keys for a search, with their scores: the single ranking's own score in
    "vector" and "text" modes, the fused score in "hybrid". `vector` is already checked;
    `by_vector(vector, n)` and `by_text(terms, n)` give at most n keys, best first."""
    k = clamp_k(k)
    if mode not in ("hybrid", "vector", "text"):
        raise ValueError(f"unknown search mode {mode!r}")
    if mode == "vector" and vector is None:
        raise ValueError("a vector search needs a vector")
    terms = query_terms(text) if mode != "vector" else []
    if k == 0:
        return []
    if mode == "vector":
        assert vector is not None
        return (await by_vector(vector, k))[:k]
    if mode == "text":
        return (await by_text(terms, k))[:k] if terms else []
    n = depth(k)

    async def nothing() -> Ranking[K]:
        return []

    by_v, by_t = await asyncio.gather(
        by_vector(vector, n) if vector is not None else nothing(),
        by_text(terms, n) if terms else nothing(),
    )
    return fuse([key for key, _ in by_v], [key for key, _ in by_t], weights)[:k]
