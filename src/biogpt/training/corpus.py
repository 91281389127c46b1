"""`biogpt corpus build`: documents from PubMed XML, JSONL and text files -> tokenized uint16 shards, resumable."""

from __future__ import annotations

import gzip
import json
import multiprocessing as mp
import os
import sys
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biogpt.text.tokenizer import Tokenizer

# ---------------------------------------------------------------------------------------------------
# building a pre-training corpus (`biogpt corpus build`)


@dataclass
class Record:
    id: str | None  # PMID (or file:line for plain text); None if unreadable
    text: str | None  # title + abstract; None when there is no abstract or the record is malformed
    problem: str | None = None  # "malformed: ..." or "no abstract"
    deleted: bool = False  # a DeleteCitation entry of a PubMed update file


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_pubmed_xml(path: Path) -> Iterator[Record]:
    """PubmedArticle records (PMID, ArticleTitle, every AbstractText section) and DeleteCitation PMIDs."""
    try:
        with _open(path) as f:
            for _, el in ET.iterparse(f, events=("end",)):
                if el.tag == "PubmedArticle":
                    pmid = el.findtext("MedlineCitation/PMID")
                    title_el = el.find("MedlineCitation/Article/ArticleTitle")
                    parts = [" ".join("".join(a.itertext()).split()) for a in el.iterfind(".//Abstract/AbstractText")]
                    abstract = " ".join(p for p in parts if p)
                    title = " ".join("".join(title_el.itertext()).split()) if title_el is not None else ""
                    if not pmid:
                        yield Record(None, None, "malformed: PubmedArticle without PMID")
                    elif not abstract:
                        yield Record(pmid.strip(), None, "no abstract")
                    else:
                        yield Record(pmid.strip(), f"{title} {abstract}".strip())
                    el.clear()
                elif el.tag == "DeleteCitation":
                    for p in el.iterfind("PMID"):
                        yield Record((p.text or "").strip(), None, deleted=True)
                    el.clear()
    except (ET.ParseError, EOFError, OSError) as e:
        yield Record(None, None, f"malformed: {path.name} is not readable XML past this point ({e})")


def read_jsonl(path: Path) -> Iterator[Record]:
    with _open(path) as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
                pid = doc.get("pmid", doc.get("id"))
                title, abstract = doc.get("title") or "", doc.get("abstract") or ""
                if pid is None or not isinstance(title, str) or not isinstance(abstract, str):
                    raise ValueError("needs pmid or id, and string title/abstract")
            except (ValueError, AttributeError) as e:
                yield Record(None, None, f"malformed: {path.name} line {n}: {e}")
                continue
            if not abstract.strip():
                yield Record(str(pid), None, "no abstract")
            else:
                yield Record(str(pid), f"{title.strip()} {abstract.strip()}".strip())


def read_text(path: Path) -> Iterator[Record]:
    with _open(path) as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                yield Record(None, None, f"malformed: {path.name} line {n}: not UTF-8 ({e.reason})")
                continue
            if line:
                yield Record(f"{path.name}:{n}", line)


def read_records(path: str | Path) -> Iterator[Record]:
    p = Path(path)
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    if name.endswith(".xml"):
        return read_pubmed_xml(p)
    if name.endswith(".jsonl") or name.endswith(".json"):
        return read_jsonl(p)
    return read_text(p)


_worker_tok = None


def _init_worker(vocab_dir: str) -> None:
    global _worker_tok
    _worker_tok = Tokenizer.from_pretrained(vocab_dir)


def _encode_docs(texts: list[str]) -> list[list[int]]:
    return [_worker_tok.encode(t, add_eos_prefix=False) + [2] for t in texts]  # </s> after every document


def is_validation(doc_id: str, per_mille: int) -> bool:
    return zlib.crc32(doc_id.encode()) % 1000 < per_mille


class ShardWriter:
    """Appends uint16 tokens to `{split}_{k:05d}.bin` files of at most `shard_tokens` tokens each."""

    def __init__(self, out: Path, split: str, shard_tokens: int, lengths: list[int]):
        self.out, self.split, self.shard_tokens, self.lengths = out, split, shard_tokens, list(lengths)
        for k, n in enumerate(self.lengths):  # resume: cut every shard back to its committed length
            with open(self.path(k), "r+b" if self.path(k).exists() else "w+b") as f:
                f.truncate(n * 2)
        k = len(self.lengths)
        while self.path(k).exists():  # shards started after the last commit
            self.path(k).unlink()
            k += 1

    def path(self, k: int) -> Path:
        return self.out / f"{self.split}_{k:05d}.bin"

    def write(self, ids: list[int]) -> None:
        arr = np.asarray(ids, dtype=np.uint16)
        while arr.size:
            if not self.lengths or self.lengths[-1] >= self.shard_tokens:
                self.lengths.append(0)
            room = self.shard_tokens - self.lengths[-1]
            with open(self.path(len(self.lengths) - 1), "ab") as f:
                f.write(arr[:room].tobytes())
            self.lengths[-1] += min(room, arr.size)
            arr = arr[room:]

    def flush(self) -> None:
        for k in range(len(self.lengths)):
            with open(self.path(k), "ab") as f:
                os.fsync(f.fileno())


