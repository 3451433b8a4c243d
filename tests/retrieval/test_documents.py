"""Extraction: the format told right, and every format's text cut into the sections a reader
would see, under their heading paths; a document that cannot be read says why."""

from __future__ import annotations

import io

import pytest
from pypdf import PdfReader, PdfWriter

from noroshi.retrieval.base import Section
from noroshi.retrieval.documents import detect_format, extract


def make_pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A real PDF, written by hand: one Helvetica text line per string, a page per list."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, once the pages are known
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    for lines in pages:
        ops = ["BT /F1 12 Tf 14 TL 72 720 Td"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % len(objects)
        )
        kids.append(len(objects))
    refs = b" ".join(b"%d 0 R" % k for k in kids)
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (refs, len(kids))
    info = b""
    if title is not None:
        objects.append(b"<< /Title (%s) >>" % title.encode("latin-1"))
        info = b" /Info %d 0 R" % len(objects)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\n" % (len(objects) + 1, info)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def encrypted(data: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# Formats


@pytest.mark.parametrize(
    ("filename", "media_type", "data", "expected"),
    [
        ("notes.txt", None, b"plain", "text"),
        ("README.md", None, b"# Title", "markdown"),
        ("Guide.MARKDOWN", None, b"# Title", "markdown"),
        ("page.htm", None, b"<p>hi</p>", "html"),
        ("dir.v2/index.html", None, b"<p>hi</p>", "html"),
        ("docs.v2/README", None, b"<p>hi</p>", "text"),
        ("C:\\docs.v2\\notes.MD", None, b"# hi", "markdown"),
        ("https://example.com/guide.md?ref=main#install", None, b"# hi", "markdown"),
        ("https://example.com/docs/", "text/html", b"# hi", "html"),
        ("paper.pdf", None, b"%PDF-1.7 ...", "pdf"),
        ("notes.md", "text/html", b"# Title", "markdown"),  # the name wins over the type
        (None, "text/markdown; charset=utf-8", b"# Title", "markdown"),
        ("upload", "TEXT/HTML", b"<p>hi</p>", "html"),
        (None, "application/pdf", b"%PDF-1.4", "pdf"),
        (None, "text/plain", b"<html><body>looks like html</body></html>", "text"),
        ("data.bin", "application/octet-stream", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3", "pdf"),
        (None, None, b"  <!DOCTYPE html>\n<html><body>x</body></html>", "html"),
        (None, None, b"\xef\xbb\xbf<html lang='en'><body>x</body></html>", "html"),
        (None, None, b"<?xml version='1.0'?>\n<!-- c --><html><body>x</body></html>", "html"),
        (None, None, b"<p>a fragment is not a page</p>", "text"),
        (None, None, b"Just words, caf\xc3\xa9.", "text"),
        ("no-extension", None, b"", "text"),
        ("unknown.rst", None, b"Title\n=====\n", "text"),
        (None, None, "UTF-16 text".encode("utf-16"), "text"),
    ],
)
def test_detect_format(
    filename: str | None, media_type: str | None, data: bytes, expected: str
) -> None:
    assert detect_format(filename, media_type, data) == expected


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
        (None, b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xb1\xc3"),  # a .docx
        ("notes.txt", b"caf\xe9 in Latin-1"),
        ("notes.txt", b"text with a NUL \x00 byte"),
    ],
)
def test_binary_is_refused(filename: str | None, data: bytes) -> None:
    with pytest.raises(ValueError, match="not UTF-8 text"):
        detect_format(filename, None, data)


def test_a_long_upload_is_judged_by_its_start_even_cut_mid_character() -> None:
    data = ("é" * 40_000).encode() + b"\xff"  # 80,001 bytes: the sniffed 64 KiB ends mid-"é"
    assert detect_format(None, None, data) == "text"
    with pytest.raises(ValueError, match="not valid UTF-8"):
        extract(data, "text")


def test_unknown_format_and_bad_text() -> None:
    with pytest.raises(ValueError, match="Unknown format 'docx'"):
        extract(b"x", "docx")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        extract(b"caf\xe9", "markdown")
    with pytest.raises(ValueError, match="NUL"):
        extract(b"a\x00b", "text")


