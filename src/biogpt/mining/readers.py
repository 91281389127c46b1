"""Documents from the files biomedical text comes in: PubMed XML (.gz), PubTator, BioC XML, BioC JSON (and
PubTator3's export wrapper), JSONL and plain text. Shared by `biogpt extract` and `biogpt corpus build`.

A document's text is its title, a space, then its abstract: PubTator's convention, so that offsets written
against it line up with PubTator and BioC tools. Passages keep their document-level offsets. Annotations
and relations already in the input (PubTator, BioC) are kept.

Readers stream: XML is parsed and cleared element by element (a 30,000-record PubMed baseline file in
constant memory), text formats line by line. A record that cannot be read becomes a `Problem` (with the
file, line and id where known) and the reader goes on; only a file that is not readable at all, or in no
known format, raises `InputError`.
"""

from __future__ import annotations

import gzip
import json
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from biogpt.errors import InputError

FORMATS = ("pubmed-xml", "pubtator", "bioc-xml", "bioc-json", "jsonl", "text")


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


# ---------------------------------------------------------------------------------------------------
# opening and recognising files


class _Stream:
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

    def lines(self) -> Iterator[bytes]:
        rest = b""
        while True:
            piece = self.read()
            if not piece:
                break
            rest += piece
            *complete, rest = rest.split(b"\n")
            yield from (line + b"\n" for line in complete)
        if rest:
            yield rest

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
        return _Stream(gzip.GzipFile(fileobj=f))
    return _Stream(f)


def detect_format(path: Path) -> str:
    """The input format from the file's first bytes (not its name)."""
    with open_binary(path) as f:
        head = f.read(4096)
        if not head and f.error is not None:
            raise InputError(f"{path}: cannot read ({f.error}); a truncated or damaged .gz?")
    decoded = head.decode("utf-8", errors="replace")
    if b"\x00" in head or decoded.count("\ufffd") > len(decoded) // 20:
        raise InputError(f"{path}: not text (binary data?); give PubMed XML, PubTator, BioC, JSONL or plain text")
    text = decoded.lstrip("\ufeff \t\r\n")
    if text.startswith("<"):
        if "<PubmedArticle" in text or "<PubmedBookArticle" in text or "pubmed_" in text.lower():
            return "pubmed-xml"
        if "<collection" in text:
            return "bioc-xml"
        raise InputError(f"{path}: XML, but neither PubMed (<PubmedArticleSet>) nor BioC (<collection>)")
    if text.startswith("{"):
        first = text.split("\n", 1)[0].strip()
        try:
            obj = json.loads(first)
        except json.JSONDecodeError:
            return "bioc-json"  # one JSON object over several lines: a BioC collection (or PubTator3 export)
        if isinstance(obj, dict) and ("documents" in obj or "PubTator3" in obj or "passages" in obj):
            return "bioc-json"
        return "jsonl"
    if text.startswith("["):
        return "bioc-json"  # a list of BioC documents
    first_line = text.split("\n", 1)[0]
    if "|t|" in first_line or "|a|" in first_line:
        return "pubtator"
    return "text"  # plain text (an empty file holds no documents: not an error)


def read_documents(path: str | Path, fmt: str | None = None) -> Iterator[Document | Problem]:
    """Documents (and problems) of one file, in file order; `fmt` one of FORMATS, or None to detect it."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    fmt = fmt or detect_format(p)
    readers = {"pubmed-xml": read_pubmed_xml, "pubtator": read_pubtator, "bioc-xml": read_bioc_xml,
               "bioc-json": read_bioc_json, "jsonl": read_jsonl, "text": read_text}  # fmt: skip
    if fmt not in readers:
        raise InputError(f"unknown input format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return readers[fmt](p)


def _text_lines(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text or None, problem or None) of a text file, never stopping at a bad line."""
    with open_binary(path) as f:
        n = 0
        for n, raw in enumerate(f.lines(), 1):
            try:
                yield n, raw.decode("utf-8").rstrip("\r\n"), None
            except UnicodeDecodeError as e:
                yield n, None, f"not UTF-8 ({e.reason} at byte {e.start})"
        if f.error is not None:
            yield n + 1, None, f"the file ends early or is damaged ({f.error}); nothing after this line was read"


