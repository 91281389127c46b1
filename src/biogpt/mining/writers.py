"""Writing extraction records: JSONL (native), BioC XML, BioC JSON and PubTator, deterministically.

A record is a plain dict, one per document (see `biogpt.mining.pipeline.make_record`). The same records give
the same bytes in every format: fixed collection metadata, entities and relations in a stable order, every
BioC infon a string. Offsets are 0-based, end-exclusive code points into the document text (BioC writes
offset + length, PubTator start and end).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from biogpt.errors import BioGPTError

OUTPUT_FORMATS = ("jsonl", "bioc-xml", "bioc-json", "pubtator")
EXTENSIONS = {".jsonl": "jsonl", ".xml": "bioc-xml", ".json": "bioc-json", ".pubtator": "pubtator",
              ".txt": "pubtator"}  # fmt: skip
COLLECTION = {"source": "biogpt", "date": "", "key": "biogpt.key"}  # fixed: the same input gives the same bytes


# characters XML 1.0 cannot hold (C0 controls but tab, newline and CR; U+FFFE, U+FFFF): each becomes a space,
# so offsets stay valid; a CR becomes a character reference, which parsers keep (a literal one they turn into LF)
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_safe(xml: str) -> str:
    """Serialised XML whose text every XML parser reads back as written, character for character."""
    return _XML_ILLEGAL.sub(" ", xml).replace("\r", "&#13;")


def jsonl_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------------
# BioC: one annotation per grounded occurrence of an entity (its first one is what relations point at), one
# location-less annotation for an entity the text does not contain


def identifier(e: dict) -> str:
    """An entity's identifier as PubTator3's BioC writes it (the CURIE where the namespace is known), or
    PubTator's `-1` when unlinked."""
    return e.get("curie") or e.get("id") or "-1"


def _annotations(record: dict) -> tuple[list[dict], dict[str, str]]:
    """BioC annotations (dicts) and entity ref -> the annotation id relations use."""
    anns, first = [], {}
    for e in record.get("entities", []):
        infons = {"type": e["type"], "identifier": identifier(e), "grounded": "true" if e["grounded"] else "false"}
        if e.get("link"):
            infons["biogpt_link"] = e["link"]
        if not e["spans"]:
            aid = f"{e['ref']}"
            anns.append({"id": aid, "infons": infons, "text": e["text"], "locations": [], "start": -1})
            first[e["ref"]] = aid
        for k, sp in enumerate(e["spans"]):
            aid = f"{e['ref']}.{k + 1}"
            anns.append({"id": aid, "infons": dict(infons), "text": sp["text"],
                         "locations": [{"offset": sp["start"], "length": sp["end"] - sp["start"]}],
                         "start": sp["start"]})  # fmt: skip
            first.setdefault(e["ref"], aid)
    return anns, first


def _document_infons(record: dict) -> dict[str, str]:
    infons = {"biogpt_task": record["task"], "biogpt_parsed": "true" if record["parsed"] else "false",
              "biogpt_sequence_logprob": f"{record['sequence_logprob']:.6f}"}  # fmt: skip
    if record.get("answer"):
        infons["biogpt_answer"] = record["answer"]["text"]
        infons["biogpt_answer_logprob"] = f"{record['answer']['score']:.6f}"
    if record.get("labels"):
        infons["biogpt_labels"] = "|".join(x["label"] for x in record["labels"])
        infons["biogpt_label_logprobs"] = "|".join(f"{x['score']:.6f}" for x in record["labels"])
    return infons


def bioc_document(record: dict) -> dict:
    """A BioC JSON document: passages with the annotations that fall in them, relations at document level."""
    anns, first = _annotations(record)
    passages = []
    for p in record["passages"] or [{"type": "text", "offset": 0, "text": ""}]:  # BioC: a document has a passage
        lo, hi = p["offset"], p["offset"] + len(p["text"])
        inside = [a for a in anns if (a["start"] < 0 and not passages) or lo <= a["start"] < hi]
        passages.append({"infons": {"type": p["type"]}, "offset": p["offset"], "text": p["text"], "sentences": [],
                         "annotations": [{k: a[k] for k in ("id", "infons", "text", "locations")} for a in inside],
                         "relations": []})  # fmt: skip
    relations = []
    by_ref = {e["ref"]: e for e in record.get("entities", [])}
    for r in record.get("relations", []):
        head, tail = by_ref[r["head"]], by_ref[r["tail"]]  # PubTator3's roles: "Type|identifier"
        relations.append({"id": r["id"], "infons": {"type": r["type"], "score": f"{r['score']:.6f}",
                                                      "grounded": "true" if r["grounded"] else "false",
                                                      "role1": f"{head['type']}|{identifier(head)}",
                                                      "role2": f"{tail['type']}|{identifier(tail)}"},
                          "nodes": [{"refid": first[r["head"]], "role": "head"},
                                    {"refid": first[r["tail"]], "role": "tail"}]})  # fmt: skip
    return {"id": record["id"], "infons": _document_infons(record), "passages": passages, "relations": relations}


def _infon_elements(parent: ET.Element, infons: dict[str, str]) -> None:
    for k, v in infons.items():
        ET.SubElement(parent, "infon", key=k).text = v


