"""Aggregating relations across documents: one row per (head, relation, tail) with its support, the first
thing a curator asks for after a PubMed run (`biogpt extract ... --summary relations.tsv`).

Entities are keyed by their identifier, so two spellings of one drug are one row; an unlinked entity is keyed
by its name (up to case and spacing) and shows `-1` as its identifier. Rows are sorted by the number of
documents, then by the best confidence (the highest relation log-probability), then by the keys.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from biogpt.mining.linking import exact_key

HEADER = "head_id\thead_name\trelation\ttail_id\ttail_name\tdocuments\tbest_score\tpmids\n"


@dataclass
class _Row:
    pmids: dict[str, None] = field(default_factory=dict)  # insertion-ordered set: document ids in input order
    best: float = float("-inf")


@dataclass
class Aggregate:
    """Fed records one at a time (`add`), so a run of any size streams through it; `tsv()` writes the table."""

    rows: dict[tuple[str, str, str], _Row] = field(default_factory=dict)
    names: dict[str, Counter] = field(default_factory=dict)  # entity key -> the names it was written as

    def _key(self, e: dict) -> str:
        key = e["id"] if e.get("id") else "-1:" + exact_key(e["text"])
        self.names.setdefault(key, Counter())[e["text"]] += 1
        return key

    def add(self, record: dict) -> None:
        """One document's relations (each distinct (head, relation, tail) counts once per document)."""
        by_ref = {e["ref"]: e for e in record.get("entities", []) if "ref" in e}
        for r in record.get("relations", []):
            if r["head"] not in by_ref or r["tail"] not in by_ref:
                continue
            key = (self._key(by_ref[r["head"]]), r["type"], self._key(by_ref[r["tail"]]))
            row = self.rows.setdefault(key, _Row())
            row.pmids[record["id"]] = None
            row.best = max(row.best, r["score"])

    def _name(self, key: str) -> str:
        return self.names[key].most_common(1)[0][0]  # ties: the name seen first

    def tsv(self) -> str:
        """The table, tab-separated with a header; tabs and newlines in names become spaces."""
        def cell(text: str) -> str:
            return " ".join(text.replace("\t", " ").splitlines())

        order = sorted(self.rows.items(), key=lambda kv: (-len(kv[1].pmids), -kv[1].best, kv[0]))
        out = [HEADER]
        for (h, rel, t), row in order:
            hid, tid = ("-1" if k.startswith("-1:") else k for k in (h, t))
            out.append(f"{cell(hid)}\t{cell(self._name(h))}\t{cell(rel)}\t{cell(tid)}\t{cell(self._name(t))}\t"
                       f"{len(row.pmids)}\t{row.best:.6f}\t{cell(','.join(row.pmids))}\n")  # fmt: skip
        return "".join(out)