# ---------------------------------------------------------------------------------------------------
# PubMed XML


def _xml_problem(path: Path, stream: _Stream, e: ET.ParseError, where: str) -> Problem:
    """Why XML parsing stopped: the file ended early (a truncated .gz) or the XML itself is broken."""
    if stream.error is not None:
        return Problem(f"{path.name}:{where}", f"the file ends early or is damaged ({stream.error})")
    return Problem(f"{path.name}:line {e.position[0]}", f"broken XML ({e}); nothing after it was read")


def _clean(text: str) -> str:
    return " ".join(text.split())


def read_pubmed_xml(path: Path) -> Iterator[Document | Problem]:
    """PubmedArticle records (PMID, ArticleTitle, every AbstractText section) and DeleteCitation PMIDs."""
    count = 0
    with open_binary(path) as f:
        try:
            root = None
            for event, el in ET.iterparse(f, events=("start", "end")):
                if root is None:
                    root = el  # PubmedArticleSet: cleared as records finish, so memory stays flat
                if event == "start":
                    continue
                if el.tag == "PubmedArticle":
                    count += 1
                    where = f"{path.name}:record {count}"
                    pmid = el.findtext("MedlineCitation/PMID")
                    title_el = el.find("MedlineCitation/Article/ArticleTitle")
                    title = _clean("".join(title_el.itertext())) if title_el is not None else ""
                    parts = [_clean("".join(a.itertext())) for a in el.iterfind(".//Abstract/AbstractText")]
                    root.clear()
                    if not pmid or not pmid.strip():
                        yield Problem(where, "PubmedArticle without PMID")
                        continue
                    yield title_abstract(pmid.strip(), title, " ".join(p for p in parts if p), where)
                elif el.tag == "DeleteCitation":
                    for pm in el.iterfind("PMID"):
                        yield Document((pm.text or "").strip(), [], where=f"{path.name}:DeleteCitation", deleted=True)
                    root.clear()
        except ET.ParseError as e:
            yield _xml_problem(path, f, e, f"record {count + 1}")


# ---------------------------------------------------------------------------------------------------
# PubTator


def read_pubtator(path: Path) -> Iterator[Document | Problem]:
    """`PMID|t|title`, `PMID|a|abstract`, then `PMID<TAB>start<TAB>end<TAB>text<TAB>type[<TAB>id]` mentions and
    `PMID<TAB>relation<TAB>id1<TAB>id2` relations; documents end at a blank line or a new PMID."""
    doc: dict | None = None

    def finish(d: dict) -> Document | Problem:
        out = title_abstract(d["id"], d["title"], d["abstract"], d["where"])
        n = len(out.text)
        for k, (line, cols) in enumerate(d["mentions"], 1):
            try:
                start, end = int(cols[1]), int(cols[2])
            except ValueError:
                why = f"mention offsets {cols[1]!r}-{cols[2]!r} are not integers"
                return Problem(f"{path.name}:{line}", why, d["id"])
            if not 0 <= start < end <= n:
                return Problem(f"{path.name}:{line}", f"mention {start}-{end} lies outside the text ({n} characters)",
                               d["id"])  # fmt: skip
            infons = {"identifier": cols[5]} if len(cols) > 5 and cols[5] else {}
            out.annotations.append({"id": f"T{k}", "type": cols[4] if len(cols) > 4 else "", "text": cols[3],
                                    "start": start, "end": end, "infons": infons})  # fmt: skip
        for k, (_, cols) in enumerate(d["relations"], 1):
            out.relations.append({"id": f"R{k}", "type": cols[1], "nodes": [cols[2], cols[3]], "infons": {}})
        return out

    for n, line, problem in _text_lines(path):
        if problem:
            yield Problem(f"{path.name}:{n}", problem, doc["id"] if doc else None)
            continue
        if not line.strip():
            if doc is not None:
                yield finish(doc)
                doc = None
            continue
        head = line.split("|", 2)
        if len(head) == 3 and head[1] in ("t", "a") and "\t" not in head[0]:
            pmid, kind, text = head
            if doc is not None and doc["id"] != pmid:
                yield finish(doc)
                doc = None
            if doc is None:
                doc = {"id": pmid, "title": "", "abstract": "", "mentions": [], "relations": [],
                       "where": f"{path.name}:{n}"}  # fmt: skip
            doc["title" if kind == "t" else "abstract"] = text
            continue
        cols = line.split("\t")
        if doc is None or cols[0] != doc["id"]:
            yield Problem(f"{path.name}:{n}", "an annotation line outside its document", cols[0] or None)
        elif len(cols) == 4 and not cols[1].isdigit():
            doc["relations"].append((n, cols))
        elif len(cols) >= 5:
            doc["mentions"].append((n, cols))
        else:
            yield Problem(f"{path.name}:{n}", f"expected a mention (5-6 columns) or relation (4), got {len(cols)}",
                          doc["id"])  # fmt: skip
    if doc is not None:
        yield finish(doc)