def bioc_xml_document(record: dict) -> str:
    d = bioc_document(record)
    doc = ET.Element("document")
    ET.SubElement(doc, "id").text = d["id"]
    _infon_elements(doc, d["infons"])
    for p in d["passages"]:
        pe = ET.SubElement(doc, "passage")
        _infon_elements(pe, p["infons"])
        ET.SubElement(pe, "offset").text = str(p["offset"])
        ET.SubElement(pe, "text").text = p["text"]
        for a in p["annotations"]:
            ae = ET.SubElement(pe, "annotation", id=a["id"])
            _infon_elements(ae, a["infons"])
            for loc in a["locations"]:
                ET.SubElement(ae, "location", offset=str(loc["offset"]), length=str(loc["length"]))
            ET.SubElement(ae, "text").text = a["text"]
    for r in d["relations"]:
        re_ = ET.SubElement(doc, "relation", id=r["id"])
        _infon_elements(re_, r["infons"])
        for n in r["nodes"]:
            ET.SubElement(re_, "node", refid=n["refid"], role=n["role"])
    return _xml_safe(ET.tostring(doc, encoding="unicode")) + "\n"


# ---------------------------------------------------------------------------------------------------
# PubTator


# what any line reader may end a line at (str.splitlines: \n \r \v \f \x1c-\x1e \x85 U+2028 U+2029), the tab that
# separates columns, and the other C0 controls (a NUL makes tools take the file for binary): each becomes a
# space, the same length, so offsets stay valid
_BREAKS = str.maketrans(dict.fromkeys([chr(c) for c in range(32)] + ["\x7f", "\x85", "\u2028", "\u2029"], " "))


def _one_line(text: str) -> str:
    return text.translate(_BREAKS)


def _pubtator_id(text: str) -> str:
    """An id as one PubTator field: no line break, tab or `|` (which would end the id in `ID|t|`)."""
    return text.translate(_BREAKS).replace("|", "_")


def pubtator_document(r: dict) -> str:
    """`ID|t|title`, `ID|a|abstract`, mention lines (start, end, text, type, concept id or -1) and relation
    lines (type, head id, tail id: one per distinct identifier pair, as the CDR corpus has them), then a blank
    line. A text that is not title + " " + abstract is written whole as the title, so that PubTator's offsets
    (abstract at len(title) + 1) still hold."""
    text = r["text"]
    first = r["passages"][0] if r["passages"] else None
    title = first["text"] if first and first["type"] == "title" and first["offset"] == 0 else ""
    if title and len(text) > len(title) and text[len(title)] == " ":
        t_line, a_line = title, text[len(title) + 1 :]
    else:
        t_line, a_line = text, ""
    doc_id = _pubtator_id(r["id"])
    out = [f"{doc_id}|t|{_one_line(t_line)}\n{doc_id}|a|{_one_line(a_line)}\n"]
    mentions = sorted((sp["start"], sp["end"], sp["text"], e["type"], e["id"] or "-1")
                      for e in r.get("entities", []) for sp in e["spans"])  # fmt: skip
    out += [f"{doc_id}\t{s}\t{e}\t{_one_line(t)}\t{_one_line(ty)}\t{_pubtator_id(eid)}\n"
            for s, e, t, ty, eid in mentions]  # fmt: skip
    pairs = dict.fromkeys((x["type"], x.get("head_id") or "-1", x.get("tail_id") or "-1")
                          for x in r.get("relations", []))  # fmt: skip
    out += [f"{doc_id}\t{_one_line(ty)}\t{_pubtator_id(h)}\t{_pubtator_id(t)}\n" for ty, h, t in pairs]
    return "".join(out) + "\n"


class Writer:
    """Streams records into one output format: header, one piece per document, footer."""

    def __init__(self, fmt: str, infons: dict[str, str]):
        if fmt not in OUTPUT_FORMATS:
            raise BioGPTError(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
        self.fmt, self.infons, self.count = fmt, {k: str(v) for k, v in infons.items()}, 0

    def header(self) -> str:
        if self.fmt == "bioc-xml":
            root = ET.Element("collection")
            for k, v in COLLECTION.items():
                ET.SubElement(root, k).text = v
            _infon_elements(root, self.infons)
            text = ET.tostring(root, encoding="unicode").replace("</collection>", "")
            head = "<?xml version='1.0' encoding='UTF-8'?>\n<!DOCTYPE collection SYSTEM 'BioC.dtd'>\n"
            return head + _xml_safe(text) + "\n"
        if self.fmt == "bioc-json":
            head = json.dumps({**COLLECTION, "infons": self.infons}, ensure_ascii=False)
            return head[:-1] + ', "documents": [\n'
        return ""

    def document(self, record: dict) -> str:
        self.count += 1
        if self.fmt == "jsonl":
            return jsonl_line(record)
        if self.fmt == "pubtator":
            return pubtator_document(record)
        if self.fmt == "bioc-xml":
            return bioc_xml_document(record)
        return ("" if self.count == 1 else ",\n") + json.dumps(bioc_document(record), ensure_ascii=False)

    def footer(self) -> str:
        return {"bioc-xml": "</collection>\n", "bioc-json": "\n]}\n"}.get(self.fmt, "")


def render(records: Iterable[dict], fmt: str, infons: dict[str, str]) -> str:
    """All records in one format, as one string (the streaming Writer's pieces joined)."""
    w = Writer(fmt, infons)
    return w.header() + "".join(w.document(r) for r in records) + w.footer()
