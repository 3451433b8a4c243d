"""Documents to text: the format told by name, media type or content, then the text cut into
sections under their heading paths, ready for chunking.

Every function here is pure CPU work on bytes in memory; callers run them in a thread. A
document that cannot be read raises `ValueError` with a message fit to show the sender.
"""

from __future__ import annotations

import codecs
import io
import re
from html.parser import HTMLParser

from noroshi.retrieval.base import Section

__all__ = ["FORMATS", "detect_format", "extract"]

FORMATS = ("text", "markdown", "html", "pdf")

_EXTENSIONS = {
    ".txt": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
_MEDIA_TYPES = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}
_HTML_START = re.compile(
    rb"\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html)\b", re.I | re.S
)
_SNIFF_BYTES = 64 * 1024  # enough to tell text from binary without decoding a whole upload
_TITLE_CHARS = 200
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")


def detect_format(filename: str | None, media_type: str | None, data: bytes) -> str:
    """One of FORMATS: by the file's extension, else its media type, else its first bytes.
    Anything that is neither a PDF nor UTF-8 text raises `ValueError`."""
    fmt = _by_extension(filename) or _by_media_type(media_type) or _sniff(data)
    if fmt != "pdf" and not _looks_like_text(data[:_SNIFF_BYTES]):
        name = f"'{filename}'" if filename else "The document"
        raise ValueError(f"{name} is not UTF-8 text, Markdown, HTML or PDF.")
    return fmt


def extract(data: bytes, format: str) -> tuple[str, list[Section]]:
    """The document's title ("" when it has none) and its non-empty sections, in order;
    paragraphs in a section's text are separated by a blank line."""
    if format == "pdf":
        return _pdf(data)
    if format not in FORMATS:
        raise ValueError(f"Unknown format '{format}': expected one of {', '.join(FORMATS)}.")
    text = _decode(data)
    if format == "markdown":
        return _markdown(text)
    if format == "html":
        return _html(text)
    lines = "\n".join(line.rstrip() for line in text.split("\n"))
    body = "\n\n".join(p.strip() for p in _BLANK_LINES.split(lines) if p.strip())
    return _first_line(body), [Section(text=body)] if body else []


def _by_extension(filename: str | None) -> str | None:
    """By the last path segment's extension; a URL's query and fragment are not part of it."""
    if not filename:
        return None
    if "://" in filename:
        filename = re.split(r"[?#]", filename, maxsplit=1)[0]
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return _EXTENSIONS.get("." + name.rsplit(".", 1)[1].lower()) if "." in name else None


def _by_media_type(media_type: str | None) -> str | None:
    if not media_type:
        return None
    return _MEDIA_TYPES.get(media_type.split(";", 1)[0].strip().lower())


def _sniff(data: bytes) -> str:
    head = data[:1024]
    if b"%PDF-" in head:
        return "pdf"
    return "html" if _HTML_START.match(head.removeprefix(codecs.BOM_UTF8)) else "text"