# Plain text


def test_text_is_one_section_of_paragraphs() -> None:
    data = b"\r\n\r\n  The Title line  \r\nsecond line   \r\n\r\n\r\n \t \r\nNext paragraph.\n"
    title, sections = extract(data, "text")
    assert title == "The Title line"
    assert sections == [Section(text="The Title line\nsecond line\n\nNext paragraph.")]


def test_text_title_is_trimmed_and_empty_text_has_no_section() -> None:
    title, _ = extract(("word " * 100).encode(), "text")
    assert len(title) == 200 and title.startswith("word word")
    assert extract(b"", "text") == ("", [])
    assert extract(b" \n\n \t\n", "text") == ("", [])
    assert extract("UTF-16 works".encode("utf-16"), "text")[0] == "UTF-16 works"


# Markdown

MARKDOWN = """Some words before any heading.

# User Guide

Welcome to the guide.
It has two lines.

## Install `noroshi`

Run this:

```bash
# a comment, not a heading
pip install noroshi

echo done
```

### On Debian ###

apt install it.

~~~python
## still code
x = 1
~~~

## Configure [the server](https://example.com/config)

Edit the file.

#hashtag is not a heading

***

After a thematic break.

Setext Title
============

Under the setext title.

Setext **Sub**
--------------

Under the sub.

- a list item
---

# Last
"""


def test_markdown_sections_follow_the_heading_path() -> None:
    title, sections = extract(MARKDOWN.encode(), "markdown")
    assert title == "User Guide"
    assert [(s.headings, s.text) for s in sections] == [
        ([], "Some words before any heading."),
        (["User Guide"], "Welcome to the guide.\nIt has two lines."),
        (
            ["User Guide", "Install noroshi"],
            "Run this:\n\n```bash\n# a comment, not a heading\npip install noroshi\n\n"
            "echo done\n```",
        ),
        (
            ["User Guide", "Install noroshi", "On Debian"],
            "apt install it.\n\n~~~python\n## still code\nx = 1\n~~~",
        ),
        (
            ["User Guide", "Configure the server"],
            "Edit the file.\n\n#hashtag is not a heading\n\nAfter a thematic break.",
        ),
        (["Setext Title"], "Under the setext title."),
        (["Setext Title", "Setext Sub"], "Under the sub.\n\n- a list item"),
    ]  # "# Last" has no text under it: no section


def test_markdown_code_fence_keeps_its_lines_verbatim_until_closed() -> None:
    text = "# A\n\n````md\n```\n# inside\n  indented  \n\n\n```\n````\n\n## B\n\ntext"
    _, sections = extract(text.encode(), "markdown")
    assert sections[0].text == "````md\n```\n# inside\n  indented  \n\n\n```\n````"
    assert sections[1].headings == ["A", "B"]
    _, unclosed = extract(b"# A\n```\n# not a heading\n", "markdown")
    assert unclosed == [Section(headings=["A"], text="```\n# not a heading")]


def test_markdown_levels_close_their_subsections() -> None:
    text = "# One\n### Three\na\n## Two\nb\n# Uno\nc\n#### Four\nd\n"
    _, sections = extract(text.encode(), "markdown")
    assert [s.headings for s in sections] == [
        ["One", "Three"],
        ["One", "Two"],
        ["Uno"],
        ["Uno", "Four"],
    ]


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("## Second level\n\n# First level\n", "First level"),
        ("## Only a second level\ntext\n", "Only a second level"),
        ("\n\nFirst line here\nsecond\n", "First line here"),
        ('---\ntitle: "From Front Matter"\ntags: [a]\n---\n# Heading\n', "From Front Matter"),
        ("---\nlayout: post\n---\n\nBody first.\n", "Body first."),
        ("---\n\nA thematic break first.\n\n---\n", "A thematic break first."),
        ("", ""),
    ],
)
def test_markdown_title(text: str, title: str) -> None:
    assert extract(text.encode(), "markdown")[0] == title


def test_markdown_front_matter_is_not_text() -> None:
    _, sections = extract(b"---\ntitle: T\n---\nBody.\n", "markdown")
    assert sections == [Section(text="Body.")]


