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
_ROMAN = dict(zip("0123456789", ["0", "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX"]))

Triple = tuple[str, str, str]
LABELS = ("advise", "effect", "int", "mechanism")  # every interaction in the DDI-2013 train/valid/test files


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
    """As hard_match_evaluation.py: a single trailing digit (after a non-digit, in a name of 3+ characters)
    becomes a Roman numeral, `-type` is dropped, then everything but ASCII letters and digits."""
    s = s.strip()
    if len(s) > 2 and s[-1].isnumeric() and not s[-2].isnumeric() and s[-1] in _ROMAN:
        s = s[:-1] + _ROMAN[s[-1]]
    s = s.replace("-type", "")
    return re.sub(r"[^a-zA-Z0-9]+", "", s)


def normalize(triples: frozenset[Triple], way) -> set[Triple]:
    return {tuple(normalize_name(way(x.strip().lower().replace(" ", ""))) for x in t) for t in triples}


def _precision(pred: set, gold: set) -> float:
    return len(pred & gold) / len(pred) if pred else float(pred == gold)


def _recall(pred: set, gold: set) -> float:
    return len(pred & gold) / len(gold) if gold else float(pred == gold)


def _best_pr(pred: frozenset[Triple] | set, gold: frozenset[Triple] | set) -> tuple[float, float]:
    """(P, R), each the better of the two name normalisations on its own (normed_eval in the original), so P
    may come from "abbr" and R from "rm"; F1 is then computed from this pair, not maximised separately."""
    ways = [(normalize(pred, w), normalize(gold, w)) for w in (_abbr, _rm)]
    return max(_precision(p, g) for p, g in ways), max(_recall(p, g) for p, g in ways)


def hard_match(predictions: list[frozenset[Triple]], golds: list[frozenset[Triple]]) -> dict:
    """hard_match_evaluation.py: per-document P, R and F1 = get_f1(P, R), averaged over documents (the paper's
    numbers, printed there as "tp p", "tp r" and the misnamed "tp micro f1"), and P, R, F1 over the pooled
    triples of the whole split ("Ontology": identical triples of different documents count once)."""
    doc = []
    for pred, gold in zip(predictions, golds):
        p, r = _best_pr(pred, gold)
        doc.append((p, r, f1(p, r)))
    n = len(doc) or 1
    pooled_p, pooled_r = _best_pr(set().union(*predictions), set().union(*golds))
    return {
        "doc_precision": sum(d[0] for d in doc) / n,
        "doc_recall": sum(d[1] for d in doc) / n,
        "doc_f1": sum(d[2] for d in doc) / n,
        "pooled_precision": pooled_p,
        "pooled_recall": pooled_r,
        "pooled_f1": f1(pooled_p, pooled_r),
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
