"""`biogpt extract --ray`: the same chunks, shards and manifest as on one machine, with reading and extraction
spread over a Ray cluster by Ray Data (`pip install 'biogpt[ray]'`).

The dataset starts as one row per input file. A read stage (`map_batches` with a generator, so a file is
streamed, never held whole) cuts each file into the same chunks as the local pipeline; an actor pool
(`map_batches` over a class: one model per actor, or per GPU when the cluster has them) extracts them; the
driver iterates the results in input order (`preserve_order`) and commits them as shards and manifest
entries exactly as the local pipeline does. Chunks an earlier run finished flow through without their
documents. Adding machines adds actors, and throughput with them. The input files must be readable at the
same path on every node (a shared file system), as with any Ray Data read.

Rows carry documents and records as JSON text, so every block is plain Arrow strings.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from biogpt.errors import BioGPTError
from biogpt.mining.documents import Document
from biogpt.mining.pipeline import Result, file_chunks


def _read(batch: dict, fmt: str | None, size: int, strict: bool, done: frozenset) -> Iterator[dict]:
    """Read stage: one input file (a batch of one row) -> one output batch per chunk."""
    for i, path in zip(batch["index"], batch["path"]):
        for key, docs, problems in file_chunks(int(i), str(path), fmt, size, strict, done.__contains__):
            yield {
                "key": [key],
                "docs": ["null" if docs is None else json.dumps([d.to_dict() for d in docs], ensure_ascii=False)],
                "problems": [json.dumps(problems, ensure_ascii=False)],
            }


class _Extract:
    """Extract stage: an actor holding one model; chunks already done pass through untouched."""

    def __init__(self, args: argparse.Namespace, build: Callable, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.extractor = build(args, False)

    def __call__(self, batch: dict) -> dict:
        out = []
        for docs in batch["docs"]:
            items = json.loads(str(docs))
            if items is None:
                out.append("null")
            else:
                records = self.extractor.extract([Document.from_dict(d) for d in items])
                out.append(json.dumps(records, ensure_ascii=False))
        return {"key": list(batch["key"]), "records": out, "problems": list(batch["problems"])}


def ray_stream(args: argparse.Namespace, build: Callable) -> Callable[..., Iterator[Result]]:
    """A `stream` for `biogpt.mining.pipeline.run` that reads and extracts on Ray, results in input order.
    `build(args, progress_note)` makes an Extractor (called once in each actor)."""
    try:
        import ray
        import ray.data
        from ray.exceptions import RayError
    except ImportError:
        raise BioGPTError("--ray needs Ray: pip install 'biogpt[ray]'") from None

    if not ray.is_initialized():
        address = None if args.ray == "auto" else args.ray
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except ConnectionError as e:
            raise BioGPTError(f"cannot reach the Ray cluster at {args.ray!r} ({e})") from None
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    n = args.workers if args.workers > 1 else max(1, gpus or cpus // max(args.threads or 1, 1))
    # an actor per GPU, or the CPUs shared among the actors; the read stage asks for no CPU of its own, so it
    # always finds room beside a pool that fills the cluster
    per_actor = {"num_gpus": 1} if gpus else {"num_cpus": max(1, cpus // n)}
    threads = args.threads or per_actor.get("num_cpus", 1)

    def stream(inputs: list[str], fmt: str | None, size: int, strict: bool, done: frozenset) -> Iterator[Result]:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        # a block per chunk: Ray Data would otherwise pack a file's chunks into one block, and one block goes
        # to one actor, so a single large input file would never use more than one model
        ctx.target_max_block_size = 1
        files = ray.data.from_items([{"index": i, "path": str(Path(p).resolve())} for i, p in enumerate(inputs)],
                                    override_num_blocks=len(inputs))  # fmt: skip
        chunks = files.map_batches(_read, batch_size=1, num_cpus=0,
                                   fn_kwargs={"fmt": fmt, "size": size, "strict": strict, "done": done})  # fmt: skip
        results = chunks.map_batches(_Extract, batch_size=1, concurrency=n, fn_constructor_args=(args, build, threads),
                                     **per_actor)  # fmt: skip
        try:
            for row in results.iter_rows():
                records = json.loads(row["records"])
                yield row["key"], records, json.loads(row["problems"])
        except RayError as e:  # a reader's or the model's clear error, raised in a worker: surface it as itself
            cause = getattr(e, "cause", None)
            if isinstance(cause, BioGPTError):
                raise cause from None
            raise

    return stream