# ---------------------------------------------------------------------------------------------------
# BioC (XML and JSON)


def _bioc_document(d: dict, where: str) -> Document | Problem:
    """A BioC document given as a dict (the JSON shape; the XML reader builds the same)."""
    doc_id = str(d.get("id", "")).strip()
    if not doc_id:
        return Problem(where, "BioC document without an id")
    passages, annotations, relations = [], [], []
    for p in d.get("passages") or []:
        try:
            offset = int(p.get("offset", 0))
        except (TypeError, ValueError):
            return Problem(where, f"passage offset {p.get('offset')!r} is not an integer", doc_id)
        text = p.get("text") or ""
        if not isinstance(text, str):
            return Problem(where, "passage text is not a string", doc_id)
        infons = p.get("infons") or {}
        passages.append(Passage(str(infons.get("type", "text")), offset, text))
        for a in p.get("annotations") or []:
            for loc in a.get("locations") or []:
                try:
                    start, length = int(loc["offset"]), int(loc["length"])
                except (KeyError, TypeError, ValueError):
                    return Problem(where, f"annotation {a.get('id')!r} has a malformed location {loc!r}", doc_id)
                if not offset <= start <= start + length <= offset + len(text):
                    return Problem(where, f"annotation {a.get('id')!r} at {start}+{length} lies outside its passage "
                                          f"({offset}..{offset + len(text)})", doc_id)  # fmt: skip
                ainf = {str(k): str(v) for k, v in (a.get("infons") or {}).items()}
                annotations.append({"id": str(a.get("id", "")), "type": ainf.pop("type", ""), "text": a.get("text", ""),
                                    "start": start, "end": start + length, "infons": ainf})  # fmt: skip
        relations += p.get("relations") or []
    relations += d.get("relations") or []
    rels = []
    for r in relations:
        rinf = {str(k): str(v) for k, v in (r.get("infons") or {}).items()}
        nodes = [str(n.get("refid", "")) for n in r.get("nodes") or []]
        rels.append({"id": str(r.get("id", "")), "type": rinf.pop("type", ""), "nodes": nodes, "infons": rinf})
    if not passages:
        return Problem(where, "BioC document without passages", doc_id)
    return Document(doc_id, passages, annotations, rels, where=where)


