"""`biogpt corpus build`: documents from PubMed XML, JSONL and text files -> tokenized uint16 shards, resumable."""

from __future__ import annotations

import ctypes
import hashlib
import json
import multiprocessing as mp
import multiprocessing.pool
import os
import signal
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biogpt import jsonfile
from biogpt.errors import CorpusError
from biogpt.mining.readers import Problem, read_documents
from biogpt.text.tokenizer import Tokenizer

# ---------------------------------------------------------------------------------------------------
# building a pre-training corpus (`biogpt corpus build`)


@dataclass
class Record:
    id: str | None  # PMID (or file:line for plain text); None if unreadable
    text: str | None  # title + abstract; None when there is no abstract or the record is malformed
    problem: str | None = None  # "malformed: ..." or "no abstract"
    deleted: bool = False  # a DeleteCitation entry of a PubMed update file


def read_records(path: str | Path) -> Iterator[Record]:
    """The documents of one input file (any format `biogpt extract` reads: PubMed XML, PubTator, BioC, JSONL,
    text; `biogpt.mining.readers`, the one reader module), as corpus records: title + abstract, with
    documents that have no abstract and malformed records reported, and DeleteCitation entries kept."""
    for item in read_documents(path):
        if isinstance(item, Problem):
            yield Record(item.id, None, f"malformed: {item}")
        elif item.deleted:
            yield Record(item.id, None, deleted=True)
        elif not item.abstract.strip():
            yield Record(item.id, None, "no abstract")
        else:
            yield Record(item.id, item.text.strip())


