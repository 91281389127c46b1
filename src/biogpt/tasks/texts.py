"""Every text of BioGPT's task files, for tokenizer parity checks, benchmarks and demo corpora.

`task_texts` yields titles, abstracts, HoC sentences, PubMedQA questions, contexts, long answers and the
original tsv sources: tens of thousands of real biomedical strings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from biogpt import jsonfile


def task_texts(tasks_dir: str | Path) -> Iterator[str]:
    """Every text of the five tasks under `tasks_dir` (`BC5CDR/ DDI/ KD-DTI/ HoC/ PubMedQA/`), in file order."""
    root = Path(tasks_dir)
    for task in ("BC5CDR", "DDI", "KD-DTI"):
        for split in ("train", "valid", "test"):
            path = root / task / f"{split}.json"
            if not path.exists():
                continue
            for doc in jsonfile.loads(path.read_text(encoding="utf-8")).values():
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
        for item in jsonfile.loads(path.read_text(encoding="utf-8")).values():
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
                for doc in jsonfile.loads(path.read_text(encoding="utf-8")).values():
                    yield " ".join(x for x in (doc.get("title", ""), doc.get("abstract", "")) if x)
    path = root / "PubMedQA" / "ori_pqal.json"
    if path.exists():
        for item in jsonfile.loads(path.read_text(encoding="utf-8")).values():
            yield " ".join(item["CONTEXTS"])


def training_documents(tasks_dir: str | Path) -> Iterator[tuple[str, str]]:
    """(id, text) of every document and sentence of the five tasks outside their test splits, for a corpus
    whose test scores stay honest: no test document (by id or by text) is included, and each text once.

    BC5CDR, DDI and KD-DTI give title + abstract; HoC its train sentences (its valid split is its test split);
    PubMedQA the contexts of its train/valid questions. KD-DTI's train file was never released: its valid split
    is used.
    """
    root = Path(tasks_dir)

    def load(*parts):
        path = root.joinpath(*parts)
        return jsonfile.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    test_ids, test_texts = set(), set()
    for task in ("BC5CDR", "DDI", "KD-DTI"):
        for key, doc in load(task, "test.json").items():
            test_ids.add(key)
            test_ids.add(str(doc.get("pmid", key)))
            test_texts.add(" ".join(x for x in (doc.get("title", ""), doc.get("abstract", "")) if x))
    pqa = load("PubMedQA", "ori_pqal.json")
    test_ids |= set(load("PubMedQA", "test_ground_truth.json"))
    hoc_test = root / "HoC" / "test.tsv"
    if hoc_test.exists():
        test_texts |= {line.rsplit("\t", 1)[0].strip() for line in hoc_test.read_text(encoding="utf-8").split("\n")}
    seen: set[str] = set()

    def keep(doc_id: str, text: str) -> bool:
        text = text.strip()
        if not text or doc_id in test_ids or text in test_texts or text in seen:
            return False
        seen.add(text)
        return True

    for task in ("BC5CDR", "DDI", "KD-DTI"):
        for split in ("train", "valid"):
            for key, doc in load(task, f"{split}.json").items():
                text = " ".join(x for x in (doc.get("title", ""), doc.get("abstract", "")) if x)
                if keep(str(doc.get("pmid", key)), text) and key not in test_ids:
                    yield f"{task}:{key}", text.strip()
    path = root / "HoC" / "train.tsv"
    if path.exists():
        for n, line in enumerate(path.read_text(encoding="utf-8").split("\n")):
            text = line.rsplit("\t", 1)[0]
            if line.strip() and keep(f"HoC:{n}", text):
                yield f"HoC:{n}", text.strip()
    for pid, item in pqa.items():
        text = " ".join(" ".join(c.split()) for c in item["CONTEXTS"])
        if keep(pid, text):
            yield f"PubMedQA:{pid}", text