def _looks_like_text(head: bytes) -> bool:
    """UTF-8 (or UTF-16 with a byte order mark) with no NUL: a prefix may end mid-character."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return True
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return "\x00" not in text


def _decode(data: bytes) -> str:
    """The text with "\\n" line ends; a byte order mark picks UTF-16, else it must be UTF-8."""
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = data.decode("utf-16")
        else:
            text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"The document is not valid UTF-8 (byte {exc.start}); convert it to UTF-8."
        ) from None
    if "\x00" in text:
        raise ValueError("The document holds binary data (a NUL byte), not text.")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _first_line(text: str) -> str:
    for line in text.split("\n"):
        if line.strip():
            return _title(line)
    return ""


def _title(text: str) -> str:
    return " ".join(text.split())[:_TITLE_CHARS]


def _normalise(text: str) -> str:
    """One space between words: how HTML and PDF text reads once laid out."""
    return " ".join(text.split())


# Markdown

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_THEMATIC_BREAK = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_NOT_PARAGRAPH = re.compile(r"^(?: {0,3}(?:[-*+>|]|\d{1,9}[.)])(?:[ \t]|$)| {4}|\t)")
_FRONT_MATTER = re.compile(r"---[ \t]*\n([\w-]+:.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


class _Markdown:
    """A line-by-line reader of the block structure that matters for sections: headings
    (ATX and setext) and fenced code, whose lines stay as they are."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.headings: list[tuple[int, str]] = []  # the open heading path, with levels
        self.titles: list[tuple[int, str]] = []  # every heading, in order
        self.lines: list[str] = []  # the current section's
        self.paragraph: int | None = None  # where the open paragraph starts in `lines`
        self.fence = ""  # the open code fence's marker, "" outside code

    def feed(self, line: str) -> None:
        if self.fence:
            self.lines.append(line)
            closing = line.strip()
            if closing.startswith(self.fence) and not closing.strip(self.fence[0]):
                self.fence = ""
                self._blank()
            return
        fence = _FENCE.match(line)
        if fence and not (fence[1][0] == "`" and "`" in fence[2]):
            self._blank()
            self.fence = fence[1]
            self.lines.append(line)
            return
        setext = _SETEXT.match(line)
        underlined = self._setext_text() if setext else None
        if atx := _ATX.match(line):
            self._heading(len(atx[1]), atx[2] or "")
        elif setext and underlined is not None:
            del self.lines[self.paragraph or 0 :]
            self._heading(1 if setext[1][0] == "=" else 2, underlined)
        elif not line.strip() or _THEMATIC_BREAK.match(line):
            self._blank()
        else:
            if self.paragraph is None:
                self.paragraph = len(self.lines)
            self.lines.append(line.rstrip())

    def close(self) -> list[Section]:
        self._flush()
        return self.sections

    def _setext_text(self) -> str | None:
        """The open paragraph's text when an underline would make it a heading."""
        if self.paragraph is None or _NOT_PARAGRAPH.match(self.lines[self.paragraph]):
            return None
        return " ".join(line.strip() for line in self.lines[self.paragraph :])

    def _blank(self) -> None:
        if self.lines and self.lines[-1]:
            self.lines.append("")
        self.paragraph = None

    def _heading(self, level: int, text: str) -> None:
        self._flush()
        text = _normalise(_LINK.sub(r"\1", text).replace("`", "").replace("**", ""))
        if not text:
            return
        while self.headings and self.headings[-1][0] >= level:
            self.headings.pop()
        self.headings.append((level, text))
        self.titles.append((level, text))

    def _flush(self) -> None:
        body = "\n".join(self.lines).strip("\n")
        if body.strip():
            self.sections.append(Section(headings=[h for _, h in self.headings], text=body))
        self.lines = []
        self.paragraph = None


def _markdown(text: str) -> tuple[str, list[Section]]:
    """Title: the front matter's `title:`, else the first level-1 heading, else the first
    heading, else the first line."""
    title = ""
    if front := _FRONT_MATTER.match(text):
        text = text[front.end() :]
        if found := re.search(r"^title:[ \t]*(.+?)[ \t]*$", front[1], re.M):
            title = _title(found[1].strip("\"'"))
    reader = _Markdown()
    for line in text.split("\n"):
        reader.feed(line)
    sections = reader.close()
    if not title and reader.titles:
        title = _title(next((t for level, t in reader.titles if level == 1), reader.titles[0][1]))
    return title or _first_line(sections[0].text if sections else ""), sections


# HTML

_SKIP = frozenset({"script", "style", "noscript", "template", "head"})
_IN_HEAD = frozenset({"title", "meta", "link", "base", "style", "script", "noscript", "template"})
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_BLOCKS = frozenset(
    {
        "p",
        "li",
        "pre",
        "blockquote",
        "td",
        "th",
        "tr",
        "div",
        "br",
        "hr",
        "ul",
        "ol",
        "dl",
        "dt",
        "dd",
        "table",
        "caption",
        "section",
        "article",
        "header",
        "footer",
        "main",
        "nav",
        "aside",
        "figure",
        "figcaption",
        "details",
        "summary",
        "address",
        "form",
        "fieldset",
        "legend",
        "body",
    }
)


