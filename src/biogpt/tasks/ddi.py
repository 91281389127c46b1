"""DDI-2013 drug-drug interactions, and the hard-match evaluation shared with KD-DTI.

Triples are (drug, interaction, target). The scorer (hard_match_evaluation.py) compares sets of triples per
document after normalising every field two ways, keeps the better of the two for each metric, and reports
the per-document means (the paper's numbers) and P/R/F1 pooled over the whole split.
"""

from __future__ import annotations

import re
from pathlib import Path

from biogpt.tasks.common import Example, drop_final_period, f1, read_json, strip_prefix

_INTERACTION = re.compile(r"the interaction between (.*) and (.*) is (.*)")
PREFIXES = ("in conclusion,", "in conclusion ,", "we can conclude that", "we have that")
_ROMAN = {str(i): r for i, r in enumerate(["", "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX"]) if i}

Triple = tuple[str, str, str]


def triples_target(triples: list[dict], content: str) -> str:
    """Sorted by where the drug first occurs in the (lowercased) content: the original compares the raw-case
    drug name, so a capitalised drug is not found (-1) and sorts first; stable otherwise."""
    ordered = sorted(triples, key=lambda t: content.find(t["drug"]))
    parts = [f"the interaction between {t['drug']} and {t['target']} is {t['interaction']}".lower() for t in ordered]
    return "; ".join(parts) + "."


def parse_triples(output: str) -> frozenset[Triple]:
    text = strip_prefix(drop_final_period(output), PREFIXES)
    out = set()
    for seg in text.split("; "):
        m = _INTERACTION.match(seg.strip())
        if m:
            out.add((m.group(1).strip(), m.group(3).strip(), m.group(2).strip()))
    return frozenset(out)


def _abbr(s: str) -> str:
    return s[s.rindex("(") + 1 : -1] if s.endswith(")") and "(" in s else s


def _rm(s: str) -> str:
    return s[: s.rindex("(")] if s.endswith(")") and "(" in s else s


def normalize_name(s: str) -> str:
    if s and s[-1].isdigit() and (len(s) == 1 or not s[-2].isdigit()):
        s = s[:-1] + _ROMAN.get(s[-1], s[-1])
    s = s.replace("-type", "")
    return re.sub(r"[^0-9a-zA-Z]", "", s)


def normalize(triples: frozenset[Triple], way) -> set[Triple]:
    return {tuple(normalize_name(way(x.strip().lower().replace(" ", ""))) for x in t) for t in triples}


def _prf(pred: set, gold: set) -> tuple[float, float, float]:
    hit = len(pred & gold)
    p = hit / len(pred) if pred else (1.0 if not gold else 0.0)
    r = hit / len(gold) if gold else (1.0 if not pred else 0.0)
    return p, r, f1(p, r)


def hard_match(predictions: list[frozenset[Triple]], golds: list[frozenset[Triple]]) -> dict:
    doc = []
    pooled = {way: (set(), set()) for way in (_abbr, _rm)}
    for pred, gold in zip(predictions, golds):
        scores = []
        for way in (_abbr, _rm):
            p, g = normalize(pred, way), normalize(gold, way)
            pooled[way][0].update(p)
            pooled[way][1].update(g)
            scores.append(_prf(p, g))
        doc.append(tuple(max(s[i] for s in scores) for i in range(3)))
    n = len(doc) or 1
    pool = [_prf(*pooled[way]) for way in (_abbr, _rm)]
    return {
        "doc_precision": sum(d[0] for d in doc) / n,
        "doc_recall": sum(d[1] for d in doc) / n,
        "doc_f1": sum(d[2] for d in doc) / n,
        "pooled_precision": max(p[0] for p in pool),
        "pooled_recall": max(p[1] for p in pool),
        "pooled_f1": max(p[2] for p in pool),
    }


class DDI:
    name = "ddi"
    num_prompt_tokens = 9
    max_source_tokens = 640
    max_length = 1024

    def source(self, doc: dict) -> str:
        return doc["abstract"].strip().replace("\n", " ").lower()

    def examples(self, data_dir: str | Path, split: str = "test") -> list[Example]:
        docs = read_json(Path(data_dir) / self.folder / f"{split}.json")
        out = []
        for key, doc in docs.items():
            if not doc.get("triples"):  # documents without relations were dropped from every split
                continue
            src = self.source(doc)
            gold = frozenset((t["drug"], t["interaction"], t["target"]) for t in doc["triples"])
            out.append(Example(key, src, triples_target(doc["triples"], src), gold))
        return out

    folder = "DDI"

    def parse(self, output: str) -> frozenset[Triple]:
        return parse_triples(output)

    def score(self, predictions: list[frozenset[Triple]], examples: list[Example]) -> dict:
        return hard_match(predictions, [ex.gold for ex in examples])
