"""HoC (Hallmarks of Cancer, sentence level): multi-label, micro-F1 over the 11 labels including `empty`."""

from __future__ import annotations

import re
from pathlib import Path

from biogpt.tasks.common import Example, drop_final_period, f1, read_tsv_split, strip_prefix

LABELS = (
    "activating invasion and metastasis",
    "avoiding immune destruction",
    "cellular energetics",
    "empty",
    "enabling replicative immortality",
    "evading growth suppressors",
    "genomic instability and mutation",
    "inducing angiogenesis",
    "resisting cell death",
    "sustaining proliferative signaling",
    "tumor promoting inflammation",
)
_TYPE = re.compile(r"the type of this document is(.*)")


class HoC:
    name = "hoc"
    num_prompt_tokens = 1
    max_source_tokens = 900
    max_length = 1024

    def examples(self, data_dir: str | Path, split: str = "test") -> list[Example]:
        out = []
        for n, src, labels in read_tsv_split(Path(data_dir) / "HoC" / f"{split}.tsv"):
            gold = frozenset(x.strip() for x in labels.split("|"))
            out.append(Example(str(n), src, f"the type of this document is {labels}.", gold))
        return out

    def parse(self, output: str) -> frozenset[str]:
        """The predicted label set; unparsable output is `{"failed"}` (no known label, so it scores nothing)."""
        m = _TYPE.search(strip_prefix(drop_final_period(output)))
        if not m:
            return frozenset({"failed"})
        return frozenset(x.strip() for x in m.group(1).split("|") if x.strip())

    def score(self, predictions: list[frozenset[str]], examples: list[Example]) -> dict:
        """sklearn MultiLabelBinarizer(classes=LABELS) + f1_score(average="micro"): unknown labels ignored."""
        tp = fp = fn = 0
        known = set(LABELS)
        for pred, ex in zip(predictions, examples):
            p, g = set(pred) & known, set(ex.gold) & known
            tp += len(p & g)
            fp += len(p - g)
            fn += len(g - p)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        return {"micro_f1": f1(prec, rec), "precision": prec, "recall": rec}