# HTML

HTML = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>The &amp; Title</title>
<style>p { color: red }</style>
<script>var s = "<h1>not a heading</h1>"; if (a < b) {}</script>
</head>
<body>
<nav><a href="/">Home</a></nav>
<h1>Main &lt;Heading&gt;</h1>
<p>First   paragraph,
spread over &nbsp; lines &amp; with entities &#8212; and &eacute;.</p>
<div>Div text<br>after a break</div>
<noscript><p>Enable JavaScript</p></noscript>
<template><p>A template</p></template>
<h2>Sub <em>heading</em></h2>
<ul><li>one</li><li>two <b>bold</b></li></ul>
<pre>def f():
    return 1

print(f())</pre>
<h3>Deep</h3>
<table><tr><td>cell a</td><td>cell b</td></tr></table>
<h2>Second sub</h2>
<blockquote>A quote.</blockquote>
<script type="module">import "x";</script>
</body></html>"""


def test_html_sections_paragraphs_and_entities() -> None:
    title, sections = extract(HTML, "html")
    assert title == "The & Title"
    assert [(s.headings, s.text) for s in sections] == [
        ([], "Home"),
        (
            ["Main <Heading>"],
            "First paragraph, spread over lines & with entities \u2014 and \u00e9.\n\n"
            "Div text\n\nafter a break",
        ),
        (
            ["Main <Heading>", "Sub heading"],
            "one\n\ntwo bold\n\ndef f():\n    return 1\nprint(f())",
        ),
        (["Main <Heading>", "Sub heading", "Deep"], "cell a\n\ncell b"),
        (["Main <Heading>", "Second sub"], "A quote."),
    ]


def test_html_without_a_title_or_a_closed_head() -> None:
    page = b"<html><head><meta name=x><h2>Intro</h2><p>x</p><h1>Big</h1><p>y</p>"
    title, sections = extract(page, "html")
    assert title == "Big"
    assert [s.headings for s in sections] == [["Intro"], ["Big"]]
    assert extract(b"<p>Only <i>a</i> paragraph.</p><p>Two.</p>", "html")[0] == "Only a paragraph."
    assert extract(b"<html><body><script>x()</script></body></html>", "html") == ("", [])


def test_html_heading_with_blocks_inside_and_empty_headings() -> None:
    page = b"<h1><div>Title</div><span>Part</span></h1><p>a</p><h2> </h2><p>b</p>"
    _, sections = extract(page, "html")
    assert sections == [Section(headings=["Title Part"], text="a\n\nb")]


# PDF


def test_pdf_text_by_page() -> None:
    data = make_pdf(
        [
            ["Hello from the first page.", "A second line (with parentheses)."],
            [],  # a page without text makes no section
            ["Third page text."],
        ],
        title="Metadata Title",
    )
    assert detect_format(None, None, data) == "pdf"
    title, sections = extract(data, "pdf")
    assert title == "Metadata Title"
    assert sections == [
        Section(
            headings=["Page 1"],
            text="Hello from the first page. A second line (with parentheses).",
        ),
        Section(headings=["Page 3"], text="Third page text."),
    ]


def test_pdf_title_falls_back_to_the_first_line() -> None:
    title, _ = extract(make_pdf([["Report on Things", "Body."]]), "pdf")
    assert title == "Report on Things"
    assert extract(make_pdf([[]]), "pdf") == ("", [])


def test_pdf_encrypted_with_a_password_is_refused() -> None:
    data = encrypted(make_pdf([["Secret text."]]), "secret")
    with pytest.raises(ValueError, match="encrypted with a password"):
        extract(data, "pdf")


def test_pdf_encrypted_without_a_user_password_opens() -> None:
    data = encrypted(make_pdf([["Readable text."]]), "")
    assert extract(data, "pdf")[1] == [Section(headings=["Page 1"], text="Readable text.")]


@pytest.mark.parametrize(
    "data",
    [b"", b"%PDF-1.4\nnot really a pdf", make_pdf([["Cut short."]])[:150], b"plain text"],
)
def test_pdf_broken_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="The PDF could not be read"):
        extract(data, "pdf")
