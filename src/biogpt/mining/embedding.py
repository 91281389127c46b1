"""`biogpt embed`: one vector per document, from the same readers as `extract`, streamed and resumable.

Documents are read and cut into chunks exactly as `extract` cuts them (`pipeline.chunks`); each finished chunk
is committed as a JSONL shard and a manifest entry (`pipeline.Run`), so `kill -9` at any moment loses at most
the chunk in flight and the same command goes on where it stopped. A shard stores each vector's float32 values
as the float64 numbers they are exactly, so the output assembled from the shards is byte-identical to an
uninterrupted run's.

A document's text is its title + " " + abstract (as `extract` reads it), encoded as the tokenizer encodes a
prompt (BioGPT: with the leading `</s>`), cut to the model's positions (`truncated` says so). A document with
no text is skipped and counted.

Outputs, from the extension or `fmt`:
- `.npy`: float32 [N, d] in input order, with the ids beside it in `OUT.ids.jsonl` (one JSON string a line);
- `.parquet`: columns id (string), tokens (int32), embedding (fixed-size list of float32), one row group per
  chunk (needs pyarrow);
- `.jsonl` (and `-`, standard output): `{"id", "tokens", "truncated", "embedding": [...]}` a line.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from biogpt import jsonfile
from biogpt.errors import InputError
from biogpt.generation.embed import embed
from biogpt.mining.pipeline import Run, _fsync_write, _progress, chunks
from biogpt.mining.readers import Document

EMBED_FORMATS = ("npy", "parquet", "jsonl")
EMBED_EXTENSIONS = {".npy": "npy", ".parquet": "parquet", ".jsonl": "jsonl"}


@dataclass
class EmbedSummary:
    documents: int = 0
    skipped: int = 0  # no text
    truncated: int = 0
    malformed: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, records: list[dict], skipped: int, problems: list[str]) -> None:
        self.documents += len(records)
        self.skipped += skipped
        self.malformed += len(problems)
        self.truncated += sum(r["truncated"] for r in records)
        self.tokens += sum(r["tokens"] for r in records)

    def line(self) -> str:
        return (f"{self.documents} documents embedded ({self.skipped} without text skipped, {self.truncated} "
                f"truncated, {self.malformed} malformed records), {self.tokens} tokens, "
                f"{self.seconds:.1f} s")  # fmt: skip


class Embedder:
    """A model and tokenizer ready to embed documents: `records(docs)` gives one record per document with text."""

    def __init__(self, model: nn.Module, tok, pooling: str = "mean", normalize: bool = True, batch_size: int = 16):
        self.model, self.tok = model, tok
        self.pooling, self.normalize, self.batch_size = pooling, normalize, batch_size

    def records(self, docs: list[Document]) -> list[dict]:
        """{"id", "tokens", "truncated", "embedding"} for each document that has text, in order."""
        limit = self.model.config.max_positions
        kept = [d for d in docs if d.text.strip()]
        ids = [self.tok.encode(d.text) for d in kept]
        vectors = embed(self.model, [x[:limit] for x in ids], self.pooling, self.normalize, self.batch_size)
        return [{"id": d.id, "tokens": min(len(x), limit), "truncated": len(x) > limit,
                 "embedding": v.tolist()} for d, x, v in zip(kept, ids, vectors)]  # fmt: skip


def output_format(out: str, fmt: str | None) -> str:
    """The output format: `fmt`, else from the extension; `-` is JSONL on standard output."""
    if fmt is not None:
        return fmt
    if out == "-":
        return "jsonl"
    found = EMBED_EXTENSIONS.get(Path(out).suffix.lower())
    if found is None:
        raise InputError(f"cannot tell the output format from {out!r}; use .npy, .parquet or .jsonl, or pass --format")
    return found


def run(
    inputs: list[str],
    out: str,
    fmt: str,
    embedder: Embedder,
    settings: dict,
    input_format: str | None = None,
    chunk_size: int = 64,
    strict: bool = False,
    progress: bool = True,
    after_commit: Callable[[int], None] | None = None,  # called with the count of chunks committed so far
) -> EmbedSummary:
    """Embed every document of `inputs` into `out` (`-`: JSONL on standard output), resumably."""
    to_stdout = out == "-"
    base = Path(tempfile.mkdtemp(prefix="biogpt-embed-")) / "stdout" if to_stdout else Path(out)
    state = Run(base, {**settings, "inputs": [str(Path(p).resolve()) for p in inputs], "format": fmt})
    summary, keys, committed = EmbedSummary(), [], 0
    t0 = time.perf_counter()
    bar = _progress(progress and not to_stdout)
    try:
        for key, docs, problems in chunks(inputs, input_format, chunk_size, strict, state.done):
            keys.append(key)
            if docs is None:  # finished by an earlier run
                entry = state.manifest["chunks"][key]
                records = state.records(key)
                summary.add(records, entry.get("skipped", 0), entry["problems"])
            else:
                records = embedder.records(docs)
                state.commit(key, records, problems)
                state.manifest["chunks"][key]["skipped"] = len(docs) - len(records)
                _fsync_write(state.manifest_path, json.dumps(state.manifest, indent=1))
                summary.add(records, len(docs) - len(records), problems)
                committed += 1
                if after_commit is not None:
                    after_commit(committed)
            bar.update(len(records))
    except BaseException:
        if not state.manifest["chunks"]:  # nothing to resume: leave nothing behind
            shutil.rmtree(state.parts, ignore_errors=True)
        raise
    bar.close()
    _assemble(state, keys, fmt, to_stdout)
    summary.seconds = time.perf_counter() - t0
    return summary


def _assemble(state: Run, keys: list[str], fmt: str, to_stdout: bool) -> None:
    """The output from the shards in input order, written whole under a temporary name, then renamed."""
    if to_stdout:
        for key in keys:
            for r in state.records(key):
                sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        tmp = state.out.with_name(state.out.name + ".tmp")
        {"jsonl": _write_jsonl, "npy": _write_npy, "parquet": _write_parquet}[fmt](state, keys, tmp)
        tmp.replace(state.out)
    shutil.rmtree(state.parts)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_jsonl(state: Run, keys: list[str], tmp: Path) -> None:
    with open(tmp, "w", encoding="utf-8") as f:
        for key in keys:
            for r in state.records(key):
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    _fsync(tmp)


def _write_npy(state: Run, keys: list[str], tmp: Path) -> None:
    """The vectors as one float32 [N, d] array, written row block by row block; the ids beside it."""
    n = sum(state.manifest["chunks"][k]["documents"] for k in keys)
    first = next((state.records(k) for k in keys if state.manifest["chunks"][k]["documents"]), [])
    d = len(first[0]["embedding"]) if first else 0
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
    ids_path = state.out.with_name(state.out.stem + ".ids.jsonl")
    ids_tmp = ids_path.with_name(ids_path.name + ".tmp")
    row = 0
    with open(ids_tmp, "w", encoding="utf-8") as ids:
        for key in keys:
            records = state.records(key)
            if records:
                arr[row : row + len(records)] = np.array([r["embedding"] for r in records], dtype=np.float32)
            ids.writelines(json.dumps(r["id"], ensure_ascii=False) + "\n" for r in records)
            row += len(records)
    arr.flush()
    del arr
    _fsync(tmp)
    _fsync(ids_tmp)
    ids_tmp.replace(ids_path)


def _write_parquet(state: Run, keys: list[str], tmp: Path) -> None:
    """One row group per chunk: id, tokens, embedding (fixed-size list of float32)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise InputError("a .parquet output needs pyarrow: pip install pyarrow (or write .npy or .jsonl)") from e
    writer = None
    for key in keys:
        records = state.records(key)
        if not records:
            continue
        d = len(records[0]["embedding"])
        flat = pa.array(np.array([r["embedding"] for r in records], dtype=np.float32).reshape(-1))
        table = pa.table({"id": pa.array([r["id"] for r in records], pa.string()),
                          "tokens": pa.array([r["tokens"] for r in records], pa.int32()),
                          "embedding": pa.FixedSizeListArray.from_arrays(flat, d)})  # fmt: skip
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    if writer is None:  # no documents: an empty table with the columns
        schema = pa.schema([("id", pa.string()), ("tokens", pa.int32()), ("embedding", pa.list_(pa.float32()))])
        writer = pq.ParquetWriter(tmp, schema)
    writer.close()
    _fsync(tmp)