class _HTMLText(HTMLParser):
    """Text by blocks: headings open sections, block elements end paragraphs, and what a
    browser does not show (scripts, styles, the head) is left out; `<pre>` keeps its lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.sections: list[Section] = []
        self.titles: list[tuple[int, str]] = []
        self._headings: list[tuple[int, str]] = []
        self._paragraphs: list[str] = []
        self._buffer: list[str] = []
        self._skip: list[str] = []  # the open elements whose text is left out
        self._heading = 0  # the level of the heading being read, 0 outside one
        self._pre = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if "head" in self._skip and tag not in _IN_HEAD:  # the body began without </head>
            del self._skip[self._skip.index("head") :]
        if tag == "title":
            self._in_title = not self.title  # the document's, not an SVG's further on
        elif tag in _SKIP:
            self._skip.append(tag)
        elif self._skip:
            return
        elif tag in _HEADINGS:
            self._end_heading()
            self._break()
            self._heading = _HEADINGS[tag]
        elif tag in _BLOCKS:
            self._break()
            self._pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP:
            if tag in self._skip:
                del self._skip[len(self._skip) - 1 - self._skip[::-1].index(tag) :]
        elif self._skip:
            return
        elif tag in _HEADINGS:
            self._end_heading()
        elif tag in _BLOCKS:
            self._break()
            self._pre = max(0, self._pre - (tag == "pre"))

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self._buffer.append(data)

    def close(self) -> None:
        super().close()
        self._end_heading()
        self._break()
        self._flush()
        self.title = _title(self.title)

    def _break(self) -> None:
        """End the paragraph being read; inside a heading, blocks only separate words."""
        if self._heading:
            self._buffer.append(" ")
            return
        text = "".join(self._buffer)
        self._buffer = []
        if self._pre:
            lines = [line.rstrip() for line in text.split("\n")]
            text = "\n".join(line for line in lines if line.strip())
        else:
            text = _normalise(text)
        if text:
            self._paragraphs.append(text)

    def _end_heading(self) -> None:
        if not self._heading:
            return
        level, text = self._heading, _normalise("".join(self._buffer))
        self._heading, self._buffer = 0, []
        if text:
            self._flush()
            while self._headings and self._headings[-1][0] >= level:
                self._headings.pop()
            self._headings.append((level, text))
            self.titles.append((level, text))

    def _flush(self) -> None:
        if self._paragraphs:
            headings = [h for _, h in self._headings]
            self.sections.append(Section(headings=headings, text="\n\n".join(self._paragraphs)))
            self._paragraphs = []


def _html(text: str) -> tuple[str, list[Section]]:
    """Title: `<title>`, else the first h1, else the first heading, else the first line."""
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    title = parser.title
    if not title and parser.titles:
        title = _title(next((t for level, t in parser.titles if level == 1), parser.titles[0][1]))
    first = parser.sections[0].text if parser.sections else ""
    return title or _first_line(first), parser.sections


# PDF


def _pdf(data: bytes) -> tuple[str, list[Section]]:
    """One section per page with text, its heading "Page n" so that a passage can be found
    in the original; pypdf gives lines, so paragraphs are only where it leaves a blank line.
    Title: the metadata's, else the first line."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
    except Exception as exc:
        raise ValueError(f"The PDF could not be read: {exc}") from None
    if encrypted:
        try:  # an empty user password only restricts editing: readers open it without asking
            opened = bool(reader.decrypt(""))
        except Exception:
            opened = False
        if not opened:
            raise ValueError("The PDF is encrypted with a password; send an unencrypted copy.")
    try:
        pages = [page.extract_text() for page in reader.pages]
        metadata = reader.metadata
        title = _title(metadata.title or "") if metadata is not None else ""
    except Exception as exc:
        raise ValueError(f"The PDF could not be read: {exc}") from None
    sections: list[Section] = []
    for number, page in enumerate(pages, 1):
        paragraphs = (_normalise(p) for p in _BLANK_LINES.split(page.replace("\r", "\n")))
        body = "\n\n".join(p for p in paragraphs if p)
        if body:
            sections.append(Section(headings=[f"Page {number}"], text=body))
    return title or _first_line("\n".join(pages)), sections
