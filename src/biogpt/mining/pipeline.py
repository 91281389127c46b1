"""`biogpt extract` on one machine: streaming, crash-safe and resumable, with the same bytes as an uninterrupted run.

Input files are read in order and cut into chunks of `chunk_size` records (by position in the file, so a
rerun cuts them the same way). Each finished chunk is written as a JSONL shard under `OUT.parts/` (written
to a temporary name, fsynced, renamed), then `manifest.json` records it (the commit point, replaced
atomically). `kill -9` at any moment loses at most the chunks in flight; the same command again skips what
the manifest holds and goes on. When every input is done, the output is assembled from the shards in order
(to a temporary name, renamed), so it is byte-identical to a run that was never interrupted.

Chunks go to `workers` processes (each with its own model) or are run here with all threads; a runner is
anything with `extract(docs) -> records`, so `biogpt.mining.ray` plugs in the same way.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from biogpt import jsonfile
from biogpt.errors import InputError
from biogpt.mining.readers import Document, Problem, read_documents
from biogpt.mining.writers import Writer

MANIFEST_VERSION = 1


@dataclass
class Summary:
    documents: int = 0
    skipped: int = 0  # documents the task cannot use (no text; PubMedQA without a question)
    malformed: int = 0
    relations: int = 0
    entities: int = 0
    grounded: int = 0
    parsed: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def add(self, records: list[dict], problems: list[str]) -> None:
        self.documents += len(records)
        self.malformed += len(problems)
        self.problems += problems
        for r in records:
            self.skipped += "skipped" in r
            self.parsed += r["parsed"]
            self.relations += len(r["relations"])
            self.entities += len(r["entities"])
            self.grounded += sum(e["grounded"] for e in r["entities"])

    def line(self) -> str:
        rate = f"{self.grounded / self.entities:.1%}" if self.entities else "n/a"
        parsed = f"{self.parsed / max(self.documents - self.skipped, 1):.1%}"
        return (f"{self.documents} documents ({self.skipped} skipped, {self.malformed} malformed records), "
                f"{parsed} parsed, {self.relations} relations, {self.entities} entities, grounding rate {rate}, "
                f"{self.seconds:.1f} s")  # fmt: skip


def _fsync_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def fingerprint(path: str | Path) -> dict:
    """What tells a file's content apart cheaply, whatever its size: its size, mtime, and a sha256 of its first
    and last MiB (a resumed run must read the very files the shards were made from)."""
    p = Path(path)
    st = p.stat()
    if not stat.S_ISREG(st.st_mode):  # a pipe or device: reading it here would take what the run must read
        return {"size": None, "mtime_ns": None, "sha256_ends": None}
    h = hashlib.sha256()
    with open(p, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > 1 << 20:
            f.seek(max(1 << 20, st.st_size - (1 << 20)))
            h.update(f.read(1 << 20))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_ends": h.hexdigest()}


Chunk = tuple[str, "list[Document] | None", list[str]]  # (key, documents or None when already done, problems)
Result = tuple[str, "list[dict] | None", list[str]]  # (key, records or None when already done, problems)


def file_chunks(i: int, path: str, fmt: str | None, size: int, strict: bool,
                done: Callable[[str], bool]) -> Iterator[Chunk]:  # fmt: skip
    """The chunks of input file number `i`: `size` records at a time, keyed by file index and record range;
    a chunk that `done` says is finished comes without its documents (the shard already holds them)."""
    docs: list[Document] = []
    problems: list[str] = []
    start = n = 0
    for n, item in enumerate(read_documents(path, fmt), 1):
        if isinstance(item, Problem):
            if strict:
                raise InputError(f"malformed record: {item} (without --strict it is counted and skipped)")
            problems.append(str(item))
        elif not item.deleted:
            docs.append(item)
        if n - start == size:
            key = f"{i}:{start}-{n}"
            yield key, None if done(key) else docs, problems
            docs, problems, start = [], [], n
    if n > start:
        key = f"{i}:{start}-{n}"
        yield key, None if done(key) else docs, problems


def chunks(inputs: list[str], fmt: str | None, size: int, strict: bool,
           done: Callable[[str], bool] = lambda key: False) -> Iterator[Chunk]:  # fmt: skip
    """Every input's chunks, in order."""
    for i, path in enumerate(inputs):
        yield from file_chunks(i, path, fmt, size, strict, done)