def build_corpus(
    inputs: list[str | Path],
    vocab_dir: str | Path,
    out_dir: str | Path,
    workers: int = 1,
    validation_per_mille: int = 5,
    shard_tokens: int = 1 << 28,
    progress: bool = True,
    _stop_after_inputs: int | None = None,  # tests: simulate an interruption
) -> dict:
    """Documents (title + abstract) -> tokenized uint16 shards with `</s>` after each document.

    Pass 1 finds the last record of every PMID (a later record replaces an earlier one; a DeleteCitation
    removes it); pass 2 tokenizes those in input order, in `workers` processes. After each input file the
    shards are fsynced and `manifest.json` records their lengths, so an interrupted build resumes from the
    last finished input with nothing duplicated or lost. Problems are counted, never silently dropped.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_pretrained(vocab_dir)
    if tok.vocab_size > 65536:
        raise ValueError(f"vocabulary of {tok.vocab_size} does not fit uint16 shards")
    inputs = [str(Path(p)) for p in inputs]
    manifest_path = out / "manifest.json"
    manifest = {"inputs": inputs, "vocab": str(vocab_dir), "vocab_size": tok.vocab_size, "dtype": "uint16",
                "validation_per_mille": validation_per_mille, "shard_tokens": shard_tokens, "done": 0,
                "train": [], "valid": [], "documents": {"train": 0, "valid": 0}, "problems": {}}  # fmt: skip
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        same = ("inputs", "vocab_size", "validation_per_mille", "shard_tokens")
        if any(old.get(k) != manifest[k] for k in same):
            raise ValueError(f"{out} holds a build with other inputs or settings; use a new output directory")
        manifest = old

    # pass 1: which record of each id survives
    last: dict[str, tuple[int, int]] = {}
    for i, path in enumerate(inputs):
        for j, rec in enumerate(read_records(path)):
            if rec.id is None:
                continue
            if rec.deleted:
                last.pop(rec.id, None)
            else:
                last[rec.id] = (i, j)

    writers = {s: ShardWriter(out, s, shard_tokens, manifest[s]) for s in ("train", "valid")}
    pool = None
    if workers > 1:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(str(vocab_dir),))
    else:
        _init_worker(str(vocab_dir))
    try:
        for i in range(manifest["done"], len(inputs)):
            if _stop_after_inputs is not None and i >= _stop_after_inputs:
                break
            problems: Counter = Counter()
            docs: list[tuple[str, str]] = []
            for j, rec in enumerate(read_records(inputs[i])):
                if progress and j % 5000 == 0:
                    print(f"\r[{i + 1}/{len(inputs)}] {inputs[i]}: {j} records read", end="", file=sys.stderr)
                if rec.problem:
                    problems[rec.problem.split(":")[0]] += 1
                    if rec.problem.startswith("malformed"):
                        print(f"warning: {rec.problem}", file=sys.stderr)
                elif not rec.deleted and last.get(rec.id) == (i, j):
                    docs.append((rec.id, rec.text))
                elif not rec.deleted:
                    problems["replaced by a later record" if rec.id in last else "deleted (DeleteCitation)"] += 1
            batches = [[t for _, t in docs[k : k + 256]] for k in range(0, len(docs), 256)]
            encoded = pool.imap(_encode_docs, batches) if pool else map(_encode_docs, batches)
            k = 0
            for batch in encoded:
                for ids in batch:
                    split = "valid" if is_validation(docs[k][0], validation_per_mille) else "train"
                    writers[split].write(ids)
                    manifest["documents"][split] += 1
                    k += 1
            for w in writers.values():
                w.flush()
            for key, n in problems.items():
                manifest["problems"][key] = manifest["problems"].get(key, 0) + n
            manifest.update(train=writers["train"].lengths, valid=writers["valid"].lengths, done=i + 1)
            tmp = manifest_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(manifest, indent=2))
            tmp.replace(manifest_path)  # the commit point
            if progress:
                d = manifest["documents"]
                print(f"\r[{i + 1}/{len(inputs)}] {inputs[i]}: {len(docs)} documents "
                      f"(total train {d['train']}, valid {d['valid']})", file=sys.stderr)  # fmt: skip
    finally:
        if pool:
            pool.close()
            pool.join()
    return manifest


def load_shards(out_dir: str | Path, split: str = "train") -> list[np.ndarray]:
    """The shards of a built corpus as read-only memory maps."""
    manifest = json.loads((Path(out_dir) / "manifest.json").read_text())
    return [np.memmap(Path(out_dir) / f"{split}_{k:05d}.bin", dtype=np.uint16, mode="r", shape=(n,))
            for k, n in enumerate(manifest[split]) if n]  # fmt: skip
