"""Every text of BioGPT's task files, for tokenizer parity checks, benchmarks and demo corpora.

`task_texts` yields titles, abstracts, HoC sentences, PubMedQA questions, contexts, long answers and the
original tsv sources: tens of thousands of real biomedical strings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def task_texts(tasks_dir: str | Path) -> Iterator[str]:
    """Every text of the five tasks under `tasks_dir` (`BC5CDR/ DDI/ KD-DTI/ HoC/ PubMedQA/`), in file order."""
    root = Path(tasks_dir)
    for task in ("BC5CDR", "DDI", "KD-DTI"):
        for split in ("train", "valid", "test"):
            path = root / task / f"{split}.json"
            if not path.exists():
                continue
            for doc in json.loads(path.read_text(encoding="utf-8")).values():
                for field in ("title", "abstract"):
                    if doc.get(field):
                        yield doc[field]
    for split in ("train", "valid", "test"):
        for name in ("HoC", "PubMedQA"):
            path = root / name / f"{split}.tsv"
            if path.exists():
                for line in path.read_text(encoding="utf-8").split("\n"):
                    if line.strip():
                        yield line.rsplit("\t", 1)[0]
    path = root / "PubMedQA" / "ori_pqal.json"
    if path.exists():
        for item in json.loads(path.read_text(encoding="utf-8")).values():
            yield item["QUESTION"]
            yield from item["CONTEXTS"]
            yield item["LONG_ANSWER"]


def task_abstracts(tasks_dir: str | Path) -> Iterator[str]:
    """Title + abstract of each document of the relation tasks and PubMedQA (one string per document)."""
    root = Path(tasks_dir)
    for task in ("BC5CDR", "DDI", "KD-DTI"):
        for split in ("train", "valid", "test"):
            path = root / task / f"{split}.json"
            if path.exists():
                for doc in json.loads(path.read_text(encoding="utf-8")).values():
                    yield " ".join(x for x in (doc.get("title", ""), doc.get("abstract", "")) if x)
    path = root / "PubMedQA" / "ori_pqal.json"
    if path.exists():
        for item in json.loads(path.read_text(encoding="utf-8")).values():
            yield " ".join(item["CONTEXTS"])