def read_bioc_json(path: Path) -> Iterator[Document | Problem]:
    """A BioC JSON collection (`{"documents": [...]}`), PubTator3's export (`{"PubTator3": [...]}`), or a list
    of documents. The file is one JSON value, read whole (PubTator3 exports a hundred documents per file)."""
    with open_binary(path) as f:
        raw = b"".join(iter(f.read, b""))
        if f.error is not None:
            raise InputError(f"{path}: cannot read ({f.error}); a truncated or damaged .gz?")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not valid BioC JSON ({e})") from None
    if isinstance(data, dict):
        docs = data.get("PubTator3", data.get("documents"))
        if docs is None and "passages" in data:
            docs = [data]
    else:
        docs = data
    if not isinstance(docs, list):
        raise InputError(f"{path}: a BioC JSON collection needs a 'documents' (or 'PubTator3') list")
    for k, d in enumerate(docs, 1):
        where = f"{path.name}:document {k}"
        yield _bioc_document(d, where) if isinstance(d, dict) else Problem(where, "a document is not a JSON object")


def _xml_infons(el: ET.Element) -> dict:
    return {i.get("key", ""): i.text or "" for i in el.findall("infon")}


def read_bioc_xml(path: Path) -> Iterator[Document | Problem]:
    count = 0
    with open_binary(path) as f:
        try:
            root = None
            for event, el in ET.iterparse(f, events=("start", "end")):
                if root is None:
                    root = el  # the collection: cleared as documents finish
                if event == "start" or el.tag != "document":
                    continue
                count += 1
                d = {"id": el.findtext("id"), "passages": [], "relations": []}
                for p in el.findall("passage"):
                    anns = [{"id": a.get("id"), "infons": _xml_infons(a), "text": a.findtext("text") or "",
                             "locations": [dict(loc.attrib) for loc in a.findall("location")]}
                            for a in p.findall("annotation")]  # fmt: skip
                    d["passages"].append({"infons": _xml_infons(p), "offset": p.findtext("offset", "0"),
                                          "text": p.findtext("text") or "", "annotations": anns})  # fmt: skip
                for r in el.findall("relation"):
                    d["relations"].append({"id": r.get("id"), "infons": _xml_infons(r),
                                           "nodes": [dict(n.attrib) for n in r.findall("node")]})  # fmt: skip
                root.clear()
                yield _bioc_document(d, f"{path.name}:document {count}")
        except ET.ParseError as e:
            yield _xml_problem(path, f, e, f"document {count + 1}")


# ---------------------------------------------------------------------------------------------------
# JSONL and plain text


def read_jsonl(path: Path) -> Iterator[Document | Problem]:
    """One JSON object per line: {"id" (or "pmid"), "title", "abstract"} or {"id", "text"}; an optional
    "question" (PubMedQA)."""
    for n, line, problem in _text_lines(path):
        where = f"{path.name}:{n}"
        if problem:
            yield Problem(where, problem)
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield Problem(where, f"not JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            yield Problem(where, "not a JSON object")
            continue
        doc_id = obj.get("id", obj.get("pmid"))
        fields = {k: obj.get(k) for k in ("title", "abstract", "text", "question")}
        if doc_id is None or str(doc_id).strip() == "":
            yield Problem(where, 'no "id" (or "pmid")')
            continue
        bad = [k for k, v in fields.items() if v is not None and not isinstance(v, str)]
        if bad:
            yield Problem(where, f"{', '.join(bad)} must be strings", str(doc_id))
            continue
        if fields["text"] is not None:
            doc = Document(str(doc_id), [Passage("text", 0, fields["text"])], where=where)
            doc.question = fields["question"]
        else:
            doc = title_abstract(str(doc_id), (fields["title"] or "").strip(), (fields["abstract"] or "").strip(),
                                 where, fields["question"])  # fmt: skip
        yield doc


def read_text(path: Path) -> Iterator[Document | Problem]:
    """One document per line; its id is file:line."""
    for n, line, problem in _text_lines(path):
        if problem:
            yield Problem(f"{path.name}:{n}", problem)
        elif line.strip():
            yield Document(f"{path.name}:{n}", [Passage("text", 0, line.strip())], where=f"{path.name}:{n}")
