"""The documents mining works on, and how their files are opened: a document's text with its passages at
document-level offsets, the annotations and relations the input already had, and the problems (malformed
records) a reader reports instead of stopping."""

from __future__ import annotations

import gzip
import json
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from biogpt.errors import InputError

MAX_LINE_BYTES = 8 << 20  # a text, JSONL or PubTator line: beyond it the line is a problem, never read whole
MAX_DOCUMENT_CHARS = 1_000_000  # a document's text (a full-text article is ~100k); BioC readers (libxml2) refuse
# a text element over 10 MB, and a passage offset beyond this is refused before any text is laid out


@dataclass
class Passage:
    type: str  # "title", "abstract", "text", or the BioC passage's type infon
    offset: int  # where it starts in the document text
    text: str


@dataclass
class Document:
    id: str
    passages: list[Passage]
    annotations: list[dict] = field(default_factory=list)  # kept from the input: {id, type, text, start, end, infons}
    relations: list[dict] = field(default_factory=list)  # kept from the input: {id, type, nodes, infons}
    question: str | None = None  # PubMedQA: the question asked of this document
    where: str = ""  # file:line (or file:record) the document came from
    deleted: bool = False  # a DeleteCitation entry of a PubMed update file (no passages)

    @property
    def text(self) -> str:
        """The passages at their offsets, gaps filled with spaces (title + " " + abstract for PubMed)."""
        out: list[str] = []
        pos = 0
        for p in sorted(self.passages, key=lambda p: p.offset):
            if p.offset > pos:
                out.append(" " * (p.offset - pos))
                pos = p.offset
            out.append(p.text[pos - p.offset :] if p.offset < pos else p.text)
            pos = max(pos, p.offset + len(p.text))
        return "".join(out)

    def to_dict(self) -> dict:
        """A plain dict (JSON-ready): how documents travel to worker processes and Ray actors."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Document:
        return cls(**{**d, "passages": [Passage(**p) for p in d["passages"]]})

    @property
    def title(self) -> str:
        return next((p.text for p in self.passages if p.type in ("title", "front")), "")

    @property
    def abstract(self) -> str:
        return " ".join(p.text for p in self.passages if p.type not in ("title", "front"))


@dataclass
class Problem:
    """A record that could not be read: counted, reported, skipped (or fatal under --strict)."""

    where: str
    reason: str
    id: str | None = None

    def __str__(self) -> str:
        return f"{self.where}" + (f" (id {self.id})" if self.id else "") + f": {self.reason}"


def title_abstract(doc_id: str, title: str, abstract: str, where: str = "", question: str | None = None) -> Document:
    """A document with PubTator's offsets: the title at 0, the abstract after one space."""
    passages = []
    if title:
        passages.append(Passage("title", 0, title))
    if abstract:
        passages.append(Passage("abstract", len(title) + 1 if title else 0, abstract))
    return Document(doc_id, passages, question=question, where=where)


class Stream:
    """Reads a possibly damaged file in small pieces: a truncated .gz gives everything before the damage, then
    looks like an early end, with the reason kept in `error`."""

    PIECE = 8192

    def __init__(self, f):
        self.f, self.error = f, None

    def read(self, n: int = -1) -> bytes:
        if self.error is not None:
            return b""
        try:
            return self.f.read(self.PIECE if n is None or n < 0 else min(n, self.PIECE))
        except (OSError, EOFError, zlib.error) as e:
            self.error = e
            return b""

    def lines(self, limit: int | None = None) -> Iterator[bytes | None]:
        """The lines, each ending with its newline (the last one may not). Linear in the file's size: each piece
        is searched once. A line longer than `limit` bytes comes as None, and is skipped, never held whole."""
        parts: list[bytes] = []
        size, too_long = 0, False
        while piece := self.read():
            start = 0
            while (nl := piece.find(b"\n", start)) >= 0:
                size += nl + 1 - start
                if too_long or (limit is not None and size > limit):
                    yield None
                else:
                    yield b"".join(parts) + piece[start : nl + 1]
                parts, size, too_long, start = [], 0, False, nl + 1
            size += len(piece) - start
            if too_long or (limit is not None and size > limit):
                parts, too_long = [], True
            else:
                parts.append(piece[start:])
        if too_long:
            yield None
        elif size:
            yield b"".join(parts)

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_binary(path: Path):
    """The file's bytes, gunzipped when it is gzip (by its magic number, whatever its name)."""
    try:
        f = open(path, "rb")
    except IsADirectoryError:
        raise InputError(f"{path} is a folder; give the files inside it") from None
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    if f.peek(2)[:2] == b"\x1f\x8b":
        return Stream(gzip.GzipFile(fileobj=f))
    return Stream(f)


def text_lines(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text or None, problem or None) of a text file, never stopping at a bad line: a line that
    is not UTF-8, or longer than MAX_LINE_BYTES, is a problem."""
    with open_binary(path) as f:
        n = 0
        for n, raw in enumerate(f.lines(MAX_LINE_BYTES), 1):
            if raw is None:
                yield n, None, f"a line over {MAX_LINE_BYTES:,} bytes (skipped: no document is that long)"
                continue
            try:
                yield n, raw.decode("utf-8").rstrip("\r\n"), None
            except UnicodeDecodeError as e:
                yield n, None, f"not UTF-8 ({e.reason} at byte {e.start})"
        if f.error is not None:
            yield n + 1, None, f"the file ends early or is damaged ({f.error}); nothing after this line was read"


def _printable(text: str) -> str:
    """`text` with lone surrogates written as escapes, so that a problem about them can be printed and saved."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def checked(item: Document | Problem) -> Document | Problem:
    """A document every output can hold, or the problem why not: a lone surrogate (from a JSON escape such as
    "\\ud800") has no UTF-8 form, and a text beyond MAX_DOCUMENT_CHARS is junk no BioC reader accepts."""
    if isinstance(item, Problem):
        doc_id = None if item.id is None else _printable(item.id)
        return Problem(_printable(item.where), _printable(item.reason), doc_id)
    doc_id = _printable(item.id)
    end = max((p.offset + len(p.text) for p in item.passages), default=0)
    if end > MAX_DOCUMENT_CHARS:
        return Problem(item.where, f"a text of {end} characters (more than {MAX_DOCUMENT_CHARS})", doc_id)
    try:
        json.dumps(item.to_dict(), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        return Problem(item.where, f"a lone surrogate ({e.object[e.start]!r}) that UTF-8 cannot hold", doc_id)
    return item


def xml_problem(path: Path, stream: Stream, e: ET.ParseError, where: str) -> Problem:
    """Why XML parsing stopped: the file ended early (a truncated .gz) or the XML itself is broken."""
    if stream.error is not None:
        return Problem(f"{path.name}:{where}", f"the file ends early or is damaged ({stream.error})")
    return Problem(f"{path.name}:line {e.position[0]}", f"broken XML ({e}); nothing after it was read")


def xml_elements(f, tags: tuple[str, ...]) -> Iterator[ET.Element]:
    """The elements named `tags` as each one ends, streamed: the root is cleared once the caller is done with
    each, so memory stays flat however many records the file holds."""
    root = None
    for event, el in ET.iterparse(f, events=("start", "end")):
        if root is None:
            root = el
        if event == "end" and el.tag in tags:
            yield el
            root.clear()
