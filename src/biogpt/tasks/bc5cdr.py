"""BC5CDR chemical-induced disease relations, scored as the BioCreative V CDR kit does (`relation CID`):
corpus-level micro precision / recall / F over unique (document, chemical MeSH, disease MeSH) pairs."""

from __future__ import annotations

import re
from pathlib import Path

from biogpt.tasks.common import Example, drop_final_period, f1, read_json, strip_prefix

_RELATION = re.compile(r"the relation between (.*) and (.*) exists")
PREFIXES = ("in conclusion ,", "we can conclude that", "we have that")


def longest_names(name2id: dict[str, str]) -> dict[str, str]:
    """id -> the longest mention naming it (the first one on ties), as unify_ent2id(method='max')."""
    out: dict[str, str] = {}
    for name, eid in name2id.items():
        if eid not in out or len(name) > len(out[eid]):
            out[eid] = name
    return out


def document_text(title: str, abstract: str) -> str:
    """Title and abstract joined as the original rebuild_data.py did (a '. ' unless the title ends in punctuation)."""
    sep = " " if re.search(r"\W$", title) else ". "
    return title + sep + abstract


class BC5CDR:
    name = "bc5cdr"
    num_prompt_tokens = 9
    max_source_tokens = 640
    max_length = 1024

    def __init__(self):
        self.entities: dict[str, dict[str, str]] = {}

    def examples(self, data_dir: str | Path, split: str = "test") -> list[Example]:
        root = Path(data_dir) / "BC5CDR"
        docs = read_json(root / f"{split}.json")
        ents = read_json(root / f"{split}.entities.json")
        self.entities = {"chemical": ents["chemical2id"], "disease": ents["disease2id"]}
        out = []
        for pmid, doc in docs.items():
            if not doc.get("relations"):
                continue
            chem, dis = longest_names(doc["chemical2id"]), longest_names(doc["disease2id"])
            parts = [
                f"the relation between {chem.get(r['chemical'], r['chemical'])} and "
                f"{dis.get(r['disease'], r['disease'])} exists"
                for r in doc["relations"]
            ]
            gold = frozenset((r["chemical"], r["disease"]) for r in doc["relations"])
            src = document_text(doc["title"], doc["abstract"]).lower()
            out.append(Example(pmid, src, "; ".join(parts) + ".", gold))
        return out

    def parse(self, output: str) -> frozenset[tuple[str, str]]:
        """Unique (chemical id, disease id) pairs; names not in the split's entity maps become -1."""
        text = strip_prefix(drop_final_period(output), PREFIXES)
        pairs = set()
        for seg in text.split(";"):
            m = _RELATION.match(seg.strip())
            if m:
                chem, dis = m.group(1).strip(), m.group(2).strip()
                pairs.add(
                    (self.entities.get("chemical", {}).get(chem, "-1"), self.entities.get("disease", {}).get(dis, "-1"))
                )
        return frozenset(pairs)

    def score(self, predictions: list[frozenset], examples: list[Example]) -> dict:
        tp = sum(len(p & ex.gold) for p, ex in zip(predictions, examples))
        n_pred = sum(len(p) for p in predictions)
        n_gold = sum(len(ex.gold) for ex in examples)
        prec = tp / n_pred if n_pred else 0.0
        rec = tp / n_gold if n_gold else 0.0
        return {"precision": prec, "recall": rec, "f1": f1(prec, rec), "tp": tp, "fp": n_pred - tp, "fn": n_gold - tp}
