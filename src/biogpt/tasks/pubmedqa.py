"""PubMedQA (PQA-L): yes / no / maybe, accuracy over the 500 test questions.

Two input settings:
- "reasoning-free" (the paper's 78.2 / 81.0): `question: Q context: C answer: LONG_ANSWER` from the original
  tsv files, lowercased (base recipe);
- "reasoning-required" (the repository's current one): `question: Q context: C ` from ori_pqal.json, not
  lowercased, no long answer. Its train/valid split is fold 0, recovered by matching the tsv questions.
"""

from __future__ import annotations

import re
from pathlib import Path

from biogpt.tasks.common import Example, TaskError, drop_final_period, read_json, read_tsv_split, strip_prefix

LABELS = ("yes", "no", "maybe")
_ANSWER = re.compile(r"the answer to the question given the context is(.*)")


class PubMedQA:
    name = "pubmedqa"
    num_prompt_tokens = 9
    max_source_tokens = 900
    max_length = 1024

    def __init__(self, setting: str = "reasoning-free", lowercase: bool = True):
        if setting not in ("reasoning-free", "reasoning-required"):
            raise TaskError(f"PubMedQA setting must be reasoning-free or reasoning-required, got {setting!r}")
        self.setting, self.lowercase = setting, lowercase

    @staticmethod
    def target(label: str) -> str:
        return f"the answer to the question given the context is {label}."

    def examples(self, data_dir: str | Path, split: str = "test") -> list[Example]:
        root = Path(data_dir) / "PubMedQA"
        if self.setting == "reasoning-free":
            out = []
            for n, src, label in read_tsv_split(root / f"{split}.tsv"):
                src = src.lower() if self.lowercase else src
                out.append(Example(str(n), src, self.target(label.lower()), label.lower()))
            return out
        items = read_json(root / "ori_pqal.json")
        ids = self._split_ids(root, items, split)
        out = []
        for pid in ids:
            it = items[pid]
            ctx = " ".join(" ".join(c.split()) for c in it["CONTEXTS"])
            src = f"question: {it['QUESTION']} context: {ctx} "
            out.append(Example(pid, src, self.target(it["final_decision"]), it["final_decision"]))
        return out

    @staticmethod
    def _split_ids(root: Path, items: dict, split: str) -> list[str]:
        if split == "test":
            return list(read_json(root / "test_ground_truth.json"))
        path = root / f"{split}.tsv"
        if not path.exists():
            raise TaskError(f"{path}: needed to recover the fold-0 {split} question ids")
        by_question = {" ".join(it["QUESTION"].split()): pid for pid, it in items.items()}
        ids = []
        for line in path.read_text(encoding="utf-8").split("\n"):
            m = re.match(r"question: (.*?) context:", line)
            if m and " ".join(m.group(1).split()) in by_question:
                ids.append(by_question[" ".join(m.group(1).split())])
        return ids

    def parse(self, output: str) -> str:
        m = _ANSWER.search(strip_prefix(drop_final_period(output)))
        return m.group(1).strip() if m else "failed"

    def score(self, predictions: list[str], examples: list[Example]) -> dict:
        correct = sum(p == ex.gold for p, ex in zip(predictions, examples))
        return {"accuracy": correct / len(examples) if examples else 0.0}
