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

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from biogpt import jsonfile
from biogpt.errors import InputError
from biogpt.mining.bioc import read_bioc_json, read_bioc_xml
from biogpt.mining.documents import (
    MAX_LINE_BYTES,
    Document,
    Passage,
    Problem,
    checked,
    open_binary,
    text_lines,
    title_abstract,
    xml_elements,
    xml_problem,
)

FORMATS = ("pubmed-xml", "pubtator", "bioc-xml", "bioc-json", "jsonl", "text")

__all__ = ["FORMATS", "Document", "Passage", "Problem", "detect_format", "read_documents", "title_abstract"]


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
        with open_binary(path) as f:  # the whole first line: a JSONL record may be longer than the head read
            first_line = next(f.lines(MAX_LINE_BYTES), b"")
        if first_line is None:  # one line beyond the cap: a BioC collection on one line, or a JSONL junk line
            return "bioc-json" if '"documents"' in text or '"PubTator3"' in text else "jsonl"
        first = first_line.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
        try:
            obj = jsonfile.loads(first)
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
    return map(checked, readers[fmt](p))


# ---------------------------------------------------------------------------------------------------
# PubMed XML


def _clean(text: str) -> str:
    return " ".join(text.split())


def _pubmed_record(el: ET.Element, where: str) -> Document | Problem:
    """A PubmedArticle (MedlineCitation/Article) or PubmedBookArticle (BookDocument: a chapter's ArticleTitle,
    or the book's BookTitle) as a document: PMID, title, every AbstractText section."""
    if el.tag == "PubmedBookArticle":
        base = el.find("BookDocument")
        title_el = None if base is None else base.find("ArticleTitle")
        if title_el is None and base is not None:
            title_el = base.find("Book/BookTitle")
    else:
        base = el.find("MedlineCitation")
        title_el = None if base is None else base.find("Article/ArticleTitle")
    pmid = None if base is None else base.findtext("PMID")
    if not pmid or not pmid.strip():
        return Problem(where, f"{el.tag} without PMID")
    title = _clean("".join(title_el.itertext())) if title_el is not None else ""
    abstract = base.find("Abstract") if el.tag == "PubmedBookArticle" else base.find("Article/Abstract")
    parts = [] if abstract is None else [_clean("".join(a.itertext())) for a in abstract.iterfind("AbstractText")]
    return title_abstract(pmid.strip(), title, " ".join(p for p in parts if p), where)


def read_pubmed_xml(path: Path) -> Iterator[Document | Problem]:
    """PubmedArticle and PubmedBookArticle records, and DeleteCitation PMIDs."""
    count = 0
    with open_binary(path) as f:
        try:
            for el in xml_elements(f, ("PubmedArticle", "PubmedBookArticle", "DeleteCitation")):
                if el.tag == "DeleteCitation":
                    for pm in el.iterfind("PMID"):
                        yield Document((pm.text or "").strip(), [], where=f"{path.name}:DeleteCitation", deleted=True)
                    continue
                count += 1
                yield _pubmed_record(el, f"{path.name}:record {count}")
        except ET.ParseError as e:
            yield xml_problem(path, f, e, f"record {count + 1}")


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

    for n, line, problem in text_lines(path):
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

# ---------------------------------------------------------------------------------------------------
# JSONL and plain text


def read_jsonl(path: Path) -> Iterator[Document | Problem]:
    """One JSON object per line: {"id" (or "pmid"), "title", "abstract"} or {"id", "text"}; an optional
    "question" (PubMedQA)."""
    for n, line, problem in text_lines(path):
        where = f"{path.name}:{n}"
        if problem:
            yield Problem(where, problem)
            continue
        if not line.strip():
            continue
        try:
            obj = jsonfile.loads(line)
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
    for n, line, problem in text_lines(path):
        if problem:
            yield Problem(f"{path.name}:{n}", problem)
        elif line.strip():
            yield Document(f"{path.name}:{n}", [Passage("text", 0, line.strip())], where=f"{path.name}:{n}")
