"""BioC readers: XML (streamed, document by document) and JSON, including PubTator3's export wrapper."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from biogpt import jsonfile
from biogpt.errors import InputError
from biogpt.mining.documents import (
    MAX_DOCUMENT_CHARS,
    Document,
    Passage,
    Problem,
    open_binary,
    xml_elements,
    xml_problem,
)


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
        if not 0 <= offset <= MAX_DOCUMENT_CHARS:  # negative: text laid over text; huge: gigabytes of spaces
            return Problem(where, f"passage offset {offset} is outside 0..{MAX_DOCUMENT_CHARS}", doc_id)
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
                if not offset <= start and length >= 0:
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
    end = max(p.offset + len(p.text) for p in passages)
    for a in annotations:  # a mention may run on past its passage (over the space before the next one), not
        if a["end"] > end:  # past the text
            return Problem(where, f"annotation {a['id']!r} at {a['start']}+{a['end'] - a['start']} lies outside its "
                                  f"passage and the document's text (0..{end})", doc_id)  # fmt: skip
    return Document(doc_id, passages, annotations, rels, where=where)


def read_bioc_json(path: Path) -> Iterator[Document | Problem]:
    """A BioC JSON collection (`{"documents": [...]}`), PubTator3's export (`{"PubTator3": [...]}`), or a list
    of documents. The file is one JSON value, read whole (PubTator3 exports a hundred documents per file)."""
    with open_binary(path) as f:
        raw = b"".join(iter(f.read, b""))
        if f.error is not None:
            raise InputError(f"{path}: cannot read ({f.error}); a truncated or damaged .gz?")
        try:
            data = jsonfile.loads(raw.decode("utf-8"))
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
            for el in xml_elements(f, ("document",)):
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
                yield _bioc_document(d, f"{path.name}:document {count}")
        except ET.ParseError as e:
            yield xml_problem(path, f, e, f"document {count + 1}")