def read_vectors(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(ids, float32 [N, d]) from what `run` wrote: .npy (with its .ids.jsonl), .parquet or .jsonl."""
    p = Path(path)
    fmt = EMBED_EXTENSIONS.get(p.suffix.lower())
    try:
        if fmt == "npy":
            vectors = np.load(p, allow_pickle=False)  # never unpickles: a .npy holds numbers only
            ids_path = p.with_name(p.stem + ".ids.jsonl")
            ids = [jsonfile.loads(x) for x in ids_path.read_text(encoding="utf-8").splitlines()]
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(p).to_pydict()
            ids, vectors = table["id"], np.array(table["embedding"], dtype=np.float32)
        elif fmt == "jsonl":
            rows = [jsonfile.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
            ids, vectors = [r["id"] for r in rows], np.array([r["embedding"] for r in rows], dtype=np.float32)
        else:
            raise InputError(f"{p}: vectors are read from .npy, .parquet or .jsonl files")
    except (ValueError, KeyError, TypeError, ImportError) as e:
        raise InputError(f"{p}: not vectors `biogpt embed` wrote ({e})") from None
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise InputError(f"{p}: {len(ids)} ids for vectors of shape {tuple(vectors.shape)}")
    return ids, vectors.astype(np.float32)


def nearest(vectors: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k rows most similar to `query` by cosine similarity, best first: (row, similarity)."""
    norms = np.linalg.norm(vectors, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
    sims = vectors @ query / np.maximum(norms, 1e-12)  # [N]
    order = np.argsort(-sims, kind="stable")[:k]
    return [(int(i), float(sims[i])) for i in order]