class Run:
    """The state of one output: its parts folder and manifest."""

    def __init__(self, out: Path, settings: dict):
        self.out = out
        self.parts = out.with_name(out.name + ".parts")
        self.manifest_path = self.parts / "manifest.json"
        self.settings = settings
        self.manifest = {"version": MANIFEST_VERSION, "settings": settings, "chunks": {}}
        self.parts.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.parts)
        try:
            if self.manifest_path.exists():
                self.manifest = self._resumed(settings)
        except BaseException:
            self.release()
            raise
        for stale in self.parts.glob("*.tmp"):  # a shard or manifest being written when the run was killed
            stale.unlink()

    def _resumed(self, settings: dict) -> dict:
        """The manifest of an unfinished run, if this one can go on with it: the same version, the same
        settings (inputs and weights included, by fingerprint)."""
        try:
            old = jsonfile.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{self.manifest_path} is damaged ({e}); delete {self.parts} to start again") from None
        if not isinstance(old, dict) or old.get("version") != MANIFEST_VERSION:
            version = old.get("version") if isinstance(old, dict) else None
            raise InputError(f"{self.manifest_path} has manifest version {version!r}, not {MANIFEST_VERSION} (another "
                             f"biogpt made it); delete {self.parts} to start again")  # fmt: skip
        if old.get("settings") != settings:
            before = old.get("settings") if isinstance(old.get("settings"), dict) else {}
            diff = sorted(k for k in set(settings) | set(before) if settings.get(k) != before.get(k))
            raise InputError(
                f"{self.parts} holds an unfinished run with other settings ({', '.join(diff)}); rerun it with the "
                f"same command, input files and weights, or delete {self.parts} to start again"
            )
        return old

    def done(self, key: str) -> bool:
        return key in self.manifest["chunks"]

    def commit(self, key: str, records: list[dict], problems: list[str]) -> None:
        name = f"{len(self.manifest['chunks']):06d}.jsonl"
        _fsync_write(self.parts / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self.manifest["chunks"][key] = {"shard": name, "documents": len(records), "problems": problems}
        _fsync_write(self.manifest_path, json.dumps(self.manifest, indent=1))

    def records(self, key: str) -> list[dict]:
        path = self.parts / self.manifest["chunks"][key]["shard"]
        # only "\n" ends a shard line: str.splitlines() would also split at U+2028, U+2029, U+0085 in a text
        return [jsonfile.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]

    def assemble(self, keys: list[str], fmt: str, infons: dict, to_stdout: bool,
                 on_record: Callable[[dict], None] = lambda r: None) -> None:  # fmt: skip
        """The output from the shards in input order, written whole (temporary name, then renamed); every
        record also goes to `on_record` (the `--summary` aggregate), so a resumed run sees them all."""
        w = Writer(fmt, infons)
        if to_stdout:
            sys.stdout.write(w.header())
            for key in keys:
                for r in self.records(key):
                    on_record(r)
                    sys.stdout.write(w.document(r))
            sys.stdout.write(w.footer())
            sys.stdout.flush()
        else:
            tmp = self.out.with_name(self.out.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(w.header())
                for key in keys:
                    for r in self.records(key):
                        on_record(r)
                        f.write(w.document(r))
                f.write(w.footer())
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.out)
        shutil.rmtree(self.parts)
        self.release()

    def release(self) -> None:
        """Let another run have `parts` (the same command again, to resume)."""
        self._lock.close()


def _lock(parts: Path):
    """An exclusive lock on `parts` for this run's life (released when the process ends, however it ends)."""
    f = open(parts / "lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise InputError(f"{parts} is in use by another biogpt extract writing the same output; wait for it to end, "
                         "or give another -o") from None  # fmt: skip
    return f


def run(
    inputs: list[str],
    out: str,
    fmt: str,
    extract: Callable[[list[Document]], list[dict]] | None,
    settings: dict,
    infons: dict,
    input_format: str | None = None,
    chunk_size: int = 64,
    strict: bool = False,
    progress: bool = True,
    map_chunks: Callable[[Iterable[Chunk]], Iterator[Result]] | None = None,
    stream: Callable[..., Iterator[Result]] | None = None,
    on_record: Callable[[dict], None] = lambda r: None,
    _stop_after: int | None = None,  # tests: simulate a crash after this many committed chunks
) -> Summary:
    """Extract over every input into `out` (`-` for stdout, JSONL only there), resumably. `map_chunks`, if
    given, runs the chunks elsewhere (worker processes) and yields them back in order; `stream`, if given,
    reads and extracts the inputs itself (Ray: `stream(inputs, input_format, chunk_size, strict, done_keys)`)
    and yields the results in input order. `on_record` sees every record as the output is assembled."""
    to_stdout = out == "-"
    if not to_stdout:
        return _run(inputs, Path(out), fmt, extract, settings, infons, input_format, chunk_size, strict, progress,
                    map_chunks, stream, _stop_after, on_record=on_record)  # fmt: skip
    scratch = Path(tempfile.mkdtemp(prefix="biogpt-extract-"))  # stdout: shards only while the run lasts
    try:
        return _run(inputs, scratch / "stdout", fmt, extract, settings, infons, input_format, chunk_size, strict,
                    False, map_chunks, stream, _stop_after, to_stdout=True, on_record=on_record)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(inputs, out: Path, fmt, extract, settings, infons, input_format, chunk_size, strict, progress, map_chunks,
         stream, _stop_after, to_stdout: bool = False, on_record=lambda r: None) -> Summary:  # fmt: skip
    """`run` into the file `out` (or, with `to_stdout`, standard output, with `out` the scratch name)."""
    fingerprints = [fingerprint(p) for p in inputs]
    state = Run(out, {**settings, "inputs": [str(Path(p).resolve()) for p in inputs], "input_files": fingerprints,
                      "format": fmt})  # fmt: skip
    summary = Summary()
    t0 = time.perf_counter()
    bar = _progress(progress)
    keys: list[str] = []

    if stream is None:
        runner = map_chunks or (lambda items: ((k, None if d is None else extract(d), p) for k, d, p in items))
        results = runner(chunks(inputs, input_format, chunk_size, strict, state.done))
    else:
        results = stream(inputs, input_format, chunk_size, strict, frozenset(state.manifest["chunks"]))
    committed = 0
    pause_at = _pause_point()
    try:
        for key, records, problems in results:
            keys.append(key)
            if records is None:  # finished by an earlier run
                records = state.records(key)
                summary.add(records, state.manifest["chunks"][key]["problems"])
                bar.update(len(records))
                continue
            state.commit(key, records, problems)
            summary.add(records, problems)
            bar.update(len(records))
            committed += 1
            if _stop_after is not None and committed >= _stop_after:
                raise KeyboardInterrupt  # tests: as if killed here (the manifest already holds this chunk)
            if pause_at is not None and len(state.manifest["chunks"]) >= pause_at:
                _wait_to_be_killed()
    except BaseException:
        if not state.manifest["chunks"]:  # nothing to resume: leave nothing behind
            shutil.rmtree(state.parts, ignore_errors=True)
        state.release()
        raise
    bar.close()
    state.assemble(keys, fmt, infons, to_stdout, on_record)
    summary.seconds = time.perf_counter() - t0
    return summary


PAUSE_ENV = "BIOGPT_TEST_PAUSE_AFTER_CHUNKS"


def _pause_point() -> int | None:
    """Tests' fault-injection point: with $BIOGPT_TEST_PAUSE_AFTER_CHUNKS=N the run stops once the manifest holds
    N chunks and waits to be killed, so that a real `kill -9` lands at a known commit, however fast the machine."""
    value = os.environ.get(PAUSE_ENV, "")
    return int(value) if value.isdigit() else None


def _wait_to_be_killed() -> None:
    while True:
        time.sleep(3600)


def _progress(enabled: bool):
    return tqdm(unit="doc", disable=not enabled, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