_worker_tok = None
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _exit_with_parent(parent: int) -> None:
    """End this worker when the building process dies, even by SIGKILL, instead of lingering and printing
    BrokenPipeError tracebacks: the kernel sends SIGTERM on Linux; elsewhere a thread polls the parent id."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    else:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # it died before the request above was in place
        os._exit(1)


def _init_worker(vocab_dir: str, parent: int | None = None) -> None:
    global _worker_tok
    if parent is not None:  # a pool worker: Ctrl-C is the parent's to handle (it terminates the pool)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _exit_with_parent(parent)
    _worker_tok = Tokenizer.from_pretrained(vocab_dir)


def _start_pool(workers: int, vocab_dir: str) -> multiprocessing.pool.Pool:
    """`workers` tokenizer processes. They start with SIGINT ignored (an ignored signal stays ignored across
    exec, and Python keeps it so), so a Ctrl-C while they import prints no traceback from them."""
    main = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        ctx = mp.get_context("spawn")
        return ctx.Pool(workers, initializer=_init_worker, initargs=(vocab_dir, os.getpid()))
    finally:
        if main:
            signal.signal(signal.SIGINT, old)


def _encode_docs(texts: list[str]) -> list[list[int]]:
    return [_worker_tok.encode(t, add_eos_prefix=False) + [2] for t in texts]  # </s> after every document


def is_validation(doc_id: str, per_mille: int) -> bool:
    return zlib.crc32(doc_id.encode()) % 1000 < per_mille


class ShardWriter:
    """Appends uint16 tokens to `{split}_{k:05d}.bin` files of at most `shard_tokens` tokens each."""

    def __init__(self, out: Path, split: str, shard_tokens: int, lengths: list[int]):
        self.out, self.split, self.shard_tokens, self.lengths = out, split, shard_tokens, list(lengths)
        for k, n in enumerate(self.lengths):  # resume: cut every shard back to its committed length
            have = self.path(k).stat().st_size if self.path(k).exists() else 0
            if have < n * 2:  # truncate() would pad the lost tokens with zeros
                raise CorpusError(f"{self.path(k)}: {have // 2} tokens, but manifest.json records {n}: the build is "
                                  "damaged; delete the output folder and build again")  # fmt: skip
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


def vocab_fingerprint(tok: Tokenizer) -> str:
    """sha256 of a vocabulary's pieces (in id order) and merges (in rank order): the same for its fairseq and
    its Hugging Face files, different for any other vocabulary of the same size."""
    h = hashlib.sha256()
    for piece in tok.vocab.pieces:
        h.update(piece.encode("utf-8") + b"\n")
    h.update(b"\0")
    for left, right in tok.vocab.merges:
        h.update(f"{left} {right}\n".encode())
    return h.hexdigest()


def _check_options(inputs: list[str], workers: int, validation_per_mille: int, shard_tokens: int) -> None:
    bad = [(name, value, rule) for name, value, rule, ok in (
        ("workers", workers, ">= 1", workers >= 1),
        ("validation_per_mille", validation_per_mille, "in 0..1000", 0 <= validation_per_mille <= 1000),
        ("shard_tokens", shard_tokens, ">= 1", shard_tokens >= 1),
    ) if not ok]  # fmt: skip
    if bad:
        raise CorpusError("; ".join(f"{name} must be {rule}, got {value}" for name, value, rule in bad))
    if not inputs:
        raise CorpusError("no input files given")
    missing = [p for p in inputs if not Path(p).is_file()]
    if missing:
        raise CorpusError(f"input file(s) not found: {', '.join(missing)}")


def _survivors(inputs: list[str]) -> tuple[dict[str, tuple[int, int]], int]:
    """Pass 1: {id: (input index, record index) of its last record} and how many of those have a text."""
    last: dict[str, tuple[int, int]] = {}
    has_text: dict[str, bool] = {}
    for i, path in enumerate(inputs):
        try:
            for j, rec in enumerate(read_records(path)):
                if rec.id is None:
                    continue
                if rec.deleted:
                    last.pop(rec.id, None)
                    has_text.pop(rec.id, None)
                else:
                    last[rec.id] = (i, j)
                    has_text[rec.id] = rec.text is not None
        except (OSError, EOFError) as e:  # a damaged .gz, an unreadable file
            raise CorpusError(f"{path}: cannot read ({e})") from None
    return last, sum(has_text.values())


def _earlier_build(out: Path, manifest: dict) -> dict:
    """The manifest of the build already in `out`, to be continued: it must have the inputs and settings of
    `manifest` (the one this call would start), else CorpusError."""
    old = read_manifest(out)
    same = ("inputs", "vocab_size", "vocab_sha256", "validation_per_mille", "shard_tokens")
    differ = [k for k in same if k in old and old[k] != manifest[k]]
    if differ:
        raise CorpusError(f"{out} holds a build with other inputs or settings ({', '.join(differ)} differ); "
                          "use a new output folder, or rerun the earlier command to finish that build")  # fmt: skip
    return old


def _documents(inputs: list[str], i: int, last: dict, progress: bool) -> tuple[list[tuple[str, str]], Counter]:
    """((PMID, text) of the documents input i contributes: each PMID's last record, unless deleted; counts of
    what was left out and why)."""
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
    return docs, problems


def _write_documents(docs: list[tuple[str, str]], pool, writers: dict, counts: dict, per_mille: int) -> None:
    """Tokenize `docs` (in the worker pool if there is one, 256 at a time, in order) and append each to the
    train or validation shards, as its PMID falls; `counts` ({"train", "valid"}) counts them."""
    batches = [[t for _, t in docs[k : k + 256]] for k in range(0, len(docs), 256)]
    encoded = pool.imap(_encode_docs, batches) if pool else map(_encode_docs, batches)
    k = 0
    for batch in encoded:
        for ids in batch:
            split = "valid" if is_validation(docs[k][0], per_mille) else "train"
            writers[split].write(ids)
            counts[split] += 1
            k += 1


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
    shards are fsynced and `manifest.json` records their lengths, so an interrupted build (an error, Ctrl-C,
    a kill) resumes from the last finished input with nothing duplicated or lost. Problems are counted, never
    silently dropped. Bad options, missing inputs, or inputs without a single document raise CorpusError
    before anything is written.
    """
    inputs = [str(Path(p)) for p in inputs]
    _check_options(inputs, workers, validation_per_mille, shard_tokens)
    out = Path(out_dir)
    tok = Tokenizer.from_pretrained(vocab_dir)
    if tok.vocab_size > 65536:
        raise CorpusError(f"{vocab_dir}: a vocabulary of {tok.vocab_size} tokens does not fit uint16 shards")
    manifest_path = out / "manifest.json"
    manifest = {"inputs": inputs, "vocab": str(vocab_dir), "vocab_size": tok.vocab_size,
                "vocab_sha256": vocab_fingerprint(tok), "dtype": "uint16",
                "validation_per_mille": validation_per_mille, "shard_tokens": shard_tokens, "done": 0,
                "train": [], "valid": [], "documents": {"train": 0, "valid": 0}, "problems": {}}  # fmt: skip
    if manifest_path.exists():
        manifest = _earlier_build(out, manifest)
        if manifest["done"] >= len(inputs):
            return manifest

    last, n_docs = _survivors(inputs)
    if n_docs == 0:
        raise CorpusError(f"no documents in {len(inputs)} input file(s): every record is malformed, without an "
                          "abstract, replaced or deleted; nothing written")  # fmt: skip

    out.mkdir(parents=True, exist_ok=True)
    writers = {s: ShardWriter(out, s, shard_tokens, manifest[s]) for s in ("train", "valid")}
    pool = None
    if workers > 1:
        pool = _start_pool(workers, str(vocab_dir))
    else:
        _init_worker(str(vocab_dir))
    try:
        for i in range(manifest["done"], len(inputs)):
            if _stop_after_inputs is not None and i >= _stop_after_inputs:
                break
            docs, problems = _documents(inputs, i, last, progress)
            _write_documents(docs, pool, writers, manifest["documents"], validation_per_mille)
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
    except BaseException:
        if pool is not None:
            # not close() + join(): after Ctrl-C or an error the pending tasks are never collected, and join
            # would wait for them; what was written after the last commit is cut off on the next run
            pool.terminate()
        raise
    if pool is not None:
        pool.close()
        pool.join()
    return manifest


def read_manifest(out_dir: str | Path) -> dict:
    """`manifest.json` of a built corpus, or CorpusError saying what is wrong with it."""
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        raise CorpusError(f"{out_dir}: no manifest.json; build a corpus there with `biogpt corpus build`")
    try:
        manifest = jsonfile.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorpusError(f"{path}: damaged ({e}); delete the folder and build the corpus again") from None
    need = ("inputs", "vocab_size", "done", "train", "valid")
    if not isinstance(manifest, dict) or any(k not in manifest for k in need):
        raise CorpusError(f"{path}: not a corpus manifest (needs {', '.join(need)})")
    return manifest


def load_shards(out_dir: str | Path, split: str = "train") -> list[np.ndarray]:
    """The shards of a built corpus as read-only memory maps (uint16 [n] each)."""
    manifest = read_manifest(out_dir)
    shards = []
    for k, n in enumerate(manifest[split]):
        path = Path(out_dir) / f"{split}_{k:05d}.bin"
        have = path.stat().st_size // 2 if path.is_file() else 0
        if have < n:
            raise CorpusError(f"{path}: {have} tokens, but manifest.json records {n}; the corpus is damaged")
        if n:
            shards.append(np.memmap(path, dtype=np.uint16, mode="r", shape=(n,)))
    return shards
